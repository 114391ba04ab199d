//! The batched MAML path ([`BatchedRegressionMaml`] on [`RegressionChunk`]s)
//! against the per-task path ([`RegressionMaml`], one estimate per task), and
//! its thread-count independence.

use blo::{
    BloError, Estimate, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, Truncated,
};
use models::{
    sum_estimates, Activation, BatchError, BatchedRegressionMaml, Mlp, Model, RegressionChunk,
    RegressionEpisode, RegressionMaml, SinusoidTasks,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Real, Tape, Tensor, Var};

/// The sinusoid MLP of the benchmark (1-40-40-1, ReLU).
fn net() -> Mlp {
    Mlp::new(&[1, 40, 40, 1], Activation::Relu)
}

fn episodes<F: Float>(n: usize) -> Vec<RegressionEpisode<F>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..n)
        .map(|_| SinusoidTasks::default().sample_episode(&mut rng, 10, 10))
        .collect()
}

/// Mean over tasks of the per-task estimates (the per-task path).
fn per_task_mean(
    est: &dyn Estimator<f64, RegressionMaml<Mlp>>,
    r: usize,
    eps: &[RegressionEpisode<f64>],
    theta: &[Tensor<f64>],
) -> (f64, Vec<Tensor<f64>>) {
    let problem = RegressionMaml {
        net: net(),
        inner: InnerLoop::sgd(r, 0.01).unwrap(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut loss = 0.0;
    let mut grad: Vec<Tensor<f64>> = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
    for ep in eps {
        let e = est.estimate(&problem, ep, theta, &mut rng).unwrap();
        loss += e.outer_loss;
        for (a, g) in grad.iter_mut().zip(&e.grad) {
            a.data_mut()
                .iter_mut()
                .zip(g.data())
                .for_each(|(a, &b)| *a += b);
        }
    }
    let n = eps.len() as f64;
    grad.iter_mut()
        .for_each(|g| g.data_mut().iter_mut().for_each(|v| *v /= n));
    (loss / n, grad)
}

/// Mean over tasks by the batched path, in chunks of `chunk`.
fn batched_mean(
    est: &dyn Estimator<f64, BatchedRegressionMaml>,
    r: usize,
    eps: &[RegressionEpisode<f64>],
    theta: &[Tensor<f64>],
    chunk: usize,
) -> (f64, Vec<Tensor<f64>>) {
    let problem = BatchedRegressionMaml {
        net: net(),
        inner: InnerLoop::sgd(r, 0.01).unwrap(),
    };
    let chunks = RegressionChunk::chunks(eps, chunk).unwrap();
    let s = sum_estimates(&problem, est, &chunks, theta, 0).unwrap();
    let n = eps.len() as f64;
    let grad = s.grad.iter().map(|g| g.map(|v| v / n)).collect();
    (s.outer_loss / n, grad)
}

/// max |a − b| over every element of every tensor.
fn max_diff(a: &[Tensor<f64>], b: &[Tensor<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.data().iter().zip(y.data()).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

fn max_abs(a: &[Tensor<f64>]) -> f64 {
    a.iter()
        .flat_map(|x| x.data().iter().map(|v| v.abs()))
        .fold(0.0, f64::max)
}

/// The batched meta-gradient (5 tasks in chunks of 2: [2, 2, 1]) equals the
/// per-task path's mean within 1e-11 relative to its largest entry, in f64,
/// for the exact estimator (r = 1 and r = 3: the block-diagonal Hessian
/// enters from r = 2 on) and the first-order one. The sums run in another
/// order (one MSE over the chunk instead of one per task), so the two differ
/// by rounding only: about 1e-15 relative. For r = 3 the check also shows
/// the second-order terms matter (exact and first-order differ by far more
/// than the tolerance), so a batched path that dropped them would fail.
#[test]
fn batched_meta_gradient_equals_the_per_task_mean() {
    let eps = episodes::<f64>(5);
    let theta = net().init::<f64>(1).into_tensors();
    let exact = Exact::new(Policy::StoreAll).unwrap();
    let fo = FirstOrder::new();
    let mut fo_grads = Vec::new();
    let mut exact_grads = Vec::new();
    for r in [1, 3] {
        for (name, first_order) in [("exact", false), ("first_order", true)] {
            let ((l1, g1), (l2, g2)) = if first_order {
                (
                    per_task_mean(&fo, r, &eps, &theta),
                    batched_mean(&fo, r, &eps, &theta, 2),
                )
            } else {
                (
                    per_task_mean(&exact, r, &eps, &theta),
                    batched_mean(&exact, r, &eps, &theta, 2),
                )
            };
            let tol = 1e-11 * max_abs(&g1);
            let d = max_diff(&g1, &g2);
            assert!(d <= tol, "{name} r = {r}: max |Δgrad| = {d:e} > {tol:e}");
            assert!(
                (l1 - l2).abs() <= 1e-11 * l1.abs(),
                "{name} r = {r}: loss {l1} vs {l2}"
            );
            if r == 3 {
                if first_order {
                    fo_grads = g1;
                } else {
                    exact_grads = g1;
                }
            }
        }
    }
    let second_order = max_diff(&exact_grads, &fo_grads);
    assert!(
        second_order > 1e3 * 1e-11 * max_abs(&exact_grads),
        "exact and first-order differ by {second_order:e} only: the test could not tell them apart"
    );
}

/// Bits of an estimate's loss and gradient.
fn bits(e: &Estimate<f32>) -> Vec<u32> {
    let mut b = vec![e.outer_loss.to_bits()];
    for g in &e.grad {
        b.extend(g.data().iter().map(|v| v.to_bits()));
    }
    b
}

/// The bench's workload (25 tasks, f32), exact with r = 5 and first-order,
/// in chunks of 13 (the bench's) and of 4 (7 chunks, so the association of
/// the sum matters; with 2 chunks any order gives the same bits): one rayon
/// thread and two give the same bits.
#[test]
fn batched_sum_is_bit_identical_for_one_and_two_threads() {
    let eps = episodes::<f32>(25);
    let theta = net().init::<f32>(1).into_tensors();
    let problem = BatchedRegressionMaml {
        net: net(),
        inner: InnerLoop::sgd(5, 0.01).unwrap(),
    };
    let exact = Exact::new(Policy::StoreAll).unwrap();
    let fo = FirstOrder::new();
    let ests: [&dyn Estimator<f32, BatchedRegressionMaml>; 2] = [&exact, &fo];
    for (est, size) in ests.into_iter().flat_map(|e| [(e, 13), (e, 4)]) {
        let chunks = RegressionChunk::chunks(&eps, size).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(rayon::current_num_threads(), threads);
                bits(&sum_estimates(&problem, est, &chunks, &theta, 3).unwrap())
            })
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.len(), two.len());
        let first = one.iter().zip(&two).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "{}, chunks of {size}: 1 and 2 threads differ first at element {first:?} (0 = the loss)",
            est.name()
        );
    }
}

