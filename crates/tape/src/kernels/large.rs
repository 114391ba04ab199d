//! Large real products: the call into `matrixmultiply` (`sgemm`/`dgemm`).

use std::ops::Range;

use super::{MatRef, Prim, Product};

/// A stride as `matrixmultiply` takes it. A stride above `isize::MAX` can only
/// belong to a dimension of size ≤ 1 (otherwise the last element's index would
/// exceed the slice's length, which is at most `isize::MAX`), where it is never
/// multiplied by a nonzero index, so 0 is equivalent.
fn stride(s: usize) -> isize {
    isize::try_from(s).unwrap_or(0)
}

/// Products below this many multiply-adds run as one call: splitting them
/// costs more (a rayon hand-off, a second packing of the shared operand, a
/// second packing buffer: `matrixmultiply` allocates one per call) than it
/// saves. Measured on the 2-vCPU Zen 5 VM of `docs/benchmarks.md` ("HVP on
/// planes"): with the former threshold 2^21, which cut every `mlp_*` product
/// of 4 M multiply-adds or more in two, a 2-thread call took longer than the
/// same call on one thread, and allocated a packing buffer more per cut
/// product; from 2^25 (33.5 M) on, each chunk has 16 M multiply-adds, several
/// milliseconds of work against the hand-off's microseconds.
pub(crate) const SPLIT_MACS: usize = 1 << 25;
/// At most this many chunks per product (each packs the shared operand once).
const MAX_CHUNKS: usize = 2;
/// A chunk spans a multiple of this many rows (or columns) of `C`, and at
/// least this many. `matrixmultiply`'s register tiles (mr × nr, powers of two
/// up to 32) then start at the same offsets as in one uncut call, so each
/// element is computed by the same kernel path (a full or an edge tile, whose
/// `α·AB + β·C` epilogues round differently when α ≠ 1).
const ALIGN: usize = 64;

/// How a product is cut: `(chunks, along_rows)`, from its shape alone. The
/// larger of `C`'s two dimensions is cut into `chunks` equal parts (the last
/// one shorter, each a multiple of [`ALIGN`]), at most [`MAX_CHUNKS`], each
/// with at least [`SPLIT_MACS`]/2 multiply-adds; a power of two, so that two
/// threads get equal halves.
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

/// `C ← α·A·B + β·C` by `matrixmultiply`, any strides.
///
/// # Threads
/// The thread count is chosen per call. `matrixmultiply` itself runs on the
/// calling thread (this crate does not enable its `threading` feature, whose
/// pool size is read once from `MATMUL_NUM_THREADS`; a package that enables
/// it gets both). A large product called from outside rayon's workers is cut
/// into fixed chunks of `C`'s rows or columns ([`chunking`], a function of the
/// shape only) run as rayon jobs; inside a worker (the caller already runs
/// tasks in parallel, e.g. a meta-batch) it is one call on that worker, so
/// the two kinds of threads do not compete for the cores. Each element of `C`
/// is the same sequence of operations (the sum over k in `matrixmultiply`'s
/// fixed kc-blocks) however `C` is cut, so the bits do not depend on the chunks
/// nor on the thread count (`tests/suite/gemm_threads.rs`).
pub(crate) fn real<F: Prim>(p: Product<'_, F>) {
    let [m, k, n] = p.shape();
    let Product {
        alpha,
        a,
        b,
        beta,
        c,
    } = p;
    if m == 0 || n == 0 {
        return;
    }
    // C's elements are reached through this pointer only, derived from the
    // `&mut` borrow, which lives until the end of this function.
    let out = Out {
        ptr: c.data.as_mut_ptr(),
        rs: c.rs,
        cs: c.cs,
    };
    let (chunks, along_rows) = chunking(m, k, n);
    if chunks == 1 || rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        return call(alpha, a, b, beta, &out, 0..m, 0..n);
    }
    let dim = if along_rows { m } else { n };
    let len = dim.div_ceil(chunks).next_multiple_of(ALIGN);
    let job = |i: usize| {
        let r = (i * len).min(dim)..((i + 1) * len).min(dim);
        if along_rows {
            call(alpha, a, b, beta, &out, r, 0..n);
        } else {
            call(alpha, a, b, beta, &out, 0..m, r);
        }
    };
    cut(&job, 0..chunks);
}

/// Runs `job(i)` for the chunks `i` in `range`, halving the range with
/// `rayon::join` (no heap allocation, unlike spawned jobs).
fn cut(job: &(impl Fn(usize) + Sync), range: Range<usize>) {
    if range.len() == 1 {
        return job(range.start);
    }
    let mid = range.start + range.len() / 2;
    rayon::join(|| cut(job, range.start..mid), || cut(job, mid..range.end));
}

/// The output of a product, shared by the chunks' jobs: its first element
/// and strides (a checked [`super::MatMut`]'s).
struct Out<F> {
    ptr: *mut F,
    rs: usize,
    cs: usize,
}

// SAFETY: the jobs of `real` write pairwise disjoint elements through `ptr`
// (their ranges partition C's rows or columns, and `MatMut::new` checked that
// C's elements are distinct), and `cut` joins them all before `real`
// returns (`rayon::join` returns after both halves), while the `&mut`
// borrow `ptr` comes from is alive.
unsafe impl<F: Send> Sync for Out<F> {}

/// Rows `rows` × columns `cols` of `C ← α·A·B + β·C`: one `matrixmultiply`
/// call on the sub-blocks of A (those rows), B (those columns) and C.
fn call<F: Prim>(
    alpha: F,
    a: MatRef<'_, F>,
    b: MatRef<'_, F>,
    beta: F,
    c: &Out<F>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    let (m, k, n) = (rows.len(), a.cols, cols.len());
    if m == 0 || n == 0 {
        return;
    }
    let a0 = a.data.as_ptr().wrapping_add(rows.start * a.rs);
    let b0 = b.data.as_ptr().wrapping_add(cols.start * b.cs);
    let c0 = c.ptr.wrapping_add(rows.start * c.rs + cols.start * c.cs);
    // SAFETY: `MatRef::new`/`MatMut::new` checked that every element (i, l) of
    // A, (l, j) of B and (i, j) of C lies inside its slice, and `MatMut::new`
    // that C's elements are pairwise distinct; `Product::new` checked that the
    // shapes are m × k, k × n, m × n, and `real` passes `rows`/`cols` inside
    // them, so the sub-blocks' offsets and elements are inside the slices too.
    // C is a `&mut` borrow (held by `real` across the jobs), so it aliases
    // neither A nor B; concurrent calls get disjoint row or column ranges of C
    // (see `real`), so they write disjoint elements. (With k = 0 nothing of A
    // or B is read.)
    unsafe {
        F::matrixmultiply(
            m,
            k,
            n,
            alpha,
            a0,
            stride(a.rs),
            stride(a.cs),
            b0,
            stride(b.rs),
            stride(b.cs),
            beta,
            c0,
            stride(c.rs),
            stride(c.cs),
        )
    }
}
