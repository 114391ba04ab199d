//! Batched ops: one node for a stack of B independent small problems (a
//! `vmap`-like path). A meta-batch of B tasks whose parameters are stacked
//! along a leading axis runs through one tape with these ops, so every per-node
//! cost (recording, dispatch, the sweep's bookkeeping) is paid once per batch
//! instead of once per task.
//!
//! | op | shapes | forward | JVP | VJP (`g` = output adjoint) |
//! |---|---|---|---|---|
//! | `batched_matmul_t` | `[B, m, k]·[B, n, k]ᵀ → [B, m, n]` | C_b = A_b·W_bᵀ | Ċ_b = Ȧ_b·W_bᵀ + A_b·Ẇ_bᵀ | ḡA_b = g_b·W_b, ḡW_b = g_bᵀ·A_b |
//! | `batched_bias_add` | `[B, m, n] + [B, n] → [B, m, n]` | y_bij = x_bij + c_bj | ẏ_bij = ẋ_bij + ċ_bj | ḡx = g, ḡc_bj = Σ_i g_bij |
//! | `batched_affine` | `[B, m, k]·[B, n, k]ᵀ + [B, n] → [B, m, n]` | Y_b = A_b·W_bᵀ + 1·c_bᵀ | Ẏ_b = Ȧ_b·W_bᵀ + A_b·Ẇ_bᵀ + 1·ċ_bᵀ | as `batched_matmul_t` for A, W; ḡc_bj = Σ_i g_bij |
//! | `batched_affine_relu` | as `batched_affine` | Y_b = relu(A_b·W_bᵀ + 1·c_bᵀ) | as the two ops | ḡZ = 0 + 𝟙(Y > 0)·g, then as `batched_affine` with ḡZ |
//! | `tile_batch(B)` | `[..d] → [B, ..d]` | y_b = x | ẏ_b = ẋ | ḡx = Σ_b g_b |
//!
//! Each node's B products go through the small-product kernels of
//! [`crate::gemm`] as one batch (shapes checked and the kernel chosen once
//! per node, each slice the bits of its own `gemm`); nothing is saved beyond the inputs. As everywhere on the
//! tape, the JVP is the forward rule run on dual numbers, and the VJP rules,
//! written with [`Real`] arithmetic, run on duals for Hessian-vector products.
//! With B = 1 both ops compute the same sums in the same order as
//! `matmul_t` and a broadcast `+`, so a one-task batch reproduces the
//! per-task numbers bit for bit.
//!
//! `batched_affine` is `batched_matmul_t` then `batched_bias_add` in one node
//! (an affine layer of B tasks): its output rows start as the bias and the
//! product is added by the GEMM's epilogue (`C ← 1·A·Wᵀ + 1·C`), which rounds
//! `1·s + 1·c = s + c` as the two ops do; so where the product runs a
//! small-product family (the MLP's shapes, every family) the values and
//! adjoints are the two ops' bits, with one node, one output buffer and one
//! pass over it fewer, and no copy of the output adjoint for the bias's input.

#[cfg(doc)]
use crate::gemm::gemm;
use crate::gemm::{adjoint_gemm, MatRef};
use crate::kernels::batch::{gemm_batch, Batch};
use crate::kernels::relu::{relu_adjoint, relu_in_place};
use crate::kernels::rows::add_rows;
use crate::ops::Op;
use crate::real::Real;
use crate::shape::{check_shapes, Shape, MAX_RANK};
use crate::tape::{Bwd, Var};

/// (B, m, k, n) of `[B, m, k]·[B, n, k]ᵀ`, for op `name`.
#[track_caller]
fn dims_mt(name: &'static str, a: Shape, w: Shape) -> (usize, usize, usize, usize) {
    check_shapes!(a.rank() == 3 && w.rank() == 3, name, ["lhs" => a, "rhs" => w], "expected [B, m, k]·[B, n, k]ᵀ");
    check_shapes!(a.dim(0) == w.dim(0), name, ["lhs" => a, "rhs" => w], "batch dimensions {} != {}", a.dim(0), w.dim(0));
    check_shapes!(a.dim(2) == w.dim(2), name, ["lhs" => a, "rhs" => w], "inner dimensions {} != {}", a.dim(2), w.dim(2));
    (a.dim(0), a.dim(1), a.dim(2), w.dim(1))
}

/// (B, m, n) of `[B, m, n] + [B, n]`.
#[track_caller]
fn dims_bias(x: Shape, c: Shape) -> (usize, usize, usize) {
    let name = "batched_bias_add";
    check_shapes!(x.rank() == 3 && c.rank() == 2, name, ["input" => x, "bias" => c], "expected [B, m, n] + [B, n]");
    check_shapes!(
        x.dim(0) == c.dim(0) && x.dim(2) == c.dim(1),
        name,
        ["input" => x, "bias" => c],
        "bias must be [{}, {}]",
        x.dim(0),
        x.dim(2)
    );
    (x.dim(0), x.dim(1), x.dim(2))
}

/// β of an adjoint GEMM: 0 overwrites a fresh (stale) adjoint, 1 accumulates.
pub(crate) fn beta<T: Real>(fresh: bool) -> T::Base {
    if fresh {
        <T::Base as Real>::zero()
    } else {
        <T::Base as Real>::one()
    }
}

/// (B, m, k, n) of `[B, m, k]·[B, n, k]ᵀ + [B, n]`, for op `name`.
#[track_caller]
fn dims_affine(name: &'static str, a: Shape, w: Shape, c: Shape) -> (usize, usize, usize, usize) {
    let (batch, m, k, n) = dims_mt(name, a, w);
    check_shapes!(
        c.rank() == 2 && c.dim(0) == batch && c.dim(1) == n,
        name,
        ["lhs" => a, "rhs" => w, "bias" => c],
        "bias must be [{batch}, {n}]"
    );
    (batch, m, k, n)
}

