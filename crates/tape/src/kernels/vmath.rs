//! Softplus and the logistic sigmoid of `f32`/`f64`, and tanh of `f32`
//! ([`tanh_f32`], from e^−2|x|), branch-free so that a slice of them
//! vectorises, from one exponential e^−|x|:
//!
//! ```text
//! softplus(x) = max(x, 0) + ln(1 + e^−|x|)
//! σ(x)        = 1 / (1 + e^−|x|)  (x ≥ 0),   e^−|x| / (1 + e^−|x|)  (x < 0)
//! ```
//!
//! The exponential (on t ≤ 0) and ln(1 + e) (on e ∈ [0, 1]) are fdlibm's
//! `exp` and `log1p` (Cody–Waite reduction by ln 2 and the same rational
//! approximations), written without branches: selects instead of special
//! cases. Divisions bound the slice loop (one vector division costs as much
//! as a dozen other operations), so e/(1 + e) is taken once, for σ (1/(1 + e)
//! = 1 − e/(1 + e)) and for log1p's rounding correction: three divisions per
//! element. Each is within 1 ulp of the correctly rounded value for every
//! input of its range (subnormal results included, NaN in gives NaN out);
//! `softplus` and `σ` are then within 2 ulp of the same formulas evaluated
//! with the C library's `exp`/`log1p` (this file's tests check these bounds
//! over tiny, large, infinite and NaN arguments). `f32` is computed
//! in `f64` and rounded once at the end.
//!
//! # Bits
//! Only IEEE operations (+, −, ×, ÷, comparisons, bit moves), each rounded
//! on its own (Rust never fuses `a * b + c`): the scalar functions and the
//! slice loop — compiled for the baseline target, for AVX2 or for AVX-512F —
//! give the same bits on every CPU and for every thread count.
//!
//! # Soundness
//! No `unsafe` here: `wide.rs`'s [`super::wide::wide!`] compiles the slice
//! loop for the family's width.

// fdlibm's constants, digits as published.
#![allow(clippy::excessive_precision)]
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
const P1: f64 = 1.666_666_666_666_660_190_37e-1;
const P2: f64 = -2.777_777_777_701_559_338_42e-3;
const P3: f64 = 6.613_756_321_437_934_361_17e-5;
const P4: f64 = -1.653_390_220_546_525_153_90e-6;
const P5: f64 = 4.138_136_797_057_238_460_39e-8;
const LG1: f64 = 6.666_666_666_666_735_130e-1;
const LG2: f64 = 3.999_999_999_940_941_908e-1;
const LG3: f64 = 2.857_142_874_366_239_149e-1;
const LG4: f64 = 2.222_219_843_214_978_396e-1;
const LG5: f64 = 1.818_357_216_161_805_012e-1;
const LG6: f64 = 1.531_383_769_920_937_332e-1;
const LG7: f64 = 1.479_819_860_511_658_591e-1;
/// 1.5·2^52: adding and subtracting it rounds to the nearest integer.
const ROUND: f64 = 6_755_399_441_055_744.0;

/// e^t for t ≤ 0 (or NaN), within 1 ulp; 0 below −745.5 (where e^t is
/// under half the least subnormal).
#[inline(always)]
pub(crate) fn exp_nonpos(t: f64) -> f64 {
    // A NaN fails the comparison and stays NaN.
    let t = if t < -745.5 { -745.5 } else { t };
    // t = k·ln2 + r, |r| ≤ ln2/2; k ∈ [−1076, 0] an integer.
    let k = (t * std::f64::consts::LOG2_E + ROUND) - ROUND;
    let hi = t - k * LN2_HI;
    let lo = k * LN2_LO;
    let r = hi - lo;
    let rr = r * r;
    let c = r - rr * (P1 + rr * (P2 + rr * (P3 + rr * (P4 + rr * P5))));
    let y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi);
    // 2^(k+60) is normal for every k here, and so is y·2^(k+60) (y ≥ 1/√2):
    // exact; the one rounding (into the subnormals) is the last product.
    // Its exponent field k + 1083 ∈ [7, 1083] is the low bits of the
    // integer k + 1083 + 2^52, shifted up into place.
    let scale = f64::from_bits((k + (1083.0 + 4_503_599_627_370_496.0)).to_bits() << 52);
    y * scale * f64::from_bits((1023 - 60) << 52)
}

