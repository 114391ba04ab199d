//! MAML configs, f32, as defined in `bench/README.md` (JAX side: `bench/jax_workloads.py`):
//!
//! - `maml_sine:rR:MODE`: MLP 1-40-40-1 ReLU, MSE, 25 tasks (amplitude
//!   U(0.1, 5), phase U(0, π), x U(−5, 5)), 10 support and 10 query points,
//!   inner SGD α = 0.01, R ∈ {1, 5, 10, 50, 200}; MODE ∈ {exact (every state
//!   stored), first_order, exact_recompute (constant memory), exact_binomial
//!   (⌈log2 R⌉ + 1 snapshots), ufo (q = 0.1, exact branch by recomputation, a
//!   fresh coin per task and call), ufo_binomial (the same, exact branch under
//!   the binomial plan of exact_binomial); the inner optimiser as a rule
//!   (`blo::rules`, its adjoint derived by the engine, docs/math.md §12):
//!   exact_rule and first_order_rule (SGD α = 0.01 on the generic path: the
//!   same numbers as exact and first_order up to rounding), exact_adam (Adam
//!   α = 0.01, β = (0.9, 0.999), ε = 1e-8, every state stored) and exact_lslr
//!   (MAML++'s per-layer per-step steps: an [R, 6] table in θ, all 0.01);
//!   and the batched path (`models::BatchedRegressionMaml`, issue 11):
//!   exact_batched and first_order_batched, the same tasks and quantity as
//!   exact and first_order (JAX's `exact` and `first_order` configs), with the
//!   25 tasks stacked in chunks of [`SINE_CHUNK`] (one tape per chunk, batched
//!   products) instead of one tape per task}.
//! - `maml_conv4:rR:MODE`: 4 × [3×3 conv 64, same padding, ReLU, 2×2 max-pool]
//!   on 28×28×1, linear head to 5 classes, no batch-norm; 4 tasks of 5 support
//!   and 75 query images (uniform pixels), α = 0.4, R ∈ {1, 5}; MODE ∈ {exact,
//!   first_order}.
//! - `maml_conv4_bn:rR:MODE`: Finn et al.'s Omniglot Conv4: 4 × [3×3 conv 64,
//!   stride 2, padding 1, batch-norm with the batch's statistics, ReLU] on
//!   28×28×1 (28 → 14 → 7 → 4 → 2), linear head to 5 classes; the same
//!   tasks, α, R and modes as `maml_conv4`.
//!
//! One call = value and meta-gradient of the mean query loss over the
//! meta-batch: one `blo` estimate per task, or per chunk of tasks for the
//! batched modes (in parallel on rayon's pool; the estimates are summed in
//! task or chunk order, so the numbers do not depend on the thread count).
//!
//! # The UFO cost model (`maml_sine:rR:ufo`)
//!
//! After the UFO timing, the same tasks and θ are timed again, same rule, with
//! the first-order estimator alone (UFO's surrogate, run on every task) and
//! with the exact estimator alone under the exact branch's policy (`Exact`
//! under `Policy::Recompute` for `ufo`, the binomial plan for
//! `ufo_binomial`), each as a full meta-batch. UFO's exact branch continues
//! the first-order rollout, so what it adds on a task whose coin comes up is
//! the exact estimate minus the first-order one. The JSON gets `cost_model`:
//! `model_ms = fo_mean + q·(exact_mean − fo_mean)`, `model_ms_observed` with q
//! replaced by the observed fraction of task-calls that ran the exact branch,
//! and `ratio(_observed) = mean_ms / model`.
//!
//! The model is biased low on a multi-threaded pool, and we report it as is.
//! Wall time of a call is the makespan of its 25 tasks over the threads, not
//! their summed work divided by the thread count. The FO and exact baselines
//! are 25 equal tasks each (balanced up to one task: 13 vs 12 on 2 threads);
//! a UFO call is 25 FO tasks plus Binomial(25, q) exact branches that cannot
//! be split: with an odd number of them (probability ≈ ½), one thread can still
//! be running an exact branch (c_E, one branch's time) while the other idles.
//! By Jensen (E max ≥ max E) the mean makespan exceeds the model, by up to
//! about c_E/2 per call, which matters when c_E is large against the FO
//! meta-batch (large R: the recompute branch costs O(R²) forward steps). A
//! simulation of greedy in-order scheduling on 2 threads, with per-task costs
//! as measured on a noisy machine, puts E[UFO wall] / model at about 1.00 for
//! R = 1, 1.03 for R = 10 and 1.09 for R = 50 (1.00 on one thread). As a check
//! free of scheduling (not of contention from other processes),
//! `cost_model.busy` sums each task's own wall time (work, in task-ms per
//! call) and compares the same model on that.

