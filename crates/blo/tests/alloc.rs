//! Buffer reuse in the sweeps: once a first task has grown the cached
//! workspace (tapes, spare states, cotangent), an estimate allocates only
//! what it hands back — the gradient (one `Vec` plus one tensor per θ tensor)
//! — and the `Vec` that each call of [`Problem::initial_state`] returns. The
//! test problem counts those calls, so the expected number is exact:
//! 1 + |θ| + calls. Any per-step `Vec<Tensor>`, state clone or cotangent left
//! in the loops adds at least r allocations and fails the test.
//!
//! A counting global allocator counts allocations made on the test's own
//! thread while a flag is set (the estimators run on the calling thread).

use std::sync::atomic::{AtomicUsize, Ordering};

use blo::{
    Estimate, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, ReptileExact, Truncated,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::testing::{count_allocations, CountingAllocator};
use tape::{Real, Tape, Tensor, Var};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A task: inputs `x` [n, 2] and targets `y` [n, 1], fixed tensors (so the
/// losses allocate nothing of their own).
struct Batch {
    x: Tensor<f64>,
    y: Tensor<f64>,
}

/// φ = (W [2, h], v [h, 1]); L = mean((tanh(x W) v − y)²) on the task's batch
/// (inner and outer alike). With Meta-SGD, θ = (W, v, α_W, α_v) and φ_0 = (W, v).
struct Net {
    inner: InnerLoop,
    meta_sgd: bool,
    /// Calls of `initial_state` (each returns a fresh `Vec`).
    initial_calls: AtomicUsize,
}

impl Net {
    fn new(inner: InnerLoop, meta_sgd: bool) -> Self {
        Net {
            inner,
            meta_sgd,
            initial_calls: AtomicUsize::new(0),
        }
    }

    fn theta(&self, h: usize) -> Vec<Tensor<f64>> {
        let mut th = vec![
            Tensor::from_fn([2, h], |i| (i as f64 * 0.77 + 0.1).sin()),
            Tensor::from_fn([h, 1], |i| (i as f64 * 0.53).cos() * 0.5),
        ];
        if self.meta_sgd {
            th.push(Tensor::from_fn([2, h], |i| 0.05 + 0.01 * (i % 3) as f64));
            th.push(Tensor::from_fn([h, 1], |i| 0.08 - 0.01 * (i % 2) as f64));
        }
        th
    }

    fn loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Batch,
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = t.constant_base(&task.x);
        let y = t.constant_base(&task.y);
        (x.matmul(phi[0]).tanh().matmul(phi[1]) - y).square().mean()
    }
}

impl Problem<f64> for Net {
    type Task = Batch;

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Batch,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.loss(t, task, phi)
    }

    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Batch,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.loss(t, task, phi)
    }

    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        _task: &Batch,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        self.initial_calls.fetch_add(1, Ordering::Relaxed);
        theta[..2].to_vec()
    }
}

fn batch(n: usize, phase: f64) -> Batch {
    Batch {
        x: Tensor::from_fn([n, 2], |i| {
            if i % 2 == 0 {
                -2.0 + 4.0 * (i / 2) as f64 / n as f64
            } else {
                1.0
            }
        }),
        y: Tensor::from_fn([n, 1], |i| (-2.0 + 4.0 * i as f64 / n as f64 + phase).sin()),
    }
}

fn estimate<E: Estimator<f64, Net>>(
    est: &E,
    p: &Net,
    task: &Batch,
    th: &[Tensor<f64>],
) -> Estimate<f64> {
    est.estimate(p, task, th, &mut ChaCha8Rng::seed_from_u64(0))
        .expect("finite")
}

