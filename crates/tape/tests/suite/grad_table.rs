//! The table-driven gradient tests: one row per op of the tape.
//!
//! Each row names the op, its arity, a proptest strategy for its input shapes,
//! the domain of its inputs (away from kinks and poles) and a tolerance. For
//! every generated case the op is checked twice in f64:
//! * `check_vjp`: the dot-product test ⟨Jᵀu, v⟩ = ⟨u, J·v⟩ on the raw output;
//! * `check_grad`: every gradient entry of Σ out ⊙ W for a random constant W,
//!   against central differences, so the whole Jacobian is exercised.
//!
//! Non-tensor parameters (axes, indices, labels, stride, padding) are drawn
//! from a per-case `u64` so they vary across cases too.
//!
//! The same rows run on dual numbers check the VJP rules' own derivatives:
//! the reverse sweep on `Dual<f64>` with tangent v must give H·v, compared with
//! the central difference of gradients (∇f(x + hv) − ∇f(x − hv)) / 2h.
//!
//! A further test builds random graphs of depth ≥ 5 from a composition table
//! and gradient-checks them.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::testing::{check_grad, check_vjp, random_directions, tensor_avoiding, Tolerance};
use tape::{concat, Dual, Real, Shape, Tape, Tensor, Var};

/// An op under test: its inputs, and a seed for its non-tensor parameters.
type OpFn = for<'t> fn(&[Var<'t, f64>], u64) -> Var<'t, f64>;
/// The same op on dual numbers (the same closure, instantiated at `Dual<f64>`).
type OpFnDual = for<'t> fn(&[Var<'t, Dual<f64>>], u64) -> Var<'t, Dual<f64>>;

/// Where an input's entries are drawn: `[lo, hi]`, at least `margin` from each kink.
#[derive(Clone, Copy, Debug)]
struct Domain {
    lo: f64,
    hi: f64,
    kinks: &'static [f64],
    margin: f64,
}

const ANY: Domain = Domain {
    lo: -2.0,
    hi: 2.0,
    kinks: &[],
    margin: 0.0,
};
/// For ops with a kink at 0 (relu, abs) and denominators.
const NONZERO: Domain = Domain {
    lo: -2.0,
    hi: 2.0,
    kinks: &[0.0],
    margin: 0.3,
};
/// For log, sqrt, powf: away from the pole/branch point at 0.
const POSITIVE: Domain = Domain {
    lo: 0.3,
    hi: 3.0,
    kinks: &[],
    margin: 0.0,
};
/// For clamp(-1, 1): away from both kinks.
const CLAMP: Domain = Domain {
    lo: -2.0,
    hi: 2.0,
    kinks: &[-1.0, 1.0],
    margin: 0.05,
};

struct Row {
    name: &'static str,
    arity: usize,
    /// The input shapes of one case.
    shapes: fn() -> BoxedStrategy<Vec<Shape>>,
    /// The domain of each input (the last entry repeats for further inputs).
    domains: &'static [Domain],
    tol: Tolerance,
    op: OpFn,
    op_dual: OpFnDual,
}

fn rng(p: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(p)
}

fn dims(s: Shape) -> Vec<usize> {
    s.dims().to_vec()
}

// ---------- shape generators ----------

fn dims_vec(min_rank: usize, max_rank: usize, max_dim: usize) -> BoxedStrategy<Vec<usize>> {
    proptest::collection::vec(1..=max_dim, min_rank..=max_rank).boxed()
}

/// One shape of rank 0..=3.
fn one_any() -> BoxedStrategy<Vec<Shape>> {
    dims_vec(0, 3, 4).prop_map(|d| vec![Shape::new(&d)]).boxed()
}
/// One shape of rank 1..=3.
fn one_ranked() -> BoxedStrategy<Vec<Shape>> {
    dims_vec(1, 3, 4).prop_map(|d| vec![Shape::new(&d)]).boxed()
}
/// One shape of rank 2..=4.
fn one_rank2plus() -> BoxedStrategy<Vec<Shape>> {
    dims_vec(2, 4, 3).prop_map(|d| vec![Shape::new(&d)]).boxed()
}
/// One matrix shape.
fn one_matrix() -> BoxedStrategy<Vec<Shape>> {
    dims_vec(2, 2, 4).prop_map(|d| vec![Shape::new(&d)]).boxed()
}
/// `n` equal shapes of rank 1..=3.
fn same(n: usize) -> BoxedStrategy<Vec<Shape>> {
    dims_vec(1, 3, 4)
        .prop_map(move |d| vec![Shape::new(&d); n])
        .boxed()
}
fn same2() -> BoxedStrategy<Vec<Shape>> {
    same(2)
}

