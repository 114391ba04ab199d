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
//!   1.96·s/√n over those episodes (how well one trained network was
//!   measured). With a validation split, the same on its classes.
//! - Across training seeds (`seeds` > 1): every method is trained once per
//!   seed; the summary gives the mean test accuracy over seeds with its 95%
//!   Student-t interval, and each method's paired difference to the first
//!   method on the same seeds ([`crate::stats`]).
//! - Data: any Omniglot- or Mini-ImageNet-layout folder, divided by class with
//!   [`Config::classes`], or sets already in memory ([`run_on`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use blo::{
    BloError, Estimator, Exact, FirstOrder, Implicit, InnerLoop, Policy, ReptileFirstOrder,
    Schedule, Trainer, Ufo,
};
use models::{
    glyphs, ClassSplit, Conv4, DataError, EpisodeSampler, GlyphOptions, ImageSet, Model, Splits,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tape::{Tape, Tensor};

use crate::dyn_estimator::DynEstimator;
use crate::stats::{self, Interval};
use crate::util::{self, PlotSpec, Series};
use models::ClassificationMaml;

/// What can go wrong in a few-shot run: the data (a file, the class split, an
/// episode the sets cannot serve), a setting, or training itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data set could not be loaded or split, or cannot serve episodes.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A setting that does not apply (e.g. a class split for procedural glyphs).
    #[error("{0}")]
    Config(String),
    /// Training, checkpoints, the figure.
    #[error(transparent)]
    Blo(#[from] BloError),
}

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
    /// An Omniglot-layout folder (`root/<alphabet>/<character>/*.png`, see
    /// `models::load_omniglot`), split by [`Config::classes`].
    Omniglot(PathBuf),
    /// A Mini-ImageNet-layout folder (see `models::load_mini_imagenet`): its
    /// `train.csv`, `val.csv` (if present) and `test.csv` splits, or with
    /// [`Config::classes`] all their classes pooled and split by it.
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

/// Loads the train, validation and test sets of `cfg.data`, divided by
/// `cfg.classes` where given (procedural glyphs have no validation classes;
/// their data set is drawn from `cfg.seed`).
///
/// # Errors
/// [`Error::Data`] naming the file, or saying how many classes were found and
/// what the class split asks for; [`Error::Config`] for a class split on glyphs.
pub fn load(cfg: &Config) -> Result<Splits, Error> {
    let seed = cfg.seed;
    Ok(match &cfg.data {
        DataSource::Glyphs {
            train_classes,
            test_classes,
            per_class,
            size,
        } => {
            if let Some(split) = &cfg.classes {
                return Err(Error::Config(format!(
                    "a class split ({split}) applies to data from a folder; procedural glyphs \
                     draw {train_classes} train and {test_classes} test classes"
                )));
            }
            let opts = |n, s| GlyphOptions {
                n_classes: n,
                per_class: *per_class,
                size: *size,
                seed: s,
                ..GlyphOptions::default()
            };
            // Different seeds draw different stroke sets: the test classes are unseen.
            let train = glyphs(&opts(*train_classes, 2 * seed));
            let val = ImageSet::new(train.source(), 1, *size, *size);
            Splits {
                train,
                val,
                test: glyphs(&opts(*test_classes, 2 * seed + 1)),
            }
        }
        DataSource::Omniglot(root) => models::load_omniglot(
            root,
            &models::OmniglotOptions {
                split: cfg.classes.unwrap_or_default(),
                ..models::OmniglotOptions::default()
            },
        )?,
        DataSource::MiniImagenet(root) => match &cfg.classes {
            Some(split) => split.apply(&models::load_mini_imagenet_pooled(root)?)?,
            None => {
                let side = models::data::mini_imagenet::SIZE;
                Splits {
                    train: models::load_mini_imagenet(root, "train")?,
                    val: if root.join("val.csv").exists() {
                        models::load_mini_imagenet(root, "val")?
                    } else {
                        ImageSet::new(root, 3, side, side)
                    },
                    test: models::load_mini_imagenet(root, "test")?,
                }
            }
        },
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
    /// How the folder's classes are divided into train, validation and test
    /// (`None`: 1,200 / 0 / rest for Omniglot, the CSV files for
    /// Mini-ImageNet). Not for glyphs.
    pub classes: Option<ClassSplit>,
    /// Seed (initialisation, episodes, coins) of the first training run.
    pub seed: u64,
    /// Training runs per method, from seeds `seed`, `seed + 1`, …; with more
    /// than one, [`summarise`] gives statistics across seeds.
    pub seeds: usize,
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
            classes: None,
            seed: 0,
            seeds: 1,
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
    /// The training seed of this run.
    pub seed: u64,
    /// N.
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
    /// Mean query accuracy over as many validation episodes (`None` without
    /// validation classes).
    pub val_accuracy: Option<f64>,
    /// Half-width of its 95% interval.
    pub val_ci95: Option<f64>,
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
/// resume (`blo::train::Trainer::data_id`): the training set (source, classes,
/// images, image shape) and the episode shape (the network's layout is
/// checked through θ's names and shapes).
fn data_id(cfg: &Config, train: &ImageSet) -> String {
    let name = |c: Option<&models::data::ClassInfo>| c.map_or("", |c| c.name.as_str()).to_string();
    format!(
        "fewshot {}: {} train classes `{}`..`{}`, {} images {:?}: {}-way {}-shot, {} query per class",
        train.source().display(),
        train.num_classes(),
        name(train.classes().first()),
        name(train.classes().last()),
        train.num_images(),
        train.image_shape(),
        cfg.n_way,
        cfg.k_shot,
        cfg.q_query
    )
}

fn conv4(cfg: &Config, set: &ImageSet) -> Conv4 {
    let [c, h, w] = set.image_shape();
    // Colour images get the Mini-ImageNet network, grayscale the Omniglot one.
    let base = match (c == 3, cfg.batch_norm) {
        (true, true) => Conv4::mini_imagenet(cfg.n_way),
        (true, false) => Conv4::benchmark(cfg.n_way).with_filters(32),
        (false, true) => Conv4::omniglot(cfg.n_way),
        (false, false) => Conv4::benchmark(cfg.n_way),
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

/// Loads `cfg.data` ([`load`]) and trains and evaluates every method on it
/// ([`run_on`]).
///
/// # Errors
/// As [`load`] and [`run_on`].
pub fn run(cfg: &Config) -> Result<Vec<MethodResult>, Error> {
    run_on(cfg, &load(cfg)?, &blo::comm::Local)
}

/// Trains every method of `cfg` on `data.train` once per seed (`cfg.seeds`
/// runs from `cfg.seed`) and evaluates it on `data.test` (and `data.val` if it
/// has classes). `cfg.data` and `cfg.classes` are not used: the sets may come
/// from anywhere, e.g. built in memory with [`models::ImageSet::add_class`].
/// The results are grouped by seed, methods in order within each seed.
///
/// `comm` makes this one rank of a distributed run (the example's `--mpi`;
/// [`blo::comm::Local`] for one process): every meta-batch is split across
/// its ranks, bit-identically to one process ([`blo::comm`]); every rank
/// evaluates, rank 0 alone writes the logs, checkpoints and figures.
///
/// ```no_run
/// use blo_examples::fewshot::{run_on, Config};
/// use models::{glyphs, GlyphOptions, ImageSet, Splits};
/// let opts = |seed| GlyphOptions { n_classes: 20, seed, ..GlyphOptions::default() };
/// let (train, test) = (glyphs(&opts(0)), glyphs(&opts(1)));
/// let val = ImageSet::new("none", 1, 28, 28);
/// let results = run_on(&Config::default(), &Splits { train, val, test }, &blo::comm::Local)?;
/// # Ok::<(), blo_examples::fewshot::Error>(())
/// ```
///
/// # Errors
/// [`Error::Data`] if a set cannot serve N-way episodes with K + Q examples
/// per class; [`Error::Config`] for `seeds` = 0; [`Error::Blo`] for estimator,
/// trainer (checkpoint files) and figure errors, including
/// [`BloError::RankFailed`] naming a failed rank.
pub fn run_on(
    cfg: &Config,
    data: &Splits,
    comm: &dyn blo::comm::Communicator,
) -> Result<Vec<MethodResult>, Error> {
    if cfg.seeds == 0 {
        return Err(Error::Config("seeds = 0: train at least once".into()));
    }
    let sampler = |set: &ImageSet| EpisodeSampler::new(set, cfg.n_way, cfg.k_shot, cfg.q_query);
    let samplers = Samplers {
        train: sampler(&data.train)?,
        val: match data.val.num_classes() {
            0 => None,
            _ => Some(sampler(&data.val)?),
        },
        test: sampler(&data.test)?,
    };
    let mut results = Vec::new();
    for seed in (0..cfg.seeds as u64).map(|k| cfg.seed + k) {
        results.extend(run_seed(cfg, data, &samplers, seed, comm)?);
    }
    if let Some(path) = cfg.figure.as_ref().filter(|_| comm.rank() == 0) {
        let first: Vec<&MethodResult> = results.iter().filter(|r| r.seed == cfg.seed).collect();
        figures(cfg, path, &first)?;
    }
    Ok(results)
}

struct Samplers {
    train: EpisodeSampler,
    val: Option<EpisodeSampler>,
    test: EpisodeSampler,
}

/// Every method trained from `seed` (initialisation, episodes, coins; the test
/// episodes are drawn from it too, so methods of one seed are compared on the
/// same episodes).
fn run_seed(
    cfg: &Config,
    data: &Splits,
    samplers: &Samplers,
    seed: u64,
    comm: &dyn blo::comm::Communicator,
) -> Result<Vec<MethodResult>, Error> {
    let (train, test) = (&data.train, &data.test);
    let train_sampler = samplers.train;
    let net = conv4(cfg, train);
    let theta0 = net.init::<f32>(seed).into_tensors();
    let names: Vec<String> = net.param_specs().iter().map(|s| s.name.clone()).collect();
    let sample = |rng: &mut ChaCha8Rng| train_sampler.sample::<f32, _>(train, rng);

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
        .seed(seed ^ 0x9110)
        .progress(false)
        .communicator(comm)
        .on_step(|rep: &blo::StepReport| per_step.push(rep.stats.cost()));
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
            .seed(seed)
            .param_names(names.clone())
            .data_id(data_id(cfg, train))
            .progress(false)
            .communicator(comm)
            .on_step(|rep: &blo::StepReport| {
                spent += rep.stats.cost();
                seconds += rep.step_seconds;
                curve.push((spent, rep.mean_outer_loss));
                bar.set_position(rep.step + 1);
            });
            if let Some(dir) = &cfg.checkpoint_dir {
                let mut d = dir.join(method.label().replace(':', "_"));
                if cfg.seeds > 1 {
                    d = d.join(format!("seed{seed}"));
                }
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
            test,
            &samplers.test,
            &outcome.theta,
            cfg.test_episodes,
            seed ^ 0x7e57,
        )?;
        let (acc, ci) = util::mean_ci95(&accs);
        let val = match &samplers.val {
            Some(vs) => Some(util::mean_ci95(&test_accuracies(
                &problem,
                &data.val,
                vs,
                &outcome.theta,
                cfg.test_episodes,
                seed ^ 0x7a1,
            )?)),
            None => None,
        };
        let tail = (curve.len() / 10).max(1).min(curve.len());
        let final_train_loss = if curve.is_empty() {
            f64::NAN
        } else {
            curve[curve.len() - tail..].iter().map(|p| p.1).sum::<f64>() / tail as f64
        };
        results.push(MethodResult {
            method: method.label(),
            seed,
            n_way: cfg.n_way,
            k_shot: cfg.k_shot,
            meta_steps: steps,
            steps_done: outcome_step,
            cost_per_step: c,
            cost_spent: spent,
            test_accuracy: acc,
            test_ci95: ci,
            test_episodes: accs.len(),
            val_accuracy: val.map(|v| v.0),
            val_ci95: val.map(|v| v.1),
            final_train_loss,
            train_seconds: seconds,
            resumed,
            theta: outcome.theta.clone(),
            curve,
        });
    }
    Ok(results)
}

/// Where the figure against meta-steps goes: `path` with `-steps` before the
/// extension (`fewshot.svg` → `fewshot-steps.svg`).
pub fn steps_figure_path(path: &Path) -> PathBuf {
    util::with_suffix(path, "-steps")
}

/// Writes the training loss of one seed's runs against compute to `path`, and
/// against meta-steps to `path` with `-steps` before the extension.
fn figures(cfg: &Config, path: &Path, results: &[&MethodResult]) -> Result<(), BloError> {
    // (meta-step, compute, loss) averaged over windows of about 1/60 of the run.
    let windows = |r: &MethodResult| -> Vec<(f64, f64, f64)> {
        let w = (r.curve.len() / 60).max(1);
        r.curve
            .chunks(w)
            .enumerate()
            .map(|(i, ch)| {
                let loss = ch.iter().map(|p| p.1).sum::<f64>() / ch.len() as f64;
                (((i * w) + ch.len()) as f64, ch[ch.len() - 1].0, loss)
            })
            .collect()
    };
    let seed_note = match cfg.seeds {
        1 => String::new(),
        _ => format!(" (seed {})", cfg.seed),
    };
    let steps_path = steps_figure_path(path);
    for (file, against, x_label) in [
        (
            path.to_path_buf(),
            "compute",
            "gradient-equivalents spent (gradient = 1, HVP = 2)",
        ),
        (steps_path, "meta-steps", "meta-step"),
    ] {
        let series: Vec<Series> = results
            .iter()
            .map(|r| {
                let pts = windows(r)
                    .into_iter()
                    .map(|(k, c, l)| (if against == "compute" { c } else { k }, l))
                    .collect();
                Series::new(r.method.clone(), pts)
            })
            .collect();
        let spec = PlotSpec {
            title: format!(
                "{}-way {}-shot meta-training loss against {against}{seed_note}",
                cfg.n_way, cfg.k_shot
            ),
            x_label: x_label.into(),
            y_label: "meta-batch query loss".into(),
            log_y: false,
            reference: None,
        };
        util::line_plot_svg(&file, &spec, &series).map_err(|e| BloError::Io {
            path: file.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// One method's test accuracy across training seeds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SeedSummary {
    /// Method label.
    pub method: String,
    /// The seeds it was trained from, ascending.
    pub seeds: Vec<u64>,
    /// Mean test accuracy over seeds with its 95% Student-t interval.
    pub accuracy: Interval,
    /// Mean over seeds of the per-run test-episode half-width (how well each
    /// trained network was measured, for comparison with the spread between seeds).
    pub mean_episode_ci95: f64,
}

/// Method `a` minus method `b`, paired on the same seeds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PairedComparison {
    /// The first method.
    pub a: String,
    /// The second method.
    pub b: String,
    /// Mean of acc_a(seed) − acc_b(seed) with its 95% Student-t interval;
    /// an interval excluding 0 says the methods differ at the 5% level.
    pub difference: Interval,
}

/// Statistics across seeds: each method's mean test accuracy (with the 95%
/// Student-t interval across seeds, [`stats::mean_t_ci95`]) and every pair of
/// methods compared on the seeds both were trained from
/// ([`stats::paired_t_ci95`]), methods in order of first appearance.
///
/// # Errors
/// [`Error::Config`] if a method has fewer than two seeds, or two methods were
/// not trained on the same seeds.
pub fn summarise(
    results: &[MethodResult],
) -> Result<(Vec<SeedSummary>, Vec<PairedComparison>), Error> {
    let mut methods: Vec<&str> = Vec::new();
    for r in results {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    // Per method: (seed, accuracy, episode half-width), by seed.
    let runs = |m: &str| -> Vec<(u64, f64, f64)> {
        let mut v: Vec<_> = results
            .iter()
            .filter(|r| r.method == m)
            .map(|r| (r.seed, r.test_accuracy, r.test_ci95))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let mut summaries = Vec::new();
    for &m in &methods {
        let v = runs(m);
        let acc: Vec<f64> = v.iter().map(|x| x.1).collect();
        let accuracy = stats::mean_t_ci95(&acc).map_err(|e| Error::Config(format!("{m}: {e}")))?;
        summaries.push(SeedSummary {
            method: m.to_string(),
            seeds: v.iter().map(|x| x.0).collect(),
            accuracy,
            mean_episode_ci95: v.iter().map(|x| x.2).sum::<f64>() / v.len() as f64,
        });
    }
    let mut pairs = Vec::new();
    for (i, a) in summaries.iter().enumerate() {
        for b in &summaries[i + 1..] {
            if a.seeds != b.seeds {
                return Err(Error::Config(format!(
                    "paired comparison: {} was trained on seeds {:?}, {} on {:?}",
                    a.method, a.seeds, b.method, b.seeds
                )));
            }
            let acc = |m: &str| runs(m).iter().map(|x| x.1).collect::<Vec<f64>>();
            let difference =
                stats::paired_t_ci95(&acc(&a.method), &acc(&b.method)).map_err(Error::Config)?;
            pairs.push(PairedComparison {
                a: a.method.clone(),
                b: b.method.clone(),
                difference,
            });
        }
    }
    Ok((summaries, pairs))
}

/// The table printed by the example: one row per run and, when a method was
/// trained from more than one seed, the statistics across seeds ([`summarise`]).
pub fn table(results: &[MethodResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let several = results.iter().any(|r| r.seed != results[0].seed);
    let has_val = results.iter().any(|r| r.val_accuracy.is_some());
    let _ = write!(
        s,
        "{:<18} {:>5} {:>10} {:>12} {:>12} {:>22}",
        "method", "seed", "meta-steps", "cost/step", "cost spent", "test accuracy ±95%"
    );
    if has_val {
        let _ = write!(s, " {:>16}", "val. accuracy");
    }
    let _ = writeln!(s, " {:>10} {:>10}", "train loss", "train time");
    for r in results {
        let _ = write!(
            s,
            "{:<18} {:>5} {:>10} {:>12.0} {:>12.0} {:>22}",
            r.method,
            r.seed,
            r.meta_steps,
            r.cost_per_step,
            r.cost_spent,
            format!(
                "{:.2}% ± {:.2}% (n={})",
                100.0 * r.test_accuracy,
                100.0 * r.test_ci95,
                r.test_episodes
            ),
        );
        if has_val {
            let v = match (r.val_accuracy, r.val_ci95) {
                (Some(a), Some(c)) => format!("{:.2}% ± {:.2}%", 100.0 * a, 100.0 * c),
                _ => "-".into(),
            };
            let _ = write!(s, " {v:>16}");
        }
        let _ = writeln!(
            s,
            " {:>10.3} {:>10}{}",
            r.final_train_loss,
            util::fmt_secs(r.train_seconds),
            if r.resumed { " (resumed)" } else { "" }
        );
    }
    if let Some(r) = results.first() {
        let _ = writeln!(
            s,
            "chance: {:.2}%; cost in gradient-equivalents (gradient = 1, HVP = 2); \
             ±95% over the test episodes of each run",
            100.0 / r.n_way as f64
        );
    }
    if several {
        match summarise(results) {
            Ok((summaries, pairs)) => {
                let _ = writeln!(
                    s,
                    "\nacross training seeds (mean ± 95% Student-t interval over seeds):"
                );
                let _ = writeln!(
                    s,
                    "{:<18} {:>5} {:>24} {:>24}",
                    "method", "seeds", "test accuracy", "mean episode ±95%"
                );
                for m in &summaries {
                    let _ = writeln!(
                        s,
                        "{:<18} {:>5} {:>24} {:>24}",
                        m.method,
                        m.accuracy.n,
                        format!(
                            "{:.2}% ± {:.2}%",
                            100.0 * m.accuracy.mean,
                            100.0 * m.accuracy.half_width
                        ),
                        format!("± {:.2}%", 100.0 * m.mean_episode_ci95)
                    );
                }
                let _ = writeln!(
                    s,
                    "\npaired on the same seeds (a − b, mean ± 95% t interval):"
                );
                for p in &pairs {
                    let d = p.difference;
                    let verdict = if d.mean.abs() > d.half_width {
                        "differ"
                    } else {
                        "not distinguishable"
                    };
                    let _ = writeln!(
                        s,
                        "{:<18} − {:<18} {:>+8.2}% ± {:.2}%  ({verdict} at 5%)",
                        p.a,
                        p.b,
                        100.0 * d.mean,
                        100.0 * d.half_width
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "no statistics across seeds: {e}");
            }
        }
    }
    s
}
