//! The main demo: FO-BLO converges to the wrong point on the paper's
//! counterexample, UFO-BLO and the exact hypergradient do not (docs/math.md §6).
//!
//! SGD θ_{k+1} = θ_k − η_k g_k with η_k = 10/(k + 1), one task drawn per
//! iteration (probability ½ each), θ_0 ~ U(−10, 30), from several seeds; g_k is
//! the estimator's hypergradient on the drawn task. |F′(θ_k)| is measured with
//! the closed form [`Counterexample::hypergradient`], which does not use the
//! tape, so it is an independent check of the estimators.

use std::path::{Path, PathBuf};
use std::time::Instant;

use blo::{
    every_depth, AdaptiveDepths, BloError, Budget, DepthDistribution, Depths, Estimator, Exact,
    FirstOrder, Policy, Telescope, TelescopeKind, Ufo,
};
use blo::{Optimiser, Schedule, Sgd};
use models::Counterexample;
pub use models::CounterexampleProblem;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::Tensor;

use crate::util::{self, PlotSpec, Series};

/// Which hypergradient estimator drives SGD.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// FO-BLO (q = 0).
    FirstOrder,
    /// UFO-BLO with a fixed q.
    Ufo(f64),
    /// UFO-BLO with the adaptive q of docs/math.md §4.
    UfoAdaptive,
    /// The exact hypergradient (q = 1).
    Exact,
    /// A randomized telescope over every depth (docs/math.md §10), holding
    /// the whole tail (r + 1 states, no recomputation), with p(k) ∝ 0.9^{k−1}
    /// or, if `adaptive`, starting there and re-solved after every estimate.
    Telescope {
        /// Single sample or Russian roulette.
        kind: TelescopeKind,
        /// Whether the depth distribution adapts.
        adaptive: bool,
    },
}

impl Method {
    /// Short label for tables, legends and JSON.
    pub fn label(&self) -> String {
        match self {
            Method::FirstOrder => "fo".into(),
            Method::Ufo(q) => format!("ufo(q={q})"),
            Method::UfoAdaptive => "ufo(adaptive)".into(),
            Method::Exact => "exact".into(),
            Method::Telescope { kind, adaptive } => format!(
                "telescope-{}({})",
                match kind {
                    TelescopeKind::SingleSample => "single",
                    TelescopeKind::RussianRoulette => "roulette",
                },
                if *adaptive { "adaptive" } else { "geo0.9" }
            ),
        }
    }

    /// The estimator family name used in JSON (`fo`, `ufo`, `exact`).
    pub fn family(&self) -> &'static str {
        match self {
            Method::FirstOrder => "fo",
            Method::Ufo(_) | Method::UfoAdaptive => "ufo",
            Method::Exact => "exact",
            Method::Telescope { .. } => "telescope",
        }
    }

    /// q for JSON: 0 for FO, 1 for exact, the fixed q, or `None` (adaptive).
    pub fn q(&self) -> Option<f64> {
        match self {
            Method::FirstOrder => Some(0.0),
            Method::Ufo(q) => Some(*q),
            Method::UfoAdaptive | Method::Telescope { .. } => None,
            Method::Exact => Some(1.0),
        }
    }
}

/// Builds the estimator for `method` from the `blo` crate. The exact
/// hypergradient (alone or as UFO's exact branch) recomputes from θ, so every
/// estimator holds O(1) states.
///
/// # Errors
/// [`BloError::InvalidHyperparameter`] if a fixed q is outside (0, 1].
pub fn estimator(
    method: Method,
) -> Result<Box<dyn Estimator<f64, CounterexampleProblem>>, BloError> {
    Ok(match method {
        Method::FirstOrder => Box::new(FirstOrder::new()),
        Method::Ufo(q) => Box::new(Ufo::fixed(q)?),
        Method::UfoAdaptive => Box::new(Ufo::adaptive()),
        Method::Exact => Box::new(Exact::new(Policy::Recompute)?),
        Method::Telescope { kind, adaptive } => {
            let r = Counterexample::paper().r;
            let dist = DepthDistribution::new(every_depth(r), &Depths::Geometric { ratio: 0.9 })?;
            let t = Telescope::new(kind, dist, Budget::States(r + 1))?;
            if adaptive {
                Box::new(t.adaptive(AdaptiveDepths::default())?)
            } else {
                Box::new(t)
            }
        }
    })
}

/// Configuration of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// SGD iterations per run (paper: 10,000).
    pub iterations: usize,
    /// Seeds; each seed draws θ_0, the task sequence and the UFO coins.
    pub seeds: Vec<u64>,
    /// Estimators to run.
    pub methods: Vec<Method>,
    /// Where to write the SVG figure (`None`: no figure).
    pub figure: Option<PathBuf>,
    /// Record |F′(θ_k)| every this many iterations for the figure (≥ 1).
    pub record_every: usize,
    /// Show a progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            iterations: 10_000,
            seeds: (0..5).collect(),
            methods: vec![
                Method::FirstOrder,
                Method::Ufo(0.1),
                Method::UfoAdaptive,
                Method::Exact,
            ],
            figure: Some(PathBuf::from("target/figures/counterexample.svg")),
            record_every: 10,
            progress: true,
        }
    }
}