/// `Y_b = A_b·W_bᵀ + 1·c_bᵀ` into `out` (`[B, m, n]`): the rows start as
/// the bias, the products are added by the epilogue (`C ← A·Wᵀ + C`).
fn affine_forward<T: Real>(
    x: &[T],
    w: &[T],
    c: &[T],
    (batch, m, k, n): (usize, usize, usize, usize),
    out: &mut [T],
) {
    if out.is_empty() {
        return;
    }
    let one = <T::Base as Real>::one();
    for (oi, ci) in out.chunks_exact_mut(m * n).zip(c.chunks_exact(n)) {
        for row in oi.chunks_exact_mut(n) {
            row.copy_from_slice(ci);
        }
    }
    let xs = (MatRef::row_major(x, m, k), m * k);
    let ws = (MatRef::row_major(w, n, k).t(), n * k);
    gemm_batch(Batch::new(one, xs, ws, one, out, batch));
}

/// VJP of `C_b = A_b·W_bᵀ`: `ḡA_b = g_b·W_b` and `ḡW_b = g_bᵀ·A_b`, one GEMM
/// per slice, operands read through strides.
pub(crate) fn batched_matmul_t_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let dims = dims_mt("batched_matmul_t", b.x_shape(0), b.x_shape(1));
    let g = b.g;
    product_adjoints(b, dims, g, false);
}

/// VJP of `Y_b = A_b·W_bᵀ + 1·c_bᵀ`: the product's adjoints (as
/// [`batched_matmul_t_vjp`]) and the bias's (as [`batched_bias_add_vjp`]),
/// all read from the output adjoint itself.
pub(crate) fn batched_affine_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    affine_vjp(b, "batched_affine", false, false);
}

/// VJP of `Y_b = relu(A_b·W_bᵀ + 1·c_bᵀ)`: relu's adjoint of the
/// pre-activation, `ḡZ = 0 + [Y > 0]·ḡ` (`Y > 0` exactly where `Z > 0`, so
/// the saved output gives the mask), written into the tape's scratch, then
/// [`batched_affine_vjp`]'s adjoints of it: the bits of `relu`'s VJP (into
/// a fresh adjoint) followed by `batched_affine`'s.
pub(crate) fn batched_affine_relu_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    affine_vjp(b, "batched_affine_relu", true, false);
}

/// VJP of [`Var::batched_affine_tiled`] (or, with `relu`,
/// [`Var::batched_affine_relu_tiled`]): as [`batched_affine_vjp`]
/// ([`batched_affine_relu_vjp`]), except that W's and the bias's adjoints
/// are their block sums in block 0, `ḡW_0 += Σ_b ḡZ_bᵀ·A_b` as one product
/// over all B·m rows, `ḡc_0 += Σ_{b,i} ḡZ_bi`; blocks 1.. are not touched.
pub(crate) fn batched_affine_tiled_vjp<T: Real>(b: &mut Bwd<'_, T>, relu: bool) {
    let name = if relu {
        "batched_affine_relu_tiled"
    } else {
        "batched_affine_tiled"
    };
    affine_vjp(b, name, relu, true);
}

/// The VJP of an affine node (op `name`), with relu fused (`relu`), W's
/// adjoint per slice or as its block sum (`summed`, see [`product_adjoints`]).
fn affine_vjp<T: Real>(b: &mut Bwd<'_, T>, name: &'static str, relu: bool, summed: bool) {
    let dims = dims_affine(name, b.x_shape(0), b.x_shape(1), b.x_shape(2));
    let (batch, m, _, n) = dims;
    let g = b.g;
    if !relu {
        product_adjoints(b, dims, g, summed);
        bias_adjoint(b, 2, (batch, m, n), g, summed);
        return;
    }
    if !(b.wants(0) || b.wants(1) || b.wants(2)) {
        return;
    }
    let y = b.out();
    let mut scratch = std::mem::take(b.scratch);
    if scratch.len() < g.len() {
        scratch.resize(g.len(), T::zero());
    }
    let gz = &mut scratch[..g.len()];
    relu_adjoint(y, g, gz);
    product_adjoints(b, dims, gz, summed);
    bias_adjoint(b, 2, (batch, m, n), gz, summed);
    *b.scratch = scratch;
}

/// The adjoints of inputs 0 (A) and 1 (W) of a node `C_b = A_b·W_bᵀ (+ …)`
/// with dims (B, m, k, n): one batch of B products per operand
/// ([`gemm_batch`]: the kernel chosen once, each slice [`gemm`]'s bits).
/// `g` is the node's output adjoint (or, fused, its pre-activation's).
/// With `summed`, W's adjoint is instead its block sum in block 0,
/// `ḡW_0 += Σ_b g_bᵀ·A_b = gᵀ·A` with `g [B·m, n]` and `A [B·m, k]` the
/// whole buffers: one `[n, B·m]·[B·m, k]` product (its tangent part only
/// when W's primal adjoint is dead, [`crate::Tape::tangent_leaf_with`]),
/// summed over all B·m rows in one pass rather than per slice and then
/// over slices; the other blocks are not touched.
fn product_adjoints<T: Real>(
    b: &mut Bwd<'_, T>,
    (batch, m, k, n): (usize, usize, usize, usize),
    g: &[T],
    summed: bool,
) {
    let (x, w) = (b.x(0), b.x(1));
    let one = <T::Base as Real>::one();
    if batch == 0 {
        return;
    }
    let gs = (MatRef::row_major(g, m, n), m * n);
    if b.wants(0) {
        let (ga, fresh) = b.g_in_overwrite(0);
        let ws = (MatRef::row_major(w, n, k), n * k);
        gemm_batch(Batch::new(one, gs, ws, beta::<T>(fresh), ga, batch));
    }
    if b.wants(1) && summed {
        let primal = b.wants_primal(1);
        let (gw, fresh) = b.g_in_overwrite(1);
        let (gall, xall) = (
            MatRef::row_major(g, batch * m, n),
            MatRef::row_major(x, batch * m, k),
        );
        adjoint_gemm(
            primal,
            one,
            gall.t(),
            xall,
            beta::<T>(fresh),
            &mut gw[..n * k],
        );
    } else if b.wants(1) {
        let (gw, fresh) = b.g_in_overwrite(1);
        let xs = (MatRef::row_major(x, m, k), m * k);
        gemm_batch(Batch::new(
            one,
            (gs.0.t(), gs.1),
            xs,
            beta::<T>(fresh),
            gw,
            batch,
        ));
    }
}