/// A shape and a second one that broadcasts against it: a suffix of its
/// dimensions with some set to 1, or a scalar; in random order.
fn broadcast_pair() -> BoxedStrategy<Vec<Shape>> {
    (dims_vec(1, 3, 4), any::<u8>(), 0..=3usize, any::<bool>())
        .prop_map(|(d, ones, drop, swap)| {
            let drop = drop.min(d.len());
            let mut e: Vec<usize> = d[drop..].to_vec();
            for (i, x) in e.iter_mut().enumerate() {
                if ones & (1 << i) != 0 {
                    *x = 1;
                }
            }
            let (a, b) = (Shape::new(&d), Shape::new(&e));
            if swap {
                vec![b, a]
            } else {
                vec![a, b]
            }
        })
        .boxed()
}

/// cond, a, b for `where_`: equal shapes, or a scalar `a` or `b`, or a broadcast row.
fn where_shapes() -> BoxedStrategy<Vec<Shape>> {
    (dims_vec(1, 3, 4), 0..4u8)
        .prop_map(|(d, kind)| {
            let s = Shape::new(&d);
            let last = Shape::new(&d[d.len() - 1..]);
            match kind {
                0 => vec![s, s, s],
                1 => vec![s, Shape::scalar(), s],
                2 => vec![s, s, Shape::scalar()],
                _ => vec![last, s, last],
            }
        })
        .boxed()
}

fn matmul_2d() -> BoxedStrategy<Vec<Shape>> {
    (1..=4usize, 1..=4usize, 1..=4usize)
        .prop_map(|(m, k, n)| vec![Shape::new(&[m, k]), Shape::new(&[k, n])])
        .boxed()
}
fn matmul_3d_2d() -> BoxedStrategy<Vec<Shape>> {
    (1..=3usize, 1..=3usize, 1..=4usize, 1..=3usize)
        .prop_map(|(b, m, k, n)| vec![Shape::new(&[b, m, k]), Shape::new(&[k, n])])
        .boxed()
}
fn matmul_t_2d() -> BoxedStrategy<Vec<Shape>> {
    (1..=4usize, 1..=4usize, 1..=4usize)
        .prop_map(|(m, k, n)| vec![Shape::new(&[m, k]), Shape::new(&[n, k])])
        .boxed()
}
fn matmul_batched() -> BoxedStrategy<Vec<Shape>> {
    (1..=3usize, 1..=3usize, 1..=4usize, 1..=3usize)
        .prop_map(|(b, m, k, n)| vec![Shape::new(&[b, m, k]), Shape::new(&[b, k, n])])
        .boxed()
}
fn batched_matmul_t_shapes() -> BoxedStrategy<Vec<Shape>> {
    (1..=3usize, 1..=3usize, 1..=4usize, 1..=3usize)
        .prop_map(|(b, m, k, n)| vec![Shape::new(&[b, m, k]), Shape::new(&[b, n, k])])
        .boxed()
}
fn batched_affine_shapes() -> BoxedStrategy<Vec<Shape>> {
    (1..=3usize, 1..=3usize, 1..=4usize, 1..=3usize)
        .prop_map(|(b, m, k, n)| {
            vec![
                Shape::new(&[b, m, k]),
                Shape::new(&[b, n, k]),
                Shape::new(&[b, n]),
            ]
        })
        .boxed()
}
fn batched_bias_shapes() -> BoxedStrategy<Vec<Shape>> {
    (1..=3usize, 1..=3usize, 1..=4usize)
        .prop_map(|(b, m, n)| vec![Shape::new(&[b, m, n]), Shape::new(&[b, n])])
        .boxed()
}

/// A shape with some unit dimensions (to broadcast from).
fn with_ones() -> BoxedStrategy<Vec<Shape>> {
    (dims_vec(1, 3, 3), any::<u8>())
        .prop_map(|(mut d, ones)| {
            for (i, x) in d.iter_mut().enumerate() {
                if ones & (1 << i) != 0 {
                    *x = 1;
                }
            }
            vec![Shape::new(&d)]
        })
        .boxed()
}

/// `n` shapes that differ only along one axis.
fn concat_shapes(n: usize) -> BoxedStrategy<Vec<Shape>> {
    (dims_vec(1, 3, 3), any::<u64>())
        .prop_map(move |(d, p)| {
            let mut r = rng(p);
            let axis = r.gen_range(0..d.len());
            (0..n)
                .map(|_| {
                    let mut e = d.clone();
                    e[axis] = r.gen_range(1..=3);
                    Shape::new(&e)
                })
                .collect()
        })
        .boxed()
}
fn concat2() -> BoxedStrategy<Vec<Shape>> {
    concat_shapes(2)
}
fn concat3() -> BoxedStrategy<Vec<Shape>> {
    concat_shapes(3)
}

/// Two copies of one shape (an op on same-shaped operands).
fn same_pair() -> BoxedStrategy<Vec<Shape>> {
    dims_vec(0, 3, 4)
        .prop_map(|d| vec![Shape::new(&d), Shape::new(&d)])
        .boxed()
}

/// Logits `[n, c]` with c ≥ 2.
/// A vector x `[n]` and a vector a `[l]`, 1 ≤ l ≤ n: one factor per segment.
fn segments_pair() -> BoxedStrategy<Vec<Shape>> {
    (1..=8usize, 1..=4usize)
        .prop_map(|(n, l)| vec![Shape::new(&[n]), Shape::new(&[l.min(n)])])
        .boxed()
}

