//! Large real products `C ← α·A·B + β·C` by packed panels (GotoBLAS/BLIS):
//! our own kernels for every family, in place of `matrixmultiply`.
//!
//! # Loops
//! For each block of [`Micro::NC`] columns of `C`, each panel of at most
//! [`KC`] values of `l` (the sum's index), `B`'s panel is packed into
//! slivers of [`Micro::NR`] columns (`kc × NR`, row after row, zero-padded
//! past `n`); for each block of [`Micro::MC`] rows, `A`'s panel is packed into
//! slivers of [`Micro::MR`] rows (`kc × MR`, zero-padded past `m`); then each
//! `MR × NR` tile of `C` is one call of the micro-kernel, which keeps the tile
//! in registers for the whole panel (a sliver of `B` stays in L1 while the
//! slivers of `A` stream past it). Edge tiles compute the padded lanes too but
//! read and write only the elements of `C` inside the shape.
//!
//! # What is computed
//! Each element of `C` is one accumulator lane: `s ← s + a_il·b_lj` in
//! increasing `l`, from zero, over all of `k` (between panels the partial sum
//! is parked in `C` itself and loaded back, which changes no bit), then
//! `α·s`, or `α·s + β·c_ij` with the `c_ij` from before the call (saved in a
//! scratch copy when `k` takes more than one panel), each product and sum
//! rounded on its own. The step `s + a·b` is a fused multiply-add (one
//! rounding) in the AVX2 and AVX-512 families, and a product and a sum
//! rounded on their own in the portable one, so the portable family gives the
//! bits of the portable row loop (`portable.rs`). Either way an element's
//! value depends only on its row of `A`, its column of `B`, `α`, `β`, `c_ij`
//! and the family: not on its place in a tile, on the shape around it, nor on
//! how a caller splits `C` between threads (`large.rs`).
//!
//! A column-major `C` (unit row stride) is computed as `Cᵀ = Bᵀ·Aᵀ`, the same
//! products (`a·b = b·a`, also fused) in the same order; other strided outputs
//! go through a tile-sized copy.
//!
//! # B read in place
//! Packing `B` costs a read and a write of each of its elements per product,
//! and a product of `m` rows uses each element `⌈m / MR⌉` times: for few rows
//! the packing is a large share of the work (about 8 % of a single thread's
//! time on `[64, 784]·[784, 256]`, `docs/benchmarks.md`, "inplace"). So the
//! vector kernels read the full-width slivers of a row-major `B` (unit column
//! stride) where it lies, row `l` of a sliver `rsb` elements after row `l − 1`
//! instead of `NR`, when [`reads_b_in_place`] says so: at most
//! [`IN_PLACE_ROWS`] rows, a row stride that is not a multiple of
//! [`CONFLICT_STRIDE`] bytes (rows that far apart fall into one or two sets of
//! the L1 cache: read in place, `[256, 256]·[256, 512]` lost 1–3 % and
//! `[256, 256]·[256, 1024]` 26–42 %), and a block of `B` of at most
//! [`IN_PLACE_BYTES`] for the job (a chunk's columns, when `large.rs` cuts
//! the product: the packer reads a `B` that is not in cache as whole rows,
//! which the prefetchers follow, and the kernel in place as scattered lines;
//! with AVX-512 and no bound, `[64, 576]·[576, 7840]`, chunks of 4.5 MB, lost
//! 3–4 %, and `[64, 576]·[576, 15680]` 4–8 %). A sliver of the right edge
//! (fewer than `NR` columns) is packed as before, and so is a panel of a
//! stacked `B` that straddles its two blocks. Each element's sum is the same
//! either way: the bits do not change, only where `B` is read from.
//! [`pack_b_always`] turns this off, to measure it.
//!
//! # Buffers
//! The packed panels and the saved `C` live in a [`Bufs`] the caller passes:
//! the calling thread's, one per half of a product cut in two
//! (`Prim::with_pack`, `large.rs`), grown to the largest shape seen and
//! reused, so a steady state allocates nothing.

use super::Prim;
use crate::real::Real;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most values of the sum's index `l` per packed panel. `k` is cut into
/// `⌈k / KC⌉` equal panels (the last one shorter), a function of `k` only.
pub(crate) const KC: usize = 256;

/// The most rows of a product whose `B` is read in place (see the module
/// docs, "B read in place"). Measured on Zen 5, both families, `[m, 256]·[256,
/// 256]` in one thread: in place took 13–22 % less time than packed at
/// m = 32, 5–8 % at m = 96, 3–5 % at 128 and 1 % at 256; and `[784, 64]·[64,
/// 256]` (`Xᵀ·dZ`) was up to 4 % slower.
pub(crate) const IN_PLACE_ROWS: usize = 128;

/// A row stride of `B` (in bytes) that is a multiple of this is never read in
/// place: the rows of a sliver would fall into one or two sets of a 64-set
/// L1 cache (module docs, "B read in place").
pub(crate) const CONFLICT_STRIDE: usize = 2048;

/// The largest block of `B` (a job's `k·n` elements, in bytes) read in place
/// (module docs, "B read in place").
pub(crate) const IN_PLACE_BYTES: usize = 4 << 20;

/// Set by [`pack_b_always`].
static PACK_B_ALWAYS: AtomicBool = AtomicBool::new(false);

/// Makes every large product of the process pack `B` (`true`), or lets the
/// AVX2 and AVX-512 packed kernels read a row-major `B` where it lies
/// (`false`, the default) in a product `C = A·B` of at most 128 rows whose
/// rows of `B` are not a multiple of 2 KiB apart and whose block of `B` (a
/// thread's chunk of columns when the product is cut) takes at most 4 MiB
/// (`crates/tape/src/kernels/packed.rs`, "B read in place", says why). Each
/// element `c_ij = α·Σ_l a_il·b_lj (+ β·c_ij)` is summed in the same order
/// either way, so the results are the same bits: this is a switch to
/// measure the difference (`examples/pack_b.rs`, `bench CONFIG --pack-b`)
/// and to test it.
///
/// ```
/// use tape::gemm::{gemm, MatRef};
/// use tape::kernels::pack_b_always;
/// let (a, b) = (vec![0.5_f32; 64 * 300], vec![0.25_f32; 300 * 200]);
/// let (av, bv) = (MatRef::row_major(&a, 64, 300), MatRef::row_major(&b, 300, 200));
/// let (mut c1, mut c2) = (vec![0.0; 64 * 200], vec![0.0; 64 * 200]);
/// pack_b_always(true);
/// gemm(1.0, av, bv, 0.0, &mut c1);
/// pack_b_always(false);
/// gemm(1.0, av, bv, 0.0, &mut c2);
/// assert_eq!(c1, c2);
/// assert_eq!(c1[0], 300.0 * 0.125);
/// ```
pub fn pack_b_always(on: bool) {
    PACK_B_ALWAYS.store(on, Ordering::Relaxed);
}