fn bits(e: &Estimate<f64>) -> Vec<u64> {
    e.grad
        .iter()
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

/// Runs `est` on two tasks to warm the workspace, then counts a third estimate
/// (on the first task again: its result must equal the first's bit for bit).
fn check<E: Estimator<f64, Net>>(what: &str, est: &E, p: &Net) {
    let th = p.theta(5);
    let (a, b) = (batch(7, 0.3), batch(7, 1.1));
    let first = estimate(est, p, &a, &th);
    estimate(est, p, &b, &th);
    let calls0 = p.initial_calls.load(Ordering::Relaxed);
    let mut again = None;
    let n = count_allocations(|| again = Some(estimate(est, p, &a, &th)));
    let calls = p.initial_calls.load(Ordering::Relaxed) - calls0;
    let again = again.expect("ran");
    assert_eq!(
        bits(&again),
        bits(&first),
        "{what}: a reused workspace changed the result"
    );
    let expected = 1 + th.len() + calls;
    assert_eq!(
        n.count,
        expected,
        "{what}: {} allocations, expected 1 + {} (the gradient) + {calls} (initial_state's Vecs)",
        n.count,
        th.len()
    );
}

#[test]
fn sweeps_allocate_only_their_result_once_warm() {
    let policies = [
        Policy::StoreAll,
        Policy::Recompute,
        Policy::EveryK { k: 3 },
        Policy::Sqrt,
        Policy::Binomial { snapshots: 3 },
    ];
    let inners = [
        ("sgd", InnerLoop::sgd(6, 0.1).unwrap(), false),
        ("momentum", InnerLoop::momentum(6, 0.1, 0.9).unwrap(), false),
        (
            "meta-sgd",
            InnerLoop::meta_sgd(6, vec![2, 3]).unwrap(),
            true,
        ),
    ];
    for (name, inner, meta) in inners {
        let p = Net::new(inner, meta);
        for policy in policies {
            let est = Exact::new(policy).unwrap();
            check(&format!("{name} exact {policy:?}"), &est, &p);
        }
        check(&format!("{name} first-order"), &FirstOrder::new(), &p);
        check(
            &format!("{name} truncated"),
            &Truncated::new(2).unwrap(),
            &p,
        );
        let reptile = ReptileExact::new(Policy::StoreAll).unwrap();
        check(&format!("{name} reptile-exact"), &reptile, &p);
    }
}

/// A chunk of `b` tasks that all start from θ: φ_0 = θ tiled to `[b, ..]`
/// (the shapes of the states and cotangents follow the chunk's size), and
/// L = ½ Σ (tanh φ_W − c)² + mean((φ_v − c)²) (inner and outer alike).
struct Chunk {
    b: usize,
    c: f64,
}

/// The stacked problem over [`Chunk`]s, with θ = (W [2, 5], v [5, 1]).
struct Stacked {
    inner: InnerLoop,
}

impl Problem<f64> for Stacked {
    type Task = Chunk;

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        task: &Chunk,
        _j: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0].tanh() - task.c).square().sum() * 0.5 + (phi[1] - task.c).square().mean()
    }

    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        task: &Chunk,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.inner_loss(t, task, 0, theta, phi)
    }

    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        task: &Chunk,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        theta.iter().map(|v| v.tile_batch(task.b)).collect()
    }
}

/// An estimator of [`Stacked`] and its name.
type Named = (&'static str, Box<dyn Estimator<f64, Stacked>>);

/// A thread that sweeps chunks of two sizes in turn (a meta-batch of 25
/// tasks in chunks of 13 and 12) keeps its states' and cotangent's
/// allocations: a warm estimate on a chunk of 3 tasks right after one of 2
/// allocates as often as one right after a chunk of 3, and gives the bits of
/// the first (cold) estimate.
#[test]
fn sweeps_over_chunks_of_two_sizes_allocate_as_over_one() {
    let p = Stacked {
        inner: InnerLoop::sgd(3, 0.1).unwrap(),
    };
    let th = [
        Tensor::from_fn([2, 5], |i| (i as f64 * 0.77 + 0.1).sin()),
        Tensor::from_fn([5, 1], |i| (i as f64 * 0.53).cos() * 0.5),
    ];
    let (three, two) = (Chunk { b: 3, c: 0.3 }, Chunk { b: 2, c: -0.4 });
    let ests: [Named; 4] = [
        (
            "exact StoreAll",
            Box::new(Exact::new(Policy::StoreAll).unwrap()),
        ),
        (
            "exact Recompute",
            Box::new(Exact::new(Policy::Recompute).unwrap()),
        ),
        (
            "exact Binomial",
            Box::new(Exact::new(Policy::Binomial { snapshots: 2 }).unwrap()),
        ),
        ("first-order", Box::new(FirstOrder::new())),
    ];
    let run = |est: &dyn Estimator<f64, Stacked>, task: &Chunk| {
        est.estimate(&p, task, &th, &mut ChaCha8Rng::seed_from_u64(0))
            .expect("finite")
    };
    for (what, est) in &ests {
        let cold = run(est.as_ref(), &three);
        run(est.as_ref(), &two);
        run(est.as_ref(), &three);
        let same = count_allocations(|| {
            run(est.as_ref(), &three);
        });
        run(est.as_ref(), &two);
        let mut again = None;
        let after_two = count_allocations(|| again = Some(run(est.as_ref(), &three)));
        assert_eq!(
            bits(&again.expect("ran")),
            bits(&cold),
            "{what}: a reused workspace changed the result"
        );
        assert_eq!(
            after_two.count, same.count,
            "{what}: {} allocations after a chunk of another size, {} after one of the same size",
            after_two.count, same.count
        );
    }
}
