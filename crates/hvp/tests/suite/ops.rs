//! Table-driven checks of forward mode and forward-over-reverse for every op of
//! the tape, plus random op graphs. Each row names an op, its input shapes and
//! an input domain away from kinks and singularities. For each row and seed:
//!
//! - JVP (forward rule on duals) against the central difference of the op,
//! - ⟨u, J·v⟩ = ⟨Jᵀu, v⟩ (forward mode against the reverse sweep),
//! - H·v of the scalar L(x) = Σ c ⊙ y + ½ Σ y ⊙ y, y = op(x), against the
//!   central difference of gradients,
//! - symmetry ⟨w, H·v⟩ = ⟨v, H·w⟩.

mod common;

use common::*;
use hvp::{Objective, VectorFunction, Workspace};
use proptest::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tape::ops::dense::Activation;
use tape::{Real, Tape, Tensor, Var};

#[derive(Copy, Clone, Debug)]
enum Dom {
    /// Uniform in [−1, 1).
    Any,
    /// Uniform in [0.5, 1.5) (log, sqrt, powf, divisors).
    Pos,
    /// ±[0.2, 1) (relu, abs).
    AwayZero,
    /// Distinct values well apart (max, max-pool).
    Spread,
    /// Uniform in (−0.05, 0.05): never within 0.15 of an `AwayZero` entry.
    Small,
    /// Each entry `Small` or `AwayZero` at random: both sides of clamp(−0.1, 0.1).
    Kinked,
}

struct Case {
    name: &'static str,
    inputs: &'static [(&'static [usize], Dom)],
}

use Dom::*;