/// The result of one (estimator, seed) run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// Estimator family: `fo`, `ufo` or `exact`.
    pub estimator: String,
    /// Label (`fo`, `ufo(q=0.1)`, `ufo(adaptive)`, `exact`).
    pub label: String,
    /// q (0 for FO, 1 for exact, `null` for adaptive).
    pub q: Option<f64>,
    /// Seed.
    pub seed: u64,
    /// θ_0 drawn from U(−10, 30).
    pub theta0: f64,
    /// θ after the last iteration.
    pub final_theta: f64,
    /// |F′(θ)| at the last iterate (closed form).
    pub final_abs_grad: f64,
    /// Mean |F′(θ_k)| over the last 10% of iterations (less noisy than the last value).
    pub tail_mean_abs_grad: f64,
    /// SGD iterations run (= estimates drawn).
    pub iterations: usize,
    /// How many times UFO's exact branch ran (0 for FO and exact).
    pub exact_branches: usize,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// (k, mean of |F′(θ_j)| over the `record_every` iterations j ≤ k), with
    /// (0, |F′(θ_0)|) first (not printed in JSON).
    #[serde(skip)]
    pub trace: Vec<(f64, f64)>,
    /// Gradient-equivalents spent up to each point of `trace` (gradient = 1,
    /// HVP = 2: `blo::Stats::cost`, docs/math.md §8; not printed in JSON).
    #[serde(skip)]
    pub trace_cost: Vec<f64>,
    /// Gradient-equivalents spent over the run.
    pub total_cost: f64,
}

/// All runs, plus the problem's reference points.
#[derive(Clone, Debug)]
pub struct Report {
    /// One entry per (method, seed), methods in the given order.
    pub runs: Vec<RunResult>,
    /// The true stationary point θ* (closed form).
    pub theta_star: f64,
    /// FO's fixed point θ_FO (closed form).
    pub theta_fo: f64,
    /// |F′(θ_FO)| = √(2D).
    pub fo_plateau: f64,
    /// The figure against iterations, if one was written.
    pub figure: Option<PathBuf>,
    /// The figure against compute (gradient-equivalents), beside it.
    pub compute_figure: Option<PathBuf>,
}

/// Runs SGD on the counterexample with every method and seed of `cfg`.
///
/// # Errors
/// Whatever the estimators report (non-finite values), and figure-writing
/// failures (as [`BloError::Io`]).
pub fn run(cfg: &Config) -> Result<Report, BloError> {
    let problem = CounterexampleProblem::new(Counterexample::paper())?;
    let ce = problem.ce();
    let total = (cfg.methods.len() * cfg.seeds.len() * cfg.iterations) as u64;
    let bar = util::progress(total, "counterexample", !cfg.progress);
    let record_every = cfg.record_every.max(1);
    let mut runs = Vec::new();
    for &method in &cfg.methods {
        for &seed in &cfg.seeds {
            let start = Instant::now();
            let mut est = estimator(method)?;
            // One stream for θ_0 and the task draws, another for the estimator's coins,
            // so every method sees the same θ_0 and the same task sequence for a seed.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut coin_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0115);
            let theta0: f64 = rng.gen_range(-10.0..30.0);
            let mut theta = vec![Tensor::vector(vec![theta0])];
            let mut sgd = Sgd::new(Schedule::inverse_time(10.0, 1.0));
            let mut trace = vec![(0.0, ce.hypergradient(theta0).abs())];
            let mut trace_cost = vec![0.0];
            let mut spent = 0.0;
            let tail_start = cfg.iterations - cfg.iterations / 10;
            let (mut tail_sum, mut tail_n) = (0.0, 0usize);
            let mut exact_branches = 0;
            let (mut window_sum, mut window_n) = (0.0, 0usize);
            for k in 0..cfg.iterations {
                let task: usize = rng.gen_range(0..2);
                let e = est.estimate(&problem, &task, &theta, &mut coin_rng)?;
                exact_branches += e.stats.exact_branches;
                spent += e.stats.cost();
                est.observe(std::slice::from_ref(&e));
                sgd.step(&mut theta, &e.grad);
                let th = theta[0].data()[0];
                if !th.is_finite() {
                    return Err(BloError::NonFinite {
                        what: "theta",
                        task,
                        step: k,
                    });
                }
                let g = ce.hypergradient(th).abs();
                if k >= tail_start {
                    tail_sum += g;
                    tail_n += 1;
                }
                window_sum += g;
                window_n += 1;
                if (k + 1) % record_every == 0 || k + 1 == cfg.iterations {
                    trace.push(((k + 1) as f64, window_sum / window_n as f64));
                    trace_cost.push(spent);
                    window_sum = 0.0;
                    window_n = 0;
                }
                if k % 256 == 0 {
                    bar.inc(256.min((cfg.iterations - k) as u64));
                }
            }
            let final_theta = theta[0].data()[0];
            runs.push(RunResult {
                estimator: method.family().into(),
                label: method.label(),
                q: method.q(),
                seed,
                theta0,
                final_theta,
                final_abs_grad: ce.hypergradient(final_theta).abs(),
                tail_mean_abs_grad: if tail_n > 0 {
                    tail_sum / tail_n as f64
                } else {
                    f64::NAN
                },
                iterations: cfg.iterations,
                exact_branches,
                seconds: start.elapsed().as_secs_f64(),
                trace,
                trace_cost,
                total_cost: spent,
            });
        }
    }
    bar.finish_and_clear();
    let fo_plateau = ce.hypergradient(ce.theta_fo()).abs();
    let (figure, compute_figure) = match &cfg.figure {
        Some(path) => {
            let compute_path = util::with_suffix(path, "-compute");
            figures(cfg, &runs, fo_plateau, path, &compute_path)?;
            (Some(path.clone()), Some(compute_path))
        }
        None => (None, None),
    };
    Ok(Report {
        runs,
        theta_star: ce.theta_star(),
        theta_fo: ce.theta_fo(),
        fo_plateau,
        figure,
        compute_figure,
    })
}

