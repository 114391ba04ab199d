//! Large real products: the thread split, and the call into the packed
//! kernels (`packed.rs`) of the active family.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{packed, pair, Family, MatRef, Prim, Product};

/// Products below this many multiply-adds run as one call: splitting them
/// costs more (a hand-off to the second thread, a second packing of the
/// shared operand) than it saves. 2^22 cuts every product of the MLP
/// benchmark (784-256-256-10, batch 64) but the last layer's: 4.2 M to
/// 25.7 M multiply-adds, ≥ 15 µs a chunk on one AVX-512 core against a
/// hand-off of a few µs (`examples/gemm_split.rs`, `docs/benchmarks.md`
/// "split"). Earlier tries with rayon (2^21, 2^23: "HVP on planes", "mlphvp")
/// lost under load (the caller slept while two workers were woken, and a
/// half waited for a descheduled worker) and allocated in steady state.
pub(crate) const SPLIT_MACS: usize = 1 << 22;
/// At most this many chunks per product (each packs the shared operand once),
/// taken in turn by the caller and the second thread of [`pair::share`]:
/// more than two, so that a thread the system has not scheduled holds up at
/// most one chunk.
const MAX_CHUNKS: usize = 4;
/// Every chunk but the last starts and ends on a multiple of this many rows
/// (or columns) of `C`, and spans at least this many: a multiple of the
/// AVX-512 register tiles (8 × 32 `f32`, 8 × 16 `f64`, `packed.rs`), so that
/// their tiles start at the same offsets as in one uncut call and no chunk
/// but the last adds edge tiles. (The bits do not depend on it: an element's
/// value does not depend on its place in a tile.)
const ALIGN: usize = 32;

/// The `i`-th of `chunks` ranges cutting `0..dim`: chunk `i` starts at
/// `⌊i·dim / chunks⌋` rounded down to a multiple of [`ALIGN`], the last ends
/// at `dim`. Each start is within `ALIGN` below `i·dim / chunks`, so the
/// chunks differ by less than `2·ALIGN` (those but the last, multiples of
/// `ALIGN`, by at most `ALIGN`): 784 rows in four are 192, 192, 192 and 208,
/// and two threads taking them in turn do 384 and 400, where
/// ⌈784 / 4⌉ rounded up (224, 224, 224, 112) gave one of them 448. A
/// function of the shape only.
fn chunk_range(i: usize, chunks: usize, dim: usize) -> Range<usize> {
    let start = |i: usize| {
        if i >= chunks {
            dim
        } else {
            (i * dim / chunks) / ALIGN * ALIGN
        }
    };
    start(i)..start(i + 1)
}

/// How a product is cut: `(chunks, along_rows)`, from its shape alone. The
/// larger of `C`'s two dimensions is cut into `chunks` equal parts (the last
/// one shorter, each a multiple of [`ALIGN`]), at most [`MAX_CHUNKS`], each
/// with at least [`SPLIT_MACS`]/2 multiply-adds; a power of two.
pub(crate) fn chunking(m: usize, k: usize, n: usize) -> (usize, bool) {
    let macs = m.saturating_mul(k).saturating_mul(n);
    let along_rows = m >= n;
    let dim = if along_rows { m } else { n };
    let mut chunks = 1;
    while chunks < MAX_CHUNKS
        && macs / (2 * chunks) >= SPLIT_MACS / 2
        && dim / (2 * chunks) >= ALIGN
    {
        chunks *= 2;
    }
    (chunks, along_rows)
}

/// `C ← α·A·B + β·C` by the packed kernels of the active family
/// ([`super::active`], read once per call on the calling thread, so every
/// chunk runs the same family), any strides.
///
/// # Threads
/// A large product called from outside rayon's workers, with a pool of two
/// threads or more, is cut in chunks of `C`'s rows or columns ([`chunking`],
/// a function of the shape only), which the calling thread and the second
/// thread of [`pair::share`] take in turn (all of them the caller, if that
/// thread is not scheduled). Inside a worker (the caller already runs tasks
/// in parallel, e.g. a meta-batch) it is one call on that worker, so the two
/// kinds of threads do not compete for the cores. Each element of `C` is the
/// same sequence of operations (`packed.rs`: one accumulator from zero over
/// all of k) however `C` is cut, so the bits do not depend on the chunks, the
/// thread count nor which thread ran a chunk (`tests/kernel_families.rs`,
/// `large_products_give_the_same_bits_for_any_split`,
/// `the_mlp_products_give_the_same_bits_cut_in_two`). The packing buffers are
/// the calling thread's (`Prim::with_pack`): one set for its own chunks, one
/// for the second thread's, so they grow with the sequence of shapes only.
pub(crate) fn real<F: Prim>(p: Product<'_, F>) {
    let Product {
        alpha,
        a,
        b,
        beta,
        c,
    } = p;
    stacked(alpha, a, [b, b], a.cols, (b.cols, b), beta, c);
}