use blo::{
    rules, BloError, Estimate, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, Ufo,
};
use models::{Activation, Conv4, Episode, Init, Mlp, Model, RegressionEpisode, SinusoidTasks};
use models::{BatchedRegressionMaml, ClassificationMaml, RegressionChunk, RegressionMaml};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tape::{Real, Shape, Tape, Tensor, Var};

use crate::{Bench, Timed};

const SINE_R: [usize; 5] = [1, 5, 10, 50, 200];
const SINE_MODES: [&str; 12] = [
    "exact",
    "first_order",
    "exact_recompute",
    "exact_binomial",
    "ufo",
    "ufo_binomial",
    "exact_rule",
    "first_order_rule",
    "exact_adam",
    "exact_lslr",
    "exact_batched",
    "first_order_batched",
];
/// Tasks per chunk of the batched modes: 25 tasks → chunks of 13 and 12, one
/// per core on the 2-core machines of docs/benchmarks.md. A constant, so the
/// numbers do not depend on the thread count.
const SINE_CHUNK: usize = 13;
/// UFO's fixed probability of running the exact branch.
const UFO_Q: f64 = 0.1;
const CONV_R: [usize; 2] = [1, 5];
const CONV_MODES: [&str; 2] = ["exact", "first_order"];

/// The MAML config names this runner knows.
pub(crate) fn configs() -> Vec<String> {
    let mut c = Vec::new();
    for r in SINE_R {
        for m in SINE_MODES {
            c.push(format!("maml_sine:r{r}:{m}"));
        }
    }
    for family in ["maml_conv4", "maml_conv4_bn"] {
        for r in CONV_R {
            for m in CONV_MODES {
                c.push(format!("{family}:r{r}:{m}"));
            }
        }
    }
    c
}

/// The workload for a MAML config, or `None` if unknown.
pub(crate) fn workload(config: &str) -> Option<Box<dyn Bench>> {
    let parts: Vec<&str> = config.split(':').collect();
    let [family, r, mode] = parts[..] else {
        return None;
    };
    let r: usize = r.strip_prefix('r')?.parse().ok()?;
    match family {
        "maml_sine" if SINE_R.contains(&r) && mode == "exact_lslr" => {
            Some(Box::new(sine_lslr(r).expect("valid hyperparameters")))
        }
        "maml_sine" if SINE_R.contains(&r) && mode.ends_with("_batched") => Some(Box::new(
            sine_batched(r, mode).expect("valid hyperparameters"),
        )),
        "maml_sine" if SINE_R.contains(&r) && SINE_MODES.contains(&mode) => {
            Some(Box::new(sine(r, mode).expect("valid hyperparameters")))
        }
        "maml_conv4" | "maml_conv4_bn" if CONV_R.contains(&r) && CONV_MODES.contains(&mode) => {
            let bn = family == "maml_conv4_bn";
            Some(Box::new(conv4(r, mode, bn).expect("valid hyperparameters")))
        }
        _ => None,
    }
}

/// ⌈log2 r⌉ + 1 snapshots (φ_0 included).
fn binomial_snapshots(r: usize) -> usize {
    (usize::BITS - (r.max(1) - 1).leading_zeros()) as usize + 1
}

