//! The ops of the tape, one file per family. Each op's forward rule and VJP
//! rule sit side by side, written with [`Real`] arithmetic only, so the same
//! rules run on `f32`, `f64` and dual numbers (forward mode is the forward rule
//! on duals; forward-over-reverse is the VJP rule on duals).
//!
//! | family | file | ops |
//! |---|---|---|
//! | elementwise | `elementwise.rs` | add, sub, mul, div (broadcasting), mul_segments, neg, scalar add/mul, exp, log, sqrt, powf, square, tanh, sigmoid, relu, softplus, abs, maximum, minimum, clamp, where_ |
//! | reductions | `reduce.rs` | sum, mean (all or axes, keepdims), max along an axis |
//! | linear algebra | `linalg.rs` | matmul (2-D, batched 3-D) |
//! | dense layer | `dense.rs` | dense (`act(X·W + b)` in one node) |
//! | logistic loss | `logistic.rs` | mean_softplus_matmul (mean softplus(X·W) per column, in one node) |
//! | batched (a stack of B small problems) | `batched.rs` | batched_matmul_t, batched_bias_add, batched_affine, batched_affine_relu, tile_batch |
//! | shape | `shape_ops.rs` | reshape, permute/transpose, broadcast_to, slice, concat, index_select, gather, detach |
//! | networks | `nn.rs` | log_softmax, softmax cross-entropy, MSE, conv2d, max/avg pool |
//! | normalisation | `norm.rs` | batch_norm (training mode, in one node) |

use crate::real::Real;
use crate::shape::Shape;
use crate::tape::Bwd;

pub mod batched;
pub mod dense;
pub mod elementwise;
pub mod linalg;
pub mod logistic;
pub mod nn;
pub mod norm;
pub mod reduce;
pub mod shape_ops;

/// The op tag stored in a node: which rule to run, plus small constant parameters.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// An input: variable or constant. Has no rule.
    Leaf,
    Add,
    Sub,
    Mul,
    Div,
    Neg,
    AddScalar(f64),
    MulScalar(f64),
    /// a·x + b·y for two same-shaped inputs ([`Var::axpby`](crate::Var::axpby)).
    Axpby(f64, f64),
    Exp,
    Log,
    Sqrt,
    Powf(f64),
    Square,
    Tanh,
    Sigmoid,
    Relu,
    Softplus,
    Abs,
    /// Elementwise max of two operands (broadcasting); ties go to the first.
    Maximum,
    /// Elementwise min of two operands (broadcasting); ties go to the first.
    Minimum,
    /// Clamp into `[lo, hi]`.
    Clamp(f64, f64),
    /// Elementwise select `cond > 0 ? a : b`; inputs are `[cond, a, b]`.
    Where,
    /// `x [N] · a [L]`, one factor per segment of x; the segment ends are saved in `idx`.
    MulSegments,
    /// Sum over the axes in the bit mask.
    Sum {
        axes: u8,
    },
    /// Mean over the axes in the bit mask.
    Mean {
        axes: u8,
    },
    /// Max along one axis; argmax positions saved in `idx`.
    Max {
        axis: u8,
    },
    Matmul,
    /// `A·Bᵀ` with `B [n, k]` read through swapped strides (no transpose copy).
    MatmulT,
    /// `[B, m, k]·[B, n, k]ᵀ → [B, m, n]`, one product per batch.
    BatchedMatmulT,
    /// `[B, m, n] + [B, n]`: a bias row per batch.
    BatchedBiasAdd,
    /// `[B, m, k]·[B, n, k]ᵀ + [B, n]`: `BatchedMatmulT` then `BatchedBiasAdd` in one node.
    BatchedAffine,
    /// `relu` of a `BatchedAffine`, in one node.
    BatchedAffineRelu,
    /// `BatchedAffine` (or, with `relu`, `BatchedAffineRelu`) whose weight
    /// adjoint is written as its block sum, one product for all B slices.
    BatchedAffineTiled {
        relu: bool,
    },
    /// `act(X·W + 1·bᵀ)`: `Matmul`, a bias add and an activation in one node.
    Dense(dense::Activation),
    /// `mean_i softplus(X·W)_ij` per column j; `Xᵀσ(X·W)` saved in `aux`.
    MeanSoftplusMatmul,
    /// `[..d] → [B, ..d]`: B copies along a new leading axis.
    TileBatch,
    Reshape,
    Permute([u8; 4]),
    BroadcastTo,
    Slice {
        axis: u8,
        start: usize,
    },
    Concat {
        axis: u8,
    },
    /// Select along an axis; the indices are saved in `idx`.
    IndexSelect {
        axis: u8,
    },
    /// `out[i] = x[i, idx[i]]` for a 2-D `x`; the indices are saved in `idx`.
    Gather,
    LogSoftmax {
        axis: u8,
    },
    /// Mean softmax cross-entropy of 2-D logits with integer labels (saved in
    /// `idx`); the softmax probabilities are saved in `aux`.
    SoftmaxCrossEntropy,
    /// Mean squared error of two same-shaped tensors.
    Mse,
    Conv2d {
        stride: usize,
        pad: usize,
    },
    MaxPool2d {
        k: usize,
        stride: usize,
    },
    AvgPool2d {
        k: usize,
        stride: usize,
    },
    /// Batch-norm in training mode over axis 1; x − μ and the per-channel
    /// 1/√(σ² + ε) saved in `aux`.
    BatchNorm,
}

