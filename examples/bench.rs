//! The benchmark runner: one config per process, one JSON line on stdout.
//!
//! ```text
//! cargo run --release --example bench -- CONFIG
//! cargo run --release --example bench -- --list
//! ```
//!
//! Timing follows the JAX side (`bench/jax_workloads.py`): one
//! first call and 3 warm-up calls, then N timed calls with
//! N = clamp(5 s / t_warm, lo, 1000), lo = 20 (10 if a call takes > 0.5 s, 5 if
//! > 2 s); the median is reported. Everything but the JSON line goes to stderr.
//!
//! Extra fields: `allocs_per_call` / `alloc_bytes_per_call` (heap allocations
//! during the timed calls, divided by N; counted by a wrapping global
//! allocator), `tape_bytes` (values, saved data and adjoints in use on the tape
//! after a call), `steady_peak_rss_mib` (VmHWM over the timed calls only, the
//! figure the JAX side reports), `loss` (must be finite), `mean_ms` (mean of
//! the timed calls; for a mixture like UFO the median is not the mean, and the
//! cost model is about the mean), and for `maml_sine:rR:ufo` a `cost_model`
//! object (see `bench/maml.rs`): the first-order estimator alone and the exact
//! branch alone, timed afterwards in the same process under the same rule;
//! `kernel_family` (the small-product kernels in effect: `portable`, `avx2`
//! or `avx512`; `TAPE_KERNELS` forces one, so one machine measures each);
//! `fma_peak` (this machine's f32 FMA peak, measured, see [`fma_peak`]); for
//! `mlp_hvp*`, `hvp_over_grad` (the HVP's time over the gradient's of the
//! same network, `mlp_grad*`, from calls of the two made alternately in this
//! process, after the timed calls: `bench/mlp.rs`); for
//! `mlp_grad*`, `gemm_macs_per_call` and `fma_peak_share` (2·GEMM
//! multiply-adds per call / median time / peak: the share of the peak the
//! whole call reaches, counting only its GEMM work); for `maml_conv4:*`,
//! `conv4_gemms` (the four conv layers' forward GEMMs on the 80 query images,
//! `[64, 9·C]·[9·C, 80·H·W]`, timed alone after the timed calls, with their
//! GFLOP/s and `fma_peak_share`).
//!
//! `bench CONFIG --pack-b` adds `pack_b`: the same calls with the large
//! products' `B` always packed and with `B` read in place where the kernels'
//! rule allows, alternated in blocks of 10 calls after the timed ones
//! ([`pack_b_alternation`]); the timed calls themselves run the default.

use std::time::Instant;

use serde_json::{json, Map, Value};
use tape::testing::{process_allocations, CountingAllocator};

#[path = "bench/maml.rs"]
mod bench_maml;
#[path = "bench/mlp.rs"]
mod bench_mlp;

