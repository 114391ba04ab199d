//! The mean logistic loss of a linear model in one node.
//!
//! | op | shapes | forward | VJP |
//! |---|---|---|---|
//! | `mean_softplus_matmul` | `X [m, k]`, `W [k, n]` → `[n]` | y_j = (1/m) Σ_i softplus((X·W)_ij) | ḡW_{:,j} = u_j·ḡ_j/m with u = Xᵀσ(X·W) saved; ḡX = (σ(X·W) ⊙ ḡ/m)·Wᵀ |
//!
//! With rows x_i = −y_i a_i (labels y_i = ±1), softplus(x_iᵀw) = log(1 +
//! exp(−y_i a_iᵀw)) is the logistic loss of sample i, so column j of the
//! output is the mean loss of weight column j.
//!
//! The forward computes `u = Xᵀ·σ(X·W)` ([k, n], saved) from the same rows of
//! X as `X·W` (`kernels/thin.rs`: each block of rows is read from memory
//! once, for both products), so the VJP, linear in ḡ, is `ḡW = u ⊙ ḡ/m`
//! and reads X not at all. On a dual tape (forward mode, and
//! forward-over-reverse for Hessian-vector products) the same rule runs on
//! duals: `z = X·W` carries `X·Ẇ` (+ `Ẋ·W`), `σ(z)` its tangent
//! `σ(1−σ)·ż`, and `u` its tangent `Xᵀ·σ̇` (+ `Ẋᵀ·σ`). X is read as real
//! data when it is a [`crate::Tape::constant_shared`] or
//! [`crate::Tape::constant_base`] leaf (no dual copy of the data matrix).
//! The adjoint of a variable X recomputes σ(X·W) (nothing m × n is saved).

use crate::gemm::gemm;
use crate::kernels::{real_left_gemm, thin, MatRef};
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape};
use crate::tape::{Bwd, Fwd, Var};

/// The op's name in messages.
const NAME: &str = "mean_softplus_matmul";

/// (m, k, n) of `X [m, k]`, `W [k, n]`.
#[track_caller]
fn dims(x: Shape, w: Shape) -> (usize, usize, usize) {
    check_shapes!(x.rank() == 2 && w.rank() == 2, NAME, ["x" => x, "w" => w], "expected X [m, k] and W [k, n]");
    check_shapes!(x.dim(1) == w.dim(0), NAME, ["x" => x, "w" => w], "inner dimensions {} != {}", x.dim(1), w.dim(0));
    check_shapes!(w.dim(1) <= MAX_COLS, NAME, ["x" => x, "w" => w], "{} columns, at most {MAX_COLS}", w.dim(1));
    check_shapes!(x.dim(0) > 0, NAME, ["x" => x, "w" => w], "the mean over m = 0 rows is undefined");
    (x.dim(0), x.dim(1), w.dim(1))
}

/// The most columns W may have: a block's buffers live on the stack, and
/// each holds whole rows.
const MAX_COLS: usize = 128;