/// The binomial policy with [`binomial_snapshots`] slots.
fn binomial_policy(r: usize) -> Result<Policy, BloError> {
    let p = Policy::Binomial {
        snapshots: binomial_snapshots(r),
    };
    p.validate()?;
    Ok(p)
}

fn estimator<P: Problem<f32>>(
    mode: &str,
    r: usize,
) -> Result<Box<dyn Estimator<f32, P>>, BloError> {
    Ok(match mode {
        "exact" | "exact_rule" | "exact_adam" | "exact_lslr" | "exact_batched" => {
            Box::new(Exact::new(Policy::StoreAll)?)
        }
        "first_order" | "first_order_rule" | "first_order_batched" => Box::new(FirstOrder::new()),
        "exact_recompute" => Box::new(Exact::new(Policy::Recompute)?),
        "exact_binomial" => Box::new(Exact::new(binomial_policy(r)?)?),
        "ufo" => Box::new(Ufo::fixed(UFO_Q)?),
        "ufo_binomial" => Box::new(Ufo::fixed_with(UFO_Q, binomial_policy(r)?)?),
        _ => unreachable!("mode checked by `workload`"),
    })
}

/// A meta-batch benchmark over any problem.
struct Maml<P: Problem<f32>> {
    params: Value,
    problem: P,
    tasks: Vec<P::Task>,
    /// The number of tasks of the meta-batch (more than `tasks.len()` when a
    /// task of `P` is a chunk of tasks); the mean divides by it.
    meta_batch: usize,
    theta: Vec<Tensor<f32>>,
    estimator: Box<dyn Estimator<f32, P>>,
    grad: Vec<Tensor<f32>>,
    calls: u64,
    /// Summed over the meta-batch of the last call (peaks: maximum).
    stats: blo::Stats,
    /// UFO's q and its exact branch's policy, for the cost model (`Some` only
    /// for the `ufo` modes); it also turns on the per-task timing behind
    /// `cost_model.busy`.
    ufo_q: Option<(f64, Policy)>,
    /// Running totals since [`Bench::start_timing`].
    totals: Totals,
}

/// Running totals over the timed calls.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    calls: u64,
    task_calls: usize,
    exact_branches: usize,
    /// Summed wall time of the individual task estimates (only with `ufo_q`).
    busy_ns: u64,
}

impl<P: Problem<f32>> Maml<P> {
    fn new(
        params: Value,
        problem: P,
        tasks: Vec<P::Task>,
        theta: Vec<Tensor<f32>>,
        estimator: Box<dyn Estimator<f32, P>>,
    ) -> Self {
        let grad = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
        Maml {
            params,
            problem,
            meta_batch: tasks.len(),
            tasks,
            theta,
            estimator,
            grad,
            calls: 0,
            stats: blo::Stats::default(),
            ufo_q: None,
            totals: Totals::default(),
        }
    }
}

