//! Hyperparameter search by hypergradient: learn one L2 weight (or, with
//! `--learn step-size`, one inner step size) per feature of a ridge
//! regression on a train/validation split, and compare the exact
//! (store-all and binomial checkpointing), forward-mode, implicit and UFO
//! hypergradients (plus first-order, which is exactly zero here).
//!
//! ```text
//! cargo run --release --example hyperopt
//! cargo run --release --example hyperopt -- --outer-steps 20 --json
//! cargo run --release --example hyperopt -- --learn step-size --outer-lr 0.01
//! ```
//!
//! The logic lives in `blo_examples::hyperopt` (so the tests run it).

use std::path::PathBuf;
use std::process::ExitCode;

use blo_examples::hyperopt::{self, Config, Hyper, Method};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Learn {
    /// One L2 weight per feature.
    L2,
    /// One inner step size per feature (Meta-SGD inner loop, fixed L2 weight 0.1).
    StepSize,
}

/// Learn per-feature L2 weights of a ridge regression by hypergradient descent.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// What to learn.
    #[arg(long, value_enum, default_value = "l2")]
    learn: Learn,
    /// Inner step α (the initial per-feature step with --learn step-size).
    #[arg(long)]
    alpha: Option<f64>,
    /// Features (= hyperparameters).
    #[arg(long, default_value_t = 20)]
    features: usize,
    /// Features that carry signal (the rest are noise).
    #[arg(long, default_value_t = 5)]
    informative: usize,
    /// Training examples.
    #[arg(long, default_value_t = 40)]
    train: usize,
    /// Inner gradient steps r.
    #[arg(long, default_value_t = 100)]
    inner_steps: usize,
    /// Outer (hyperparameter) steps.
    #[arg(long, default_value_t = 100)]
    outer_steps: usize,
    /// Adam step for the hyperparameters.
    #[arg(long, default_value_t = 0.1)]
    outer_lr: f64,
    /// Exact-branch probability of UFO-BLO.
    #[arg(long, default_value_t = 0.2)]
    q: f64,
    /// Snapshots for the binomial checkpointing policy.
    #[arg(long, default_value_t = 4)]
    snapshots: usize,
    /// Seed of the data and the UFO coins.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// SVG figure of the validation loss against the outer step.
    #[arg(long, default_value = "target/figures/hyperopt.svg")]
    figure: PathBuf,
    /// Do not write the figure.
    #[arg(long)]
    no_figure: bool,
    /// One JSON object per estimator instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let (hyper, alpha, mut methods) = match a.learn {
        Learn::L2 => (
            Hyper::L2Weights,
            a.alpha.unwrap_or(0.1),
            vec![Method::Implicit],
        ),
        // The implicit estimator does not apply to step sizes.
        Learn::StepSize => (
            Hyper::StepSizes { l2: 0.1 },
            a.alpha.unwrap_or(0.02),
            vec![],
        ),
    };
    methods.splice(
        0..0,
        [
            Method::ExactStoreAll,
            Method::ExactBinomial(a.snapshots),
            Method::ForwardMode,
        ],
    );
    methods.extend([Method::Ufo(a.q), Method::FirstOrder]);
    let cfg = Config {
        d: a.features,
        informative: a.informative,
        n: [a.train, 200, 2000],
        r: a.inner_steps,
        alpha,
        hyper,
        outer_steps: a.outer_steps,
        outer_lr: a.outer_lr,
        seed: a.seed,
        methods,
        figure: (!a.no_figure).then(|| a.figure.clone()),
        progress: !a.json,
        ..Config::default()
    };
    let results = match hyperopt::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hyperopt: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.json {
        blo_examples::util::print_json_lines(&results);
    } else {
        print!("{}", hyperopt::table(&results));
        if let Some(p) = &cfg.figure {
            println!("figure: {}", p.display());
        }
    }
    ExitCode::SUCCESS
}