/// `l` non-decreasing segment ends over `n` elements, the last `n` (some
/// segments may be empty), drawn from `p`.
fn segment_ends(n: usize, l: usize, p: u64) -> Vec<usize> {
    let mut r = rng(p);
    let mut ends: Vec<usize> = (1..l).map(|_| r.gen_range(0..=n)).collect();
    ends.sort_unstable();
    ends.push(n);
    ends
}

fn logits() -> BoxedStrategy<Vec<Shape>> {
    (1..=4usize, 2..=5usize)
        .prop_map(|(n, c)| vec![Shape::new(&[n, c])])
        .boxed()
}

/// `x [n, c, h, w]` and `w [o, c, kh, kw]` with the kernel fitting unpadded.
fn conv_shapes() -> BoxedStrategy<Vec<Shape>> {
    (
        1..=2usize,
        1..=2usize,
        3..=5usize,
        3..=5usize,
        1..=2usize,
        1..=3usize,
        1..=3usize,
    )
        .prop_map(|(n, c, h, w, o, kh, kw)| {
            vec![Shape::new(&[n, c, h, w]), Shape::new(&[o, c, kh, kw])]
        })
        .boxed()
}

/// An NCHW image with h, w ≥ 2.
fn image() -> BoxedStrategy<Vec<Shape>> {
    (1..=2usize, 1..=2usize, 2..=5usize, 2..=5usize)
        .prop_map(|(n, c, h, w)| vec![Shape::new(&[n, c, h, w])])
        .boxed()
}

/// x `[n, c]` or `[n, c, h, w]` with n ≥ 2, gamma and beta `[c]`.
fn batch_norm_shapes() -> BoxedStrategy<Vec<Shape>> {
    (
        2..=4usize,
        1..=3usize,
        1..=3usize,
        1..=3usize,
        any::<bool>(),
    )
        .prop_map(|(n, c, h, w, four)| {
            let x = if four {
                Shape::new(&[n, c, h, w])
            } else {
                Shape::new(&[n, c])
            };
            vec![x, Shape::new(&[c]), Shape::new(&[c])]
        })
        .boxed()
}

// ---------- parameter helpers ----------

/// A random non-empty subset of the axes of a rank-r shape, as a list.
fn axes_of(r: usize, p: u64) -> Vec<usize> {
    let mask = (p as usize % ((1 << r) - 1)) + 1;
    (0..r).filter(|i| mask & (1 << i) != 0).collect()
}

fn random_perm(r: usize, p: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..r).collect();
    perm.shuffle(&mut rng(p));
    perm
}

fn labels(n: usize, c: usize, p: u64) -> Vec<usize> {
    let mut r = rng(p);
    (0..n).map(|_| r.gen_range(0..c)).collect()
}

fn f64_tol() -> Tolerance {
    Tolerance::for_f64()
}

// ---------- the table ----------

macro_rules! row {
    ($name:expr, $arity:expr, $shapes:expr, $domains:expr, $op:expr) => {
        row!($name, $arity, $shapes, $domains, f64_tol(), $op)
    };
    ($name:expr, $arity:expr, $shapes:expr, $domains:expr, $tol:expr, $op:expr) => {
        Row {
            name: $name,
            arity: $arity,
            shapes: $shapes,
            domains: $domains,
            tol: $tol,
            op: $op,
            op_dual: $op,
        }
    };
}