impl<P: Problem<f32>> Bench for Maml<P>
where
    P::Task: Sync,
{
    fn params(&self) -> Value {
        self.params.clone()
    }

    fn call(&mut self) -> f64 {
        let call = self.calls;
        self.calls += 1;
        let (problem, theta, est) = (&self.problem, &self.theta, &self.estimator);
        let time_tasks = self.ufo_q.is_some();
        let busy_ns = AtomicU64::new(0);
        // Each task's coin stream depends on (call, task) only.
        let one = |(i, task): (usize, &P::Task)| {
            let t0 = time_tasks.then(Instant::now);
            let mut rng = ChaCha8Rng::seed_from_u64((call << 16) | i as u64);
            let e = est
                .estimate(problem, task, theta, &mut rng)
                .unwrap_or_else(|e| panic!("task {i}: {e}"));
            if let Some(t0) = t0 {
                busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            e
        };
        // On a one-thread pool the tasks run on this thread, in order: handing
        // them to the pool's one worker and waiting for it costs two thread
        // switches per call and computes the same numbers.
        let estimates: Vec<Estimate<f32>> = if rayon::current_num_threads() == 1 {
            self.tasks.iter().enumerate().map(one).collect()
        } else {
            self.tasks
                .par_iter()
                .enumerate()
                // One task per job: a long task (UFO's exact branch) never holds
                // queued tasks hostage, the other thread steals them.
                .with_max_len(1)
                .map(one)
                .collect()
        };
        let n = self.meta_batch as f32;
        let mut loss = 0.0f64;
        let mut stats = blo::Stats::default();
        for g in &mut self.grad {
            g.data_mut().fill(0.0);
        }
        for e in &estimates {
            loss += e.outer_loss as f64;
            stats.add(&e.stats);
            for (acc, g) in self.grad.iter_mut().zip(&e.grad) {
                for (a, &b) in acc.data_mut().iter_mut().zip(g.data()) {
                    *a += b / n;
                }
            }
        }
        self.totals.calls += 1;
        self.totals.task_calls += estimates.len();
        self.totals.exact_branches += stats.exact_branches;
        self.totals.busy_ns += busy_ns.into_inner();
        self.stats = stats;
        loss / n as f64
    }

    fn start_timing(&mut self) {
        self.totals = Totals::default();
    }

    fn cost_model(&mut self, config: &str, timed: &Timed) -> Option<Value> {
        let (q, policy) = self.ufo_q?;
        let ufo = self.totals;
        assert_eq!(
            ufo.calls as usize,
            timed.times.len(),
            "totals cover the timed calls"
        );
        let exact_fraction = ufo.exact_branches as f64 / ufo.task_calls as f64;
        // UFO's two parts alone, on the same tasks and θ, same timing rule and
        // coin seeds (neither part draws from its rng here).
        let ufo_est = std::mem::replace(&mut self.estimator, Box::new(FirstOrder::new()));
        self.calls = 0;
        let fo = crate::timed_calls(&format!("{config} [cost model: first-order]"), self);
        let fo_busy = self.totals;
        self.estimator = Box::new(Exact::new(policy).expect("valid policy"));
        self.calls = 0;
        let ex = crate::timed_calls(&format!("{config} [cost model: exact branch]"), self);
        let ex_busy = self.totals;
        self.estimator = ufo_est;
        assert!(
            fo.loss.is_finite() && ex.loss.is_finite(),
            "{config}: non-finite loss"
        );

        let r4 = |x: f64| (x * 1e4).round() / 1e4;
        let (fo_mean, ex_mean, mean) = (fo.mean_ms(), ex.mean_ms(), timed.mean_ms());
        let model = fo_mean + q * (ex_mean - fo_mean);
        let model_obs = fo_mean + exact_fraction * (ex_mean - fo_mean);
        // Work per call in task-ms (sum of the tasks' own wall times).
        let busy = |t: Totals| t.busy_ns as f64 / 1e6 / t.calls as f64;
        let (b_ufo, b_fo, b_ex) = (busy(ufo), busy(fo_busy), busy(ex_busy));
        let (b_model, b_model_obs) = (
            b_fo + q * (b_ex - b_fo),
            b_fo + exact_fraction * (b_ex - b_fo),
        );
        Some(json!({
            "fo_mean_ms": r4(fo_mean),
            "exact_mean_ms": r4(ex_mean),
            "q": q,
            "exact_fraction": r4(exact_fraction),
            "model_ms": r4(model),
            "model_ms_observed": r4(model_obs),
            "ratio": r4(mean / model),
            "ratio_observed": r4(mean / model_obs),
            "fo_iterations": fo.times.len(),
            "exact_iterations": ex.times.len(),
            "exact_policy": format!("{policy:?}"),
            "busy": {
                "ufo_task_ms_per_call": r4(b_ufo),
                "fo_task_ms_per_call": r4(b_fo),
                "exact_task_ms_per_call": r4(b_ex),
                "model": r4(b_model),
                "model_observed": r4(b_model_obs),
                "ratio": r4(b_ufo / b_model),
                "ratio_observed": r4(b_ufo / b_model_obs),
            },
        }))
    }

    fn extra(&mut self) -> Map<String, Value> {
        let mut m = Map::new();
        let s = &self.stats;
        m.insert("estimator".into(), json!(self.estimator.name()));
        m.insert("gradients".into(), json!(s.gradients));
        m.insert("hvps".into(), json!(s.hvps));
        m.insert("forward_steps".into(), json!(s.forward_steps));
        m.insert("states_peak_per_task".into(), json!(s.states_peak));
        m.insert(
            "state_bytes_peak_per_task".into(),
            json!(s.state_bytes_peak),
        );
        m.insert("exact_branches_last_call".into(), json!(s.exact_branches));
        m.insert("rayon_threads".into(), json!(rayon::current_num_threads()));
        let g2: f64 = self.grad.iter().map(|t| t.norm().powi(2)).sum();
        m.insert("grad_norm".into(), json!(g2.sqrt()));
        m
    }
}

fn sine(r: usize, mode: &str) -> Result<Maml<RegressionMaml<Mlp>>, BloError> {
    let net = Mlp::new(&[1, 40, 40, 1], Activation::Relu)
        .with_init(Init::TorchDefault, Init::TorchDefault);
    let theta = net.init::<f32>(1).into_tensors();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let dist = SinusoidTasks::default();
    let tasks: Vec<RegressionEpisode<f32>> = (0..25)
        .map(|_| dist.sample_episode(&mut rng, 10, 10))
        .collect();
    let inner = match mode {
        "exact_rule" | "first_order_rule" => InnerLoop::rule(r, rules::Sgd::new(0.01)?)?,
        "exact_adam" => InnerLoop::rule(r, rules::Adam::new(0.01, 0.9, 0.999, 1e-8)?)?,
        _ => InnerLoop::sgd(r, 0.01)?,
    };
    let problem = RegressionMaml { net, inner };
    let params = json!({"r": r, "mode": mode, "tasks": 25, "k_support": 10, "k_query": 10,
        "alpha": 0.01, "sizes": [1, 40, 40, 1], "dtype": "f32",
        "binomial_snapshots": if mode.ends_with("binomial") { Some(binomial_snapshots(r)) } else { None },
        "ufo_q": if mode.starts_with("ufo") { Some(UFO_Q) } else { None }});
    let est = estimator(mode, r)?;
    let mut maml = Maml::new(params, problem, tasks, theta, est);
    match mode {
        "ufo" => maml.ufo_q = Some((UFO_Q, Policy::Recompute)),
        "ufo_binomial" => maml.ufo_q = Some((UFO_Q, binomial_policy(r)?)),
        _ => {}
    }
    Ok(maml)
}

/// `maml_sine:rR:{exact,first_order}_batched`: the tasks, θ and inner loop of
/// [`sine`], the 25 tasks stacked in chunks of [`SINE_CHUNK`].
fn sine_batched(r: usize, mode: &str) -> Result<Maml<BatchedRegressionMaml>, BloError> {
    let per_task = sine(r, mode)?;
    let eps: Vec<RegressionEpisode<f32>> = per_task.tasks;
    let chunks = RegressionChunk::chunks(&eps, SINE_CHUNK).expect("25 equally shaped episodes");
    let problem = BatchedRegressionMaml {
        net: per_task.problem.net,
        inner: per_task.problem.inner,
    };
    let mut params = per_task.params;
    params["chunk"] = json!(SINE_CHUNK);
    let est = estimator(mode, r)?;
    let mut maml = Maml::new(params, problem, chunks, per_task.theta, est);
    maml.meta_batch = eps.len();
    Ok(maml)
}

/// `maml_sine:rR:exact_lslr`: the sine MLP with θ = (weights, an [R, 6]
/// table of per-layer, per-step steps, all 0.01), φ_0 = the weights.
fn sine_lslr(r: usize) -> Result<Maml<WithSteps<RegressionMaml<Mlp>>>, BloError> {
    let net = Mlp::new(&[1, 40, 40, 1], Activation::Relu)
        .with_init(Init::TorchDefault, Init::TorchDefault);
    let mut theta = net.init::<f32>(1).into_tensors();
    let n_phi = theta.len();
    theta.push(Tensor::new([r, n_phi], vec![0.01; r * n_phi]));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let dist = SinusoidTasks::default();
    let tasks: Vec<RegressionEpisode<f32>> = (0..25)
        .map(|_| dist.sample_episode(&mut rng, 10, 10))
        .collect();
    let problem = WithSteps {
        problem: RegressionMaml {
            net,
            inner: InnerLoop::sgd(r, 0.01)?,
        },
        inner: InnerLoop::rule(r, rules::Lslr::table(n_phi))?,
        n_phi,
    };
    let params = json!({"r": r, "mode": "exact_lslr", "tasks": 25, "k_support": 10, "k_query": 10,
        "alpha": 0.01, "sizes": [1, 40, 40, 1], "dtype": "f32"});
    let est = estimator("exact_lslr", r)?;
    Ok(Maml::new(params, problem, tasks, theta, est))
}

/// A MAML problem whose θ carries step sizes after its weights: φ_0 is the
/// first `n_phi` tensors of θ, and the losses see those only.
struct WithSteps<P> {
    problem: P,
    inner: InnerLoop,
    n_phi: usize,
}

impl<P: Problem<f32>> Problem<f32> for WithSteps<P> {
    type Task = P::Task;
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f32>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.problem
            .inner_loss(tape, task, step, &theta[..self.n_phi], phi)
    }
    fn outer_loss<'t, T: Real<Base = f32>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.problem
            .outer_loss(tape, task, &theta[..self.n_phi], phi)
    }
    fn initial_state<'t, T: Real<Base = f32>>(
        &self,
        _tape: &'t Tape<T>,
        _task: &Self::Task,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        theta[..self.n_phi].to_vec()
    }
}

