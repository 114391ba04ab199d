//! The single-loop bilevel solvers (SOBA, AmIGO, F2SA, BOME) beside the
//! unrolled hypergradient estimators (exact, first order, UFO-BLO, implicit)
//! on one benchmark problem of benchopt's `benchmark_bilevel`, at equal
//! compute: every method runs until it has spent the same number of
//! gradient-equivalents (docs/math.md §8: a gradient counts 1, a
//! forward-over-reverse HVP 2). Prints the value function h(θ) = f(θ, φ*(θ))
//! and ‖∇h(θ)‖ against time and gradient-equivalents, and plots them (SVG).
//!
//! ```text
//! cargo run --release --example bilevel_bench
//! cargo run --release --example bilevel_bench -- --problem logreg --budget 20000
//! cargo run --release --example bilevel_bench -- --problem cleaning --corruption 0.7
//! ```
//!
//! h and ∇h are exact for the quadratic problem (closed form) and computed by
//! Newton on the inner problem plus one implicit linear solve for the others
//! (`blo::problems::reference`); the evaluations are not timed or counted.
//!
//! With `--trace soba|f2sa`, it instead runs one solver on the quadratic or
//! ℓ2-selection problem, writes the problem's data, the hyperparameters and
//! the θ trajectory to `--out` (JSON), and times the outer steps: the input of
//! `bench/jax_solvers.py` (see `scripts/bench-solvers.sh`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use blo::problems::{reference, HyperCleaning, L2Logreg, Quadratic};
use blo::solvers::{
    norm, Amigo, Bome, F2sa, Penalty, Soba, Solver, SolverState, SolverWorkspace, StepSize,
};
use blo::{BloError, Estimator, Exact, FirstOrder, Implicit, InnerLoop, Policy, Problem, Ufo};
use blo_examples::util::{line_plot_svg, PlotSpec, Series};
use clap::{Parser, ValueEnum};
use rand::SeedableRng;
use tape::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Which {
    /// Quadratic bilevel problem with a closed-form solution.
    Quadratic,
    /// ℓ2-regularisation selection (one strength per feature) for logistic regression.
    Logreg,
    /// Data hyper-cleaning (per-sample weights) with corrupted labels.
    Cleaning,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Traced {
    Soba,
    F2sa,
}

/// Single-loop bilevel solvers beside the unrolled estimators, at equal compute.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// The benchmark problem.
    #[arg(long, value_enum, default_value = "quadratic")]
    problem: Which,
    /// Compute budget per method, in gradient-equivalents.
    #[arg(long, default_value_t = 20000.0)]
    budget: f64,
    /// Inner steps r of the unrolled estimators (also the number of minibatch indices).
    #[arg(long, default_value_t = 50)]
    inner_steps: usize,
    /// Minibatches of the training set (logreg, cleaning); 1 = full batch.
    #[arg(long, default_value_t = 1)]
    batches: usize,
    /// Label corruption probability p (cleaning).
    #[arg(long, default_value_t = 0.5)]
    corruption: f64,
    /// Seed of the generated data (and UFO's coins).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the figures go (`<problem>_objective.svg`, `<problem>_gradnorm.svg`, `<problem>_time.svg`).
    #[arg(long, default_value = "target/figures")]
    figures: PathBuf,
    /// One JSON object per method (its last point) instead of the table.
    #[arg(long)]
    json: bool,
    /// Trace one solver for the JAX comparison instead (quadratic or logreg).
    #[arg(long, value_enum)]
    trace: Option<Traced>,
    /// Outer steps of the trace.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Timed repetitions of the trace (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// The trace's JSON file.
    #[arg(long, default_value = "target/bench-solvers/trace.json")]
    out: PathBuf,
}

/// A benchmark problem with its reference value function.
trait Bench: Problem<f64, Task = ()> {
    fn start(&self) -> Vec<Tensor<f64>>;
    /// (h(θ), ‖∇h(θ)‖); `warm` is the previous φ*, updated.
    fn evaluate(
        &self,
        theta: &[Tensor<f64>],
        warm: &mut Option<Vec<Tensor<f64>>>,
    ) -> Result<(f64, f64), BloError>;
    /// The solvers' and estimators' step sizes: (inner ρ, outer γ).
    fn steps(&self) -> (f64, f64);
}

