//! MAML on sinusoid regression with every estimator, for several numbers of
//! inner steps r: meta-test loss, time per meta-step and memory, side by side.
//!
//! Setting (Finn et al. 2017): tasks y = A·sin(x − φ) with A ∈ [0.1, 5],
//! φ ∈ [0, π], x ∈ [−5, 5]; K support and K query points; an MLP
//! 1-40-40-1 (ReLU); r inner SGD steps of size α; Adam on θ with meta-batch B.
//! The meta-test loss is the query MSE after r inner steps, averaged over a
//! fixed set of held-out tasks, with a 95% interval.

use std::path::PathBuf;

use blo::{BloError, Estimator, Exact, FirstOrder, InnerLoop, Policy, Trainer, Truncated, Ufo};
use models::{Activation, Mlp, Model, RegressionEpisode, SinusoidTasks};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dyn_estimator::{reset_peak_rss, DynEstimator};
use crate::util::{self, PlotSpec, Series};
use models::RegressionMaml;

/// An estimator to compare.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// FO-BLO (FOMAML).
    FirstOrder,
    /// UFO-BLO with fixed q (exact branch recomputes from θ).
    Ufo(f64),
    /// UFO-BLO with adaptive q.
    UfoAdaptive,
    /// Exact, every state stored.
    ExactStoreAll,
    /// Exact, recompute from θ (constant memory).
    ExactRecompute,
    /// Exact, binomial checkpointing with s snapshots.
    ExactBinomial(usize),
    /// Truncated backpropagation over the last k steps.
    Truncated(usize),
}

impl Method {
    /// Label for tables, legends and JSON.
    pub fn label(&self) -> String {
        match self {
            Method::FirstOrder => "fo".into(),
            Method::Ufo(q) => format!("ufo(q={q})"),
            Method::UfoAdaptive => "ufo(adaptive)".into(),
            Method::ExactStoreAll => "exact(store-all)".into(),
            Method::ExactRecompute => "exact(recompute)".into(),
            Method::ExactBinomial(s) => format!("exact(binomial,s={s})"),
            Method::Truncated(k) => format!("truncated(k={k})"),
        }
    }

    /// The estimator, for any problem.
    ///
    /// # Errors
    /// Invalid hyperparameters.
    pub fn estimator<P: blo::Problem<f64>>(&self) -> Result<Box<dyn Estimator<f64, P>>, BloError> {
        Ok(match *self {
            Method::FirstOrder => Box::new(FirstOrder::new()),
            Method::Ufo(q) => Box::new(Ufo::fixed(q)?),
            Method::UfoAdaptive => Box::new(Ufo::adaptive()),
            Method::ExactStoreAll => Box::new(Exact::new(Policy::StoreAll)?),
            Method::ExactRecompute => Box::new(Exact::new(Policy::Recompute)?),
            Method::ExactBinomial(s) => Box::new(Exact::new(Policy::Binomial { snapshots: s })?),
            Method::Truncated(k) => Box::new(Truncated::new(k)?),
        })
    }
}

/// Settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Numbers of inner steps to compare.
    pub rs: Vec<usize>,
    /// Estimators.
    pub methods: Vec<Method>,
    /// Hidden widths of the MLP.
    pub hidden: Vec<usize>,
    /// Support (= query) points per task.
    pub k_shot: usize,
    /// Inner step α.
    pub alpha: f64,
    /// Meta-training steps.
    pub meta_steps: u64,
    /// Tasks per meta-step.
    pub meta_batch: usize,
    /// Adam step.
    pub outer_lr: f64,
    /// Held-out tasks for the meta-test loss.
    pub test_tasks: usize,
    /// Seed (initialisation, tasks, coins).
    pub seed: u64,
    /// Directory for the SVG figures (`None`: none).
    pub figure_dir: Option<PathBuf>,
    /// Progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rs: vec![1, 5, 10],
            methods: vec![
                Method::FirstOrder,
                Method::Ufo(0.1),
                Method::ExactStoreAll,
                Method::ExactRecompute,
                Method::ExactBinomial(3),
            ],
            hidden: vec![40, 40],
            k_shot: 10,
            alpha: 0.01,
            meta_steps: 1000,
            meta_batch: 5,
            outer_lr: 1e-3,
            test_tasks: 200,
            seed: 0,
            figure_dir: Some(PathBuf::from("target/figures")),
            progress: true,
        }
    }
}

