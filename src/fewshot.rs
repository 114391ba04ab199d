//! N-way K-shot meta-training with any estimator, on procedural glyphs (no
//! download) or on Omniglot / Mini-ImageNet from disk, compared at equal
//! compute (docs/math.md §7).
//!
//! - Model: Conv4 (4 × [3×3 conv, batch-norm with batch statistics, ReLU],
//!   dense N); inner loop: r SGD steps of size α on the full support set;
//!   outer: Adam with the step linearly decayed to 0, meta-batch B.
//! - Equal compute: each method gets the same budget of
//!   *gradient-equivalents* per run, counting one reverse-mode gradient as 1
//!   and one Hessian-vector product as 2 (docs/math.md §8), from the estimators'
//!   own [`blo::Stats`]; cheaper methods take more meta-steps. The cost per
//!   meta-step is measured on a short pilot run with θ held fixed (for UFO
//!   with fixed q it is c_FO + q·c_exact, the expectation; for adaptive q, whose
//!   cost changes as q adapts, a longer pilot gives only an estimate, and the
//!   realised spend is reported).
//! - Test accuracy: mean query accuracy over ≥ 600 held-out episodes (classes
//!   never seen in training) after r inner steps, with a 95% interval
//!   1.96·s/√n.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use blo::{
    BloError, Estimator, Exact, FirstOrder, Implicit, InnerLoop, Policy, ReptileFirstOrder,
    Schedule, Trainer, Ufo,
};
use models::{glyphs, Conv4, EpisodeSampler, GlyphOptions, ImageSet, Model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tape::{Tape, Tensor};

use crate::dyn_estimator::DynEstimator;
use crate::maml::ClassificationMaml;
use crate::util::{self, PlotSpec, Series};

/// Where episodes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// Procedural glyphs: `train_classes` meta-training classes and
    /// `test_classes` disjoint test classes (different seeds), `per_class`
    /// samples each, `size`×`size` pixels.
    Glyphs {
        /// Meta-training classes.
        train_classes: usize,
        /// Test classes.
        test_classes: usize,
        /// Samples per class.
        per_class: usize,
        /// Side length.
        size: usize,
    },
    /// Omniglot at this root (see `models::load_omniglot`).
    Omniglot(PathBuf),
    /// Mini-ImageNet at this root (see `models::load_mini_imagenet`).
    MiniImagenet(PathBuf),
}

impl Default for DataSource {
    fn default() -> Self {
        DataSource::Glyphs {
            train_classes: 100,
            test_classes: 50,
            per_class: 20,
            size: 28,
        }
    }
}

/// Loads (train, test) image sets.
///
/// # Errors
/// [`BloError::Io`] naming the path when a data set cannot be read.
pub fn load(source: &DataSource, seed: u64) -> Result<(ImageSet, ImageSet), BloError> {
    let wrap = |path: &Path, e: models::DataError| BloError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    Ok(match source {
        DataSource::Glyphs {
            train_classes,
            test_classes,
            per_class,
            size,
        } => {
            let opts = |n, s| GlyphOptions {
                n_classes: n,
                per_class: *per_class,
                size: *size,
                seed: s,
                ..GlyphOptions::default()
            };
            // Different seeds draw different stroke sets: the test classes are unseen.
            (
                glyphs(&opts(*train_classes, 2 * seed)),
                glyphs(&opts(*test_classes, 2 * seed + 1)),
            )
        }
        DataSource::Omniglot(root) => {
            models::load_omniglot(root, &models::OmniglotOptions::default())
                .map_err(|e| wrap(root, e))?
        }
        DataSource::MiniImagenet(root) => (
            models::load_mini_imagenet(root, "train").map_err(|e| wrap(root, e))?,
            models::load_mini_imagenet(root, "test").map_err(|e| wrap(root, e))?,
        ),
    })
}