/// ln(1 + e) for e ∈ [0, 1] (or NaN), within 1 ulp.
#[cfg(test)]
fn ln_1p_unit(e: f64) -> f64 {
    let u = 1.0 + e;
    ln_1p_unit_inv(e, u, 1.0 / u)
}

/// ln(1 + e) for e ∈ [0, 1] (or NaN), within 1 ulp, given u = 1 + e (rounded)
/// and `inv` ≈ 1/u (to an ulp or two): the caller's reciprocal, shared with σ, so
/// that softplus and σ together take three divisions, not four.
#[inline(always)]
fn ln_1p_unit_inv(e: f64, u: f64, inv: f64) -> f64 {
    // u ∈ [1, 2] = 2^k·m with m ∈ [1/√2, √2), k ∈ {0, 1}; f = m − 1 exact.
    let big = u > std::f64::consts::SQRT_2;
    let m = if big { 0.5 * u } else { u };
    let k = if big { 1.0 } else { 0.0 };
    let f = m - 1.0;
    // The rounding error of u = 1 + e (exact: Fast2Sum), relative to u (a
    // correction below ulp(u)/u: the rounding of 1/u does not show).
    let c = (e - (u - 1.0)) * inv;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let hfsq = 0.5 * f * f;
    k * LN2_HI - ((hfsq - (s * (hfsq + (t2 + t1)) + (k * LN2_LO + c))) - f)
}

/// `(softplus(x), σ(x))` from one exponential e^−|x|.
#[inline(always)]
pub(crate) fn softplus_sigmoid(x: f64) -> (f64, f64) {
    let e = exp_nonpos(-x.abs());
    let pos = if x > 0.0 { x } else { 0.0 };
    let d = 1.0 + e;
    // One division for both σ's and for ln(1 + e)'s correction: q = e/d,
    // and 1/d = 1 − q (q ≤ ½: within 1 ulp; e·(1/d) would not be).
    let q = e / d;
    let inv = 1.0 - q;
    let s = if x >= 0.0 { inv } else { q };
    (pos + ln_1p_unit_inv(e, d, inv), s)
}

/// [`softplus_sigmoid`] for `f32`: in `f64`, rounded once.
#[inline(always)]
pub(crate) fn softplus_sigmoid_f32(x: f32) -> (f32, f32) {
    let (sp, s) = softplus_sigmoid(x as f64);
    (sp as f32, s as f32)
}

/// Below this |x|, tanh is taken from its series (`1 − e^−2|x|` would lose
/// digits to cancellation): 2^−13.
const TANH_SERIES: f64 = 1.0 / 8192.0;

/// tanh(x) of an `f32`, in `f64` and rounded once, branch-free (so that a
/// slice vectorises; the C library's `tanhf` is a call per element):
/// `sign(x)·(1 − e)/(1 + e)` with `e = e^−2|x|` ([`exp_nonpos`]), or
/// `x·(1 − x²/3)` for |x| < 2^−13 (the series' next term is below 2^−52·|x|).
/// Before the rounding to `f32` the value is within 10⁻¹² relative of tanh(x)
/// (e's 1 ulp over 1 − e ≥ 2^−12.4; `1 − e` is exact, e ≥ ½), so the result
/// is the correctly rounded `f32` or its neighbour: within 1 ulp of
/// `(x as f64).tanh() as f32` (this file's tests), the sign of a zero kept,
/// ±1 beyond |x| ≈ 9, NaN for NaN.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let x = x as f64;
    let a = x.abs();
    let e = exp_nonpos(-2.0 * a);
    let far = (1.0 - e) / (1.0 + e);
    let near = a * (1.0 - a * a * (1.0 / 3.0));
    // A NaN fails the comparison: `far`, NaN.
    let t = if a < TANH_SERIES { near } else { far };
    t.copysign(x) as f32
}