/// `maml_conv4` (`bn: false`, the benchmark variant) or `maml_conv4_bn`
/// (Finn et al.'s Omniglot variant, with batch-norms).
fn conv4(r: usize, mode: &str, bn: bool) -> Result<Maml<ClassificationMaml<Conv4>>, BloError> {
    let mut net = if bn {
        Conv4::omniglot(5)
    } else {
        Conv4::benchmark(5)
    };
    net.conv_init = Init::TorchDefault;
    let theta = net.init::<f32>(2).into_tensors();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (ways, shots, queries) = (5, 1, 15);
    let mut images = |n: usize| -> Tensor<f32> {
        Tensor::from_fn(Shape::new(&[n, 1, 28, 28]), |_| rng.gen_range(0.0f32..1.0))
    };
    let tasks: Vec<Episode<f32>> = (0..4)
        .map(|_| {
            let support_y: Vec<usize> = (0..ways)
                .flat_map(|c| std::iter::repeat_n(c, shots))
                .collect();
            let query_y: Vec<usize> = (0..ways)
                .flat_map(|c| std::iter::repeat_n(c, queries))
                .collect();
            Episode {
                support_x: images(ways * shots),
                query_x: images(ways * queries),
                classes: (0..ways).collect(),
                support_ids: support_y.iter().map(|&c| (c, 0)).collect(),
                query_ids: query_y.iter().enumerate().map(|(i, &c)| (c, i)).collect(),
                support_y,
                query_y,
            }
        })
        .collect();
    let problem = ClassificationMaml {
        net,
        inner: InnerLoop::sgd(r, 0.4)?,
        proximal: None,
    };
    let params = json!({"r": r, "mode": mode, "tasks": 4, "ways": ways, "shots": shots,
        "queries_per_class": queries, "alpha": 0.4, "channels": 64, "dtype": "f32",
        "layout": "NCHW", "variant": if bn { "omniglot (stride 2, batch-norm)" } else { "benchmark" }});
    let est = estimator(mode, r)?;
    Ok(Maml::new(params, problem, tasks, theta, est))
}
