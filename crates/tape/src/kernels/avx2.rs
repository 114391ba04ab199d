//! [`super::Family::Avx2`]: the register-blocked kernels of `simd.rs`
//! compiled for AVX2+FMA (`f32 × 8`, `f64 × 4` vectors in 16 `ymm`
//! registers), for the small products of `f32`, `f64`, `Dual<f32>` and
//! `Dual<f64>`; and, for other element types (nested duals) or a strided
//! operand too large to pack, the portable loop compiled with AVX2.
//!
//! The kernels accumulate with fused multiply-adds (`vfmadd231ps/pd`): for each
//! output element `s ← fma(a_il, b_lj, s)` in increasing `l`, from zero, and a
//! dual tangent `s ← fma(a.v, b.d, fma(a.d, b.v, s))`; the epilogue `α·s (+ β·c)`
//! rounds each product and sum on its own. So the results are not the portable
//! loop's bits; the bound between them is in `mod.rs` ("Accuracy"). The
//! portable-loop fallback has no fused operations (Rust never contracts
//! `a * b + c`), so it gives the portable loop's bits.
//!
//! Register blocks (16 `ymm` registers): up to four rows by two vectors for
//! real products (8 accumulators, 2 vectors of B, a broadcast), four rows by one
//! vector or two rows by two for duals (2·MR·NV accumulators, 2·NV parts of B
//! and 2 broadcasts: at most 14). The masks of the edge vectors are integer vectors
//! (`vmaskmovps/pd`): a masked-out lane is neither read nor written.

use super::MatRef;
use crate::real::Real;

#[cfg(target_arch = "x86_64")]
pub(crate) use imp::{Avx2, F32x8, F64x4};

/// Runs the portable loop compiled with AVX2 if this CPU has the AVX2
/// family (AVX2 and FMA); `false` means "not taken" (the caller runs the
/// plain loop). Same bits as the plain loop.
pub(super) fn small<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::family::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (detected on the line above); the
        // function is otherwise safe code.
        unsafe { small_avx2(alpha, a, b, beta, c) };
        return true;
    }
    let _ = (alpha, a, b, beta, c);
    false
}

/// `portable::small` compiled with AVX2 (it is `#[inline(always)]`).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn small_avx2<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    super::portable::small(alpha, a, b, beta, c);
}

/// The x86_64 code. Every `unsafe fn` in here requires a CPU with AVX2 and
/// FMA; each `// SAFETY:` comment says where that was detected and what else
/// it uses.
#[cfg(target_arch = "x86_64")]
mod imp {
    use crate::kernels::family::has_avx2_fma;
    use crate::kernels::portable::pack;
    use crate::kernels::simd::{isa, Vectors};
    use std::arch::x86_64::*;

    isa!(
        /// The AVX2+FMA instruction set ([`Isa`](crate::kernels::simd::Isa)):
        /// real blocks up to 4 rows × 2 vectors, dual 4 × 1 or 2 × 2.
        Avx2,
        features "avx2,fma",
        vec Avx2,
        available has_avx2_fma,
        pack_t pack,
        nv [2, 2],
        mr [[4; 4], [4, 2, 2, 2]]
    );

    /// `f32 × 8`.
    pub(crate) struct F32x8;
    /// `f64 × 4`.
    pub(crate) struct F64x4;

