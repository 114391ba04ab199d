//! Time of the collective a distributed meta-step makes: an all-gather of
//! each rank's per-task estimates (B/N tasks × |θ| floats + stats).
//!
//! ```text
//! cargo build --release --features mpi --example comm_bench
//! mpiexec -n 2 target/release/examples/comm_bench --mpi --bytes 0,8000,67000,1000000
//! ```
//!
//! Prints one JSON object per message size: the median, mean and minimum
//! seconds of one all-gather over `--reps` repetitions (after `--warmup`; the
//! minimum is the figure least disturbed by a loaded machine).
//!
//! With `--work-us W` each rank first spins for W µs of wall-clock time, as a
//! meta-step computes its block before the exchange, and the time reported is
//! the iteration's less W: the all-gather *including the wait for the later
//! rank* — on a loaded machine a rank that computed is often descheduled when
//! its peer arrives, which a back-to-back all-gather does not show.

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
    /// Wall-clock microseconds each rank spins before each all-gather (comma
    /// separated; each value is a run of its own).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    work_us: Vec<u64>,
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
    for &work_us in &a.work_us {
        let work = std::time::Duration::from_micros(work_us);
        for &n in &a.bytes {
            let mine = vec![comm.rank() as u8; n];
            let mut times = Vec::with_capacity(a.reps);
            for i in 0..a.warmup + a.reps {
                let t = Instant::now();
                while t.elapsed() < work {
                    std::hint::spin_loop();
                }
                if let Err(e) = comm.all_gather(&mine) {
                    eprintln!("comm_bench: {e}");
                    return ExitCode::FAILURE;
                }
                if i >= a.warmup {
                    times.push((t.elapsed() - work).as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            if comm.rank() == 0 {
                let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
                println!(
                    "{{\"ranks\":{},\"bytes_per_rank\":{n},\"work_us\":{work_us},\"median_s\":{:e},\"mean_s\":{mean:e},\"min_s\":{:e}}}",
                    comm.size(),
                    times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
                    times.first().copied().unwrap_or(f64::NAN)
                );
            }
        }
    }
    ExitCode::SUCCESS
}