impl Op {
    /// The user-facing name, as used in panic messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Leaf => "leaf",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Neg => "neg",
            Op::AddScalar(_) => "add_scalar",
            Op::MulScalar(_) => "mul_scalar",
            Op::Axpby(..) => "axpby",
            Op::Exp => "exp",
            Op::Log => "log",
            Op::Sqrt => "sqrt",
            Op::Powf(_) => "powf",
            Op::Square => "square",
            Op::Tanh => "tanh",
            Op::Sigmoid => "sigmoid",
            Op::Relu => "relu",
            Op::Softplus => "softplus",
            Op::Abs => "abs",
            Op::Maximum => "maximum",
            Op::Minimum => "minimum",
            Op::Clamp(..) => "clamp",
            Op::Where => "where_",
            Op::MulSegments => "mul_segments",
            Op::Sum { .. } => "sum",
            Op::Mean { .. } => "mean",
            Op::Max { .. } => "max",
            Op::Matmul => "matmul",
            Op::MatmulT => "matmul_t",
            Op::BatchedMatmulT => "batched_matmul_t",
            Op::BatchedBiasAdd => "batched_bias_add",
            Op::BatchedAffine => "batched_affine",
            Op::BatchedAffineRelu => "batched_affine_relu",
            Op::BatchedAffineTiled { relu: false } => "batched_affine_tiled",
            Op::BatchedAffineTiled { relu: true } => "batched_affine_relu_tiled",
            Op::Dense(_) => "dense",
            Op::MeanSoftplusMatmul => "mean_softplus_matmul",
            Op::TileBatch => "tile_batch",
            Op::Reshape => "reshape",
            Op::Permute(_) => "permute",
            Op::BroadcastTo => "broadcast_to",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::IndexSelect { .. } => "index_select",
            Op::Gather => "gather",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Op::Mse => "mse",
            Op::Conv2d { .. } => "conv2d",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::BatchNorm => "batch_norm",
        }
    }
}

/// Whether `op` reads input `k` as real data when that input is a
/// [`crate::Tape::constant_base`] leaf with a real copy or a
/// [`crate::Tape::constant_shared`] leaf (`Fwd::x_base`), so that recording
/// it need not write the leaf's value; `shape(j)` is input `j`'s shape.
pub(crate) fn reads_base<T: Real>(op: &Op, k: usize, shape: impl Fn(usize) -> Shape) -> bool {
    match op {
        Op::Matmul => k == 0 && linalg::matmul_reads_base::<T>(shape(0), shape(1)),
        Op::MeanSoftplusMatmul => k == 0,
        _ => false,
    }
}

/// Whether `op` reads input `k` in place when that input is a
/// [`crate::Tape::tangent_leaf_source`] leaf (`Fwd::x_source`,
/// `Bwd::x_source`): a `matmul`'s right operand, behind a real left one
/// (`base_left`) or a dual one, for the shapes of [`crate::kernels::source`];
/// every other read writes the leaf's value.
pub(crate) fn reads_source<T: Real>(
    op: &Op,
    k: usize,
    base_left: bool,
    shape: impl Fn(usize) -> Shape,
) -> bool {
    matches!(op, Op::Matmul)
        && k == 1
        && linalg::matmul_reads_source::<T>(shape(0), shape(1), base_left)
}