fn table() -> Vec<Row> {
    vec![
        // elementwise binary, with broadcasting
        row!("add", 2, broadcast_pair, &[ANY], |x, _| x[0] + x[1]),
        row!("sub", 2, broadcast_pair, &[ANY], |x, _| x[0] - x[1]),
        row!("mul", 2, broadcast_pair, &[ANY], |x, _| x[0] * x[1]),
        row!("div", 2, broadcast_pair, &[ANY, NONZERO], |x, _| x[0]
            / x[1]),
        row!("mul_segments", 2, segments_pair, &[ANY], |x, p| {
            let (n, l) = (x[0].shape().numel(), x[1].shape().numel());
            x[0].mul_segments(x[1], &segment_ends(n, l, p))
        }),
        // maximum/minimum: ties have probability 0 for continuous inputs; a
        // central difference straddles the kink only if |a − b| < h ≈ 1e-6.
        row!("maximum", 2, broadcast_pair, &[ANY], |x, _| x[0]
            .maximum(x[1])),
        row!("minimum", 2, broadcast_pair, &[ANY], |x, _| x[0]
            .minimum(x[1])),
        // where_: cond is an input too, away from 0, so its finite difference is
        // exactly 0 and the check confirms no adjoint flows into it.
        row!("where_", 3, where_shapes, &[NONZERO, ANY], |x, _| x[0]
            .where_(x[1], x[2])),
        // elementwise unary
        row!("neg", 1, one_any, &[ANY], |x, _| -x[0]),
        row!("add_scalar", 1, one_any, &[ANY], |x, _| x[0]
            .add_scalar(0.7)),
        row!("mul_scalar", 1, one_any, &[ANY], |x, _| x[0]
            .mul_scalar(-1.3)),
        row!("axpby", 2, same_pair, &[ANY], |x, _| x[0]
            .axpby(0.7, x[1], -1.3)),
        row!("exp", 1, one_any, &[ANY], |x, _| x[0].exp()),
        row!("log", 1, one_any, &[POSITIVE], |x, _| x[0].log()),
        row!("sqrt", 1, one_any, &[POSITIVE], |x, _| x[0].sqrt()),
        row!("powf", 1, one_any, &[POSITIVE], |x, _| x[0].powf(2.5)),
        row!("powf_negative", 1, one_any, &[POSITIVE], |x, _| x[0]
            .powf(-1.5)),
        row!("square", 1, one_any, &[ANY], |x, _| x[0].square()),
        row!("tanh", 1, one_any, &[ANY], |x, _| x[0].tanh()),
        row!("sigmoid", 1, one_any, &[ANY], |x, _| x[0].sigmoid()),
        row!("relu", 1, one_any, &[NONZERO], |x, _| x[0].relu()),
        row!("softplus", 1, one_any, &[ANY], |x, _| x[0].softplus()),
        row!("abs", 1, one_any, &[NONZERO], |x, _| x[0].abs()),
        row!("clamp", 1, one_any, &[CLAMP], |x, _| x[0].clamp(-1.0, 1.0)),
        // reductions
        row!("sum", 1, one_any, &[ANY], |x, _| x[0].sum()),
        row!("mean", 1, one_any, &[ANY], |x, _| x[0].mean()),
        row!("sum_axes", 1, one_ranked, &[ANY], |x, p| {
            let r = x[0].shape().rank();
            x[0].sum_axes(&axes_of(r, p), p & 1 << 40 != 0)
        }),
        row!("mean_axes", 1, one_ranked, &[ANY], |x, p| {
            let r = x[0].shape().rank();
            x[0].mean_axes(&axes_of(r, p), p & 1 << 40 != 0)
        }),
        // max along an axis: ties have probability 0, as for maximum.
        row!("max_axis", 1, one_ranked, &[ANY], |x, p| {
            let r = x[0].shape().rank();
            x[0].max_axis(p as usize % r, p & 1 << 40 != 0)
        }),
        // linear algebra
        row!("matmul_2d", 2, matmul_2d, &[ANY], |x, _| x[0].matmul(x[1])),
        row!("mean_softplus_matmul", 2, matmul_2d, &[ANY], |x, _| x[0]
            .mean_softplus_matmul(x[1])),
        row!("matmul_3d_2d", 2, matmul_3d_2d, &[ANY], |x, _| x[0]
            .matmul(x[1])),
        row!("matmul_batched", 2, matmul_batched, &[ANY], |x, _| x[0]
            .matmul(x[1])),
        row!("matmul_t", 2, matmul_t_2d, &[ANY], |x, _| x[0]
            .matmul_t(x[1])),
        // batched ops (a stack of B small problems)
        row!(
            "batched_matmul_t",
            2,
            batched_matmul_t_shapes,
            &[ANY],
            |x, _| x[0].batched_matmul_t(x[1])
        ),
        row!(
            "batched_bias_add",
            2,
            batched_bias_shapes,
            &[ANY],
            |x, _| x[0].batched_bias_add(x[1])
        ),
        row!(
            "batched_affine",
            3,
            batched_affine_shapes,
            &[ANY],
            |x, _| x[0].batched_affine(x[1], x[2])
        ),
        row!("tile_batch", 1, one_any, &[ANY], |x, p| x[0]
            .tile_batch(1 + (p % 3) as usize)),
        // shape ops
        row!("permute", 1, one_rank2plus, &[ANY], |x, p| {
            let r = x[0].shape().rank();
            x[0].permute(&random_perm(r, p))
        }),
        row!("t", 1, one_matrix, &[ANY], |x, _| x[0].t()),
        row!("reshape", 1, one_any, &[ANY], |x, p| {
            // To the reversed dimensions, or flat.
            let mut d = dims(x[0].shape());
            if p % 2 == 0 {
                d.reverse();
                x[0].reshape(Shape::new(&d))
            } else {
                x[0].reshape([d.iter().product::<usize>()])
            }
        }),
        row!("broadcast_to", 1, with_ones, &[ANY], |x, p| {
            // Unit axes grow to 2 or 3; sometimes a leading axis is added.
            let mut r = rng(p);
            let mut d: Vec<usize> = dims(x[0].shape())
                .into_iter()
                .map(|n| if n == 1 { r.gen_range(1..=3) } else { n })
                .collect();
            if d.len() < 4 && r.gen_bool(0.5) {
                d.insert(0, 2);
            }
            x[0].broadcast_to(Shape::new(&d))
        }),
        row!("slice", 1, one_ranked, &[ANY], |x, p| {
            let s = x[0].shape();
            let mut r = rng(p);
            let axis = r.gen_range(0..s.rank());
            let start = r.gen_range(0..s.dim(axis));
            let end = r.gen_range(start + 1..=s.dim(axis));
            x[0].slice(axis, start, end)
        }),
        row!("concat_2", 2, concat2, &[ANY], concat_op),
        row!("concat_3", 3, concat3, &[ANY], concat_op),
        row!("index_select", 1, one_ranked, &[ANY], |x, p| {
            // Repeated indices accumulate their adjoints.
            let s = x[0].shape();
            let mut r = rng(p);
            let axis = r.gen_range(0..s.rank());
            let len = r.gen_range(1..=4);
            let idx: Vec<usize> = (0..len).map(|_| r.gen_range(0..s.dim(axis))).collect();
            x[0].index_select(axis, &idx)
        }),
        row!("gather", 1, logits, &[ANY], |x, p| {
            let s = x[0].shape();
            x[0].gather(&labels(s.dim(0), s.dim(1), p))
        }),
        // networks
        row!("log_softmax", 1, one_ranked, &[ANY], |x, p| {
            let r = x[0].shape().rank();
            x[0].log_softmax(p as usize % r)
        }),
        row!("softmax_cross_entropy", 1, logits, &[ANY], |x, p| {
            let s = x[0].shape();
            x[0].softmax_cross_entropy(&labels(s.dim(0), s.dim(1), p))
        }),
        row!("mse", 2, same2, &[ANY], |x, _| x[0].mse(x[1])),
        row!("conv2d", 2, conv_shapes, &[ANY], |x, p| {
            // stride 1 or 2, padding 0 or 1.
            x[0].conv2d(x[1], 1 + (p % 2) as usize, ((p >> 1) % 2) as usize)
        }),
        // max_pool2d: ties have probability 0.
        row!("max_pool2d", 1, image, &[ANY], |x, p| {
            x[0].max_pool2d(2, 1 + (p % 2) as usize)
        }),
        row!("avg_pool2d", 1, image, &[ANY], |x, p| {
            x[0].avg_pool2d(2, 1 + (p % 2) as usize)
        }),
        // batch_norm: the normalisation divides by the batch standard deviation,
        // so finite differences are a little noisier.
        row!(
            "batch_norm",
            3,
            batch_norm_shapes,
            &[ANY],
            f64_tol().scaled(10.0),
            |x, _| x[0].batch_norm(x[1], x[2], 1e-5)
        ),
    ]
}

