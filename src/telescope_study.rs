//! Meta-test loss of MAML on the sinusoid at equal compute, across training
//! seeds, for first order, UFO, the best telescope, the planner's choice and
//! exact (issue 16's results; the `telescope` example's `--study`).
//!
//! For each seed s: θ₀ = the MLP's initialisation from s; the planner
//! ([`blo::plan_estimator`]) measures its pilot tasks at θ₀ (the tasks
//! [`blo::train::Trainer::planned`] draws: streams of
//! [`blo::train::PILOT_STEP`]) within the memory budget, and its report gives
//! every method's expected cost per task in gradient units (docs/math.md §8):
//! first order, exact, UFO at the planner's q* and at q = 0.1, the telescope
//! with the smallest cost × variance, and the planner's choice (trained with
//! `Trainer::planned` itself, whose report must equal the pilot's). Each method
//! then runs ⌊budget / (B · cost)⌋ Adam steps of B tasks, all from the same θ₀
//! and seed (the same task streams), so every method spends the same expected
//! compute; the compute actually spent (the estimates' own counts) is reported
//! beside it. The meta-test loss is the query MSE after r inner steps, averaged
//! over a fixed set of held-out tasks (the same for every seed and method).
//! Across seeds: the mean with its 95% Student-t interval, and each method's
//! paired difference from exact.

use std::time::Instant;

use blo::train::{task_rng, Stream, Trainer, PILOT_STEP};
use blo::{
    plan_estimator, BloError, Budget, Choice, Estimator, InnerLoop, PlanSpec, PlannerParams,
    PlannerReport,
};
use models::{Activation, Mlp, Model, RegressionEpisode, RegressionMaml, SinusoidTasks};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::maml_sine::test_losses;
use crate::stats::{mean_t_ci95, paired_t_ci95, Interval};

/// Settings of the study.
#[derive(Clone, Debug)]
pub struct StudyConfig {
    /// Inner steps r.
    pub r: usize,
    /// Memory budget in states.
    pub states: usize,
    /// Training seeds 0..seeds (at least 2).
    pub seeds: u64,
    /// Compute per training run, in gradient units (docs/math.md §8).
    pub budget: f64,
    /// Tasks per meta-step B.
    pub meta_batch: usize,
    /// Adam's step.
    pub outer_lr: f64,
    /// Inner SGD step α.
    pub alpha: f64,
    /// Support (= query) points per task.
    pub k_shot: usize,
    /// Pilot tasks of the planner.
    pub pilot_tasks: usize,
    /// Held-out tasks for the meta-test loss.
    pub test_tasks: usize,
}

impl Default for StudyConfig {
    fn default() -> Self {
        StudyConfig {
            r: 10,
            states: 8,
            seeds: 5,
            budget: 350_000.0,
            meta_batch: 5,
            outer_lr: 1e-3,
            alpha: 0.01,
            k_shot: 10,
            pilot_tasks: 32,
            test_tasks: 200,
        }
    }
}

/// One method's results across the seeds.
#[derive(Clone, Debug)]
pub struct MethodResult {
    /// The method's label.
    pub method: String,
    /// Per seed: the estimator as chosen (names differ when the planner's
    /// figures do).
    pub estimators: Vec<String>,
    /// Per seed: meta-steps run.
    pub steps: Vec<u64>,
    /// Per seed: expected cost per task (the planner's figure).
    pub cost_per_task: Vec<f64>,
    /// Per seed: compute actually spent / budget.
    pub spent_over_budget: Vec<f64>,
    /// Per seed: meta-test loss after training.
    pub test_loss: Vec<f64>,
    /// Mean over seeds with its 95% interval.
    pub interval: Interval,
    /// The paired difference from exact (method − exact), if not exact.
    pub minus_exact: Option<Interval>,
    /// Wall-clock seconds of training, summed over seeds.
    pub seconds: f64,
}

/// The methods compared, in table order.
const METHODS: [&str; 6] = [
    "first order",
    "UFO q*",
    "UFO q=0.1",
    "best telescope",
    "planner's choice",
    "exact",
];

/// The choice and expected cost per task of `method` from the planner's
/// report (UFO at another q: c0 + q·c_rnd, c_rnd from the report's UFO line).
fn pick(report: &PlannerReport, method: &str) -> (Choice, f64) {
    let find = |prefix: &str| report.best(prefix).expect("the planner lists every family");
    let c0 = (report.r + 2) as f64;
    match method {
        "first order" => (find("first order").choice.clone(), c0),
        "exact" => {
            let c = find("exact");
            (c.choice.clone(), c.cost)
        }
        "best telescope" => {
            let c = find("telescope");
            (c.choice.clone(), c.cost)
        }
        "planner's choice" => {
            let c = report.choice();
            (c.choice.clone(), c.cost)
        }
        ufo => {
            let c = find("UFO q");
            let Choice::Ufo { q: q_star, states } = c.choice else {
                unreachable!("the UFO line holds a UFO choice")
            };
            let q = if ufo == "UFO q*" { q_star } else { 0.1 };
            let c_rnd = (c.cost - c0) / q_star;
            (Choice::Ufo { q, states }, c0 + q * c_rnd)
        }
    }
}

