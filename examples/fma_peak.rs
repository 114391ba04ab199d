//! This machine's measured f32 fused-multiply-add throughput (the chains of
//! `tape::kernels::fma_gflops`), AVX-512 (16 lanes) and AVX2 (8 lanes), on one
//! thread and on two threads at once. Prints GFLOP/s and the clock it implies
//! for 1 and for 2 FMA units per core: clock = GFLOP/s / (threads × units ×
//! lanes × 2). The runner's `fma_peak` (examples/bench.rs) uses the same
//! chains; this table says how many FMA units a core has and how fast it
//! really runs, against the `/proc/cpuinfo` clock.
//!
//! ```text
//! cargo run --release --example fma_peak
//! ```

fn main() {
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