/// A meta-training method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// FO-BLO / FOMAML.
    FirstOrder,
    /// UFO-BLO with fixed q (exact branch recomputes from θ).
    Ufo(f64),
    /// UFO-BLO with adaptive q.
    UfoAdaptive,
    /// Exact MAML under a checkpoint policy.
    Exact(Policy),
    /// Reptile (first-order direction (θ − φ_r)/α).
    Reptile,
    /// iMAML with proximal weight λ, CG solve (r inner steps, not to
    /// convergence: see [`IMAML_STATIONARITY_TOL`]).
    Imaml(f64),
}

impl Method {
    /// Label, also the form [`Method::from_str`] parses.
    pub fn label(&self) -> String {
        match self {
            Method::FirstOrder => "fo".into(),
            Method::Ufo(q) => format!("ufo:{q}"),
            Method::UfoAdaptive => "ufo:adaptive".into(),
            Method::Exact(Policy::StoreAll) => "exact".into(),
            Method::Exact(Policy::Recompute) => "exact:recompute".into(),
            Method::Exact(Policy::Sqrt) => "exact:sqrt".into(),
            Method::Exact(Policy::EveryK { k }) => format!("exact:every:{k}"),
            Method::Exact(Policy::Binomial { snapshots }) => format!("exact:binomial:{snapshots}"),
            Method::Reptile => "reptile".into(),
            Method::Imaml(l) => format!("imaml:{l}"),
        }
    }
}

impl FromStr for Method {
    type Err = String;
    /// `fo`, `ufo:Q`, `ufo:adaptive`, `exact` (store all), `exact:recompute`,
    /// `exact:sqrt`, `exact:every:K`, `exact:binomial:S`, `reptile`, `imaml:LAMBDA`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |x: &str| x.parse::<f64>().map_err(|e| format!("{s}: {e}"));
        let int = |x: &str| x.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        Ok(match parts.as_slice() {
            ["fo"] => Method::FirstOrder,
            ["ufo", "adaptive"] => Method::UfoAdaptive,
            ["ufo", q] => Method::Ufo(num(q)?),
            ["exact"] | ["exact", "store-all"] => Method::Exact(Policy::StoreAll),
            ["exact", "recompute"] => Method::Exact(Policy::Recompute),
            ["exact", "sqrt"] => Method::Exact(Policy::Sqrt),
            ["exact", "every", k] => Method::Exact(Policy::EveryK { k: int(k)? }),
            ["exact", "binomial", n] => Method::Exact(Policy::Binomial { snapshots: int(n)? }),
            ["reptile"] => Method::Reptile,
            ["imaml", l] => Method::Imaml(num(l)?),
            _ => {
                return Err(format!(
                    "unknown method {s:?}: use fo, ufo:Q, ufo:adaptive, exact[:recompute|:sqrt|:every:K|:binomial:S], reptile, imaml:LAMBDA"
                ))
            }
        })
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data.
    pub data: DataSource,
    /// Classes per episode N.
    pub n_way: usize,
    /// Support examples per class K.
    pub k_shot: usize,
    /// Query examples per class.
    pub q_query: usize,
    /// Inner steps r.
    pub r: usize,
    /// Inner step α.
    pub alpha: f64,
    /// Filters per conv block (`None`: 64 for Omniglot-like data, 32 for Mini-ImageNet).
    pub filters: Option<usize>,
    /// Batch-norm in the conv blocks (the paper's model). Without it the
    /// network is `Conv4Variant::Benchmark`-style (conv, ReLU); iMAML's CG
    /// needs H + λI ≻ 0, which batch-norm's scale invariance tends to break.
    pub batch_norm: bool,
    /// Tasks per meta-step B.
    pub meta_batch: usize,
    /// Meta-steps of the first method; with `equal_compute`, the others get
    /// the same budget in gradient-equivalents.
    pub meta_steps: u64,
    /// Compare at equal compute (otherwise every method takes `meta_steps`).
    pub equal_compute: bool,
    /// Pilot meta-steps used to measure the cost per meta-step.
    pub pilot_steps: u64,
    /// Initial Adam step (linearly decayed to 0).
    pub outer_lr: f64,
    /// Test episodes (≥ 600 for the reported figures).
    pub test_episodes: usize,
    /// Methods, in order; the first sets the budget.
    pub methods: Vec<Method>,
    /// Seed (initialisation, episodes, coins).
    pub seed: u64,
    /// Checkpoints (and JSON-lines logs) go to `dir/<method>/`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every this many meta-steps.
    pub checkpoint_every: u64,
    /// Continue from the checkpoints in `checkpoint_dir` where they exist.
    pub resume: bool,
    /// With `resume`: continue even if this run's settings differ from the
    /// checkpoint's (each difference is printed; see
    /// `blo::train::Trainer::force_resume`). Without it such a resume fails
    /// with the setting that differs.
    pub force: bool,
    /// Stop each method after this many meta-steps (its schedule still spans
    /// the full run), e.g. to split a long run across sessions with `resume`.
    pub stop_after: Option<u64>,
    /// SVG figure of the training loss against compute (`None`: none).
    pub figure: Option<PathBuf>,
    /// Progress bars.
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataSource::default(),
            n_way: 5,
            k_shot: 1,
            q_query: 5,
            r: 5,
            alpha: 0.1,
            filters: Some(32),
            batch_norm: true,
            meta_batch: 5,
            meta_steps: 300,
            equal_compute: true,
            pilot_steps: 4,
            outer_lr: 3e-3,
            test_episodes: 600,
            methods: vec![
                Method::FirstOrder,
                Method::Ufo(0.1),
                Method::Exact(Policy::StoreAll),
            ],
            seed: 0,
            checkpoint_dir: None,
            checkpoint_every: 50,
            resume: false,
            force: false,
            stop_after: None,
            figure: Some(PathBuf::from("target/figures/fewshot.svg")),
            progress: true,
        }
    }
}