/// Whether micro-kernel `M` reads the full-width slivers of `job`'s `B` in
/// place rather than packing them (module docs, "B read in place"): `M`
/// can ([`Micro::B_IN_PLACE`]), [`pack_b_always`] is off, `B` is row-major
/// (unit column stride), `m ≤` [`IN_PLACE_ROWS`], its row stride is not a
/// multiple of [`CONFLICT_STRIDE`] bytes, and the job's `k·n` elements take
/// at most [`IN_PLACE_BYTES`]. A function of the job's shape and strides (and the
/// switch): the bits are the same either way.
pub(crate) fn reads_b_in_place<M: Micro>(job: &Job<M::E>) -> bool {
    let size = std::mem::size_of::<M::E>();
    M::B_IN_PLACE
        && !PACK_B_ALWAYS.load(Ordering::Relaxed)
        && job.csb == 1
        && job.m <= IN_PLACE_ROWS
        && (job.rsb * size) % CONFLICT_STRIDE != 0
        && job.k.saturating_mul(job.n).saturating_mul(size) <= IN_PLACE_BYTES
}

/// The largest `MR·NR` of any micro-kernel (the copy of a strided tile).
const TILE: usize = 1024;

/// A strided output tile's copies: the tile, and its `c_ij` for the `β` term.
type TileCopies<E> = ([E; TILE], [E; TILE]);

/// One large product on raw parts: `C ← α·A·B + β·C` with `A` `m × k`
/// (element `(i, l)` at `a[i·rsa + l·csa]`), `B` `k × n`, `C` `m × n`.
#[derive(Clone, Copy)]
pub(crate) struct Job<E> {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub alpha: E,
    pub a: *const E,
    pub rsa: usize,
    pub csa: usize,
    pub b: *const E,
    pub rsb: usize,
    pub csb: usize,
    /// Rows `l ≥ k_lo` of `B` are read from `b_hi` instead (element
    /// `(l, j)` at `b_hi[(l − k_lo)·rsb + j·csb]`): `B` as two blocks
    /// stacked along the sum's index, with the same strides, read where
    /// they are. `k_lo ≥ k`: all of `B` from `b` (`b_hi` unread).
    pub k_lo: usize,
    pub b_hi: *const E,
    pub beta: E,
    pub c: *mut E,
    pub rsc: usize,
    pub csc: usize,
    /// Where `A`'s slivers come from ([`APack`]).
    pub pack_a: APack<E>,
}

/// How a [`Job`] gets `A`'s packed slivers. A product cut along `C`'s columns
/// (`large.rs`) reads all of `A` in every chunk: it is packed once, before
/// the chunks, into a buffer they all read, not once per chunk.
#[derive(Clone, Copy)]
pub(crate) enum APack<E> {
    /// Each panel of `A` is packed as the product needs it (into the
    /// thread's [`Bufs`]).
    Each,
    /// Only pack rows `rows.0..rows.1` of every panel of `A` into `dst`
    /// (valid for [`a_len`]`(m, k)` writes; the layout of [`APack::From`]);
    /// `B` and `C` are not touched. Each bound is rounded down to a multiple
    /// of the micro-kernel's `MR` (an end of `m` is kept), so calls with
    /// `(0, r)` and `(r, m)` pack all of `A` between them, for any `r`: the
    /// two threads of a column cut each pack a part (`large.rs`).
    Into(*mut E, (usize, usize)),
    /// `A`'s slivers are read from `src`, packed by an [`APack::Into`] call
    /// of the same `A` (all its rows), `k` and family: panel `p` (of the sum's index) at
    /// `p·⌈m⌉·kc_max`, the sliver of rows from `i` (a multiple of `MR`) at
    /// `i·kc` inside it (`⌈m⌉` is m rounded up to `MR`, `kc` the panel's
    /// length).
    From(*const E),
}

/// The most rows of a sliver of `A` (`Micro::MR`) of any family.
const MR_MAX: usize = 8;

/// The length of the buffer of an [`APack::Into`] job for an `m × k` `A`,
/// for every family: `(m + MR_MAX)·kc_max·panels` ≥ `⌈m⌉·kc_max·panels`.
pub(crate) fn a_len(m: usize, k: usize) -> usize {
    let panels = k.div_ceil(KC).max(1);
    (m + MR_MAX) * k.div_ceil(panels) * panels
}

/// A thread's packing buffers: `A`'s and `B`'s panels and the saved `C`.
#[derive(Default)]
pub(crate) struct Bufs<E> {
    a: Vec<E>,
    b: Vec<E>,
    c: Vec<E>,
    /// All of `A` packed for the chunks of a cut product ([`APack`]).
    shared_a: Vec<E>,
}

/// One tile of `C` for a micro-kernel: rows `< rows` and columns `< cols` of
/// `c` (row stride `rs`, unit column stride) are read (unless `first`) and
/// written; `src` (row stride `srs`, unit column stride) holds the `c_ij` of
/// the `β` term, read only when `last` and `β ≠ 0`.
pub(crate) struct Tile<E> {
    pub c: *mut E,
    pub rs: usize,
    pub src: *const E,
    pub srs: usize,
    pub rows: usize,
    pub cols: usize,
    /// The first panel: the sum starts from zero (else from the tile).
    pub first: bool,
    /// The last panel: the tile gets `α·s (+ β·src)` (else the sum `s`).
    pub last: bool,
    pub alpha: E,
    pub beta: E,
}

