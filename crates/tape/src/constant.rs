//! Constants shared across recordings: data a tape reads in place on every
//! pass instead of copying it into its arena.

use std::sync::Arc;

use crate::real::Float;
use crate::tensor::Tensor;

/// A constant tensor (a data matrix, a label vector) that tapes record by
/// reference ([`crate::Tape::constant_shared`]): cloning it and recording
/// it cost a reference count, not a copy of its elements, so a problem
/// that records the same data on every pass pays for it once.
///
/// It also keeps, made once here, a column-major copy of its matrix (the
/// `[rows, cols]` matrix of its leading axes flattened, for rank ≥ 2): a
/// [`crate::Var::matmul`] with this constant as its left operand reads
/// `A` from that copy in the forward product `A·B` (the lanes of the
/// matrix-vector kernels run down the rows of `A`) and from the row-major
/// data in the adjoint `Aᵀ·ḡ`, so neither product transposes `A` on the
/// fly. The kernels give the same bits for either layout
/// (`kernels/mod.rs`, "Determinism"), so the values are those of
/// [`crate::Tape::constant_base`] of the same tensor.
///
/// ```
/// use tape::{Constant, Tape, Tensor};
/// let x = Constant::new(Tensor::new(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
/// let t = Tape::<f64>::new();
/// let w = t.var(&Tensor::new(&[3, 1], vec![1.0, 0.0, -1.0]));
/// let y = t.constant_shared(&x).matmul(w); // [1 − 3, 4 − 6]
/// assert_eq!(y.value().data(), &[-2.0, -2.0]);
/// assert_eq!(x.value().data()[4], 5.0);
/// ```
#[derive(Clone, Debug)]
pub struct Constant<F: Float> {
    data: Arc<Data<F>>,
}

#[derive(Debug)]
struct Data<F> {
    value: Tensor<F>,
    /// Element (i, j) of the flattened `[rows, cols]` matrix at `i + j·rows`
    /// (empty below rank 2).
    columns: Vec<F>,
}

impl<F: Float> Constant<F> {
    /// Shares `value` (and makes its column-major copy, for rank ≥ 2).
    pub fn new(value: Tensor<F>) -> Self {
        let dims = value.shape().dims().to_vec();
        let columns = if dims.len() >= 2 {
            let cols = dims[dims.len() - 1];
            let rows = value.numel() / cols.max(1);
            let x = value.data();
            (0..rows * cols)
                .map(|e| x[(e % rows) * cols + e / rows])
                .collect()
        } else {
            Vec::new()
        };
        Constant {
            data: Arc::new(Data { value, columns }),
        }
    }

    /// The tensor.
    pub fn value(&self) -> &Tensor<F> {
        &self.data.value
    }

    /// The column-major copy of the flattened matrix (rank ≥ 2).
    pub(crate) fn columns(&self) -> Option<&[F]> {
        (self.data.value.shape().rank() >= 2).then_some(&self.data.columns[..])
    }
}
