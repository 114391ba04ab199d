//! MAML configs, f32, as defined in `../shared/bench/jax_ref/workloads.py`:
//!
//! - `maml_sine:rR:MODE`: MLP 1-40-40-1 ReLU, MSE, 25 tasks (amplitude
//!   U(0.1, 5), phase U(0, π), x U(−5, 5)), 10 support and 10 query points,
//!   inner SGD α = 0.01, R ∈ {1, 5, 10, 50, 200}; MODE ∈ {exact (every state
//!   stored), first_order, exact_recompute (constant memory), exact_binomial
//!   (⌈log2 R⌉ + 1 snapshots), ufo (q = 0.1, exact branch by recomputation, a
//!   fresh coin per task and call)}.
//! - `maml_conv4:rR:MODE`: 4 × [3×3 conv 64, same padding, ReLU, 2×2 max-pool]
//!   on 28×28×1, linear head to 5 classes, no batch-norm; 4 tasks of 5 support
//!   and 75 query images (uniform pixels), α = 0.4, R ∈ {1, 5}; MODE ∈ {exact,
//!   first_order}.
//!
//! One call = value and meta-gradient of the mean query loss over the
//! meta-batch: one `blo` estimate per task (tasks in parallel on rayon's pool;
//! the per-task estimates are summed in task order, so the numbers do not
//! depend on the thread count).

use blo::{BloError, Estimate, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, Ufo};
use blo_examples::maml::{ClassificationMaml, RegressionMaml};
use models::{Activation, Conv4, Episode, Init, Mlp, Model, RegressionEpisode, SinusoidTasks};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{json, Map, Value};
use tape::{Shape, Tensor};

use crate::Bench;

const SINE_R: [usize; 5] = [1, 5, 10, 50, 200];
const SINE_MODES: [&str; 5] = [
    "exact",
    "first_order",
    "exact_recompute",
    "exact_binomial",
    "ufo",
];
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
    for r in CONV_R {
        for m in CONV_MODES {
            c.push(format!("maml_conv4:r{r}:{m}"));
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
        "maml_sine" if SINE_R.contains(&r) && SINE_MODES.contains(&mode) => {
            Some(Box::new(sine(r, mode).expect("valid hyperparameters")))
        }
        "maml_conv4" if CONV_R.contains(&r) && CONV_MODES.contains(&mode) => {
            Some(Box::new(conv4(r, mode).expect("valid hyperparameters")))
        }
        _ => None,
    }
}

/// ⌈log2 r⌉ + 1 snapshots (φ_0 included).
fn binomial_snapshots(r: usize) -> usize {
    (usize::BITS - (r.max(1) - 1).leading_zeros()) as usize + 1
}

fn estimator<P: Problem<f32>>(
    mode: &str,
    r: usize,
) -> Result<Box<dyn Estimator<f32, P>>, BloError> {
    Ok(match mode {
        "exact" => Box::new(Exact::new(Policy::StoreAll)?),
        "first_order" => Box::new(FirstOrder::new()),
        "exact_recompute" => Box::new(Exact::new(Policy::Recompute)?),
        "exact_binomial" => Box::new(Exact::new(Policy::binomial(binomial_snapshots(r))?)?),
        "ufo" => Box::new(Ufo::fixed(0.1)?),
        _ => unreachable!("mode checked by `workload`"),
    })
}

/// A meta-batch benchmark over any problem.
struct Maml<P: Problem<f32>> {
    params: Value,
    problem: P,
    tasks: Vec<P::Task>,
    theta: Vec<Tensor<f32>>,
    estimator: Box<dyn Estimator<f32, P>>,
    grad: Vec<Tensor<f32>>,
    calls: u64,
    /// Summed over the meta-batch of the last call (peaks: maximum).
    stats: blo::Stats,
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
            tasks,
            theta,
            estimator,
            grad,
            calls: 0,
            stats: blo::Stats::default(),
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
        // Each task's coin stream depends on (call, task) only.
        let estimates: Vec<Estimate<f32>> = self
            .tasks
            .par_iter()
            .enumerate()
            .map(|(i, task)| {
                let mut rng = ChaCha8Rng::seed_from_u64((call << 16) | i as u64);
                est.estimate(problem, task, theta, &mut rng)
                    .unwrap_or_else(|e| panic!("task {i}: {e}"))
            })
            .collect();
        let n = estimates.len() as f32;
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
        self.stats = stats;
        loss / n as f64
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
    let problem = RegressionMaml {
        net,
        inner: InnerLoop::sgd(r, 0.01)?,
    };
    let params = json!({"r": r, "mode": mode, "tasks": 25, "k_support": 10, "k_query": 10,
        "alpha": 0.01, "sizes": [1, 40, 40, 1], "dtype": "f32",
        "binomial_snapshots": if mode == "exact_binomial" { Some(binomial_snapshots(r)) } else { None },
        "ufo_q": if mode == "ufo" { Some(0.1) } else { None }});
    let est = estimator(mode, r)?;
    Ok(Maml::new(params, problem, tasks, theta, est))
}

fn conv4(r: usize, mode: &str) -> Result<Maml<ClassificationMaml<Conv4>>, BloError> {
    let mut net = Conv4::benchmark(5);
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
        "layout": "NCHW"});
    let est = estimator(mode, r)?;
    Ok(Maml::new(params, problem, tasks, theta, est))
}