/// One transpose of `have` strided source rows into `k` rows of `n`, zero
/// padded: `dst[l·n + j] = src[j·cs + l]` for `l < k`, `j < have`, and
/// `dst[l·n + j] = 0` for `have ≤ j < n`. Source rows from `have` on are never
/// read: an edge sliver ([`pack`]) keeps its row length `n` and gets zeros.
/// Whoever runs one ([`Micro::transpose`], `simd::transpose_tiles`) requires
/// `have ≤ n`, `src[j·cs + l]` valid for reads for `l < k`, `j < have`, and
/// `dst` valid for `k·n` writes.
///
/// Only the x86_64 kernels have register transposes: elsewhere every
/// [`Micro::transpose`] declines and the fields are never read.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Transposition<E> {
    pub src: *const E,
    /// The source's row stride (its elements along a row are contiguous).
    pub cs: usize,
    pub k: usize,
    pub have: usize,
    pub n: usize,
    pub dst: *mut E,
}

impl<E> Transposition<E> {
    /// The same transposition with its elements moved as `F` lanes, of the
    /// same size: only bits move.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn cast<F>(self) -> Transposition<F> {
        debug_assert_eq!(std::mem::size_of::<E>(), std::mem::size_of::<F>());
        Transposition {
            src: self.src.cast(),
            cs: self.cs,
            k: self.k,
            have: self.have,
            n: self.n,
            dst: self.dst.cast(),
        }
    }
}

/// A micro-kernel and its blocking.
pub(crate) trait Micro {
    /// The element.
    type E: Real<Base = Self::E> + Copy;
    /// Rows of a tile (of a sliver of `A`).
    const MR: usize;
    /// Columns of a tile (of a sliver of `B`).
    const NR: usize;
    /// Rows of `A` packed at a time (a multiple of `MR`).
    const MC: usize;
    /// Columns of `B` packed at a time (a multiple of `NR`).
    const NC: usize;
    /// Runs `t` ([`Transposition`]) by register transposes, if the kernel
    /// has them; `false`: not done.
    ///
    /// # Safety
    /// `t`'s buffers as [`Transposition`] says, and the CPU as the kernel
    /// requires.
    unsafe fn transpose(t: Transposition<Self::E>) -> bool;
    /// Whether [`Micro::tile`] may be given a sliver of `B` where it lies
    /// (rows `rsb ≠ NR` apart: [`reads_b_in_place`]).
    const B_IN_PLACE: bool;
    /// `t` ← the tile's sum over the `kc` values of `l` of a packed sliver of
    /// `A`, `a[l·MR + r]`, and a sliver of `B`, `b[l·rsb + j]` (`rsb = NR`:
    /// packed; otherwise `B`'s own rows), started and finished as `t` says.
    ///
    /// # Safety
    /// `a` valid for `kc·MR` reads, `b[l·rsb + j]` for `l < kc`, `j < NR`;
    /// `t.rows ≤ MR`,
    /// `t.cols == NR` ([`run`] sends a tile of fewer columns through a
    /// dense copy), and `t`'s pointers valid for the elements it names;
    /// the CPU as the kernel requires.
    unsafe fn tile(kc: usize, a: *const Self::E, b: *const Self::E, rsb: usize, t: &Tile<Self::E>);
}

impl<E: Real> Bufs<E> {
    /// Grows each buffer to at least the length of `other`'s.
    pub(crate) fn cover(&mut self, other: &Self) {
        grow(&mut self.a, other.a.len());
        grow(&mut self.b, other.b.len());
        grow(&mut self.c, other.c.len());
    }

    /// The buffer for all of `A` ([`APack::Into`]), at least `len` elements,
    /// taken out of `self` (so that the threads can read it while `self`
    /// is in use); give it back with [`Bufs::put_shared_a`].
    pub(crate) fn take_shared_a(&mut self, len: usize) -> Vec<E> {
        grow(&mut self.shared_a, len);
        std::mem::take(&mut self.shared_a)
    }

    /// Returns the buffer of [`Bufs::take_shared_a`] (kept for the next call).
    pub(crate) fn put_shared_a(&mut self, v: Vec<E>) {
        self.shared_a = v;
    }
}

/// Grows `v` to at least `len` elements (never shrinks: the steady state
/// allocates nothing).
fn grow<E: Real>(v: &mut Vec<E>, len: usize) {
    if v.len() < len {
        v.resize(len, E::zero());
    }
}

/// Packs a sliver: `dst[l·w + x] = src[x·sx + l·sl]` for `l < kc`, `x < we`,
/// and zero for `we ≤ x < w`.
///
/// # Safety
/// `src[x·sx + l·sl]` valid for reads for `l < kc`, `x < we`; `dst` for
/// `kc·w` writes; the CPU as `M` requires.
#[inline(always)]
unsafe fn pack<M: Micro>(
    src: *const M::E,
    sx: usize,
    sl: usize,
    kc: usize,
    we: usize,
    w: usize,
    dst: *mut M::E,
) {
    // SAFETY: this fn's contract; every index below is one it names.
    unsafe {
        // Strided slivers (a row-major A, a column-major B), edge ones too
        // (`we < w`: their padding comes out of the transposes as zeros).
        let t = Transposition {
            src,
            cs: sx,
            k: kc,
            have: we,
            n: w,
            dst,
        };
        if sl == 1 && sx != 1 && M::transpose(t) {
            return;
        }
        for l in 0..kc {
            let row = dst.add(l * w);
            if sx == 1 && we == w && (w == M::NR || w == M::MR) {
                // A constant length: inlined as vector moves, not a call.
                let from = src.wrapping_add(l * sl);
                if w == M::NR {
                    std::ptr::copy_nonoverlapping(from, row, M::NR);
                } else {
                    std::ptr::copy_nonoverlapping(from, row, M::MR);
                }
            } else if sx == 1 {
                std::ptr::copy_nonoverlapping(src.wrapping_add(l * sl), row, we);
            } else {
                for x in 0..we {
                    *row.add(x) = *src.wrapping_add(x * sx + l * sl);
                }
            }
            for x in we..w {
                *row.add(x) = M::E::zero();
            }
        }
    }
}

/// Packs rows `rows` of `A`'s panel `pc..pc + kc` into slivers of `MR` rows,
/// the sliver of rows from `rows.start + s·MR` at `dst + s·kc·MR`.
///
/// # Safety
/// As [`pack`]: the rows and the panel inside `A`, `dst` valid for
/// `⌈rows⌉·kc` writes (`rows.len()` rounded up to `MR`).
#[inline(always)]
unsafe fn pack_a<M: Micro>(
    j: &Job<M::E>,
    pc: usize,
    kc: usize,
    rows: std::ops::Range<usize>,
    dst: *mut M::E,
) {
    let mr = M::MR;
    for (s, i0) in rows.clone().step_by(mr).enumerate() {
        let src = j.a.wrapping_add(i0 * j.rsa + pc * j.csa);
        // SAFETY: this fn's contract.
        unsafe {
            pack::<M>(
                src,
                j.rsa,
                j.csa,
                kc,
                mr.min(rows.end - i0),
                mr,
                dst.add(s * kc * mr),
            );
        }
    }
}

