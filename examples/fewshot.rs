//! N-way K-shot meta-training with any estimator, compared at equal compute:
//! procedural glyphs by default (no download), Omniglot or Mini-ImageNet with
//! `--data PATH` (any folder in their layout: divide its classes with
//! `--train-classes`, `--val-classes`, `--test-classes`). Reports test
//! accuracy with a 95% interval over ≥ 600 test episodes, and with
//! `--seeds N` the mean over N training seeds with its 95% t interval and a
//! paired comparison of the methods on those seeds; checkpoints with `--checkpoint-dir`, continue with `--resume`
//! (which refuses a checkpoint whose settings differ from this run's, naming
//! the setting; `--resume --force` continues anyway, printing each difference).
//!
//! ```text
//! cargo run --release --example fewshot
//! cargo run --release --example fewshot -- --methods fo,ufo:0.1,ufo:adaptive,exact:recompute,reptile,imaml:1
//! cargo run --release --example fewshot -- --data ~/data/omniglot --dataset omniglot --n-way 20 --r 5 --alpha 0.005
//! cargo build --release --features mpi --example fewshot
//! RAYON_NUM_THREADS=1 mpiexec -n 2 target/release/examples/fewshot --mpi --methods fo
//! cargo run --release --example fewshot -- --data ~/my-alphabets --train-classes 0.6 --val-classes 0.2 --seeds 5
//! ```
//!
//! The logic lives in `blo_examples::fewshot` (so the tests run it).

use std::path::PathBuf;
use std::process::ExitCode;

use blo_examples::fewshot::{self, Config, DataSource, Method};
use clap::{Parser, ValueEnum};
use models::{ClassSplit, SplitSize};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dataset {
    Omniglot,
    MiniImagenet,
}