/// Episodes of different sizes cannot share a chunk; the error names the
/// episode, the tensor and both shapes. A zero chunk size is refused.
#[test]
fn mismatched_episodes_are_refused_with_the_evidence() {
    let mut eps = episodes::<f64>(3);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    eps[2] = SinusoidTasks::default().sample_episode(&mut rng, 10, 7);
    let e = RegressionChunk::new(&eps).unwrap_err();
    assert_eq!(
        e,
        BatchError::ShapeMismatch {
            episode: 2,
            what: "query_x",
            expected: vec![10, 1],
            found: vec![7, 1],
        }
    );
    assert!(
        e.to_string()
            .contains("episode 2: query_x has shape [7, 1]"),
        "{e}"
    );
    // Chunks of 2 keep the odd episode apart: [0, 1] and [2] both stack.
    assert_eq!(RegressionChunk::chunks(&eps, 2).unwrap().len(), 2);
    assert!(matches!(
        RegressionChunk::chunks(&eps, 0),
        Err(BatchError::Empty(_))
    ));
    assert!(matches!(
        RegressionChunk::<f64>::new(&[]),
        Err(BatchError::Empty(_))
    ));
}

/// [`BatchedRegressionMaml`] with or without its `initial_state_tiles`
/// statement (`tiles`; without it the sweeps record φ_0 and its VJP on a
/// tape), and with or without its `inner_loss_at_tiles` (`summed`; without
/// it step 1's adjoint pass records `inner_loss`, per-task weight adjoints).
#[derive(Clone)]
struct Variant {
    p: BatchedRegressionMaml,
    tiles: bool,
    summed: bool,
    /// `inner_loss_at_tiles` breaks its promise: its loss weighted by 1.05
    /// (a 5 % mis-weighting of H·w's block sums).
    mis_weighted: bool,
}