/// Packs rows `pc..pc + kc` of `B`'s columns `col..col + we` into a sliver
/// of `NR` columns (zero-padded), each row from `b` or, from `k_lo` on,
/// from `b_hi` ([`Job::k_lo`]): the same sliver as from one stacked `B`.
///
/// # Safety
/// As [`pack`]: the rows and columns inside `B` (both blocks), `dst` valid
/// for `kc·NR` writes.
#[inline(always)]
unsafe fn pack_b<M: Micro>(
    j: &Job<M::E>,
    pc: usize,
    kc: usize,
    col: usize,
    we: usize,
    dst: *mut M::E,
) {
    let nr = M::NR;
    // Rows of this panel in the first block.
    let lo = j.k_lo.clamp(pc, pc + kc) - pc;
    // SAFETY: this fn's contract; rows `pc..pc + lo` of the first block and
    // `pc + lo − k_lo..pc + kc − k_lo` of the second, into the sliver's rows
    // `0..lo` and `lo..kc`.
    unsafe {
        if lo > 0 {
            let src = j.b.wrapping_add(pc * j.rsb + col * j.csb);
            pack::<M>(src, j.csb, j.rsb, lo, we, nr, dst);
        }
        if lo < kc {
            let src = j
                .b_hi
                .wrapping_add((pc + lo - j.k_lo) * j.rsb + col * j.csb);
            pack::<M>(src, j.csb, j.rsb, kc - lo, we, nr, dst.add(lo * nr));
        }
    }
}