fn concat_op<'t, T: Real>(x: &[Var<'t, T>], _: u64) -> Var<'t, T> {
    // The axis along which the shapes differ (any axis if none does).
    let s0 = x[0].shape();
    let axis = (0..s0.rank())
        .find(|&a| x.iter().any(|v| v.shape().dim(a) != s0.dim(a)))
        .unwrap_or(0);
    concat(x, axis)
}

/// A deterministic proptest runner (ChaCha seeded by the test's name), no persistence files.
fn runner(cases: u32, name: &str) -> TestRunner {
    let mut seed = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b;
    }
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    )
}

fn inputs_strategy(row: &Row) -> BoxedStrategy<(Vec<Tensor<f64>>, u64)> {
    let domains = row.domains;
    let arity = row.arity;
    (row.shapes)()
        .prop_flat_map(move |shapes| {
            assert_eq!(shapes.len(), arity, "shape generator arity");
            let tensors: Vec<BoxedStrategy<Tensor<f64>>> = shapes
                .iter()
                .enumerate()
                .map(|(k, &s)| {
                    let d = domains[k.min(domains.len() - 1)];
                    tensor_avoiding(s, d.lo, d.hi, d.kinks, d.margin).boxed()
                })
                .collect();
            (tensors, any::<u64>())
        })
        .boxed()
}

/// Σ out ⊙ W with W a constant of out's shape, uniform in [−1, 1] from `seed`.
fn weighted_sum<'t, T: Real<Base = f64>>(out: Var<'t, T>, seed: u64) -> Var<'t, T> {
    let mut r = rng(seed ^ 0xA5A5);
    let w = Tensor::from_fn(out.shape(), |_| r.gen_range(-1.0..=1.0));
    (out * out.tape().constant_base(&w)).sum()
}

/// `x + s·v` for every input.
fn shifted(x: &[Tensor<f64>], v: &[Tensor<f64>], s: f64) -> Vec<Tensor<f64>> {
    x.iter()
        .zip(v)
        .map(|(x, v)| Tensor::from_fn(x.shape(), |i| x.data()[i] + s * v.data()[i]))
        .collect()
}

/// ∇f in f64.
fn grad_f64<F>(f: &F, x: &[Tensor<f64>]) -> Vec<Tensor<f64>>
where
    F: for<'t> Fn(&[Var<'t, f64>]) -> Var<'t, f64>,
{
    let t = Tape::<f64>::new();
    let xs: Vec<_> = x.iter().map(|x| t.var(x)).collect();
    t.backward(f(&xs));
    xs.iter().map(|&v| t.grad(v)).collect()
}