/// Writes |F′| against iterations to `path` and against compute to
/// `compute_path`: one line per method, the mean over seeds at each recording
/// point (all runs share the grid of iterations; the compute there is the
/// mean over seeds too, random for UFO).
fn figures(
    cfg: &Config,
    runs: &[RunResult],
    fo_plateau: f64,
    path: &Path,
    compute_path: &Path,
) -> Result<(), BloError> {
    let record_every = cfg.record_every.max(1);
    for (file, against_compute) in [(path, false), (compute_path, true)] {
        let mut series: Vec<Series> = Vec::new();
        for &method in &cfg.methods {
            let rs: Vec<&RunResult> = runs.iter().filter(|r| r.label == method.label()).collect();
            let Some(first) = rs.first() else { continue };
            let n = rs.len() as f64;
            let points = (0..first.trace.len())
                .map(|i| {
                    let mean = rs.iter().map(|r| r.trace[i].1).sum::<f64>() / n;
                    let x = if against_compute {
                        rs.iter().map(|r| r.trace_cost[i]).sum::<f64>() / n
                    } else {
                        first.trace[i].0
                    };
                    (x, mean)
                })
                .collect();
            series.push(Series::new(method.label(), points));
        }
        let spec = PlotSpec {
            title: format!(
                "Counterexample: |F'(θ_k)| under SGD against {} (mean over {} seeds, windows of {} steps)",
                if against_compute { "compute" } else { "iterations" },
                cfg.seeds.len(),
                record_every
            ),
            x_label: if against_compute {
                "gradient-equivalents spent (gradient = 1, HVP = 2)".into()
            } else {
                "iteration k".into()
            },
            y_label: "|F'(θ_k)|".into(),
            log_y: true,
            reference: Some((fo_plateau, format!("FO plateau √(2D) = {fo_plateau:.3}"))),
        };
        util::line_plot_svg(file, &spec, &series).map_err(|e| BloError::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// The table printed by the example: one row per method with the mean and
/// range over seeds of the final θ and |F′(θ)|, then the reference points.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<15} {:>5}  {:<26} {:<24} {:>13} {:>9}",
        "estimator",
        "seeds",
        "final θ: mean [min, max]",
        "final |F'|: mean (max)",
        "exact branch",
        "time"
    );
    let mut labels: Vec<&str> = Vec::new();
    for r in &report.runs {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    for label in labels {
        let rs: Vec<&RunResult> = report.runs.iter().filter(|r| r.label == label).collect();
        let n = rs.len() as f64;
        let th: Vec<f64> = rs.iter().map(|r| r.final_theta).collect();
        let g: Vec<f64> = rs.iter().map(|r| r.final_abs_grad).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / n;
        let min = th.iter().copied().fold(f64::INFINITY, f64::min);
        let max = th.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let gmax = g.iter().copied().fold(0.0, f64::max);
        let coins: usize = rs.iter().map(|r| r.iterations).sum();
        let branches: usize = rs.iter().map(|r| r.exact_branches).sum();
        let frac = match rs[0].estimator.as_str() {
            "ufo" => format!("{:.1}%", 100.0 * branches as f64 / coins.max(1) as f64),
            "exact" => "always".into(),
            _ => "never".into(),
        };
        let secs: f64 = rs.iter().map(|r| r.seconds).sum();
        let _ = writeln!(
            s,
            "{:<15} {:>5}  {:<26} {:<24} {:>13} {:>9}",
            label,
            rs.len(),
            format!("{:.3} [{:.3}, {:.3}]", mean(&th), min, max),
            format!("{:.4} ({:.4})", mean(&g), gmax),
            frac,
            util::fmt_secs(secs)
        );
    }
    let _ = writeln!(
        s,
        "\ntrue stationary point θ* = {:.4}; FO fixed point θ_FO = {:.4} with |F'(θ_FO)| = √(2D) = {:.4}",
        report.theta_star, report.theta_fo, report.fo_plateau
    );
    s
}
