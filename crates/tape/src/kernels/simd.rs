//! The register-blocked small-product kernels, written once over a vector
//! shape ([`Vectors`]: `f32 × 8`, `f64 × 4` for AVX2+FMA, `f32 × 16`, `f64 × 8`
//! for AVX-512F) and compiled per instruction set by `avx2.rs` and
//! `avx512.rs` (each wraps them in a `#[target_feature]` entry, [`Isa`]).
//!
//! # What they compute
//! For each output element, the products `a_il·b_lj` are accumulated in
//! increasing `l` into one vector lane, from zero: `s ← madd(s, a_il, b_lj)`,
//! where [`Vectors::madd`] is either a fused multiply-add (one rounding: the
//! AVX2+FMA family) or a product and a sum rounded on their own (AVX-512F:
//! then the bits are the portable loop's). A dual product accumulates the
//! primal `a.v·b.v` the same way and the tangent as
//! [`Vectors::madd2`]`(s, a.d, b.v, a.v, b.d)`. The epilogue is `α·s` or
//! `α·s + β·c`, each product and sum rounded on its own (duals: `Dual`'s
//! `Mul` and `Add` with constant `α`, `β`). The lanes run across the columns
//! `j` of `C` (or, for a single column, down its rows), never across the sum
//! over `l`; so an element's value depends only on its row of `A`, its column
//! of `B`, `α`, `β` and `c_ij`, not on where it falls in a register block, on
//! the shape around it or on how a caller splits the rows between threads.
//!
//! # Blocking
//! Up to [`Isa::MR`] rows of `A` times a panel of up to [`Isa::NV`] vectors of
//! columns live in registers for the whole sum over `l`; each row of `B` is
//! loaded once per panel and reused by every row of the block, and each
//! `a_il` is broadcast once per block row. The last vector of a row is a
//! masked load and store when `n` is not a multiple of the lanes, so `B` and
//! `C` are never read or written past column `n`; addresses are computed with
//! `wrapping_add`, so a vector whose mask is empty (the second half of a dual
//! vector at the end of a row) never forms an out-of-bounds pointer with
//! `add`.
//!
//! # Soundness
//! Rests on: the instruction set detected ([`Isa::available`]) before any
//! kernel runs, in [`real`]/[`dual`]; the view invariants (every element of `A`
//! and `B` inside its slice, checked by `MatRef`'s constructors); `C` a dense
//! row-major `m × n` slice (`MatMut::dense_row_major`) and the shapes of a
//! [`Product`]; packing buffers of at most [`PACK`] elements, checked before
//! packing.

use super::batch::Batch;
#[cfg(target_arch = "x86_64")]
use super::Family;
use super::Product;
use crate::real::{Dual, Real};

/// The primitive floats that have kernels: `f32` and `f64`, with their
/// vector shapes per instruction set.
pub(crate) trait Lane: Real<Base = Self> {
    /// The AVX2+FMA vector of this element (256 bits).
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    type Avx2: imp::Vectors<E = Self>;
    /// The AVX-512F vector of this element (512 bits).
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    type Avx512: imp::Vectors<E = Self>;
}

#[cfg(target_arch = "x86_64")]
pub(crate) use imp::*;

/// Runs the real kernel of the active family ([`super::active`]), or of the
/// highest family below it that has one, if the CPU and the layout suit it,
/// and records which family ran; `false` means "not taken" (the caller runs
/// the row loop).
pub(crate) fn real<E: Lane>(p: &mut Product<'_, E>) -> bool {
    #[cfg(target_arch = "x86_64")]
    return first_taken(
        p,
        imp::real::<super::avx512::Avx512, E>,
        imp::real::<super::avx2::Avx2, E>,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
        false
    }
}

/// Runs the dual kernel of the active family (see [`real`]).
pub(crate) fn dual<E: Lane>(p: &mut Product<'_, Dual<E>>) -> bool {
    #[cfg(target_arch = "x86_64")]
    return first_taken(
        p,
        imp::dual::<super::avx512::Avx512, E>,
        imp::dual::<super::avx2::Avx2, E>,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
        false
    }
}

/// [`real`] for every product of `batch` (the same shapes and strides),
/// with the family, instruction set and layout chosen once; `false`: not
/// taken, nothing run.
pub(crate) fn real_batch<E: Lane>(batch: &mut Batch<'_, E>) -> bool {
    #[cfg(target_arch = "x86_64")]
    return first_taken(
        batch,
        imp::real_batch::<super::avx512::Avx512, E>,
        imp::real_batch::<super::avx2::Avx2, E>,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = batch;
        false
    }
}

/// [`dual`] for every product of `batch` (see [`real_batch`]).
pub(crate) fn dual_batch<E: Lane>(batch: &mut Batch<'_, Dual<E>>) -> bool {
    #[cfg(target_arch = "x86_64")]
    return first_taken(
        batch,
        imp::dual_batch::<super::avx512::Avx512, E>,
        imp::dual_batch::<super::avx2::Avx2, E>,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = batch;
        false
    }
}

/// Tries the AVX-512F kernel, then the AVX2+FMA one, each only if the active
/// family allows it; records the family that ran.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_taken<P>(p: &mut P, avx512: fn(&mut P) -> bool, avx2: fn(&mut P) -> bool) -> bool {
    let cap = super::active();
    let family = if cap >= Family::Avx512 && avx512(p) {
        Family::Avx512
    } else if cap >= Family::Avx2 && avx2(p) {
        Family::Avx2
    } else {
        return false;
    };
    super::family::record(family);
    true
}

