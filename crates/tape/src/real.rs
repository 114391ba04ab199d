//! Element types: `f32`, `f64` and dual numbers over them.
//!
//! Every op of the tape is written once, generic over [`Real`]. Running the
//! forward pass on [`Dual`] elements is forward mode (a JVP); running the
//! reverse sweep on `Dual` elements differentiates the VJP rules themselves,
//! which is forward-over-reverse: the tangent part of the gradient is a
//! Hessian-vector product. No rule knows which element type it runs on.

use std::fmt::{Debug, Display};
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// A differentiable scalar: the element type of tensors and tapes.
///
/// Comparisons (`PartialOrd`) look at the primal value only, which is how the
/// piecewise rules (relu, abs, max) pick their branch on dual numbers.
///
/// ```
/// use tape::{Dual, Real};
/// // d/dx exp(x) at x = 0, in forward mode: tangent 1 in, tangent 1 out.
/// let y = Dual::new(0.0_f64, 1.0).exp();
/// assert_eq!((y.v, y.d), (1.0, 1.0));
/// ```
pub trait Real:
    Copy
    + Default
    + Debug
    + PartialEq
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    /// The primitive float underneath (`f32` or `f64`).
    type Base: Float;

    /// Embeds a constant (zero tangent).
    fn from_f64(x: f64) -> Self;
    /// Embeds a primitive value (zero tangent).
    fn from_base(x: Self::Base) -> Self;
    /// The primal value, as the primitive type.
    fn base(self) -> Self::Base;
    /// The primal value, as `f64` (for reports and comparisons).
    fn to_f64(self) -> f64 {
        self.base().to_f64_prim()
    }
    /// `0`.
    fn zero() -> Self {
        Self::default()
    }
    /// `1`.
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    /// Whether every part (primal and tangents) is finite.
    fn is_finite(self) -> bool;

    /// e^x.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// ln(1 + x), accurate near 0.
    fn ln_1p(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// x^p for a constant exponent p.
    fn powf(self, p: f64) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// |x|; the derivative at 0 is taken as 0 (the kink).
    fn abs(self) -> Self;

    /// Logistic sigmoid 1 / (1 + e^-x), evaluated without overflow.
    fn sigmoid(self) -> Self {
        if self >= Self::zero() {
            Self::one() / (Self::one() + (-self).exp())
        } else {
            let e = self.exp();
            e / (Self::one() + e)
        }
    }
    /// Softplus ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|), evaluated without overflow.
    fn softplus(self) -> Self {
        let pos = if self > Self::zero() {
            self
        } else {
            Self::zero()
        };
        pos + (-self.abs()).exp().ln_1p()
    }

    /// General matrix product `C ← alpha·A·B + beta·C` with arbitrary strides
    /// (in elements). `A` is `m × k`, `B` is `k × n`, `C` is `m × n`.
    ///
    /// # Safety
    /// Every index `i·rs + j·cs` of each matrix must lie inside its allocation, and
    /// `C` must not alias `A` or `B`. Call it through [`crate::gemm::gemm`], which
    /// checks this.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self::Base,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self::Base,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

/// A primitive float: `f32` or `f64`.
pub trait Float: Real<Base = Self> + Display {
    /// Machine epsilon.
    const EPSILON: Self;
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Converts to `f64`.
    fn to_f64_prim(self) -> f64;
}

macro_rules! impl_float {
    ($t:ty, $gemm:path, $name:literal) => {
        impl Real for $t {
            type Base = $t;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn from_base(x: $t) -> Self {
                x
            }
            #[inline]
            fn base(self) -> $t {
                self
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn powf(self, p: f64) -> Self {
                <$t>::powf(self, p as $t)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: *const $t,
                rsa: isize,
                csa: isize,
                b: *const $t,
                rsb: isize,
                csb: isize,
                beta: $t,
                c: *mut $t,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded contract of `Real::gemm_raw`.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
        impl Float for $t {
            const EPSILON: $t = <$t>::EPSILON;
            const NAME: &'static str = $name;
            #[inline]
            fn to_f64_prim(self) -> f64 {
                self as f64
            }
        }
    };
}
impl_float!(f32, matrixmultiply::sgemm, "f32");
impl_float!(f64, matrixmultiply::dgemm, "f64");

/// A dual number `v + d·ε` with `ε² = 0`: a primal value and one tangent.
///
/// `Dual<T>` is itself [`Real`], so duals nest (`Dual<Dual<f64>>` carries
/// second-order tangents). The layout is `#[repr(C)]` so that a slice of duals
/// is two interleaved matrices and the matrix product runs as three strided GEMMs.
///
/// ```
/// use tape::{Dual, Real};
/// // f(x) = x·x at 3 along tangent 1: f = 9, f' = 6.
/// let x = Dual::new(3.0_f64, 1.0);
/// let y = x * x;
/// assert_eq!((y.v, y.d), (9.0, 6.0));
/// ```
#[repr(C)]
#[derive(Copy, Clone, Default, Debug, PartialEq)]
pub struct Dual<T> {
    /// Primal value.
    pub v: T,
    /// Tangent (directional derivative).
    pub d: T,
}

impl<T: Real> Dual<T> {
    /// `v + d·ε`.
    #[inline]
    pub fn new(v: T, d: T) -> Self {
        Dual { v, d }
    }
    /// A constant: `v + 0·ε`.
    #[inline]
    pub fn constant(v: T) -> Self {
        Dual { v, d: T::zero() }
    }
    /// The chain rule for a unary function with value `f` and derivative `df` at `v`.
    #[inline]
    fn chain(self, f: T, df: T) -> Self {
        Dual {
            v: f,
            d: df * self.d,
        }
    }
}

impl<T: Real> PartialOrd for Dual<T> {
    /// Compares primal values only.
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.v.partial_cmp(&other.v)
    }
}

impl<T: Real> Add for Dual<T> {
    type Output = Self;
    #[inline]
    fn add(self, o: Self) -> Self {
        Dual {
            v: self.v + o.v,
            d: self.d + o.d,
        }
    }
}
impl<T: Real> Sub for Dual<T> {
    type Output = Self;
    #[inline]
    fn sub(self, o: Self) -> Self {
        Dual {
            v: self.v - o.v,
            d: self.d - o.d,
        }
    }
}
impl<T: Real> Mul for Dual<T> {
    type Output = Self;
    #[inline]
    fn mul(self, o: Self) -> Self {
        Dual {
            v: self.v * o.v,
            d: self.d * o.v + self.v * o.d,
        }
    }
}
impl<T: Real> Div for Dual<T> {
    type Output = Self;
    #[inline]
    fn div(self, o: Self) -> Self {
        let q = self.v / o.v;
        Dual {
            v: q,
            d: (self.d - q * o.d) / o.v,
        }
    }
}
impl<T: Real> Neg for Dual<T> {
    type Output = Self;
    #[inline]
    fn neg(self) -> Self {
        Dual {
            v: -self.v,
            d: -self.d,
        }
    }
}
impl<T: Real> AddAssign for Dual<T> {
    #[inline]
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}
impl<T: Real> SubAssign for Dual<T> {
    #[inline]
    fn sub_assign(&mut self, o: Self) {
        *self = *self - o;
    }
}
impl<T: Real> MulAssign for Dual<T> {
    #[inline]
    fn mul_assign(&mut self, o: Self) {
        *self = *self * o;
    }
}
impl<T: Real> DivAssign for Dual<T> {
    #[inline]
    fn div_assign(&mut self, o: Self) {
        *self = *self / o;
    }
}

impl<T: Real> Real for Dual<T> {
    type Base = T::Base;
    #[inline]
    fn from_f64(x: f64) -> Self {
        Dual::constant(T::from_f64(x))
    }
    #[inline]
    fn from_base(x: T::Base) -> Self {
        Dual::constant(T::from_base(x))
    }
    #[inline]
    fn base(self) -> T::Base {
        self.v.base()
    }
    #[inline]
    fn is_finite(self) -> bool {
        self.v.is_finite() && self.d.is_finite()
    }
    #[inline]
    fn exp(self) -> Self {
        let e = self.v.exp();
        self.chain(e, e)
    }
    #[inline]
    fn ln(self) -> Self {
        self.chain(self.v.ln(), T::one() / self.v)
    }
    #[inline]
    fn ln_1p(self) -> Self {
        self.chain(self.v.ln_1p(), T::one() / (T::one() + self.v))
    }
    #[inline]
    fn sqrt(self) -> Self {
        let s = self.v.sqrt();
        self.chain(s, T::from_f64(0.5) / s)
    }
    #[inline]
    fn powf(self, p: f64) -> Self {
        self.chain(self.v.powf(p), T::from_f64(p) * self.v.powf(p - 1.0))
    }
    #[inline]
    fn tanh(self) -> Self {
        let t = self.v.tanh();
        self.chain(t, T::one() - t * t)
    }
    #[inline]
    fn abs(self) -> Self {
        let s = if self.v > T::zero() {
            T::one()
        } else if self.v < T::zero() {
            -T::one()
        } else {
            T::zero()
        };
        self.chain(self.v.abs(), s)
    }
    #[inline]
    fn sigmoid(self) -> Self {
        let s = self.v.sigmoid();
        self.chain(s, s * (T::one() - s))
    }
    #[inline]
    fn softplus(self) -> Self {
        self.chain(self.v.softplus(), self.v.sigmoid())
    }

    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: T::Base,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: T::Base,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    ) {
        // A dual matrix is two interleaved matrices of T: the primal part at offset
        // 0 and the tangent at offset 1, each with doubled strides (repr(C)).
        //   C.v ← α A.v B.v + β C.v
        //   C.d ← α (A.v B.d + A.d B.v) + β C.d
        let (av, ad) = (a as *const T, (a as *const T).wrapping_add(1));
        let (bv, bd) = (b as *const T, (b as *const T).wrapping_add(1));
        let (cv, cd) = (c as *mut T, (c as *mut T).wrapping_add(1));
        let one = <T::Base as Real>::one();
        // SAFETY: the caller guarantees every (i, j) index of each dual matrix is in
        // bounds; the T-parts of an in-bounds dual element are in bounds too.
        unsafe {
            T::gemm_raw(
                m,
                k,
                n,
                alpha,
                av,
                2 * rsa,
                2 * csa,
                bv,
                2 * rsb,
                2 * csb,
                beta,
                cv,
                2 * rsc,
                2 * csc,
            );
            T::gemm_raw(
                m,
                k,
                n,
                alpha,
                av,
                2 * rsa,
                2 * csa,
                bd,
                2 * rsb,
                2 * csb,
                beta,
                cd,
                2 * rsc,
                2 * csc,
            );
            T::gemm_raw(
                m,
                k,
                n,
                alpha,
                ad,
                2 * rsa,
                2 * csa,
                bv,
                2 * rsb,
                2 * csb,
                one,
                cd,
                2 * rsc,
                2 * csc,
            );
        }
    }
}

impl<T: Real + Display> Display for Dual<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} + {}ε", self.v, self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_rules_match_closed_forms() {
        let x = Dual::new(0.7_f64, 1.0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-14;
        assert!(close(x.exp().d, 0.7_f64.exp()));
        assert!(close(x.ln().d, 1.0 / 0.7));
        assert!(close(x.sqrt().d, 0.5 / 0.7_f64.sqrt()));
        assert!(close(x.tanh().d, 1.0 - 0.7_f64.tanh().powi(2)));
        let s = 1.0 / (1.0 + (-0.7_f64).exp());
        assert!(close(x.sigmoid().d, s * (1.0 - s)));
        assert!(close(x.softplus().d, s));
        assert!(close(x.powf(3.0).d, 3.0 * 0.49));
        assert!(close((x / Dual::new(2.0, 0.0)).d, 0.5));
    }

    #[test]
    fn stable_sigmoid_and_softplus_do_not_overflow() {
        assert_eq!(1000.0_f64.sigmoid(), 1.0);
        assert_eq!((-1000.0_f64).sigmoid(), 0.0);
        assert_eq!(1000.0_f64.softplus(), 1000.0);
        assert_eq!((-1000.0_f64).softplus(), 0.0);
    }

    #[test]
    fn nested_duals_give_second_derivatives() {
        // f(x) = x^3 at x = 2: f'' = 6x = 12.
        let x = Dual::new(Dual::new(2.0_f64, 1.0), Dual::new(1.0, 0.0));
        let y = x * x * x;
        assert_eq!(y.d.d, 12.0);
    }
}
