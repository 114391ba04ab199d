//! Matrix products through the GEMM wrapper; transposes are strides, not copies.
//!
//! | op | shapes | forward | VJP |
//! |---|---|---|---|
//! | `matmul` | `[m, k]·[k, n]` | C = A·B | ḡA = g·Bᵀ, ḡB = Aᵀ·g |
//! | `matmul` | `[b, m, k]·[k, n]` | one GEMM on `[b·m, k]` | as above, on the flattened rows |
//! | `matmul` | `[b, m, k]·[b, k, n]` | C_i = A_i·B_i | per batch |
//! | `matmul_t` | `[m, k]·[n, k]ᵀ` (or `[b, m, k]`) | C = A·Bᵀ | ḡA = g·B, ḡB = gᵀ·A |
//!
//! On dual numbers the product rule comes from the element type: a dual GEMM is
//! three real GEMMs (see [`crate::Dual`]).

use crate::gemm::{adjoint_gemm, gemm, MatRef};
use crate::kernels::dual::tangent_sink;
use crate::kernels::source::{
    dual_source_gemm, reads_source, reads_source_dual, real_left_source_gemm,
};
use crate::kernels::{
    real_left_gemm, real_left_ok, real_left_tangent_sink, takes_real_left, THIN_COLS,
};
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

/// Whether `matmul` reads a [`crate::Tape::constant_base`] or
/// [`crate::Tape::constant_shared`] left operand as real data (forward:
/// `C = A·B`, adjoint: `ḡB = Aᵀ·g`; on a dual tape both are real products
/// on the dual operand's parts, `kernels/real_left.rs`) rather than
/// converted to duals with zero tangents. The same bits either way. On a
/// real tape (only shared constants have real data there) always.
pub(crate) fn matmul_reads_base<T: Real>(a: Shape, b: Shape) -> bool {
    let (_, m, k, n) = dims(a, b);
    is_real::<T>() || real_left_ok(m, k, n)
}

/// Whether `matmul` reads a [`crate::Tape::tangent_leaf_source`] right
/// operand in place: one `[m, k]·[k, n]` product on a `Dual<f32>`/
/// `Dual<f64>` tape, behind a real left operand (`base_left`,
/// [`matmul_reads_base`]) of a shape that
/// `kernels::source::real_left_source_gemm` takes, or behind a dual one of
/// a shape that `kernels::source::dual_source_gemm` takes (forward and
/// adjoint).
pub(crate) fn matmul_reads_source<T: Real>(a: Shape, b: Shape, base_left: bool) -> bool {
    let (batch, m, k, n) = dims(a, b);
    if batch != 1 || !takes_real_left::<T>() {
        return false;
    }
    if base_left {
        matmul_reads_base::<T>(a, b) && reads_source(m, k, n)
    } else {
        reads_source_dual(m, k, n)
    }
}

/// Whether `T` is its own base type (`f32`, `f64`).
fn is_real<T: Real>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::Base>()
}

