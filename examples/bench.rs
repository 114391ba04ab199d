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
//! or `avx512`; `TAPE_KERNELS` forces one, so one machine measures each).

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
    sorted.sort_by(f64::total_cmp);
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    };
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
        json!(std::env::var("MATMUL_NUM_THREADS").ok()),
    );
    // The small-product kernel family in effect (`TAPE_KERNELS` forces one).
    out.insert(
        "kernel_family".into(),
        json!(tape::kernels::active().name()),
    );
    for (k, v) in w.extra() {
        out.insert(k, v);
    }
    // Last: it runs more timed calls (of other estimators) in this process.
    if let Some(cm) = w.cost_model(config, &timed) {
        out.insert("cost_model".into(), cm);
    }
    Value::Object(out)
}

fn configs() -> Vec<String> {
    let mut c = vec![
        "mlp_grad".to_string(),
        "mlp_hvp".to_string(),
        "mlp_hvp_full".to_string(),
    ];
    c.extend(bench_maml::configs());
    c
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(config) = args.first() else {
        eprintln!("usage: bench CONFIG   (bench --list names them)");
        std::process::exit(2);
    };
    if config == "mlp_hvp" && args.iter().any(|a| a == "--check") {
        let rel = bench_mlp::check_hvp();
        assert!(
            rel < 1e-4,
            "mlp_hvp: H·v disagrees with the gradient difference"
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
        "mlp_grad" => Box::new(bench_mlp::MlpGrad::new()),
        "mlp_hvp" => Box::new(bench_mlp::MlpHvp::new(false)),
        "mlp_hvp_full" => Box::new(bench_mlp::MlpHvp::new(true)),
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
    }
    println!("{result}");
}