/// One method's result.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MethodResult {
    /// Method label.
    pub method: String,
    /// N, K.
    pub n_way: usize,
    /// K.
    pub k_shot: usize,
    /// Meta-steps of the full run (its schedule length).
    pub meta_steps: u64,
    /// Meta-steps completed (less than `meta_steps` with `stop_after`).
    pub steps_done: u64,
    /// Gradient-equivalents per meta-step (pilot estimate).
    pub cost_per_step: f64,
    /// Gradient-equivalents spent in training (from the estimators' stats; for a resumed
    /// run, only the part run in this process).
    pub cost_spent: f64,
    /// Mean query accuracy over the test episodes.
    pub test_accuracy: f64,
    /// Half-width of its 95% interval.
    pub test_ci95: f64,
    /// Test episodes.
    pub test_episodes: usize,
    /// Mean outer loss over the last 10% of meta-steps run in this process.
    pub final_train_loss: f64,
    /// Wall-clock seconds of training (this process).
    pub train_seconds: f64,
    /// Whether training resumed from a checkpoint.
    pub resumed: bool,
    /// The trained θ (not in JSON).
    #[serde(skip)]
    pub theta: Vec<Tensor<f32>>,
    /// (cumulative gradient-equivalents, meta-batch loss) per step (not in JSON).
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// What the meta-training tasks are, recorded in checkpoints and compared on
/// resume (`blo::train::Trainer::data_id`): the data source and the episode
/// shape (the network's layout is checked through θ's names and shapes).
fn data_id(cfg: &Config) -> String {
    format!(
        "fewshot {:?}: {}-way {}-shot, {} query per class",
        cfg.data, cfg.n_way, cfg.k_shot, cfg.q_query
    )
}

fn cost(stats: &blo::Stats) -> f64 {
    stats.gradients as f64 + 2.0 * stats.hvps as f64
}

fn conv4(cfg: &Config, set: &ImageSet) -> Conv4 {
    let [c, h, w] = set.image_shape();
    let base = match (&cfg.data, cfg.batch_norm) {
        (DataSource::MiniImagenet(_), true) => Conv4::mini_imagenet(cfg.n_way),
        (DataSource::MiniImagenet(_), false) => Conv4::benchmark(cfg.n_way).with_filters(32),
        (_, true) => Conv4::omniglot(cfg.n_way),
        (_, false) => Conv4::benchmark(cfg.n_way),
    };
    let base = base.with_input(c, h, w);
    match cfg.filters {
        Some(f) => base.with_filters(f),
        None => base,
    }
}

