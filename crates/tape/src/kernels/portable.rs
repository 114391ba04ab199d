//! The portable small-product loop ([`super::Family::Portable`], and compiled
//! with AVX2 by `avx2.rs`), the stack packing shared with the AVX-512 kernels,
//! and a strided loop for element types without a large-product kernel.

use super::view::last_index;
use super::{fits_pack, MatRef, Product, PACK, SMALL_COLS};
use crate::real::Real;
use std::mem::MaybeUninit;

/// Copies the `k × n` view `b` row-major into `buf[..k·n]` and returns that
/// slice (read with the view's strides; any element type).
///
/// # Panics
/// If `buf` has fewer than `k·n` slots.
#[inline(always)]
pub(super) fn pack<'b, T: Copy>(b: MatRef<'_, T>, buf: &'b mut [MaybeUninit<T>]) -> &'b [T] {
    let (k, n) = (b.rows, b.cols);
    assert!(
        fits_pack(k, n) && k * n <= buf.len(),
        "pack: [{k}, {n}] does not fit"
    );
    let dst = &mut buf[..k * n];
    // A zero column stride is allowed only for n = 1; step by 1 then.
    let cs = b.cs.max(1);
    if k > 0 && n > 0 {
        // Holds for every checked view; checked here too (once per call),
        // because the unsafe read below needs it: element (k − 1, n − 1) with
        // the step used is in the slice, so every row's lane below, starting
        // at l·rs and stepping by cs, has at least n elements.
        let last = last_index([k, n], [b.rs, cs]);
        assert!(
            last.is_some_and(|last| last < b.data.len()),
            "pack: a [{k}, {n}] view reaches past its buffer"
        );
        for (l, row) in dst.chunks_exact_mut(n).enumerate() {
            let lane = b.data[l * b.rs..].iter().step_by(cs);
            for (d, &x) in row.iter_mut().zip(lane) {
                d.write(x);
            }
        }
    }
    // SAFETY: every one of the k·n slots of `dst` was written above: k rows
    // of n, each zip n long by the assert on the last index. MaybeUninit<T>
    // has T's layout; the slice borrows `buf` for 'b.
    unsafe { std::slice::from_raw_parts(dst.as_ptr().cast::<T>(), dst.len()) }
}

/// `C ← α·A·B + β·C` by rows, `c` dense row-major `m × n`:
/// `acc = Σ_l A[i, l]·B[l, :]` in increasing `l` (a fixed order, so
/// deterministic), then `C[i, :] = α·acc + β·C[i, :]` (`C` not read when
/// β = 0). Works for any [`Real`], dual numbers included. Always inlined, so
/// `avx2.rs` compiles it with AVX2.
///
/// # Panics
/// If `n > SMALL_COLS` (and, by indexing, if the shapes disagree).
#[inline(always)]
pub(super) fn small<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (k, n) = (a.cols, b.cols);
    if b.cs != 1 && fits_pack(k, n) {
        // A strided B (e.g. a transposed weight) is first copied row-major into
        // a stack buffer, so the row loop below runs on contiguous (vectorised)
        // rows. Only the memory layout changes: the products and the order of
        // the sums are those of the strided product, so the bits are too.
        let mut buf = [MaybeUninit::<T>::uninit(); PACK];
        let packed = pack(b, &mut buf);
        row_loop(alpha, a, MatRef::row_major(packed, k, n), beta, c);
    } else {
        row_loop(alpha, a, b, beta, c);
    }
}

/// The row loop of [`small`].
#[inline(always)]
fn row_loop<T: Real>(
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (alpha, beta_is_zero, beta) = (
        T::from_base(alpha),
        beta == <T::Base as Real>::zero(),
        T::from_base(beta),
    );
    let mut acc = [T::zero(); SMALL_COLS];
    let acc = &mut acc[..n];
    for (i, c_row) in c.chunks_exact_mut(n).enumerate().take(m) {
        acc.fill(T::zero());
        for l in 0..k {
            let a_il = a.data[i * a.rs + l * a.cs];
            let b_row = l * b.rs;
            if b.cs == 1 {
                for (s, &b_lj) in acc.iter_mut().zip(&b.data[b_row..b_row + n]) {
                    *s += a_il * b_lj;
                }
            } else {
                // A strided row (e.g. a transposed operand): a stepping iterator,
                // no bounds check per element. (A zero stride only for n = 1.)
                let b_lane = b.data[b_row..].iter().step_by(b.cs.max(1));
                for (s, &b_lj) in acc.iter_mut().zip(b_lane) {
                    *s += a_il * b_lj;
                }
            }
        }
        for (x, &s) in c_row.iter_mut().zip(acc.iter()) {
            *x = if beta_is_zero {
                alpha * s
            } else {
                alpha * s + beta * *x
            };
        }
    }
}

/// `C ← α·A·B + β·C` element by element, for any layout of `C` and any size:
/// the large-product path of element types without a faster kernel (the
/// default of [`Real::large_gemm`]). Same order of operations as [`small`].
pub(crate) fn strided<T: Real>(p: Product<'_, T>) {
    let Product {
        alpha,
        a,
        b,
        beta,
        c,
    } = p;
    let (alpha, beta_is_zero, beta) = (
        T::from_base(alpha),
        beta == <T::Base as Real>::zero(),
        T::from_base(beta),
    );
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut s = T::zero();
            for l in 0..a.cols {
                s += a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs];
            }
            let x = &mut c.data[i * c.rs + j * c.cs];
            *x = if beta_is_zero {
                alpha * s
            } else {
                alpha * s + beta * *x
            };
        }
    }
}