/// Runs `job` with micro-kernel `M` and the buffers `bufs`.
///
/// # Safety
/// Every `(i, l)` of `A`, `(l, j)` of `B` and
/// `(i, j)` of `C` lies inside its allocation, `C`'s elements are pairwise
/// distinct and alias neither `A` nor `B`; strides as in a checked view (a
/// stride times an index in range never overflows); the CPU as `M` requires;
/// `job.pack_a` as [`APack`] says (its buffer aliases none of A, B, C).
#[inline(always)]
pub(crate) unsafe fn run<M: Micro>(job: Job<M::E>, bufs: &mut Bufs<M::E>) {
    let mut j = job;
    if j.csc != 1 && j.rsc == 1 {
        assert!(
            matches!(j.pack_a, APack::Each) && j.k_lo >= j.k,
            "packed: a shared packed A or a stacked B needs a row-major C"
        );
        // Cᵀ = Bᵀ·Aᵀ: the same products, a row-major output.
        j = Job {
            m: j.n,
            n: j.m,
            a: j.b,
            rsa: j.csb,
            csa: j.rsb,
            b: j.a,
            rsb: j.csa,
            csb: j.rsa,
            rsc: j.csc,
            csc: 1,
            ..j
        };
    }
    let (m, k, n) = (j.m, j.k, j.n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (mr, nr) = (M::MR, M::NR);
    let panels = k.div_ceil(KC);
    let kc_max = k.div_ceil(panels);
    // Panel p of all of A packed ([`APack::From`]'s layout) starts here.
    let a_panel = m.next_multiple_of(mr) * kc_max;
    if let APack::Into(dst, (from, to)) = j.pack_a {
        assert!(mr <= MR_MAX, "packed: {mr}-row slivers exceed MR_MAX");
        let bound = |r: usize| if r >= m { m } else { r / mr * mr };
        let (from, to) = (bound(from), bound(to));
        // SAFETY: as the packing of A below (this fn's contract), rows
        // `from..to` (inside `0..m`, `from` a multiple of MR), into `dst`,
        // which holds `a_len(m, k)` ≥ panels·a_panel elements (`APack::Into`'s
        // contract, MR ≤ MR_MAX): panel p's sliver of rows from i starts at
        // p·a_panel + i·kc and ends at p·a_panel + (i + MR)·kc ≤ (p + 1)·a_panel.
        unsafe {
            for (p, pc) in (0..k).step_by(kc_max).enumerate() {
                let kc = kc_max.min(k - pc);
                if from < to {
                    pack_a::<M>(&j, pc, kc, from..to, dst.add(p * a_panel + from * kc));
                }
            }
        }
        return;
    }
    grow(&mut bufs.a, M::MC.min(m.next_multiple_of(mr)) * kc_max);
    grow(&mut bufs.b, M::NC.min(n.next_multiple_of(nr)) * kc_max);
    let save = panels > 1 && j.beta != M::E::zero();
    if save {
        grow(&mut bufs.c, m * n);
        for i in 0..m {
            for jj in 0..n {
                // SAFETY: (i, jj) is an element of C (this fn's contract).
                bufs.c[i * n + jj] = unsafe { *j.c.add(i * j.rsc + jj * j.csc) };
            }
        }
    }
    let (pa, pb, saved) = (bufs.a.as_mut_ptr(), bufs.b.as_mut_ptr(), bufs.c.as_ptr());
    let b_in_place = reads_b_in_place::<M>(&j);
    let direct = j.csc == 1;
    // The tile copies of a strided output, zeroed on first use only: two
    // 4 or 8 KiB arrays zeroed per call were ~1 % of mlp_grad's instructions
    // (callgrind, branch `bal`), and the MLP's outputs are all row-major.
    let mut copies = None;
    assert!(mr * nr <= TILE, "packed: a {mr} × {nr} tile exceeds {TILE}");
    // SAFETY: the packers read elements (i, l) of A with i < m, l < k and
    // (l, jj) of B with l < k, jj < n (this fn's contract), and write inside
    // the buffers grown above (⌈mc / MR⌉ slivers of kc·MR ≤ MC·kc_max, and
    // the same for B); a sliver of B read in place reads b_rows[j0 + l·rsb +
    // x] for l < kc, x < NR: element (pc + l, jc + j0 + x) of one of B's
    // blocks (unit column stride; jc + j0 + NR ≤ jc + nc ≤ n, since only
    // whole slivers are read in place), the rows' pointer moved to `b_hi` as
    // `pack_b` does; `APack::From` reads the slivers an `Into` call of the
    // same A and family wrote, at the offsets that call wrote them; the tiles
    // name elements of C inside the shape, of the saved copy (m·n) or of the
    // tile copies (rows·NR ≤ TILE).
    unsafe {
        for jc in (0..n).step_by(M::NC) {
            let nc = M::NC.min(n - jc);
            for (p, pc) in (0..k).step_by(kc_max).enumerate() {
                let kc = kc_max.min(k - pc);
                let (first, last) = (pc == 0, pc + kc == k);
                // Rows of this panel in B's first block ([`Job::k_lo`]): B is
                // read in place only from a panel inside one block.
                let lo = j.k_lo.clamp(pc, pc + kc) - pc;
                let in_place = b_in_place && (lo == kc || lo == 0);
                let b_rows = if lo == kc {
                    j.b.wrapping_add(pc * j.rsb + jc)
                } else if lo == 0 {
                    j.b_hi.wrapping_add((pc - j.k_lo) * j.rsb + jc)
                } else {
                    std::ptr::null() // packed: the panel straddles the blocks
                };
                // Columns j0 < full lie in whole slivers.
                let full = if in_place { nc / nr * nr } else { 0 };
                for (s, j0) in (0..nc).step_by(nr).enumerate() {
                    if j0 >= full {
                        pack_b::<M>(&j, pc, kc, jc + j0, nr.min(nc - j0), pb.add(s * kc * nr));
                    }
                }
                for ic in (0..m).step_by(M::MC) {
                    let mc = M::MC.min(m - ic);
                    let pa = match j.pack_a {
                        APack::From(src) => src.add(p * a_panel + ic * kc),
                        _ => {
                            pack_a::<M>(&j, pc, kc, ic..ic + mc, pa);
                            pa.cast_const()
                        }
                    };
                    for (sb, j0) in (0..nc).step_by(nr).enumerate() {
                        let (bs, rsb) = if j0 < full {
                            debug_assert!(
                                j0 + nr <= nc,
                                "packed: an edge sliver of B read in place"
                            );
                            (b_rows.wrapping_add(j0), j.rsb)
                        } else {
                            (pb.add(sb * kc * nr).cast_const(), nr)
                        };
                        for (sa, i0) in (0..mc).step_by(mr).enumerate() {
                            let (i, jj) = (ic + i0, jc + j0);
                            let (rows, cols) = (mr.min(mc - i0), nr.min(nc - j0));
                            let cp = j.c.wrapping_add(i * j.rsc + jj * j.csc);
                            let (src, srs) = if save {
                                (saved.add(i * n + jj), n)
                            } else {
                                (cp.cast_const(), j.rsc)
                            };
                            let mut t = Tile {
                                c: cp,
                                rs: j.rsc,
                                src,
                                srs,
                                rows,
                                cols,
                                first,
                                last,
                                alpha: j.alpha,
                                beta: j.beta,
                            };
                            let a_s = pa.add(sa * kc * mr);
                            if direct && cols == nr {
                                M::tile(kc, a_s, bs, rsb, &t);
                                continue;
                            }
                            // A strided output, or a tile of fewer than NR
                            // columns (the right edge): through a dense tile
                            // copy of all NR columns, so that the kernel runs
                            // its full-width form. The columns past `cols`
                            // sum B's zero padding and are not copied back.
                            // (The partial-width form kept its accumulators
                            // on the stack, stored at every step of the sum:
                            // the MLP's 10-column products ran at 11 GFLOP/s
                            // on a Zen 3 core, against 23-28 for
                            // matrixmultiply; `examples/gemm_vs_mm.rs`.)
                            let (tc, ts): &mut TileCopies<M::E> = copies.get_or_insert_with(|| {
                                ([M::E::zero(); TILE], [M::E::zero(); TILE])
                            });
                            let read_src = last && j.beta != M::E::zero();
                            for r in 0..rows {
                                for x in 0..cols {
                                    let e = cp.wrapping_add(r * j.rsc + x * j.csc);
                                    if !first {
                                        tc[r * nr + x] = *e;
                                    }
                                    if read_src {
                                        ts[r * nr + x] =
                                            if save { *src.add(r * n + x) } else { *e };
                                    }
                                }
                            }
                            (t.c, t.rs, t.src, t.srs) = (tc.as_mut_ptr(), nr, ts.as_ptr(), nr);
                            t.cols = nr;
                            M::tile(kc, a_s, bs, rsb, &t);
                            for r in 0..rows {
                                for x in 0..cols {
                                    *cp.wrapping_add(r * j.rsc + x * j.csc) = tc[r * nr + x];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `C ← α·A·B + β·C` under `family` (see the module docs), with the buffers
/// `bufs`.
///
/// # Safety
/// As [`run`] (the CPU check is done here).
pub(crate) unsafe fn gemm<F: Prim>(family: super::Family, job: Job<F>, bufs: &mut Bufs<F>) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::family::{has_avx2_fma, has_avx512};
        use super::Family;
        if family >= Family::Avx512 && has_avx512() {
            // SAFETY: AVX-512F detected on the line above; the job as this
            // fn's contract.
            return unsafe { super::avx512::large(job, bufs) };
        }
        if family >= Family::Avx2 && has_avx2_fma() {
            // SAFETY: AVX2 and FMA detected on the line above; the job as
            // this fn's contract.
            return unsafe { super::avx2::large(job, bufs) };
        }
    }
    let _ = family;
    // SAFETY: this fn's contract; no CPU feature needed.
    unsafe { super::grid::large(job, bufs) }
}

/// The register transposes of one instruction set (`simd::transpose_tiles`
/// with its tiles).
#[cfg(target_arch = "x86_64")]
pub(crate) trait Transpose {
    /// Runs `t`, 4-byte lanes.
    ///
    /// # Safety
    /// As [`Micro::transpose`].
    unsafe fn t32(t: Transposition<f32>);
    /// Runs `t`, 8-byte lanes.
    ///
    /// # Safety
    /// As [`Micro::transpose`].
    unsafe fn t64(t: Transposition<f64>);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use simd_micro::Simd;

/// Defines, inside an instruction set's module (which has `transpose_32`,
/// `transpose_64` and the `Lane::$vec` vectors), the large products' entry
/// `large` compiled with `#[target_feature(enable = $features)]` around
/// [`run`] with [`Simd`] tiles of `$mr` rows by two vectors, and `Tiles`,
/// its [`Transpose`] for the packers.
#[cfg(target_arch = "x86_64")]
macro_rules! packed_entry {
    ($(#[$doc:meta])* features $features:literal, vec $vec:ident, mr $mr:literal) => {
        /// The register transposes for the large products' packers.
        pub(crate) struct Tiles;

        impl $crate::kernels::packed::Transpose for Tiles {
            #[inline(always)]
            unsafe fn t32(t: $crate::kernels::packed::Transposition<f32>) {
                // SAFETY: the caller's contract (`Transpose::t32`: the CPU has
                // this instruction set, the buffers as it says).
                unsafe { transpose_32(t) }
            }
            #[inline(always)]
            unsafe fn t64(t: $crate::kernels::packed::Transposition<f64>) {
                // SAFETY: as in `t32`.
                unsafe { transpose_64(t) }
            }
        }

        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the instruction set, and the job is as
        /// `packed::run` requires.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn large<E: $crate::kernels::simd::Lane>(
            job: $crate::kernels::packed::Job<E>,
            bufs: &mut $crate::kernels::packed::Bufs<E>,
        ) {
            // SAFETY: this fn's contract.
            unsafe {
                $crate::kernels::packed::run::<
                    $crate::kernels::packed::Simd<E::$vec, Tiles, $mr, 2>,
                >(job, bufs)
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use packed_entry;

#[cfg(target_arch = "x86_64")]
mod simd_micro {
    use super::{Micro, Tile, Transpose, Transposition};
    use crate::kernels::simd::Vectors;
    use crate::real::Real;
    use std::marker::PhantomData;

    /// The vector micro-kernel: `MR` rows by `NV` vectors of `V` in
    /// registers, each step a fused multiply-add ([`Vectors::fma`]); `X`
    /// transposes strided slivers while packing.
    pub(crate) struct Simd<V, X, const MR: usize, const NV: usize>(PhantomData<(V, X)>);

    impl<V: Vectors, X: Transpose, const MR: usize, const NV: usize> Micro for Simd<V, X, MR, NV> {
        type E = V::E;
        const MR: usize = MR;
        const NR: usize = NV * V::N;
        const MC: usize = 16 * MR;
        /// 2 KiB per row of a panel: 512 `f32` or 256 `f64` columns (a
        /// multiple of `NR`), a `B` panel of at most 512 KiB (half of a Zen 5
        /// core's L2).
        const NC: usize = 2048 / std::mem::size_of::<V::E>();
        const B_IN_PLACE: bool = true;

        #[inline(always)]
        unsafe fn transpose(t: Transposition<V::E>) -> bool {
            // SAFETY: the caller's contract (`Micro::transpose`); only bits move,
            // and E is f32 or f64 by its size.
            unsafe {
                match std::mem::size_of::<V::E>() {
                    4 => X::t32(t.cast()),
                    8 => X::t64(t.cast()),
                    _ => return false,
                }
            }
            true
        }

        #[inline(always)]
        unsafe fn tile(kc: usize, a: *const V::E, b: *const V::E, rsb: usize, t: &Tile<V::E>) {
            debug_assert_eq!(t.cols, NV * V::N, "packed: a partial-width tile");
            // SAFETY: the caller's contract (`Micro::tile`), passed on.
            unsafe { tile::<V, MR, NV>(kc, a, b, rsb, t) }
        }
    }

    /// [`Micro::tile`] for [`Simd`]: all `NV·N` columns, so the tile's rows
    /// of `C` are read and written by whole vectors. (A tile of fewer
    /// columns has no form of its own: `run` computes it in full into a
    /// dense copy. The masked form this replaced kept its accumulators on
    /// the stack and stored them at every step of the sum, and masked
    /// stores are microcoded on AMD's Zen cores.)
    ///
    /// # Safety
    /// As [`Micro::tile`] (`t.cols` is `NV·N`).
    #[inline(always)]
    unsafe fn tile<V: Vectors, const MR: usize, const NV: usize>(
        kc: usize,
        a: *const V::E,
        b: *const V::E,
        rsb: usize,
        t: &Tile<V::E>,
    ) {
        // SAFETY: the caller's contract (`Micro::tile`): the CPU has V's
        // instruction set; rows r < t.rows ≤ MR of `t.c` and `t.src`, all
        // NV·N columns of each (addresses by `wrapping_add`); kc·MR
        // elements of `a`, and of `b` the NR = NV·N elements from l·rsb for
        // each l < kc.
        unsafe {
            let mut acc = [[V::zero(); NV]; MR];
            if !t.first {
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    if r < t.rows {
                        let row = t.c.wrapping_add(r * t.rs);
                        for (v, acc_rv) in acc_r.iter_mut().enumerate() {
                            *acc_rv = V::load(row.wrapping_add(v * V::N));
                        }
                    }
                }
            }
            let (mut pa, mut pb) = (a, b);
            for _ in 0..kc {
                let bv: [V::V; NV] = std::array::from_fn(|v| V::load(pb.add(v * V::N)));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = V::splat(*pa.add(r));
                    for v in 0..NV {
                        acc_r[v] = V::fma(acc_r[v], x, bv[v]);
                    }
                }
                pa = pa.add(MR);
                pb = pb.wrapping_add(rsb);
            }
            let (va, vb) = (V::splat(t.alpha), V::splat(t.beta));
            let beta_zero = t.beta == V::E::zero();
            for (r, acc_r) in acc.iter().enumerate() {
                if r >= t.rows {
                    break;
                }
                let row = t.c.wrapping_add(r * t.rs);
                let srow = t.src.wrapping_add(r * t.srs);
                for (v, &acc_rv) in acc_r.iter().enumerate() {
                    let mut out = acc_rv;
                    if t.last {
                        out = V::mul(va, out);
                        if !beta_zero {
                            let c = V::load(srow.wrapping_add(v * V::N));
                            out = V::add(out, V::mul(vb, c));
                        }
                    }
                    row.wrapping_add(v * V::N)
                        .cast::<V::V>()
                        .write_unaligned(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::{large, with_family, Family, MatMut, MatRef, Product};

    /// Deterministic entries in (−0.5, 0.5) (a linear-congruential sequence).
    fn filled(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// `pack` of a strided sliver (`sl = 1`, `sx ≠ 1`: a row-major `A`, a
    /// column-major `B`) gives the scalar definition's bits,
    /// `dst[l·w + x] = src[x·sx + l]` for `x < we` and `+0` for `we ≤ x < w`,
    /// for edge slivers (`we = 1..w`, and full ones) of `A` (`w = MR`) and `B`
    /// (`w = NR`), `kc` below, at and above the transposes' tiles (4, 8, 16
    /// lanes), for every kernel this CPU has, `f32` and `f64`. The destination
    /// starts NaN, so padding left unwritten shows.
    #[test]
    fn strided_edge_slivers_pack_as_the_scalar_definition() {
        use super::{pack, Micro};
        use crate::real::Real;
        fn check<M: Micro>() {
            for w in [M::MR, M::NR] {
                for we in 1..=w {
                    for kc in [1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 33, 40] {
                        let sx = kc + 3; // a padded row: 3 elements skipped
                        let src: Vec<M::E> = (0..we * sx)
                            .map(|i| M::E::from_f64(i as f64 + 0.25))
                            .collect();
                        let mut dst = vec![M::E::from_f64(f64::NAN); kc * w];
                        // SAFETY: src[x·sx + l] for l < kc, x < we is below
                        // we·sx; dst has kc·w slots; the caller checked the CPU.
                        unsafe { pack::<M>(src.as_ptr(), sx, 1, kc, we, w, dst.as_mut_ptr()) };
                        let want = (0..kc * w).map(|i| {
                            let (l, x) = (i / w, i % w);
                            if x < we {
                                src[x * sx + l]
                            } else {
                                M::E::zero()
                            }
                        });
                        let bits = |v: M::E| v.to_f64().to_bits();
                        assert!(
                            dst.iter().zip(want).all(|(&d, v)| bits(d) == bits(v)),
                            "MR {} NR {}: w {w} we {we} kc {kc}: {dst:?}",
                            M::MR,
                            M::NR
                        );
                    }
                }
            }
        }
        use crate::kernels::grid::{Grid, GRID_32, GRID_64};
        check::<Grid<f32, { GRID_32.0 }, { GRID_32.1 }>>();
        check::<Grid<f64, { GRID_64.0 }, { GRID_64.1 }>>();
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::family::{has_avx2_fma, has_avx512};
            use crate::kernels::packed::Simd;
            use crate::kernels::{avx2, avx512};
            if has_avx2_fma() {
                check::<Simd<avx2::F32x8, avx2::Tiles, 6, 2>>();
                check::<Simd<avx2::F64x4, avx2::Tiles, 6, 2>>();
            }
            if has_avx512() {
                check::<Simd<avx512::F32x16, avx512::Tiles, 8, 2>>();
                check::<Simd<avx512::F64x8, avx512::Tiles, 8, 2>>();
            }
        }
    }

    /// `B` read as two blocks (`large::real_stacked`, `packed::pack_b`)
    /// gives the bits of the same `B` stacked in one buffer, for every
    /// family: blocks that split a panel of the sum's index (`k_lo` inside
    /// one of `⌈k / KC⌉` panels, or on a panel's edge), both layouts of `B`
    /// (row-major blocks, and column-major ones: the transposed planes of a
    /// weight), β = 0 and β = 1, and a product large enough to be cut over
    /// two threads.
    #[test]
    fn a_stacked_right_operand_gives_the_bits_of_one_buffer() {
        for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
            for (m, k, k_lo, n) in [
                (7, 20, 10, 9),
                (33, 300, 100, 40),
                (64, 512, 256, 256),
                (16, 600, 450, 70),
                (5, 40, 1, 3),
            ] {
                for (rows, beta) in [(true, 0.0), (false, 0.0), (true, 1.0), (false, 1.0)] {
                    let (a, c0) = (filled(m * k, 1), filled(m * n, 2));
                    // B stacked in one buffer: k × n row-major, or
                    // column-major with columns of k (a weight's transpose).
                    let b = filled(k * n, 3);
                    let (rs, cs) = if rows { (n, 1) } else { (1, k) };
                    // Each block in a buffer of its own with the stacked
                    // buffer's strides, the rest NaN (a read outside the
                    // block would show).
                    let block = |from: usize, r: usize| -> Vec<f32> {
                        let mut x = vec![f32::NAN; k * n];
                        for l in 0..r {
                            for j in 0..n {
                                x[l * rs + j * cs] = b[(from + l) * rs + j * cs];
                            }
                        }
                        x
                    };
                    let (lo, hi) = (block(0, k_lo), block(k_lo, k - k_lo));
                    let (mut c1, mut c2) = (c0.clone(), c0.clone());
                    with_family(family, || {
                        let am = MatRef::row_major(&a, m, k);
                        let bm = MatRef::new(&b, k, n, rs, cs);
                        let c = MatMut::row_major(&mut c1, m, n);
                        large::real(Product::new(1.0, am, bm, beta, c));
                        let (lo, hi) = (
                            MatRef::new(&lo, k_lo, n, rs, cs),
                            MatRef::new(&hi, k - k_lo, n, rs, cs),
                        );
                        let c = MatMut::row_major(&mut c2, m, n);
                        large::real_stacked(1.0, am, [lo, hi], beta, c);
                    });
                    for (i, (x, y)) in c1.iter().zip(&c2).enumerate() {
                        assert_eq!(
                            x.to_bits(),
                            y.to_bits(),
                            "{family:?} [{m}, {k}]·[{k_lo} + {}, {n}] rows {rows} β {beta}: \
                             element {i}: {x} vs {y}",
                            k - k_lo
                        );
                    }
                }
            }
        }
    }

    /// The blocks must share their strides and fill `A`'s columns.
    #[test]
    #[should_panic(expected = "real_stacked: lhs [2, 5], rhs [2, 3] ; [2, 3]")]
    fn stacked_blocks_of_the_wrong_height_panic_with_shapes() {
        let (a, b) = (vec![0.0_f32; 10], vec![0.0_f32; 6]);
        let mut c = vec![0.0_f32; 6];
        let bm = MatRef::row_major(&b, 2, 3);
        large::real_stacked(
            1.0,
            MatRef::row_major(&a, 2, 5),
            [bm, bm],
            0.0,
            MatMut::row_major(&mut c, 2, 3),
        );
    }

    /// Held by the tests that set or read [`super::pack_b_always`]'s switch,
    /// which is process-wide. (The other tests get the same bits either way.)
    static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// `B` read in place gives the bits of `B` packed, for every family this
    /// CPU has, `f32` and `f64`: a row of `C` (m = 1) up to
    /// [`super::IN_PLACE_ROWS`] rows, slivers of the right edge (n not a
    /// multiple of any `NR`) beside full ones, more than one block of columns
    /// (n > `NC`) and more than one panel of the sum's index (k > `KC`, where
    /// β ≠ 0 reads a saved copy of `C`), products cut over two threads, and
    /// `B`'s rows inside a wider buffer whose other elements are NaN (a read
    /// past a sliver's columns or at the wrong row shows). The rule itself is
    /// checked below.
    #[test]
    fn b_read_in_place_gives_the_bits_of_b_packed() {
        use crate::kernels::Prim;
        fn check<F: Prim>(family: Family) {
            let _held = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
            let shapes = [
                (1, 5, 16),
                (7, 20, 37),
                (16, 40, 1100),
                (64, 300, 300),
                (100, 600, 70),
                (128, 256, 48),
                (64, 784, 300),
            ];
            for (m, k, n) in shapes {
                for beta in [0.0, 1.0] {
                    let from = |v: Vec<f32>| -> Vec<F> {
                        v.into_iter().map(|x| F::from_f64(x as f64)).collect()
                    };
                    let (a, c0) = (from(filled(m * k, 4)), from(filled(m * n, 5)));
                    // Row l of B at l·rs, rs = n + 3: 3 NaN between rows.
                    let rs = n + 3;
                    let mut b = vec![F::from_f64(f64::NAN); k * rs];
                    for (i, x) in filled(k * n, 6).into_iter().enumerate() {
                        b[i / n * rs + i % n] = F::from_f64(x as f64);
                    }
                    let mut out = [c0.clone(), c0.clone()];
                    for (packed, c) in out.iter_mut().enumerate() {
                        super::pack_b_always(packed == 1);
                        with_family(family, || {
                            large::real(Product::new(
                                F::from_f64(0.75),
                                MatRef::row_major(&a, m, k),
                                MatRef::new(&b, k, n, rs, 1),
                                F::from_f64(beta),
                                MatMut::row_major(c, m, n),
                            ))
                        });
                    }
                    super::pack_b_always(false);
                    for (i, (x, y)) in out[0].iter().zip(&out[1]).enumerate() {
                        assert_eq!(
                            x.to_f64().to_bits(),
                            y.to_f64().to_bits(),
                            "{family:?} f{} [{m}, {k}]·[{k}, {n}] β {beta}: element {i}: \
                             in place {x:?}, packed {y:?}",
                            8 * std::mem::size_of::<F>()
                        );
                    }
                }
            }
        }
        for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
            check::<f32>(family);
            check::<f64>(family);
        }
    }

    /// [`super::reads_b_in_place`]: the vector kernels read a row-major `B`
    /// in place for up to [`super::IN_PLACE_ROWS`] rows, with a row stride
    /// that is not a multiple of [`super::CONFLICT_STRIDE`] bytes and a `B`
    /// of at most [`super::IN_PLACE_BYTES`]; never a column-major `B`, never
    /// under the portable grid, never while [`super::pack_b_always`] is on.
    #[test]
    fn b_is_read_in_place_only_for_few_rows_and_a_safe_stride() {
        use super::{reads_b_in_place, APack, Job, Micro};
        fn job<E: crate::real::Real>(
            m: usize,
            k: usize,
            n: usize,
            rsb: usize,
            csb: usize,
        ) -> Job<E> {
            Job {
                m,
                k,
                n,
                alpha: E::one(),
                a: std::ptr::null(),
                rsa: k,
                csa: 1,
                b: std::ptr::null(),
                rsb,
                csb,
                k_lo: k,
                b_hi: std::ptr::null(),
                beta: E::zero(),
                c: std::ptr::null_mut(),
                rsc: n,
                csc: 1,
                pack_a: APack::Each,
            }
        }
        fn check<M: Micro<E = f32>, D: Micro<E = f64>>(vector: bool) {
            let cases = [
                // (m, k, n, rsb, csb, read in place by a vector kernel)
                (64, 784, 256, 256, 1, true),
                (128, 256, 300, 300, 1, true),
                (129, 256, 300, 300, 1, false),
                (64, 256, 512, 512, 1, false),   // 2 KiB apart
                (64, 256, 1024, 1024, 1, false), // 4 KiB apart
                (64, 256, 500, 520, 1, true),    // a wider buffer
                (64, 256, 300, 1, 256, false),   // column-major
                (64, 4096, 256, 256, 1, true),   // B of exactly 4 MiB
                (64, 4097, 256, 256, 1, false),
            ];
            for (m, k, n, rsb, csb, want) in cases {
                let got = reads_b_in_place::<M>(&job(m, k, n, rsb, csb));
                assert_eq!(
                    got,
                    want && vector,
                    "f32 [{m}, {k}]·[{k}, {n}] rsb {rsb} csb {csb}"
                );
            }
            // f64: 256 columns are 2 KiB apart.
            assert!(!reads_b_in_place::<D>(&job(64, 256, 256, 256, 1)));
            assert_eq!(reads_b_in_place::<D>(&job(64, 256, 200, 200, 1)), vector);
            super::pack_b_always(true);
            let off = reads_b_in_place::<M>(&job(64, 784, 256, 256, 1));
            super::pack_b_always(false);
            assert!(!off, "pack_b_always(true) must pack every B");
        }
        let _held = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        use crate::kernels::grid::{Grid, GRID_32, GRID_64};
        check::<Grid<f32, { GRID_32.0 }, { GRID_32.1 }>, Grid<f64, { GRID_64.0 }, { GRID_64.1 }>>(
            false,
        );
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::packed::Simd;
            use crate::kernels::{avx2, avx512};
            check::<Simd<avx2::F32x8, avx2::Tiles, 6, 2>, Simd<avx2::F64x4, avx2::Tiles, 6, 2>>(
                true,
            );
            check::<
                Simd<avx512::F32x16, avx512::Tiles, 8, 2>,
                Simd<avx512::F64x8, avx512::Tiles, 8, 2>,
            >(true);
        }
    }
}