/// `x ← tanh_f32(x)` over a slice, bit for bit [`tanh_f32`], vectorised for
/// the active family's width ([`super::wide::wide!`]).
pub(crate) fn tanh_slice_f32(xs: &mut [f32]) {
    #[inline(always)]
    fn body(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = tanh_f32(*x);
        }
    }
    super::wide::wide!(body<>(xs: &mut [f32]) -> ())
}

/// `x ← x.tanh()` over a slice of `f64` (the C library's, as
/// [`crate::Real::tanh`] of `f64`).
pub(crate) fn tanh_slice_f64(xs: &mut [f64]) {
    for x in xs.iter_mut() {
        *x = x.tanh();
    }
}

macro_rules! slice_fn {
    ($name:ident, $t:ty, $scalar:ident) => {
        /// `sp[i], s[i] = softplus(xs[i]), σ(xs[i])`, bit for bit the scalar
        /// function's, vectorised for the active family's width
        /// ([`super::wide::wide!`]: AVX-512F, AVX2 or the baseline).
        ///
        /// # Panics
        /// If the three lengths differ.
        pub(crate) fn $name(xs: &[$t], sp: &mut [$t], s: &mut [$t]) {
            assert!(
                xs.len() == sp.len() && xs.len() == s.len(),
                "softplus_sigmoid: {} inputs, {} and {} outputs",
                xs.len(),
                sp.len(),
                s.len()
            );
            #[inline(always)]
            fn body(xs: &[$t], sp: &mut [$t], s: &mut [$t]) {
                for ((&x, o), si) in xs.iter().zip(sp.iter_mut()).zip(s.iter_mut()) {
                    let (a, b) = $scalar(x);
                    *o = a;
                    *si = b;
                }
            }
            super::wide::wide!(body<>(xs: &[$t], sp: &mut [$t], s: &mut [$t]) -> ())
        }
    };
}

slice_fn!(softplus_sigmoid_slice_f64, f64, softplus_sigmoid);
slice_fn!(softplus_sigmoid_slice_f32, f32, softplus_sigmoid_f32);

macro_rules! sigmoid_slice_fn {
    ($name:ident, $t:ty, $scalar:ident) => {
        /// `x ← σ(x)` over a slice, bit for bit the σ of the scalar
        /// function (`crate::Real::sigmoid` of the type), vectorised for the
        /// active family's width ([`super::wide::wide!`]); the softplus that
        /// the scalar function also returns is not computed.
        pub(crate) fn $name(xs: &mut [$t]) {
            #[inline(always)]
            fn body(xs: &mut [$t]) {
                for x in xs.iter_mut() {
                    *x = $scalar(*x).1;
                }
            }
            super::wide::wide!(body<>(xs: &mut [$t]) -> ())
        }
    };
}

