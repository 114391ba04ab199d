//! This machine's measured f32 fused-multiply-add throughput (the chains of
//! `tape::kernels::fma_gflops`), AVX-512 (16 lanes) and AVX2 (8 lanes), on one
//! thread and on two threads at once. Prints GFLOP/s and the clock it implies
//! for 1 and for 2 FMA units per core: clock = GFLOP/s / (threads × units ×
//! lanes × 2). The runner's `fma_peak` (examples/bench.rs) uses the same
//! chains; this table says how many FMA units a core has and how fast it
//! really runs, against the `/proc/cpuinfo` clock.
//!
//! With `--watch SECS` it instead measures one thread's AVX2 chains again and
//! again for `SECS` seconds and prints, for each second, the median, lowest and
//! highest GFLOP/s of that second's samples (each ~0.4 ms: a thread started, then
//! 200 000 iterations of the chains; about 2 600 a second on Zen 5). The chains
//! touch no memory and share nothing between threads, so a second whose rate
//! falls is the core running slower, not our code: run one watcher per CPU
//! (`taskset -c 0 …` and `taskset -c 1 …` at once) to see whether a slow
//! stretch of a benchmark was the machine's (`docs/benchmarks.md`, "host").
//!
//! ```text
//! cargo run --release --example fma_peak
//! cargo run --release --example fma_peak -- --watch 60
//! ```

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => table(),
        [flag, secs] if flag == "--watch" => match secs.parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => watch(s),
            _ => usage(&format!(
                "--watch takes a positive number of seconds, not `{secs}`"
            )),
        },
        _ => usage(&format!("unexpected arguments {args:?}")),
    }
}

/// Says what is wrong and how to call this, and exits with status 2.
fn usage(why: &str) -> ! {
    eprintln!("fma_peak: {why}\nusage: fma_peak [--watch SECS]");
    std::process::exit(2)
}

/// The table: both families, one and two threads.
fn table() {
    let cpu_mhz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    println!("/proc/cpuinfo cpu MHz: {cpu_mhz:?}");
    println!(
        "{:<8} {:>7} {:>10} {:>16} {:>16}",
        "family", "threads", "GFLOP/s", "clock if 1 unit", "clock if 2 units"
    );
    for (name, lanes) in [("avx512", 16), ("avx2", 8)] {
        for threads in [1usize, 2] {
            let Some(gflops) = tape::kernels::fma_gflops(lanes, threads, 1_000_000, 200) else {
                println!("{name:<8} not supported here");
                break;
            };
            let per_cycle = (threads * lanes * 2) as f64;
            println!(
                "{name:<8} {threads:>7} {gflops:>10.1} {:>12.0} MHz {:>12.0} MHz",
                gflops * 1e3 / per_cycle,
                gflops * 1e3 / (2.0 * per_cycle),
            );
        }
    }
}

/// One thread's AVX2 chain rate, second by second, for `secs` seconds.
fn watch(secs: f64) {
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>10}",
        "second", "samples", "median", "lowest", "highest"
    );
    let t0 = Instant::now();
    let mut second = 0_u64;
    let mut rates = Vec::new();
    loop {
        let t = t0.elapsed().as_secs_f64();
        if t >= secs || t as u64 > second {
            rates.sort_by(f64::total_cmp);
            if let (Some(lo), Some(hi)) = (rates.first(), rates.last()) {
                let mid = rates[rates.len() / 2];
                println!(
                    "{second:>6} {:>8} {mid:>10.1} {lo:>10.1} {hi:>10.1}",
                    rates.len()
                );
            }
            if t >= secs {
                return;
            }
            rates.clear();
            second = t as u64;
        }
        let Some(g) = tape::kernels::fma_gflops(8, 1, 200_000, 1) else {
            usage("this CPU has no AVX2+FMA (or is not x86_64)")
        };
        rates.push(g);
    }
}
