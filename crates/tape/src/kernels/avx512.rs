//! [`super::Family::Avx512`]: AVX-512F kernels for the small products of
//! `f32`, `f64`, `Dual<f32>` and `Dual<f64>`, chosen at run time.
//!
//! They compute exactly what the portable loop (`portable.rs`) computes. For
//! each output element the same products are added in the same order
//! (increasing `l`), each product and each sum rounded on its own (no fused
//! multiply-add), and the epilogue is `α·s` or `α·s + β·c` as there. A dual
//! product adds `a.d·b.v + a.v·b.d` to the tangent accumulator, as `Dual`'s
//! `Mul` and `AddAssign` do. So the bits are the same with and without the
//! kernels, on every machine; only the speed differs. The vector lanes run
//! across the columns `j` of `C`, never across the sum over `l`.
//!
//! Blocking: up to four rows of `A` times a panel of up to four vectors of
//! columns (64 `f32` columns) live in registers for the whole sum over `l`;
//! each row of `B` is loaded once per panel and reused by every row of the
//! block. The last vector of a row is a masked load and a masked store, so `B`
//! and `C` are never read or written past column `n`; addresses are computed
//! with `wrapping_add`, so a vector whose mask is empty (the second half of a
//! dual vector at the end of a row) never forms an out-of-bounds pointer with
//! `add`.
//!
//! Soundness rests on: AVX-512F detected in [`real`]/[`dual`] before any
//! kernel runs; the view invariants (every element of `A` and `B` inside its
//! slice, checked by `MatRef`'s constructors); `C` a dense row-major `m × n`
//! slice (`MatMut::dense_row_major`) and the shapes of a [`Product`]; packing
//! buffers of at most [`PACK`] elements, checked before packing.

use super::Product;
use crate::real::{Dual, Real};

/// Runs the real kernel if this CPU has AVX-512F and the layout suits it;
/// `false` means "not taken" (the caller runs another family).
pub(crate) fn real<E: Lane>(p: &mut Product<'_, E>) -> bool {
    imp::real(p)
}

/// Runs the dual kernel if this CPU has AVX-512F and the layout suits it;
/// `false` means "not taken".
pub(crate) fn dual<E: Lane>(p: &mut Product<'_, Dual<E>>) -> bool {
    imp::dual(p)
}

/// The primitive floats that have kernels: their vector and mask types and
/// the AVX-512F intrinsics of that width.
///
/// Every `unsafe fn` here requires a CPU with AVX-512F; `vload`/`vstore`
/// also require `p` valid for reads/writes of the lanes in `m` (only those
/// are touched; `p` itself need not point into an allocation when `m` is
/// empty).
pub(crate) trait Lane: Real<Base = Self> {
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    type V: Copy;
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    type M: Copy;
    /// Lanes per vector.
    #[cfg(target_arch = "x86_64")]
    const N: usize;
    /// The mask of the first `min(count, N)` lanes.
    #[cfg(target_arch = "x86_64")]
    fn mask(count: usize) -> Self::M;
    #[cfg(target_arch = "x86_64")]
    unsafe fn vzero() -> Self::V;
    #[cfg(target_arch = "x86_64")]
    unsafe fn vsplat(x: Self) -> Self::V;
    /// The lanes in `m` from `p`, zero elsewhere (nothing outside `m` is read).
    #[cfg(target_arch = "x86_64")]
    unsafe fn vload(p: *const Self, m: Self::M) -> Self::V;
    /// Writes the lanes in `m` to `p` (nothing outside `m` is written).
    #[cfg(target_arch = "x86_64")]
    unsafe fn vstore(p: *mut Self, v: Self::V, m: Self::M);
    #[cfg(target_arch = "x86_64")]
    unsafe fn vadd(a: Self::V, b: Self::V) -> Self::V;
    #[cfg(target_arch = "x86_64")]
    unsafe fn vmul(a: Self::V, b: Self::V) -> Self::V;
    /// Splits two vectors holding interleaved pairs `(v0, d0, v1, d1, …)` into
    /// `(v0, v1, …)` and `(d0, d1, …)`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn vdeinterleave(lo: Self::V, hi: Self::V) -> (Self::V, Self::V);
    /// The inverse of [`Lane::vdeinterleave`].
    #[cfg(target_arch = "x86_64")]
    unsafe fn vinterleave(v: Self::V, d: Self::V) -> (Self::V, Self::V);
}