const CASES: &[Case] = &[
    Case {
        name: "add",
        inputs: &[(&[2, 3], Any), (&[3], Any)],
    },
    Case {
        name: "sub",
        inputs: &[(&[2, 3], Any), (&[2, 1], Any)],
    },
    Case {
        name: "mul",
        inputs: &[(&[2, 3], Any), (&[2, 3], Any)],
    },
    Case {
        name: "mul_segments",
        inputs: &[(&[7], Any), (&[3], Any)],
    },
    Case {
        name: "div",
        inputs: &[(&[2, 3], Any), (&[3], Pos)],
    },
    Case {
        name: "neg",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "add_scalar",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "mul_scalar",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "axpby",
        inputs: &[(&[2, 3], Any), (&[2, 3], Any)],
    },
    Case {
        name: "exp",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "log",
        inputs: &[(&[2, 3], Pos)],
    },
    Case {
        name: "sqrt",
        inputs: &[(&[2, 3], Pos)],
    },
    Case {
        name: "powf",
        inputs: &[(&[2, 3], Pos)],
    },
    Case {
        name: "square",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "tanh",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "sigmoid",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "relu",
        inputs: &[(&[2, 3], AwayZero)],
    },
    Case {
        name: "softplus",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "abs",
        inputs: &[(&[2, 3], AwayZero)],
    },
    Case {
        name: "maximum",
        inputs: &[(&[2, 3], AwayZero), (&[2, 3], Small)],
    },
    Case {
        name: "minimum",
        inputs: &[(&[2, 3], AwayZero), (&[3], Small)],
    },
    Case {
        name: "clamp",
        inputs: &[(&[3, 4], Kinked)],
    },
    Case {
        name: "where_",
        inputs: &[(&[2, 3], AwayZero), (&[2, 3], Any), (&[1], Any)],
    },
    Case {
        name: "sum",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "sum_axes",
        inputs: &[(&[2, 3, 2], Any)],
    },
    Case {
        name: "mean",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "mean_axes",
        inputs: &[(&[2, 3, 2], Any)],
    },
    Case {
        name: "max_axis",
        inputs: &[(&[3, 4], Spread)],
    },
    Case {
        name: "matmul",
        inputs: &[(&[3, 4], Any), (&[4, 2], Any)],
    },
    Case {
        name: "matmul_batched",
        inputs: &[(&[2, 2, 3], Any), (&[2, 3, 2], Any)],
    },
    Case {
        name: "matmul_t",
        inputs: &[(&[3, 4], Any), (&[2, 4], Any)],
    },
    Case {
        name: "batched_matmul_t",
        inputs: &[(&[2, 3, 4], Any), (&[2, 2, 4], Any)],
    },
    Case {
        name: "batched_bias_add",
        inputs: &[(&[2, 3, 4], Any), (&[2, 4], Any)],
    },
    Case {
        name: "batched_affine",
        inputs: &[(&[2, 3, 4], Any), (&[2, 2, 4], Any), (&[2, 2], Any)],
    },
    Case {
        name: "batched_affine_relu",
        inputs: &[(&[2, 3, 4], Any), (&[2, 2, 4], Any), (&[2, 2], Any)],
    },
    Case {
        name: "dense_tanh",
        inputs: &[(&[3, 4], Any), (&[4, 2], Any), (&[2], Any)],
    },
    Case {
        name: "dense_sigmoid",
        inputs: &[(&[3, 4], Any), (&[4, 2], Any), (&[2], Any)],
    },
    Case {
        name: "dense_identity",
        inputs: &[(&[3, 4], Any), (&[4, 2], Any), (&[2], Any)],
    },
    Case {
        name: "mean_softplus_matmul",
        inputs: &[(&[5, 3], Any), (&[3, 2], Any)],
    },
    Case {
        name: "tile_batch",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "reshape",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "permute",
        inputs: &[(&[2, 3, 4], Any)],
    },
    Case {
        name: "transpose",
        inputs: &[(&[2, 3], Any)],
    },
    Case {
        name: "broadcast_to",
        inputs: &[(&[1, 3], Any)],
    },
    Case {
        name: "slice",
        inputs: &[(&[4, 3], Any)],
    },
    Case {
        name: "concat",
        inputs: &[(&[2, 3], Any), (&[1, 3], Any)],
    },
    Case {
        name: "index_select",
        inputs: &[(&[4, 3], Any)],
    },
    Case {
        name: "gather",
        inputs: &[(&[3, 4], Any)],
    },
    Case {
        name: "log_softmax",
        inputs: &[(&[2, 4], Any)],
    },
    Case {
        name: "softmax_cross_entropy",
        inputs: &[(&[3, 4], Any)],
    },
    Case {
        name: "mse",
        inputs: &[(&[2, 3], Any), (&[2, 3], Any)],
    },
    Case {
        name: "conv2d",
        inputs: &[(&[1, 2, 4, 4], Any), (&[3, 2, 3, 3], Any)],
    },
    Case {
        name: "conv2d_strided",
        inputs: &[(&[2, 1, 5, 5], Any), (&[2, 1, 3, 3], Any)],
    },
    Case {
        name: "max_pool2d",
        inputs: &[(&[1, 2, 4, 4], Spread)],
    },
    Case {
        name: "avg_pool2d",
        inputs: &[(&[1, 1, 4, 4], Any)],
    },
    Case {
        name: "batch_norm",
        inputs: &[(&[5, 3], Any), (&[3], Any), (&[3], Any)],
    },
    Case {
        name: "batch_norm_4d",
        inputs: &[(&[2, 2, 2, 3], Any), (&[2], Any), (&[2], Any)],
    },
];

