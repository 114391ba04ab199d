//! Randomized telescopes against UFO-BLO (docs/math.md §10): variance ×
//! expected cost of the best telescope and of UFO's best q, on the sinusoid
//! (MAML, MLP 1-40-40-1) and on the counterexample family, under a memory
//! budget, with the planner's choice.
//!
//! ```text
//! cargo run --release --example telescope
//! cargo run --release --example telescope -- --rs 10,50 --tasks 32 --states 1,8 --draws 2000
//! ```
//!
//! For each problem, r and budget the planner ([`blo::plan_estimator`])
//! measures, on pilot tasks at θ, every g_k (one sweep per task), and computes
//! each candidate's expected cost (docs/math.md §8, under the plans that fit
//! the budget) and variance over tasks and draws (exact over the draws, from
//! the Gram matrix of the depth differences; empirical over the pilot tasks).
//! The table prints UFO's best q and the best telescope side by side; with
//! `--draws N > 0` both are also run N times (tasks cycled, fresh draws) and
//! their variance and cost measured from the estimates themselves. The
//! "held-out ratio" column is the same ratio out of sample
//! ([`blo::estimators::planner::Candidate::held_out`]: parameters fitted on
//! half the pilot tasks, scored on the other half, both ways). Each is also
//! compared with baselines (control variates, docs/math.md §10): "UFO+b" is
//! UFO with a baseline at its own best q, and the best telescope with
//! baselines is set against both UFOs; the Monte Carlo check runs the four
//! estimators in meta-batches of 8, learning the baselines from earlier
//! meta-batches as training does.
//!
//! With `--study`, it runs the meta-training study instead
//! ([`blo_examples::telescope_study`]): the sinusoid's meta-test loss at equal
//! compute across training seeds for first order, UFO, the best telescope,
//! the planner's choice and exact:
//!
//! ```text
//! cargo run --release --example telescope -- --study --study-seeds 5 --study-budget 350000
//! ```

use std::process::ExitCode;

use blo::{
    plan_estimator, Adam, Budget, Choice, Estimator, FirstOrder, InnerLoop, PlannerParams,
    PlannerReport, Problem, Trainer,
};
use blo_examples::counterexample::CounterexampleProblem;
use clap::Parser;
use models::RegressionMaml;
use models::{Activation, Counterexample, Mlp, Model, SinusoidTasks};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::Tensor;

/// Variance × cost of randomized telescopes against UFO-BLO.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Inner steps r for the sinusoid.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
    rs: Vec<usize>,
    /// Inner steps r for the counterexample family (a = (0.5, 1.5), α = 0.1, D = 0.06).
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    counterexample_rs: Vec<usize>,
    /// Memory budgets in states.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    states: Vec<usize>,
    /// Pilot tasks for the sinusoid.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Monte Carlo estimates per (estimator, setting) to check the model (0: none).
    #[arg(long, default_value_t = 0)]
    draws: usize,
    /// Monte Carlo: estimates run first and discarded (the baselines start at zero).
    #[arg(long, default_value_t = 256)]
    warm: usize,
    /// Meta-train θ first for this many steps (first order, r = 10, Adam 1e-3,
    /// 5 tasks per step) and measure there instead of at initialisation.
    #[arg(long, default_value_t = 0)]
    train_steps: u64,
    /// Print every planner table (all candidates), not only the summary.
    #[arg(long)]
    verbose: bool,
    /// Run the equal-compute meta-training study across seeds instead.
    #[arg(long)]
    study: bool,
    /// Study: training seeds 0..N (at least 2).
    #[arg(long, default_value_t = 5)]
    study_seeds: u64,
    /// Study: compute per training run, in gradient units.
    #[arg(long, default_value_t = 350_000.0)]
    study_budget: f64,
    /// Study: inner steps r.
    #[arg(long, default_value_t = 10)]
    study_r: usize,
    /// Study: memory budget in states.
    #[arg(long, default_value_t = 8)]
    study_states: usize,
}