/// One (method, r) run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// Estimator label.
    pub method: String,
    /// Inner steps.
    pub r: usize,
    /// Meta-test loss (query MSE after r steps) at θ_0, mean over the test tasks.
    pub initial_test_loss: f64,
    /// Meta-test loss after meta-training.
    pub final_test_loss: f64,
    /// Half-width of its 95% interval (1.96·s/√n over test tasks).
    pub final_test_ci95: f64,
    /// Mean wall-clock seconds per meta-step (B tasks).
    pub seconds_per_meta_step: f64,
    /// Inner states held at once, at the peak (from the estimator's stats).
    pub states_peak: usize,
    /// Bytes of those states.
    pub state_bytes_peak: usize,
    /// Mean inner forward steps per task.
    pub forward_steps_per_task: f64,
    /// Mean HVPs per task.
    pub hvps_per_task: f64,
    /// Process peak RSS (VmHWM, KiB) during this run; since process start if
    /// it could not be reset (see `peak_rss_reset`).
    pub peak_rss_kib: Option<u64>,
    /// Whether VmHWM was reset before this run.
    pub peak_rss_reset: bool,
    /// Meta-training loss (mean outer loss of each meta-step; not in JSON).
    #[serde(skip)]
    pub train_curve: Vec<f64>,
}

/// Meta-test loss of `theta` on `tasks`: per-task query MSE after r steps.
///
/// # Errors
/// Non-finite losses.
pub fn test_losses<P: blo::Problem<f64>>(
    problem: &P,
    tasks: &[P::Task],
    theta: &[tape::Tensor<f64>],
) -> Result<Vec<f64>, BloError> {
    tasks
        .iter()
        .map(|t| blo::meta_loss(problem, t, theta))
        .collect()
}

/// Runs every (r, method) pair.
///
/// # Errors
/// What the estimators or the trainer report, and figure-writing failures.
pub fn run(cfg: &Config) -> Result<Vec<RunResult>, BloError> {
    let mut widths = vec![1];
    widths.extend(&cfg.hidden);
    widths.push(1);
    let net = Mlp::new(&widths, Activation::Relu);
    let theta0 = net.init::<f64>(cfg.seed).into_tensors();
    let tasks = SinusoidTasks::default();
    let mut test_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7e57);
    let test_set: Vec<RegressionEpisode<f64>> = (0..cfg.test_tasks)
        .map(|_| tasks.sample_episode(&mut test_rng, cfg.k_shot, cfg.k_shot))
        .collect();
    let total = (cfg.rs.len() * cfg.methods.len()) as u64 * cfg.meta_steps;
    let bar = util::progress(total, "maml_sine", !cfg.progress);
    let mut out = Vec::new();
    for &r in &cfg.rs {
        let problem = RegressionMaml {
            net: net.clone(),
            inner: InnerLoop::sgd(r, cfg.alpha)?,
        };
        let initial = test_losses(&problem, &test_set, &theta0)?;
        for &method in &cfg.methods {
            let k = cfg.k_shot;
            let tasks = tasks.clone();
            let sampler = move |rng: &mut ChaCha8Rng| tasks.sample_episode::<f64, _>(rng, k, k);
            let reset = reset_peak_rss();
            let mut curve = Vec::new();
            let mut stats = blo::Stats::default();
            let mut seconds = 0.0;
            let outcome = {
                let mut trainer = Trainer::new(
                    problem.clone(),
                    sampler,
                    DynEstimator(method.estimator()?),
                    blo::Adam::<f64>::new(cfg.outer_lr),
                    theta0.clone(),
                )
                .meta_batch(cfg.meta_batch)
                .steps(cfg.meta_steps)
                .seed(cfg.seed)
                .progress(false)
                .on_step(|rep: &blo::StepReport| {
                    curve.push(rep.mean_outer_loss);
                    stats.add(&rep.stats);
                    seconds += rep.step_seconds;
                    bar.inc(1);
                });
                trainer.run()?
            };
            let peak = util::peak_rss_kib();
            let fin = test_losses(&problem, &test_set, &outcome.theta)?;
            let (mean, ci) = util::mean_ci95(&fin);
            let n_tasks = (cfg.meta_steps as usize * cfg.meta_batch).max(1) as f64;
            out.push(RunResult {
                method: method.label(),
                r,
                initial_test_loss: util::mean_ci95(&initial).0,
                final_test_loss: mean,
                final_test_ci95: ci,
                seconds_per_meta_step: seconds / cfg.meta_steps.max(1) as f64,
                states_peak: stats.states_peak,
                state_bytes_peak: stats.state_bytes_peak,
                forward_steps_per_task: stats.forward_steps as f64 / n_tasks,
                hvps_per_task: stats.hvps as f64 / n_tasks,
                peak_rss_kib: peak,
                peak_rss_reset: reset,
                train_curve: curve,
            });
        }
    }
    bar.finish_and_clear();
    if let Some(dir) = &cfg.figure_dir {
        figures(dir, cfg, &out)?;
    }
    Ok(out)
}