/// Runs the study.
///
/// # Errors
/// Fewer than 2 seeds, a budget that buys no step, and what the planner, the
/// estimators or the trainer report; a planned run whose report differs from
/// the pilot's (a bug).
pub fn run(cfg: &StudyConfig) -> Result<Vec<MethodResult>, BloError> {
    if cfg.seeds < 2 {
        return Err(BloError::invalid(
            "seeds",
            cfg.seeds,
            "an interval across seeds needs at least 2",
        ));
    }
    let net = Mlp::new(&[1, 40, 40, 1], Activation::Relu);
    let problem = RegressionMaml {
        net: net.clone(),
        inner: InnerLoop::sgd(cfg.r, cfg.alpha)?,
    };
    let tasks = SinusoidTasks::default();
    let mut test_rng = ChaCha8Rng::seed_from_u64(0x7e57);
    let test_set: Vec<RegressionEpisode<f64>> = (0..cfg.test_tasks)
        .map(|_| tasks.sample_episode(&mut test_rng, cfg.k_shot, cfg.k_shot))
        .collect();
    let k = cfg.k_shot;
    let spec = PlanSpec {
        budget: Budget::States(cfg.states),
        pilot_tasks: cfg.pilot_tasks,
        params: PlannerParams::default(),
    };
    let mut out: Vec<MethodResult> = METHODS
        .iter()
        .map(|m| MethodResult {
            method: m.to_string(),
            estimators: Vec::new(),
            steps: Vec::new(),
            cost_per_task: Vec::new(),
            spent_over_budget: Vec::new(),
            test_loss: Vec::new(),
            interval: Interval {
                mean: f64::NAN,
                half_width: f64::NAN,
                n: 0,
            },
            minus_exact: None,
            seconds: 0.0,
        })
        .collect();
    for seed in 0..cfg.seeds {
        let theta0 = net.init::<f64>(seed).into_tensors();
        let pilot: Vec<RegressionEpisode<f64>> = (0..cfg.pilot_tasks)
            .map(|i| {
                tasks.sample_episode(&mut task_rng(seed, PILOT_STEP, i, Stream::Sampler), k, k)
            })
            .collect();
        let report = plan_estimator(&problem, &pilot, &theta0, spec.budget, &spec.params)?;
        for (method, res) in METHODS.iter().zip(&mut out) {
            let (choice, cost) = pick(&report, method);
            let steps = (cfg.budget / (cfg.meta_batch as f64 * cost)).floor() as u64;
            if steps == 0 {
                return Err(BloError::invalid(
                    "budget",
                    cfg.budget,
                    "buys no meta-step of the costliest method",
                ));
            }
            let tasks = tasks.clone();
            let sampler = move |rng: &mut ChaCha8Rng| tasks.sample_episode::<f64, _>(rng, k, k);
            let mut spent = 0.0;
            let start = Instant::now();
            let planned = *method == "planner's choice";
            let adam = blo::Adam::<f64>::new(cfg.outer_lr);
            let base = if planned {
                Trainer::planned(problem.clone(), sampler, spec.clone(), adam, theta0.clone())
            } else {
                let est: Box<dyn Estimator<f64, RegressionMaml<Mlp>>> = choice.build()?;
                Trainer::new(problem.clone(), sampler, est, adam, theta0.clone())
            };
            let mut t = base
                .meta_batch(cfg.meta_batch)
                .steps(steps)
                .seed(seed)
                .progress(false)
                .on_step(|rep: &blo::StepReport| spent += rep.stats.cost());
            let theta = t.run()?.theta;
            if planned && t.planner_report() != Some(&report) {
                return Err(BloError::invalid(
                    "planner",
                    format!("seed {seed}"),
                    "the planned run's report differs from the pilot's",
                ));
            }
            let name = Estimator::<f64, RegressionMaml<Mlp>>::name(t.estimator());
            drop(t);
            res.seconds += start.elapsed().as_secs_f64();
            let losses = test_losses(&problem, &test_set, &theta)?;
            res.test_loss
                .push(losses.iter().sum::<f64>() / losses.len() as f64);
            res.estimators.push(name);
            res.steps.push(steps);
            res.cost_per_task.push(cost);
            res.spent_over_budget.push(spent / cfg.budget);
        }
    }
    let exact = out.last().expect("exact is listed").test_loss.clone();
    for res in &mut out {
        let stat = |r: Result<Interval, String>| {
            r.map_err(|e| BloError::invalid("test loss", &res.method, &e))
        };
        res.interval = stat(mean_t_ci95(&res.test_loss))?;
        if res.method != "exact" {
            res.minus_exact = Some(stat(paired_t_ci95(&res.test_loss, &exact))?);
        }
    }
    Ok(out)
}

/// The results as a Markdown table.
pub fn table(results: &[MethodResult]) -> String {
    let mut s = String::from(
        "| method | estimator (seed 0) | steps (mean) | cost/task | spent/budget | meta-test loss (mean ± 95%) | − exact (paired) | train s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let n = r.steps.len().max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.3} | {:.4} ± {:.4} | {} | {:.1} |\n",
            r.method,
            r.estimators.first().map_or("", String::as_str),
            r.steps.iter().sum::<u64>() as f64 / n,
            mean(&r.cost_per_task),
            mean(&r.spent_over_budget),
            r.interval.mean,
            r.interval.half_width,
            r.minus_exact.map_or("—".into(), |d| format!(
                "{:+.4} ± {:.4}",
                d.mean, d.half_width
            )),
            r.seconds
        ));
    }
    s
}
