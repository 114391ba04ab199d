//! Matrix products through the GEMM wrapper; transposes are strides, not copies.
//!
//! | op | shapes | forward | VJP |
//! |---|---|---|---|
//! | `matmul` | `[m, k]·[k, n]` | C = A·B | ḡA = g·Bᵀ, ḡB = Aᵀ·g |
//! | `matmul` | `[b, m, k]·[k, n]` | one GEMM on `[b·m, k]` | as above, on the flattened rows |
//! | `matmul` | `[b, m, k]·[b, k, n]` | C_i = A_i·B_i | per batch |
//!
//! On dual numbers the product rule comes from the element type: a dual GEMM is
//! three real GEMMs (see [`crate::Dual`]).

use crate::gemm::{gemm, MatRef};
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Var};

/// (batch count, m, k, n); a `[b, m, k]·[k, n]` product is one batch of `b·m` rows.
#[track_caller]
fn dims(a: Shape, b: Shape) -> (usize, usize, usize, usize) {
    let name = "matmul";
    match (a.rank(), b.rank()) {
        (2, 2) | (3, 2) => {
            let (ka, kb) = (a.dim(a.rank() - 1), b.dim(0));
            check_shapes!(ka == kb, name, ["lhs" => a, "rhs" => b], "inner dimensions {ka} != {kb}");
            let rows = a.dims()[..a.rank() - 1].iter().product();
            (1, rows, ka, b.dim(1))
        }
        (3, 3) => {
            check_shapes!(a.dim(0) == b.dim(0), name, ["lhs" => a, "rhs" => b], "batch dimensions {} != {}", a.dim(0), b.dim(0));
            check_shapes!(a.dim(2) == b.dim(1), name, ["lhs" => a, "rhs" => b], "inner dimensions {} != {}", a.dim(2), b.dim(1));
            (a.dim(0), a.dim(1), a.dim(2), b.dim(2))
        }
        _ => crate::shape::shape_panic(
            name,
            &[("lhs", a), ("rhs", b)],
            format_args!("expected [m, k]·[k, n], [b, m, k]·[k, n] or [b, m, k]·[b, k, n]"),
        ),
    }
}

pub(crate) fn matmul_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (batch, m, k, n) = dims(b.x_shape(0), b.x_shape(1));
    let (x, y, g) = (b.x(0), b.x(1), b.g);
    let one = <T::Base as Real>::one();
    // An adjoint not yet touched in this sweep is overwritten (β = 0) instead of
    // zero-filled and accumulated into (β = 1).
    let beta = |fresh: bool| {
        if fresh {
            <T::Base as Real>::zero()
        } else {
            one
        }
    };
    if b.wants(0) {
        let (ga, fresh) = b.g_in_overwrite(0);
        for i in 0..batch {
            let gi = MatRef::row_major(&g[i * m * n..(i + 1) * m * n], m, n);
            let bi = MatRef::row_major(&y[i * k * n..(i + 1) * k * n], k, n);
            gemm(
                one,
                gi,
                bi.t(),
                beta(fresh),
                &mut ga[i * m * k..(i + 1) * m * k],
            );
        }
    }
    if b.wants(1) {
        // The batched [b, m, k]·[k, n] product shares B: its adjoint is one GEMM
        // on the flattened rows (batch = 1 here); a [b, k, n] B has one per batch.
        let (gb, fresh) = b.g_in_overwrite(1);
        for i in 0..batch {
            let gi = MatRef::row_major(&g[i * m * n..(i + 1) * m * n], m, n);
            let ai = MatRef::row_major(&x[i * m * k..(i + 1) * m * k], m, k);
            gemm(
                one,
                ai.t(),
                gi,
                beta(fresh),
                &mut gb[i * k * n..(i + 1) * k * n],
            );
        }
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// Matrix product: `[m, k]·[k, n] → [m, n]`, `[b, m, k]·[k, n] → [b, m, n]`,
    /// or batched `[b, m, k]·[b, k, n] → [b, m, n]`.
    ///
    /// # Panics
    /// On mismatched dimensions: `matmul: lhs [3, 4], rhs [5, 2]: inner dimensions 4 != 5`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let a = t.var(&Tensor::new(&[1, 2], vec![1.0, 2.0]));
    /// let b = t.var(&Tensor::new(&[2, 1], vec![3.0, 4.0]));
    /// assert_eq!(a.matmul(b).item(), 11.0);
    /// ```
    #[track_caller]
    pub fn matmul(self, rhs: Var<'t, T>) -> Var<'t, T> {
        let (sa, sb) = (self.shape(), rhs.shape());
        let (batch, m, k, n) = dims(sa, sb);
        let out = if sa.rank() == 3 {
            Shape::new(&[sa.dim(0), sa.dim(1), n])
        } else {
            Shape::new(&[m, n])
        };
        let zero = <T::Base as Real>::zero();
        let one = <T::Base as Real>::one();
        // β = 0 overwrites the output (the GEMM never reads it), so no zero-fill.
        self.tape
            .record_overwrite(Op::Matmul, &[self, rhs], out, |f| {
                let (x, y) = (f.x(0), f.x(1));
                for i in 0..batch {
                    let ai = MatRef::row_major(&x[i * m * k..(i + 1) * m * k], m, k);
                    let bi = MatRef::row_major(&y[i * k * n..(i + 1) * k * n], k, n);
                    gemm(one, ai, bi, zero, &mut f.out[i * m * n..(i + 1) * m * n]);
                }
            })
    }
}
