//! Buffer reuse: after a first call has grown the tapes, `Hessian::apply` and
//! `Workspace::hvp_into` allocate nothing, and a CG solve allocates a fixed
//! number of vectors however many iterations it runs.
//!
//! A counting global allocator counts allocations made on the test's own thread
//! while a flag is set (the harness's other threads are not counted). GEMM calls
//! included: their packing buffers are thread-local and kept (see
//! `crates/tape/tests/alloc.rs`).

use hvp::{cg, CgParams, Damped, Hessian, LinOp, Objective, Workspace};
use tape::testing::{count_allocations, process_allocations, CountingAllocator};
use tape::{Real, Tape, Tensor, Var};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// (allocations, over-aligned allocations) made by `f` on this thread.
fn count(f: impl FnOnce()) -> (usize, usize) {
    let n = count_allocations(f);
    (n.count, n.overaligned)
}

/// A smooth loss without matrix products: Σ softplus(a ⊙ x) + ½ Σ (x − b)² + tanh(Σ x).
struct Smooth {
    a: Tensor<f64>,
    b: Tensor<f64>,
}

impl Objective<f64> for Smooth {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let (a, b) = (t.constant_base(&self.a), t.constant_base(&self.b));
        (a * x[0]).softplus().sum() + (x[0] - b).square().sum().mul_scalar(0.5) + x[0].sum().tanh()
    }
}

/// Softmax cross-entropy of a linear model: one GEMM forward, one per adjoint.
struct Linear {
    x: Tensor<f64>,
}

impl Objective<f64> for Linear {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, w: &[Var<'t, T>]) -> Var<'t, T> {
        t.constant_base(&self.x)
            .matmul(w[0])
            .softmax_cross_entropy(&[0, 1, 2, 1])
    }
}

#[test]
fn hessian_apply_and_hvp_into_allocate_nothing_after_the_first_call() {
    let n = 50;
    let f = Smooth {
        a: Tensor::from_fn(&[n], |i| (i as f64 * 0.37).sin()),
        b: Tensor::from_fn(&[n], |i| (i as f64 * 0.11).cos()),
    };
    let x = [Tensor::from_fn(&[n], |i| (i as f64 * 0.23).sin())];
    let h = Hessian::new(&f, &x);
    let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.5).cos()).collect();
    let mut out = vec![0.0; n];
    h.apply(&v, &mut out); // grows the tape
    let (allocs, _) = count(|| {
        for _ in 0..10 {
            h.apply(&v, &mut out);
        }
    });
    assert_eq!(
        allocs, 0,
        "Hessian::apply allocated {allocs} times in 10 calls"
    );

    let mut ws = Workspace::new();
    let vs = [Tensor::vector(v.clone())];
    let (mut g, mut hv) = ([Tensor::zeros([n])], [Tensor::zeros([n])]);
    ws.hvp_into(&f, &x, &vs, &mut g, &mut hv);
    let (allocs, _) = count(|| {
        for _ in 0..10 {
            ws.hvp_into(&f, &x, &vs, &mut g, &mut hv);
        }
    });
    assert_eq!(allocs, 0, "hvp_into allocated {allocs} times in 10 calls");
    assert_eq!(hv[0].data(), &out[..], "same product either way");
}

#[test]
fn a_cg_solve_allocates_its_four_vectors_whatever_the_iteration_count() {
    let n = 40;
    let f = Smooth {
        a: Tensor::from_fn(&[n], |i| (i as f64 * 0.37).sin()),
        b: Tensor::zeros([n]),
    };
    let x = [Tensor::from_fn(&[n], |i| (i as f64 * 0.23).sin())];
    let h = Hessian::new(&f, &x);
    let a = Damped::new(&h, 0.1);
    let b: Vec<f64> = (0..n).map(|i| 1.0 + i as f64).collect();
    let _ = cg(
        &a,
        &b,
        CgParams {
            tol: 0.0,
            max_iter: 1,
        },
    ); // grows the tape
    let solve = |iters| {
        count(|| {
            let r = cg(
                &a,
                &b,
                CgParams {
                    tol: 0.0,
                    max_iter: iters,
                },
            );
            assert!(r.is_err(), "tol 0 cannot be met");
            drop(r);
        })
    };
    let (short, _) = solve(2);
    let (long, _) = solve(20);
    // x, r, p, A·p — the iterate then moves into the error.
    assert_eq!((short, long), (4, 4));
}

#[test]
fn with_matrix_products_nothing_is_allocated() {
    let f = Linear {
        x: Tensor::from_fn(&[4, 6], |i| (i as f64 * 0.7).sin()),
    };
    let w = [Tensor::from_fn(&[6, 3], |i| (i as f64 * 0.3).cos())];
    let h = Hessian::new(&f, &w);
    let v = vec![0.5; 18];
    let mut out = vec![0.0; 18];
    h.apply(&v, &mut out);
    let (allocs, overaligned) = count(|| h.apply(&v, &mut out));
    // Products this small (≤ 32K multiply-adds) run the small-matrix path and
    // allocate nothing; larger ones reuse thread-local packing buffers.
    assert_eq!(
        (allocs, overaligned),
        (0, 0),
        "a steady-state apply allocated"
    );
}

