//! The main demo: on the paper's counterexample, SGD with the first-order
//! hypergradient (FO-BLO) stalls at a point that is not stationary, while
//! UFO-BLO (q = 0.1 and adaptive q) and the exact hypergradient drive |F′(θ)|
//! to zero.
//!
//! ```text
//! cargo run --release --example counterexample
//! cargo run --release --example counterexample -- --iterations 2000 --seeds 3 --json
//! cargo run --release --example counterexample -- --telescopes   # and the randomized telescopes
//! ```
//!
//! The logic lives in `blo_examples::counterexample` (so the tests run it).

use std::path::PathBuf;
use std::process::ExitCode;

use blo::TelescopeKind;
use blo_examples::counterexample::{self, Config, Method};
use clap::Parser;

/// SGD on the UFO-BLO paper's counterexample with FO-BLO, UFO-BLO and exact hypergradients.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// SGD iterations per run (the paper uses 10,000).
    #[arg(long, default_value_t = 10_000)]
    iterations: usize,
    /// Number of seeds (0, 1, …, N−1).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Fixed q values for UFO-BLO (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0.1")]
    q: Vec<f64>,
    /// Where to write the SVG figure of |F′(θ_k)| against k (and, with
    /// `-compute` before the extension, against gradient-equivalents spent).
    #[arg(long, default_value = "target/figures/counterexample.svg")]
    figure: PathBuf,
    /// Do not write the figure.
    #[arg(long)]
    no_figure: bool,
    /// Print one JSON object per run (estimator, q, seed, final θ, final |F′|) instead of the table.
    #[arg(long)]
    json: bool,
    /// Also run the randomized telescopes (single sample and roulette over
    /// every depth, p(k) ∝ 0.9^(k−1) and adaptive; docs/math.md §10).
    #[arg(long)]
    telescopes: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut methods = vec![Method::FirstOrder];
    methods.extend(args.q.iter().map(|&q| Method::Ufo(q)));
    methods.push(Method::UfoAdaptive);
    methods.push(Method::Exact);
    if args.telescopes {
        for kind in [TelescopeKind::SingleSample, TelescopeKind::RussianRoulette] {
            for adaptive in [false, true] {
                methods.push(Method::Telescope { kind, adaptive });
            }
        }
    }
    let cfg = Config {
        iterations: args.iterations,
        seeds: (0..args.seeds).collect(),
        methods,
        figure: (!args.no_figure).then(|| args.figure.clone()),
        record_every: (args.iterations / 1000).max(1),
        progress: !args.json,
    };
    let report = match counterexample::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("counterexample: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        blo_examples::util::print_json_lines(&report.runs);
    } else {
        print!("{}", counterexample::table(&report));
    }
    if let (Some(p), Some(c)) = (&report.figure, &report.compute_figure) {
        let line = format!(
            "figures: {} (against iterations), {} (against compute)",
            p.display(),
            c.display()
        );
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}