impl Bench for Quadratic {
    fn start(&self) -> Vec<Tensor<f64>> {
        self.theta0()
    }
    fn evaluate(
        &self,
        theta: &[Tensor<f64>],
        _: &mut Option<Vec<Tensor<f64>>>,
    ) -> Result<(f64, f64), BloError> {
        let t = theta[0].data();
        let g = self.hypergradient(t);
        Ok((self.value(t), g.iter().map(|x| x * x).sum::<f64>().sqrt()))
    }
    fn steps(&self) -> (f64, f64) {
        (0.3, 0.1)
    }
}

fn evaluate_by_reference<P: Problem<f64, Task = ()>>(
    p: &P,
    theta: &[Tensor<f64>],
    warm: &mut Option<Vec<Tensor<f64>>>,
    phi0: Vec<Tensor<f64>>,
) -> Result<(f64, f64), BloError> {
    let start = warm.clone().unwrap_or(phi0);
    let r = reference(p, theta, &start, 1e-9)?;
    *warm = Some(r.phi);
    Ok((r.value, norm(&r.grad)))
}

impl Bench for L2Logreg {
    fn start(&self) -> Vec<Tensor<f64>> {
        self.theta0()
    }
    fn evaluate(
        &self,
        theta: &[Tensor<f64>],
        warm: &mut Option<Vec<Tensor<f64>>>,
    ) -> Result<(f64, f64), BloError> {
        let d = theta[0].numel();
        evaluate_by_reference(self, theta, warm, vec![Tensor::zeros(&[d][..])])
    }
    fn steps(&self) -> (f64, f64) {
        (0.1, 2.0)
    }
}

impl Bench for HyperCleaning {
    fn start(&self) -> Vec<Tensor<f64>> {
        self.theta0()
    }
    fn evaluate(
        &self,
        theta: &[Tensor<f64>],
        warm: &mut Option<Vec<Tensor<f64>>>,
    ) -> Result<(f64, f64), BloError> {
        let shape = self.phi_shape();
        evaluate_by_reference(self, theta, warm, vec![Tensor::zeros(&shape[..])])
    }
    fn steps(&self) -> (f64, f64) {
        (0.5, 50.0)
    }
}

/// One point of a run: after `cost` gradient-equivalents and `time` seconds of steps.
#[derive(Clone, Copy, Debug)]
struct Point {
    cost: f64,
    time: f64,
    h: f64,
    grad_norm: f64,
}

struct Run {
    name: String,
    points: Vec<Point>,
    error: Option<String>,
}

/// Evaluation points: about 40 per run, evenly in cost.
fn due(cost: f64, next: &mut f64, budget: f64) -> bool {
    if cost >= *next {
        *next += budget / 40.0;
        true
    } else {
        false
    }
}

fn run_solver<S: Solver<f64>, P: Bench>(name: &str, s: &S, p: &P, budget: f64) -> Run {
    let mut out = Run {
        name: name.to_string(),
        points: Vec::new(),
        error: None,
    };
    let mut ws = SolverWorkspace::new();
    let mut warm = None;
    let mut record =
        |st: &SolverState<f64>, time: f64, warm: &mut Option<_>| -> Result<(), BloError> {
            let (h, grad_norm) = p.evaluate(&st.theta, warm)?;
            out.points.push(Point {
                cost: st.work.cost(),
                time,
                h,
                grad_norm,
            });
            Ok(())
        };
    let result = (|| {
        let mut st = s.init(&mut ws, p, &(), p.start())?;
        record(&st, 0.0, &mut warm)?;
        let (mut time, mut next) = (0.0, budget / 40.0);
        while st.work.cost() < budget {
            let t0 = Instant::now();
            s.step(&mut ws, p, &(), &mut st)?;
            time += t0.elapsed().as_secs_f64();
            if due(st.work.cost(), &mut next, budget) || st.work.cost() >= budget {
                record(&st, time, &mut warm)?;
            }
        }
        Ok::<(), BloError>(())
    })();
    out.error = result.err().map(|e| e.to_string());
    out
}