/// One op of the table as a vector function of its inputs.
struct OpFn(&'static str);

impl VectorFunction<f64> for OpFn {
    fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        match self.0 {
            "add" => x[0] + x[1],
            "sub" => x[0] - x[1],
            "mul" => x[0] * x[1],
            "mul_segments" => x[0].mul_segments(x[1], &[2, 3, 7]),
            "div" => x[0] / x[1],
            "neg" => -x[0],
            "add_scalar" => x[0].add_scalar(0.7),
            "mul_scalar" => x[0].mul_scalar(-1.3),
            "axpby" => x[0].axpby(0.7, x[1], -1.3),
            "exp" => x[0].exp(),
            "log" => x[0].log(),
            "sqrt" => x[0].sqrt(),
            "powf" => x[0].powf(2.5),
            "square" => x[0].square(),
            "tanh" => x[0].tanh(),
            "sigmoid" => x[0].sigmoid(),
            "relu" => x[0].relu(),
            "softplus" => x[0].softplus(),
            "abs" => x[0].abs(),
            "maximum" => x[0].maximum(x[1]),
            "minimum" => x[0].minimum(x[1]),
            "clamp" => x[0].clamp(-0.1, 0.1),
            "where_" => x[0].where_(x[1], x[2]),
            "sum" => x[0].sum(),
            "sum_axes" => x[0].sum_axes(&[0, 2], false),
            "mean" => x[0].mean(),
            "mean_axes" => x[0].mean_axes(&[1], true),
            "max_axis" => x[0].max_axis(1, false),
            "matmul" | "matmul_batched" => x[0].matmul(x[1]),
            "matmul_t" => x[0].matmul_t(x[1]),
            "batched_matmul_t" => x[0].batched_matmul_t(x[1]),
            "batched_bias_add" => x[0].batched_bias_add(x[1]),
            "batched_affine" => x[0].batched_affine(x[1], x[2]),
            "batched_affine_relu" => x[0].batched_affine_relu(x[1], x[2]),
            "dense_tanh" => x[0].dense(x[1], x[2], Activation::Tanh),
            "dense_sigmoid" => x[0].dense(x[1], x[2], Activation::Sigmoid),
            "dense_identity" => x[0].dense(x[1], x[2], Activation::Identity),
            "mean_softplus_matmul" => x[0].mean_softplus_matmul(x[1]),
            "tile_batch" => x[0].tile_batch(3),
            "reshape" => x[0].reshape([3, 2]),
            "permute" => x[0].permute(&[2, 0, 1]),
            "transpose" => x[0].t(),
            "broadcast_to" => x[0].broadcast_to([2, 3]),
            "slice" => x[0].slice(0, 1, 3),
            "concat" => tape::concat(&[x[0], x[1]], 0),
            "index_select" => x[0].index_select(0, &[2, 0, 2]),
            "gather" => x[0].gather(&[1, 3, 0]),
            "log_softmax" => x[0].log_softmax(1),
            "softmax_cross_entropy" => x[0].softmax_cross_entropy(&[1, 0, 3]),
            "mse" => x[0].mse(x[1]),
            "conv2d" => x[0].conv2d(x[1], 1, 1),
            "conv2d_strided" => x[0].conv2d(x[1], 2, 0),
            "max_pool2d" => x[0].max_pool2d(2, 2),
            "avg_pool2d" => x[0].avg_pool2d(2, 1),
            "batch_norm" | "batch_norm_4d" => x[0].batch_norm(x[1], x[2], 1e-5),
            other => panic!("no such op in the table: {other}"),
        }
    }
}

/// L(x) = Σ c ⊙ g(x) + ½ Σ g(x) ⊙ g(x): a scalar with curvature even when g is
/// linear (H = JᵀJ + Σ (c + g) ⊙ ∇²g), so its HVP exercises the op's JVP and VJP
/// rules on duals.
struct Loss<'a, G> {
    g: &'a G,
    c: Tensor<f64>,
}

impl<G: VectorFunction<f64>> Objective<f64> for Loss<'_, G> {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let y = self.g.eval(t, x);
        let c = t.constant_base(&self.c).reshape(y.shape());
        (y * c).sum() + (y * y).sum().mul_scalar(0.5)
    }
}

fn sample(r: &mut ChaCha8Rng, dims: &[usize], dom: Dom) -> Tensor<f64> {
    match dom {
        Any => uniform(r, dims, -1.0, 1.0),
        Pos => uniform(r, dims, 0.5, 1.5),
        AwayZero => away_from_zero(r, dims),
        Spread => spread(r, dims),
        Small => uniform(r, dims, -0.05, 0.05),
        Kinked => {
            let a = away_from_zero(r, dims);
            let b = uniform(r, dims, -0.05, 0.05);
            Tensor::from_fn(dims, |i| {
                if r.gen_bool(0.5) {
                    a.data()[i]
                } else {
                    b.data()[i]
                }
            })
        }
    }
}