pub(crate) fn matmul_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (sa, sb) = (b.x_shape(0), b.x_shape(1));
    let (batch, m, k, n) = dims(sa, sb);
    let (y, g) = (b.x(1), b.g);
    // A constant left operand kept as real data: its dual value may not be
    // written (the recording did not convert it), so it is read from there.
    let real_a = b.x_base(0).filter(|_| matmul_reads_base::<T>(sa, sb));
    let x = if real_a.is_some() { &[][..] } else { b.x(0) };
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
        let primal = b.wants_primal(0);
        let source = b.x_source(1);
        let (ga, fresh) = b.g_in_overwrite(0);
        // A source leaf as B: ḡA = g·Bᵀ from its planes (batch 1).
        if let Some((tape, node)) = source {
            let gm = MatRef::row_major(g, m, n);
            let done = dual_source_gemm((tape, node), (one, beta(fresh)), gm, true, ga, primal);
            assert!(
                done,
                "matmul: source leaf {node} [{k}, {n}] not readable in place"
            );
        }
        for i in (0..batch).filter(|_| source.is_none()) {
            let gi = MatRef::row_major(&g[i * m * n..(i + 1) * m * n], m, n);
            let bi = MatRef::row_major(&y[i * k * n..(i + 1) * k * n], k, n);
            adjoint_gemm(
                primal,
                one,
                gi,
                bi.t(),
                beta(fresh),
                &mut ga[i * m * k..(i + 1) * m * k],
            );
        }
    }
    // An HVP-only weight with a tangent sink registered for it
    // (`kernels/sink.rs`): ḡB.d = (Aᵀ·g).d straight into the caller's
    // buffer; B's dual adjoint is not touched.
    let sunk = |b: &Bwd<'_, T>| {
        if batch != 1 || b.wants_primal(1) {
            return false;
        }
        let (node, gi) = (b.node.inputs[1] as usize, MatRef::row_major(g, m, n));
        match real_a {
            Some(xa) => real_left_tangent_sink(node, one, MatRef::row_major(xa, m, k).t(), gi),
            None => tangent_sink(node, one, MatRef::row_major(x, m, k).t(), gi),
        }
    };
    if b.wants(1) && !sunk(b) {
        // The batched [b, m, k]·[k, n] product shares B: its adjoint is one GEMM
        // on the flattened rows (batch = 1 here); a [b, k, n] B has one per batch.
        let primal = b.wants_primal(1);
        let (gb, fresh) = b.g_in_overwrite(1);
        for i in 0..batch {
            let gi = MatRef::row_major(&g[i * m * n..(i + 1) * m * n], m, n);
            let gbi = &mut gb[i * k * n..(i + 1) * k * n];
            if let Some(xa) = real_a {
                let ai = MatRef::row_major(&xa[i * m * k..(i + 1) * m * k], m, k);
                real_left_gemm(primal, one, ai.t(), gi, beta(fresh), gbi);
            } else {
                let ai = MatRef::row_major(&x[i * m * k..(i + 1) * m * k], m, k);
                adjoint_gemm(primal, one, ai.t(), gi, beta(fresh), gbi);
            }
        }
    }
}

/// (rows, k, n) of `A·Bᵀ` for `A [.., k]` (rank 2 or 3, leading axes flattened) and `B [n, k]`.
#[track_caller]
fn dims_t(a: Shape, b: Shape) -> (usize, usize, usize) {
    let name = "matmul_t";
    check_shapes!((a.rank() == 2 || a.rank() == 3) && b.rank() == 2, name, ["lhs" => a, "rhs" => b], "expected [m, k]·[n, k]ᵀ or [b, m, k]·[n, k]ᵀ");
    let (ka, kb) = (a.dim(a.rank() - 1), b.dim(1));
    check_shapes!(ka == kb, name, ["lhs" => a, "rhs" => b], "inner dimensions {ka} != {kb}");
    (a.dims()[..a.rank() - 1].iter().product(), ka, b.dim(0))
}