/// Forward-over-reverse on one case: the reverse sweep on duals with tangent v
/// gives (∇f, H·v) and the output tangent ⟨∇f, v⟩. Checks
/// * the primal part of the dual gradient against the f64 gradient,
/// * the output tangent against ⟨∇f, v⟩ (forward mode),
/// * H·v against (∇f(x + hv) − ∇f(x − hv)) / 2h, h = 1e-4·max(1, ‖x‖∞), entrywise
///   within 1e-6 + 1e-4·max|H·v| (the difference's error is O(h²) + O(ε/h)).
///
/// `f` and `f_dual` are the same scalar function at the two element types.
fn check_hvp<F, D>(f: F, f_dual: D, x: &[Tensor<f64>], p: u64) -> Result<(), String>
where
    F: for<'t> Fn(&[Var<'t, f64>]) -> Var<'t, f64>,
    D: for<'t> Fn(&[Var<'t, Dual<f64>>]) -> Var<'t, Dual<f64>>,
{
    let shapes: Vec<Shape> = x.iter().map(|x| x.shape()).collect();
    let v = random_directions::<f64>(&shapes, p ^ 0x5EED);
    let t = Tape::<Dual<f64>>::new();
    let xs: Vec<_> = x
        .iter()
        .zip(&v)
        .map(|(x, v)| {
            t.var(&Tensor::from_fn(x.shape(), |i| {
                Dual::new(x.data()[i], v.data()[i])
            }))
        })
        .collect();
    let out = f_dual(&xs);
    t.backward(out);
    let g = grad_f64(&f, x);
    let mut g_dot_v = 0.0;
    for (k, (&xk, gk)) in xs.iter().zip(&g).enumerate() {
        for (i, (d, &g64)) in t.grad(xk).data().iter().zip(gk.data()).enumerate() {
            if (d.v - g64).abs() > 1e-10 * (1.0 + g64.abs()) {
                return Err(format!(
                    "input {k}, element {i}: dual primal gradient {} != f64 gradient {g64}",
                    d.v
                ));
            }
            g_dot_v += g64 * v[k].data()[i];
        }
    }
    let tangent = out.item().d;
    if (tangent - g_dot_v).abs() > 1e-9 * (1.0 + g_dot_v.abs()) {
        return Err(format!(
            "forward mode: output tangent {tangent} != ⟨∇f, v⟩ {g_dot_v}"
        ));
    }
    let h = 1e-4
        * x.iter()
            .flat_map(|x| x.data())
            .fold(1.0f64, |m, a| m.max(a.abs()));
    let (gp, gm) = (
        grad_f64(&f, &shifted(x, &v, h)),
        grad_f64(&f, &shifted(x, &v, -h)),
    );
    let hv: Vec<Vec<f64>> = xs
        .iter()
        .map(|&xk| t.grad(xk).data().iter().map(|d| d.d).collect())
        .collect();
    let scale = hv.iter().flatten().fold(0.0f64, |m, a| m.max(a.abs()));
    for (k, hk) in hv.iter().enumerate() {
        for (i, &an) in hk.iter().enumerate() {
            let fd = (gp[k].data()[i] - gm[k].data()[i]) / (2.0 * h);
            if (an - fd).abs() > 1e-6 + 1e-4 * scale.max(fd.abs()) {
                return Err(format!(
                    "H·v of input {k}, element {i}: dual sweep {an}, gradient difference {fd}"
                ));
            }
        }
    }
    Ok(())
}

/// Runs a row's forward-over-reverse property; returns the number of cases checked.
fn check_row_hvp(row: &Row, cases: u32) -> Result<usize, String> {
    let ran = std::cell::Cell::new(0);
    runner(cases, &format!("{}-hvp", row.name))
        .run(&inputs_strategy(row), |(inputs, p)| {
            ran.set(ran.get() + 1);
            check_hvp(
                |x| weighted_sum((row.op)(x, p), p),
                |x| weighted_sum((row.op_dual)(x, p), p),
                &inputs,
                p,
            )
            .map_err(TestCaseError::fail)
        })
        .map_err(|e| format!("{}: {e}", row.name))?;
    Ok(ran.get())
}