/// VJP of `y_bij = x_bij + c_bj`: `ḡx = g`, `ḡc_bj = Σ_i g_bij` (summed over
/// i in increasing order).
pub(crate) fn batched_bias_add_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    let (batch, m, n) = dims_bias(b.x_shape(0), b.x_shape(1));
    let g = b.g;
    if b.wants(0) {
        let (gx, fresh) = b.g_in_overwrite(0);
        if fresh {
            gx.copy_from_slice(g);
        } else {
            gx.iter_mut().zip(g).for_each(|(a, &v)| *a += v);
        }
    }
    bias_adjoint(b, 1, (batch, m, n), g, false);
}

/// The adjoint of input `which`, a `[B, n]` bias added to every row of a
/// `[B, m, n]` output with adjoint `g`: `ḡc_bj += Σ_i g_bij`, summed over i
/// in increasing order; with `summed`, the block sum into block 0 alone,
/// `ḡc_0j += Σ_{b,i} g_bij` over all B·m rows in order (blocks 1.. untouched).
fn bias_adjoint<T: Real>(
    b: &mut Bwd<'_, T>,
    which: usize,
    (batch, m, n): (usize, usize, usize),
    g: &[T],
    summed: bool,
) {
    if b.wants(which) {
        // A fresh adjoint starts from `0 + row 0` (the bits of a zero-fill
        // then `+=`) without the zero-fill pass; `add_rows` sums the columns
        // at the family's vector width, in registers across the rows.
        let (gc, fresh) = b.g_in_overwrite(which);
        if summed {
            if batch > 0 {
                add_rows(&mut gc[..n], &g[..batch * m * n], fresh);
            }
            return;
        }
        for (i, gb) in gc.chunks_exact_mut(n).take(batch).enumerate() {
            add_rows(gb, &g[i * m * n..(i + 1) * m * n], fresh);
        }
    }
}

/// VJP of `y_b = x` (B copies): `ḡx = Σ_b g_b`, summed over b in increasing
/// order, one contiguous block at a time.
pub(crate) fn tile_batch_vjp<T: Real>(b: &mut Bwd<'_, T>) {
    if !b.wants(0) {
        return;
    }
    let g = b.g;
    let (gx, fresh) = b.g_in_overwrite(0);
    let n = gx.len();
    let mut blocks = g.chunks_exact(n);
    if fresh {
        gx.copy_from_slice(blocks.next().expect("B ≥ 1"));
    }
    for gb in blocks {
        gx.iter_mut().zip(gb).for_each(|(a, &v)| *a += v);
    }
}