impl<F: Float> Problem<F> for Variant {
    type Task = RegressionChunk<F>;
    fn inner_loop(&self) -> &InnerLoop {
        &self.p.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &Self::Task,
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.p.inner_loss(t, task, step, theta, phi)
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.p.outer_loss(t, task, theta, phi)
    }
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        self.p.initial_state(t, task, theta)
    }
    fn initial_state_tiles(&self, task: &Self::Task) -> Option<usize> {
        if self.tiles {
            Problem::<F>::initial_state_tiles(&self.p, task)
        } else {
            None
        }
    }
    fn inner_loss_at_tiles<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Option<Var<'t, T>> {
        if self.summed {
            let l = self.p.inner_loss_at_tiles(t, task, theta, phi)?;
            Some(if self.mis_weighted { 1.05 * l } else { l })
        } else {
            None
        }
    }
}

/// The recorded-φ_0 variant of the sine problem (`Variant` without tiles).
type Taped = Variant;

/// An estimator of both problems (the test runs each on both).
trait EstimatorBoth: Estimator<f32, BatchedRegressionMaml> + Estimator<f32, Taped> {}
impl<E: Estimator<f32, BatchedRegressionMaml> + Estimator<f32, Taped>> EstimatorBoth for E {}

/// Step 1's adjoint pass with the weights' adjoints as block sums
/// (`inner_loss_at_tiles`, one product per layer for the whole chunk)
/// against the per-task weight adjoints (`Variant` without it): exact under
/// three policies and truncated (k = 1), r = 1 and 3, chunks of 13, 12 and
/// 1 tasks. In f64 the hypergradients agree within 1e-12 of the largest
/// entry and the losses are equal; in f32 (the bench's type) within 1e-5;
/// the three policies give the same bits; first-order is untouched (no
/// adjoint step). And at r = 1 the f64 hypergradient matches central
/// differences of the meta-loss F(θ) = L_out(φ_1(θ)) on entries of every
/// weight (within 1e-6 relative).
#[test]
fn summed_weight_adjoints_at_phi0_agree_with_per_task_ones() {
    fn check<F: Float>(tol: f64) {
        let eps = episodes::<F>(26);
        let theta = net().init::<F>(1).into_tensors();
        let chunks: Vec<RegressionChunk<F>> = [&eps[..13], &eps[13..25], &eps[25..]]
            .iter()
            .map(|e| RegressionChunk::new(e).unwrap())
            .collect();
        let policies = [
            Policy::StoreAll,
            Policy::Recompute,
            Policy::Binomial { snapshots: 2 },
        ];
        for r in [1, 3] {
            let p = BatchedRegressionMaml {
                net: net(),
                inner: InnerLoop::sgd(r, 0.01).unwrap(),
            };
            let per_task = Variant {
                p: p.clone(),
                tiles: true,
                summed: false,
                mis_weighted: false,
            };
            for chunk in &chunks {
                let what = format!("r = {r}, {} tasks", chunk.tasks());
                let rng = || ChaCha8Rng::seed_from_u64(0);
                let mut runs = Vec::new();
                for policy in policies {
                    let e = Exact::new(policy).unwrap();
                    runs.push((e.estimate(&p, chunk, &theta, &mut rng()).unwrap(), {
                        e.estimate(&per_task, chunk, &theta, &mut rng()).unwrap()
                    }));
                }
                let t = Truncated::new(1).unwrap();
                runs.push((
                    t.estimate(&p, chunk, &theta, &mut rng()).unwrap(),
                    t.estimate(&per_task, chunk, &theta, &mut rng()).unwrap(),
                ));
                let fo = FirstOrder::new();
                let (a, b) = (
                    fo.estimate(&p, chunk, &theta, &mut rng()).unwrap(),
                    fo.estimate(&per_task, chunk, &theta, &mut rng()).unwrap(),
                );
                let bits = |e: &Estimate<F>| {
                    e.grad
                        .iter()
                        .flat_map(|g| g.data().iter().map(|v| v.to_f64().to_bits()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&a), bits(&b), "{what}: first order");
                for (i, (a, b)) in runs.iter().enumerate() {
                    assert_eq!(a.outer_loss, b.outer_loss, "{what}, run {i}");
                    let f64s = |e: &Estimate<F>| -> Vec<Tensor<f64>> {
                        e.grad.iter().map(|g| g.map(|v| v.to_f64())).collect()
                    };
                    let (ga, gb) = (f64s(a), f64s(b));
                    let (d, scale) = (max_diff(&ga, &gb), max_abs(&gb));
                    assert!(
                        d <= tol * scale,
                        "{what}, run {i}: max |Δgrad| = {d:e}, largest {scale:e}"
                    );
                    if i < policies.len() {
                        assert_eq!(bits(a), bits(&runs[0].0), "{what}: policy {i}");
                    }
                }
            }
        }
    }
    check::<f64>(1e-12);
    check::<f32>(1e-5);
    // Central differences at r = 1 (f64), the first chunk.
    let eps = episodes::<f64>(13);
    let theta = net().init::<f64>(1).into_tensors();
    let chunk = RegressionChunk::new(&eps).unwrap();
    let p = BatchedRegressionMaml {
        net: net(),
        inner: InnerLoop::sgd(1, 0.01).unwrap(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let g = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &chunk, &theta, &mut rng)
        .unwrap()
        .grad;
    let meta = |theta: &[Tensor<f64>]| {
        FirstOrder::new()
            .estimate(&p, &chunk, theta, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap()
            .outer_loss
    };
    for (k, e) in [
        (0, 3),
        (0, 17),
        (2, 5),
        (2, 801),
        (2, 1599),
        (4, 7),
        (4, 33),
    ] {
        let at = |d: f64| {
            let mut th = theta.clone();
            th[k].data_mut()[e] += d;
            meta(&th)
        };
        let h = 1e-5;
        let fd = (at(h) - at(-h)) / (2.0 * h);
        let an = g[k].data()[e];
        assert!(
            (fd - an).abs() <= 1e-6 * (1.0 + an.abs()),
            "θ_{k}[{e}]: difference {fd}, hypergradient {an}"
        );
    }
}

/// φ_0 written as tiles of θ and its VJP taken as block sums
/// (`Problem::initial_state_tiles`) give the bits of φ_0 and its VJP
/// recorded on a tape: exact (three policies), truncated and first-order
/// estimates, r = 1 and 3, chunks of 13 and 12 tasks (the bench's) and of 1;
/// a non-finite θ fails alike.
#[test]
fn tiled_initial_state_gives_the_recorded_bits() {
    let eps = episodes::<f32>(26);
    let theta = net().init::<f32>(1).into_tensors();
    let chunks: Vec<RegressionChunk<f32>> = [&eps[..13], &eps[13..25], &eps[25..]]
        .iter()
        .map(|e| RegressionChunk::new(e).unwrap())
        .collect();
    let ests: [Box<dyn EstimatorBoth>; 5] = [
        Box::new(Exact::new(Policy::StoreAll).unwrap()),
        Box::new(Exact::new(Policy::Recompute).unwrap()),
        Box::new(Exact::new(Policy::Binomial { snapshots: 2 }).unwrap()),
        Box::new(Truncated::new(1).unwrap()),
        Box::new(FirstOrder::new()),
    ];
    for r in [1, 3] {
        let p = BatchedRegressionMaml {
            net: net(),
            inner: InnerLoop::sgd(r, 0.01).unwrap(),
        };
        // Step 1's adjoint pass per task on both sides (the block-summed
        // weight adjoints are `summed_weight_adjoints_at_phi0_*`'s).
        let fast = Variant {
            p: p.clone(),
            tiles: true,
            summed: false,
            mis_weighted: false,
        };
        let taped = Variant {
            p,
            tiles: false,
            summed: false,
            mis_weighted: false,
        };
        for est in &ests {
            for (i, chunk) in chunks.iter().enumerate() {
                let rng = || ChaCha8Rng::seed_from_u64(0);
                let a = Estimator::<f32, Taped>::estimate(
                    est.as_ref(),
                    &fast,
                    chunk,
                    &theta,
                    &mut rng(),
                )
                .unwrap();
                let b = Estimator::<f32, Taped>::estimate(
                    est.as_ref(),
                    &taped,
                    chunk,
                    &theta,
                    &mut rng(),
                )
                .unwrap();
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "r = {r}, {}, chunk {i} ({} tasks): tiled and recorded φ_0 differ",
                    Estimator::<f32, Taped>::name(est.as_ref()),
                    chunk.tasks()
                );
            }
        }
    }
    // A NaN that ReLU masks from the loss (W2) and an ∞ that reaches it (W1):
    // the sweeps that write φ_0's tiles straight into the tape check θ too.
    for (k, bad) in [(2, f32::NAN), (0, f32::INFINITY)] {
        let mut theta = theta.clone();
        theta[k].data_mut()[5] = bad;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let fast = BatchedRegressionMaml {
            net: net(),
            inner: InnerLoop::sgd(1, 0.01).unwrap(),
        };
        let err = |e: Result<Estimate<f32>, BloError>| e.unwrap_err().to_string();
        let a = err(FirstOrder::new().estimate(&fast, &chunks[0], &theta, &mut rng));
        let taped = Variant {
            p: fast.clone(),
            tiles: false,
            summed: false,
            mis_weighted: false,
        };
        let b = err(FirstOrder::new().estimate(&taped, &chunks[0], &theta, &mut rng));
        assert_eq!(a, b, "θ_{k} holds {bad}");
    }
}

/// Where debug assertions are on (the test profile), a problem whose
/// `inner_loss_at_tiles` is not `inner_loss` up to rounding is caught at
/// step 1's adjoint (`blo`'s `tiles::assert_block_sums_match`), naming the
/// hook, instead of giving a hypergradient 5 % off in the H·w term
/// (`Variant::mis_weighted`).
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "Problem::inner_loss_at_tiles: step 1 recorded by it gives")]
fn a_broken_inner_loss_at_tiles_is_caught() {
    let eps = episodes::<f64>(4);
    let chunk = RegressionChunk::new(&eps).unwrap();
    let theta = net().init::<f64>(1).into_tensors();
    let p = Variant {
        p: BatchedRegressionMaml {
            net: net(),
            inner: InnerLoop::sgd(1, 0.01).unwrap(),
        },
        tiles: true,
        summed: true,
        mis_weighted: true,
    };
    let _ = Exact::new(Policy::StoreAll).unwrap().estimate(
        &p,
        &chunk,
        &theta,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
}
