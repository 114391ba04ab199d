//! [`super::Family::Avx2`]: the register-blocked kernels of `simd.rs`
//! compiled for AVX2+FMA (`f32 × 8`, `f64 × 4` vectors in 16 `ymm`
//! registers), for the small products of `f32`, `f64`, `Dual<f32>` and
//! `Dual<f64>`; a transposing packer for their strided operands (8 × 8 or
//! 4 × 4 tiles transposed in registers); and, for other element types (nested
//! duals) or a strided operand too large to pack, the portable loop compiled
//! with AVX2.
//!
//! The kernels accumulate with fused multiply-adds (`vfmadd231ps/pd`): for each
//! output element `s ← fma(a_il, b_lj, s)` in increasing `l`, from zero, and a
//! dual tangent `s ← fma(a.v, b.d, fma(a.d, b.v, s))`; the epilogue `α·s (+ β·c)`
//! rounds each product and sum on its own. So the results are not the portable
//! loop's bits; the bound between them is in `mod.rs` ("Accuracy"). The
//! portable-loop fallback has no fused operations (Rust never contracts
//! `a * b + c`), so it gives the portable loop's bits.
//!
//! Register blocks (16 `ymm` registers): up to five rows by two vectors or
//! eight rows by one for real products (10 or 8 accumulators, the vectors of
//! B, a broadcast), four rows by one vector or two rows by two for duals
//! (2·MR·NV accumulators, 2·NV parts of B and 2 broadcasts: at most 14). A
//! fused multiply-add has a latency of about 4 cycles and 2 issue per cycle,
//! so a real block needs 8 independent accumulators to keep both units busy.
//! The sine MLP's products have 10 or 40 rows and 40 columns (5 vectors):
//! real blocks of 5 × 2 and 8 × 1 cover them with fewer latency-bound blocks
//! than 4 × 2 and 4 × 1 did (dual blocks of 5 × 1 were measured slower than
//! 4 × 1 / 2 × 2, so those stay). The masks of the edge vectors are integer vectors:
//! a masked-out lane is neither read nor written. Masked loads are `vmaskmovps/pd`;
//! masked stores are written as a half, a pair and a lane of plain stores,
//! because `vmaskmovps/pd` to memory is microcoded on AMD's Zen cores (in a
//! profile of `maml_sine:r10:exact_batched` on a Zen 3 core, 44 % of the dual
//! kernel's samples sat on its masked stores).