fn run_estimator<P: Bench, E: Estimator<f64, P>>(
    name: &str,
    e: &E,
    p: &P,
    budget: f64,
    seed: u64,
) -> Run {
    let mut out = Run {
        name: name.to_string(),
        points: Vec::new(),
        error: None,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (_, gamma) = p.steps();
    let mut warm = None;
    let result = (|| {
        let mut theta = p.start();
        let (h, grad_norm) = p.evaluate(&theta, &mut warm)?;
        out.points.push(Point {
            cost: 0.0,
            time: 0.0,
            h,
            grad_norm,
        });
        let (mut cost, mut time, mut next) = (0.0, 0.0, budget / 40.0);
        while cost < budget {
            let t0 = Instant::now();
            let est = e.estimate(p, &(), &theta, &mut rng)?;
            for (t, g) in theta.iter_mut().zip(&est.grad) {
                for (a, &b) in t.data_mut().iter_mut().zip(g.data()) {
                    *a -= gamma * b;
                }
            }
            time += t0.elapsed().as_secs_f64();
            cost += est.stats.cost();
            if due(cost, &mut next, budget) || cost >= budget {
                let (h, grad_norm) = p.evaluate(&theta, &mut warm)?;
                out.points.push(Point {
                    cost,
                    time,
                    h,
                    grad_norm,
                });
            }
        }
        Ok::<(), BloError>(())
    })();
    out.error = result.err().map(|e| e.to_string());
    out
}

fn compare<P: Bench>(p: &P, a: &Args, label: &str) -> Result<Vec<Run>, BloError> {
    let (rho, gamma) = p.steps();
    let b = a.budget;
    let mut runs = vec![
        run_solver(
            "SOBA",
            &Soba::new(StepSize::constant(rho), StepSize::constant(gamma))?,
            p,
            b,
        ),
        run_solver(
            "AmIGO",
            &Amigo::new(
                StepSize::constant(rho),
                rho,
                5,
                5,
                StepSize::constant(gamma),
            )?,
            p,
            b,
        ),
        run_solver(
            "F2SA",
            &F2sa::new(
                StepSize::constant(rho),
                StepSize::constant(rho),
                StepSize::constant(gamma),
                Penalty::new(1.0, 1.0, 1e3)?,
            )?,
            p,
            b,
        ),
        run_solver(
            "BOME",
            &Bome::new(StepSize::constant(rho), 10, 0.5, StepSize::constant(gamma))?,
            p,
            b,
        ),
    ];
    runs.push(run_estimator(
        "exact (unrolled)",
        &Exact::new(Policy::StoreAll)?,
        p,
        b,
        a.seed,
    ));
    runs.push(run_estimator(
        "first order",
        &FirstOrder::new(),
        p,
        b,
        a.seed,
    ));
    runs.push(run_estimator(
        "UFO-BLO q=0.2",
        &Ufo::fixed(0.2)?,
        p,
        b,
        a.seed,
    ));
    // The implicit estimator needs a stationary φ_r: r inner steps reach a
    // relative inner gradient of a few 1e-2 on the logistic problems, so that is the tolerance
    // stated (its bias grows with it).
    runs.push(run_estimator(
        "implicit (CG)",
        &Implicit::ift().stationarity_tol(5e-2)?,
        p,
        b,
        a.seed,
    ));
    plot(&runs, &a.figures, label);
    Ok(runs)
}

fn plot(runs: &[Run], dir: &Path, label: &str) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("bilevel_bench: {}: {e}", dir.display());
        return;
    }
    let series = |f: &dyn Fn(&Point) -> (f64, f64)| -> Vec<Series> {
        runs.iter()
            .map(|r| Series::new(&r.name, r.points.iter().map(f).collect()))
            .collect()
    };
    let h_min = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.h))
        .fold(f64::INFINITY, f64::min);
    let figs = [
        (
            "objective",
            "gradient-equivalents",
            "h(θ) − min over all runs + 1e-12",
            series(&|p| (p.cost, p.h - h_min + 1e-12)),
        ),
        (
            "gradnorm",
            "gradient-equivalents",
            "‖∇h(θ)‖",
            series(&|p| (p.cost, p.grad_norm)),
        ),
        (
            "time",
            "seconds (outer steps only)",
            "‖∇h(θ)‖",
            series(&|p| (p.time, p.grad_norm)),
        ),
    ];
    for (name, x, y, s) in figs {
        let path = dir.join(format!("bilevel_{label}_{name}.svg"));
        let spec = PlotSpec {
            title: format!("{label}: {y} against {x}"),
            x_label: x.into(),
            y_label: y.into(),
            log_y: true,
            reference: None,
        };
        match line_plot_svg(&path, &spec, &s) {
            Ok(()) => eprintln!("figure: {}", path.display()),
            Err(e) => eprintln!("bilevel_bench: {e}"),
        }
    }
}

