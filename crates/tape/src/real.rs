//! Element types: `f32`, `f64` and dual numbers over them.
//!
//! Every op of the tape is written once, generic over [`Real`]. Running the
//! forward pass on [`Dual`] elements is forward mode (a JVP); running the
//! reverse sweep on `Dual` elements differentiates the VJP rules themselves,
//! which is forward-over-reverse: the tangent part of the gradient is a
//! Hessian-vector product. No rule knows which element type it runs on.

use crate::gemm::MatRef;
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

    /// The small-matrix SIMD kernel of [`crate::gemm::gemm`], if this type and
    /// CPU have one; `false` means "not taken". Its results are bit-identical to
    /// the portable loop's (see `simd.rs`).
    #[doc(hidden)]
    fn small_gemm_simd(
        _alpha: Self::Base,
        _a: MatRef<'_, Self>,
        _b: MatRef<'_, Self>,
        _beta: Self::Base,
        _c: &mut [Self],
    ) -> bool {
        false
    }

    /// As [`Real::small_gemm_simd`], for dual matrices whose parts are `Self`.
    #[doc(hidden)]
    fn small_dual_gemm_simd(
        _alpha: Self::Base,
        _a: MatRef<'_, Dual<Self>>,
        _b: MatRef<'_, Dual<Self>>,
        _beta: Self::Base,
        _c: &mut [Dual<Self>],
    ) -> bool {
        false
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

    /// The matrix product of dual matrices whose parts are `Self`:
    /// `C ← α·A·B + β·C` with `C.v = α A.v B.v + β C.v` and
    /// `C.d = α (A.v B.d + A.d B.v) + β C.d`. [`Dual::gemm_raw`] calls this, so
    /// the primitive floats can override it with a faster kernel; the default is
    /// three strided GEMMs over the interleaved parts.
    ///
    /// # Safety
    /// As for [`Real::gemm_raw`], on the dual matrices.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self::Base,
        a: *const Dual<Self>,
        rsa: isize,
        csa: isize,
        b: *const Dual<Self>,
        rsb: isize,
        csb: isize,
        beta: Self::Base,
        c: *mut Dual<Self>,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { dual_gemm_three(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

/// The generic dual GEMM: a dual matrix is two interleaved matrices of `T`, the
/// primal part at offset 0 and the tangent at offset 1, each with doubled
/// strides (`repr(C)`).
///   C.v ← α A.v B.v + β C.v
///   C.d ← α (A.v B.d + A.d B.v) + β C.d
///
/// # Safety
/// As for [`Real::gemm_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn dual_gemm_three<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T::Base,
    a: *const Dual<T>,
    rsa: isize,
    csa: isize,
    b: *const Dual<T>,
    rsb: isize,
    csb: isize,
    beta: T::Base,
    c: *mut Dual<T>,
    rsc: isize,
    csc: isize,
) {
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

/// The dual GEMM for primitive floats: the parts are copied into contiguous
/// scratch, `A' = [A.v | A.d]` (`m × 2k`) and `B' = [B.d ; B.v]` (`2k × n`), so
/// that `C.v = α A.v B.v + β C.v` is one GEMM on views of them and
/// `C.d = α A'·B' + β C.d` is a second GEMM with inner dimension 2k (instead
/// of two GEMMs on stride-2 data, whose packing is slow). A tangent part that is
/// zero everywhere (a constant operand, e.g. the data) is left out of `A'·B'`:
/// its products are structurally zero, as with JAX's symbolic zeros.
///
/// Each copy runs in the source's memory order, and the scratch takes the
/// matching layout (row- or column-major); the GEMMs take any strides. The
/// result depends only on the operands, never on the thread count.
///
/// # Safety
/// As for [`Real::gemm_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn dual_gemm_split<F: Float>(
    scratch: &mut Vec<F>,
    m: usize,
    k: usize,
    n: usize,
    alpha: F,
    a: *const Dual<F>,
    rsa: isize,
    csa: isize,
    b: *const Dual<F>,
    rsb: isize,
    csb: isize,
    beta: F,
    c: *mut Dual<F>,
    rsc: isize,
    csc: isize,
) {
    let zero = F::zero();
    let (cv, cd) = (c as *mut F, (c as *mut F).wrapping_add(1));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: forwarded contract; the generic path handles the empty sum.
        return unsafe {
            dual_gemm_three(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        };
    }
    // A row-major dual B is a real k × 2n matrix with the parts in alternate
    // columns, and so is a row-major C, so one real GEMM with 2n columns computes
    // C.v = α A.v B.v + β C.v and the first half of C.d = α A.v B.d + β C.d,
    // with no copies; a second, strided one adds α A.d B.v unless A's tangent is
    // zero everywhere (a constant left operand such as the data).
    // The scan runs in A's memory order and stops at the first non-zero.
    let (outer, inner, so, si) = if csa.unsigned_abs() <= rsa.unsigned_abs() {
        (m, k, rsa, csa)
    } else {
        (k, m, csa, rsa)
    };
    let a_d_zero = (0..outer).all(|o| {
        // SAFETY: (o, i) is an in-bounds index of A or of its transpose
        // (caller's contract).
        (0..inner).all(|i| unsafe { (*a.offset(o as isize * so + i as isize * si)).d } == zero)
    });
    if csb == 1 && csc == 1 {
        let (a, b, c) = (a as *const F, b as *const F, c as *mut F);
        // SAFETY: the real views index the parts of A (doubled strides, offset 0
        // or 1), B and C (element (i, j) is columns 2j and 2j + 1 of the real
        // view), all inside the dual matrices the caller vouches for.
        unsafe {
            F::gemm_raw(
                m,
                k,
                2 * n,
                alpha,
                a,
                2 * rsa,
                2 * csa,
                b,
                2 * rsb,
                1,
                beta,
                c,
                2 * rsc,
                1,
            );
            if !a_d_zero {
                // C.d += α A.d B.v
                let one = F::one();
                let (ad, cd) = (a.add(1), c.add(1));
                F::gemm_raw(
                    m,
                    k,
                    n,
                    alpha,
                    ad,
                    2 * rsa,
                    2 * csa,
                    b,
                    2 * rsb,
                    2,
                    one,
                    cd,
                    2 * rsc,
                    2,
                );
            }
        }
        return;
    }
    // Every element of the scratch is written below, so stale contents from an
    // earlier call are fine and it is only grown, never zero-filled.
    let need = 2 * m * k + 2 * k * n;
    if scratch.len() < need {
        scratch.resize(need, zero);
    }
    let (ap, bp) = scratch[..need].split_at_mut(2 * m * k);
    // A' (m × 2k): A'(i, l) = A.v(i, l), A'(i, k + l) = A.d(i, l).
    let mut a_has_d = false;
    let (ars, acs, a_d_off);
    if csa.unsigned_abs() <= rsa.unsigned_abs() {
        (ars, acs, a_d_off) = (2 * k, 1, k);
        for i in 0..m {
            for l in 0..k {
                // SAFETY: (i, l) is an in-bounds index of A (caller's contract).
                let x = unsafe { *a.offset(i as isize * rsa + l as isize * csa) };
                ap[i * 2 * k + l] = x.v;
                ap[i * 2 * k + k + l] = x.d;
                a_has_d |= x.d != zero;
            }
        }
    } else {
        (ars, acs, a_d_off) = (1, m, k * m);
        for l in 0..k {
            for i in 0..m {
                // SAFETY: (i, l) is an in-bounds index of A (caller's contract).
                let x = unsafe { *a.offset(i as isize * rsa + l as isize * csa) };
                ap[l * m + i] = x.v;
                ap[(k + l) * m + i] = x.d;
                a_has_d |= x.d != zero;
            }
        }
    }
    // B' (2k × n): B'(l, j) = B.d(l, j), B'(k + l, j) = B.v(l, j).
    let mut b_has_d = false;
    let (brs, bcs, b_v_off);
    if csb.unsigned_abs() <= rsb.unsigned_abs() {
        (brs, bcs, b_v_off) = (n, 1, k * n);
        for l in 0..k {
            for j in 0..n {
                // SAFETY: (l, j) is an in-bounds index of B (caller's contract).
                let x = unsafe { *b.offset(l as isize * rsb + j as isize * csb) };
                bp[l * n + j] = x.d;
                bp[(k + l) * n + j] = x.v;
                b_has_d |= x.d != zero;
            }
        }
    } else {
        (brs, bcs, b_v_off) = (1, 2 * k, k);
        for j in 0..n {
            for l in 0..k {
                // SAFETY: (l, j) is an in-bounds index of B (caller's contract).
                let x = unsafe { *b.offset(l as isize * rsb + j as isize * csb) };
                bp[j * 2 * k + l] = x.d;
                bp[j * 2 * k + k + l] = x.v;
                b_has_d |= x.d != zero;
            }
        }
    }
    let (ap, bp) = (ap.as_ptr(), bp.as_ptr());
    let (ars, acs, brs, bcs) = (ars as isize, acs as isize, brs as isize, bcs as isize);
    // SAFETY: the scratch views index inside `ap` (2mk) and `bp` (2kn) by
    // construction; C's parts are in bounds by the caller's contract and do not
    // alias the scratch.
    unsafe {
        let (a_v, a_d) = (ap, ap.add(a_d_off));
        let (b_d, b_v) = (bp, bp.add(b_v_off));
        F::gemm_raw(
            m,
            k,
            n,
            alpha,
            a_v,
            ars,
            acs,
            b_v,
            brs,
            bcs,
            beta,
            cv,
            2 * rsc,
            2 * csc,
        );
        match (a_has_d, b_has_d) {
            (true, true) => F::gemm_raw(
                m,
                2 * k,
                n,
                alpha,
                a_v,
                ars,
                acs,
                b_d,
                brs,
                bcs,
                beta,
                cd,
                2 * rsc,
                2 * csc,
            ),
            (false, true) => F::gemm_raw(
                m,
                k,
                n,
                alpha,
                a_v,
                ars,
                acs,
                b_d,
                brs,
                bcs,
                beta,
                cd,
                2 * rsc,
                2 * csc,
            ),
            (true, false) => F::gemm_raw(
                m,
                k,
                n,
                alpha,
                a_d,
                ars,
                acs,
                b_v,
                brs,
                bcs,
                beta,
                cd,
                2 * rsc,
                2 * csc,
            ),
            (false, false) => {
                // C.d ← β C.d, without reading C.d when β = 0.
                for i in 0..m {
                    for j in 0..n {
                        let p = cd.offset(2 * (i as isize * rsc + j as isize * csc));
                        *p = if beta == zero { zero } else { beta * *p };
                    }
                }
            }
        }
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
    ($t:ty, $bits:ty, $gemm:path, $name:literal, $scratch:ident) => {
        thread_local! {
            /// Scratch for the dual GEMM's split parts; kept, so a steady state
            /// allocates nothing.
            static $scratch: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
        }
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
            #[inline]
            fn small_gemm_simd(
                alpha: $t,
                a: MatRef<'_, $t>,
                b: MatRef<'_, $t>,
                beta: $t,
                c: &mut [$t],
            ) -> bool {
                crate::simd::real(alpha, a, b, beta, c)
            }
            #[inline]
            fn small_dual_gemm_simd(
                alpha: $t,
                a: MatRef<'_, Dual<$t>>,
                b: MatRef<'_, Dual<$t>>,
                beta: $t,
                c: &mut [Dual<$t>],
            ) -> bool {
                crate::simd::dual(alpha, a, b, beta, c)
            }
            unsafe fn dual_gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: *const Dual<$t>,
                rsa: isize,
                csa: isize,
                b: *const Dual<$t>,
                rsb: isize,
                csb: isize,
                beta: $t,
                c: *mut Dual<$t>,
                rsc: isize,
                csc: isize,
            ) {
                $scratch.with(|s| match s.try_borrow_mut() {
                    // SAFETY: forwarded contract of `Real::dual_gemm_raw`.
                    Ok(mut s) => unsafe {
                        dual_gemm_split(&mut s, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
                    },
                    // SAFETY: as above (re-entered: a fresh scratch).
                    Err(_) => unsafe {
                        dual_gemm_split(&mut Vec::new(), m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
                    },
                })
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
    matrixmultiply::sgemm,
    "f32",
    DUAL_GEMM_SCRATCH_F32
);
impl_float!(
    f64,
    u64,
    matrixmultiply::dgemm,
    "f64",
    DUAL_GEMM_SCRATCH_F64
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
    fn small_gemm_simd(
        alpha: T::Base,
        a: MatRef<'_, Self>,
        b: MatRef<'_, Self>,
        beta: T::Base,
        c: &mut [Self],
    ) -> bool {
        T::small_dual_gemm_simd(alpha, a, b, beta, c)
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
        // SAFETY: forwarded contract; `T` picks its dual kernel (the primitive
        // floats split the parts into contiguous scratch, see `dual_gemm_split`).
        unsafe { T::dual_gemm_raw(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
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

    /// Dual matrices with strides for a row-major (`t = false`) or transposed view.
    fn dual_mat(rows: usize, cols: usize, seed: f64, zero_d: bool) -> Vec<Dual<f64>> {
        (0..rows * cols)
            .map(|i| {
                let v = (i as f64 * 0.37 + seed).sin();
                let d = if zero_d {
                    0.0
                } else {
                    (i as f64 * 0.71 + seed).cos()
                };
                Dual::new(v, d)
            })
            .collect()
    }

    /// The split dual GEMM (contiguous parts, one GEMM with inner dimension 2k)
    /// against the reference three-GEMM product rule, for every combination of
    /// transposed operands, structurally zero tangents and β ∈ {0, 0.5}. With
    /// β = 0, C starts as NaN and must be overwritten, never read.
    #[test]
    fn split_dual_gemm_matches_the_product_rule() {
        let (m, k, n) = (5, 7, 3);
        for (ta, tb, za, zb, beta) in (0..32).map(|c| {
            (
                c & 1 != 0,
                c & 2 != 0,
                c & 4 != 0,
                c & 8 != 0,
                if c & 16 != 0 { 0.5 } else { 0.0 },
            )
        }) {
            let a = dual_mat(m, k, 0.1, za);
            let b = dual_mat(k, n, 0.2, zb);
            // A stored row-major (rs = k, cs = 1) or as the transpose of a k × m
            // buffer (rs = 1, cs = m); the same for B.
            let (rsa, csa, a_buf) = if ta {
                let mut t = vec![Dual::default(); m * k];
                for i in 0..m {
                    for l in 0..k {
                        t[l * m + i] = a[i * k + l];
                    }
                }
                (1, m as isize, t)
            } else {
                (k as isize, 1, a.clone())
            };
            let (rsb, csb, b_buf) = if tb {
                let mut t = vec![Dual::default(); k * n];
                for l in 0..k {
                    for j in 0..n {
                        t[j * k + l] = b[l * n + j];
                    }
                }
                (1, k as isize, t)
            } else {
                (n as isize, 1, b.clone())
            };
            let c0 = if beta == 0.0 {
                Dual::new(f64::NAN, f64::NAN)
            } else {
                Dual::new(1.0, -2.0)
            };
            let mut got = vec![c0; m * n];
            let mut want = vec![Dual::new(1.0, -2.0); m * n];
            // SAFETY: all views index inside their buffers; C is separate.
            unsafe {
                f64::dual_gemm_raw(
                    m,
                    k,
                    n,
                    2.0,
                    a_buf.as_ptr(),
                    rsa,
                    csa,
                    b_buf.as_ptr(),
                    rsb,
                    csb,
                    beta,
                    got.as_mut_ptr(),
                    n as isize,
                    1,
                );
                dual_gemm_three(
                    m,
                    k,
                    n,
                    2.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    beta,
                    want.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            for (g, w) in got.iter().zip(&want) {
                let case = (ta, tb, za, zb, beta);
                assert!(
                    (g.v - w.v).abs() < 1e-12,
                    "{case:?}: value {} vs {}",
                    g.v,
                    w.v
                );
                assert!(
                    (g.d - w.d).abs() < 1e-12,
                    "{case:?}: tangent {} vs {}",
                    g.d,
                    w.d
                );
            }
        }
    }

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
}