fn problem_for(
    cfg: &Config,
    net: &Conv4,
    method: Method,
) -> Result<ClassificationMaml<Conv4>, BloError> {
    Ok(ClassificationMaml {
        net: net.clone(),
        inner: InnerLoop::sgd(cfg.r, cfg.alpha)?,
        proximal: match method {
            Method::Imaml(l) => Some(l),
            _ => None,
        },
    })
}

/// The stationarity iMAML accepts here: ‖∇_φ L_in(θ, φ_r)‖ ≤ tol·‖∇_φ L_in(θ, φ_0)‖.
/// Like the iMAML paper, this comparison runs a few inner steps, not to the
/// proximal optimum, so the estimate is biased; 1 only states that the inner
/// loop must not have moved away from stationarity (a larger gradient at φ_r
/// than at φ_0 is an error).
pub const IMAML_STATIONARITY_TOL: f64 = 1.0;

fn estimator_for(
    method: Method,
) -> Result<Box<dyn Estimator<f32, ClassificationMaml<Conv4>>>, BloError> {
    Ok(match method {
        Method::FirstOrder => Box::new(FirstOrder::new()),
        Method::Ufo(q) => Box::new(Ufo::fixed(q)?),
        Method::UfoAdaptive => Box::new(Ufo::adaptive()),
        Method::Exact(p) => Box::new(Exact::new(p)?),
        Method::Reptile => Box::new(ReptileFirstOrder),
        Method::Imaml(l) => Box::new(
            Implicit::imaml(l)?
                .proximal_in_loss(true)
                .stationarity_tol(IMAML_STATIONARITY_TOL)?
                .with_solver(blo::ImplicitSolver::Cg(hvp::CgParams {
                    tol: 1e-3,
                    max_iter: 50,
                })),
        ),
    })
}

/// Query accuracy of θ on one episode after r inner steps.
///
/// # Errors
/// Non-finite values in the inner loop.
pub fn episode_accuracy(
    problem: &ClassificationMaml<Conv4>,
    ep: &models::Episode<f32>,
    theta: &[Tensor<f32>],
) -> Result<f64, BloError> {
    let (state, _) = blo::rollout(problem, ep, theta)?;
    let t = Tape::<f32>::new();
    let vars: Vec<_> = state.phi.iter().map(|p| t.constant(p)).collect();
    let logits = problem
        .net
        .forward(&t, &vars, t.constant(&ep.query_x))
        .value();
    let n = problem.net.n_classes;
    let correct = logits
        .data()
        .chunks(n)
        .zip(&ep.query_y)
        .filter(|(row, &y)| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            best == y
        })
        .count();
    Ok(correct as f64 / ep.query_y.len() as f64)
}

/// Accuracies of θ on `episodes` test episodes, episode i drawn from its own
/// stream (seed, i), evaluated in parallel, returned in episode order.
///
/// # Errors
/// As [`episode_accuracy`]; an invalid episode sampler (too few classes).
pub fn test_accuracies(
    problem: &ClassificationMaml<Conv4>,
    test: &ImageSet,
    sampler: &EpisodeSampler,
    theta: &[Tensor<f32>],
    episodes: usize,
    seed: u64,
) -> Result<Vec<f64>, BloError> {
    (0..episodes)
        .into_par_iter()
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            let ep = sampler.sample::<f32, _>(test, &mut rng);
            episode_accuracy(problem, &ep, theta)
        })
        .collect()
}

fn data_err(set: &ImageSet, e: models::DataError) -> BloError {
    BloError::Corrupt {
        path: set.source().to_path_buf(),
        reason: e.to_string(),
    }
}

/// Trains every method and evaluates it.
///
/// # Errors
/// Data loading, estimator, trainer (checkpoint files) and figure errors.
pub fn run(cfg: &Config) -> Result<Vec<MethodResult>, BloError> {
    run_on(cfg, &blo::comm::Local)
}