/// The forward: `out_j = (1/m) Σ_i softplus(z_ij)`, `z = X·W`; saves
/// `u = Xᵀ·σ(z)` ([k, n]) in `aux`.
fn forward<T: Real>(f: &mut Fwd<'_, T>, m: usize, k: usize, n: usize) {
    let a0 = f.aux.len();
    f.aux.resize(a0 + k * n, T::zero());
    let x_base = f.x_base(0);
    // X's dual value: written only where it has no real data.
    let x = if x_base.is_some() { &[][..] } else { f.x(0) };
    let w = f.x(1);
    let columns = f.x_columns(0);
    let (out, u) = (&mut *f.out, &mut f.aux[a0..]);
    out.fill(T::zero());
    // One block of rows: z (r × n, row-major) in, σ(z) out; the softplus
    // values summed into `out` row by row (a fixed order).
    let chunk = MAX_COLS / n * n;
    let mut sp = [T::zero(); MAX_COLS];
    let mut rows = |z: &[T], s: &mut [T]| {
        for (zc, sc) in z.chunks(chunk).zip(s.chunks_mut(chunk)) {
            let spc = &mut sp[..zc.len()];
            T::softplus_sigmoid_slice(zc, spc, sc);
            for (j, o) in out.iter_mut().enumerate() {
                let mut t = *o;
                for &v in spc[j..].iter().step_by(n) {
                    t += v;
                }
                *o = t;
            }
        }
    };
    let wm = MatRef::row_major(w, k, n);
    // A shared data matrix's column-major copy: the fused kernel reads each
    // block of rows once for both products.
    let fused = match columns {
        Some(cols) => thin::logistic(MatRef::new(cols, m, k, 1, m), wm, &mut rows, u),
        None => false,
    };
    if !fused {
        // Block by block with the general products: z = X_b·W, then
        // u += X_bᵀ·σ(z) (β = 0 on the first block: `u` is overwritten).
        let one = <T::Base as Real>::one();
        let mut z = [T::zero(); MAX_COLS];
        let mut s = [T::zero(); MAX_COLS];
        let r = MAX_COLS / n.max(1);
        for i0 in (0..m).step_by(r) {
            let rb = r.min(m - i0);
            let (zb, sb) = (&mut z[..rb * n], &mut s[..rb * n]);
            let beta = if i0 == 0 {
                <T::Base as Real>::zero()
            } else {
                one
            };
            let zero = <T::Base as Real>::zero();
            if let Some(xb) = x_base {
                let xr = MatRef::row_major(&xb[i0 * k..(i0 + rb) * k], rb, k);
                real_left_gemm(true, one, xr, wm, zero, zb);
                rows(zb, sb);
                real_left_gemm(true, one, xr.t(), MatRef::row_major(sb, rb, n), beta, u);
            } else {
                let xr = MatRef::row_major(&x[i0 * k..(i0 + rb) * k], rb, k);
                gemm(one, xr, wm, zero, zb);
                rows(zb, sb);
                gemm(one, xr.t(), MatRef::row_major(sb, rb, n), beta, u);
            }
        }
    }
    let mm = T::from_f64(m as f64);
    for o in out.iter_mut() {
        *o /= mm;
    }
}