/// One meta-training run with a log and checkpoints (the example's `--train-dir`).
#[derive(Clone, Debug)]
pub struct TrainRun {
    /// Directory of `log.jsonl` and the checkpoint `ckpt/`.
    pub dir: PathBuf,
    /// Inner steps r.
    pub r: usize,
    /// The estimator.
    pub method: Method,
    /// Checkpoint every this many steps (and after the last).
    pub checkpoint_every: u64,
    /// Continue from `dir/ckpt`.
    pub resume: bool,
    /// Rayon threads of this process (`None`: all cores).
    pub threads: Option<usize>,
}

/// What [`train_run`] returns.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// θ after the last step.
    pub theta: Vec<tape::Tensor<f64>>,
    /// Steps run by this call.
    pub steps_run: usize,
    /// Mean seconds per meta-step over them.
    pub seconds_per_step: f64,
    /// The last step's mean outer loss.
    pub last_loss: f64,
}

/// Meta-trains one estimator at one r for `cfg.meta_steps` steps (counting
/// those before a resume), as one rank of `comm`: with MPI each rank
/// estimates a block of every meta-batch and the result is bit-identical to
/// one process ([`blo::comm`]). Rank 0 writes `dir/log.jsonl` and the
/// checkpoints in `dir/ckpt` (θ of the last step included).
///
/// # Errors
/// What the trainer reports ([`blo::BloError::RankFailed`] naming a failed rank).
pub fn train_run(
    cfg: &Config,
    run: &TrainRun,
    comm: &dyn blo::comm::Communicator,
) -> Result<TrainSummary, BloError> {
    let mut widths = vec![1];
    widths.extend(&cfg.hidden);
    widths.push(1);
    let net = Mlp::new(&widths, Activation::Relu);
    let problem = RegressionMaml {
        net: net.clone(),
        inner: InnerLoop::sgd(run.r, cfg.alpha)?,
    };
    let (tasks, k) = (SinusoidTasks::default(), cfg.k_shot);
    let sampler = move |rng: &mut ChaCha8Rng| tasks.sample_episode::<f64, _>(rng, k, k);
    let (mut seconds, mut steps_run, mut last_loss) = (0.0, 0, f64::NAN);
    let theta = {
        let t = Trainer::new(
            problem,
            sampler,
            DynEstimator(run.method.estimator()?),
            blo::Adam::<f64>::new(cfg.outer_lr),
            net.init::<f64>(cfg.seed).into_tensors(),
        )
        .meta_batch(cfg.meta_batch)
        .steps(cfg.meta_steps)
        .seed(cfg.seed)
        .progress(cfg.progress && comm.rank() == 0)
        .data_id(format!("sinusoid k_shot={k}"))
        .log_jsonl(run.dir.join("log.jsonl"))
        .checkpoint_every(run.checkpoint_every, run.dir.join("ckpt"))
        .on_step(|rep: &blo::StepReport| {
            seconds += rep.step_seconds;
            steps_run += 1;
            last_loss = rep.mean_outer_loss;
        })
        .communicator(comm);
        let t = if run.resume {
            t.resume_from(run.dir.join("ckpt"))
        } else {
            t
        };
        let mut t = match run.threads {
            Some(n) => t.threads(n),
            None => t,
        };
        t.run()?.theta
    };
    Ok(TrainSummary {
        theta,
        steps_run,
        seconds_per_step: seconds / steps_run.max(1) as f64,
        last_loss,
    })
}