#[test]
fn every_op_gives_hvps_on_duals() {
    const CASES: u32 = 64;
    let rows = table();
    let mut failures = Vec::new();
    for row in &rows {
        match check_row_hvp(row, CASES) {
            Ok(n) => assert_eq!(n, CASES as usize, "{}: only {n} cases ran", row.name),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ops failed:
{}",
        failures.len(),
        rows.len(),
        failures.join(
            "
"
        )
    );
}

/// Bits of the value and gradients of Σ op(x) ⊙ W recorded on `tape` (cleared first).
fn op_grads(tape: &mut Tape<f64>, op: OpFn, x: &[Tensor<f64>], p: u64) -> Vec<u64> {
    tape.clear();
    let xs: Vec<_> = x.iter().map(|x| tape.var(x)).collect();
    let out = weighted_sum(op(&xs, p), p);
    tape.backward(out);
    let mut bits = vec![out.item().to_bits()];
    for &v in &xs {
        bits.extend(tape.grad(v).data().iter().map(|g| g.to_bits()));
    }
    bits
}

/// Runs a row's property; returns the number of cases checked.
fn check_row(row: &Row, cases: u32) -> Result<usize, String> {
    let op = row.op;
    let tol = row.tol;
    let ran = std::cell::Cell::new(0);
    runner(cases, row.name)
        .run(&inputs_strategy(row), |(inputs, p)| {
            ran.set(ran.get() + 1);
            check_vjp(|_, x| op(x, p), &inputs, p, tol)
                .map_err(|e| TestCaseError::fail(format!("check_vjp: {e}")))?;
            check_grad(|_, x| weighted_sum(op(x, p), p), &inputs, tol)
                .map_err(|e| TestCaseError::fail(format!("check_grad: {e}")))?;
            // Reuse: after a recording on other data (the same entries reversed,
            // so still in the domain), a cleared tape gives a fresh tape's numbers.
            let reversed: Vec<Tensor<f64>> = inputs
                .iter()
                .map(|x| Tensor::new(x.shape(), x.data().iter().rev().copied().collect()))
                .collect();
            let mut tape = Tape::<f64>::new();
            let _ = op_grads(&mut tape, op, &reversed, p);
            let reused = op_grads(&mut tape, op, &inputs, p);
            let fresh = op_grads(&mut Tape::new(), op, &inputs, p);
            prop_assert_eq!(reused, fresh, "a reused tape differs from a fresh one");
            Ok(())
        })
        .map_err(|e| format!("{}: {e}", row.name))?;
    Ok(ran.get())
}

#[test]
fn every_op_matches_finite_differences() {
    const CASES: u32 = 128;
    let rows = table();
    let mut failures = Vec::new();
    for row in &rows {
        match check_row(row, CASES) {
            Ok(n) => assert_eq!(n, CASES as usize, "{}: only {n} cases ran", row.name),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ops failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn the_table_covers_every_op() {
    // Names of the ops the tape offers (the `Op` tags, plus the user-facing
    // variants that record them); a new op must add a row here and above.
    let required = [
        "add",
        "sub",
        "mul",
        "div",
        "neg",
        "add_scalar",
        "mul_scalar",
        "axpby",
        "exp",
        "log",
        "sqrt",
        "powf",
        "square",
        "tanh",
        "sigmoid",
        "relu",
        "softplus",
        "abs",
        "maximum",
        "minimum",
        "clamp",
        "where_",
        "sum",
        "mean",
        "sum_axes",
        "mean_axes",
        "max_axis",
        "matmul_2d",
        "matmul_3d_2d",
        "matmul_batched",
        "matmul_t",
        "mean_softplus_matmul",
        "batched_matmul_t",
        "batched_bias_add",
        "batched_affine",
        "tile_batch",
        "permute",
        "t",
        "reshape",
        "broadcast_to",
        "slice",
        "concat_2",
        "index_select",
        "gather",
        "mul_segments",
        "log_softmax",
        "softmax_cross_entropy",
        "mse",
        "conv2d",
        "max_pool2d",
        "avg_pool2d",
        "batch_norm",
    ];
    let rows = table();
    let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    for r in required {
        assert!(names.contains(&r), "no table row for op {r}");
    }
}

/// A check that can fail: a wrong rule (x·detach(x) claims the derivative x,
/// not 2x) is caught by the same machinery the table uses.
#[test]
fn the_checks_catch_a_wrong_rule() {
    let bad = row!("bad_square", 1, one_ranked, &[POSITIVE], |x, _| x[0]
        * x[0].detach());
    let err = check_row(&bad, 8).unwrap_err();
    assert!(err.contains("bad_square"), "{err}");
}

// ---------- random compositions ----------

/// Names of the composition ops (see [`compose`]).
const COMPOSE: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "minimum",
    "where_",
    "tanh",
    "sigmoid",
    "softplus",
    "exp",
    "log",
    "sqrt",
    "powf",
    "clamp",
    "matmul",
    "t",
    "permute",
    "log_softmax",
    "sum_keepdims",
    "mean_add",
    "max_axis",
    "concat_slice",
    "index_select",
    "mse",
];

/// Op number `op` of [`COMPOSE`], from `[3, 3]` (and a second `[3, 3]` operand)
/// to `[3, 3]`, kept in safe domains by construction (denominators ≥ 1,
/// log/sqrt arguments ≥ 0.5). Generic, so the same graph runs on duals.
fn compose<'t, T: Real>(op: usize, a: Var<'t, T>, b: Var<'t, T>) -> Var<'t, T> {
    match op {
        0 => a + b,
        1 => a - b,
        2 => a * b,
        3 => a / (b.square() + 1.0),
        4 => a.maximum(b),
        5 => a.minimum(b),
        6 => b.where_(a, a.mul_scalar(0.5)),
        7 => a.tanh(),
        8 => a.sigmoid(),
        9 => a.softplus(),
        10 => a.tanh().exp(),
        11 => (a.square() + 0.5).log(),
        12 => (a.square() + 0.5).sqrt(),
        13 => (a.square() + 0.5).powf(1.5),
        14 => a.clamp(-1.5, 1.5),
        15 => a.matmul(b).mul_scalar(0.5),
        16 => a.t(),
        17 => a.reshape([3, 3, 1]).permute(&[1, 0, 2]).reshape([3, 3]),
        18 => a.log_softmax(1),
        19 => a.sum_axes(&[0], true).broadcast_to([3, 3]).mul_scalar(0.3),
        20 => a.mean_axes(&[1], true) + b,
        21 => a.max_axis(1, true) * b,
        22 => concat(&[a.slice(0, 0, 1), b.slice(0, 1, 3)], 0),
        23 => a.index_select(0, &[2, 0, 0]),
        24 => a.mse(b) * a,
        _ => unreachable!("no composition op {op}"),
    }
}

/// Runs a program: each step applies an op to the latest node (so the depth is
/// the program length) and to any earlier node; returns Σ last ⊙ W.
fn run_program<'t, T: Real<Base = f64>>(
    x: &[Var<'t, T>],
    program: &[(usize, usize)],
    seed: u64,
) -> Var<'t, T> {
    let mut pool = x.to_vec();
    for &(op, other) in program {
        let last = *pool.last().unwrap();
        let rhs = pool[other % pool.len()];
        pool.push(compose(op, last, rhs));
    }
    weighted_sum(*pool.last().unwrap(), seed)
}

#[test]
fn random_compositions_of_depth_at_least_5() {
    let program = proptest::collection::vec((0..COMPOSE.len(), 0usize..64), 5..=9);
    let strategy = (
        proptest::collection::vec(-1.5..1.5f64, 9),
        proptest::collection::vec(-1.5..1.5f64, 9),
        program,
        any::<u64>(),
    );
    let tol = f64_tol().scaled(10.0);
    runner(256, "compositions")
        .run(&strategy, |(a, b, program, seed)| {
            let inputs = [Tensor::new([3, 3], a), Tensor::new([3, 3], b)];
            let names = || -> Vec<&str> { program.iter().map(|&(op, _)| COMPOSE[op]).collect() };
            // (Closures are written inline so that their lifetimes are inferred
            // as the higher-ranked bounds the checks ask for.)
            check_grad(|_, x| run_program(x, &program, seed), &inputs, tol)
                .map_err(|e| TestCaseError::fail(format!("{:?}: {e}", names())))?;
            check_hvp(
                |x| run_program(x, &program, seed),
                |x| run_program(x, &program, seed),
                &inputs,
                seed,
            )
            .map_err(|e| TestCaseError::fail(format!("{:?}: {e}", names())))
        })
        .unwrap();
}

/// Value and gradients of a program on `tape` (cleared first).
fn program_grads(
    tape: &mut Tape<f64>,
    inputs: &[Tensor<f64>],
    program: &[(usize, usize)],
    seed: u64,
) -> (u64, Vec<Vec<u64>>) {
    tape.clear();
    let xs: Vec<_> = inputs.iter().map(|x| tape.var(x)).collect();
    let out = run_program(&xs, program, seed);
    tape.backward(out);
    let grads = xs
        .iter()
        .map(|&x| tape.grad(x).data().iter().map(|g| g.to_bits()).collect())
        .collect();
    (out.item().to_bits(), grads)
}

/// Buffers are reused across recordings (stale values, lazily zeroed
/// adjoints): a tape that first ran one random program and then another must
/// give bit-for-bit the numbers of a fresh tape running the second program.
#[test]
fn a_reused_tape_gives_the_numbers_of_a_fresh_one() {
    let program = || proptest::collection::vec((0..COMPOSE.len(), 0usize..64), 1..=9);
    let data = || proptest::collection::vec(-1.5..1.5f64, 9);
    let strategy = (
        data(),
        data(),
        program(),
        program(),
        any::<u64>(),
        any::<bool>(),
    );
    runner(128, "reuse")
        .run(&strategy, |(a, b, first, second, seed, only_one)| {
            let inputs = [Tensor::new([3, 3], a), Tensor::new([3, 3], b)];
            let mut reused = Tape::<f64>::new();
            // The first program sometimes uses only the first input, so the
            // second input's adjoint slot is left stale or untouched.
            let first_inputs = if only_one { &inputs[..1] } else { &inputs[..] };
            program_grads(&mut reused, first_inputs, &first, seed ^ 1);
            let again = program_grads(&mut reused, &inputs, &second, seed);
            let fresh = program_grads(&mut Tape::new(), &inputs, &second, seed);
            prop_assert_eq!(again, fresh);
            Ok(())
        })
        .unwrap();
}