#[cfg(target_arch = "x86_64")]
impl Lane for f32 {
    type Avx2 = super::avx2::F32x8;
    type Avx512 = super::avx512::F32x16;
}
#[cfg(target_arch = "x86_64")]
impl Lane for f64 {
    type Avx2 = super::avx2::F64x4;
    type Avx512 = super::avx512::F64x8;
}
/// Defines an instruction set ([`Isa`]): its marker type `$name`, the
/// element's vector shape for it (`Lane::$vec`), its detection, packer and
/// register-block limits, and its two entries, compiled with
/// `#[target_feature(enable = $features)]` around `run_real`/`run_dual`
/// (always inlined, so the kernels get those features).
#[cfg(target_arch = "x86_64")]
macro_rules! isa {
    ($(#[$doc:meta])* $name:ident, features $features:literal, vec $vec:ident,
     available $avail:path, pack_t $pack:path, nv $nv:expr, mr $mr:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl $crate::kernels::simd::Isa for $name {
            type Vec<E: $crate::kernels::simd::Lane> = E::$vec;
            fn available() -> bool {
                $avail()
            }
            fn pack_t<'b, T: Copy>(
                b: $crate::kernels::MatRef<'_, T>,
                buf: &'b mut [::std::mem::MaybeUninit<T>; $crate::kernels::PACK],
            ) -> &'b [T] {
                $pack(b, buf)
            }
            const NV: [usize; 2] = $nv;
            const MR: [[usize; 4]; 2] = $mr;
            unsafe fn real<E: $crate::kernels::simd::Lane>(job: $crate::kernels::simd::Job<'_, E>) {
                /// `run_real` compiled with this instruction set.
                #[target_feature(enable = $features)]
                unsafe fn entry<V: $crate::kernels::simd::Vectors>(
                    job: $crate::kernels::simd::Job<'_, V::E>,
                ) {
                    // SAFETY: this fn's contract, passed on (`Isa::real`).
                    unsafe { $crate::kernels::simd::run_real::<$name, V>(job) }
                }
                // SAFETY: this fn's contract (the instruction set detected by
                // `available`, a job from `simd::real`).
                unsafe { entry::<E::$vec>(job) }
            }
            unsafe fn dual<E: $crate::kernels::simd::Lane>(
                job: $crate::kernels::simd::Job<'_, $crate::real::Dual<E>>,
            ) {
                /// `run_dual` compiled with this instruction set.
                #[target_feature(enable = $features)]
                unsafe fn entry<V: $crate::kernels::simd::Vectors>(
                    job: $crate::kernels::simd::Job<'_, $crate::real::Dual<V::E>>,
                ) {
                    // SAFETY: this fn's contract, passed on (`Isa::dual`).
                    unsafe { $crate::kernels::simd::run_dual::<$name, V>(job) }
                }
                // SAFETY: this fn's contract (the instruction set detected by
                // `available`, a job from `simd::dual`).
                unsafe { entry::<E::$vec>(job) }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use isa;

#[cfg(not(target_arch = "x86_64"))]
impl Lane for f32 {}
#[cfg(not(target_arch = "x86_64"))]
impl Lane for f64 {}

/// The x86_64 kernels. Every `unsafe fn` in here has one contract: the CPU
/// has the instruction set of the [`Vectors`] type in use (detected by
/// [`Isa::available`]), and the operands are as [`real`]/[`dual`] build them:
/// checked views or packed copies, the shapes of a [`Product`], a dense
/// `m × n` output. Each `// SAFETY:` comment says which of these it uses.
#[cfg(target_arch = "x86_64")]
mod imp {
    use super::*;
    use crate::kernels::packed::Transposition;
    use crate::kernels::{fits_pack, MatRef, PACK};
    use std::mem::MaybeUninit;

    /// A vector shape of one instruction set: `N` lanes of `E`, a mask type,
    /// and the operations the kernels use.
    ///
    /// Every `unsafe fn` requires a CPU with the instruction set;
    /// `load`/`store_masked`/`load_masked` also require `p` valid for reads
    /// (writes) of the lanes touched (all `N` for `load`; those in `m` for the
    /// masked ones, and only those are touched: `p` need not point into an
    /// allocation when `m` is empty).
    pub(crate) trait Vectors {
        /// The element.
        type E: Lane;
        /// A vector of `N` elements.
        type V: Copy;
        /// A lane mask.
        type M: Copy;
        /// Lanes per vector.
        const N: usize;
        /// The mask of the first `min(count, N)` lanes. Every mask is made
        /// here, so a mask is always a prefix of the lanes (`store_masked`
        /// of AVX2 relies on it).
        unsafe fn mask(count: usize) -> Self::M;
        unsafe fn zero() -> Self::V;
        unsafe fn splat(x: Self::E) -> Self::V;
        /// All `N` lanes from `p`.
        unsafe fn load(p: *const Self::E) -> Self::V;
        /// The lanes in `m` from `p`, zero elsewhere (nothing outside `m` is read).
        unsafe fn load_masked(p: *const Self::E, m: Self::M) -> Self::V;
        /// Writes the lanes in `m` to `p` (nothing outside `m` is written).
        unsafe fn store_masked(p: *mut Self::E, v: Self::V, m: Self::M);
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
        unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
        /// `acc + x·y`: fused (one rounding) for AVX2+FMA, a product and a sum
        /// rounded on their own for AVX-512F.
        unsafe fn madd(acc: Self::V, x: Self::V, y: Self::V) -> Self::V;
        /// `acc + x·y` fused (one rounding) in every instruction set: the
        /// large products' step (`packed.rs`).
        unsafe fn fma(acc: Self::V, x: Self::V, y: Self::V) -> Self::V;
        /// The dual tangent's step `acc + (x1·y1 + x2·y2)`: fused as
        /// `madd(madd(acc, x1, y1), x2, y2)` (two roundings) for AVX2+FMA;
        /// `acc + (x1·y1 + x2·y2)` with every operation rounded (four roundings,
        /// `Dual`'s `Mul` then `AddAssign`) for AVX-512F.
        unsafe fn madd2(
            acc: Self::V,
            x1: Self::V,
            y1: Self::V,
            x2: Self::V,
            y2: Self::V,
        ) -> Self::V;
        /// Splits two vectors holding interleaved pairs `(v0, d0, v1, d1, …)`
        /// into the `v` and the `d` parts, in a lane order that is the same
        /// for both outputs and for every call (the kernels work lane by lane,
        /// so any fixed order will do).
        unsafe fn deinterleave(lo: Self::V, hi: Self::V) -> (Self::V, Self::V);
        /// The inverse of [`Vectors::deinterleave`].
        unsafe fn interleave(v: Self::V, d: Self::V) -> (Self::V, Self::V);
    }

    /// One instruction set's kernels: its detection, its packer for a
    /// transposed operand, its register-block limits, and its entries
    /// compiled with its `#[target_feature]`s.
    pub(crate) trait Isa {
        /// The vector of `E` for this instruction set.
        type Vec<E: Lane>: Vectors<E = E>;
        /// Whether this CPU has the instruction set.
        fn available() -> bool;
        /// Packs a `k × n` view row-major into `buf` (as `portable::pack`).
        fn pack_t<'b, T: Copy>(b: MatRef<'_, T>, buf: &'b mut [MaybeUninit<T>; PACK]) -> &'b [T];
        /// Most vectors of columns in a register panel (real, dual).
        const NV: [usize; 2];
        /// Most rows in a register block with `nv` vectors of columns
        /// (real, dual; entries for nv = 1..=4).
        const MR: [[usize; 4]; 2];
        /// Runs a real job.
        ///
        /// # Safety
        /// [`Isa::available`] said yes, and the job is as [`real`] builds it.
        unsafe fn real<E: Lane>(job: Job<'_, E>);
        /// Runs a dual job.
        ///
        /// # Safety
        /// [`Isa::available`] said yes, and the job is as [`dual`] builds it.
        unsafe fn dual<E: Lane>(job: Job<'_, Dual<E>>);
    }

    /// `portable::pack` for a transposed operand of 4- or 8-byte elements
    /// (`B[l, j] = src[l + j·cs]`, unit row stride) by an instruction set's
    /// register transposes `t32`/`t64` (a [`Transposition`] with all n
    /// source rows present), if
    /// `available`; any other view, element size or CPU goes through
    /// `portable::pack`. Only bits move, so any `T` of that size works (a
    /// `Dual<f32>` moves as one 8-byte lane). Shared by the ISAs' `pack_t`.
    ///
    /// # Panics
    /// If `k·n` exceeds the buffer.
    #[inline(always)]
    pub(crate) fn pack_transposed<'b, T: Copy>(
        b: MatRef<'_, T>,
        buf: &'b mut [MaybeUninit<T>; PACK],
        available: bool,
        t32: unsafe fn(Transposition<f32>),
        t64: unsafe fn(Transposition<f64>),
    ) -> &'b [T] {
        let (k, n) = (b.rows, b.cols);
        let size = std::mem::size_of::<T>();
        if b.rs != 1 || !(size == 4 || size == 8) || !available {
            return crate::kernels::portable::pack(b, buf);
        }
        assert!(
            fits_pack(k, n),
            "pack_t: [{k}, {n}] does not fit {PACK} elements"
        );
        let (src, dst) = (b.data.as_ptr(), buf.as_mut_ptr().cast::<T>());
        let t = Transposition {
            src,
            cs: b.cs,
            k,
            have: n,
            n,
            dst,
        };
        // SAFETY: the caller's instruction set was detected (`available`, its
        // contract); element (l, j) of the view, src[l + j·cs], is inside
        // `b.data` for l < k, j < n (checked by `MatRef`'s constructors) and the
        // transposes' masks keep every load to those; the loads are unaligned,
        // so reading a `T` of 4 (8) bytes as f32 (f64) lanes is fine and moves
        // its bits unchanged. `dst` has k·n ≤ PACK slots (asserted) and the
        // transposes write every one of them (`transpose_tiles`).
        // MaybeUninit<T> has T's layout.
        unsafe {
            if size == 4 {
                t32(t.cast());
            } else {
                t64(t.cast());
            }
            std::slice::from_raw_parts(dst, k * n)
        }
    }

    /// The tiles of a [`Transposition`] `dst[l·n + j] = src[j·cs + l]` for
    /// l < k, j < have, and `dst[l·n + j] = 0` for have ≤ j < n. T rows
    /// of `src` (T = V::N lanes each, masked at the edges; zero vectors from
    /// `have` on) go through `tile`, which returns the T columns; tile
    /// (l0, j0) stores rows l0.. (below k) of columns j0.. (below n), and the
    /// tiles cover 0..k × 0..n.
    ///
    /// # Safety
    /// The CPU has V's instruction set; `t`'s buffers as [`Transposition`]
    /// says.
    #[inline(always)]
    pub(crate) unsafe fn transpose_tiles<V: Vectors, const T: usize>(
        t: Transposition<V::E>,
        tile: impl Fn([V::V; T]) -> [V::V; T],
    ) {
        let Transposition {
            src,
            cs,
            k,
            have,
            n,
            dst,
        } = t;
        debug_assert!(have <= n, "transpose_tiles: {have} rows of {n}");
        // SAFETY: this fn's contract: source rows j0 + t < have only, loads
        // masked to l0.. below k, destination rows l0 + s < k, stores masked
        // to j0.. below n; addresses via `wrapping_add`. A full tile (all T
        // rows and columns in range, T = V::N) reads whole vectors of its
        // rows below `have` (l0 + T ≤ k) and writes whole vectors without
        // masks: the same elements. A tile of n < T columns (so j0 = 0) with
        // l0 + T < k reads whole vectors of its rows below `have`
        // (l0 + T ≤ k) and writes T lanes from (l0 + s)·n for s < T: below
        // (l0 + s + 1)·n + (T − n) ≤ (l0 + T + 1)·n ≤ k·n (T − n ≤ n).
        unsafe {
            for j0 in (0..n).step_by(T) {
                let jm = V::mask(n - j0);
                for l0 in (0..k).step_by(T) {
                    if j0 + T <= n && l0 + T <= k && T == V::N {
                        let rows: [V::V; T] = if j0 + T <= have {
                            std::array::from_fn(|t| V::load(src.wrapping_add((j0 + t) * cs + l0)))
                        } else {
                            // An edge sliver's last tile: its rows from
                            // `have` on are zeros.
                            std::array::from_fn(|t| {
                                if j0 + t < have {
                                    V::load(src.wrapping_add((j0 + t) * cs + l0))
                                } else {
                                    V::zero()
                                }
                            })
                        };
                        for (s, col) in tile(rows).into_iter().enumerate() {
                            let to = dst.wrapping_add((l0 + s) * n + j0);
                            to.cast::<V::V>().write_unaligned(col);
                        }
                        continue;
                    }
                    if T == V::N && n < T && 2 * n >= T && l0 + T < k {
                        // Fewer than T but at least T/2 columns (a 6-row
                        // sliver of A, `packed.rs`), not the last tile: whole
                        // loads of the `have` rows, whole stores in increasing
                        // l, each one's T − n ≤ n lanes past row l landing on
                        // row l + 1 (< k), which the next store rewrites.
                        // No masks (masked loads were most of this packing's
                        // samples on a Zen 3 core).
                        let rows: [V::V; T] = std::array::from_fn(|t| {
                            if t < have {
                                V::load(src.wrapping_add(t * cs + l0))
                            } else {
                                V::zero()
                            }
                        });
                        for (s, col) in tile(rows).into_iter().enumerate() {
                            let to = dst.wrapping_add((l0 + s) * n);
                            to.cast::<V::V>().write_unaligned(col);
                        }
                        continue;
                    }
                    let lm = V::mask(k - l0);
                    let rows: [V::V; T] = std::array::from_fn(|t| {
                        if j0 + t < have {
                            V::load_masked(src.wrapping_add((j0 + t) * cs + l0), lm)
                        } else {
                            V::zero()
                        }
                    });
                    for (s, col) in tile(rows).into_iter().enumerate().take(k - l0) {
                        V::store_masked(dst.wrapping_add((l0 + s) * n + j0), col, jm);
                    }
                }
            }
        }
    }

    /// A product ready for a kernel: `C ← α·A·B + β·C` with `C` dense row-major
    /// `m × n` and the operand layout chosen ([`Layout`]).
    pub(crate) struct Job<'a, T: Real> {
        alpha: T::Base,
        a: MatRef<'a, T>,
        b: MatRef<'a, T>,
        layout: Layout<T>,
        beta: T::Base,
        c: &'a mut [T],
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

    /// The layout for `A·B`, packing into `buf` with `pack_t` if needed;
    /// `None` if an operand that would need packing does not fit `buf`.
    fn layout<T: Copy>(
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
        buf: &mut [MaybeUninit<T>; PACK],
        pack_t: impl for<'x, 'b> Fn(MatRef<'x, T>, &'b mut [MaybeUninit<T>; PACK]) -> &'b [T],
    ) -> Option<Layout<T>> {
        if b.cols == 1 && a.rows > 1 && (a.rs == 1 || fits_pack(a.rows, a.cols)) {
            // The columns of A as contiguous runs: used as they are with unit
            // row stride (any size: a matrix-vector product with a
            // column-major A); otherwise Aᵀ is packed.
            Some(if a.rs == 1 {
                Layout::Columns(a.data.as_ptr(), a.cs)
            } else {
                Layout::Columns(pack_t(a.t(), buf).as_ptr(), a.rows)
            })
        } else if b.cs == 1 || b.cols == 1 {
            Some(Layout::Rows(b.data.as_ptr(), b.rs))
        } else if fits_pack(b.rows, b.cols) {
            Some(Layout::Rows(pack_t(b, buf).as_ptr(), b.cols))
        } else {
            None
        }
    }

    /// The job for `p` under instruction set `I`, packing into `buf` if
    /// needed (`None`: not taken). Whether it is `None` depends on the
    /// shapes and strides only.
    #[inline(always)]
    fn job<'p, I: Isa, T: Real>(
        p: &'p mut Product<'_, T>,
        buf: &'p mut [MaybeUninit<T>; PACK],
    ) -> Option<Job<'p, T>> {
        let (alpha, a, b, beta) = (p.alpha, p.a, p.b, p.beta);
        let c = p.c.dense_row_major()?;
        let layout = layout(a, b, buf, I::pack_t)?;
        Some(Job {
            alpha,
            a,
            b,
            layout,
            beta,
            c,
        })
    }

    /// Builds the job for `p` under instruction set `I` (`None`: not taken)
    /// and hands it to `run` with a packing buffer on this stack frame.
    #[inline(always)]
    fn with_job<I: Isa, T: Real>(p: &mut Product<'_, T>, run: impl FnOnce(Job<'_, T>)) -> bool {
        if !I::available() {
            return false;
        }
        let mut buf = [MaybeUninit::<T>::uninit(); PACK];
        match job::<I, T>(p, &mut buf) {
            Some(j) => run(j),
            None => return false,
        }
        true
    }

    /// [`with_job`] for every product of a batch: the instruction set asked
    /// once, slice 0's job decides (every slice has its shapes and strides,
    /// so none is refused after it), one packing buffer for all.
    #[inline(always)]
    fn with_jobs<I: Isa, T: Real>(batch: &mut Batch<'_, T>, run: impl Fn(Job<'_, T>)) -> bool {
        if !I::available() {
            return false;
        }
        let mut buf = [MaybeUninit::<T>::uninit(); PACK];
        for i in 0..batch.count() {
            let mut p = batch.product(i);
            match job::<I, T>(&mut p, &mut buf) {
                Some(j) => run(j),
                None if i == 0 => return false,
                None => unreachable!("slice {i} of a batch refused, slice 0 taken"),
            }
        }
        true
    }

    /// [`real`] for every product of a batch.
    pub(super) fn real_batch<I: Isa, E: Lane>(batch: &mut Batch<'_, E>) -> bool {
        // SAFETY: as in `real` (`with_jobs` asks `I::available()` first and
        // builds each job as `with_job` does).
        with_jobs::<I, E>(batch, |job| unsafe { I::real(job) })
    }

    /// [`dual`] for every product of a batch.
    pub(super) fn dual_batch<I: Isa, E: Lane>(batch: &mut Batch<'_, Dual<E>>) -> bool {
        // SAFETY: as in `dual`.
        with_jobs::<I, Dual<E>>(batch, |job| unsafe { I::dual(job) })
    }

    /// The real kernel of instruction set `I`, if the CPU has it and the
    /// layout suits; `false`: not taken.
    pub(super) fn real<I: Isa, E: Lane>(p: &mut Product<'_, E>) -> bool {
        // SAFETY: `with_job` calls `run` only after `I::available()` said yes,
        // with a job whose views passed their constructors' bounds checks
        // (a packed operand is a dense buffer with the stride given, see
        // `Layout`), whose shapes `Product::new` checked, and whose `c` is
        // exactly m × n elements (`dense_row_major`).
        with_job::<I, E>(p, |job| unsafe { I::real(job) })
    }

    /// The dual kernel of instruction set `I` (see [`real`]).
    pub(super) fn dual<I: Isa, E: Lane>(p: &mut Product<'_, Dual<E>>) -> bool {
        // SAFETY: as in `real`; a `Dual<E>` is two `E`s (`repr(C)`, no
        // padding), so a run of duals is twice as many contiguous `E`s.
        with_job::<I, Dual<E>>(p, |job| unsafe { I::dual(job) })
    }

    /// C's register panels, in order: vector columns `v0..v0 + nv` (nv ≤
    /// `nv_max`) by row blocks `i..i + mr` (mr ≤ `mr_max[nv − 1]`), as
    /// `(mr, nv, i, v0, full)`, where `full` says that the panel's last vector
    /// has all its lanes below `lanes_end` (the column or row count). An
    /// iterator rather than a loop taking a closure: a closure would be
    /// compiled without the caller's `#[target_feature]`s, and its intrinsics
    /// would become calls.
    struct Panels {
        m: usize,
        lanes: usize,
        lanes_end: usize,
        nv_max: usize,
        mr_max: [usize; 4],
        v0: usize,
        i: usize,
    }

    impl Panels {
        #[inline(always)]
        fn new(
            m: usize,
            lanes: usize,
            lanes_end: usize,
            nv_max: usize,
            mr_max: [usize; 4],
        ) -> Self {
            Panels {
                m,
                lanes,
                lanes_end,
                nv_max: nv_max.clamp(1, 4),
                mr_max,
                v0: 0,
                i: 0,
            }
        }
    }

    impl Iterator for Panels {
        type Item = (usize, usize, usize, usize, bool);
        #[inline(always)]
        fn next(&mut self) -> Option<Self::Item> {
            let vectors = self.lanes_end.div_ceil(self.lanes);
            if self.v0 >= vectors || self.m == 0 {
                return None;
            }
            let nv = (vectors - self.v0).min(self.nv_max);
            let full = (self.v0 + nv) * self.lanes <= self.lanes_end;
            let mr = (self.m - self.i).min(self.mr_max[nv - 1]).max(1);
            let item = (mr, nv, self.i, self.v0, full);
            self.i += mr;
            if self.i >= self.m {
                self.i = 0;
                self.v0 += nv;
            }
            Some(item)
        }
    }

    /// Calls a panel kernel with its const sizes chosen from run-time ones:
    /// `dispatch!(f::<V>, full, nv, (args))` → `f::<V, FULL, NV>(args)`, and
    /// `dispatch!(f::<V>, full, mr, nv, (args))` → `f::<V, FULL, MR, NV>(args)`
    /// (NV 1..=4, larger values clamp to 4; MR 1..=8, larger values clamp to
    /// 8).
    macro_rules! dispatch {
        ($f:ident::<$v:ty>, $full:expr, $($rest:tt)*) => {
            if $full {
                dispatch!(@sizes $f::<$v, true>, $($rest)*)
            } else {
                dispatch!(@sizes $f::<$v, false>, $($rest)*)
            }
        };
        (@sizes $f:ident::<$($g:tt),*>, $nv:expr, ($($arg:expr),*)) => {
            match $nv {
                1 => $f::<$($g),*, 1>($($arg),*),
                2 => $f::<$($g),*, 2>($($arg),*),
                3 => $f::<$($g),*, 3>($($arg),*),
                _ => $f::<$($g),*, 4>($($arg),*),
            }
        };
        (@sizes $f:ident::<$($g:tt),*>, $mr:expr, $nv:expr, $args:tt) => {
            match $mr {
                1 => dispatch!(@sizes $f::<$($g),*, 1>, $nv, $args),
                2 => dispatch!(@sizes $f::<$($g),*, 2>, $nv, $args),
                3 => dispatch!(@sizes $f::<$($g),*, 3>, $nv, $args),
                4 => dispatch!(@sizes $f::<$($g),*, 4>, $nv, $args),
                5 => dispatch!(@sizes $f::<$($g),*, 5>, $nv, $args),
                6 => dispatch!(@sizes $f::<$($g),*, 6>, $nv, $args),
                7 => dispatch!(@sizes $f::<$($g),*, 7>, $nv, $args),
                _ => dispatch!(@sizes $f::<$($g),*, 8>, $nv, $args),
            }
        };
    }

    /// The body of [`run_real`] and [`run_dual`]: the job's panels, each
    /// through its kernel (`$col` for a single column, `$panel` otherwise),
    /// with the register-block limits of entry `$which` (0 real, 1 dual).
    macro_rules! run_job {
        ($job:expr, $col:ident, $panel:ident, $which:literal) => {{
            let Job {
                alpha,
                a,
                b,
                layout,
                beta,
                c,
            } = $job;
            let (m, k, n) = (a.rows, a.cols, b.cols);
            match layout {
                Layout::Columns(at, ats) => {
                    for (_, nv, _, v0, full) in Panels::new(1, V::N, m, 4, [1; 4]) {
                        dispatch!(
                            $col::<V>,
                            full,
                            nv,
                            (alpha, at, ats, m, k, b, beta, &mut *c, v0)
                        )
                    }
                }
                Layout::Rows(bp, brs) => {
                    let (nv_max, mr_max) = (I::NV[$which], I::MR[$which]);
                    for (mr, nv, i, v0, full) in Panels::new(m, V::N, n, nv_max, mr_max) {
                        dispatch!(
                            $panel::<V>,
                            full,
                            mr,
                            nv,
                            (alpha, a, bp, brs, n, beta, &mut *c, i, v0)
                        )
                    }
                }
            }
        }};
    }

    /// A real job, by panels; always inlined into an [`Isa::real`] entry, so it
    /// is compiled with that entry's target features.
    ///
    /// # Safety
    /// As [`Isa::real`], with `I::Vec<E> = V`.
    #[inline(always)]
    pub(crate) unsafe fn run_real<I: Isa, V: Vectors>(job: Job<'_, V::E>) {
        // SAFETY: this fn's contract (a job from `real`: the CPU has V's
        // instruction set, the operands as `Layout` describes them);
        // `Panels` yields rows i..i + mr ≤ m and vector columns
        // v0..v0 + nv ≤ ⌈n / N⌉ (rows ⌈m / N⌉ for the column kernel), the
        // ranges the panels handle, and `full` only if the last vector's
        // lanes are all below n (m).
        unsafe { run_job!(job, real_col, real_panel, 0) }
    }

    /// A dual job, by panels (see [`run_real`]).
    ///
    /// # Safety
    /// As [`Isa::dual`], with `I::Vec<E> = V`.
    #[inline(always)]
    pub(crate) unsafe fn run_dual<I: Isa, V: Vectors>(job: Job<'_, Dual<V::E>>) {
        // SAFETY: as in `run_real` (a job from `dual`).
        unsafe { run_job!(job, dual_col, dual_panel, 1) }
    }

    /// Vector `v` of a panel of `NV` starting at `p`: a plain load when all
    /// its lanes are in range (`FULL` or not the panel's last), else masked.
    #[inline(always)]
    unsafe fn load_v<V: Vectors, const FULL: bool, const NV: usize>(
        p: *const V::E,
        v: usize,
        m: V::M,
    ) -> V::V {
        // SAFETY: the caller's: `p` valid for the lanes of `m`, which are all
        // N lanes when FULL or v + 1 < NV (`Panels`).
        unsafe {
            if FULL || v + 1 < NV {
                V::load(p)
            } else {
                V::load_masked(p, m)
            }
        }
    }

    /// Stores vector `v` of a panel of `NV` at `p`: a plain store when all
    /// its lanes are in range (as [`load_v`]), else masked.
    #[inline(always)]
    unsafe fn store_v<V: Vectors, const FULL: bool, const NV: usize>(
        p: *mut V::E,
        x: V::V,
        v: usize,
        m: V::M,
    ) {
        // SAFETY: the caller's: `p` valid for writes of the lanes of `m`,
        // which are all N lanes when FULL or v + 1 < NV (`Panels`); an
        // unaligned write of a whole vector writes exactly those N lanes.
        unsafe {
            if FULL || v + 1 < NV {
                p.cast::<V::V>().write_unaligned(x)
            } else {
                V::store_masked(p, x, m)
            }
        }
    }

    /// `C ← α·A·b + β·C` for a single column `b` (`n = 1`): the lanes run down
    /// the rows of A (one product per row and l, accumulated in increasing l,
    /// as the row kernel), vectors of rows `v0..v0 + NV`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn real_col<V: Vectors, const FULL: bool, const NV: usize>(
        alpha: V::E,
        at: *const V::E,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, V::E>,
        beta: V::E,
        c: &mut [V::E],
        v0: usize,
    ) {
        // SAFETY: the instruction set and the operands come from `real`
        // (after `available`): A[i, l] = at[i + l·ats] lies in its buffer for
        // i < m, l < k (`Layout::Columns`: `MatRef::new`'s bounds check, or a
        // packed copy of m·k ≤ PACK elements); B[l, 0] = b.data[l·rs] for
        // l < k = b.rows (bounds check, `Product::new`); `c` has m elements
        // (`dense_row_major`). Vector v of the panel has rows below
        // (v0 + v + 1)·N; its mask keeps only rows below m (all of them when
        // FULL or not last), and its addresses are formed with
        // `wrapping_add`, so only elements of those buffers are touched.
        unsafe {
            let masks: [V::M; NV] = std::array::from_fn(|v| V::mask(m - (v0 + v) * V::N));
            let mut acc = [V::zero(); NV];
            for l in 0..k {
                let col = at.wrapping_add(l * ats + v0 * V::N);
                let y = V::splat(*b.data.get_unchecked(l * b.rs));
                for v in 0..NV {
                    let x = load_v::<V, FULL, NV>(col.wrapping_add(v * V::N), v, masks[v]);
                    acc[v] = V::madd(acc[v], x, y);
                }
            }
            let (va, vb, beta_zero) = (V::splat(alpha), V::splat(beta), beta == V::E::zero());
            for v in 0..NV {
                let p = c.as_mut_ptr().wrapping_add((v0 + v) * V::N);
                let mut out = V::mul(va, acc[v]);
                if !beta_zero {
                    let c = load_v::<V, FULL, NV>(p, v, masks[v]);
                    out = V::add(out, V::mul(vb, c));
                }
                store_v::<V, FULL, NV>(p, out, v, masks[v]);
            }
        }
    }

    /// The dual form of [`real_col`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_col<V: Vectors, const FULL: bool, const NV: usize>(
        alpha: V::E,
        at: *const Dual<V::E>,
        ats: usize,
        m: usize,
        k: usize,
        b: MatRef<'_, Dual<V::E>>,
        beta: V::E,
        c: &mut [Dual<V::E>],
        v0: usize,
    ) {
        // SAFETY: as in `real_col` (from `dual`, after `available`), with the
        // masks counted in parts of E (two per dual): `lo`/`hi` cover the parts
        // of rows below m only (all of them when FULL or not last). `hi` may be
        // empty at the end of a column; its address is formed with
        // `wrapping_add`, and a load or store with an empty mask touches no
        // memory.
        unsafe {
            let parts = |v: usize, half: usize| {
                V::mask((2 * m).saturating_sub(2 * (v0 + v) * V::N + half * V::N))
            };
            let lo: [V::M; NV] = std::array::from_fn(|v| parts(v, 0));
            let hi: [V::M; NV] = std::array::from_fn(|v| parts(v, 1));
            let mut acc_v = [V::zero(); NV];
            let mut acc_d = [V::zero(); NV];
            for l in 0..k {
                let col = at.wrapping_add(l * ats + v0 * V::N).cast::<V::E>();
                let y = *b.data.get_unchecked(l * b.rs);
                let (yv, yd) = (V::splat(y.v), V::splat(y.d));
                for v in 0..NV {
                    let p = col.wrapping_add(2 * v * V::N);
                    let (xv, xd) = V::deinterleave(
                        load_v::<V, FULL, NV>(p, v, lo[v]),
                        load_v::<V, FULL, NV>(p.wrapping_add(V::N), v, hi[v]),
                    );
                    acc_v[v] = V::madd(acc_v[v], xv, yv);
                    // Dual's Mul (a·b): d = a.d·b.v + a.v·b.d, then added.
                    acc_d[v] = V::madd2(acc_d[v], xd, yv, xv, yd);
                }
            }
            let out = c.as_mut_ptr().wrapping_add(v0 * V::N).cast::<V::E>();
            for v in 0..NV {
                let p = out.wrapping_add(2 * v * V::N);
                let whole = FULL || v + 1 < NV;
                dual_epilogue::<V>(alpha, beta, acc_v[v], acc_d[v], p, lo[v], hi[v], whole);
            }
        }
    }

    /// Writes `α·s + β·c` (or `α·s` when β = 0, without reading `c`) for one
    /// dual vector, `Dual`'s `Mul` and `Add` with constant α, β (zero
    /// tangents), part by part: v = α·s.v (+ β·c.v) and
    /// d = (0·s.v + α·s.d) (+ (0·c.v + β·c.d)).
    ///
    /// `whole`: both masks hold all `N` lanes, so the parts are read and
    /// written by whole vectors (a masked store is microcoded on AMD's Zen
    /// cores, about ten times a plain one's cost); the bits are the same.
    ///
    /// # Safety
    /// The CPU has V's instruction set; `p` is valid for reads and writes of
    /// the parts in `lo` and of those in `hi` from `p + N`, all `2N` of them
    /// when `whole`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_epilogue<V: Vectors>(
        alpha: V::E,
        beta: V::E,
        sv: V::V,
        sd: V::V,
        p: *mut V::E,
        lo: V::M,
        hi: V::M,
        whole: bool,
    ) {
        // SAFETY: this fn's contract; only the lanes of the masks are touched
        // (all of them when `whole`).
        unsafe {
            let (va, vb, z) = (V::splat(alpha), V::splat(beta), V::zero());
            let mut ov = V::mul(va, sv);
            let mut od = V::add(V::mul(z, sv), V::mul(va, sd));
            let q = p.wrapping_add(V::N);
            if beta != V::E::zero() {
                let (cv, cd) = if whole {
                    V::deinterleave(V::load(p), V::load(q))
                } else {
                    V::deinterleave(V::load_masked(p, lo), V::load_masked(q, hi))
                };
                ov = V::add(ov, V::mul(vb, cv));
                od = V::add(od, V::add(V::mul(z, cv), V::mul(vb, cd)));
            }
            let (x0, x1) = V::interleave(ov, od);
            if whole {
                p.cast::<V::V>().write_unaligned(x0);
                q.cast::<V::V>().write_unaligned(x1);
            } else {
                V::store_masked(p, x0, lo);
                V::store_masked(q, x1, hi);
            }
        }
    }

    /// Rows `i0..i0+MR` and vector columns `v0..v0+NV` of `C`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn real_panel<V: Vectors, const FULL: bool, const MR: usize, const NV: usize>(
        alpha: V::E,
        a: MatRef<'_, V::E>,
        b: *const V::E,
        brs: usize,
        n: usize,
        beta: V::E,
        c: &mut [V::E],
        i0: usize,
        v0: usize,
    ) {
        // SAFETY: the instruction set and the operands come from `real`
        // (after `available`): B[l, j] = b[l·brs + j] lies in its buffer for
        // l < k, j < n (`Layout::Rows`: `MatRef::new`'s bounds check with unit
        // column stride, or a packed copy); A[i, l] for i < m = a.rows,
        // l < k = a.cols (bounds check, `Product::new`); `c` has m·n elements
        // (`dense_row_major`). Rows i0 + r < m (`Panels`); the mask of
        // vector v keeps only columns below n (all of them when FULL or not
        // last), and addresses are formed with `wrapping_add`, so only
        // elements of those buffers are touched.
        unsafe {
            let masks: [V::M; NV] = std::array::from_fn(|v| V::mask(n - (v0 + v) * V::N));
            let mut acc = [[V::zero(); NV]; MR];
            for l in 0..a.cols {
                let row = b.wrapping_add(l * brs + v0 * V::N);
                let bv: [V::V; NV] = std::array::from_fn(|v| {
                    load_v::<V, FULL, NV>(row.wrapping_add(v * V::N), v, masks[v])
                });
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = V::splat(*a.data.get_unchecked((i0 + r) * a.rs + l * a.cs));
                    for v in 0..NV {
                        acc_r[v] = V::madd(acc_r[v], x, bv[v]);
                    }
                }
            }
            let out = c.as_mut_ptr();
            // The epilogue's kind chosen once per panel, not per vector.
            let one = <V::E as Real>::one();
            if alpha == one && beta == V::E::zero() {
                panel_out::<V, FULL, MR, NV, STORE>(acc, alpha, beta, out, n, i0, v0, masks)
            } else if alpha == one && beta == one {
                panel_out::<V, FULL, MR, NV, ADD>(acc, alpha, beta, out, n, i0, v0, masks)
            } else {
                panel_out::<V, FULL, MR, NV, SCALE>(acc, alpha, beta, out, n, i0, v0, masks)
            }
        }
    }

    /// [`panel_out`]'s kinds: `C ← s` (α = 1, β = 0), `C ← s + C` (α = β =
    /// 1), and the general `C ← α·s (+ β·C)`.
    const STORE: u8 = 0;
    const ADD: u8 = 1;
    const SCALE: u8 = 2;

    /// Writes a real panel's sums `s` to rows `i0..i0+MR`, vector columns
    /// `v0..v0+NV` of `C` (row length `n`): `α·s + β·c` (or `α·s` when β = 0,
    /// `c` not read), each product and sum rounded on its own; for `KIND`
    /// [`STORE`] or [`ADD`] (α = 1, and β = 0 or 1) without the products by
    /// 1, which round `1·x` to `x` for every `x` (±0, ±∞ and NaN included):
    /// the same bits, two multiplications fewer per vector for
    /// `C ← A·B + C` (`batched_affine`'s forward, accumulated adjoints).
    ///
    /// # Safety
    /// As [`real_panel`]'s output: the CPU has V's instruction set, `c` is the
    /// start of a dense `m × n` output with rows i0 + r < m, and `masks` keep
    /// each vector's lanes below column n (all of them when `FULL` or not
    /// last).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_out<
        V: Vectors,
        const FULL: bool,
        const MR: usize,
        const NV: usize,
        const KIND: u8,
    >(
        acc: [[V::V; NV]; MR],
        alpha: V::E,
        beta: V::E,
        c: *mut V::E,
        n: usize,
        i0: usize,
        v0: usize,
        masks: [V::M; NV],
    ) {
        // SAFETY: this fn's contract; addresses via `wrapping_add`, touched
        // lanes only those of the masks.
        unsafe {
            let (va, vb, beta_zero) = (V::splat(alpha), V::splat(beta), beta == V::E::zero());
            for (r, acc_r) in acc.iter().enumerate() {
                let row = c.wrapping_add((i0 + r) * n + v0 * V::N);
                for v in 0..NV {
                    let p = row.wrapping_add(v * V::N);
                    let out = match KIND {
                        STORE => acc_r[v],
                        ADD => V::add(acc_r[v], load_v::<V, FULL, NV>(p, v, masks[v])),
                        _ => {
                            let mut out = V::mul(va, acc_r[v]);
                            if !beta_zero {
                                let c = load_v::<V, FULL, NV>(p, v, masks[v]);
                                out = V::add(out, V::mul(vb, c));
                            }
                            out
                        }
                    };
                    store_v::<V, FULL, NV>(p, out, v, masks[v]);
                }
            }
        }
    }

    /// The dual panel: primal and tangent accumulators side by side; each
    /// vector of B is two interleaved loads split into its parts.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dual_panel<V: Vectors, const FULL: bool, const MR: usize, const NV: usize>(
        alpha: V::E,
        a: MatRef<'_, Dual<V::E>>,
        b: *const Dual<V::E>,
        brs: usize,
        n: usize,
        beta: V::E,
        c: &mut [Dual<V::E>],
        i0: usize,
        v0: usize,
    ) {
        // SAFETY: as in `real_panel` (from `dual`, after `available`), with
        // the masks counted in parts of E (two per dual): `lo`/`hi` cover the
        // parts of columns below n only (all of them when FULL or not last).
        // `hi` may be empty at the end of a row; its address is formed with
        // `wrapping_add`, and a load or store with an empty mask touches no
        // memory.
        unsafe {
            let parts = |v: usize, half: usize| {
                let done = 2 * (v0 + v) * V::N + half * V::N;
                V::mask((2 * n).saturating_sub(done))
            };
            let lo: [V::M; NV] = std::array::from_fn(|v| parts(v, 0));
            let hi: [V::M; NV] = std::array::from_fn(|v| parts(v, 1));
            let mut acc_v = [[V::zero(); NV]; MR];
            let mut acc_d = [[V::zero(); NV]; MR];
            for l in 0..a.cols {
                let row = b.wrapping_add(l * brs + v0 * V::N).cast::<V::E>();
                let mut bv = [V::zero(); NV];
                let mut bd = [V::zero(); NV];
                for v in 0..NV {
                    let p = row.wrapping_add(2 * v * V::N);
                    (bv[v], bd[v]) = V::deinterleave(
                        load_v::<V, FULL, NV>(p, v, lo[v]),
                        load_v::<V, FULL, NV>(p.wrapping_add(V::N), v, hi[v]),
                    );
                }
                for r in 0..MR {
                    let x = *a.data.get_unchecked((i0 + r) * a.rs + l * a.cs);
                    let (xv, xd) = (V::splat(x.v), V::splat(x.d));
                    for v in 0..NV {
                        acc_v[r][v] = V::madd(acc_v[r][v], xv, bv[v]);
                        // Dual's Mul: d = a.d·b.v + a.v·b.d, then added.
                        acc_d[r][v] = V::madd2(acc_d[r][v], xd, bv[v], xv, bd[v]);
                    }
                }
            }
            for r in 0..MR {
                let row = c
                    .as_mut_ptr()
                    .wrapping_add((i0 + r) * n + v0 * V::N)
                    .cast::<V::E>();
                for v in 0..NV {
                    let p = row.wrapping_add(2 * v * V::N);
                    let (sv, sd, whole) = (acc_v[r][v], acc_d[r][v], FULL || v + 1 < NV);
                    dual_epilogue::<V>(alpha, beta, sv, sd, p, lo[v], hi[v], whole);
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::imp::Isa;
    use crate::kernels::avx2::Avx2;
    use crate::kernels::avx512::Avx512;
    use crate::kernels::portable::pack;
    use crate::kernels::{MatRef, PACK};
    use crate::real::Dual;
    use std::mem::MaybeUninit;

    /// `I::pack_t` of the transposed view `B = Xᵀ` (`X` a `[n, k]` block of a
    /// wider row-major buffer, so `B[l, j] = x[j·cs + l]`) equals the portable
    /// strided copy, bit for bit, on tile edges (1, 3, 8, 9, 16, 17, 40, …) for
    /// 4- and 8-byte elements and `Dual<f32>` (moved as 8-byte lanes).
    fn packs_like_portable<I: Isa, T: Copy + PartialEq + std::fmt::Debug>(
        make: impl Fn(usize) -> T,
    ) {
        if !I::available() {
            return;
        }
        for (k, n) in [
            (1, 1),
            (1, 40),
            (40, 1),
            (3, 5),
            (8, 8),
            (9, 17),
            (16, 16),
            (17, 9),
            (40, 40),
            (33, 40),
            // T/2..T columns (f32: 4..8, f64: 2..4), k > T: whole, overlapping
            // stores but for the last tile.
            (17, 6),
            (40, 4),
            (9, 7),
            (16, 5),
            (9, 3),
            (17, 2),
        ] {
            let cs = k + 3; // a padded row: the view skips 3 elements per row
            let x: Vec<T> = (0..n * cs).map(&make).collect();
            let b = MatRef::new(&x[..], k, n, 1, cs);
            let mut fast = [MaybeUninit::<T>::uninit(); PACK];
            let mut slow = [MaybeUninit::<T>::uninit(); PACK];
            let (fast, slow) = (I::pack_t(b, &mut fast), pack(b, &mut slow));
            assert_eq!(fast, slow, "[{k}, {n}]");
            assert_eq!(fast.len(), k * n);
        }
    }

    /// `Vectors::store_masked` writes the first `count` lanes of a vector and
    /// nothing else, for every `count` in `0..=N` and both AVX2 shapes (whose
    /// partial stores are a half, a pair and a lane of plain stores): the
    /// lanes before and after keep their sentinels.
    #[test]
    fn masked_stores_write_exactly_their_lanes() {
        use super::imp::Vectors;
        use crate::kernels::avx2::{F32x8, F64x4};
        fn check<V: Vectors>(val: impl Fn(usize) -> V::E, sentinel: V::E)
        where
            V::E: PartialEq + std::fmt::Debug,
        {
            let x: Vec<V::E> = (0..V::N).map(val).collect();
            for count in 0..=V::N {
                let mut buf = vec![sentinel; V::N + 2];
                // SAFETY: the caller checked AVX2+FMA; `x` holds N lanes and
                // `buf` from 1 holds N + 1, more than the mask's `count`.
                unsafe {
                    let v = V::load(x.as_ptr());
                    V::store_masked(buf.as_mut_ptr().add(1), v, V::mask(count));
                }
                let mut want = vec![sentinel; V::N + 2];
                want[1..=count].copy_from_slice(&x[..count]);
                assert_eq!(buf, want, "N = {}, count = {count}", V::N);
            }
        }
        if crate::kernels::family::has_avx2_fma() {
            check::<F32x8>(|i| i as f32 + 1.5, -7.0);
            check::<F64x4>(|i| i as f64 + 1.5, -7.0);
        }
    }

    /// The real panels' epilogue kinds: `C ← 1·A·B + 1·C` is `s + c` and
    /// `C ← α·A·B + β·C` is `α·s + β·c`, bit for bit, where `s` is the
    /// family's `C ← 1·A·B + 0·C` (each rounding on its own, the products by 1
    /// left out), on the sine MLP's shapes, edges and a transposed operand,
    /// in every family this CPU has.
    #[test]
    fn epilogue_kinds_are_the_general_epilogues_bits() {
        use crate::gemm::gemm;
        use crate::kernels::{with_family, Family};
        let val = |i: usize, s: u64| ((i as u64 * 2654435761 + s * 97) % 1000) as f32 / 300.0 - 1.6;
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
            for (m, k, n, t) in [
                (10, 40, 40, false),
                (40, 10, 40, true),
                (10, 1, 40, false),
                (13, 7, 19, true),
                (3, 5, 9, false),
            ] {
                let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
                let b: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
                let c0: Vec<f32> = (0..m * n).map(|i| val(i, 3)).collect();
                // A read through strides (a transposed view) or row-major.
                let av = if t {
                    MatRef::new(&a[..], m, k, 1, m)
                } else {
                    MatRef::row_major(&a[..], m, k)
                };
                let bv = MatRef::row_major(&b[..], k, n);
                let run = |alpha: f32, beta: f32| {
                    let mut c = c0.clone();
                    with_family(family, || gemm(alpha, av, bv, beta, &mut c));
                    c
                };
                let s = run(1.0, 0.0);
                let add: Vec<f32> = s.iter().zip(&c0).map(|(s, c)| s + c).collect();
                assert_eq!(
                    bits(&run(1.0, 1.0)),
                    bits(&add),
                    "{family:?} [{m}, {k}, {n}] α = β = 1"
                );
                let (al, be) = (1.75f32, -0.375f32);
                let gen: Vec<f32> = s.iter().zip(&c0).map(|(s, c)| al * s + be * c).collect();
                assert_eq!(
                    bits(&run(al, be)),
                    bits(&gen),
                    "{family:?} [{m}, {k}, {n}] α, β"
                );
                let gen: Vec<f32> = s.iter().zip(&c0).map(|(s, c)| al * s + c).collect();
                assert_eq!(
                    bits(&run(al, 1.0)),
                    bits(&gen),
                    "{family:?} [{m}, {k}, {n}] β = 1"
                );
                let scaled: Vec<f32> = s.iter().map(|s| al * s).collect();
                assert_eq!(
                    bits(&run(al, 0.0)),
                    bits(&scaled),
                    "{family:?} [{m}, {k}, {n}] β = 0"
                );
            }
        }
    }

    #[test]
    fn avx2_pack_t_equals_portable_pack() {
        packs_like_portable::<Avx2, f32>(|i| i as f32 + 0.5);
        packs_like_portable::<Avx2, f64>(|i| -(i as f64) - 0.25);
        packs_like_portable::<Avx2, Dual<f32>>(|i| Dual::new(i as f32, -(i as f32)));
    }

    #[test]
    fn avx512_pack_t_equals_portable_pack() {
        packs_like_portable::<Avx512, f32>(|i| i as f32 + 0.5);
        packs_like_portable::<Avx512, f64>(|i| -(i as f64) - 0.25);
        packs_like_portable::<Avx512, Dual<f32>>(|i| Dual::new(i as f32, -(i as f32)));
    }
}