/// Writes `maml_sine_loss.svg` (meta-test loss against r), `maml_sine_time.svg`
/// (seconds per meta-step against r), `maml_sine_states.svg` (states held
/// against r) and `maml_sine_train.svg` (training curves at the largest r).
///
/// # Errors
/// [`BloError::Io`] naming the file.
pub fn figures(
    dir: &std::path::Path,
    cfg: &Config,
    out: &[RunResult],
) -> Result<Vec<PathBuf>, BloError> {
    let per_method = |f: &dyn Fn(&RunResult) -> f64| -> Vec<Series> {
        cfg.methods
            .iter()
            .map(|m| {
                let l = m.label();
                Series::new(
                    l.clone(),
                    out.iter()
                        .filter(|r| r.method == l)
                        .map(|r| (r.r as f64, f(r)))
                        .collect(),
                )
            })
            .collect()
    };
    let r_max = cfg.rs.iter().copied().max().unwrap_or(1);
    let smooth = |c: &[f64]| -> Vec<(f64, f64)> {
        let w = (c.len() / 50).max(1);
        c.chunks(w)
            .enumerate()
            .map(|(i, ch)| {
                (
                    ((i + 1) * w) as f64,
                    ch.iter().sum::<f64>() / ch.len() as f64,
                )
            })
            .collect()
    };
    let plots = [
        (
            "maml_sine_loss.svg",
            "meta-test loss (query MSE) against r",
            "meta-test MSE",
            per_method(&|r| r.final_test_loss),
            true,
        ),
        (
            "maml_sine_time.svg",
            "seconds per meta-step against r",
            "seconds per meta-step",
            per_method(&|r| r.seconds_per_meta_step),
            true,
        ),
        (
            "maml_sine_states.svg",
            "inner states held at the peak against r",
            "states held",
            per_method(&|r| r.states_peak as f64),
            false,
        ),
        (
            "maml_sine_train.svg",
            "meta-training loss (smoothed)",
            "mean outer loss",
            out.iter()
                .filter(|r| r.r == r_max)
                .map(|r| Series::new(r.method.clone(), smooth(&r.train_curve)))
                .collect(),
            true,
        ),
    ];
    let mut paths = Vec::new();
    for (name, title, ylab, series, log_y) in plots {
        let path = dir.join(name);
        let spec = PlotSpec {
            title: format!("MAML sinusoid: {title}"),
            x_label: if name == "maml_sine_train.svg" {
                format!("meta-step (r = {r_max})")
            } else {
                "inner steps r".into()
            },
            y_label: ylab.into(),
            log_y,
            reference: None,
        };
        util::line_plot_svg(&path, &spec, &series).map_err(|e| BloError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        paths.push(path);
    }
    Ok(paths)
}

/// The table printed by the example.
pub fn table(out: &[RunResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>3} {:<22} {:>20} {:>12} {:>7} {:>10} {:>9} {:>6} {:>12}",
        "r",
        "estimator",
        "meta-test MSE ±95%",
        "time/step",
        "states",
        "state KiB",
        "fwd/task",
        "HVPs",
        "VmHWM MiB"
    );
    for r in out {
        let rss = match r.peak_rss_kib {
            Some(k) => format!(
                "{:.1}{}",
                k as f64 / 1024.0,
                if r.peak_rss_reset { "" } else { "*" }
            ),
            None => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "{:>3} {:<22} {:>20} {:>12} {:>7} {:>10.1} {:>9.1} {:>6.1} {:>12}",
            r.r,
            r.method,
            format!("{:.3} ± {:.3}", r.final_test_loss, r.final_test_ci95),
            util::fmt_secs(r.seconds_per_meta_step),
            r.states_peak,
            r.state_bytes_peak as f64 / 1024.0,
            r.forward_steps_per_task,
            r.hvps_per_task,
            rss
        );
    }
    if out.iter().any(|r| !r.peak_rss_reset) {
        let _ = writeln!(s, "* VmHWM could not be reset: peak since process start");
    }
    if let Some(first) = out.first() {
        let _ = writeln!(
            s,
            "meta-test MSE before meta-training: {:.3} (r = {})",
            first.initial_test_loss, first.r
        );
    }
    s
}