sigmoid_slice_fn!(sigmoid_slice_f64, f64, softplus_sigmoid);
sigmoid_slice_fn!(sigmoid_slice_f32, f32, softplus_sigmoid_f32);

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in ulps (0 for equal bits or two NaNs).
    fn ulps(a: f64, b: f64) -> u64 {
        if a.is_nan() && b.is_nan() {
            return 0;
        }
        let key = |x: f64| {
            let b = x.to_bits() as i64;
            if b < 0 {
                i64::MIN - b
            } else {
                b
            }
        };
        key(a).abs_diff(key(b))
    }

    /// Distance in f32 ulps.
    fn ulps32(a: f32, b: f32) -> u64 {
        ulps(a as f64, b as f64).min(if a.is_nan() && b.is_nan() {
            0
        } else {
            let key = |x: f32| {
                let b = x.to_bits() as i32 as i64;
                if b < 0 {
                    i32::MIN as i64 - b
                } else {
                    b
                }
            };
            key(a).abs_diff(key(b))
        })
    }

    /// Arguments: ±0, subnormals, tiny, around the branch points, the
    /// exponential's underflow, large, ±∞, NaN, and a dense sweep.
    fn args() -> Vec<f64> {
        let mut v = vec![
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            5e-324,
            1e-300,
            1e-20,
            1e-10,
            0.5,
            std::f64::consts::LN_2,
            1.0,
            36.0,
            37.0,
            700.0,
            708.5,
            709.9,
            744.0,
            745.1,
            745.2,
            745.5,
            746.0,
            800.0,
            1e10,
            1e300,
            f64::MAX,
            f64::INFINITY,
            f64::NAN,
        ];
        let mut x = 1e-9_f64;
        while x < 760.0 {
            v.push(x);
            x *= 1.0007;
        }
        let mut x = 0.0;
        while x < 40.0 {
            v.push(x);
            x += 0.000_37;
        }
        let neg: Vec<f64> = v.iter().map(|x| -x).collect();
        v.extend(neg);
        v
    }

    #[test]
    fn exponential_and_log1p_are_within_one_ulp_of_the_c_library() {
        for x in args() {
            let t = -x.abs();
            assert!(
                ulps(exp_nonpos(t), t.exp()) <= 1,
                "exp({t}) = {} vs {}",
                exp_nonpos(t),
                t.exp()
            );
            let e = t.exp();
            assert!(
                ulps(ln_1p_unit(e), e.ln_1p()) <= 1,
                "ln_1p({e}) = {} vs {}",
                ln_1p_unit(e),
                e.ln_1p()
            );
        }
        assert!(exp_nonpos(f64::NAN).is_nan() && ln_1p_unit(f64::NAN).is_nan());
        assert_eq!(
            (exp_nonpos(f64::NEG_INFINITY), ln_1p_unit(1.0)),
            (0.0, std::f64::consts::LN_2)
        );
    }

    /// The formulas with the C library's `exp` and `log1p`.
    fn reference(x: f64) -> (f64, f64) {
        let e = (-x.abs()).exp();
        let pos = if x > 0.0 { x } else { 0.0 };
        let s = if x >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        (pos + e.ln_1p(), s)
    }

    /// `tanh_f32` is within 1 ulp of the C library's `f64` tanh rounded to
    /// `f32` (and of `tanhf`'s within 2) for ±0, subnormals, tiny, around the
    /// series' bound, large, ±∞, NaN and a dense sweep; keeps a zero's sign;
    /// and a slice of it (the dense layer's loop) has the scalar bits.
    #[test]
    fn tanh_f32_is_within_one_ulp_of_the_rounded_f64_tanh() {
        let mut xs: Vec<f32> = args().iter().map(|&x| x as f32).collect();
        let b = TANH_SERIES as f32;
        for x in [
            b,
            b * 0.999,
            b * 1.001,
            f32::MIN_POSITIVE,
            1e-45,
            9.0,
            9.1,
            20.0,
        ] {
            xs.extend([x, -x]);
        }
        let (mut worst, mut off) = (0, 0);
        for &x in &xs {
            let got = tanh_f32(x);
            let want = (x as f64).tanh() as f32;
            let d = ulps32(got, want);
            assert!(
                d <= 1,
                "tanh_f32({x:e}) = {got:e}, rounded f64 tanh {want:e}: {d} ulps"
            );
            assert!(
                ulps32(got, x.tanh()) <= 2,
                "tanh_f32({x:e}) = {got:e}, tanhf {:e}",
                x.tanh()
            );
            if x == 0.0 {
                assert_eq!(got.to_bits(), x.to_bits(), "tanh_f32 of {x:?}");
            }
            worst = worst.max(d);
            off += usize::from(d > 0);
        }
        assert!(tanh_f32(f32::NAN).is_nan());
        for family in crate::kernels::wide::families() {
            let mut ys = xs.clone();
            crate::kernels::with_family(family, || tanh_slice_f32(&mut ys));
            for (x, y) in xs.iter().zip(&ys) {
                let want = tanh_f32(*x);
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "{family}: tanh_slice_f32 gives {y:e} for {x:e}, tanh_f32 {want:e}"
                );
            }
        }
        eprintln!(
            "tanh_f32: {} arguments, {off} not the rounded f64 tanh, worst {worst} ulp",
            xs.len()
        );
    }

    #[test]
    fn softplus_and_sigmoid_are_within_two_ulps_and_the_slices_have_the_scalar_bits() {
        let xs = args();
        for &x in &xs {
            let ((sp, s), (rsp, rs)) = (softplus_sigmoid(x), reference(x));
            assert!(
                ulps(sp, rsp) <= 2 && ulps(s, rs) <= 2,
                "x = {x}: ({sp}, {s}) vs ({rsp}, {rs})"
            );
            let (sp32, s32) = softplus_sigmoid_f32(x as f32);
            // f32: within 1 f32 ulp of the f64 formulas rounded to f32.
            let (r32sp, r32s) = reference(x as f32 as f64);
            assert!(
                ulps32(sp32, r32sp as f32) <= 1 && ulps32(s32, r32s as f32) <= 1,
                "f32 {x}: ({sp32}, {s32}) vs ({r32sp}, {r32s})"
            );
        }
        assert_eq!(softplus_sigmoid(f64::INFINITY), (f64::INFINITY, 1.0));
        assert_eq!(softplus_sigmoid(f64::NEG_INFINITY), (0.0, 0.0));
        let (a, b) = softplus_sigmoid(f64::NAN);
        assert!(a.is_nan() && b.is_nan());
        // The vectorised slices (every length's tail) against the scalars, bit for bit.
        for n in [0, 1, 7, 8, 9, 17, xs.len()] {
            let (mut sp, mut s) = (vec![0.0; n], vec![0.0; n]);
            softplus_sigmoid_slice_f64(&xs[..n], &mut sp, &mut s);
            for i in 0..n {
                let (a, b) = softplus_sigmoid(xs[i]);
                assert!(
                    ulps(a, sp[i]) == 0 && ulps(b, s[i]) == 0,
                    "slice f64 at {}",
                    xs[i]
                );
            }
            let mut sig = xs[..n].to_vec();
            sigmoid_slice_f64(&mut sig);
            for i in 0..n {
                let b = softplus_sigmoid(xs[i]).1;
                assert!(ulps(b, sig[i]) == 0, "sigmoid slice f64 at {}", xs[i]);
            }
            let x32: Vec<f32> = xs[..n].iter().map(|&x| x as f32).collect();
            let mut sig = x32.clone();
            sigmoid_slice_f32(&mut sig);
            for i in 0..n {
                let b = softplus_sigmoid_f32(x32[i]).1;
                assert!(
                    b.to_bits() == sig[i].to_bits() || b.is_nan() && sig[i].is_nan(),
                    "sigmoid slice f32 at {}",
                    x32[i]
                );
            }
            let (mut sp, mut s) = (vec![0.0; n], vec![0.0; n]);
            softplus_sigmoid_slice_f32(&x32, &mut sp, &mut s);
            for i in 0..n {
                let (a, b) = softplus_sigmoid_f32(x32[i]);
                assert!(
                    a.to_bits() == sp[i].to_bits() || a.is_nan() && sp[i].is_nan(),
                    "slice f32 at {}",
                    x32[i]
                );
                assert!(
                    b.to_bits() == s[i].to_bits() || b.is_nan() && s[i].is_nan(),
                    "slice f32 at {}",
                    x32[i]
                );
            }
        }
    }
}