/// [`real`] with `B` (`k × n`) given as two blocks stacked along the sum's
/// index, `B = [B_lo ; B_hi]` (`B_lo` `k_lo × n`, `B_hi` `(k − k_lo) × n`,
/// the same strides), each read where it is: the same chunks, products and
/// bits as [`real`] on the stacked `B`. `C` row-major (unit column stride).
///
/// # Panics
/// If the shapes or the blocks' strides disagree (the message has them).
#[track_caller]
pub(crate) fn real_stacked<F: Prim>(
    alpha: F,
    a: MatRef<'_, F>,
    [lo, hi]: [MatRef<'_, F>; 2],
    beta: F,
    c: super::MatMut<'_, F>,
) {
    check_blocks(false, &a, [&lo, &hi], &c);
    stacked(alpha, a, [lo, hi], lo.rows, (lo.cols, lo), beta, c);
}

/// [`real`] with `B` (`k × n`) given as two blocks side by side,
/// `B = [B_l | B_r]` (`B_l` `k × n_l`, `B_r` `k × (n − n_l)`, the same
/// strides), each read where it is: `C ← α·A·B + β·C`, the same chunks as
/// [`real`] on the joined `B` (a chunk across `n_l` runs as two packed
/// products, one per block) and the same bits (an element's value does not
/// depend on its column's place, `packed.rs`). So `A` is packed once and
/// handed off once for both blocks: `x·[W.v | W.d]`. `C` row-major.
///
/// # Panics
/// If the shapes or the blocks' strides disagree (the message has them).
#[track_caller]
pub(crate) fn real_side_by_side<F: Prim>(
    alpha: F,
    a: MatRef<'_, F>,
    [l, r]: [MatRef<'_, F>; 2],
    beta: F,
    c: super::MatMut<'_, F>,
) {
    check_blocks(true, &a, [&l, &r], &c);
    stacked(alpha, a, [l, l], a.cols, (l.cols, r), beta, c);
}

/// Panics, with the shapes and at the caller's line, unless `C` (row-major)
/// can be `A·B` for `B` given as the blocks `[x, y]` with the same strides:
/// side by side (`B = [x | y]`, `real_side_by_side`) or stacked along the
/// sum's index (`B = [x ; y]`, `real_stacked`).
#[track_caller]
fn check_blocks<F>(
    side_by_side: bool,
    a: &MatRef<'_, F>,
    [x, y]: [&MatRef<'_, F>; 2],
    c: &super::MatMut<'_, F>,
) {
    let (what, sep, k, n, fits) = if side_by_side {
        (
            "real_side_by_side",
            '|',
            x.rows,
            x.cols + y.cols,
            x.rows == y.rows,
        )
    } else {
        (
            "real_stacked",
            ';',
            x.rows + y.rows,
            x.cols,
            x.cols == y.cols,
        )
    };
    assert!(
        a.cols == k
            && fits
            && (x.rs, x.cs) == (y.rs, y.cs)
            && (c.rows, c.cols) == (a.rows, n)
            && c.cs == 1,
        "{what}: lhs [{}, {}], rhs [{}, {}] {sep} [{}, {}] (strides {:?}, {:?}), output [{}, {}] (column stride {})",
        a.rows,
        a.cols,
        x.rows,
        x.cols,
        y.rows,
        y.cols,
        (x.rs, x.cs),
        (y.rs, y.cs),
        c.rows,
        c.cols,
        c.cs
    );
}

/// [`real`] on `B = [lo ; hi]`, `k_lo` rows of it in `lo` (`k_lo ≥ k`:
/// all of `B` in `lo`), and columns from `n_lo` on from `right` (`n_lo ≥
/// n`: none; with `n_lo < n`, `k_lo ≥ k`); shapes checked by the callers.
fn stacked<F: Prim>(
    alpha: F,
    a: MatRef<'_, F>,
    [b, b_hi]: [MatRef<'_, F>; 2],
    k_lo: usize,
    (n_lo, right): (usize, MatRef<'_, F>),
    beta: F,
    c: super::MatMut<'_, F>,
) {
    let (m, k, n) = (a.rows, a.cols, c.cols);
    if m == 0 || n == 0 {
        return;
    }
    let whole = Parts {
        // Read once here: the halves below may run on another thread, whose
        // `with_family` scope is not this one's.
        family: super::active(),
        alpha,
        a,
        b,
        k_lo,
        b_hi,
        n_lo,
        right,
        beta,
        // C's elements are reached through this pointer only, derived from
        // the `&mut` borrow, which lives until the end of this function.
        c: c.data.as_mut_ptr(),
        rsc: c.rs,
        csc: c.cs,
        pack_a: packed::APack::Each,
        shared_a: std::ptr::null_mut(),
    };
    let (chunks, along_rows) = chunking(m, k, n);
    F::with_pack(|[first, second]| {
        if chunks == 1 || !pair::may_cut() {
            return whole.part(0..m, 0..n, first);
        }
        let dim = if along_rows { m } else { n };
        // Chunks of C's columns all read all of A: packed once for all of
        // them (a row-major C: `packed::run` keeps A as A), by both threads,
        // [`PACKS`] parts of A's rows, before any chunk computes.
        let mut shared = None;
        let mut whole = whole;
        let packs = if !along_rows && whole.csc == 1 {
            let shared = shared.insert(first.take_shared_a(packed::a_len(m, k)));
            whole.shared_a = shared.as_mut_ptr();
            whole.pack_a = packed::APack::From(whole.shared_a.cast_const());
            PACKS
        } else {
            0
        };
        let packed = AtomicUsize::new(0);
        // One set of buffers per thread role, whichever thread that is.
        let bufs = [Mutex::new(&mut *first), Mutex::new(&mut *second)];
        pair::share(packs + chunks, &|i: usize, there: bool| {
            let mut b = bufs[usize::from(there)]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if i < packs {
                // Counted when done, also if it panics: no thread waits for
                // a part that will not come.
                let _done = Counted(&packed);
                let rows = (i * m / packs, (i + 1) * m / packs);
                let into = packed::APack::Into(whole.shared_a, rows);
                return Parts {
                    pack_a: into,
                    ..whole
                }
                .part(0..m, 0..n, &mut b);
            }
            // The parts are taken before any chunk (`share` hands out chunks
            // in order), so this waits at most for the other thread's part.
            wait_for(&packed, packs);
            let r = chunk_range(i - packs, chunks, dim);
            if along_rows {
                whole.part(r, 0..n, &mut b);
            } else {
                whole.part(0..m, r, &mut b);
            }
        });
        // The second thread may first run a chunk of some shape in a later
        // call than this thread (a busy machine): its set is kept as large
        // as this thread's, so it grows in the calls this one grows in.
        second.cover(first);
        if let Some(v) = shared {
            first.put_shared_a(v);
        }
    })
}

/// The parts of `A`'s rows packed, one by each thread, for a product cut
/// along `C`'s columns: all of `A` packed once (not once per chunk, branch
/// `gradcut`) and not by the caller alone while the second thread waits
/// (~16 µs of x·W1's ~200 µs on AVX2, branch `bal`). Each part is rounded to
/// the family's sliver height (`packed::APack::Into`).
const PACKS: usize = 2;

/// Adds one to its counter when dropped (a part of `A` packed).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Spins until `count` reaches `target` (the other thread's part of `A`
/// packed: its writes are seen), yielding the core every 64 spins in case
/// that thread waits for it.
fn wait_for(count: &AtomicUsize, target: usize) {
    let mut spins = 0_u32;
    while count.load(Ordering::Acquire) < target {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A product, shared by the threads that compute its parts: the family,
/// `α`, `A`, `B`, `β`, and `C`'s first element and strides (a checked
/// [`super::MatMut`]'s).
#[derive(Clone, Copy)]
struct Parts<'a, F> {
    family: Family,
    alpha: F,
    a: MatRef<'a, F>,
    b: MatRef<'a, F>,
    /// Rows from `k_lo` on of `B` are `b_hi`'s (`packed::Job::k_lo`).
    k_lo: usize,
    b_hi: MatRef<'a, F>,
    /// Columns from `n_lo` on of `B` are `right`'s, column `j` at `j − n_lo`
    /// (`real_side_by_side`; then `k_lo ≥ k`).
    n_lo: usize,
    right: MatRef<'a, F>,
    beta: F,
    c: *mut F,
    rsc: usize,
    csc: usize,
    /// Where the parts get `A`'s packed slivers: a column cut's parts read
    /// one packing of all of `A` (`real`).
    pack_a: packed::APack<F>,
    /// That packing of all of `A` (`packed::APack::Into`; null if none).
    shared_a: *mut F,
}

// SAFETY: the parts `real` computes at once write pairwise disjoint elements
// through `c` (their ranges partition C's rows or columns, and `MatMut::new`
// checked that C's elements are distinct), and `pair::share` returns (or
// unwinds) only after both have ended, inside `real`, while the `&mut` borrow
// `c` comes from is alive. A shared packed A (`shared_a`, `pack_a`) is
// written by the packing parts, each its own rows' slivers (disjoint: the
// bounds `(i·m/PACKS, (i + 1)·m/PACKS)` rounded the same way), and read by
// the chunks only after every part has ended (`Counted`, `wait_for`:
// release/acquire); it lives in `real` until after `pair::share`. The rest
// is shared references and plain values.
unsafe impl<F: Sync> Sync for Parts<'_, F> {}

impl<F: Prim> Parts<'_, F> {
    /// Rows `rows` × columns `cols` of `C ← α·A·B + β·C`: one packed product
    /// ([`packed::gemm`]) on the sub-blocks of A (those rows), B (those
    /// columns) and C, with the buffers `bufs`.
    fn part(&self, rows: Range<usize>, cols: Range<usize>, bufs: &mut packed::Bufs<F>) {
        let only_a = matches!(self.pack_a, packed::APack::Into(..));
        if cols.start < self.n_lo && self.n_lo < cols.end && !only_a {
            // Across the two blocks of `real_side_by_side`: one product each.
            self.part(rows.clone(), cols.start..self.n_lo, bufs);
            return self.part(rows, self.n_lo..cols.end, bufs);
        }
        // The block these columns are in, and the first one's index there.
        let a = self.a;
        let (b, j0) = match cols.start.checked_sub(self.n_lo) {
            Some(j0) if !only_a => (self.right, j0),
            _ => (self.b, cols.start),
        };
        let (m, k, n) = (rows.len(), a.cols, cols.len());
        if m == 0 || n == 0 {
            return;
        }
        let a0 = a.data.as_ptr().wrapping_add(rows.start * a.rs);
        let b0 = b.data.as_ptr().wrapping_add(j0 * b.cs);
        let c0 = self
            .c
            .wrapping_add(rows.start * self.rsc + cols.start * self.csc);
        // SAFETY: `MatRef::new`/`MatMut::new` checked that every element
        // (i, l) of A, (l, j) of B and (i, j) of C lies inside its slice, and
        // `MatMut::new` that C's elements are pairwise distinct;
        // `Product::new` checked that the shapes are m × k, k × n, m × n
        // (`real_stacked`: m × k, k_lo × n and (k − k_lo) × n with equal
        // strides, m × n, so the rows from k_lo on read from `b_hi` at
        // l − k_lo are inside its slice), and `real` passes `rows`/`cols`
        // inside them, so the sub-blocks' offsets and elements are inside
        // the slices too (`real_side_by_side`: k × n_lo and k × (n − n_lo)
        // blocks; a part's columns lie in one of them, those from n_lo on
        // read from `right` at j − n_lo; an `APack::Into` part reads no B). C is a `&mut` borrow (held
        // by `real` across the parts), so it aliases neither A nor B;
        // concurrent parts get disjoint row or column ranges of C (see
        // `real`), so they write disjoint elements. (With k = 0 nothing of A
        // or B is read.) `pack_a`: `real` packs (`Into`, row ranges inside
        // 0..m) into a buffer of `packed::a_len(m, k)` elements of all of
        // A's rows, row-major C, and hands `From` only to parts of all of
        // A's rows, same family, after all the packing parts have ended.
        unsafe {
            packed::gemm(
                self.family,
                packed::Job {
                    m,
                    k,
                    n,
                    alpha: self.alpha,
                    a: a0,
                    rsa: a.rs,
                    csa: a.cs,
                    b: b0,
                    rsb: b.rs,
                    csb: b.cs,
                    k_lo: self.k_lo,
                    b_hi: self.b_hi.data.as_ptr().wrapping_add(j0 * b.cs),
                    beta: self.beta,
                    c: c0,
                    rsc: self.rsc,
                    csc: self.csc,
                    pack_a: self.pack_a,
                },
                bufs,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_range, chunking, ALIGN};

    /// The chunks cover `0..dim` in order, each but the last a multiple of
    /// `ALIGN` long and at least `ALIGN`, and no two differ by `2·ALIGN` or
    /// more (those but the last by more than `ALIGN`).
    #[test]
    fn chunks_cover_the_dimension_in_near_equal_aligned_parts() {
        for dim in [64, 100, 256, 257, 500, 784, 1000, 4096, 15_680] {
            for chunks in [1, 2, 4] {
                if dim / chunks < ALIGN {
                    continue;
                }
                let rs: Vec<_> = (0..chunks).map(|i| chunk_range(i, chunks, dim)).collect();
                assert_eq!(rs[0].start, 0);
                assert_eq!(rs[chunks - 1].end, dim);
                for w in rs.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "dim {dim}, {chunks} chunks");
                }
                let lens: Vec<usize> = rs.iter().map(|r| r.len()).collect();
                for (i, r) in rs.iter().enumerate() {
                    assert!(r.len() >= ALIGN, "dim {dim}: chunk {i} {r:?}");
                    if i + 1 < chunks {
                        assert_eq!(r.len() % ALIGN, 0, "dim {dim}: chunk {i} {r:?}");
                    }
                }
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo < 2 * ALIGN, "dim {dim}, {chunks} chunks: {lens:?}");
                let inner = &lens[..chunks - 1];
                if let (Some(lo), Some(hi)) = (inner.iter().min(), inner.iter().max()) {
                    assert!(hi - lo <= ALIGN, "dim {dim}, {chunks} chunks: {lens:?}");
                }
            }
        }
        // xᵀ·dZ1 of the MLP benchmark: 784 rows.
        let lens: Vec<usize> = (0..4).map(|i| chunk_range(i, 4, 784).len()).collect();
        assert_eq!(lens, [192, 192, 192, 208]);
    }

    /// Products of 2^22 multiply-adds or more are cut along `C`'s longer
    /// side, in two, from 2^23 in four: the MLP benchmark's products
    /// (784-256-256-10, batch 64) of 4.2 M in two, of 12.8 M in four, and the
    /// HVP's tangent products (`k` doubled, 8.4 M and 25.7 M) in four; not
    /// the last layer's (10 columns).
    #[test]
    fn products_from_2_pow_22_multiply_adds_on_are_cut() {
        // [m, k, n] → (chunks, along rows)
        let cases = [
            ([300, 400, 300], (4, true)),   // 36 M
            ([64, 800, 800], (4, false)),   // 41 M
            ([784, 128, 256], (4, true)),   // tangent xᵀ·dZ1, 25.7 M
            ([64, 784, 256], (4, false)),   // x·W1
            ([784, 64, 256], (4, true)),    // xᵀ·dZ1
            ([64, 512, 256], (4, false)),   // tangent h·W2, dZ·W2ᵀ
            ([64, 256, 256], (2, false)),   // h·W2, dZ·W2ᵀ
            ([256, 64, 256], (2, true)),    // hᵀ·dZ2
            ([64, 256, 255], (1, false)),   // just below 2^22
            ([64, 256, 10], (1, true)),     // h·W3
            ([256, 64, 10], (1, true)),     // hᵀ·dZ3
            ([40, 300_000, 40], (1, true)), // 480 M, but 40 rows: halves < ALIGN
        ];
        for ([m, k, n], want) in cases {
            let got = chunking(m, k, n);
            assert_eq!(got.0, want.0, "[{m}, {k}]·[{k}, {n}]: chunks");
            if got.0 > 1 {
                assert_eq!(got.1, want.1, "[{m}, {k}]·[{k}, {n}]: along rows");
            }
        }
    }
}