fn table(runs: &[Run]) {
    println!(
        "{:<18} {:>12} {:>12} {:>14} {:>12} {:>12}",
        "method", "grad-equiv", "time", "h(θ)", "‖∇h(θ)‖", "‖∇h‖ @ 1/4"
    );
    for r in runs {
        let last = r.points.last();
        let quarter = r
            .points
            .iter()
            .find(|p| p.cost >= r.points.last().map_or(0.0, |l| l.cost) / 4.0);
        match last {
            Some(p) => println!(
                "{:<18} {:>12.0} {:>12} {:>14.8} {:>12.3e} {:>12.3e}",
                r.name,
                p.cost,
                blo_examples::util::fmt_secs(p.time),
                p.h,
                p.grad_norm,
                quarter.map_or(f64::NAN, |q| q.grad_norm)
            ),
            None => println!("{:<18} (no point)", r.name),
        }
        if let Some(e) = &r.error {
            println!("{:<18} stopped: {e}", "");
        }
    }
}

// ---------------------------------------------------------------------------
// Trace mode: the input of bench/jax_solvers.py.

fn tensor_json(t: &Tensor<f64>) -> serde_json::Value {
    serde_json::json!({ "shape": t.dims(), "data": t.data() })
}

fn trace(a: &Args, which: Traced) -> Result<(), Box<dyn std::error::Error>> {
    match a.problem {
        Which::Quadratic => {
            let quad = Quadratic::generate(50, 100, a.seed)?;
            let [am, bm, cm, dm] = quad.matrices();
            let [av, cv, dv] = quad.vectors();
            let (n, pp) = quad.dims();
            let problem_json = serde_json::json!({
                "kind": "quadratic", "n": n, "p": pp,
                "A": am, "B": bm, "C": cm, "D": dm, "a": av, "c": cv, "d": dv,
            });
            let (rho, gamma) = quad.steps();
            trace_on(a, which, &quad, quad.theta0(), rho, gamma, problem_json)
        }
        Which::Logreg => {
            let logreg = L2Logreg::generate(50, 10, 1000, 1000, 1, a.seed)?;
            let (train, val) = logreg.data();
            let problem_json = serde_json::json!({
                "kind": "logreg", "train": tensor_json(train[0]), "val": tensor_json(val),
            });
            let (rho, gamma) = logreg.steps();
            trace_on(a, which, &logreg, logreg.theta0(), rho, gamma, problem_json)
        }
        Which::Cleaning => Err("--trace runs on --problem quadratic or logreg".into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn trace_on<P: Problem<f64, Task = ()>>(
    a: &Args,
    which: Traced,
    p: &P,
    theta0: Vec<Tensor<f64>>,
    rho: f64,
    gamma: f64,
    problem_json: serde_json::Value,
) -> Result<(), Box<dyn std::error::Error>> {
    let penalty = Penalty::new(1.0, 1.0, 1e3)?;
    let (hyper, traj, per_step) = match which {
        Traced::Soba => {
            let s = Soba::new(StepSize::constant(rho), StepSize::constant(gamma))?;
            let hyper = serde_json::json!({ "method": "soba", "rho": rho, "gamma": gamma });
            let (traj, t) = time_solver(&s, p, theta0, a.steps, a.repeats)?;
            (hyper, traj, t)
        }
        Traced::F2sa => {
            let s = F2sa::new(
                StepSize::constant(rho),
                StepSize::constant(rho),
                StepSize::constant(gamma),
                penalty,
            )?;
            let hyper = serde_json::json!({
                "method": "f2sa", "rho_y": rho, "rho_z": rho, "gamma": gamma,
                "lambda0": penalty.lambda0, "growth": penalty.growth, "lambda_max": penalty.lambda_max,
            });
            let (traj, t) = time_solver(&s, p, theta0, a.steps, a.repeats)?;
            (hyper, traj, t)
        }
    };
    let out = serde_json::json!({
        "problem": problem_json, "hyper": hyper, "steps": a.steps,
        "theta": traj, "ours_seconds_per_step": per_step,
    });
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_vec(&out)?)?;
    println!(
        "{}",
        serde_json::json!({ "problem": format!("{:?}", a.problem).to_lowercase(), "method": format!("{which:?}").to_lowercase(),
            "steps": a.steps, "ours_us_per_step": per_step * 1e6, "trace": a.out })
    );
    Ok(())
}

/// The θ trajectory (θ_1..θ_K, flattened) and the median time per outer step.
fn time_solver<S: Solver<f64>, P: Problem<f64, Task = ()>>(
    s: &S,
    p: &P,
    theta0: Vec<Tensor<f64>>,
    steps: u64,
    repeats: usize,
) -> Result<(Vec<Vec<f64>>, f64), BloError> {
    let mut ws = SolverWorkspace::new();
    let mut st = s.init(&mut ws, p, &(), theta0.clone())?;
    let mut traj = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        s.step(&mut ws, p, &(), &mut st)?;
        traj.push(hvp::flatten(&st.theta));
    }
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let mut st = s.init(&mut ws, p, &(), theta0.clone())?;
        let t0 = Instant::now();
        for _ in 0..steps {
            s.step(&mut ws, p, &(), &mut st)?;
        }
        times.push(t0.elapsed().as_secs_f64() / steps as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok((traj, times[times.len() / 2]))
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(which) = a.trace {
        return match trace(&a, which) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bilevel_bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let inner = |lr: f64| InnerLoop::sgd(a.inner_steps, lr);
    let result = match a.problem {
        Which::Quadratic => Quadratic::generate(10, 20, a.seed).and_then(|q| {
            let q = q.with_inner_loop(inner(0.3)?);
            compare(&q, &a, "quadratic")
        }),
        Which::Logreg => L2Logreg::generate(20, 5, 200, 200, a.batches, a.seed).and_then(|p| {
            let p = p.with_inner_loop(inner(0.1)?);
            compare(&p, &a, "logreg")
        }),
        Which::Cleaning => {
            HyperCleaning::generate(10, 4, 100, 200, a.corruption, a.batches, a.seed).and_then(
                |p| {
                    let p = p.with_inner_loop(inner(0.5)?);
                    compare(&p, &a, "cleaning")
                },
            )
        }
    };
    match result {
        Ok(runs) if a.json => {
            for r in &runs {
                let last = r.points.last();
                println!(
                    "{}",
                    serde_json::json!({
                        "problem": format!("{:?}", a.problem).to_lowercase(), "method": r.name,
                        "gradient_equivalents": last.map(|p| p.cost), "seconds": last.map(|p| p.time),
                        "h": last.map(|p| p.h), "grad_norm": last.map(|p| p.grad_norm), "error": r.error,
                    })
                );
            }
            ExitCode::SUCCESS
        }
        Ok(runs) => {
            println!(
                "{:?}, budget {} gradient-equivalents per method, r = {} inner steps for the unrolled estimators",
                a.problem, a.budget, a.inner_steps
            );
            table(&runs);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bilevel_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
