//! The matrix product, for any [`Real`] element type: the safe
//! entry points of [`crate::kernels`], re-exported under their historical path.
//!
//! Transposes never copy: a transposed operand is the same buffer with its row
//! and column strides swapped ([`MatRef::t`]). Views are built only by checked
//! constructors ([`MatRef::new`], [`MatRef::row_major`], [`MatMut::new`]), so a
//! zero, overlapping or out-of-bounds layout panics, with its shape and
//! strides, where the view is built.
//!
//! ```
//! use tape::gemm::{gemm, MatRef};
//! let a = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let mut c = [0.0; 4];
//! gemm(1.0, MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 2, 3).t(), 0.0, &mut c);
//! assert_eq!(c, [14.0, 32.0, 32.0, 77.0]);
//! ```

pub use crate::kernels::{gemm, gemm_into, MatMut, MatRef, Product};

use crate::kernels::tangent_gemm;
use crate::real::Real;

/// An adjoint's product `C ← α·A·B + β·C` for input `k` of a product node:
/// the full one, or only its tangent part when nobody reads the primal part
/// of input `k`'s adjoint (a leaf of [`crate::Tape::tangent_leaf_with`]: the
/// primal weight-gradient products an HVP-only pass drops).
pub(crate) fn adjoint_gemm<T: Real>(
    primal: bool,
    alpha: T::Base,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T::Base,
    c: &mut [T],
) {
    if primal {
        gemm(alpha, a, b, beta, c);
    } else {
        tangent_gemm(alpha, a, b, beta, c);
    }
}