/// The benchmark's MLP (`examples/bench/mlp.rs`: 64 samples, 784-256-256-10,
/// ReLU, softmax cross-entropy, f32), with deterministic data.
struct BenchMlp {
    x: Tensor<f32>,
    labels: Vec<usize>,
}

impl Objective<f32> for BenchMlp {
    fn eval<'t, T: Real<Base = f32>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let mut h = t.constant_base(&self.x);
        for l in 0..3 {
            let z = h.matmul(p[2 * l]) + p[2 * l + 1];
            h = if l < 2 { z.relu() } else { z };
        }
        h.softmax_cross_entropy(&self.labels)
    }
}

/// Calls counted per workload: enough that an allocation once per 63 cut
/// products (rayon's injector queue, which a `rayon::join` from outside the
/// pool fills: `docs/benchmarks.md`, "split") shows, ≥ 5 cut products a call.
const CALLS: usize = 100;

/// Allocations per call (every thread of the process, [`CALLS`] calls after a
/// warm one) of the benchmark's `mlp_grad`, `mlp_hvp` (the HVP-only pass) and
/// `mlp_hvp_full` (value, gradient and H·v), in that order. Rayon's global
/// pool is started first, and every worker has run a job: its threads
/// allocate as they start, once per process, after the call that started
/// them returned.
fn mlp_allocations_per_call() -> [f64; 3] {
    rayon::broadcast(|_| ());
    let sizes = [784, 256, 256, 10];
    let f = BenchMlp {
        x: Tensor::from_fn(&[64, 784], |i| (i as f32 * 0.013).sin()),
        labels: (0..64).map(|i| (i * 7) % 10).collect(),
    };
    let mut x = Vec::new();
    for (l, w) in sizes.windows(2).enumerate() {
        let s = 1.0 / (w[0] as f32).sqrt();
        x.push(Tensor::from_fn(&[w[0], w[1]], |i| {
            s * ((i + l) as f32 * 0.7).cos()
        }));
        x.push(Tensor::from_fn(&[w[1]], |i| s * (i as f32 * 0.3).sin()));
    }
    let v: Vec<Tensor<f32>> = x
        .iter()
        .map(|p| Tensor::from_fn(p.shape(), |i| (i as f32 * 0.11).sin()))
        .collect();
    let per_call = |mut call: Box<dyn FnMut() + '_>| {
        call(); // grows tapes and scratch
        let before = process_allocations().count;
        for _ in 0..CALLS {
            call();
        }
        (process_allocations().count - before) as f64 / CALLS as f64
    };
    let mut tape = Tape::<f32>::new();
    let grad = per_call(Box::new(|| {
        tape.clear();
        let p: [Var<'_, f32>; 6] = std::array::from_fn(|i| tape.var(&x[i]));
        tape.backward(f.eval(&tape, &p));
    }));
    let mut ws = Workspace::new();
    let mut hv: Vec<Tensor<f32>> = x.iter().map(|p| Tensor::zeros(p.shape())).collect();
    let mut g = hv.clone();
    let only = per_call(Box::new(|| {
        ws.hvp_only_into(&f, &x, &v, &mut hv);
    }));
    let mut ws = Workspace::new();
    let full = per_call(Box::new(|| {
        ws.hvp_into(&f, &x, &v, &mut g, &mut hv);
    }));
    [grad, only, full]
}

/// The child of the test below: prints the counts (not run on its own).
#[test]
#[ignore = "child process of mlp_calls_allocate_nothing"]
fn mlp_allocations_child() {
    println!("ALLOCS {:?}", mlp_allocations_per_call());
}

/// The benchmark's MLP allocates nothing per steady-state call: the gradient
/// and either HVP pass, with one rayon thread and with two (its products of
/// 2^22 multiply-adds or more then cut in two, `kernels/large.rs`). (With
/// `matrixmultiply` it was one packing buffer per GEMM call: 8 for the
/// gradient, 14 for either HVP pass; the packed kernels keep theirs.) Each
/// thread count runs in a child process (rayon's global pool is built once per
/// process), counting the allocations of all its threads.
#[test]
fn mlp_calls_allocate_nothing() {
    let exe = std::env::current_exe().expect("test binary path");
    for threads in ["1", "2"] {
        let out = std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "mlp_allocations_child",
                "--nocapture",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("spawn the child test");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "child with {threads} threads failed:\n{text}"
        );
        let counts: Vec<f64> = text
            .lines()
            .find_map(|l| l.strip_prefix("ALLOCS ["))
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or_else(|| panic!("no ALLOCS line from the child:\n{text}"))
            .split(", ")
            .map(|x| x.parse().expect("a count"))
            .collect();
        for ((what, got), old) in ["mlp_grad", "mlp_hvp", "mlp_hvp_full"]
            .iter()
            .zip(&counts)
            .zip([0.0, 0.0, 0.0])
        {
            assert!(
                *got <= old,
                "{what}, RAYON_NUM_THREADS={threads}: {got} allocations per call, expected {old}"
            );
        }
    }
}
