//! The thread split of large f32 products (`crates/tape/src/kernels/large.rs`)
//! per shape: GFLOP/s of `tape::gemm::gemm` on the MLP benchmark's products
//! (784-256-256-10, batch 64) and their HVP tangent products (the tangent plane
//! of a dual product is one real product with `k` doubled), several rounds.
//! Run it once with one thread and once with two: the ratio of the two runs
//! per shape says whether cutting that shape in two pays.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example gemm_split
//! RAYON_NUM_THREADS=2 cargo run --release --example gemm_split
//! ```

use blo_examples::gemm_operands::{median, Operands};
use std::time::Instant;
use tape::gemm::gemm;

fn main() {
    // (name, m, k, n, A transposed, B transposed)
    let shapes = [
        ("x·W1", 64, 784, 256, false, false),
        ("h·W2", 64, 256, 256, false, false),
        ("dZ·W2ᵀ", 64, 256, 256, false, true),
        ("xᵀ·dZ1", 784, 64, 256, true, false),
        ("hᵀ·dZ2", 256, 64, 256, true, false),
        ("tangent h·W2", 64, 512, 256, false, false),
        ("tangent dZ·W2ᵀ", 64, 512, 256, false, true),
        ("tangent xᵀ·dZ1", 784, 128, 256, true, false),
        ("tangent hᵀ·dZ2", 256, 128, 256, true, false),
    ];
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "family {}, threads {}, {rounds} rounds",
        tape::kernels::active(),
        rayon::current_num_threads()
    );
    for (name, m, k, n, at, bt) in shapes {
        let ops = Operands::new(m, k, n, at, bt);
        let (av, bv) = ops.views();
        let mut c = vec![0.0f32; m * n];
        let reps = (40_000_000 / (m * k * n)).clamp(3, 50);
        let mut call = || {
            let t = Instant::now();
            for _ in 0..reps {
                gemm(1.0, av, bv, 0.0, &mut c);
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        call();
        let gf = |s: f64| ops.gflops(s);
        let per_round: Vec<f64> = (0..rounds)
            .map(|_| median((0..9).map(|_| call()).collect()))
            .collect();
        let list: Vec<String> = per_round.iter().map(|&s| format!("{:.0}", gf(s))).collect();
        let mid = median(per_round.clone());
        println!(
            "{name:16} [{m}, {k}]·[{k}, {n}] {:5.1} M MACs: {:7.1} µs {:6.1} GFLOP/s (rounds: {})",
            (m * k * n) as f64 / 1e6,
            mid * 1e6,
            gf(mid),
            list.join(" ")
        );
    }
}