impl<'t, T: Real> Var<'t, T> {
    /// B copies of `self` stacked along a new leading axis: `[..d] → [B, ..d]`
    /// (the same values as `reshape([1, ..d]).broadcast_to([B, ..d])`, by
    /// block copies). Its adjoint sums the B blocks: a batch of tasks that
    /// all start from θ gets ∇θ = Σ_b ∇φ_b.
    ///
    /// # Panics
    /// If `b` = 0 or `self` has rank [`MAX_RANK`] (the result has one axis more):
    /// `tile_batch: x [2, 3, 4, 5]: need B ≥ 1 (got 2) and rank < 4`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::vector(vec![1.0, 2.0]));
    /// let y = x.tile_batch(3);
    /// assert_eq!(y.shape().dims(), &[3, 2]);
    /// t.backward((y * y).sum());
    /// assert_eq!(x.grad().data(), &[6.0, 12.0]); // 3 copies of 2x
    /// ```
    #[track_caller]
    pub fn tile_batch(self, b: usize) -> Var<'t, T> {
        let s = self.shape();
        check_shapes!(b > 0 && s.rank() < MAX_RANK, "tile_batch", ["x" => s], "need B ≥ 1 (got {b}) and rank < {MAX_RANK}");
        let mut d = vec![b];
        d.extend_from_slice(s.dims());
        let n = s.numel();
        self.tape
            .record_overwrite(Op::TileBatch, &[self], Shape::new(&d), |f| {
                let x = f.x(0);
                for o in f.out.chunks_exact_mut(n) {
                    o.copy_from_slice(x);
                }
            })
    }

    /// Batched product with transposed right operands:
    /// `[B, m, k]·[B, n, k]ᵀ → [B, m, n]`, C_b = A_b·W_bᵀ for each b (a stack
    /// of B affine layers' `x·Wᵀ` with their own weights). One node for the
    /// whole stack; slice b equals `A_b.matmul_t(W_b)` bit for bit.
    ///
    /// # Panics
    /// On ranks other than 3 or mismatched dimensions:
    /// `batched_matmul_t: lhs [2, 3, 4], rhs [2, 5, 3]: inner dimensions 4 != 3`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// // Two batches of a [1, 2]·[1, 2]ᵀ product.
    /// let a = t.var(&Tensor::new(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]));
    /// let w = t.var(&Tensor::new(&[2, 1, 2], vec![5.0, 6.0, 7.0, 8.0]));
    /// let c = a.batched_matmul_t(w);
    /// assert_eq!(c.value().data(), &[17.0, 53.0]); // 1·5 + 2·6, 3·7 + 4·8
    /// ```
    #[track_caller]
    pub fn batched_matmul_t(self, rhs: Var<'t, T>) -> Var<'t, T> {
        let (batch, m, k, n) = dims_mt("batched_matmul_t", self.shape(), rhs.shape());
        let zero = <T::Base as Real>::zero();
        let one = <T::Base as Real>::one();
        let out = Shape::new(&[batch, m, n]);
        self.tape
            .record_overwrite(Op::BatchedMatmulT, &[self, rhs], out, |f| {
                if batch > 0 {
                    let xs = (MatRef::row_major(f.x(0), m, k), m * k);
                    let ws = (MatRef::row_major(f.x(1), n, k).t(), n * k);
                    gemm_batch(Batch::new(one, xs, ws, zero, f.out, batch));
                }
            })
    }

    /// Adds a per-batch bias row to every row of its batch:
    /// `[B, m, n] + [B, n] → [B, m, n]`, y_bij = x_bij + c_bj (a stack of B
    /// affine layers' `+ b` with their own biases). The adjoint of `c` sums
    /// over the rows.
    ///
    /// # Panics
    /// If `self` is not rank 3 or `bias` is not `[B, n]`:
    /// `batched_bias_add: input [2, 3, 4], bias [2, 3]: bias must be [2, 4]`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// let x = t.var(&Tensor::new(&[2, 2, 1], vec![1.0, 2.0, 3.0, 4.0]));
    /// let c = t.var(&Tensor::new(&[2, 1], vec![10.0, 20.0]));
    /// let y = x.batched_bias_add(c);
    /// assert_eq!(y.value().data(), &[11.0, 12.0, 23.0, 24.0]);
    /// t.backward(y.sum());
    /// assert_eq!(c.grad().data(), &[2.0, 2.0]); // two rows per batch
    /// ```
    #[track_caller]
    pub fn batched_bias_add(self, bias: Var<'t, T>) -> Var<'t, T> {
        let (_, m, n) = dims_bias(self.shape(), bias.shape());
        self.tape
            .record_overwrite(Op::BatchedBiasAdd, &[self, bias], self.shape(), |f| {
                let (x, c) = (f.x(0), f.x(1));
                for ((os, xs), cb) in f
                    .out
                    .chunks_exact_mut(m * n)
                    .zip(x.chunks_exact(m * n))
                    .zip(c.chunks_exact(n))
                {
                    for (orow, xrow) in os.chunks_exact_mut(n).zip(xs.chunks_exact(n)) {
                        for ((o, &a), &b) in orow.iter_mut().zip(xrow).zip(cb) {
                            *o = a + b;
                        }
                    }
                }
            })
    }

    /// An affine layer for each of B tasks in one node:
    /// `[B, m, k]·[B, n, k]ᵀ + [B, n] → [B, m, n]`,
    /// Y_b = A_b·W_bᵀ + 1·c_bᵀ (row i of slice b is `A_b[i]·W_bᵀ + c_b`). The
    /// same values and adjoints as `self.batched_matmul_t(w).batched_bias_add(bias)`,
    /// bit for bit where the products run a small-product family (module docs),
    /// with one node and one output buffer instead of two.
    ///
    /// # Panics
    /// On ranks other than 3 (for `self`, `w`) or 2 (for `bias`), or
    /// mismatched dimensions:
    /// `batched_affine: lhs [2, 3, 4], rhs [2, 5, 4], bias [2, 4]: bias must be [2, 5]`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// // Two tasks, one row each: [1, 2]·[5, 6]ᵀ + 10 and [3, 4]·[7, 8]ᵀ + 20.
    /// let a = t.var(&Tensor::new(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]));
    /// let w = t.var(&Tensor::new(&[2, 1, 2], vec![5.0, 6.0, 7.0, 8.0]));
    /// let c = t.var(&Tensor::new(&[2, 1], vec![10.0, 20.0]));
    /// let y = a.batched_affine(w, c);
    /// assert_eq!(y.value().data(), &[27.0, 73.0]);
    /// t.backward(y.sum());
    /// assert_eq!(c.grad().data(), &[1.0, 1.0]);
    /// assert_eq!(w.grad().data(), &[1.0, 2.0, 3.0, 4.0]); // ḡW_b = g_bᵀ·A_b
    /// ```
    #[track_caller]
    pub fn batched_affine(self, w: Var<'t, T>, bias: Var<'t, T>) -> Var<'t, T> {
        let dims = dims_affine("batched_affine", self.shape(), w.shape(), bias.shape());
        let out = Shape::new(&[dims.0, dims.1, dims.3]);
        self.tape
            .record_overwrite(Op::BatchedAffine, &[self, w, bias], out, |f| {
                affine_forward(f.x(0), f.x(1), f.x(2), dims, f.out)
            })
    }

    /// `relu(self.batched_affine(w, bias))` in one node:
    /// `Y_b = relu(A_b·W_bᵀ + 1·c_bᵀ)`, relu applied in place on the
    /// layer's output, its VJP taking the mask from the saved output
    /// (`[Y > 0]`, exactly where the pre-activation is positive) and feeding
    /// the masked adjoint to the layer's products. The same values and
    /// adjoints as the two ops, bit for bit, with one node, one output
    /// buffer and one pass over them fewer.
    ///
    /// # Panics
    /// As [`Var::batched_affine`], naming `batched_affine_relu`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// // Two tasks, one row each: relu([1, 2]·[5, 6]ᵀ − 20) and relu([3, 4]·[7, 8]ᵀ − 20).
    /// let a = t.var(&Tensor::new(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]));
    /// let w = t.var(&Tensor::new(&[2, 1, 2], vec![5.0, 6.0, 7.0, 8.0]));
    /// let c = t.var(&Tensor::new(&[2, 1], vec![-20.0, -20.0]));
    /// let y = a.batched_affine_relu(w, c);
    /// assert_eq!(y.value().data(), &[0.0, 33.0]); // relu(−3), relu(33)
    /// t.backward(y.sum());
    /// assert_eq!(c.grad().data(), &[0.0, 1.0]); // no gradient through the clipped unit
    /// assert_eq!(w.grad().data(), &[0.0, 0.0, 3.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn batched_affine_relu(self, w: Var<'t, T>, bias: Var<'t, T>) -> Var<'t, T> {
        let (batch, m, k, n) =
            dims_affine("batched_affine_relu", self.shape(), w.shape(), bias.shape());
        let out = Shape::new(&[batch, m, n]);
        self.tape
            .record_overwrite(Op::BatchedAffineRelu, &[self, w, bias], out, |f| {
                affine_forward(f.x(0), f.x(1), f.x(2), (batch, m, k, n), f.out);
                relu_in_place(f.out);
            })
    }

    /// [`Var::batched_affine`] for a weight stack `w` and a bias stack whose
    /// adjoints are read only through their block sums Σ_b ḡW_b, Σ_b ḡc_b:
    /// stacks tiled from one set (`W_b = W`, as MAML's first inner state
    /// φ_0 = (θ, …, θ)), whose gradient is the sum of the blocks. The same
    /// value and the same adjoint of `self`, bit for bit; W's and the
    /// bias's adjoints are accumulated into block 0 as their block sums,
    ///
    /// ḡW_0 += Σ_b g_bᵀ·A_b = gᵀ·A,   ḡc_0 += Σ_{b,i} g_bi,
    ///
    /// one `[n, B·m]·[B·m, k]` product over the whole stack (`g [B·m, n]`,
    /// `A [B·m, k]`) instead of B products and a sum of their blocks, and
    /// blocks 1.. are not touched: they hold whatever they held (on a fresh
    /// adjoint, stale values), so every consumer of `w` and `bias` must be a
    /// tiled op and their readers must read block 0 alone. The block sums
    /// are `batched_affine`'s up to rounding (each element one sum over all
    /// B·m rows instead of B sums of m rows added in turn).
    ///
    /// # Panics
    /// As [`Var::batched_affine`], naming `batched_affine_tiled`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// // Two tasks, one row each, the same weights [5, 6].
    /// let a = t.var(&Tensor::new(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]));
    /// let w = t.var(&Tensor::new(&[2, 1, 2], vec![5.0, 6.0, 5.0, 6.0]));
    /// let c = t.var(&Tensor::new(&[2, 1], vec![10.0, 20.0]));
    /// let y = a.batched_affine_tiled(w, c);
    /// assert_eq!(y.value().data(), &[27.0, 59.0]);
    /// t.backward(y.sum());
    /// // Block 0 holds Σ_b g_bᵀ·A_b = [1 + 3, 2 + 4] and Σ_b g_b = 2.
    /// assert_eq!(w.grad().data()[..2], [4.0, 6.0]);
    /// assert_eq!(c.grad().data()[0], 2.0);
    /// assert_eq!(a.grad().data(), &[5.0, 6.0, 5.0, 6.0]); // as batched_affine
    /// ```
    #[track_caller]
    pub fn batched_affine_tiled(self, w: Var<'t, T>, bias: Var<'t, T>) -> Var<'t, T> {
        self.affine_tiled(w, bias, false)
    }

    /// `relu(self.batched_affine_tiled(w, bias))` in one node: the forward
    /// and the adjoint of `self` of [`Var::batched_affine_relu`], W's and
    /// the bias's adjoints as their block sums in block 0 as in
    /// [`Var::batched_affine_tiled`].
    ///
    /// # Panics
    /// As [`Var::batched_affine`], naming `batched_affine_relu_tiled`.
    ///
    /// ```
    /// use tape::{Tape, Tensor};
    /// let t = Tape::<f64>::new();
    /// // relu([1, 2]·[5, 6]ᵀ − 20) = 0 and relu([3, 4]·[5, 6]ᵀ − 20) = 19.
    /// let a = t.var(&Tensor::new(&[2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]));
    /// let w = t.var(&Tensor::new(&[2, 1, 2], vec![5.0, 6.0, 5.0, 6.0]));
    /// let c = t.var(&Tensor::new(&[2, 1], vec![-20.0, -20.0]));
    /// let y = a.batched_affine_relu_tiled(w, c);
    /// assert_eq!(y.value().data(), &[0.0, 19.0]);
    /// t.backward(y.sum());
    /// assert_eq!(w.grad().data()[..2], [3.0, 4.0]); // the clipped task adds 0
    /// ```
    #[track_caller]
    pub fn batched_affine_relu_tiled(self, w: Var<'t, T>, bias: Var<'t, T>) -> Var<'t, T> {
        self.affine_tiled(w, bias, true)
    }

    /// The node of [`Var::batched_affine_tiled`] (`relu`: of
    /// [`Var::batched_affine_relu_tiled`]).
    #[track_caller]
    fn affine_tiled(self, w: Var<'t, T>, bias: Var<'t, T>, relu: bool) -> Var<'t, T> {
        let op = Op::BatchedAffineTiled { relu };
        let dims = dims_affine(op.name(), self.shape(), w.shape(), bias.shape());
        let out = Shape::new(&[dims.0, dims.1, dims.3]);
        self.tape.record_overwrite(op, &[self, w, bias], out, |f| {
            affine_forward(f.x(0), f.x(1), f.x(2), dims, f.out);
            if relu {
                relu_in_place(f.out);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Tape, Tensor};

    /// Deterministic non-trivial entries.
    fn filled(shape: &[usize], seed: u64) -> Tensor<f32> {
        Tensor::from_fn(shape, |i| {
            ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0
        })
    }

    /// Slice b of the batched ops equals the per-slice `matmul_t` and
    /// broadcast `+`, value and gradients, bit for bit (the MLP's shapes).
    #[test]
    fn each_slice_equals_the_unbatched_ops_bit_for_bit() {
        let (bsz, m, k, n) = (3, 10, 40, 40);
        let (a, w, c) = (
            filled(&[bsz, m, k], 1),
            filled(&[bsz, n, k], 2),
            filled(&[bsz, n], 3),
        );
        let t = Tape::<f32>::new();
        let (av, wv, cv) = (t.var(&a), t.var(&w), t.var(&c));
        let y = av.batched_matmul_t(wv).batched_bias_add(cv).relu();
        t.backward((y * y).sum());
        let (yb, ga, gw, gc) = (y.value(), av.grad(), wv.grad(), cv.grad());
        for b in 0..bsz {
            let s = Tape::<f32>::new();
            let slice = |x: &Tensor<f32>, len: usize| {
                let d = &x.data()[b * len..(b + 1) * len];
                let dims = &x.dims()[1..];
                Tensor::new(dims, d.to_vec())
            };
            let (ab, wb, cb) = (
                s.var(&slice(&a, m * k)),
                s.var(&slice(&w, n * k)),
                s.var(&slice(&c, n)),
            );
            let yy = (ab.matmul_t(wb) + cb).relu();
            s.backward((yy * yy).sum());
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(yy.value().data()), bits(slice(&yb, m * n).data()));
            assert_eq!(bits(ab.grad().data()), bits(slice(&ga, m * k).data()));
            assert_eq!(bits(wb.grad().data()), bits(slice(&gw, n * k).data()));
            assert_eq!(bits(cb.grad().data()), bits(slice(&gc, n).data()));
        }
    }

    #[test]
    #[should_panic(
        expected = "batched_matmul_t: lhs [2, 3, 4], rhs [2, 5, 3]: inner dimensions 4 != 3"
    )]
    fn matmul_inner_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t
            .var(&Tensor::zeros([2, 3, 4]))
            .batched_matmul_t(t.var(&Tensor::zeros([2, 5, 3])));
    }

    #[test]
    #[should_panic(
        expected = "batched_matmul_t: lhs [2, 3, 4], rhs [3, 5, 4]: batch dimensions 2 != 3"
    )]
    fn matmul_batch_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t
            .var(&Tensor::zeros([2, 3, 4]))
            .batched_matmul_t(t.var(&Tensor::zeros([3, 5, 4])));
    }

    #[test]
    #[should_panic(expected = "batched_matmul_t: lhs [3, 4], rhs [5, 4]: expected [B, m, k]")]
    fn matmul_rank_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t
            .var(&Tensor::zeros([3, 4]))
            .batched_matmul_t(t.var(&Tensor::zeros([5, 4])));
    }

    /// `tile_batch` equals `reshape` + `broadcast_to`, value and gradient,
    /// bit for bit (the gradient sums the blocks in the same order).
    #[test]
    fn tile_batch_equals_broadcast_to() {
        let x = filled(&[40, 40], 5);
        let w = filled(&[13, 40, 40], 6);
        let run = |tiled: bool| {
            let t = Tape::<f32>::new();
            let (xv, wv) = (t.var(&x), t.constant(&w));
            let y = if tiled {
                xv.tile_batch(13)
            } else {
                xv.reshape([1, 40, 40]).broadcast_to([13, 40, 40])
            };
            t.backward((y * wv).sum());
            (y.value(), xv.grad())
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        assert_eq!(y1.data(), y2.data());
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(g1.data()), bits(g2.data()));
    }

    #[test]
    #[should_panic(expected = "tile_batch: x [2, 3, 4, 5]: need B ≥ 1 (got 2) and rank < 4")]
    fn tile_batch_of_rank_4_names_op_and_shape() {
        let t = Tape::<f64>::new();
        let _ = t.var(&Tensor::zeros([2, 3, 4, 5])).tile_batch(2);
    }

    #[test]
    #[should_panic(expected = "tile_batch: x [3]: need B ≥ 1 (got 0)")]
    fn tile_batch_of_zero_copies_names_op_and_shape() {
        let t = Tape::<f64>::new();
        let _ = t.var(&Tensor::zeros([3])).tile_batch(0);
    }

    #[test]
    #[should_panic(
        expected = "batched_bias_add: input [2, 3, 4], bias [2, 3]: bias must be [2, 4]"
    )]
    fn bias_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t
            .var(&Tensor::zeros([2, 3, 4]))
            .batched_bias_add(t.var(&Tensor::zeros([2, 3])));
    }

    /// `batched_affine` equals `batched_matmul_t` then `batched_bias_add`,
    /// value and the three adjoints, bit for bit, on the sine MLP's three
    /// layer shapes (k = 1, the 40 × 40 layer, n = 1) under every kernel
    /// family this CPU has.
    #[test]
    fn affine_equals_matmul_t_then_bias_add_bit_for_bit() {
        use crate::kernels::{with_family, Family};
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
            for (bsz, m, k, n) in [
                (13, 10, 1, 40),
                (13, 10, 40, 40),
                (3, 10, 40, 1),
                (2, 3, 5, 7),
            ] {
                let (a, w, c) = (
                    filled(&[bsz, m, k], 7),
                    filled(&[bsz, n, k], 8),
                    filled(&[bsz, n], 9),
                );
                let run = |fused: bool| {
                    with_family(family, || {
                        let t = Tape::<f32>::new();
                        let (av, wv, cv) = (t.var(&a), t.var(&w), t.var(&c));
                        let y = if fused {
                            av.batched_affine(wv, cv)
                        } else {
                            av.batched_matmul_t(wv).batched_bias_add(cv)
                        };
                        // A non-uniform output adjoint: g = 2y.
                        t.backward((y * y).sum());
                        [y.value(), av.grad(), wv.grad(), cv.grad()].map(|x| bits(x.data()))
                    })
                };
                assert_eq!(
                    run(true),
                    run(false),
                    "{family:?} [{bsz}, {m}, {k}]·[{bsz}, {n}, {k}]ᵀ"
                );
            }
        }
    }

    /// `batched_affine_relu` equals `batched_affine` then `relu`, value and
    /// the three adjoints, bit for bit, on `f32` and `Dual<f32>` tapes (the
    /// VJP run on duals, as forward-over-reverse does), the sine MLP's layer
    /// shapes and an edge shape, under every kernel family this CPU has.
    /// The entries have both signs, so about half the units are clipped.
    #[test]
    fn affine_relu_equals_affine_then_relu_bit_for_bit() {
        use crate::kernels::{with_family, Family};
        use crate::real::{Dual, Real};
        fn check<T: Real + PartialEq + std::fmt::Debug>(make: impl Fn(f32, f32) -> T) {
            let tensor = |shape: &[usize], seed: u64| {
                let (v, d) = (filled(shape, seed), filled(shape, seed + 50));
                let data = v
                    .data()
                    .iter()
                    .zip(d.data())
                    .map(|(&a, &b)| make(a, b))
                    .collect();
                Tensor::new(shape, data)
            };
            for family in Family::ALL.into_iter().filter(|f| f.is_available()) {
                for (bsz, m, k, n) in [(13, 10, 1, 40), (13, 10, 40, 40), (2, 3, 5, 7)] {
                    let (a, w, c) = (
                        tensor(&[bsz, m, k], 7),
                        tensor(&[bsz, n, k], 8),
                        tensor(&[bsz, n], 9),
                    );
                    let s = tensor(&[bsz, m, n], 10);
                    let run = |fused: bool| {
                        with_family(family, || {
                            let t = Tape::<T>::new();
                            let (av, wv, cv, sv) = (t.var(&a), t.var(&w), t.var(&c), t.var(&s));
                            let y = if fused {
                                av.batched_affine_relu(wv, cv)
                            } else {
                                av.batched_affine(wv, cv).relu()
                            };
                            // A non-uniform output adjoint: g = 2y + s.
                            t.backward((y * y + y * sv).sum());
                            [y.value(), av.grad(), wv.grad(), cv.grad()]
                        })
                    };
                    let (fused, two) = (run(true), run(false));
                    for (x, y) in fused.iter().zip(&two) {
                        assert!(
                            x.data() == y.data(),
                            "{family:?} [{bsz}, {m}, {k}]·[{bsz}, {n}, {k}]ᵀ"
                        );
                    }
                }
            }
        }
        check(|v, _| v);
        check(Dual::new);
    }

    /// The tiled affine ops against `batched_affine(_relu)`: the same value
    /// and adjoint of A, bit for bit; W's and the bias's adjoints have the
    /// same block sums in block 0 within 1e-13 relative (f64: one sum over
    /// B·m rows against B sums of m rows), on a fresh and on a reused
    /// (stale) tape, with W and the bias also fed to a second node (their
    /// adjoints then accumulated); on a `Dual<f64>` tape with W's primal
    /// adjoint dead (`tangent_leaf_with`) the same for the tangent parts;
    /// and (without relu) W's block sum matches central differences of the
    /// loss at W = tile(θ) in θ.
    #[test]
    fn tiled_affine_sums_the_weight_and_bias_blocks() {
        use crate::real::{Dual, Real};
        use crate::Var;
        let f64s = |shape: &[usize], seed| -> Tensor<f64> {
            let t = filled(shape, seed);
            Tensor::new(shape, t.data().iter().map(|&v| v as f64).collect())
        };
        // The loss: the layer twice (the second on other inputs), so W's
        // adjoint is fresh for one node and accumulated by the other.
        fn loss<'t, T: Real>(
            tiled: bool,
            relu: bool,
            (a, w, c, s): (Var<'t, T>, Var<'t, T>, Var<'t, T>, Var<'t, T>),
        ) -> Var<'t, T> {
            let layer = |x: Var<'t, T>| match (tiled, relu) {
                (true, true) => x.batched_affine_relu_tiled(w, c),
                (true, false) => x.batched_affine_tiled(w, c),
                (false, true) => x.batched_affine_relu(w, c),
                (false, false) => x.batched_affine(w, c),
            };
            let (y, z) = (layer(a), layer(a.mul_scalar(0.5)));
            (y * y + y * s).sum() + (z * s).sum()
        }
        let block_sums = |g: &[f64], blocks: usize| {
            let n = g.len() / blocks;
            let mut sum = g[..n].to_vec();
            for gb in g.chunks_exact(n).skip(1) {
                sum.iter_mut().zip(gb).for_each(|(a, &b)| *a += b);
            }
            sum
        };
        let close = |x: &[f64], y: &[f64], what: &str| {
            let scale = y.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in x.iter().zip(y).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-13 * scale,
                    "{what} {i}: {a} against {b}"
                );
            }
        };
        for (bsz, m, k, n) in [
            (13, 10, 1, 40),
            (13, 10, 40, 40),
            (3, 10, 40, 1),
            (2, 3, 5, 7),
        ] {
            let theta = f64s(&[n, k], 8);
            let w = Tensor::new([bsz, n, k], theta.data().repeat(bsz));
            let (a, c, s) = (
                f64s(&[bsz, m, k], 7),
                f64s(&[bsz, n], 9),
                f64s(&[bsz, m, n], 10),
            );
            for relu in [false, true] {
                let what = format!("[{bsz}, {m}, {k}]·[{bsz}, {n}, {k}]ᵀ, relu {relu}");
                let run = |t: &Tape<f64>, tiled: bool| {
                    let v = (t.var(&a), t.var(&w), t.var(&c), t.var(&s));
                    let l = loss(tiled, relu, v);
                    t.backward(l);
                    (l.value(), v.0.grad(), v.1.grad(), v.2.grad())
                };
                let per_slice = run(&Tape::new(), false);
                let mut reused = Tape::new();
                {
                    let stale = w.map(|e| 3.0 * e + 1.0);
                    let v = (
                        reused.var(&a),
                        reused.var(&stale),
                        reused.var(&c),
                        reused.var(&s),
                    );
                    reused.backward(loss(false, relu, v));
                }
                reused.clear();
                for tiled in [run(&Tape::new(), true), run(&reused, true)] {
                    assert_eq!(tiled.0.data(), per_slice.0.data(), "{what}");
                    assert_eq!(tiled.1.data(), per_slice.1.data(), "{what}");
                    let (gw, want) = (tiled.2.data(), block_sums(per_slice.2.data(), bsz));
                    close(&gw[..n * k], &want, &what);
                    let (gc, want) = (tiled.3.data(), block_sums(per_slice.3.data(), bsz));
                    close(&gc[..n], &want, &format!("{what}: bias"));
                }
                // Central differences in θ of the loss at W = tile(θ).
                let at = |e: usize, d: f64| {
                    let mut th = theta.clone();
                    th.data_mut()[e] += d;
                    let t = Tape::<f64>::new();
                    let wt = t.var(&Tensor::new([bsz, n, k], th.data().repeat(bsz)));
                    loss(true, relu, (t.var(&a), wt, t.var(&c), t.var(&s)))
                        .value()
                        .data()[0]
                };
                // (Without relu: its kinks are within reach of the steps.)
                let g0 = run(&Tape::new(), true).2;
                for e in (0..n * k).filter(|_| !relu) {
                    let fd = (at(e, 1e-4) - at(e, -1e-4)) / 2e-4;
                    let an = g0.data()[e];
                    assert!(
                        (fd - an).abs() <= 1e-5 * (1.0 + an.abs()),
                        "{what} θ {e}: {fd} against {an}"
                    );
                }
                // Dual<f64>: W with a tangent and a dead primal adjoint.
                let dual = |x: &Tensor<f64>, seed| {
                    let d = f64s(x.dims(), seed);
                    let data = x
                        .data()
                        .iter()
                        .zip(d.data())
                        .map(|(&v, &t)| Dual::new(v, t))
                        .collect();
                    Tensor::new(x.dims(), data)
                };
                let (ad, wd, cd, sd) = (dual(&a, 20), dual(&w, 21), dual(&c, 22), dual(&s, 23));
                let run_dual = |tiled: bool| {
                    let t = Tape::<Dual<f64>>::new();
                    let wv = t.tangent_leaf_with(wd.shape(), |o| o.copy_from_slice(wd.data()));
                    let v = (t.var(&ad), wv, t.var(&cd), t.var(&sd));
                    t.backward(loss(tiled, relu, v));
                    let tangents =
                        |x: Tensor<Dual<f64>>| x.data().iter().map(|g| g.d).collect::<Vec<_>>();
                    (v.0.grad(), tangents(v.1.grad()), tangents(v.2.grad()))
                };
                let (tiled, two) = (run_dual(true), run_dual(false));
                assert!(tiled.0.data() == two.0.data(), "{what}: dual");
                close(
                    &tiled.1[..n * k],
                    &block_sums(&two.1, bsz),
                    &format!("{what}: dual"),
                );
                close(
                    &tiled.2[..n],
                    &block_sums(&two.2, bsz),
                    &format!("{what}: dual bias"),
                );
            }
        }
    }

    #[test]
    #[should_panic(
        expected = "batched_affine_relu: lhs [2, 3, 4], rhs [2, 5, 3]: inner dimensions 4 != 3"
    )]
    fn affine_relu_inner_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t.var(&Tensor::zeros([2, 3, 4])).batched_affine_relu(
            t.var(&Tensor::zeros([2, 5, 3])),
            t.var(&Tensor::zeros([2, 5])),
        );
    }

    /// The loss of `fresh_and_touched_adjoints_*`: each of `relu`, `mse` and
    /// the bias of `batched_affine` has one input whose adjoint its VJP finds
    /// fresh and one it finds touched (a second consumer, recorded later, ran
    /// its VJP first), so both branches of their VJPs run.
    fn fan_out_loss<'t>(
        (x, w, c, y): (
            crate::Var<'t, f64>,
            crate::Var<'t, f64>,
            crate::Var<'t, f64>,
            crate::Var<'t, f64>,
        ),
    ) -> crate::Var<'t, f64> {
        let h = x.batched_affine(w, c); // fresh for relu
        let g = x.batched_affine(w, c.mul_scalar(0.5)); // touched for relu
        let r = h.relu() + g.relu();
        let touched = g.sum() + c.sum(); // c: touched for the first affine's bias VJP
        let z = r.mse(y) + r.mse(y.mul_scalar(2.0)) + (r * r).mean();
        z + touched.mul_scalar(0.25) + y.sum()
    }

    /// Relu's, mse's and the bias's VJPs write `0 + v` into a fresh adjoint
    /// (no zero-fill) and add into a touched one: on a tape reused after
    /// `clear` (stale adjoint buffers) the gradients are a fresh tape's bit
    /// for bit, and they match central differences.
    #[test]
    fn fresh_and_touched_adjoints_match_a_fresh_tape_and_differences() {
        let f64s = |shape: &[usize], seed| -> Tensor<f64> {
            let t = filled(shape, seed);
            Tensor::new(shape, t.data().iter().map(|&v| v as f64).collect())
        };
        let inputs = [
            f64s(&[2, 3, 4], 11),
            f64s(&[2, 5, 4], 12),
            f64s(&[2, 5], 13),
            f64s(&[2, 3, 5], 14),
        ];
        let grads = |t: &Tape<f64>| {
            let v: Vec<_> = inputs.iter().map(|x| t.var(x)).collect();
            let loss = fan_out_loss((v[0], v[1], v[2], v[3]));
            t.backward(loss);
            (
                loss.value().data()[0],
                v.iter().map(|x| x.grad()).collect::<Vec<_>>(),
            )
        };
        let (_, fresh) = grads(&Tape::new());
        // Stale buffers: a first sweep on other values, then clear.
        let mut reused = Tape::new();
        {
            let v: Vec<_> = inputs
                .iter()
                .map(|x| reused.var(&x.map(|e| 3.0 * e + 1.0)))
                .collect();
            reused.backward(fan_out_loss((v[0], v[1], v[2], v[3])));
        }
        reused.clear();
        let (_, again) = grads(&reused);
        for (a, b) in fresh.iter().zip(&again) {
            let bits = |x: &Tensor<f64>| x.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b));
        }
        // Central differences, one element at a time.
        let h = 1e-6;
        for (which, g) in fresh.iter().enumerate() {
            for e in 0..g.data().len() {
                let at = |d: f64| {
                    let mut xs = inputs.clone();
                    xs[which].data_mut()[e] += d;
                    let t = Tape::<f64>::new();
                    let v: Vec<_> = xs.iter().map(|x| t.var(x)).collect();
                    fan_out_loss((v[0], v[1], v[2], v[3])).value().data()[0]
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                let an = g.data()[e];
                assert!(
                    (fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
                    "input {which} element {e}: difference {fd}, VJP {an}"
                );
            }
        }
    }

    #[test]
    #[should_panic(
        expected = "batched_affine: lhs [2, 3, 4], rhs [2, 5, 4], bias [2, 4]: bias must be [2, 5]"
    )]
    fn affine_bias_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t.var(&Tensor::zeros([2, 3, 4])).batched_affine(
            t.var(&Tensor::zeros([2, 5, 4])),
            t.var(&Tensor::zeros([2, 4])),
        );
    }

    #[test]
    #[should_panic(
        expected = "batched_affine: lhs [2, 3, 4], rhs [2, 5, 3]: inner dimensions 4 != 3"
    )]
    fn affine_inner_mismatch_names_op_and_shapes() {
        let t = Tape::<f64>::new();
        let _ = t.var(&Tensor::zeros([2, 3, 4])).batched_affine(
            t.var(&Tensor::zeros([2, 5, 3])),
            t.var(&Tensor::zeros([2, 5])),
        );
    }
}
