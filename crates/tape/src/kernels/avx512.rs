//! [`super::Family::Avx512`]: the register-blocked kernels of `simd.rs`
//! compiled for AVX-512F (`f32 × 16`, `f64 × 8` vectors), for the small
//! products of `f32`, `f64`, `Dual<f32>` and `Dual<f64>`, and a transposing
//! packer for their strided operands.
//!
//! They compute exactly what the portable loop (`portable.rs`) computes: each
//! product and each sum rounded on its own (no fused multiply-add), added in
//! increasing `l`, the epilogue `α·s` or `α·s + β·c` as there, and a dual
//! product adding `a.d·b.v + a.v·b.d` to the tangent accumulator, as `Dual`'s
//! `Mul` and `AddAssign` do. So this family's bits are the portable loop's.
//!
//! Register blocks: for real products up to eight rows by one or two vectors,
//! six by three, four by four (64 `f32` columns): at most 18 accumulators +
//! NV vectors of B + a splat ≤ 32 registers (the sine MLP's 10-row products
//! with 40 columns, 3 vectors, are two blocks of 6 + 4 rows instead of three
//! of 4 + 4 + 2); three (two) rows by three (four) vectors for duals: at most
//! 2·MR·NV accumulators + 2·NV parts of B + 2 splats ≤ 32 registers.

#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) use imp::Tiles;
#[cfg(target_arch = "x86_64")]
pub(crate) use imp::{large, Avx512, F32x16, F64x8};

/// The x86_64 code. Every `unsafe fn` in here requires a CPU with AVX-512F;
/// each `// SAFETY:` comment says where that was detected and what else it
/// uses.
#[cfg(target_arch = "x86_64")]
mod imp {
    use crate::kernels::family::{has_avx2_fma, has_avx512};
    use crate::kernels::packed::packed_entry;
    use crate::kernels::packed::Transposition;
    use crate::kernels::simd::{isa, pack_transposed, transpose_tiles, Vectors};
    use crate::kernels::{MatRef, PACK};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    isa!(
        /// The AVX-512F instruction set ([`Isa`](crate::kernels::simd::Isa)):
        /// real blocks up to 8 rows × 2 vectors, 6 × 3, 4 × 4; duals 3 × 3 or 2 × 4
        /// (2·MR·NV accumulators + 2·NV parts of B + 2 splats ≤ 32).
        Avx512,
        features "avx512f",
        vec Avx512,
        available has_avx512,
        pack_t pack_t,
        nv [4, 4],
        mr [[8, 8, 6, 4], [3, 3, 3, 2]]
    );

    /// `f32 × 16`.
    pub(crate) struct F32x16;
    /// `f64 × 8`.
    pub(crate) struct F64x8;

