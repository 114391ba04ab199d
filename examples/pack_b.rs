//! `B` packed or read in place (`crates/tape/src/kernels/packed.rs`, "B read
//! in place"), side by side in one process: for each shape, blocks of 10
//! calls of `tape::gemm::gemm` alternate between [`pack_b_always`] on and off
//! for SECS seconds (default 2), and the medians of the two sides are
//! printed with their difference. Both sides must give the same bits (it
//! exits with status 1 if not). The kernel family is the one in effect
//! (`TAPE_KERNELS` forces one); the threads are rayon's
//! (`RAYON_NUM_THREADS=1` for one).
//!
//! ```text
//! cargo run --release --example pack_b
//! TAPE_KERNELS=avx2 RAYON_NUM_THREADS=1 cargo run --release --example pack_b -- 3
//! cargo run --release --example pack_b -- 2 64 256 300        # one shape, f32
//! cargo run --release --example pack_b -- 2 64 256 300 f64
//! ```
//!
//! Shapes whose `B` the rule leaves packed show the two sides' noise only.

use blo_examples::gemm_operands::median;
use std::process::ExitCode;
use std::time::Instant;
use tape::gemm::{gemm, MatRef};
use tape::kernels::pack_b_always;
use tape::Real;

/// Times `[m, k]·[k, n]` (both row-major) for `secs` seconds, alternating the
/// two sides; prints one line. `false` if the two sides' bits differ.
fn shape<T: Real<Base = T>>(m: usize, k: usize, n: usize, secs: f64, note: &str) -> bool {
    let a: Vec<T> = (0..m * k)
        .map(|i| T::from_f64(((i % 17) as f64 - 8.0) * 0.01))
        .collect();
    let b: Vec<T> = (0..k * n)
        .map(|i| T::from_f64(((i % 13) as f64 - 6.0) * 0.1))
        .collect();
    let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
    let mut out = [vec![T::zero(); m * n], vec![T::zero(); m * n]];
    for (side, c) in out.iter_mut().enumerate() {
        pack_b_always(side == 0);
        gemm(T::one(), av, bv, T::zero(), c);
    }
    let bits = |c: &[T]| c.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
    let same = bits(&out[0]) == bits(&out[1]);
    let mut times = [vec![], vec![]];
    let t0 = Instant::now();
    let mut block = 0;
    while t0.elapsed().as_secs_f64() < secs || block < 4 {
        let side = block % 2;
        pack_b_always(side == 0);
        for _ in 0..10 {
            let t = Instant::now();
            gemm(T::one(), av, bv, T::zero(), &mut out[0]);
            times[side].push(t.elapsed().as_secs_f64());
        }
        block += 1;
    }
    pack_b_always(false);
    let [packed, in_place] = times.map(median);
    let gflops = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
    println!(
        "f{} [{m}, {k}]·[{k}, {n}]: packed {:8.1} µs ({:6.1} GFLOP/s), in place {:8.1} µs ({:6.1} GFLOP/s), {:+5.1} %{}{note}",
        8 * std::mem::size_of::<T>(),
        packed * 1e6,
        gflops(packed),
        in_place * 1e6,
        gflops(in_place),
        (in_place / packed - 1.0) * 100.0,
        if same { "" } else { "  BITS DIFFER" },
    );
    same
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pack_b [SECS [M K N [f64]]]";
    let secs: f64 = match args.first().map(|s| s.parse()) {
        None => 2.0,
        Some(Ok(s)) if s > 0.0 => s,
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    println!(
        "family {}, threads {}, {secs} s per shape",
        tape::kernels::active(),
        rayon::current_num_threads()
    );
    let mut ok = true;
    if args.len() > 1 {
        let dims: Result<Vec<usize>, _> = args[1..args.len().min(4)]
            .iter()
            .map(|s| s.parse())
            .collect();
        let f64 = args.get(4).map(String::as_str);
        match (dims.as_deref(), f64) {
            (Ok(&[m, k, n]), None) if m * k * n > 0 => ok &= shape::<f32>(m, k, n, secs, ""),
            (Ok(&[m, k, n]), Some("f64")) if m * k * n > 0 => ok &= shape::<f64>(m, k, n, secs, ""),
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        }
    } else {
        // (m, k, n, what it is)
        let f32_shapes = [
            (64, 784, 256, "  MLP x·W1"),
            (64, 256, 256, "  MLP h·W2"),
            (64, 512, 256, "  MLP HVP [h|ḣ]·[V2;W2] (as one B)"),
            (32, 256, 300, "  a smaller batch, a stride of 1200 bytes"),
            (128, 256, 300, "  the most rows read in place"),
            (64, 576, 980, "  Conv4 layer 3's forward GEMM, 5 images"),
            (
                64,
                576,
                3920,
                "  Conv4 layer 2, 5 images: B of 9 MB, in place in 4 chunks (2 threads) only",
            ),
            (
                100,
                512,
                512,
                "  the deep MLP: a stride of 2 KiB, packed by the rule",
            ),
            (256, 256, 300, "  256 rows: packed by the rule"),
        ];
        for (m, k, n, note) in f32_shapes {
            ok &= shape::<f32>(m, k, n, secs, note);
        }
        for (m, k, n, note) in [(64, 256, 200, ""), (32, 128, 128, "")] {
            ok &= shape::<f64>(m, k, n, secs, note);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
