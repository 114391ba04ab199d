//! MAML on sinusoid regression with the estimators side by side, for several
//! numbers of inner steps r: meta-test loss, time per meta-step, inner states
//! held and process peak RSS; a table and SVG figures.
//!
//! ```text
//! cargo run --release --example maml_sine
//! cargo run --release --example maml_sine -- --rs 1,5 --meta-steps 200 --json
//! ```
//!
//! The logic lives in `blo_examples::maml_sine` (so the tests run it).

use std::path::PathBuf;
use std::process::ExitCode;

use blo_examples::maml_sine::{self, Config, Method};
use clap::Parser;

/// MAML sinusoid regression: FO, UFO and exact (three checkpoint policies) side by side.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Inner step counts to compare (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    rs: Vec<usize>,
    /// Meta-training steps per run.
    #[arg(long, default_value_t = 1000)]
    meta_steps: u64,
    /// Tasks per meta-step.
    #[arg(long, default_value_t = 5)]
    meta_batch: usize,
    /// Support (= query) points per task.
    #[arg(long, default_value_t = 10)]
    k_shot: usize,
    /// Inner step size α.
    #[arg(long, default_value_t = 0.01)]
    alpha: f64,
    /// Outer Adam step.
    #[arg(long, default_value_t = 1e-3)]
    outer_lr: f64,
    /// UFO-BLO's exact-branch probability.
    #[arg(long, default_value_t = 0.1)]
    q: f64,
    /// Held-out tasks for the meta-test loss.
    #[arg(long, default_value_t = 200)]
    test_tasks: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for the SVG figures.
    #[arg(long, default_value = "target/figures")]
    figure_dir: PathBuf,
    /// Do not write figures.
    #[arg(long)]
    no_figure: bool,
    /// One JSON object per (r, estimator) instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let cfg = Config {
        rs: a.rs.clone(),
        methods: vec![
            Method::FirstOrder,
            Method::Ufo(a.q),
            Method::ExactStoreAll,
            Method::ExactRecompute,
            Method::ExactBinomial(3),
        ],
        k_shot: a.k_shot,
        alpha: a.alpha,
        meta_steps: a.meta_steps,
        meta_batch: a.meta_batch,
        outer_lr: a.outer_lr,
        test_tasks: a.test_tasks,
        seed: a.seed,
        figure_dir: (!a.no_figure).then(|| a.figure_dir.clone()),
        progress: !a.json,
        ..Config::default()
    };
    let out = match maml_sine::run(&cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("maml_sine: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.json {
        blo_examples::util::print_json_lines(&out);
    } else {
        print!("{}", maml_sine::table(&out));
        if let Some(d) = &cfg.figure_dir {
            println!(
                "figures: {}/maml_sine_{{loss,time,states,train}}.svg",
                d.display()
            );
        }
    }
    ExitCode::SUCCESS
}