/// VJP: `ḡW[l, j] += u[l, j]·(ḡ_j/m)`; for a variable X (the general case,
/// not a data matrix) `ḡX += (σ(X·W) ⊙ ḡ/m)·Wᵀ`, with σ(X·W) recomputed in
/// the scratch buffer.
pub(crate) fn mean_softplus_matmul_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (m, k, n) = dims(b.x_shape(0), b.x_shape(1));
    let (g, u) = (b.g, b.aux);
    let mm = T::from_f64(m as f64);
    if b.wants(1) {
        let gw = b.g_in(1);
        for (gr, ur) in gw.chunks_mut(n).zip(u.chunks(n)) {
            for ((d, &ul), &gj) in gr.iter_mut().zip(ur).zip(g) {
                *d += ul * (gj / mm);
            }
        }
    }
    if b.wants(0) {
        // X wants an adjoint, so it is a variable with its value written.
        let (x, w) = (b.x(0), b.x(1));
        let one = <T::Base as Real>::one();
        let mut s = std::mem::take(b.scratch);
        s.clear();
        s.resize(3 * m * n, T::zero());
        let (z, rest) = s.split_at_mut(m * n);
        let (sp, sig) = rest.split_at_mut(m * n);
        let wm = MatRef::row_major(w, k, n);
        gemm(
            one,
            MatRef::row_major(x, m, k),
            wm,
            <T::Base as Real>::zero(),
            z,
        );
        T::softplus_sigmoid_slice(z, sp, sig);
        for row in sig.chunks_mut(n) {
            for (v, &gj) in row.iter_mut().zip(g) {
                *v *= gj / mm;
            }
        }
        let gx = b.g_in(0);
        gemm(one, MatRef::row_major(sig, m, n), wm.t(), one, gx);
        *b.scratch = s;
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// The mean softplus of a product, per column: for `X [m, k]` (self)
    /// and `W [k, n]`, `y_j = (1/m) Σ_i softplus((X·W)_ij)`, shape `[n]`.
    /// With rows `x_i = −y_i a_i` this is the mean logistic loss of each
    /// weight column. One node: the forward also forms `Xᵀσ(X·W)`, so the
    /// adjoint `ḡW = Xᵀσ(X·W)·ḡ/m` does not read X again.
    ///
    /// # Panics
    /// On a rank other than 2, mismatched inner dimensions or m = 0:
    /// `mean_softplus_matmul: x [3, 4], w [5, 1]: inner dimensions 4 != 5`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::new(&[2, 1], vec![1.0, -1.0]));
    /// let w = t.var(&Tensor::new(&[1, 1], vec![0.0]));
    /// // softplus(0) = ln 2 for both rows.
    /// let y = x.mean_softplus_matmul(w);
    /// assert!((y.item() - 2f64.ln()).abs() < 1e-15);
    /// ```
    #[track_caller]
    pub fn mean_softplus_matmul(self, w: Var<'t, T>) -> Var<'t, T> {
        let (m, k, n) = dims(self.shape(), w.shape());
        self.tape
            .record_overwrite(Op::MeanSoftplusMatmul, &[self, w], Shape::new(&[n]), |f| {
                forward(f, m, k, n)
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::{with_family, Family};
    use crate::testing::{check_grad, check_vjp, random_directions, Tolerance};
    use crate::{Constant, Dual, Shape, Tape, Tensor};

    /// Entries uniform in [−1, 1] from `seed`.
    fn filled(shape: &[usize], seed: u64) -> Tensor<f64> {
        random_directions::<f64>(&[Shape::new(shape)], seed).remove(0)
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-13 * (1.0 + a.abs().max(b.abs())),
            "{what}: fused {a} vs composed {b}"
        );
    }

    /// The families this CPU runs.
    fn families() -> Vec<Family> {
        Family::ALL
            .into_iter()
            .filter(|f| f.is_available())
            .collect()
    }

    /// On a real tape with a shared data matrix (the fused kernel in the
    /// vector families, the general products in the portable one): value
    /// and ∇W agree with `matmul → softplus → mean` for row counts on and
    /// off the block size, one and two columns.
    #[test]
    fn real_tape_matches_the_composition() {
        for fam in families() {
            for (m, k, n) in [
                (1000, 50, 1),
                (1000, 50, 2),
                (37, 7, 2),
                (130, 3, 1),
                (5, 300, 1),
                (70, 4, 3),
            ] {
                let xc = Constant::new(filled(&[m, k], 1).map(|v| 3.0 * v));
                let w0 = filled(&[k, n], 2);
                let run = |fused: bool| {
                    with_family(fam, || {
                        let t = Tape::<f64>::new();
                        let (x, w) = (t.constant_shared(&xc), t.var(&w0));
                        let y = if fused {
                            x.mean_softplus_matmul(w)
                        } else {
                            x.matmul(w).softplus().mean_axes(&[0], false)
                        };
                        let c = t.constant(&filled(&[n], 3));
                        let loss = (y * c).sum();
                        let g = t.gradients(loss, &[w]);
                        (t.value(y).data().to_vec(), g[0].data().to_vec())
                    })
                };
                let ((y1, g1), (y2, g2)) = (run(true), run(false));
                for (a, b) in y1.iter().zip(&y2).chain(g1.iter().zip(&g2)) {
                    close(*a, *b, &format!("{fam:?} [{m}, {k}]·[{k}, {n}]"));
                }
            }
        }
    }

    /// On a dual tape (forward mode; forward-over-reverse): value, tangent
    /// and the dual ∇W agree with the composition, for a shared and a base
    /// data matrix, one and two columns — the JVP rule and the rule an HVP
    /// runs.
    #[test]
    fn dual_tape_matches_the_composition() {
        for fam in families() {
            for (m, k, n) in [(1000, 50, 1), (301, 20, 2), (9, 4, 1)] {
                let xt = filled(&[m, k], 4).map(|v| 2.0 * v);
                let xc = Constant::new(xt.clone());
                let (wv, wd) = (filled(&[k, n], 5), filled(&[k, n], 6));
                let w0: Tensor<Dual<f64>> = Tensor::new(
                    [k, n],
                    wv.data()
                        .iter()
                        .zip(wd.data())
                        .map(|(&v, &d)| Dual::new(v, d))
                        .collect(),
                );
                let cw = filled(&[n], 7);
                let run = |fused: bool, shared: bool| {
                    with_family(fam, || {
                        let t = Tape::<Dual<f64>>::new();
                        let x = if shared {
                            t.constant_shared(&xc)
                        } else {
                            t.constant_base(&xt)
                        };
                        let w = t.var(&w0);
                        let y = if fused {
                            x.mean_softplus_matmul(w)
                        } else {
                            x.matmul(w).softplus().mean_axes(&[0], false)
                        };
                        let loss = (y * t.constant_base(&cw)).sum();
                        let g = t.gradients(loss, &[w]);
                        let flat =
                            |v: &[Dual<f64>]| v.iter().flat_map(|d| [d.v, d.d]).collect::<Vec<_>>();
                        (flat(t.value(y).data()), flat(g[0].data()))
                    })
                };
                for shared in [true, false] {
                    let ((y1, g1), (y2, g2)) = (run(true, shared), run(false, shared));
                    for (a, b) in y1.iter().zip(&y2).chain(g1.iter().zip(&g2)) {
                        close(
                            *a,
                            *b,
                            &format!("{fam:?} dual [{m}, {k}]·[{k}, {n}], shared {shared}"),
                        );
                    }
                }
            }
        }
    }

    /// The VJP against finite differences (f64), both operands variables
    /// (the general path, with ∇X) and a large shared X (∇W only).
    #[test]
    fn gradient_matches_finite_differences() {
        let tol = Tolerance::for_f64();
        let x = filled(&[6, 3], 8);
        let w = filled(&[3, 2], 9);
        let c = filled(&[2], 10);
        check_grad(
            move |t, v| (v[0].mean_softplus_matmul(v[1]) * t.constant(&c)).sum(),
            &[x.clone(), w.clone()],
            tol,
        )
        .unwrap();
        check_vjp(|_, v| v[0].mean_softplus_matmul(v[1]), &[x, w], 11, tol).unwrap();
        let xc = Constant::new(filled(&[200, 12], 12));
        for fam in families() {
            with_family(fam, || {
                check_vjp(
                    |t, v| t.constant_shared(&xc).mean_softplus_matmul(v[0]),
                    &[filled(&[12, 2], 13)],
                    14,
                    tol,
                )
                .unwrap()
            });
        }
    }

    #[test]
    #[should_panic(expected = "mean_softplus_matmul: x [3, 4], w [5, 1]: inner dimensions 4 != 5")]
    fn inner_mismatch_panics_with_shapes() {
        let t = Tape::<f64>::new();
        let _ = t
            .var(&Tensor::zeros([3, 4]))
            .mean_softplus_matmul(t.var(&Tensor::zeros([5, 1])));
    }

    #[test]
    #[should_panic(
        expected = "mean_softplus_matmul: x [4], w [4, 1]: expected X [m, k] and W [k, n]"
    )]
    fn rank_one_x_panics_with_shapes() {
        let t = Tape::<f64>::new();
        let _ = t
            .var(&Tensor::zeros([4]))
            .mean_softplus_matmul(t.var(&Tensor::zeros([4, 1])));
    }
}
