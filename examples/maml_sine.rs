//! MAML on sinusoid regression with the estimators side by side, for several
//! numbers of inner steps r: meta-test loss, time per meta-step, inner states
//! held and process peak RSS; a table and SVG figures.
//!
//! ```text
//! cargo run --release --example maml_sine
//! cargo run --release --example maml_sine -- --rs 1,5 --meta-steps 200 --json
//! ```
//!
//! One estimator with a log and checkpoints (`--train-dir`), and the same run
//! split across the ranks of an MPI job, bit-identical to one process
//! (`--mpi`; see docs/distributed.md):
//!
//! ```text
//! cargo run --release --example maml_sine -- --train-dir runs/sine --rs 10 --meta-steps 20
//! cargo build --release --features mpi --example maml_sine
//! RAYON_NUM_THREADS=1 mpiexec -n 2 target/release/examples/maml_sine --mpi --train-dir runs/sine2 --rs 10 --meta-steps 20
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
    /// Train one estimator (`--method`) at the first r of `--rs`, writing
    /// DIR/log.jsonl and checkpoints in DIR/ckpt, instead of the comparison.
    #[arg(long, value_name = "DIR")]
    train_dir: Option<PathBuf>,
    /// With --train-dir: fo, ufo (q = --q), ufo-adaptive or exact.
    #[arg(long, default_value = "ufo-adaptive")]
    method: String,
    /// With --train-dir: checkpoint every this many steps.
    #[arg(long, default_value_t = 10)]
    checkpoint_every: u64,
    /// With --train-dir: continue from DIR/ckpt.
    #[arg(long)]
    resume: bool,
    /// With --train-dir: rayon threads of each process (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// With --train-dir: one rank of an MPI job (`mpiexec -n N`); needs a
    /// build with `--features mpi`.
    #[arg(long)]
    mpi: bool,
}

/// `--train-dir`: one estimator, a log and checkpoints, on one process or as a rank of an MPI job.
fn train(a: &Args, cfg: &Config, dir: &std::path::Path) -> Result<(), String> {
    let method = match a.method.as_str() {
        "fo" => Method::FirstOrder,
        "ufo" => Method::Ufo(a.q),
        "ufo-adaptive" => Method::UfoAdaptive,
        "exact" => Method::ExactRecompute,
        m => {
            return Err(format!(
                "--method {m:?}: expected fo, ufo, ufo-adaptive or exact"
            ))
        }
    };
    let comm = blo_examples::distributed::communicator(a.mpi)?;
    let run = maml_sine::TrainRun {
        dir: dir.to_path_buf(),
        r: a.rs[0],
        method,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        threads: a.threads,
    };
    let out = maml_sine::train_run(cfg, &run, &*comm)
        .map_err(|e| format!("rank {} of {}: {e}", comm.rank(), comm.size()))?;
    if comm.rank() == 0 {
        println!(
            "{}: r = {}, {} ranks, {} steps run, {:.3} ms per meta-step, last mean outer loss {:.6}; log {}, checkpoint {}",
            method.label(),
            run.r,
            comm.size(),
            out.steps_run,
            1e3 * out.seconds_per_step,
            out.last_loss,
            dir.join("log.jsonl").display(),
            dir.join("ckpt").display()
        );
    }
    Ok(())
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
    if let Some(dir) = &a.train_dir {
        return match train(&a, &cfg, dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("maml_sine: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
