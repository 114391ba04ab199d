//! N-way K-shot meta-training with any estimator, compared at equal compute:
//! procedural glyphs by default (no download), Omniglot or Mini-ImageNet with
//! `--data PATH`. Reports test accuracy with a 95% interval over ≥ 600 test
//! episodes; checkpoints with `--checkpoint-dir`, continue with `--resume`
//! (which refuses a checkpoint whose settings differ from this run's, naming
//! the setting; `--resume --force` continues anyway, printing each difference).
//!
//! ```text
//! cargo run --release --example fewshot
//! cargo run --release --example fewshot -- --methods fo,ufo:0.1,ufo:adaptive,exact:recompute,reptile,imaml:1
//! cargo run --release --example fewshot -- --data ~/data/omniglot --dataset omniglot --n-way 20 --r 5 --alpha 0.005
//! cargo build --release --features mpi --example fewshot
//! RAYON_NUM_THREADS=1 mpiexec -n 2 target/release/examples/fewshot --mpi --methods fo
//! ```
//!
//! The logic lives in `blo_examples::fewshot` (so the tests run it).

use std::path::PathBuf;
use std::process::ExitCode;

use blo_examples::fewshot::{self, Config, DataSource, Method};
use clap::{Parser, ValueEnum};

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
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
        seed: a.seed,
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
    let results = match fewshot::run_on(&cfg, &*comm) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fewshot: rank {} of {}: {e}", comm.rank(), comm.size());
            return ExitCode::FAILURE;
        }
    };
    if comm.rank() != 0 {
        return ExitCode::SUCCESS;
    }
    if a.json {
        blo_examples::util::print_json_lines(&results);
    } else {
        print!("{}", fewshot::table(&results));
        if let Some(p) = &cfg.figure {
            println!("figure: {}", p.display());
        }
    }
    ExitCode::SUCCESS
}