/// Counts heap allocations (and their bytes) over every thread, so the runner
/// can report what a steady-state call allocates.
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A value from `/proc/self/status` in MiB (`VmHWM` = peak RSS, which is what
/// `getrusage(RUSAGE_SELF).ru_maxrss` reports; `VmRSS` = current).
fn proc_status_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets VmHWM to the current RSS (Linux: write 5 to clear_refs), as the JAX
/// side does before its timed calls.
fn reset_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One benchmark workload.
pub(crate) trait Bench {
    /// Shapes and hyperparameters, for the JSON line.
    fn params(&self) -> Value;
    /// Runs the work once; returns the loss it computed.
    fn call(&mut self) -> f64;
    /// The GEMM multiply-adds of one call, where the runner reports its share
    /// of the FMA peak (`mlp_grad`).
    fn gemm_macs(&self) -> Option<usize> {
        None
    }
    /// Extra fields read after the timed calls (tape bytes, states held, ...).
    fn extra(&mut self) -> Map<String, Value> {
        Map::new()
    }
    /// Called once, just before the timed calls (to reset running totals).
    fn start_timing(&mut self) {}
    /// A cost-model check read after [`Bench::extra`], given the timed calls;
    /// it may time other work in the same process.
    fn cost_model(&mut self, _config: &str, _timed: &Timed) -> Option<Value> {
        None
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The timed calls of one workload under the runner's timing rule.
pub(crate) struct Timed {
    /// Wall time of the first (untimed) call, in ms.
    pub first_ms: f64,
    /// Wall times of the N timed calls, in ms, in call order.
    pub times: Vec<f64>,
    /// The loss of the last call.
    pub loss: f64,
    /// VmHWM before it was reset for the timed calls, and after them (MiB).
    peak_before_reset: f64,
    steady: Option<f64>,
    /// Heap allocations (count, bytes) over the timed calls.
    allocs: (usize, usize),
}

impl Timed {
    /// The arithmetic mean of the timed calls, in ms.
    pub fn mean_ms(&self) -> f64 {
        self.times.iter().sum::<f64>() / self.times.len() as f64
    }
}

/// The timing rule: one first call and 3 warm-up calls, then N timed calls
/// with N = clamp(5 s / t_warm, lo, 1000) (lo = 20; 10 if the last warm-up
/// took > 0.5 s, 5 if > 2 s). [`Bench::start_timing`] is called just before
/// the timed calls.
pub(crate) fn timed_calls(label: &str, w: &mut dyn Bench) -> Timed {
    let t0 = Instant::now();
    let first_loss = w.call();
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut t_warm = 0.0;
    for _ in 0..3 {
        let t0 = Instant::now();
        w.call();
        t_warm = t0.elapsed().as_secs_f64();
    }
    let lo = if t_warm > 2.0 {
        5
    } else if t_warm > 0.5 {
        10
    } else {
        20
    };
    let n = ((5.0 / t_warm) as usize).clamp(lo, 1000);
    eprintln!(
        "{label}: first call {first_ms:.2} ms, warm call {:.3} ms, timing {n} calls",
        t_warm * 1e3
    );
    let peak_before_reset = proc_status_mib("VmHWM:").unwrap_or(0.0);
    reset_hwm();
    w.start_timing();
    let before = process_allocations();
    let mut times = Vec::with_capacity(n);
    let mut loss = first_loss;
    for _ in 0..n {
        let t0 = Instant::now();
        loss = w.call();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let after = process_allocations();
    let steady = proc_status_mib("VmHWM:");
    Timed {
        first_ms,
        times,
        loss,
        peak_before_reset,
        steady,
        allocs: (after.count - before.count, after.bytes - before.bytes),
    }
}

/// The median of `x` (sorted in place; the mean of the middle two for an
/// even length).
pub(crate) fn median(x: &mut [f64]) -> f64 {
    x.sort_by(f64::total_cmp);
    let n = x.len();
    if n % 2 == 1 {
        x[n / 2]
    } else {
        0.5 * (x[n / 2 - 1] + x[n / 2])
    }
}

fn run(config: &str, w: &mut dyn Bench) -> Value {
    let timed = timed_calls(config, w);
    let Timed {
        first_ms,
        loss,
        peak_before_reset,
        steady,
        ..
    } = timed;
    let n = timed.times.len();
    let mut sorted = timed.times.clone();
    let median = median(&mut sorted);
    assert!(loss.is_finite(), "{config}: non-finite loss {loss}");
    let mut out = Map::new();
    out.insert("config".into(), json!(config));
    out.insert("params".into(), w.params());
    out.insert("median_ms".into(), json!(round4(median)));
    out.insert("mean_ms".into(), json!(round4(timed.mean_ms())));
    out.insert("min_ms".into(), json!(round4(sorted[0])));
    out.insert("max_ms".into(), json!(round4(sorted[n - 1])));
    out.insert("iterations".into(), json!(n));
    out.insert("first_call_ms".into(), json!(round4(first_ms)));
    // VmHWM is the kernel's peak RSS (what getrusage's ru_maxrss reports). It was
    // reset before the timed calls, so the whole-process peak is the larger of
    // the readings before the reset and after the timed calls.
    let steady = steady.unwrap_or(0.0);
    out.insert(
        "peak_rss_mib".into(),
        json!(round1(peak_before_reset.max(steady))),
    );
    out.insert("steady_peak_rss_mib".into(), json!(round1(steady)));
    out.insert("loss".into(), json!(loss));
    out.insert(
        "allocs_per_call".into(),
        json!(round4(timed.allocs.0 as f64 / n as f64)),
    );
    out.insert(
        "alloc_bytes_per_call".into(),
        json!(round4(timed.allocs.1 as f64 / n as f64)),
    );
    out.insert(
        "threads".into(),
        json!(std::env::var("RAYON_NUM_THREADS").ok()),
    );
    // The small-product kernel family in effect (`TAPE_KERNELS` forces one).
    out.insert(
        "kernel_family".into(),
        json!(tape::kernels::active().name()),
    );
    let peak = fma_peak();
    let peak_gflops = peak["gflops"].as_f64().unwrap_or(f64::NAN);
    out.insert("fma_peak".into(), peak);
    if let Some(macs) = w.gemm_macs() {
        out.insert("gemm_macs_per_call".into(), json!(macs));
        let gflops = 2.0 * macs as f64 / (median * 1e-3) / 1e9;
        out.insert("gemm_gflops".into(), json!(round4(gflops)));
        out.insert("fma_peak_share".into(), json!(round4(gflops / peak_gflops)));
    }
    if config.starts_with("maml_conv4:") {
        out.insert("conv4_gemms".into(), conv4_gemms(peak_gflops));
    }
    for (k, v) in w.extra() {
        out.insert(k, v);
    }
    // Last: it runs more timed calls (of other estimators) in this process.
    if let Some(cm) = w.cost_model(config, &timed) {
        out.insert("cost_model".into(), cm);
    }
    Value::Object(out)
}

/// `--pack-b`: the large products' `B` packed or read in place where the
/// rule allows (`tape::kernels::pack_b_always`; `packed.rs`, "B read in
/// place"), measured after the timed calls by `calls` more calls per side in
/// blocks of 10 that alternate between the two, so that both sides see the
/// same state of the machine; the two medians, in ms, and their ratio.
fn pack_b_alternation(w: &mut dyn Bench, calls: usize) -> Value {
    let mut times = [Vec::new(), Vec::new()];
    for block in 0..2 * calls.div_ceil(10) {
        let side = block % 2;
        tape::kernels::pack_b_always(side == 0);
        for _ in 0..10 {
            let t0 = Instant::now();
            w.call();
            times[side].push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    tape::kernels::pack_b_always(false);
    let [packed, in_place] = times.map(|mut t| median(&mut t));
    json!({"packed_ms": round4(packed), "in_place_ms": round4(in_place),
        "in_place_over_packed": round4(in_place / packed), "calls_each": 10 * calls.div_ceil(10)})
}

/// This machine's f32 fused-multiply-add peak for the kernel family in
/// effect, **measured**: the best GFLOP/s of independent FMA chains on one
/// thread (`tape::kernels::fma_gflops`, as `examples/fma_peak.rs` prints them) at the
/// family's width (AVX-512 16 lanes, AVX2 8), 200 runs of ~1.5 ms, times the
/// CPUs this process may run on (`available_parallelism`: it follows
/// `taskset`). One thread, not all at once: on a busy machine two threads
/// seldom hold both cores for a whole run (a two-thread measurement under
/// load 11 gave one core's figure), one thread often holds one; idle, two
/// threads at once ran 1.93× one (`fma_peak`: the cores share no FMA unit).
/// Beside it, the nominal figure: cores × 2 FMA units × lanes × 2 flop × the
/// first `cpu MHz` of `/proc/cpuinfo` (the `portable` family, SSE 4 lanes, has
/// only this one). The two differ by the real clock: this VM reports 2600 MHz
/// and its cores run the chains at ~3.8 GHz (AVX-512) and ~4.1 GHz (AVX2), so
/// the nominal peak understated the real one by a third.
fn fma_peak() -> Value {
    use tape::kernels::Family;
    let (units, lanes) = match tape::kernels::active() {
        Family::Portable => (2, 4),
        Family::Avx2 => (2, 8),
        Family::Avx512 => (2, 16),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mhz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let nominal = mhz.map(|mhz| (cores * units * lanes * 2) as f64 * mhz / 1e3);
    let measured = if lanes >= 8 {
        tape::kernels::fma_gflops(lanes, 1, 1_000_000, 200).map(|g| g * cores as f64)
    } else {
        None
    };
    let (gflops, source) = match measured {
        Some(g) => (
            Some(g),
            "measured: FMA chains on one core (tape::kernels::fma_gflops) × cores",
        ),
        None => (nominal, "nominal: /proc/cpuinfo cpu MHz, 2 FMA units"),
    };
    json!({"gflops": gflops.map(round4), "source": source, "cores": cores,
        "f32_lanes": lanes, "nominal_gflops": nominal.map(round4),
        "nominal_fma_units": units, "clock_mhz": mhz,
        "measured_clock_mhz_if_2_units": measured
            .map(|g| round1(g * 1e3 / (cores * units * lanes * 2) as f64))})
}

/// The forward GEMMs of the Conv4 benchmark's four conv layers on its 80 query
/// images (28×28×1 input, 64 filters, 3×3, same padding, 2×2 pools: 28, 14, 7
/// and 3 pixels a side), as one `[64, 9·C]·[9·C, 80·H·W]` product per layer
/// (im2col layout), timed alone (median of 7 after a warm-up): their GFLOP/s
/// and the share of `peak_gflops`.
fn conv4_gemms(peak_gflops: f64) -> Value {
    use tape::gemm::{gemm, MatRef};
    let images = 80;
    let layers = [(1, 28), (64, 14), (64, 7), (64, 3)];
    let mut macs = 0usize;
    let mut bufs = Vec::new();
    for &(c, side) in &layers {
        let (k, n) = (9 * c, images * side * side);
        let w: Vec<f32> = (0..64 * k)
            .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
            .collect();
        let x: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        macs += 64 * k * n;
        bufs.push((w, x, vec![0.0f32; 64 * n], k, n));
    }
    let mut once = || {
        let t = Instant::now();
        for (w, x, out, k, n) in &mut bufs {
            gemm(
                1.0,
                MatRef::row_major(w, 64, *k),
                MatRef::row_major(x, *k, *n),
                0.0,
                out,
            );
        }
        t.elapsed().as_secs_f64()
    };
    once();
    let mut times: Vec<f64> = (0..7).map(|_| once()).collect();
    times.sort_by(f64::total_cmp);
    let gflops = 2.0 * macs as f64 / times[3] / 1e9;
    json!({"macs": macs, "median_ms": round4(times[3] * 1e3), "gflops": round4(gflops),
        "fma_peak_share": round4(gflops / peak_gflops)})
}

fn configs() -> Vec<String> {
    let models = bench_mlp::Net::SUFFIXES;
    let mut c: Vec<String> = models.iter().map(|m| format!("mlp_grad{m}")).collect();
    c.extend(["mlp_grad_unfused", "mlp_grad_tanh_unfused"].map(String::from));
    c.extend(models.iter().map(|m| format!("mlp_hvp{m}")));
    c.push("mlp_hvp_full".to_string());
    c.extend(bench_maml::configs());
    c
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(config) = args.first() else {
        eprintln!("usage: bench CONFIG   (bench --list names them)");
        std::process::exit(2);
    };
    if config.starts_with("mlp_hvp") && args.iter().any(|a| a == "--check") {
        let rel = bench_mlp::check_hvp(config);
        assert!(
            rel < 1e-4,
            "{config}: H·v disagrees with the gradient difference"
        );
        return;
    }
    if config == "--list" {
        for c in configs() {
            println!("{c}");
        }
        return;
    }
    let rss_at_start = proc_status_mib("VmRSS:");
    let mut workload: Box<dyn Bench> = match config.as_str() {
        c if bench_mlp::MlpGrad::layers(c).is_some() => Box::new(bench_mlp::MlpGrad::named(c)),
        c if c.starts_with("mlp_hvp") => match bench_mlp::MlpHvp::named(c) {
            Some(w) => Box::new(w),
            None => {
                eprintln!("unknown config {c:?}; `bench --list` names them");
                std::process::exit(2);
            }
        },
        c => match bench_maml::workload(c) {
            Some(w) => w,
            None => {
                eprintln!("unknown config {c:?}; `bench --list` names them");
                std::process::exit(2);
            }
        },
    };
    // `--calls N`: run N calls untimed and print nothing (for profilers).
    if let Some(pos) = args.iter().position(|a| a == "--calls") {
        let n: usize = args.get(pos + 1).and_then(|s| s.parse().ok()).unwrap_or(10);
        for _ in 0..n {
            workload.call();
        }
        return;
    }
    let mut result = run(config, workload.as_mut());
    if let Value::Object(m) = &mut result {
        m.insert("rss_at_start_mib".into(), json!(rss_at_start.map(round1)));
        if args.iter().any(|a| a == "--pack-b") {
            let calls = m["iterations"].as_u64().unwrap_or(20) as usize;
            m.insert(
                "pack_b".into(),
                pack_b_alternation(workload.as_mut(), calls),
            );
        }
    }
    println!("{result}");
}
