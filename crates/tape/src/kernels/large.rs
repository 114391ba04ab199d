//! Large real products: the thread split, and the call into the packed
//! kernels (`packed.rs`) of the active family.

use std::ops::Range;

use super::{packed, Family, MatRef, Prim, Product};

/// Products below this many multiply-adds run as one call: splitting them
/// costs more (a rayon hand-off, a second packing of the shared operand) than
/// it saves. Measured on the 2-vCPU Zen 5 VM of `docs/benchmarks.md` ("HVP on
/// planes", "mlphvp"): with 2^21 or 2^23, which cut the `mlp_*` products of
/// 4 M (resp. 8 M) multiply-adds or more in two, a 2-thread call took longer
/// than the same call on one thread under load (other processes on both
/// cores), and the rayon workers' packing buffers grew whenever a worker first
/// ran a larger chunk, so `crates/hvp/tests/alloc.rs` counted allocations in
/// steady-state MLP calls; from 2^25 (33.5 M) on, each chunk has 16 M
/// multiply-adds, several milliseconds of work against the hand-off's
/// microseconds. (With two idle cores, a chunk of ≥ 4 M multiply-adds, ≥ 40 µs
/// on one AVX-512 core, should outweigh a wake-up of ~5–20 µs: see
/// `examples/gemm_split.rs`.)
pub(crate) const SPLIT_MACS: usize = 1 << 25;
/// At most this many chunks per product (each packs the shared operand once).
const MAX_CHUNKS: usize = 2;
/// A chunk spans a multiple of this many rows (or columns) of `C`, and at
/// least this many, so the register tiles (`packed.rs`) start at the same
/// offsets as in one uncut call and no chunk adds edge tiles. (The bits do not
/// depend on it: an element's value does not depend on its place in a tile.)
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

/// `C ← α·A·B + β·C` by the packed kernels of the active family
/// ([`super::active`], read once per call on the calling thread, so every
/// chunk runs the same family), any strides.
///
/// # Threads
/// The thread count is chosen per call. A large product called from outside rayon's workers is cut
/// into fixed chunks of `C`'s rows or columns ([`chunking`], a function of the
/// shape only) run as rayon jobs; inside a worker (the caller already runs
/// tasks in parallel, e.g. a meta-batch) it is one call on that worker, so
/// the two kinds of threads do not compete for the cores. Each element of `C`
/// is the same sequence of operations (`packed.rs`: one accumulator from zero
/// over all of k) however `C` is cut, so the bits do not depend on the chunks
/// nor on the thread count (`tests/kernel_families.rs`,
/// `large_products_give_the_same_bits_for_any_split`).
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
    // Read once here: the jobs below may run on other threads, whose
    // `with_family` scope is not this one's.
    let family = super::active();
    let (chunks, along_rows) = chunking(m, k, n);
    if chunks == 1 || rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        return call(family, alpha, a, b, beta, &out, 0..m, 0..n);
    }
    let dim = if along_rows { m } else { n };
    let len = dim.div_ceil(chunks).next_multiple_of(ALIGN);
    let job = |i: usize| {
        let r = (i * len).min(dim)..((i + 1) * len).min(dim);
        if along_rows {
            call(family, alpha, a, b, beta, &out, r, 0..n);
        } else {
            call(family, alpha, a, b, beta, &out, 0..m, r);
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

/// Rows `rows` × columns `cols` of `C ← α·A·B + β·C`: one packed product
/// ([`packed::gemm`]) on the sub-blocks of A (those rows), B (those columns) and C.
#[allow(clippy::too_many_arguments)]
fn call<F: Prim>(
    family: Family,
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
        packed::gemm(
            family,
            packed::Job {
                m,
                k,
                n,
                alpha,
                a: a0,
                rsa: a.rs,
                csa: a.cs,
                b: b0,
                rsb: b.rs,
                csb: b.cs,
                beta,
                c: c0,
                rsc: c.rs,
                csc: c.cs,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::chunking;

    /// Products of 2^25 multiply-adds or more are cut in two along `C`'s
    /// longer side; the MLP benchmark's products (784-256-256-10, batch 64)
    /// and the HVP's tangent products (`k` doubled, up to 25.7 M) are not.
    #[test]
    fn products_from_2_pow_25_multiply_adds_on_are_cut_in_two() {
        // [m, k, n] → (chunks, along rows)
        let cases = [
            ([300, 400, 300], (2, true)),   // 36 M
            ([64, 800, 800], (2, false)),   // 41 M
            ([784, 128, 256], (1, true)),   // tangent xᵀ·dZ1, 25.7 M
            ([64, 784, 256], (1, false)),   // x·W1
            ([784, 64, 256], (1, true)),    // xᵀ·dZ1
            ([64, 512, 256], (1, false)),   // tangent h·W2, dZ·W2ᵀ
            ([64, 256, 256], (1, false)),   // h·W2
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