#[cfg(not(target_arch = "x86_64"))]
impl Lane for f32 {}
#[cfg(not(target_arch = "x86_64"))]
impl Lane for f64 {}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::*;
    pub(super) fn real<E: Lane>(_: &mut Product<'_, E>) -> bool {
        false
    }
    pub(super) fn dual<E: Lane>(_: &mut Product<'_, Dual<E>>) -> bool {
        false
    }
}
/// The x86_64 kernels. Every `unsafe fn` in here has one contract: the CPU
/// has AVX-512F, and the operands are as [`real`]/[`dual`] (or `pack_t`) build
/// them: checked views or packed copies, the shapes of a [`Product`], a dense
/// `m × n` output. Each `// SAFETY:` comment says which of these it uses.
#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use crate::kernels::family::has_avx512;
    use crate::kernels::portable::pack;
    use crate::kernels::MatRef;
    use crate::kernels::{fits_pack, PACK};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `impl Lane` for one float type: its vector and mask types, lanes, and
    /// the AVX-512F intrinsics of that width, plus the permutation indices that
    /// split interleaved pairs (`even`, `odd`) and join them (`lo`, `hi`).
    ///
    /// Every method's contract (see [`Lane`]) is the intrinsic's: a CPU with
    /// AVX-512F (detected once per product in `real`/`dual`), and for loads
    /// and stores a pointer valid for the lanes in the mask.
    macro_rules! impl_lane {
        ($t:ty, $v:ty, $m:ty, $n:literal, $zero:ident, $set1:ident, $load:ident,
         $store:ident, $add:ident, $mul:ident, $perm:ident, $setr:ident,
         even $even:tt, odd $odd:tt, lo $lo:tt, hi $hi:tt) => {
            impl Lane for $t {
                type V = $v;
                type M = $m;
                const N: usize = $n;
                #[inline(always)]
                fn mask(count: usize) -> $m {
                    if count >= $n {
                        !0
                    } else {
                        ((1 as $m) << count) - 1
                    }
                }
                #[inline(always)]
                unsafe fn vzero() -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn vsplat(x: $t) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $set1(x) }
                }
                #[inline(always)]
                unsafe fn vload(p: *const $t, m: $m) -> $v {
                    // SAFETY: AVX-512F is present and `p` is valid for the lanes of `m` (this fn's contract).
                    unsafe { $load(m, p) }
                }
                #[inline(always)]
                unsafe fn vstore(p: *mut $t, v: $v, m: $m) {
                    // SAFETY: AVX-512F is present and `p` is valid for the lanes of `m` (this fn's contract).
                    unsafe { $store(p, m, v) }
                }
                #[inline(always)]
                unsafe fn vadd(a: $v, b: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $add(a, b) }
                }
                #[inline(always)]
                unsafe fn vmul(a: $v, b: $v) -> $v {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { $mul(a, b) }
                }
                #[inline(always)]
                unsafe fn vdeinterleave(lo: $v, hi: $v) -> ($v, $v) {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { ($perm(lo, $setr $even, hi), $perm(lo, $setr $odd, hi)) }
                }
                #[inline(always)]
                unsafe fn vinterleave(v: $v, d: $v) -> ($v, $v) {
                    // SAFETY: AVX-512F is present (this fn's contract); registers only.
                    unsafe { ($perm(v, $setr $lo, d), $perm(v, $setr $hi, d)) }
                }
            }
        };
    }

    impl_lane!(
        f32,
        __m512,
        __mmask16,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_maskz_loadu_ps,
        _mm512_mask_storeu_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        _mm512_permutex2var_ps,
        _mm512_setr_epi32,
        even(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        odd(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
        lo(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        hi(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
    );
    impl_lane!(
        f64,
        __m512d,
        __mmask8,
        8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_maskz_loadu_pd,
        _mm512_mask_storeu_pd,
        _mm512_add_pd,
        _mm512_mul_pd,
        _mm512_permutex2var_pd,
        _mm512_setr_epi64,
        even(0, 2, 4, 6, 8, 10, 12, 14),
        odd(1, 3, 5, 7, 9, 11, 13, 15),
        lo(0, 8, 1, 9, 2, 10, 3, 11),
        hi(4, 12, 5, 13, 6, 14, 7, 15)
    );

    /// Columns of `C` per register panel: four vectors.
    const NV_MAX: usize = 4;

    /// Walks C in register panels: vector columns `v0..v0 + nv` (nv ≤ NV_MAX)
    /// by row blocks `i..i + mr` (mr ≤ `mr_max(nv)`), calling
    /// `panel(mr, nv, i, v0)` for each.
    #[inline(always)]
    fn for_panels(
        m: usize,
        vectors: usize,
        mr_max: impl Fn(usize) -> usize,
        mut panel: impl FnMut(usize, usize, usize, usize),
    ) {
        let mut v0 = 0;
        while v0 < vectors {
            let nv = (vectors - v0).min(NV_MAX);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(mr_max(nv));
                panel(mr, nv, i, v0);
                i += mr;
            }
            v0 += nv;
        }
    }

    /// Calls a panel kernel with its const sizes chosen from run-time ones:
    /// `dispatch!(f::<E>, nv, (args))` → `f::<E, NV>(args)`, and
    /// `dispatch!(f::<E>, mr, nv, (args))` → `f::<E, MR, NV>(args)` (sizes 1..=4;
    /// larger values clamp to 4).
    macro_rules! dispatch {
        ($f:ident::<$e:ty>, $nv:expr, $args:tt) => {
            match $nv {
                1 => dispatch!(@call $f::<$e, 1>, $args),
                2 => dispatch!(@call $f::<$e, 2>, $args),
                3 => dispatch!(@call $f::<$e, 3>, $args),
                _ => dispatch!(@call $f::<$e, 4>, $args),
            }
        };
        ($f:ident::<$e:ty>, $mr:expr, $nv:expr, $args:tt) => {
            match $mr {
                1 => dispatch!($f::<$e, 1>, $nv, $args),
                2 => dispatch!($f::<$e, 2>, $nv, $args),
                3 => dispatch!($f::<$e, 3>, $nv, $args),
                _ => dispatch!($f::<$e, 4>, $nv, $args),
            }
        };
        ($f:ident::<$e:ty, $a:literal>, $nv:expr, $args:tt) => {
            match $nv {
                1 => dispatch!(@call $f::<$e, $a, 1>, $args),
                2 => dispatch!(@call $f::<$e, $a, 2>, $args),
                3 => dispatch!(@call $f::<$e, $a, 3>, $args),
                _ => dispatch!(@call $f::<$e, $a, 4>, $args),
            }
        };
        (@call $f:ident::<$($g:tt),*>, ($($arg:expr),*)) => {
            $f::<$($g),*>($($arg),*)
        };
    }

    /// Where a small product's operands are read from: down the columns of A
    /// (`n = 1`: `A[i, l] = p[i + l·s]`), or along the rows of B
    /// (`B[l, j] = p[l·s + j]`). Either is the operand's own buffer or a copy
    /// packed into the caller's stack buffer; either way every `(i, l)` of A
    /// or `(l, j)` of B so addressed lies inside that buffer.
    enum Layout<T> {
        Columns(*const T, usize),
        Rows(*const T, usize),
    }

    /// The layout for `A·B`, packing into `buf` if needed; `None` if an operand
    /// that would need packing does not fit `buf`.
    fn layout<T: Copy>(
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
        buf: &mut [MaybeUninit<T>; PACK],
    ) -> Option<Layout<T>> {
        if b.cols == 1 && a.rows > 1 && fits_pack(a.rows, a.cols) {
            let (at, ats) = columns(a, buf);
            Some(Layout::Columns(at, ats))
        } else if b.cs == 1 || b.cols == 1 {
            Some(Layout::Rows(b.data.as_ptr(), b.rs))
        } else if fits_pack(b.rows, b.cols) {
            Some(Layout::Rows(pack_t(b, buf).as_ptr(), b.cols))
        } else {
            None
        }
    }

    pub(super) fn real<E: Lane>(p: &mut Product<'_, E>) -> bool {
        if !has_avx512() {
            return false;
        }
        let (alpha, a, b, beta) = (p.alpha, p.a, p.b, p.beta);
        let Some(c) = p.c.dense_row_major() else {
            return false;
        };
        let mut buf = [MaybeUninit::<E>::uninit(); PACK];
        let Some(layout) = layout(a, b, &mut buf) else {
            return false;
        };
        // SAFETY: AVX-512F was detected above; the views' constructors checked
        // that every (i, l) of A and (l, j) of B lies in its slice (a packed
        // operand is a dense buffer with the stride given, see `Layout`);
        // `Product::new` checked the shapes and `dense_row_major` that `c` is
        // exactly m × n elements.
        unsafe {
            match layout {
                Layout::Columns(at, s) => real_col_avx512(alpha, at, s, a.rows, a.cols, b, beta, c),
                Layout::Rows(bp, s) => real_avx512(alpha, a, bp, s, b.cols, beta, c),
            }
        }
        true
    }

    pub(super) fn dual<E: Lane>(p: &mut Product<'_, Dual<E>>) -> bool {
        if !has_avx512() {
            return false;
        }
        let (alpha, a, b, beta) = (p.alpha, p.a, p.b, p.beta);
        let Some(c) = p.c.dense_row_major() else {
            return false;
        };
        let mut buf = [MaybeUninit::<Dual<E>>::uninit(); PACK];
        let Some(layout) = layout(a, b, &mut buf) else {
            return false;
        };
        // SAFETY: as in `real`; a `Dual<E>` is two `E`s (`repr(C)`, no
        // padding), so a run of duals is twice as many contiguous `E`s.
        unsafe {
            match layout {
                Layout::Columns(at, s) => dual_col_avx512(alpha, at, s, a.rows, a.cols, b, beta, c),
                Layout::Rows(bp, s) => dual_avx512(alpha, a, bp, s, b.cols, beta, c),
            }
        }
        true
    }

    /// `portable::pack` for a transposed right operand (`B[l, j] = src[l + j·cs]`,
    /// unit row stride) of 4- or 8-byte elements: 16 × 16 (or 8 × 8) tiles
    /// transposed in registers. Only bits move, so any `T` of that size works.
    /// Other views go through `portable::pack`.
    ///
    /// # Panics
    /// If `k·n` exceeds the buffer.
    fn pack_t<'b, T: Copy>(b: MatRef<'_, T>, buf: &'b mut [MaybeUninit<T>; PACK]) -> &'b [T] {
        let (k, n) = (b.rows, b.cols);
        let size = std::mem::size_of::<T>();
        if b.rs != 1 || !(size == 4 || size == 8) || !has_avx512() {
            return pack(b, buf);
        }
        assert!(
            fits_pack(k, n),
            "pack_t: [{k}, {n}] does not fit {PACK} elements"
        );
        let (src, dst) = (b.data.as_ptr(), buf.as_mut_ptr().cast::<T>());
        // SAFETY: AVX-512F was detected above; element (l, j) of the view,
        // src[l + j·cs], is inside `b.data` for l < k, j < n (checked by
        // `MatRef`'s constructors) and the masks keep every load to those; the
        // loads are unaligned, so reading a `T` of 4 (8) bytes as f32 (f64)
        // lanes is fine and moves its bits unchanged. `dst` has k·n ≤ PACK
        // slots (asserted) and the masked stores write every one of them: tile
        // (l0, j0) stores rows l0.. (below k) of columns j0.. (below n), and
        // the tiles cover 0..k × 0..n. MaybeUninit<T> has T's layout.
        unsafe {
            if size == 4 {
                transpose_32(src.cast::<f32>(), b.cs, k, n, dst.cast::<f32>());
            } else {
                transpose_64(src.cast::<f64>(), b.cs, k, n, dst.cast::<f64>());
            }
            std::slice::from_raw_parts(dst, k * n)
        }
    }

    /// `dst[l·n + j] = src[j·cs + l]` for l < k, j < n, 4-byte elements.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_32(src: *const f32, cs: usize, k: usize, n: usize, dst: *mut f32) {
        // SAFETY: this fn's contract, as `pack_t` establishes it.
        unsafe { transpose_tiles::<f32, 16>(src, cs, k, n, dst, |r| tile_32(&r)) }
    }

    /// `dst[l·n + j] = src[j·cs + l]` for l < k, j < n, 8-byte elements.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_64(src: *const f64, cs: usize, k: usize, n: usize, dst: *mut f64) {
        // SAFETY: this fn's contract, as `pack_t` establishes it.
        unsafe { transpose_tiles::<f64, 8>(src, cs, k, n, dst, |r| tile_64(&r)) }
    }

    /// The tiles of a transpose: T rows of `src` (T = E::N lanes each, masked
    /// at the edges) go through `tile`, which returns the T columns.
    #[inline(always)]
    unsafe fn transpose_tiles<E: Lane, const T: usize>(
        src: *const E,
        cs: usize,
        k: usize,
        n: usize,
        dst: *mut E,
        tile: impl Fn([E::V; T]) -> [E::V; T],
    ) {
        // SAFETY: AVX-512F and the buffers come from `pack_t` (src[l + j·cs]
        // in bounds for l < k, j < n; dst of k·n slots); source rows j0 + t < n
        // only, loads masked to l0.. below k, destination rows l0 + s < k,
        // stores masked to j0.. below n; addresses via `wrapping_add`.
        unsafe {
            for j0 in (0..n).step_by(T) {
                let jm = E::mask(n - j0);
                for l0 in (0..k).step_by(T) {
                    let lm = E::mask(k - l0);
                    let rows: [E::V; T] = std::array::from_fn(|t| {
                        if j0 + t < n {
                            E::vload(src.wrapping_add((j0 + t) * cs + l0), lm)
                        } else {
                            E::vzero()
                        }
                    });
                    for (s, col) in tile(rows).into_iter().enumerate().take(k - l0) {
                        E::vstore(dst.wrapping_add((l0 + s) * n + j0), col, jm);
                    }
                }
            }
        }
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

    /// The columns of A as contiguous runs: `(p, s)` with `A[i, l] = p[i + l·s]`.
    /// A view with unit row stride is used as it is; otherwise Aᵀ is packed.
    fn columns<T: Copy>(a: MatRef<'_, T>, buf: &mut [MaybeUninit<T>; PACK]) -> (*const T, usize) {
        if a.rs == 1 {
            (a.data.as_ptr(), a.cs)
        } else {
            (pack_t(a.t(), buf).as_ptr(), a.rows)
        }
    }

    /// `C ← α·A·b + β·C` for a single column `b` (`n = 1`): the lanes run down
    /// the rows of A (one product per row and l, summed in increasing l, as
    /// the row kernel), in panels of up to four vectors of rows.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn real_col_avx512<E: Lane>(
        alpha: E,
        at: *const E,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, E>,
        beta: E,
        c: &mut [E],
    ) {
        // SAFETY: this fn's contract (from `real`: AVX-512F detected, the
        // operands as `real_col` needs them); `for_panels` passes vector rows
        // v0..v0 + nv < ⌈m / N⌉, the range `real_col` handles.
        for_panels(
            1,
            m.div_ceil(E::N),
            |_| 1,
            |_, nv, _, v0| unsafe {
                dispatch!(
                    real_col::<E>,
                    nv,
                    (alpha, at, ats, m, k, b, beta, &mut *c, v0)
                )
            },
        );
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn real_col<E: Lane, const NV: usize>(
        alpha: E,
        at: *const E,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, E>,
        beta: E,
        c: &mut [E],
        v0: usize,
    ) {
        // SAFETY: AVX-512F and the operands come from `real` (after
        // `has_avx512`): A[i, l] = at[i + l·ats] lies in its buffer for i < m,
        // l < k (`Layout::Columns`: `MatRef::new`'s bounds check, or a packed
        // copy of m·k ≤ PACK elements); B[l, 0] = b.data[l·rs] for l < k =
        // b.rows (bounds check, `Product::new`); `c` has m elements
        // (`dense_row_major`). Vector v of the panel has row v0 + v < ⌈m / N⌉,
        // its mask keeps only rows below m, and its addresses are formed with
        // `wrapping_add`, so only elements of those buffers are touched.
        unsafe {
            let masks: [E::M; NV] = std::array::from_fn(|v| E::mask(m - (v0 + v) * E::N));
            let mut acc = [E::vzero(); NV];
            for l in 0..k {
                let col = at.wrapping_add(l * ats + v0 * E::N);
                let y = E::vsplat(*b.data.get_unchecked(l * b.rs));
                for v in 0..NV {
                    acc[v] = E::vadd(
                        acc[v],
                        E::vmul(E::vload(col.wrapping_add(v * E::N), masks[v]), y),
                    );
                }
            }
            let (va, vb, beta_zero) = (
                E::vsplat(alpha),
                E::vsplat(beta),
                beta == <E as Real>::zero(),
            );
            for v in 0..NV {
                let p = c.as_mut_ptr().wrapping_add((v0 + v) * E::N);
                let mut out = E::vmul(va, acc[v]);
                if !beta_zero {
                    out = E::vadd(out, E::vmul(vb, E::vload(p, masks[v])));
                }
                E::vstore(p, out, masks[v]);
            }
        }
    }

    /// The dual form of [`real_col_avx512`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_col_avx512<E: Lane>(
        alpha: E,
        at: *const Dual<E>,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, Dual<E>>,
        beta: E,
        c: &mut [Dual<E>],
    ) {
        // SAFETY: as in `real_col_avx512` (from `dual`).
        for_panels(
            1,
            m.div_ceil(E::N),
            |_| 1,
            |_, nv, _, v0| unsafe {
                dispatch!(
                    dual_col::<E>,
                    nv,
                    (alpha, at, ats, m, k, b, beta, &mut *c, v0)
                )
            },
        );
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_col<E: Lane, const NV: usize>(
        alpha: E,
        at: *const Dual<E>,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, Dual<E>>,
        beta: E,
        c: &mut [Dual<E>],
        v0: usize,
    ) {
        // SAFETY: as in `real_col` (from `dual`, after `has_avx512`), with
        // the masks counted in parts of E (two per dual): `lo`/`hi` cover the
        // parts of rows below m only. `hi` may be empty at the end of a column;
        // its address is formed with `wrapping_add`, and a load or store with
        // an empty mask touches no memory.
        unsafe {
            let parts = |v: usize, half: usize| {
                E::mask((2 * m).saturating_sub(2 * (v0 + v) * E::N + half * E::N))
            };
            let lo: [E::M; NV] = std::array::from_fn(|v| parts(v, 0));
            let hi: [E::M; NV] = std::array::from_fn(|v| parts(v, 1));
            let mut acc_v = [E::vzero(); NV];
            let mut acc_d = [E::vzero(); NV];
            for l in 0..k {
                let col = at.wrapping_add(l * ats + v0 * E::N).cast::<E>();
                let y = *b.data.get_unchecked(l * b.rs);
                let (yv, yd) = (E::vsplat(y.v), E::vsplat(y.d));
                for v in 0..NV {
                    let p = col.wrapping_add(2 * v * E::N);
                    let (xv, xd) =
                        E::vdeinterleave(E::vload(p, lo[v]), E::vload(p.wrapping_add(E::N), hi[v]));
                    acc_v[v] = E::vadd(acc_v[v], E::vmul(xv, yv));
                    // Dual's Mul (a·b): d = a.d·b.v + a.v·b.d, then added.
                    acc_d[v] = E::vadd(acc_d[v], E::vadd(E::vmul(xd, yv), E::vmul(xv, yd)));
                }
            }
            let (va, vb, z) = (E::vsplat(alpha), E::vsplat(beta), E::vzero());
            let beta_zero = beta == <E as Real>::zero();
            let out = c.as_mut_ptr().wrapping_add(v0 * E::N).cast::<E>();
            for v in 0..NV {
                let p = out.wrapping_add(2 * v * E::N);
                let mut ov = E::vmul(va, acc_v[v]);
                let mut od = E::vadd(E::vmul(z, acc_v[v]), E::vmul(va, acc_d[v]));
                if !beta_zero {
                    let (cv, cd) =
                        E::vdeinterleave(E::vload(p, lo[v]), E::vload(p.wrapping_add(E::N), hi[v]));
                    ov = E::vadd(ov, E::vmul(vb, cv));
                    od = E::vadd(od, E::vadd(E::vmul(z, cv), E::vmul(vb, cd)));
                }
                let (x0, x1) = E::vinterleave(ov, od);
                E::vstore(p, x0, lo[v]);
                E::vstore(p.wrapping_add(E::N), x1, hi[v]);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn real_avx512<E: Lane>(
        alpha: E,
        a: MatRef<'_, E>,
        b: *const E,
        brs: usize,
        n: usize,
        beta: E,
        c: &mut [E],
    ) {
        // SAFETY: this fn's contract (from `real`); `for_panels` passes rows
        // i..i + mr ≤ m and vector columns v0..v0 + nv ≤ ⌈n / N⌉, the ranges
        // `real_panel` handles.
        for_panels(
            a.rows,
            n.div_ceil(E::N),
            |_| 4,
            |mr, nv, i, v0| unsafe {
                dispatch!(
                    real_panel::<E>,
                    mr,
                    nv,
                    (alpha, a, b, brs, n, beta, &mut *c, i, v0)
                )
            },
        );
    }

    /// Rows `i0..i0+MR` and vector columns `v0..v0+NV` of `C`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn real_panel<E: Lane, const MR: usize, const NV: usize>(
        alpha: E,
        a: MatRef<'_, E>,
        b: *const E,
        brs: usize,
        n: usize,
        beta: E,
        c: &mut [E],
        i0: usize,
        v0: usize,
    ) {
        // SAFETY: AVX-512F and the operands come from `real` (after
        // `has_avx512`): B[l, j] = b[l·brs + j] lies in its buffer for l < k,
        // j < n (`Layout::Rows`: `MatRef::new`'s bounds check with unit column
        // stride, or a packed copy); A[i, l] for i < m = a.rows, l < k = a.cols
        // (bounds check, `Product::new`); `c` has m·n elements
        // (`dense_row_major`). Rows i0 + r < m (`for_panels`); the mask of
        // vector v keeps only columns below n, and addresses are formed with
        // `wrapping_add`, so only elements of those buffers are touched.
        unsafe {
            let masks: [E::M; NV] = std::array::from_fn(|v| E::mask(n - (v0 + v) * E::N));
            let mut acc = [[E::vzero(); NV]; MR];
            for l in 0..a.cols {
                let row = b.wrapping_add(l * brs + v0 * E::N);
                let bv: [E::V; NV] =
                    std::array::from_fn(|v| E::vload(row.wrapping_add(v * E::N), masks[v]));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = E::vsplat(*a.data.get_unchecked((i0 + r) * a.rs + l * a.cs));
                    for v in 0..NV {
                        acc_r[v] = E::vadd(acc_r[v], E::vmul(x, bv[v]));
                    }
                }
            }
            let (va, vb, beta_zero) = (
                E::vsplat(alpha),
                E::vsplat(beta),
                beta == <E as Real>::zero(),
            );
            for (r, acc_r) in acc.iter().enumerate() {
                let row = c.as_mut_ptr().wrapping_add((i0 + r) * n + v0 * E::N);
                for v in 0..NV {
                    let p = row.wrapping_add(v * E::N);
                    let mut out = E::vmul(va, acc_r[v]);
                    if !beta_zero {
                        out = E::vadd(out, E::vmul(vb, E::vload(p, masks[v])));
                    }
                    E::vstore(p, out, masks[v]);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn dual_avx512<E: Lane>(
        alpha: E,
        a: MatRef<'_, Dual<E>>,
        b: *const Dual<E>,
        brs: usize,
        n: usize,
        beta: E,
        c: &mut [Dual<E>],
    ) {
        // Registers: 2·MR·NV accumulators + 2·NV parts of B + 2 splats ≤ 32.
        let mr_max = |nv: usize| if nv <= 3 { 3 } else { 2 };
        // SAFETY: as in `real_avx512` (from `dual`).
        for_panels(a.rows, n.div_ceil(E::N), mr_max, |mr, nv, i, v0| unsafe {
            dispatch!(
                dual_panel::<E>,
                mr,
                nv,
                (alpha, a, b, brs, n, beta, &mut *c, i, v0)
            )
        });
    }

    /// The dual panel: primal and tangent accumulators side by side; each
    /// vector of B is two interleaved loads split into its parts.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_panel<E: Lane, const MR: usize, const NV: usize>(
        alpha: E,
        a: MatRef<'_, Dual<E>>,
        b: *const Dual<E>,
        brs: usize,
        n: usize,
        beta: E,
        c: &mut [Dual<E>],
        i0: usize,
        v0: usize,
    ) {
        // SAFETY: as in `real_panel` (from `dual`, after `has_avx512`), with
        // the masks counted in parts of E (two per dual): `lo`/`hi` cover the
        // parts of columns below n only. `hi` may be empty at the end of a row;
        // its address is formed with `wrapping_add`, and a load or store with
        // an empty mask touches no memory.
        unsafe {
            let parts = |v: usize, half: usize| {
                let done = 2 * (v0 + v) * E::N + half * E::N;
                E::mask((2 * n).saturating_sub(done))
            };
            let lo: [E::M; NV] = std::array::from_fn(|v| parts(v, 0));
            let hi: [E::M; NV] = std::array::from_fn(|v| parts(v, 1));
            let mut acc_v = [[E::vzero(); NV]; MR];
            let mut acc_d = [[E::vzero(); NV]; MR];
            for l in 0..a.cols {
                let row = b.wrapping_add(l * brs + v0 * E::N).cast::<E>();
                let mut bv = [E::vzero(); NV];
                let mut bd = [E::vzero(); NV];
                for v in 0..NV {
                    let p = row.wrapping_add(2 * v * E::N);
                    (bv[v], bd[v]) =
                        E::vdeinterleave(E::vload(p, lo[v]), E::vload(p.wrapping_add(E::N), hi[v]));
                }
                for r in 0..MR {
                    let x = *a.data.get_unchecked((i0 + r) * a.rs + l * a.cs);
                    let (xv, xd) = (E::vsplat(x.v), E::vsplat(x.d));
                    for v in 0..NV {
                        acc_v[r][v] = E::vadd(acc_v[r][v], E::vmul(xv, bv[v]));
                        // Dual's Mul: d = a.d·b.v + a.v·b.d, then added.
                        acc_d[r][v] =
                            E::vadd(acc_d[r][v], E::vadd(E::vmul(xd, bv[v]), E::vmul(xv, bd[v])));
                    }
                }
            }
            // The epilogue: Dual's α·s (+ β·c) with α, β constants (zero
            // tangent), part by part: v = α·s.v (+ β·c.v) and
            // d = (0·s.v + α·s.d) (+ (0·c.v + β·c.d)), as `Dual`'s Mul and Add.
            let (va, vb, z) = (E::vsplat(alpha), E::vsplat(beta), E::vzero());
            let beta_zero = beta == <E as Real>::zero();
            for r in 0..MR {
                let row = c
                    .as_mut_ptr()
                    .wrapping_add((i0 + r) * n + v0 * E::N)
                    .cast::<E>();
                for v in 0..NV {
                    let p = row.wrapping_add(2 * v * E::N);
                    let (sv, sd) = (acc_v[r][v], acc_d[r][v]);
                    let mut ov = E::vmul(va, sv);
                    let mut od = E::vadd(E::vmul(z, sv), E::vmul(va, sd));
                    if !beta_zero {
                        let (cv, cd) = E::vdeinterleave(
                            E::vload(p, lo[v]),
                            E::vload(p.wrapping_add(E::N), hi[v]),
                        );
                        ov = E::vadd(ov, E::vmul(vb, cv));
                        od = E::vadd(od, E::vadd(E::vmul(z, cv), E::vmul(vb, cd)));
                    }
                    let (x0, x1) = E::vinterleave(ov, od);
                    E::vstore(p, x0, lo[v]);
                    E::vstore(p.wrapping_add(E::N), x1, hi[v]);
                }
            }
        }
    }
}