/// The `--study` mode: prints the table and the wall time.
fn study(args: &Args) -> ExitCode {
    let cfg = blo_examples::telescope_study::StudyConfig {
        r: args.study_r,
        states: args.study_states,
        seeds: args.study_seeds,
        budget: args.study_budget,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    match blo_examples::telescope_study::run(&cfg) {
        Ok(results) => {
            println!(
                "sinusoid r = {}, {} states, seeds 0..{}, budget {} gradient units per run, B = {}",
                cfg.r, cfg.states, cfg.seeds, cfg.budget, cfg.meta_batch
            );
            print!("{}", blo_examples::telescope_study::table(&results));
            println!("wall time {:.1} s", start.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("telescope --study: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One row of the summary.
struct Row {
    problem: String,
    report: PlannerReport,
    /// Monte Carlo (variance, cost) of UFO's best q, UFO + baseline, the
    /// best plain telescope and the best telescope with baselines.
    mc: Option<[(f64, f64); 4]>,
}

/// The four candidates compared: UFO's best q, UFO + baseline, the best
/// telescope without and with baselines.
fn four(report: &PlannerReport) -> [&blo::estimators::planner::Candidate; 4] {
    let best = |f: &dyn Fn(&str) -> bool| {
        report
            .candidates
            .iter()
            .filter(|c| f(&c.name))
            .min_by(|a, b| a.figure.total_cmp(&b.figure))
            .expect("the planner compares UFO and telescopes, with and without baselines")
    };
    [
        best(&|n| n.starts_with("UFO q")),
        best(&|n| n.starts_with("UFO + baseline")),
        best(&|n| n.starts_with("telescope") && !n.ends_with("baselines")),
        best(&|n| n.starts_with("telescope") && n.ends_with("baselines")),
    ]
}

/// Runs `choice` for `draws` estimates over `tasks` (cycled) in meta-batches
/// of 8 with fresh draws, calling `observe` after each meta-batch (so the
/// baselines are learnt from earlier meta-batches, as in training; θ fixed),
/// and returns (variance, mean cost) measured from the estimates after the
/// first `warm` (discarded: the baselines start at zero).
fn monte_carlo<P: Problem<f64>>(
    problem: &P,
    tasks: &[P::Task],
    theta: &[Tensor<f64>],
    choice: &Choice,
    draws: usize,
    warm: usize,
) -> Result<(f64, f64), blo::BloError> {
    let mut est: Box<dyn Estimator<f64, P>> = choice.build()?;
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let (mut sum, mut sum_sq, mut cost, mut n) = (Vec::<f64>::new(), 0.0, 0.0, 0usize);
    let mut i = 0;
    while i < warm + draws {
        let mut batch = Vec::with_capacity(8);
        for _ in 0..8 {
            let e = est.estimate(problem, &tasks[i % tasks.len()], theta, &mut rng)?;
            if i >= warm {
                let g: Vec<f64> = e.grad.iter().flat_map(|t| t.data().to_vec()).collect();
                if sum.is_empty() {
                    sum = vec![0.0; g.len()];
                }
                sum.iter_mut().zip(&g).for_each(|(s, x)| *s += x);
                sum_sq += g.iter().map(|x| x * x).sum::<f64>();
                cost += e.stats.cost();
                n += 1;
            }
            batch.push(e);
            i += 1;
        }
        est.observe(&batch);
    }
    let n = n as f64;
    let mean_sq = sum.iter().map(|s| (s / n).powi(2)).sum::<f64>();
    Ok(((sum_sq / n - mean_sq) * n / (n - 1.0), cost / n))
}

fn measure<P: Problem<f64>>(
    name: String,
    problem: &P,
    tasks: &[P::Task],
    theta: &[Tensor<f64>],
    states: usize,
    args: &Args,
    rows: &mut Vec<Row>,
) -> Result<(), blo::BloError> {
    let report = plan_estimator(
        problem,
        tasks,
        theta,
        Budget::States(states),
        &PlannerParams::default(),
    )?;
    if args.verbose {
        println!("{name}\n{report}");
    }
    let mc = if args.draws > 1 {
        let mut out = [(0.0, 0.0); 4];
        for (o, c) in out.iter_mut().zip(four(&report)) {
            *o = monte_carlo(problem, tasks, theta, &c.choice, args.draws, args.warm)?;
        }
        Some(out)
    } else {
        None
    };
    rows.push(Row {
        problem: name,
        report,
        mc,
    });
    Ok(())
}

fn run(args: &Args) -> Result<Vec<Row>, blo::BloError> {
    let mut rows = Vec::new();
    // The sinusoid: MAML with the maml_sine example's network and α, θ at
    // initialisation, pilot tasks from a fixed seed.
    let net = Mlp::new(&[1, 40, 40, 1], Activation::Relu);
    let mut theta = net.init::<f64>(0).into_tensors();
    let sampler = SinusoidTasks::default();
    if args.train_steps > 0 {
        let tasks = sampler.clone();
        let problem = RegressionMaml {
            net: net.clone(),
            inner: InnerLoop::sgd(10, 0.01)?,
        };
        theta = Trainer::new(
            problem,
            move |rng: &mut ChaCha8Rng| tasks.sample_episode::<f64, _>(rng, 10, 10),
            FirstOrder::new(),
            Adam::<f64>::new(1e-3),
            theta,
        )
        .meta_batch(5)
        .steps(args.train_steps)
        .seed(0)
        .progress(false)
        .run()?
        .theta;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let tasks: Vec<_> = (0..args.tasks)
        .map(|_| sampler.sample_episode::<f64, _>(&mut rng, 10, 10))
        .collect();
    for &r in &args.rs {
        let problem = RegressionMaml {
            net: net.clone(),
            inner: InnerLoop::sgd(r, 0.01)?,
        };
        for &s in &args.states {
            measure(
                format!("sinusoid r={r}"),
                &problem,
                &tasks,
                &theta,
                s,
                args,
                &mut rows,
            )?;
        }
    }
    // The counterexample family at its stationary point θ*: the two tasks are
    // the whole task distribution.
    for &r in &args.counterexample_rs {
        let ce = Counterexample::from_d([0.5, 1.5], 0.0, 0.06, r, 0.1);
        let theta = [Tensor::vector(vec![ce.theta_star()])];
        let problem = CounterexampleProblem::new(ce)?;
        for &s in &args.states {
            measure(
                format!("counterexample r={r}"),
                &problem,
                &[0usize, 1],
                &theta,
                s,
                args,
                &mut rows,
            )?;
        }
    }
    Ok(rows)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.study {
        return study(&args);
    }
    let rows = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("telescope: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "| problem | states | UFO q* | UFO cost×var | UFO+b q* | UFO+b cost×var | best telescope | its cost×var | best telescope + baselines | its cost | its var | its cost×var | ratio vs UFO (held out) | ratio vs UFO+b (held out) | plain telescope vs UFO (held out) | planner's choice |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let q_of = |c: &Choice| match c {
        Choice::Ufo { q, .. } => *q,
        Choice::Telescope { p, .. } => p[1],
        _ => f64::NAN,
    };
    let held = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.3}", a / b),
        _ => "–".into(),
    };
    for row in &rows {
        let rep = &row.report;
        let [ufo, ufob, tel, telb] = four(rep);
        println!(
            "| {} | {} | {:.3} | {:.3e} | {:.3} | {:.3e} | {} | {:.3e} | {} | {:.0} | {:.3e} | {:.3e} | {:.3} ({}) | {:.3} ({}) | {:.3} ({}) | {} |",
            row.problem,
            rep.states,
            q_of(&ufo.choice),
            ufo.figure,
            q_of(&ufob.choice),
            ufob.figure,
            tel.name.trim_start_matches("telescope "),
            tel.figure,
            telb.name.trim_start_matches("telescope ").trim_end_matches(" + baselines"),
            telb.cost,
            telb.variance,
            telb.figure,
            telb.figure / ufo.figure,
            held(telb.held_out, ufo.held_out),
            telb.figure / ufob.figure,
            held(telb.held_out, ufob.held_out),
            tel.figure / ufo.figure,
            held(tel.held_out, ufo.held_out),
            rep.choice().name
        );
    }
    if rows.iter().any(|r| r.mc.is_some()) {
        println!();
        println!(
            "Monte Carlo check ({} estimates each after {} discarded, meta-batches of 8, baselines learnt from earlier meta-batches, θ fixed):",
            args.draws, args.warm
        );
        println!("| problem | states | UFO var / cost (model / MC) | UFO+b var / cost (model / MC) | telescope var / cost (model / MC) | telescope+b var / cost (model / MC) | telescope+b vs UFO (MC) | telescope+b vs UFO+b (MC) |");
        println!("|---|---|---|---|---|---|---|---|");
        for row in &rows {
            let Some(mc) = row.mc else {
                continue;
            };
            let c = four(&row.report);
            let cell = |i: usize| {
                format!(
                    "{:.3e} / {:.3e}, {:.0} / {:.0}",
                    c[i].variance, mc[i].0, c[i].cost, mc[i].1
                )
            };
            let fig = |i: usize| mc[i].0 * mc[i].1;
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} |",
                row.problem,
                row.report.states,
                cell(0),
                cell(1),
                cell(2),
                cell(3),
                fig(3) / fig(0),
                fig(3) / fig(1)
            );
        }
    }
    ExitCode::SUCCESS
}