/// Whether the tangent part of input `k`'s adjoint reads the primal part of
/// the node's own adjoint on a dual tape: ḡx = J(x)ᵀ·ḡ gives
/// ḡx.d = J.vᵀ·ḡ.d + J.dᵀ·ḡ.v, so ḡ.v is needed only where J has a tangent
/// (J.d ≠ 0), or where ḡx.v itself is wanted. `false` only where the rule
/// never reads ḡ.v to form ḡx.d: copies, sums and selections of ḡ (J
/// constant: add, sub, neg, relu, max/min, where, the shape ops, the
/// batched bias add and tile), and a product's right operand when its left
/// one is a constant read as real data (`base_left`: ḡB = Aᵀ·ḡ with a real
/// A, `kernels/real_left.rs`). Everything else says `true` (a product rule
/// such as g·y on duals adds g.v·y.d, a zero whose sign would follow ḡ.v).
/// The recording propagates this into [`crate::tape`]'s `primal_adjoint`
/// liveness; `shape(j)` is input `j`'s shape.
pub(crate) fn tangent_reads_primal<T: Real>(
    op: &Op,
    k: usize,
    base_left: bool,
    shape: impl Fn(usize) -> Shape,
) -> bool {
    match op {
        Op::Add
        | Op::Sub
        | Op::Neg
        | Op::AddScalar(_)
        | Op::Relu
        | Op::Maximum
        | Op::Minimum
        | Op::Where
        | Op::Max { .. }
        | Op::BatchedBiasAdd
        | Op::TileBatch
        | Op::Reshape
        | Op::Permute(_)
        | Op::BroadcastTo
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::IndexSelect { .. }
        | Op::Gather => false,
        Op::Matmul => !(k == 1 && base_left && linalg::matmul_reads_base::<T>(shape(0), shape(1))),
        _ => true,
    }
}

/// Dispatches a node to its VJP rule (one row per op; the rules live with their forwards).
pub(crate) fn vjp<T: Real>(b: &mut Bwd<'_, T>) {
    use Op::*;
    match b.node.op.clone() {
        Leaf => {}
        Add | Sub | Mul | Div | Maximum | Minimum => elementwise::binary_vjp(b),
        Neg | AddScalar(_) | MulScalar(_) | Exp | Log | Sqrt | Powf(_) | Square | Tanh
        | Sigmoid | Relu | Softplus | Abs | Clamp(..) => elementwise::unary_vjp(b),
        Where => elementwise::where_vjp(b),
        MulSegments => elementwise::mul_segments_vjp(b),
        Axpby(ca, cb) => elementwise::axpby_vjp(b, ca, cb),
        Sum { axes } => reduce::sum_vjp(b, axes, false),
        Mean { axes } => reduce::sum_vjp(b, axes, true),
        Max { axis } => reduce::max_vjp(b, axis as usize),
        Matmul => linalg::matmul_vjp(b),
        MatmulT => linalg::matmul_t_vjp(b),
        BatchedMatmulT => batched::batched_matmul_t_vjp(b),
        BatchedBiasAdd => batched::batched_bias_add_vjp(b),
        BatchedAffine => batched::batched_affine_vjp(b),
        BatchedAffineRelu => batched::batched_affine_relu_vjp(b),
        BatchedAffineTiled { relu } => batched::batched_affine_tiled_vjp(b, relu),
        Dense(act) => dense::dense_vjp(b, act),
        MeanSoftplusMatmul => logistic::mean_softplus_matmul_vjp(b),
        TileBatch => batched::tile_batch_vjp(b),
        Reshape => shape_ops::reshape_vjp(b),
        Permute(p) => shape_ops::permute_vjp(b, p),
        BroadcastTo => shape_ops::broadcast_to_vjp(b),
        Slice { axis, start } => shape_ops::slice_vjp(b, axis as usize, start),
        Concat { axis } => shape_ops::concat_vjp(b, axis as usize),
        IndexSelect { axis } => shape_ops::index_select_vjp(b, axis as usize),
        Gather => shape_ops::gather_vjp(b),
        LogSoftmax { axis } => nn::log_softmax_vjp(b, axis as usize),
        SoftmaxCrossEntropy => nn::softmax_cross_entropy_vjp(b),
        Mse => nn::mse_vjp(b),
        Conv2d { stride, pad } => nn::conv2d_vjp(b, stride, pad),
        MaxPool2d { .. } => nn::max_pool2d_vjp(b),
        AvgPool2d { k, stride } => nn::avg_pool2d_vjp(b, k, stride),
        BatchNorm => norm::batch_norm_vjp(b),
    }
}