    /// `impl Vectors` for one AVX-512F vector shape: its vector and mask
    /// types, lanes, and the intrinsics of that width, plus the permutation
    /// indices that split interleaved pairs (`even`, `odd`) and join them
    /// (`lo`, `hi`). `madd` is a product and a sum, each rounded.
    ///
    /// Every method's contract (see [`Vectors`]) is the intrinsic's: a CPU
    /// with AVX-512F (detected once per product by `Avx512::available`), and
    /// for loads and stores a pointer valid for the lanes in the mask.
    macro_rules! impl_vectors {
        ($s:ident, $t:ty, $v:ty, $m:ty, $n:literal, $zero:ident, $set1:ident, $loadu:ident,
         $load:ident, $store:ident, $add:ident, $mul:ident, $fmadd:ident, $perm:ident, $setr:ident,
         even $even:tt, odd $odd:tt, lo $lo:tt, hi $hi:tt) => {
            impl Vectors for $s {
                type E = $t;
                type V = $v;
                type M = $m;
                const N: usize = $n;
                #[inline(always)]
                unsafe fn mask(count: usize) -> $m {
                    if count >= $n {
                        !0
                    } else {
                        ((1 as $m) << count) - 1
                    }
                }
                #[inline(always)]
                unsafe fn zero() -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn splat(x: $t) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $set1(x) }
                }
                #[inline(always)]
                unsafe fn load(p: *const $t) -> $v {
                    // SAFETY: AVX-512F is present and `p` is valid for N lanes (this fn's contract).
                    unsafe { $loadu(p) }
                }
                #[inline(always)]
                unsafe fn load_masked(p: *const $t, m: $m) -> $v {
                    // SAFETY: AVX-512F is present and `p` is valid for the lanes of `m` (this fn's contract).
                    unsafe { $load(m, p) }
                }
                #[inline(always)]
                unsafe fn store_masked(p: *mut $t, v: $v, m: $m) {
                    // SAFETY: AVX-512F is present and `p` is valid for the lanes of `m` (this fn's contract).
                    unsafe { $store(p, m, v) }
                }
                #[inline(always)]
                unsafe fn add(a: $v, b: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $add(a, b) }
                }
                #[inline(always)]
                unsafe fn mul(a: $v, b: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $mul(a, b) }
                }
                #[inline(always)]
                unsafe fn madd(acc: $v, x: $v, y: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $add(acc, $mul(x, y)) }
                }
                #[inline(always)]
                unsafe fn fma(acc: $v, x: $v, y: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $fmadd(x, y, acc) }
                }
                #[inline(always)]
                unsafe fn madd2(acc: $v, x1: $v, y1: $v, x2: $v, y2: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $add(acc, $add($mul(x1, y1), $mul(x2, y2))) }
                }
                #[inline(always)]
                unsafe fn deinterleave(lo: $v, hi: $v) -> ($v, $v) {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { ($perm(lo, $setr $even, hi), $perm(lo, $setr $odd, hi)) }
                }
                #[inline(always)]
                unsafe fn interleave(v: $v, d: $v) -> ($v, $v) {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { ($perm(v, $setr $lo, d), $perm(v, $setr $hi, d)) }
                }
            }
        };
    }

    impl_vectors!(
        F32x16,
        f32,
        __m512,
        __mmask16,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_maskz_loadu_ps,
        _mm512_mask_storeu_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        _mm512_fmadd_ps,
        _mm512_permutex2var_ps,
        _mm512_setr_epi32,
        even(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        odd(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
        lo(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        hi(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
    );
    impl_vectors!(
        F64x8,
        f64,
        __m512d,
        __mmask8,
        8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_loadu_pd,
        _mm512_maskz_loadu_pd,
        _mm512_mask_storeu_pd,
        _mm512_add_pd,
        _mm512_mul_pd,
        _mm512_fmadd_pd,
        _mm512_permutex2var_pd,
        _mm512_setr_epi64,
        even(0, 2, 4, 6, 8, 10, 12, 14),
        odd(1, 3, 5, 7, 9, 11, 13, 15),
        lo(0, 8, 1, 9, 2, 10, 3, 11),
        hi(4, 12, 5, 13, 6, 14, 7, 15)
    );

    /// `portable::pack` for a transposed right operand (`B[l, j] = src[l + j·cs]`,
    /// unit row stride) of 4- or 8-byte elements: 16 × 16 (or 8 × 8) tiles
    /// transposed in registers ([`pack_transposed`]). Other views go through
    /// `portable::pack`.
    ///
    /// # Panics
    /// If `k·n` exceeds the buffer.
    fn pack_t<'b, T: Copy>(b: MatRef<'_, T>, buf: &'b mut [MaybeUninit<T>; PACK]) -> &'b [T] {
        pack_transposed(b, buf, has_avx512(), transpose_32, transpose_64)
    }

    packed_entry!(
        /// A large product by packed panels (`packed.rs`) with 8 × 32 (`f32`)
        /// or 8 × 16 (`f64`) register tiles: 16 accumulators, 2 vectors of
        /// `B`, a broadcast (of 32 registers).
        features "avx512f",
        vec Avx512,
        mr 8
    );

    /// Runs a [`Transposition`] of 4-byte elements.
    ///
    /// # Safety
    /// AVX-512F, and the buffers as [`transpose_tiles`] requires (as
    /// [`pack_transposed`] or `packed::pack` pass them).
    ///
    /// Sizes that are multiples of 8 but not of 16 (the sine MLP's 40 × 40
    /// weight: 4 whole 16 × 16 tiles and 5 masked edges) go through the AVX2
    /// packer's 8 × 8 tiles, all whole; only bits move, so the result is the
    /// same.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_32(t: Transposition<f32>) {
        let eights = t.k.is_multiple_of(8)
            && t.n.is_multiple_of(8)
            && !(t.k.is_multiple_of(16) && t.n.is_multiple_of(16));
        if eights && has_avx2_fma() {
            // SAFETY: AVX2 and FMA detected just now; the buffers are this
            // fn's, which are the AVX2 packer's contract too.
            return unsafe { crate::kernels::avx2::transpose_32(t) };
        }
        // SAFETY: this fn's contract, which is `transpose_tiles`'s.
        unsafe { transpose_tiles::<F32x16, 16>(t, |r| tile_32(&r)) }
    }

    /// Runs a [`Transposition`] of 8-byte elements.
    ///
    /// # Safety
    /// AVX-512F, and the buffers as [`transpose_tiles`] requires (as
    /// [`pack_transposed`] or `packed::pack` pass them).
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_64(t: Transposition<f64>) {
        // SAFETY: this fn's contract, which is `transpose_tiles`'s.
        unsafe { transpose_tiles::<F64x8, 8>(t, |r| tile_64(&r)) }
    }

    /// A 16 × 16 transpose of 32-bit lanes: pairs of rows, then pairs of pairs
    /// (as 64-bit), then the 128-bit lanes as a 4 × 4 transpose (b[4q + c]
    /// lane L holds rows 4q..4q+4 of column 4L + c).
    #[inline(always)]
    unsafe fn tile_32(r: &[__m512; 16]) -> [__m512; 16] {
        // SAFETY: register shuffles only; AVX-512F is this fn's contract
        // (called from `transpose_32`).
        unsafe {
            let a: [__m512; 16] = std::array::from_fn(|i| {
                let (x, y) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(x, y)
                } else {
                    _mm512_unpackhi_ps(x, y)
                }
            });
            let bq: [__m512; 16] = std::array::from_fn(|i| {
                let (q, c) = (i / 4, i % 4);
                let (x, y) = (
                    _mm512_castps_pd(a[4 * q + c / 2]),
                    _mm512_castps_pd(a[4 * q + 2 + c / 2]),
                );
                _mm512_castpd_ps(if c % 2 == 0 {
                    _mm512_unpacklo_pd(x, y)
                } else {
                    _mm512_unpackhi_pd(x, y)
                })
            });
            let mut cols = [_mm512_setzero_ps(); 16];
            for c in 0..4 {
                let s0 = _mm512_shuffle_f32x4::<0x88>(bq[c], bq[4 + c]);
                let s1 = _mm512_shuffle_f32x4::<0xDD>(bq[c], bq[4 + c]);
                let s2 = _mm512_shuffle_f32x4::<0x88>(bq[8 + c], bq[12 + c]);
                let s3 = _mm512_shuffle_f32x4::<0xDD>(bq[8 + c], bq[12 + c]);
                cols[c] = _mm512_shuffle_f32x4::<0x88>(s0, s2);
                cols[8 + c] = _mm512_shuffle_f32x4::<0xDD>(s0, s2);
                cols[4 + c] = _mm512_shuffle_f32x4::<0x88>(s1, s3);
                cols[12 + c] = _mm512_shuffle_f32x4::<0xDD>(s1, s3);
            }
            cols
        }
    }

    /// An 8 × 8 transpose of 64-bit lanes: pairs of rows (t[2p] lane L = rows
    /// 2p, 2p+1 of column 2L; t[2p+1] of 2L+1), then the 128-bit lanes.
    #[inline(always)]
    unsafe fn tile_64(r: &[__m512d; 8]) -> [__m512d; 8] {
        // SAFETY: register shuffles only; AVX-512F is this fn's contract
        // (called from `transpose_64`).
        unsafe {
            let t: [__m512d; 8] = std::array::from_fn(|i| {
                let (x, y) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_pd(x, y)
                } else {
                    _mm512_unpackhi_pd(x, y)
                }
            });
            let mut cols = [_mm512_setzero_pd(); 8];
            for o in 0..2 {
                let u0 = _mm512_shuffle_f64x2::<0x88>(t[o], t[2 + o]);
                let u1 = _mm512_shuffle_f64x2::<0xDD>(t[o], t[2 + o]);
                let u4 = _mm512_shuffle_f64x2::<0x88>(t[4 + o], t[6 + o]);
                let u5 = _mm512_shuffle_f64x2::<0xDD>(t[4 + o], t[6 + o]);
                cols[o] = _mm512_shuffle_f64x2::<0x88>(u0, u4);
                cols[4 + o] = _mm512_shuffle_f64x2::<0xDD>(u0, u4);
                cols[2 + o] = _mm512_shuffle_f64x2::<0x88>(u1, u5);
                cols[6 + o] = _mm512_shuffle_f64x2::<0xDD>(u1, u5);
            }
            cols
        }
    }
}