/// Runs the four checks on a vector function at random inputs from `seed`.
fn check_all<G: VectorFunction<f64>>(name: &str, g: &G, x: &[Tensor<f64>], r: &mut ChaCha8Rng) {
    // The tangent is small relative to the kink/tie margins of the domains
    // (0.2 for relu/abs, ≥ 0.02 between maxima), times h, so no branch flips.
    let v: Vec<Tensor<f64>> = x
        .iter()
        .map(|xi| uniform(r, xi.dims(), -1.0, 1.0))
        .collect();
    let w: Vec<Tensor<f64>> = x
        .iter()
        .map(|xi| uniform(r, xi.dims(), -1.0, 1.0))
        .collect();
    let mut ws = Workspace::new();

    // JVP against the central difference of the op.
    let (y, jv) = ws.jvp_vec(g, x, &v);
    assert_close(
        &format!("{name}: value"),
        y.data(),
        eval_vec(g, x).data(),
        1e-14,
    );
    assert_close(
        &format!("{name}: JVP vs FD"),
        jv.data(),
        &fd_jvp(g, x, &v, 1e-6),
        1e-7,
    );

    // ⟨u, J·v⟩ = ⟨Jᵀu, v⟩.
    let u = uniform(r, y.dims(), -1.0, 1.0);
    let (_, jtu) = ws.vjp_vec(g, x, &u);
    let lhs: f64 = u.data().iter().zip(jv.data()).map(|(a, b)| a * b).sum();
    let rhs = dot(&jtu, &v);
    assert!(
        (lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()),
        "{name}: <u, Jv> = {lhs} but <J^T u, v> = {rhs}"
    );

    // H·v against the central difference of gradients, and symmetry.
    let loss = Loss {
        g,
        c: uniform(r, y.dims(), -1.0, 1.0),
    };
    let out = ws.hvp(&loss, x, &v);
    let (_, grad) = ws.value_and_grad(&loss, x);
    assert_close(
        &format!("{name}: dual grad"),
        &flat(&out.grad),
        &flat(&grad),
        1e-13,
    );
    let fd = fd_hvp(&loss, x, &v, 1e-5);
    assert_close(
        &format!("{name}: HVP vs FD"),
        &flat(&out.hv),
        &flat(&fd),
        1e-6,
    );
    let hw = ws.hvp(&loss, x, &w).hv;
    let (a, b) = (dot(&w, &out.hv), dot(&v, &hw));
    assert!(
        (a - b).abs() <= 1e-11 * (1.0 + a.abs()),
        "{name}: <w, Hv> = {a} but <v, Hw> = {b}"
    );
}

/// Ops that are not functions of free inputs, so the table's checks (which
/// perturb every input entry on its own) do not apply, each with the test
/// that checks its JVP and VJP instead; `table_covers_every_tape_op` makes
/// sure that test still exists. The tiled affine layers take a weight and a
/// bias that must be tiles of one block (φ_0 = (θ, …, θ)) and write the
/// adjoint of that one block, the block sum, into block 0 only.
const CHECKED_ELSEWHERE: &[(&str, &str, &str)] = &[
    (
        "batched_affine_tiled",
        include_str!("../../../tape/src/ops/batched.rs"),
        "fn tiled_affine_sums_the_weight_and_bias_blocks()",
    ),
    (
        "batched_affine_relu_tiled",
        include_str!("../../../tape/src/ops/batched.rs"),
        "fn tiled_affine_sums_the_weight_and_bias_blocks()",
    ),
];