/// Few-shot meta-training (MAML family) with FO, UFO, exact, Reptile or iMAML at equal compute.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Methods: fo, ufo:Q, ufo:adaptive, exact[:recompute|:sqrt|:every:K|:binomial:S], reptile, imaml:LAMBDA.
    #[arg(long, value_delimiter = ',', default_value = "fo,ufo:0.1,exact")]
    methods: Vec<String>,
    /// Data set root (Omniglot or Mini-ImageNet); procedural glyphs if absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which data set `--data` holds.
    #[arg(long, value_enum, default_value = "omniglot")]
    dataset: Dataset,
    /// Classes (characters) for meta-training: a count (5), a fraction (0.6)
    /// or `rest`; classes are taken in sorted order: train, validation, test.
    /// Default with --data: 1200 for Omniglot (the rest test), the CSV files'
    /// split for Mini-ImageNet (any split flag pools their classes instead).
    #[arg(long, value_name = "N|FRACTION|rest")]
    train_classes: Option<SplitSize>,
    /// Classes for validation (accuracy reported beside the test accuracy); default 0.
    #[arg(long, value_name = "N|FRACTION|rest")]
    val_classes: Option<SplitSize>,
    /// Classes for testing; default: the rest.
    #[arg(long, value_name = "N|FRACTION|rest")]
    test_classes: Option<SplitSize>,
    /// Classes per episode N.
    #[arg(long, default_value_t = 5)]
    n_way: usize,
    /// Support examples per class K.
    #[arg(long, default_value_t = 1)]
    k_shot: usize,
    /// Query examples per class.
    #[arg(long, default_value_t = 5)]
    q_query: usize,
    /// Inner SGD steps r.
    #[arg(long, default_value_t = 5)]
    r: usize,
    /// Inner step α.
    #[arg(long, default_value_t = 0.1)]
    alpha: f64,
    /// Conv filters per block (default: 32 on glyphs, the paper's 64/32 on Omniglot/Mini-ImageNet).
    #[arg(long)]
    filters: Option<usize>,
    /// Drop batch-norm from the conv blocks (iMAML's CG needs H + λI positive definite).
    #[arg(long)]
    no_batch_norm: bool,
    /// Tasks per meta-step.
    #[arg(long, default_value_t = 5)]
    meta_batch: usize,
    /// Meta-steps of the first method (the others get the same compute).
    #[arg(long, default_value_t = 300)]
    meta_steps: u64,
    /// Give every method `--meta-steps` instead of equal compute.
    #[arg(long)]
    equal_steps: bool,
    /// Initial outer (Adam) step, decayed linearly to 0.
    #[arg(long, default_value_t = 3e-3)]
    outer_lr: f64,
    /// Test episodes.
    #[arg(long, default_value_t = 600)]
    test_episodes: usize,
    /// Seed (of the first training run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train each method from N seeds (seed, seed + 1, …) and report the mean
    /// test accuracy with its 95% interval across seeds and paired differences.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Write checkpoints and JSON-lines logs to DIR/<method>/.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every N meta-steps.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Resume from the checkpoints in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// With --resume: continue even if the settings differ from the
    /// checkpoint's (each difference is printed as "resume forced").
    #[arg(long, requires = "resume")]
    force: bool,
    /// Stop each method after N meta-steps (resume later with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
    /// SVG figure of the training loss against compute.
    #[arg(long, default_value = "target/figures/fewshot.svg")]
    figure: PathBuf,
    /// Do not write the figure.
    #[arg(long)]
    no_figure: bool,
    /// One JSON object per method instead of the table.
    #[arg(long)]
    json: bool,
    /// Run as one rank of an MPI job (`mpiexec -n N`), each meta-batch split
    /// across the ranks, bit-identical to one process; needs a build with
    /// `--features mpi`.
    #[arg(long)]
    mpi: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let mut methods = Vec::new();
    for m in &a.methods {
        match m.parse::<Method>() {
            Ok(m) => methods.push(m),
            Err(e) => {
                eprintln!("fewshot: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let data = match (&a.data, a.dataset) {
        (None, _) => DataSource::default(),
        (Some(p), Dataset::Omniglot) => DataSource::Omniglot(p.clone()),
        (Some(p), Dataset::MiniImagenet) => DataSource::MiniImagenet(p.clone()),
    };
    let sizes = [a.train_classes, a.val_classes, a.test_classes];
    let classes = match (&a.data, sizes.iter().any(Option::is_some)) {
        (_, false) => None,
        (None, true) => {
            eprintln!("fewshot: --train-classes, --val-classes and --test-classes divide a --data folder; procedural glyphs have fixed splits");
            return ExitCode::from(2);
        }
        (Some(_), true) => Some(ClassSplit::from_sizes(
            a.train_classes,
            a.val_classes,
            a.test_classes,
            ClassSplit::default().train,
        )),
    };
    let filters = match (&a.data, a.filters) {
        (_, Some(f)) => Some(f),
        (None, None) => Some(32),
        (Some(_), None) => None,
    };
    let cfg = Config {
        data,
        n_way: a.n_way,
        k_shot: a.k_shot,
        q_query: a.q_query,
        r: a.r,
        alpha: a.alpha,
        filters,
        batch_norm: !a.no_batch_norm,
        meta_batch: a.meta_batch,
        meta_steps: a.meta_steps,
        equal_compute: !a.equal_steps,
        outer_lr: a.outer_lr,
        test_episodes: a.test_episodes,
        methods,
        classes,
        seed: a.seed,
        seeds: a.seeds,
        checkpoint_dir: a.checkpoint_dir.clone(),
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        force: a.force,
        stop_after: a.stop_after,
        figure: (!a.no_figure).then(|| a.figure.clone()),
        progress: !a.json,
        ..Config::default()
    };
    let comm = match blo_examples::distributed::communicator(a.mpi) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fewshot: {e}");
            return ExitCode::from(2);
        }
    };
    let results = match fewshot::load(&cfg).and_then(|data| fewshot::run_on(&cfg, &data, &*comm)) {
        Ok(r) => r,
        Err(e) => {
            match comm.size() {
                1 => eprintln!("fewshot: {e}"),
                n => eprintln!("fewshot: rank {} of {n}: {e}", comm.rank()),
            }
            if matches!(
                e,
                fewshot::Error::Data(
                    models::DataError::ClassSplit { .. } | models::DataError::EmptySplit { .. }
                )
            ) {
                eprintln!("fewshot: set the class split with --train-classes, --val-classes, --test-classes (a count, a fraction such as 0.6, or rest)");
            }
            return ExitCode::FAILURE;
        }
    };
    if comm.rank() != 0 {
        return ExitCode::SUCCESS;
    }
    if a.json {
        blo_examples::util::print_json_lines(&results);
        if a.seeds > 1 {
            match fewshot::summarise(&results) {
                Ok((summaries, pairs)) => {
                    blo_examples::util::print_json_lines(&summaries);
                    blo_examples::util::print_json_lines(&pairs);
                }
                Err(e) => eprintln!("fewshot: {e}"),
            }
        }
    } else {
        print!("{}", fewshot::table(&results));
        if let Some(p) = &cfg.figure {
            println!(
                "figures: {} (against compute), {} (against meta-steps)",
                p.display(),
                fewshot::steps_figure_path(p).display()
            );
        }
    }
    ExitCode::SUCCESS
}
