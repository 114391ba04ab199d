//! Time of the collective a distributed meta-step makes: an all-gather of
//! each rank's per-task estimates (B/N tasks × |θ| floats + stats).
//!
//! ```text
//! cargo build --release --features mpi --example comm_bench
//! mpiexec -n 2 target/release/examples/comm_bench --mpi --bytes 0,8000,67000,1000000
//! ```
//!
//! Prints one JSON object per message size: the median and mean seconds of
//! one all-gather over `--reps` repetitions (after `--warmup`).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// All-gather latency and bandwidth between the ranks.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Bytes each rank contributes (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "0,8000,64000,1000000")]
    bytes: Vec<usize>,
    /// Timed repetitions per size.
    #[arg(long, default_value_t = 500)]
    reps: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Run as a rank of an MPI job (build with `--features mpi`).
    #[arg(long)]
    mpi: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let comm = match blo_examples::distributed::communicator(a.mpi) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("comm_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    for &n in &a.bytes {
        let mine = vec![comm.rank() as u8; n];
        let mut times = Vec::with_capacity(a.reps);
        for i in 0..a.warmup + a.reps {
            let t = Instant::now();
            if let Err(e) = comm.all_gather(&mine) {
                eprintln!("comm_bench: {e}");
                return ExitCode::FAILURE;
            }
            if i >= a.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        if comm.rank() == 0 {
            let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
            println!(
                "{{\"ranks\":{},\"bytes_per_rank\":{n},\"median_s\":{:e},\"mean_s\":{mean:e}}}",
                comm.size(),
                times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
            );
        }
    }
    ExitCode::SUCCESS
}