/// Every op the tape names (the `=> "name"` arms of `Op::name` in
/// `crates/tape/src/ops/mod.rs`) has a row in the table, so a new op cannot
/// skip the JVP/HVP checks. Rows may specialise an op (`max_axis` covers `max`).
/// The few ops in [`CHECKED_ELSEWHERE`] have no row: their checking test must
/// exist where the list says.
#[test]
fn table_covers_every_tape_op() {
    let src = include_str!("../../../tape/src/ops/mod.rs");
    let names: Vec<&str> = src
        .split("=> \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|&n| n != "leaf")
        .collect();
    assert!(names.len() > 30, "could not parse the op names: {names:?}");
    for op in names {
        if let Some((_, file, test)) = CHECKED_ELSEWHERE.iter().find(|(name, ..)| *name == op) {
            assert!(
                file.contains(test),
                "op `{op}` is listed as checked by `{test}`, which no longer exists"
            );
            continue;
        }
        let covered = CASES
            .iter()
            .any(|c| c.name == op || c.name.strip_prefix(op).is_some_and(|r| r.starts_with('_')));
        assert!(
            covered,
            "op `{op}` has no row in the JVP/HVP table of crates/hvp/tests/suite/ops.rs"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Fixed seed: the same cases on every run, so CI cannot flake.
        rng_seed: proptest::test_runner::RngSeed::Fixed(24302),
        ..ProptestConfig::with_cases(8)
    })]

    #[test]
    fn every_op_jvp_vjp_hvp(seed in any::<u64>()) {
        for case in CASES {
            let mut r = rng(seed);
            let x: Vec<Tensor<f64>> =
                case.inputs.iter().map(|&(d, dom)| sample(&mut r, d, dom)).collect();
            check_all(case.name, &OpFn(case.name), &x, &mut r);
        }
    }

    #[test]
    fn random_graphs_jvp_vjp_hvp(seed in any::<u64>()) {
        let mut r = rng(seed);
        let prog = Program::random(&mut r, 6);
        let x = vec![
            uniform(&mut r, &[3, 4], -1.0, 1.0),
            uniform(&mut r, &[3, 4], -1.0, 1.0),
            uniform(&mut r, &[4, 4], -1.0, 1.0),
        ];
        check_all(&format!("{prog:?}"), &prog, &x, &mut r);
    }
}

/// One step of a random graph over values of shape [3, 4]; indices refer to
/// earlier values (inputs 0 and 1 are the first two).
#[derive(Copy, Clone, Debug)]
enum Step {
    Tanh,
    Sigmoid,
    Softplus,
    HalfSquare,
    ExpTanh,
    Mul(usize),
    Add(usize),
    Sub(usize),
    /// top / (softplus(v_j) + 0.5): a divisor bounded away from 0.
    Div(usize),
    /// top·W/2 with the [4, 4] input W.
    MatmulW,
    /// top − row means (broadcast of a keepdims reduction).
    Center,
    LogSoftmax,
}

/// A random smooth op graph (no kinks, so central differences are valid).
#[derive(Clone, Debug)]
struct Program(Vec<Step>);

impl Program {
    fn random(r: &mut ChaCha8Rng, len: usize) -> Self {
        Program(
            (0..len)
                .map(|i| {
                    let j = r.gen_range(0..i + 2);
                    match r.gen_range(0..12) {
                        0 => Step::Tanh,
                        1 => Step::Sigmoid,
                        2 => Step::Softplus,
                        3 => Step::HalfSquare,
                        4 => Step::ExpTanh,
                        5 => Step::Mul(j),
                        6 => Step::Add(j),
                        7 => Step::Sub(j),
                        8 => Step::Div(j),
                        9 => Step::MatmulW,
                        10 => Step::Center,
                        _ => Step::LogSoftmax,
                    }
                })
                .collect(),
        )
    }
}

impl VectorFunction<f64> for Program {
    fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let mut vals = vec![x[0], x[1]];
        for &s in &self.0 {
            let top = *vals.last().expect("non-empty");
            let next = match s {
                Step::Tanh => top.tanh(),
                Step::Sigmoid => top.sigmoid(),
                Step::Softplus => top.softplus(),
                Step::HalfSquare => top.square().mul_scalar(0.5),
                Step::ExpTanh => top.tanh().exp(),
                Step::Mul(j) => top * vals[j],
                Step::Add(j) => top + vals[j],
                Step::Sub(j) => top - vals[j],
                Step::Div(j) => top / vals[j].softplus().add_scalar(0.5),
                Step::MatmulW => top.matmul(x[2]).mul_scalar(0.5),
                Step::Center => top - top.mean_axes(&[1], true),
                Step::LogSoftmax => top.log_softmax(1),
            };
            vals.push(next);
        }
        *vals.last().expect("non-empty")
    }
}