    /// `impl Vectors` for one AVX2 vector shape. The mask of the first `c`
    /// lanes is `iota < c` as an integer vector; `madd` is `vfmadd`
    /// (`fma(x, y, acc)`, one rounding). `deinterleave` uses in-lane shuffles
    /// only, so its outputs are permuted (`f32`: pairs 0, 1, 4, 5, 2, 3, 6, 7;
    /// `f64`: 0, 2, 1, 3) the same way for both parts, and `interleave`
    /// undoes exactly that.
    ///
    /// Every method's contract (see [`Vectors`]) is the intrinsic's: a CPU
    /// with AVX2 and FMA (detected once per product by `Avx2::available`),
    /// and for loads and stores a pointer valid for the lanes in the mask.
    macro_rules! impl_vectors {
        ($s:ident, $t:ty, $v:ty, $n:literal, mask($count:ident) $mask:block,
         $zero:ident, $set1:ident, $loadu:ident, $load:ident, $store:ident, $add:ident,
         $mul:ident, $fmadd:ident, deinterleave($l:ident, $h:ident) $de:block,
         interleave($pv:ident, $pd:ident) $in:block) => {
            impl Vectors for $s {
                type E = $t;
                type V = $v;
                type M = __m256i;
                const N: usize = $n;
                #[inline(always)]
                unsafe fn mask($count: usize) -> __m256i {
                    // SAFETY: AVX2 is present (this fn's contract); registers only.
                    unsafe { $mask }
                }
                #[inline(always)]
                unsafe fn zero() -> $v {
                    // SAFETY: AVX is present (this fn's contract); registers only.
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn splat(x: $t) -> $v {
                    // SAFETY: AVX is present (this fn's contract); registers only.
                    unsafe { $set1(x) }
                }
                #[inline(always)]
                unsafe fn load(p: *const $t) -> $v {
                    // SAFETY: AVX is present and `p` is valid for N lanes (this fn's contract).
                    unsafe { $loadu(p) }
                }
                #[inline(always)]
                unsafe fn load_masked(p: *const $t, m: __m256i) -> $v {
                    // SAFETY: AVX is present and `p` is valid for the lanes of
                    // `m` (this fn's contract); masked-out lanes are not read
                    // and raise no fault.
                    unsafe { $load(p, m) }
                }
                #[inline(always)]
                unsafe fn store_masked(p: *mut $t, v: $v, m: __m256i) {
                    // SAFETY: AVX is present and `p` is valid for the lanes of
                    // `m` (this fn's contract); masked-out lanes are not written.
                    unsafe { $store(p, m, v) }
                }
                #[inline(always)]
                unsafe fn add(a: $v, b: $v) -> $v {
                    // SAFETY: AVX is present (this fn's contract); registers only.
                    unsafe { $add(a, b) }
                }
                #[inline(always)]
                unsafe fn mul(a: $v, b: $v) -> $v {
                    // SAFETY: AVX is present (this fn's contract); registers only.
                    unsafe { $mul(a, b) }
                }
                #[inline(always)]
                unsafe fn madd(acc: $v, x: $v, y: $v) -> $v {
                    // SAFETY: FMA is present (this fn's contract); registers only.
                    unsafe { $fmadd(x, y, acc) }
                }
                #[inline(always)]
                unsafe fn madd2(acc: $v, x1: $v, y1: $v, x2: $v, y2: $v) -> $v {
                    // SAFETY: FMA is present (this fn's contract); registers only.
                    unsafe { $fmadd(x2, y2, $fmadd(x1, y1, acc)) }
                }
                #[inline(always)]
                unsafe fn deinterleave($l: $v, $h: $v) -> ($v, $v) {
                    // SAFETY: AVX is present (this fn's contract); registers only.
                    unsafe { $de }
                }
                #[inline(always)]
                unsafe fn interleave($pv: $v, $pd: $v) -> ($v, $v) {
                    // SAFETY: AVX is present (this fn's contract); registers only.
                    unsafe { $in }
                }
            }
        };
    }

    impl_vectors!(
        F32x8,
        f32,
        __m256,
        8,
        mask(count) {
            let count = count.min(8) as i32;
            _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        },
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_maskload_ps,
        _mm256_maskstore_ps,
        _mm256_add_ps,
        _mm256_mul_ps,
        _mm256_fmadd_ps,
        // lo = (v0 d0 v1 d1 | v2 d2 v3 d3), hi = (v4 d4 v5 d5 | v6 d6 v7 d7):
        // v = (v0 v1 v4 v5 | v2 v3 v6 v7), d likewise; unpack undoes it.
        deinterleave(lo, hi) {
            (_mm256_shuffle_ps::<0x88>(lo, hi), _mm256_shuffle_ps::<0xDD>(lo, hi))
        },
        interleave(v, d) {
            (_mm256_unpacklo_ps(v, d), _mm256_unpackhi_ps(v, d))
        }
    );
    impl_vectors!(
        F64x4,
        f64,
        __m256d,
        4,
        mask(count) {
            let count = count.min(4) as i64;
            _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3))
        },
        _mm256_setzero_pd,
        _mm256_set1_pd,
        _mm256_loadu_pd,
        _mm256_maskload_pd,
        _mm256_maskstore_pd,
        _mm256_add_pd,
        _mm256_mul_pd,
        _mm256_fmadd_pd,
        // lo = (v0 d0 | v1 d1), hi = (v2 d2 | v3 d3): v = (v0 v2 | v1 v3),
        // d likewise; unpack undoes it.
        deinterleave(lo, hi) {
            (_mm256_unpacklo_pd(lo, hi), _mm256_unpackhi_pd(lo, hi))
        },
        interleave(v, d) {
            (_mm256_unpacklo_pd(v, d), _mm256_unpackhi_pd(v, d))
        }
    );
}
