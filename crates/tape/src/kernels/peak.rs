//! This machine's measured f32 fused-multiply-add throughput: independent FMA
//! chains in registers (no memory traffic) at the AVX-512 (16 lanes) or AVX2
//! (8 lanes) width, on one or more threads at once ([`fma_gflops`]). Used by
//! the benchmark runner (`examples/bench.rs`, its `fma_peak` and the share of
//! it a workload reaches) and `examples/fma_peak.rs`, which prints the table.
//!
//! Each thread runs 16 (AVX-512) or 12 (AVX2: 16 registers) accumulators,
//! `acc ← acc·a + b`, for a fixed number of iterations: more than the 8
//! independent chains that cover a 4-cycle FMA latency on 2 units, so the loop
//! is throughput-bound. The best of many short runs is kept: the other
//! processes' load only slows a run down, and a short run is less likely to be
//! descheduled.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// Independent FMA chains per thread for AVX-512 (32 registers).
    pub const CHAINS: usize = 16;
    /// For AVX2: 12, so the chains, `a` and `b` fit in its 16 registers.
    pub const CHAINS256: usize = 12;

    /// `iters` × `CHAINS` 16-lane FMAs; returns a lane sum so the work is live.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains512(iters: usize) -> f32 {
        let a = _mm512_set1_ps(black_box(0.999_999));
        let b = _mm512_set1_ps(black_box(1e-6));
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS];
        for (i, r) in acc.iter_mut().enumerate() {
            *r = _mm512_add_ps(*r, _mm512_set1_ps(black_box(i as f32)));
        }
        for _ in 0..black_box(iters) {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s)
    }

    /// `iters` × `CHAINS256` 8-lane FMAs; returns a lane sum so the work is live.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains256(iters: usize) -> f32 {
        let a = _mm256_set1_ps(black_box(0.999_999));
        let b = _mm256_set1_ps(black_box(1e-6));
        let mut acc = [_mm256_set1_ps(black_box(1.0)); CHAINS256];
        for (i, r) in acc.iter_mut().enumerate() {
            *r = _mm256_add_ps(*r, _mm256_set1_ps(black_box(i as f32)));
        }
        for _ in 0..black_box(iters) {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for r in acc {
            s = _mm256_add_ps(s, r);
        }
        let mut out = [0.0f32; 8];
        // SAFETY: `out` holds 8 f32, what an unaligned 256-bit store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

/// Best GFLOP/s of `threads` threads each running the FMA chains at `lanes`
/// = 16 (AVX-512) or 8 (AVX2) f32 lanes, over `runs` runs of `iters`
/// iterations: threads · iters · chains · lanes · 2 flop over the fastest
/// run's time. `None` if the CPU lacks the instructions (or is not x86_64).
///
/// ```
/// // A short measurement; on a CPU with AVX2+FMA it is a positive rate.
/// match tape::kernels::fma_gflops(8, 1, 1_000, 3) {
///     Some(g) => assert!(g > 0.0),
///     None => {} // no AVX2+FMA here
/// }
/// ```
///
/// # Panics
/// If `lanes` is neither 16 nor 8, or `threads` or `runs` is 0.
#[track_caller]
pub fn fma_gflops(lanes: usize, threads: usize, iters: usize, runs: usize) -> Option<f64> {
    assert!(
        (lanes == 16 || lanes == 8) && threads > 0 && runs > 0,
        "fma_gflops: lanes {lanes} (16 or 8), threads {threads} and runs {runs} (> 0)"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::time::Instant;
        let ok = if lanes == 16 {
            is_x86_feature_detected!("avx512f")
        } else {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        };
        if !ok {
            return None;
        }
        let run = move || -> f32 {
            // SAFETY: the instructions were detected just above.
            unsafe {
                if lanes == 16 {
                    x86::chains512(iters)
                } else {
                    x86::chains256(iters)
                }
            }
        };
        let mut best = f64::INFINITY;
        let mut sink = 0.0f32;
        for _ in 0..runs {
            let t = Instant::now();
            let sums: Vec<f32> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            best = best.min(t.elapsed().as_secs_f64());
            sink += sums.iter().sum::<f32>();
        }
        std::hint::black_box(sink);
        let chains = if lanes == 16 {
            x86::CHAINS
        } else {
            x86::CHAINS256
        };
        Some((threads * iters * chains * lanes * 2) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (lanes, threads, iters, runs);
        None
    }
}