/// VJP of `C = A·Bᵀ`: `ḡA = g·B`, `ḡB = gᵀ·A`. Both read their operands through
/// strides, and each sum runs over the same index in the same order as the
/// `A.matmul(B.t())` composition, so the results are bit-identical to it.
pub(crate) fn matmul_t_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (m, k, n) = dims_t(b.x_shape(0), b.x_shape(1));
    let (x, y, g) = (b.x(0), b.x(1), b.g);
    let one = <T::Base as Real>::one();
    let beta = |fresh: bool| {
        if fresh {
            <T::Base as Real>::zero()
        } else {
            one
        }
    };
    let gm = MatRef::row_major(g, m, n);
    if b.wants(0) {
        let primal = b.wants_primal(0);
        let (ga, fresh) = b.g_in_overwrite(0);
        let yb = MatRef::row_major(y, n, k);
        adjoint_gemm(primal, one, gm, yb, beta(fresh), ga);
    }
    // An HVP-only weight with a tangent sink: as in `matmul_vjp`.
    let sunk = |b: &Bwd<'_, T>| {
        let node = b.node.inputs[1] as usize;
        !b.wants_primal(1) && tangent_sink(node, one, gm.t(), MatRef::row_major(x, m, k))
    };
    if b.wants(1) && !sunk(b) {
        let primal = b.wants_primal(1);
        let (gb, fresh) = b.g_in_overwrite(1);
        let xa = MatRef::row_major(x, m, k);
        adjoint_gemm(primal, one, gm.t(), xa, beta(fresh), gb);
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// Product with a transposed right operand: `[m, k]·[n, k]ᵀ → [m, n]`
    /// (or `[b, m, k]·[n, k]ᵀ → [b, m, n]`); the same values as
    /// `self.matmul(rhs.t())` without materialising the transpose.
    ///
    /// # Panics
    /// On mismatched dimensions: `matmul_t: lhs [3, 4], rhs [2, 5]: inner dimensions 4 != 5`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let a = t.var(&Tensor::new(&[1, 2], vec![1.0, 2.0]));
    /// let w = t.var(&Tensor::new(&[1, 2], vec![3.0, 4.0]));
    /// assert_eq!(a.matmul_t(w).item(), 11.0); // 1·3 + 2·4
    /// ```
    #[track_caller]
    pub fn matmul_t(self, rhs: Var<'t, T>) -> Var<'t, T> {
        let (sa, sb) = (self.shape(), rhs.shape());
        let (m, k, n) = dims_t(sa, sb);
        let out = if sa.rank() == 3 {
            Shape::new(&[sa.dim(0), sa.dim(1), n])
        } else {
            Shape::new(&[m, n])
        };
        let zero = <T::Base as Real>::zero();
        let one = <T::Base as Real>::one();
        self.tape
            .record_overwrite(Op::MatmulT, &[self, rhs], out, |f| {
                let (x, y) = (f.x(0), f.x(1));
                let a = MatRef::row_major(x, m, k);
                let bt = MatRef::row_major(y, n, k).t();
                gemm(one, a, bt, zero, &mut *f.out);
            })
    }

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
                // A `constant_base` left operand: real products on B's parts
                // (its dual value is not written, see `matmul_reads_base`).
                let real_a = f.x_base(0).filter(|_| matmul_reads_base::<T>(sa, sb));
                let real_a_ok = real_a.is_some();
                // A shared constant's column-major copy, for a matrix-vector
                // product (the kernels' lanes then run down A's columns).
                let columns = f
                    .x_columns(0)
                    .filter(|_| real_a_ok && batch == 1 && n <= THIN_COLS);
                // A source leaf on the right: its planes, read in place.
                if let (Some(xa), Some((tape, node))) = (real_a, f.x_source(1)) {
                    let ai = MatRef::row_major(xa, m, k);
                    let done = real_left_source_gemm(tape, node, one, ai, f.out);
                    assert!(
                        done,
                        "matmul: source leaf {node} [{k}, {n}] not readable in place"
                    );
                    return;
                }
                if let (None, Some((tape, node))) = (real_a, f.x_source(1)) {
                    let ai = MatRef::row_major(f.x(0), m, k);
                    let done = dual_source_gemm((tape, node), (one, zero), ai, false, f.out, true);
                    assert!(
                        done,
                        "matmul: source leaf {node} [{k}, {n}] not readable in place"
                    );
                    return;
                }
                let (x, y) = (if real_a_ok { &[][..] } else { f.x(0) }, f.x(1));
                for i in 0..batch {
                    let bi = MatRef::row_major(&y[i * k * n..(i + 1) * k * n], k, n);
                    let ci = &mut f.out[i * m * n..(i + 1) * m * n];
                    if let Some(cols) = columns {
                        let ai = MatRef::row_major(cols, k, m).t();
                        real_left_gemm(true, one, ai, bi, zero, ci);
                    } else if let Some(xa) = real_a {
                        let ai = MatRef::row_major(&xa[i * m * k..(i + 1) * m * k], m, k);
                        real_left_gemm(true, one, ai, bi, zero, ci);
                    } else {
                        let ai = MatRef::row_major(&x[i * m * k..(i + 1) * m * k], m, k);
                        gemm(one, ai, bi, zero, ci);
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{check_grad, check_vjp, Tolerance};
    use crate::{Dual, Tape, Tensor};

    /// Deterministic non-trivial entries (a fixed linear-congruential sequence).
    fn filled(shape: &[usize], seed: u32) -> Tensor<f32> {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        let data = (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::new(shape, data)
    }

    /// Value and both gradients of Σ (A·Bᵀ) ⊙ W, by `matmul_t` or by `matmul(t())`.
    fn run(a: &Tensor<f32>, b: &Tensor<f32>, w: &Tensor<f32>, fused: bool) -> Vec<Vec<f32>> {
        let t = Tape::<f32>::new();
        let (av, bv, wv) = (t.var(a), t.var(b), t.var(w));
        let c = if fused {
            av.matmul_t(bv)
        } else {
            av.matmul(bv.t())
        };
        let loss = (c * wv).sum();
        let g = t.gradients(loss, &[av, bv]);
        vec![
            t.value(c).data().to_vec(),
            g[0].data().to_vec(),
            g[1].data().to_vec(),
        ]
    }

    /// `A·Bᵀ` read through strides sums the same products in the same order as
    /// the transposed copy, so value and gradients agree bit for bit — for the
    /// small row-loop path ([10, 40]·[40, 40]ᵀ, [2, 3, 5]·[4, 5]ᵀ) and the
    /// packing kernel ([70, 90]·[80, 90]ᵀ).
    #[test]
    fn matmul_t_is_bit_identical_to_matmul_of_transpose() {
        for (sa, sb, sc) in [
            (vec![10, 40], vec![40, 40], vec![10, 40]),
            (vec![2, 3, 5], vec![4, 5], vec![2, 3, 4]),
            (vec![70, 90], vec![80, 90], vec![70, 80]),
        ] {
            let (a, b, w) = (filled(&sa, 1), filled(&sb, 2), filled(&sc, 3));
            let (x, y) = (run(&a, &b, &w, true), run(&a, &b, &w, false));
            for (p, q) in x.iter().zip(&y) {
                assert_eq!(p.len(), q.len());
                for (u, v) in p.iter().zip(q) {
                    assert_eq!(u.to_bits(), v.to_bits(), "{sa:?}·{sb:?}ᵀ: {u} vs {v}");
                }
            }
        }
    }

    /// Dual numbers (Hessian-vector products run the sweep on them): the
    /// tangent of A·Bᵀ is Ȧ·Bᵀ + A·Ḃᵀ, checked against `matmul(t())` bit for bit.
    #[test]
    fn matmul_t_on_duals_matches_matmul_of_transpose() {
        let dual = |re: &Tensor<f32>, eps: &Tensor<f32>| {
            let d = re
                .data()
                .iter()
                .zip(eps.data())
                .map(|(&r, &e)| Dual::new(r, e))
                .collect();
            Tensor::new(re.shape(), d)
        };
        let a = dual(&filled(&[10, 40], 4), &filled(&[10, 40], 5));
        let b = dual(&filled(&[30, 40], 6), &filled(&[30, 40], 7));
        let t = Tape::<Dual<f32>>::new();
        let (av, bv) = (t.var(&a), t.var(&b));
        let (p, q) = (t.value(av.matmul_t(bv)), t.value(av.matmul(bv.t())));
        for (u, v) in p.data().iter().zip(q.data()) {
            assert_eq!(
                (u.v.to_bits(), u.d.to_bits()),
                (v.v.to_bits(), v.d.to_bits())
            );
        }
    }

    /// The VJP against finite differences (f64), rank-2 and rank-3 left operands.
    #[test]
    fn matmul_t_gradient_matches_finite_differences() {
        let tol = Tolerance::for_f64();
        let a = Tensor::new([2, 3], vec![0.1, -0.4, 0.9, 1.3, -2.0, 0.5]);
        let b = Tensor::new([4, 3], (0..12).map(|i| 0.3 * i as f64 - 1.1).collect());
        check_grad(
            |_, v| v[0].matmul_t(v[1]).tanh().sum(),
            &[a.clone(), b.clone()],
            tol,
        )
        .unwrap();
        let a3 = Tensor::new([2, 2, 3], (0..12).map(|i| 0.7 - 0.2 * i as f64).collect());
        check_vjp(|_, v| v[0].matmul_t(v[1]).tanh(), &[a3, b], 7, tol).unwrap();
    }

    #[test]
    #[should_panic(expected = "matmul_t: lhs [3, 4], rhs [2, 5]: inner dimensions 4 != 5")]
    fn matmul_t_mismatch_panics_with_shapes() {
        let t = Tape::<f64>::new();
        let a = t.var(&Tensor::zeros([3, 4]));
        let b = t.var(&Tensor::zeros([2, 5]));
        let _ = a.matmul_t(b);
    }
}
