//! Element types: `f32`, `f64` and dual numbers over them.
//!
//! Every op of the tape is written once, generic over [`Real`]. Running the
//! forward pass on [`Dual`] elements is forward mode (a JVP); running the
//! reverse sweep on `Dual` elements differentiates the VJP rules themselves,
//! which is forward-over-reverse: the tangent part of the gradient is a
//! Hessian-vector product. No rule knows which element type it runs on.

use crate::kernels::{self, Batch, Product};
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

    /// `a` if `c`, else `b`, without a branch for the primitive floats (a bit
    /// mask), so piecewise rules such as ReLU vectorise and do not mispredict.
    #[inline]
    fn select(c: bool, a: Self, b: Self) -> Self {
        if c {
            a
        } else {
            b
        }
    }

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
    /// `(softplus(x), sigmoid(x))`, bit for bit [`Real::softplus`] and
    /// [`Real::sigmoid`], from one exponential e^-|x| (softplus' derivative
    /// is the sigmoid, so its rule saves it).
    ///
    /// ```
    /// use tape::Real;
    /// let (sp, s) = (-2.0_f64).softplus_sigmoid();
    /// assert_eq!((sp, s), ((-2.0_f64).softplus(), (-2.0_f64).sigmoid()));
    /// ```
    fn softplus_sigmoid(self) -> (Self, Self) {
        // e^-|x| is e^-x for x ≥ 0 (also for −0 and +0: e^∓0 = 1) and e^x
        // for x < 0: the very exponentials `sigmoid` takes.
        let e = (-self.abs()).exp();
        let pos = if self > Self::zero() {
            self
        } else {
            Self::zero()
        };
        let s = if self >= Self::zero() {
            Self::one() / (Self::one() + e)
        } else {
            e / (Self::one() + e)
        };
        (pos + e.ln_1p(), s)
    }

    /// Kernel hook: the hand-written small-product kernel of this element
    /// type for the active family (AVX-512F or AVX2+FMA), if it has one and
    /// the CPU and layout suit it; `false` means "not taken". Called by
    /// [`crate::gemm::gemm`] when the active kernel family is above
    /// [`Family::Portable`](crate::kernels::Family::Portable). The default has
    /// no kernel; a type defined outside this crate keeps it.
    #[doc(hidden)]
    fn simd_gemm(_p: &mut Product<'_, Self>) -> bool {
        false
    }

    /// Kernel hook: a large product `C ← α·A·B + β·C` (checked views, any
    /// strides). The default is a plain loop in the small products' order of
    /// operations; `f32`/`f64` run the packed kernels (`kernels/packed.rs`), duals ask their parts'
    /// type ([`Real::dual_large_gemm`]).
    #[doc(hidden)]
    fn large_gemm(p: Product<'_, Self>) {
        kernels::portable::strided(p)
    }

    /// Kernel hook: a large product of which only the tangent part is read,
    /// `C.d ← α·(A.v·B.d + A.d·B.v) + β·C.d` (see
    /// [`crate::Tape::tangent_leaf_with`]); `C.v` may be anything afterwards.
    /// The default is the full product; duals ask their parts' type
    /// ([`Real::dual_large_tangent_gemm`]).
    #[doc(hidden)]
    fn large_tangent_gemm(p: Product<'_, Self>) {
        Self::large_gemm(p)
    }

    /// Kernel hook: `(sp[i], s[i]) = xs[i].softplus_sigmoid()` over slices
    /// of one length, bit for bit [`Real::softplus_sigmoid`]. `f32`/`f64`
    /// run a vectorised loop (`kernels/vmath.rs`); duals run their primal
    /// parts through their parts' type in stack chunks.
    #[doc(hidden)]
    fn softplus_sigmoid_slice(xs: &[Self], sp: &mut [Self], s: &mut [Self]) {
        for ((&x, o), si) in xs.iter().zip(sp.iter_mut()).zip(s.iter_mut()) {
            (*o, *si) = x.softplus_sigmoid();
        }
    }

    /// Kernel hook: `x ← x.tanh()` over a slice, bit for bit [`Real::tanh`].
    /// `f32` runs a loop vectorised at the active family's width
    /// (`kernels/vmath.rs`); the default is the scalar loop.
    #[doc(hidden)]
    fn tanh_slice(xs: &mut [Self]) {
        for x in xs.iter_mut() {
            *x = x.tanh();
        }
    }

    /// Kernel hook: `x ← x.sigmoid()` over a slice, bit for bit
    /// [`Real::sigmoid`]. `f32` and `f64` run a loop vectorised at the active
    /// family's width (`kernels/vmath.rs`); duals run their primal parts
    /// through their parts' type in stack chunks; the default is the scalar
    /// loop.
    #[doc(hidden)]
    fn sigmoid_slice(xs: &mut [Self]) {
        for x in xs.iter_mut() {
            *x = x.sigmoid();
        }
    }

    /// Kernel hook: [`Real::simd_gemm`] for dual matrices whose parts are `Self`.
    #[doc(hidden)]
    fn dual_simd_gemm(_p: &mut Product<'_, Dual<Self>>) -> bool {
        false
    }

    /// Kernel hook: [`Real::simd_gemm`] for every product of a batch (the
    /// same shapes and strides), the kernel chosen once; `false`: not taken,
    /// nothing run (the batch then runs product by product).
    #[doc(hidden)]
    fn simd_gemm_batch(_b: &mut Batch<'_, Self>) -> bool {
        false
    }

    /// Kernel hook: [`Real::simd_gemm_batch`] for dual matrices whose parts are `Self`.
    #[doc(hidden)]
    fn dual_simd_gemm_batch(_b: &mut Batch<'_, Dual<Self>>) -> bool {
        false
    }

    /// Kernel hook: [`Real::large_gemm`] for dual matrices whose parts are
    /// `Self`. The default is three real products on the interleaved parts
    /// (`C.v = α A.v B.v + β C.v`, `C.d = α (A.v B.d + A.d B.v) + β C.d`);
    /// `f32`/`f64` split the parts into contiguous scratch instead.
    #[doc(hidden)]
    fn dual_large_gemm(p: Product<'_, Dual<Self>>) {
        kernels::dual::three(p)
    }

    /// Kernel hook: [`Real::large_tangent_gemm`] for dual matrices whose parts
    /// are `Self`. The default is the full product ([`Real::dual_large_gemm`]);
    /// `f32`/`f64` leave out `A.v·B.v` and set `C.v ← β·C.v`, with `C.d` bit
    /// for bit the full product's.
    #[doc(hidden)]
    fn dual_large_tangent_gemm(p: Product<'_, Dual<Self>>) {
        Self::dual_large_gemm(p)
    }
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
    ($t:ty, $bits:ty, $name:literal, $sps:ident, $slice:ident, $sig_slice:ident, $tanh:path, $tanh_slice:path) => {
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
            fn select(c: bool, a: Self, b: Self) -> Self {
                let mask = (c as $bits).wrapping_neg();
                <$t>::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
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
            // `f32`: `kernels/vmath.rs`'s branch-free tanh (within 1 ulp of
            // the rounded `f64` one), so that slices of it vectorise.
            #[inline]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            // Softplus and σ share `kernels/vmath.rs`'s branch-free
            // exponential, so that slices of them vectorise.
            #[inline]
            fn sigmoid(self) -> Self {
                kernels::vmath::$sps(self).1
            }
            #[inline]
            fn softplus(self) -> Self {
                kernels::vmath::$sps(self).0
            }
            #[inline]
            fn softplus_sigmoid(self) -> (Self, Self) {
                kernels::vmath::$sps(self)
            }
            fn softplus_sigmoid_slice(xs: &[Self], sp: &mut [Self], s: &mut [Self]) {
                kernels::vmath::$slice(xs, sp, s)
            }
            fn tanh_slice(xs: &mut [Self]) {
                $tanh_slice(xs)
            }
            fn sigmoid_slice(xs: &mut [Self]) {
                kernels::vmath::$sig_slice(xs)
            }
            fn simd_gemm(p: &mut Product<'_, $t>) -> bool {
                kernels::thin::real(p) || kernels::simd::real(p)
            }
            fn large_gemm(p: Product<'_, $t>) {
                kernels::large::real(p)
            }
            fn dual_simd_gemm(p: &mut Product<'_, Dual<$t>>) -> bool {
                kernels::simd::dual(p)
            }
            fn simd_gemm_batch(b: &mut Batch<'_, $t>) -> bool {
                kernels::batch::real(b)
            }
            fn dual_simd_gemm_batch(b: &mut Batch<'_, Dual<$t>>) -> bool {
                kernels::simd::dual_batch(b)
            }
            fn dual_large_gemm(p: Product<'_, Dual<$t>>) {
                kernels::dual::planes(p, kernels::Parts::Both)
            }
            fn dual_large_tangent_gemm(p: Product<'_, Dual<$t>>) {
                kernels::dual::planes(p, kernels::Parts::Tangent)
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
impl_float!(
    f32,
    u32,
    "f32",
    softplus_sigmoid_f32,
    softplus_sigmoid_slice_f32,
    sigmoid_slice_f32,
    kernels::vmath::tanh_f32,
    kernels::vmath::tanh_slice_f32
);
impl_float!(
    f64,
    u64,
    "f64",
    softplus_sigmoid,
    softplus_sigmoid_slice_f64,
    sigmoid_slice_f64,
    f64::tanh,
    kernels::vmath::tanh_slice_f64
);

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
    // The comparisons directly on the primal parts (same results as through
    // `partial_cmp`), so piecewise rules compile to selects, not branches.
    #[inline]
    fn lt(&self, other: &Self) -> bool {
        self.v < other.v
    }
    #[inline]
    fn le(&self, other: &Self) -> bool {
        self.v <= other.v
    }
    #[inline]
    fn gt(&self, other: &Self) -> bool {
        self.v > other.v
    }
    #[inline]
    fn ge(&self, other: &Self) -> bool {
        self.v >= other.v
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
    fn select(c: bool, a: Self, b: Self) -> Self {
        Dual {
            v: T::select(c, a.v, b.v),
            d: T::select(c, a.d, b.d),
        }
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
    #[inline]
    fn softplus_sigmoid(self) -> (Self, Self) {
        let (sp, s) = self.v.softplus_sigmoid();
        (self.chain(sp, s), self.chain(s, s * (T::one() - s)))
    }
    fn softplus_sigmoid_slice(xs: &[Self], sp: &mut [Self], s: &mut [Self]) {
        // The primal parts through `T`'s slice hook, 64 at a time on the stack.
        const CHUNK: usize = 64;
        let (mut v, mut a, mut b) = ([T::zero(); CHUNK], [T::zero(); CHUNK], [T::zero(); CHUNK]);
        let chunks = xs
            .chunks(CHUNK)
            .zip(sp.chunks_mut(CHUNK))
            .zip(s.chunks_mut(CHUNK));
        for ((xc, spc), sc) in chunks {
            let n = xc.len();
            for (vi, x) in v.iter_mut().zip(xc) {
                *vi = x.v;
            }
            T::softplus_sigmoid_slice(&v[..n], &mut a[..n], &mut b[..n]);
            for (i, x) in xc.iter().enumerate() {
                let (spi, si) = (a[i], b[i]);
                spc[i] = x.chain(spi, si);
                sc[i] = x.chain(si, si * (T::one() - si));
            }
        }
    }
    fn tanh_slice(xs: &mut [Self]) {
        // As [`Real::tanh`] per element, the primal parts through `T`'s hook.
        primal_chunks(xs, T::tanh_slice, |t| T::one() - t * t);
    }
    fn sigmoid_slice(xs: &mut [Self]) {
        // As [`Real::sigmoid`] per element, the primal parts through `T`'s hook.
        primal_chunks(xs, T::sigmoid_slice, |s| s * (T::one() - s));
    }

    fn simd_gemm(p: &mut Product<'_, Self>) -> bool {
        T::dual_simd_gemm(p)
    }
    fn simd_gemm_batch(b: &mut Batch<'_, Self>) -> bool {
        T::dual_simd_gemm_batch(b)
    }
    fn large_gemm(p: Product<'_, Self>) {
        T::dual_large_gemm(p)
    }
    fn large_tangent_gemm(p: Product<'_, Self>) {
        T::dual_large_tangent_gemm(p)
    }
}

/// `x ← x.chain(f(x.v), f′)` over a slice of duals, where `f` runs on
/// primal parts in place (`T`'s slice hook) and `f′ = deriv(f(x.v))`: the
/// primal parts go through `f` 64 at a time on the stack.
#[inline(always)]
fn primal_chunks<T: Real>(xs: &mut [Dual<T>], f: fn(&mut [T]), deriv: impl Fn(T) -> T) {
    const CHUNK: usize = 64;
    let mut v = [T::zero(); CHUNK];
    for xc in xs.chunks_mut(CHUNK) {
        let v = &mut v[..xc.len()];
        for (vi, x) in v.iter_mut().zip(xc.iter()) {
            *vi = x.v;
        }
        f(v);
        for (x, &y) in xc.iter_mut().zip(v.iter()) {
            *x = x.chain(y, deriv(y));
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
    fn select_picks_by_the_condition_bit_for_bit() {
        for (a, b) in [(1.5f32, -2.0f32), (f32::NAN, 0.0), (-0.0, f32::INFINITY)] {
            assert_eq!(f32::select(true, a, b).to_bits(), a.to_bits());
            assert_eq!(f32::select(false, a, b).to_bits(), b.to_bits());
        }
        assert_eq!(f64::select(true, -0.0, 1.0).to_bits(), (-0.0f64).to_bits());
        let (x, y) = (Dual::new(1.0f64, 2.0), Dual::new(3.0, 4.0));
        assert_eq!(Dual::select(false, x, y), y);
        assert_eq!(Dual::select(true, x, y), x);
    }

    #[test]
    fn nested_duals_give_second_derivatives() {
        // f(x) = x^3 at x = 2: f'' = 6x = 12.
        let x = Dual::new(Dual::new(2.0_f64, 1.0), Dual::new(1.0, 0.0));
        let y = x * x * x;
        assert_eq!(y.d.d, 12.0);
    }

    /// The slice hooks `tanh_slice` and `sigmoid_slice` give the scalar
    /// op's bits on every element, for `f32`, `f64`, their duals (primal
    /// parts in chunks of 64: lengths around the chunk) and nested duals
    /// (the default loop), over both signs, ±0, tiny and huge values, ±∞ and
    /// NaN; the duals' tangents vary along the slice.
    #[test]
    fn tanh_and_sigmoid_slices_give_the_scalar_bits() {
        fn check<T: Real + Debug>(make: impl Fn(f64, usize) -> T) {
            let base = [
                0.0,
                -0.0,
                1e-30,
                -1e-5,
                0.3,
                -0.7,
                1.0,
                2.5,
                -4.0,
                9.5,
                -20.0,
                40.0,
                800.0,
                -800.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
            ];
            for n in [0, 1, 17, 63, 64, 65, 130] {
                let xs: Vec<T> = (0..n)
                    .map(|i| make(base[i % base.len()] * (1.0 + i as f64 / 64.0), i))
                    .collect();
                type Hook<T> = (fn(&mut [T]), fn(T) -> T, &'static str);
                let hooks: [Hook<T>; 2] = [
                    (T::tanh_slice, T::tanh, "tanh"),
                    (T::sigmoid_slice, T::sigmoid, "sigmoid"),
                ];
                for (slice, scalar, name) in hooks {
                    let mut ys = xs.clone();
                    slice(&mut ys);
                    for (i, (x, y)) in xs.iter().zip(&ys).enumerate() {
                        let want = scalar(*x);
                        // `{:?}` shows every part, −0 as `-0.0` and NaN as `NaN`.
                        assert_eq!(
                            format!("{y:?}"),
                            format!("{want:?}"),
                            "{name}_slice, length {n}, element {i} ({x:?})"
                        );
                    }
                }
            }
        }
        check(|x, _| x);
        check(|x, _| x as f32);
        check(|x, i| Dual::new(x, 0.25 * i as f64 - 3.0));
        check(|x, i| Dual::new(x as f32, 1.5 - 0.125 * i as f32));
        check(|x, i| Dual::new(Dual::new(x, 1.0), Dual::new(0.5 * i as f64, -1.0)));
    }

    /// `softplus_sigmoid` (one exponential) is bit for bit `(softplus,
    /// sigmoid)` over signed zeros, tiny, moderate and huge values, ±∞ and
    /// NaN (compared by bits, NaN by NaN-ness), for f64, f32, duals and
    /// nested duals.
    #[test]
    fn softplus_sigmoid_is_softplus_and_sigmoid_bit_for_bit() {
        let xs = [
            0.0,
            -0.0,
            1e-300,
            -1e-300,
            1e-8,
            -1e-8,
            0.5,
            -0.5,
            1.0,
            -1.0,
            3.7,
            -3.7,
            20.0,
            -20.0,
            40.0,
            -40.0,
            700.0,
            -700.0,
            800.0,
            -800.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for &x in &xs {
            let (sp, s) = x.softplus_sigmoid();
            assert!(same(sp, x.softplus()) && same(s, x.sigmoid()), "f64 {x}");
            let xf = x as f32;
            let (sp, s) = xf.softplus_sigmoid();
            assert!(
                same(sp as f64, xf.softplus() as f64) && same(s as f64, xf.sigmoid() as f64),
                "f32 {xf}"
            );
            let xd = Dual::new(x, 0.75);
            let (sp, s) = xd.softplus_sigmoid();
            let (sp2, s2) = (xd.softplus(), xd.sigmoid());
            assert!(same(sp.v, sp2.v) && same(sp.d, sp2.d), "dual softplus {x}");
            assert!(same(s.v, s2.v) && same(s.d, s2.d), "dual sigmoid {x}");
            let xn = Dual::new(Dual::new(x, 0.5), Dual::new(-0.25, 1.0));
            let (sp, s) = xn.softplus_sigmoid();
            let (sp2, s2) = (xn.softplus(), xn.sigmoid());
            for (a, b) in [
                (sp.v.v, sp2.v.v),
                (sp.v.d, sp2.v.d),
                (sp.d.v, sp2.d.v),
                (sp.d.d, sp2.d.d),
            ]
            .into_iter()
            .chain([
                (s.v.v, s2.v.v),
                (s.v.d, s2.v.d),
                (s.d.v, s2.d.v),
                (s.d.d, s2.d.d),
            ]) {
                assert!(same(a, b), "nested dual {x}: {a} vs {b}");
            }
        }
    }
}