use super::MatRef;
use crate::real::Real;

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) use imp::Tiles;
#[cfg(target_arch = "x86_64")]
pub(crate) use imp::{large, transpose_32, Avx2, F32x8, F64x4};

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
    use crate::kernels::packed::packed_entry;
    use crate::kernels::packed::Transposition;
    use crate::kernels::simd::{isa, pack_transposed, transpose_tiles, Vectors};
    use crate::kernels::{MatRef, PACK};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    isa!(
        /// The AVX2+FMA instruction set ([`Isa`](crate::kernels::simd::Isa)):
        /// real blocks up to 5 rows × 2 vectors or 8 × 1, dual 4 × 1 or 2 × 2.
        Avx2,
        features "avx2,fma",
        vec Avx2,
        available has_avx2_fma,
        pack_t pack_t,
        nv [2, 2],
        mr [[8, 5, 4, 4], [4, 2, 2, 2]]
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
         $zero:ident, $set1:ident, $loadu:ident, $load:ident,
         store_masked($sp:ident, $sv:ident, $sm:ident) $store:block, $add:ident,
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
                unsafe fn store_masked($sp: *mut $t, $sv: $v, $sm: __m256i) {
                    // SAFETY: AVX is present and `p` is valid for the lanes of
                    // `m` (this fn's contract), a prefix (`Vectors::mask`
                    // makes every mask); only those lanes are written.
                    unsafe { $store }
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
                unsafe fn fma(acc: $v, x: $v, y: $v) -> $v {
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
        store_masked(p, v, m) {
            let count = _mm256_movemask_ps(_mm256_castsi256_ps(m)).count_ones() as usize;
            debug_assert_eq!(_mm256_movemask_ps(_mm256_castsi256_ps(m)), (1 << count) - 1);
            if count == 8 {
                _mm256_storeu_ps(p, v);
            } else {
                // Halves, pairs, then one lane: `vmaskmovps` to memory is
                // microcoded on AMD's Zen cores (about ten plain stores).
                let (mut x, mut p) = (_mm256_castps256_ps128(v), p);
                if count & 4 != 0 {
                    _mm_storeu_ps(p, x);
                    (x, p) = (_mm256_extractf128_ps::<1>(v), p.wrapping_add(4));
                }
                if count & 2 != 0 {
                    _mm_storel_epi64(p.cast(), _mm_castps_si128(x));
                    (x, p) = (_mm_movehl_ps(x, x), p.wrapping_add(2));
                }
                if count & 1 != 0 {
                    _mm_store_ss(p, x);
                }
            }
        },
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
        store_masked(p, v, m) {
            let count = _mm256_movemask_pd(_mm256_castsi256_pd(m)).count_ones() as usize;
            debug_assert_eq!(_mm256_movemask_pd(_mm256_castsi256_pd(m)), (1 << count) - 1);
            if count == 4 {
                _mm256_storeu_pd(p, v);
            } else {
                // As for f32: a half, then one lane.
                let (mut x, mut p) = (_mm256_castpd256_pd128(v), p);
                if count & 2 != 0 {
                    _mm_storeu_pd(p, x);
                    (x, p) = (_mm256_extractf128_pd::<1>(v), p.wrapping_add(2));
                }
                if count & 1 != 0 {
                    _mm_store_sd(p, x);
                }
            }
        },
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

    /// `portable::pack` for a transposed right operand (`B[l, j] = src[l + j·cs]`,
    /// unit row stride) of 4- or 8-byte elements: 8 × 8 (or 4 × 4) tiles
    /// transposed in registers ([`pack_transposed`]), instead of one strided
    /// scalar read per element. Other views go through `portable::pack`.
    ///
    /// # Panics
    /// If `k·n` exceeds the buffer.
    fn pack_t<'b, T: Copy>(b: MatRef<'_, T>, buf: &'b mut [MaybeUninit<T>; PACK]) -> &'b [T] {
        pack_transposed(b, buf, has_avx2_fma(), transpose_32, transpose_64)
    }

    packed_entry!(
        /// A large product by packed panels (`packed.rs`) with 6 × 16 (`f32`)
        /// or 6 × 8 (`f64`) register tiles: 12 accumulators, 2 vectors of `B`,
        /// a broadcast (of 16 registers).
        features "avx2,fma",
        vec Avx2,
        mr 6
    );

    /// Runs a [`Transposition`] of 4-byte elements.
    ///
    /// # Safety
    /// AVX2, and the buffers as [`transpose_tiles`] requires (as
    /// [`pack_transposed`] or `packed::pack` pass them).
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn transpose_32(t: Transposition<f32>) {
        // SAFETY: this fn's contract, which is `transpose_tiles`'s.
        unsafe { transpose_tiles::<F32x8, 8>(t, |r| tile_32(&r)) }
    }

    /// Runs a [`Transposition`] of 8-byte elements.
    ///
    /// # Safety
    /// AVX2, and the buffers as [`transpose_tiles`] requires (as
    /// [`pack_transposed`] or `packed::pack` pass them).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose_64(t: Transposition<f64>) {
        // SAFETY: this fn's contract, which is `transpose_tiles`'s.
        unsafe { transpose_tiles::<F64x4, 4>(t, |r| tile_64(&r)) }
    }

    /// An 8 × 8 transpose of 32-bit lanes: pairs of rows (`t[2p]` = rows 2p,
    /// 2p+1 interleaved, low pairs; `t[2p+1]` high pairs), then pairs of
    /// pairs (`q[4h + c]` holds rows 4h..4h+4 of column c in its low 128 bits
    /// and of column c + 4 in its high ones), then the 128-bit halves.
    #[inline(always)]
    unsafe fn tile_32(r: &[__m256; 8]) -> [__m256; 8] {
        // SAFETY: register shuffles only; AVX is this fn's contract (called
        // from `transpose_32`).
        unsafe {
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (x, y) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(x, y)
                } else {
                    _mm256_unpackhi_ps(x, y)
                }
            });
            // Column c (mod 4) of rows 4h..4h+4: from t[4h + c/2] and
            // t[4h + 2 + c/2], low (c even) or high (c odd) pairs.
            let q: [__m256; 8] = std::array::from_fn(|i| {
                let (h, c) = (i / 4, i % 4);
                let (x, y) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
                if c % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(x, y)
                } else {
                    _mm256_shuffle_ps::<0xEE>(x, y)
                }
            });
            std::array::from_fn(|j| {
                let (x, y) = (q[j % 4], q[4 + j % 4]);
                if j < 4 {
                    _mm256_permute2f128_ps::<0x20>(x, y)
                } else {
                    _mm256_permute2f128_ps::<0x31>(x, y)
                }
            })
        }
    }

    /// A 4 × 4 transpose of 64-bit lanes: pairs of rows (`t[2p]` lane pairs
    /// (r_2p,c, r_2p+1,c) for c = 0, 2; `t[2p+1]` for c = 1, 3), then the
    /// 128-bit halves.
    #[inline(always)]
    unsafe fn tile_64(r: &[__m256d; 4]) -> [__m256d; 4] {
        // SAFETY: register shuffles only; AVX is this fn's contract (called
        // from `transpose_64`).
        unsafe {
            let t: [__m256d; 4] = std::array::from_fn(|i| {
                let (x, y) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_pd(x, y)
                } else {
                    _mm256_unpackhi_pd(x, y)
                }
            });
            std::array::from_fn(|j| {
                let (x, y) = (t[j % 2], t[2 + j % 2]);
                if j < 2 {
                    _mm256_permute2f128_pd::<0x20>(x, y)
                } else {
                    _mm256_permute2f128_pd::<0x31>(x, y)
                }
            })
        }
    }
}