/// [`run`] as one rank of a distributed run (the example's `--mpi`): every
/// meta-batch is split across the ranks of `comm`, bit-identically to one
/// process ([`blo::comm`]); every rank evaluates, rank 0 alone writes the
/// log, checkpoints and figure.
///
/// # Errors
/// As [`run`], and [`BloError::RankFailed`] naming a failed rank.
pub fn run_on(
    cfg: &Config,
    comm: &dyn blo::comm::Communicator,
) -> Result<Vec<MethodResult>, BloError> {
    let (train, test) = load(&cfg.data, cfg.seed)?;
    let train_sampler = EpisodeSampler::new(&train, cfg.n_way, cfg.k_shot, cfg.q_query)
        .map_err(|e| data_err(&train, e))?;
    let test_sampler = EpisodeSampler::new(&test, cfg.n_way, cfg.k_shot, cfg.q_query)
        .map_err(|e| data_err(&test, e))?;
    let net = conv4(cfg, &train);
    let theta0 = net.init::<f32>(cfg.seed).into_tensors();
    let names: Vec<String> = net.param_specs().iter().map(|s| s.name.clone()).collect();
    let sample = |rng: &mut ChaCha8Rng| train_sampler.sample::<f32, _>(&train, rng);

    // Pilot: cost per meta-step of each method (deterministic counts), averaged
    // over the second half of `steps` pilot meta-steps.
    let pilot = |method: Method, steps: u64| -> Result<f64, BloError> {
        let problem = problem_for(cfg, &net, method)?;
        let mut per_step = Vec::new();
        let mut tr = Trainer::new(
            problem,
            sample,
            DynEstimator(estimator_for(method)?),
            blo::Sgd::constant(0.0),
            theta0.clone(),
        )
        .meta_batch(cfg.meta_batch)
        .steps(steps)
        .seed(cfg.seed ^ 0x9110)
        .progress(false)
        .communicator(comm)
        .on_step(|rep: &blo::StepReport| per_step.push(cost(&rep.stats)));
        tr.run()?;
        drop(tr);
        let half = &per_step[per_step.len() / 2..];
        Ok(half.iter().sum::<f64>() / half.len() as f64)
    };
    let steps = cfg.pilot_steps.max(1);
    let mut costs = Vec::new();
    for &m in &cfg.methods {
        let c = match m {
            // Expected cost: the first-order part always, the exact branch with probability q.
            Method::Ufo(q) => {
                pilot(Method::FirstOrder, steps)?
                    + q * pilot(Method::Exact(Policy::Recompute), steps)?
            }
            // Adaptive q moves during training: a longer pilot (with θ held fixed, so this
            // is only an estimate; the realised spend is reported in `cost_spent`).
            Method::UfoAdaptive => pilot(m, (5 * steps).max(20))?,
            _ => pilot(m, steps)?,
        };
        costs.push(c);
    }
    let budget = cfg.meta_steps as f64 * costs.first().copied().unwrap_or(1.0);

    let mut results = Vec::new();
    for (&method, &c) in cfg.methods.iter().zip(&costs) {
        let steps = if cfg.equal_compute {
            ((budget / c).round() as u64).max(1)
        } else {
            cfg.meta_steps
        };
        let problem = problem_for(cfg, &net, method)?;
        let mut curve = Vec::new();
        let mut spent = 0.0;
        let mut seconds = 0.0;
        let bar = util::progress(steps, &method.label(), !cfg.progress);
        let mut resumed = false;
        let outcome = {
            let mut tr = Trainer::new(
                problem.clone(),
                sample,
                DynEstimator(estimator_for(method)?),
                blo::Adam::<f32>::with_schedule(Schedule::linear_decay(cfg.outer_lr, steps)),
                theta0.clone(),
            )
            .meta_batch(cfg.meta_batch)
            .steps(cfg.stop_after.map_or(steps, |s| s.min(steps)))
            .seed(cfg.seed)
            .param_names(names.clone())
            .data_id(data_id(cfg))
            .progress(false)
            .communicator(comm)
            .on_step(|rep: &blo::StepReport| {
                spent += cost(&rep.stats);
                seconds += rep.step_seconds;
                curve.push((spent, rep.mean_outer_loss));
                bar.set_position(rep.step + 1);
            });
            if let Some(dir) = &cfg.checkpoint_dir {
                let d = dir.join(method.label().replace(':', "_"));
                std::fs::create_dir_all(&d).map_err(|e| BloError::Io {
                    path: d.clone(),
                    source: e,
                })?;
                if cfg.resume && blo::train::checkpoint_exists(&d) {
                    resumed = true;
                    tr = tr.resume_from(&d).force_resume(cfg.force);
                }
                tr = tr
                    .log_jsonl(d.join("log.jsonl"))
                    .checkpoint_every(cfg.checkpoint_every.max(1), &d);
            }
            let out = tr.run()?;
            (out, tr.step())
        };
        let (outcome, outcome_step) = outcome;
        bar.finish_and_clear();
        let accs = test_accuracies(
            &problem,
            &test,
            &test_sampler,
            &outcome.theta,
            cfg.test_episodes,
            cfg.seed ^ 0x7e57,
        )?;
        let (acc, ci) = util::mean_ci95(&accs);
        let tail = (curve.len() / 10).max(1).min(curve.len());
        let final_train_loss = if curve.is_empty() {
            f64::NAN
        } else {
            curve[curve.len() - tail..].iter().map(|p| p.1).sum::<f64>() / tail as f64
        };
        results.push(MethodResult {
            method: method.label(),
            n_way: cfg.n_way,
            k_shot: cfg.k_shot,
            meta_steps: steps,
            steps_done: outcome_step,
            cost_per_step: c,
            cost_spent: spent,
            test_accuracy: acc,
            test_ci95: ci,
            test_episodes: accs.len(),
            final_train_loss,
            train_seconds: seconds,
            resumed,
            theta: outcome.theta.clone(),
            curve,
        });
    }
    if let Some(path) = cfg.figure.as_ref().filter(|_| comm.rank() == 0) {
        let series: Vec<Series> = results
            .iter()
            .map(|r| {
                let w = (r.curve.len() / 60).max(1);
                let pts = r
                    .curve
                    .chunks(w)
                    .map(|ch| {
                        (
                            ch[ch.len() - 1].0,
                            ch.iter().map(|p| p.1).sum::<f64>() / ch.len() as f64,
                        )
                    })
                    .collect();
                Series::new(r.method.clone(), pts)
            })
            .collect();
        let spec = PlotSpec {
            title: format!(
                "{}-way {}-shot meta-training loss against compute",
                cfg.n_way, cfg.k_shot
            ),
            x_label: "gradient-equivalents spent (gradient = 1, HVP = 2)".into(),
            y_label: "meta-batch query loss".into(),
            log_y: false,
            reference: None,
        };
        util::line_plot_svg(path, &spec, &series).map_err(|e| BloError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(results)
}

/// The table printed by the example.
pub fn table(results: &[MethodResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<18} {:>10} {:>12} {:>12} {:>22} {:>10} {:>10}",
        "method",
        "meta-steps",
        "cost/step",
        "cost spent",
        "test accuracy ±95%",
        "train loss",
        "train time"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<18} {:>10} {:>12.0} {:>12.0} {:>22} {:>10.3} {:>10}{}",
            r.method,
            r.meta_steps,
            r.cost_per_step,
            r.cost_spent,
            format!(
                "{:.2}% ± {:.2}% (n={})",
                100.0 * r.test_accuracy,
                100.0 * r.test_ci95,
                r.test_episodes
            ),
            r.final_train_loss,
            util::fmt_secs(r.train_seconds),
            if r.resumed { " (resumed)" } else { "" }
        );
    }
    if let Some(r) = results.first() {
        let _ = writeln!(
            s,
            "chance: {:.2}%; cost in gradient-equivalents (gradient = 1, HVP = 2)",
            100.0 / r.n_way as f64
        );
    }
    s
}
