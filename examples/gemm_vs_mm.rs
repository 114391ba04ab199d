//! Large f32 products by the tape's packed kernels (`tape::gemm::gemm`, the
//! family `TAPE_KERNELS` selects) against `matrixmultiply::sgemm`, side by
//! side in one process, on the shape classes of the benchmarks: the MLP's
//! products (m = 64 and their transposes), Conv4's forward GEMMs and its
//! weight gradients (long k), and a square one. One thread each (the calling
//! thread; products below 2²⁵ multiply-adds are not cut). Prints the median
//! of 15 timed calls per shape and side, and their ratio.
//!
//! ```text
//! cargo run --release --example gemm_vs_mm
//! TAPE_KERNELS=avx2 cargo run --release --example gemm_vs_mm
//! ```

use blo_examples::gemm_operands::{median, Operands};
use std::time::Instant;
use tape::gemm::gemm;

fn main() {
    // (name, m, k, n, A transposed, B transposed)
    let shapes = [
        ("mlp x·W1", 64, 784, 256, false, false),
        ("mlp h·W2", 64, 256, 256, false, false),
        ("mlp h·W3 (n=10)", 64, 256, 10, false, false),
        ("mlp [h|ḣ]·[V3;W3] (n=10)", 64, 512, 10, false, false),
        ("mlp dZ3·W3ᵀ (k=10)", 64, 10, 256, false, true),
        ("mlp [dZ3|d]·[..]ᵀ (k=20)", 64, 20, 256, false, true),
        ("mlp hᵀ·dZ3 (n=10)", 256, 64, 10, true, false),
        ("mlp [h|ḣ]ᵀ·dZ3 (n=10)", 256, 128, 10, true, false),
        ("mlp dZ·W2ᵀ", 64, 256, 256, false, true),
        ("mlp xᵀ·dZ1", 784, 64, 256, true, false),
        ("mlp hᵀ·dZ2", 256, 64, 256, true, false),
        ("conv4 L2 fwd", 64, 576, 15680, false, false),
        ("conv4 L2 dW (k long)", 64, 15680, 576, false, true),
        ("square 512", 512, 512, 512, false, false),
    ];
    println!("family: {}", tape::kernels::active());
    // `GEMM_SHAPE=name-prefix` runs only the shapes whose name starts with it,
    // `GEMM_SIDE=ours|mm` only one side (for `perf stat` cycle counts).
    let only = std::env::var("GEMM_SHAPE").unwrap_or_default();
    let side = std::env::var("GEMM_SIDE").unwrap_or_default();
    for (name, m, k, n, at, bt) in shapes {
        if !name.starts_with(only.as_str()) {
            continue;
        }
        let ops = Operands::new(m, k, n, at, bt);
        let (av, bv) = ops.views();
        let (a, b) = (&ops.a, &ops.b);
        let mut c = vec![0.0f32; m * n];
        let reps = (20_000_000 / (m * k * n)).clamp(1, 50);
        let mut ours = || {
            let t = Instant::now();
            for _ in 0..reps {
                gemm(1.0, av, bv, 0.0, &mut c);
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let runs = |side_name: &str| {
            if side.is_empty() || side == side_name {
                15
            } else {
                0
            }
        };
        ours();
        let t_ours: Vec<f64> = (0..runs("ours")).map(|_| ours()).collect();
        let mut d = vec![0.0f32; m * n];
        let mut theirs = || {
            let t = Instant::now();
            for _ in 0..reps {
                // SAFETY: the views above are in bounds for these strides; d is m × n.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        av.rs() as isize,
                        av.cs() as isize,
                        b.as_ptr(),
                        bv.rs() as isize,
                        bv.cs() as isize,
                        0.0,
                        d.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        theirs();
        let t_mm: Vec<f64> = (0..runs("mm")).map(|_| theirs()).collect();
        let (o, t) = (median(t_ours), median(t_mm));
        let gf = |s: f64| ops.gflops(s);
        println!(
            "{name:24} [{m}, {k}]·[{k}, {n}]: ours {:8.1} µs ({:5.1} GFLOP/s), matrixmultiply {:8.1} µs ({:5.1} GFLOP/s), ours/mm {:.2}",
            o * 1e6,
            gf(o),
            t * 1e6,
            gf(t),
            o / t
        );
    }
}
