//! Large real products: the call into `matrixmultiply` (`sgemm`/`dgemm`).

use super::{Prim, Product};

/// A stride as `matrixmultiply` takes it. A stride above `isize::MAX` can only
/// belong to a dimension of size ≤ 1 (otherwise the last element's index would
/// exceed the slice's length, which is at most `isize::MAX`), where it is never
/// multiplied by a nonzero index, so 0 is equivalent.
fn stride(s: usize) -> isize {
    isize::try_from(s).unwrap_or(0)
}

/// `C ← α·A·B + β·C` by `matrixmultiply`, any strides.
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
    // SAFETY: `MatRef::new`/`MatMut::new` checked that every element (i, l) of
    // A, (l, j) of B and (i, j) of C lies inside its slice, and `MatMut::new`
    // that C's elements are pairwise distinct; `Product::new` checked that the
    // shapes are m × k, k × n, m × n; C is a `&mut` borrow, so it aliases
    // neither A nor B. (With k = 0 nothing of A or B is read.)
    unsafe {
        F::matrixmultiply(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            stride(a.rs),
            stride(a.cs),
            b.data.as_ptr(),
            stride(b.rs),
            stride(b.cs),
            beta,
            c.data.as_mut_ptr(),
            stride(c.rs),
            stride(c.cs),
        )
    }
}
