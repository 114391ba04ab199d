//! Reduced runs of every example, asserting on the numbers they return (and on
//! the JSON lines and figures they write). The examples' logic lives in the
//! library (`src/`), so these call it directly with small settings.

use std::path::PathBuf;

use blo_examples::counterexample::{self, CounterexampleProblem, Method};
use blo_examples::util::check_svg;

#[allow(dead_code)]
#[path = "../../examples/quickstart.rs"]
mod quickstart;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blo-examples-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn quickstart_matches_closed_forms() {
    // φ_r − c = p(θ − c), p = (1 − αa)^r, with a = 1.5, α = 0.1, r = 10, θ = 3, c = 1:
    // F′(θ) = a p² (θ − c) and g_FO = a p (θ − c).
    let (exact, fo) = quickstart::run().unwrap();
    let p = (1.0_f64 - 0.15).powi(10);
    assert!((exact - 1.5 * p * p * 2.0).abs() < 1e-12, "exact {exact}");
    assert!((fo - 1.5 * p * 2.0).abs() < 1e-12, "fo {fo}");
}

#[test]
fn counterexample_exact_estimator_matches_closed_form_in_every_zone() {
    use blo::{Estimator, Exact, FirstOrder, Policy};
    use rand::SeedableRng;
    let p = CounterexampleProblem::new(models::Counterexample::paper()).unwrap();
    let ce = p.ce();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    // θ in the quadratic zone of both tasks, in the cubic zone of task 1, and far out (linear zone).
    let c2 = ce.c(1);
    for theta in [0.5, 4.0, c2 - ce.big_a - 0.5, -30.0, 60.0] {
        for task in 0..2 {
            let th = [tape::Tensor::vector(vec![theta])];
            let e = Exact::new(Policy::Recompute)
                .unwrap()
                .estimate(&p, &task, &th, &mut rng)
                .unwrap();
            let want = ce.task_hypergradient(task, theta);
            assert!(
                (e.grad[0].data()[0] - want).abs() < 1e-9 * (1.0 + want.abs()),
                "θ = {theta}, task {task}"
            );
            let f = FirstOrder::new()
                .estimate(&p, &task, &th, &mut rng)
                .unwrap();
            let want = ce.task_fo_gradient(task, theta);
            assert!(
                (f.grad[0].data()[0] - want).abs() < 1e-9 * (1.0 + want.abs()),
                "FO θ = {theta}, task {task}"
            );
        }
    }
}

#[test]
fn counterexample_fo_stalls_and_ufo_does_not() {
    let dir = tmp_dir("ce");
    let fig = dir.join("ce.svg");
    let cfg = counterexample::Config {
        iterations: 2000,
        seeds: vec![0, 1, 2],
        methods: vec![
            Method::FirstOrder,
            Method::Ufo(0.1),
            Method::UfoAdaptive,
            Method::Exact,
        ],
        figure: Some(fig.clone()),
        record_every: 10,
        progress: false,
    };
    let report = counterexample::run(&cfg).unwrap();
    assert_eq!(report.runs.len(), 12);
    // docs/math.md §6: θ* ≈ 2.840, θ_FO ≈ 5.759, |F′(θ_FO)| = √(2·0.06) ≈ 0.346.
    assert!((report.theta_star - 2.840).abs() < 1e-3);
    assert!((report.theta_fo - 5.759).abs() < 1e-3);
    assert!((report.fo_plateau - 0.12f64.sqrt()).abs() < 1e-9);

    let tail = |label: &str| {
        let rs: Vec<_> = report.runs.iter().filter(|r| r.label == label).collect();
        assert_eq!(rs.len(), 3, "{label}");
        rs.iter().map(|r| r.tail_mean_abs_grad).sum::<f64>() / 3.0
    };
    // FO stalls near θ_FO, where |F′| ≈ 0.35 (not 0).
    for r in report.runs.iter().filter(|r| r.label == "fo") {
        assert!(
            (r.final_theta - report.theta_fo).abs() < 0.6,
            "FO seed {}: θ = {}",
            r.seed,
            r.final_theta
        );
        assert!(
            r.tail_mean_abs_grad > 0.2,
            "FO seed {}: |F'| = {}",
            r.seed,
            r.tail_mean_abs_grad
        );
    }
    // The exact hypergradient (and adaptive UFO, which ends up close to q = 1 here)
    // reaches the true stationary point.
    for r in report
        .runs
        .iter()
        .filter(|r| r.label == "exact" || r.label == "ufo(adaptive)")
    {
        assert!(
            (r.final_theta - report.theta_star).abs() < 0.5,
            "{} seed {}: θ = {}",
            r.label,
            r.seed,
            r.final_theta
        );
        assert!(
            r.final_abs_grad < 0.06,
            "{} seed {}: |F'| = {}",
            r.label,
            r.seed,
            r.final_abs_grad
        );
    }
    // UFO with q = 0.1 is unbiased but noisier: well below FO's plateau on average.
    assert!(
        tail("ufo(q=0.1)") < 0.6 * tail("fo"),
        "ufo {} vs fo {}",
        tail("ufo(q=0.1)"),
        tail("fo")
    );
    // Its exact branch ran in about 10% of the 6000 iterations (binomial sd ≈ 0.4%).
    let ufo: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.label == "ufo(q=0.1)")
        .collect();
    let frac = ufo.iter().map(|r| r.exact_branches).sum::<usize>() as f64 / 6000.0;
    assert!((frac - 0.1).abs() < 0.015, "exact-branch fraction {frac}");

    // Same seed → same θ_0 for every method, and identical reruns.
    for s in 0..3u64 {
        let t0: Vec<f64> = report
            .runs
            .iter()
            .filter(|r| r.seed == s)
            .map(|r| r.theta0)
            .collect();
        assert!(t0.iter().all(|&t| t == t0[0]) && (-10.0..30.0).contains(&t0[0]));
    }

    // JSON lines round-trip with the documented fields.
    for r in &report.runs {
        let line = serde_json::to_string(r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in ["estimator", "q", "seed", "final_theta", "final_abs_grad"] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
        assert_eq!(v["final_theta"].as_f64().unwrap(), r.final_theta);
    }
    let text = counterexample::table(&report);
    assert!(
        text.contains("ufo(adaptive)") && text.contains("θ* = 2.8403"),
        "{text}"
    );

    check_svg(&fig).unwrap();
    check_svg(&dir.join("ce-compute.svg")).unwrap();
    // Compute per iteration (docs/math.md §8, r = 10): FO r + 2 = 12 gradients;
    // exact with recompute r(r+1)/2 + 2 = 57 gradients and r = 10 HVPs (2 each),
    // 77 in all; UFO pays FO's 12 every iteration plus, on the iterations whose
    // coin chose the exact branch, a fixed extra (the exact branch continues
    // FO's rollout, so the extra is below 77).
    let mut ufo_extra = Vec::new();
    for r in &report.runs {
        assert_eq!(r.trace_cost.len(), r.trace.len());
        assert!(r.trace_cost.windows(2).all(|w| w[0] < w[1]));
        let per_iter = r.total_cost / r.iterations as f64;
        match r.label.as_str() {
            "fo" => assert_eq!(per_iter, 12.0, "{}", r.label),
            "exact" => assert_eq!(per_iter, 77.0, "{}", r.label),
            "ufo(q=0.1)" => {
                let extra = (r.total_cost - 12.0 * r.iterations as f64) / r.exact_branches as f64;
                assert!(extra > 0.0 && extra < 77.0, "{}: extra {extra}", r.label);
                ufo_extra.push(extra);
            }
            _ => {}
        }
    }
    assert_eq!(ufo_extra.len(), 3);
    assert!(
        ufo_extra.iter().all(|e| (e - ufo_extra[0]).abs() < 1e-9),
        "{ufo_extra:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn small_hyperopt(
    methods: Vec<blo_examples::hyperopt::Method>,
    figure: Option<PathBuf>,
) -> blo_examples::hyperopt::Config {
    blo_examples::hyperopt::Config {
        d: 8,
        informative: 3,
        n: [20, 100, 500],
        r: 40,
        outer_steps: 25,
        methods,
        figure,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn hyperopt_exact_hypergradient_matches_finite_differences_of_plain_arithmetic() {
    use blo::Estimator;
    use blo_examples::hyperopt::{Hyper, RegressionData, RidgeHyperopt};
    use rand::SeedableRng;
    let p = RidgeHyperopt {
        data: RegressionData::synthetic(5, 2, [12, 30, 10], 0.3, 3),
        lambda_max: 5.0,
        inner: blo::InnerLoop::sgd(15, 0.1).unwrap(),
        hyper: Hyper::L2Weights,
    };
    let theta = tape::Tensor::new([5, 1], vec![0.3, -0.2, 0.0, 1.0, -1.0]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let g = blo::Exact::new(blo::Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), std::slice::from_ref(&theta), &mut rng)
        .unwrap();
    // Validation loss of the inner solution computed without the tape, by central differences.
    let val = |th: &tape::Tensor<f64>| {
        RidgeHyperopt::mse(&p.data.x_val, &p.data.y_val, &p.inner_solution(th))
    };
    assert!((val(&theta) - g.outer_loss).abs() < 1e-12);
    for k in 0..5 {
        let h = 1e-5;
        let (mut a, mut b) = (theta.clone(), theta.clone());
        a.data_mut()[k] += h;
        b.data_mut()[k] -= h;
        let fd = (val(&a) - val(&b)) / (2.0 * h);
        let got = g.grad[0].data()[k];
        assert!(
            (fd - got).abs() < 1e-7 * (1.0 + fd.abs()),
            "θ_{k}: fd {fd} vs {got}"
        );
    }
}

#[test]
fn hyperopt_estimators_agree_and_the_search_helps() {
    use blo_examples::hyperopt::{self, Method};
    let dir = tmp_dir("hyperopt");
    let fig = dir.join("h.svg");
    let methods = vec![
        Method::ExactStoreAll,
        Method::ExactBinomial(3),
        Method::ForwardMode,
        Method::Implicit,
        Method::Ufo(0.3),
        Method::FirstOrder,
    ];
    let res = hyperopt::run(&small_hyperopt(methods, Some(fig.clone()))).unwrap();
    let by = |l: &str| {
        res.iter()
            .find(|r| r.method == l)
            .unwrap_or_else(|| panic!("{l}"))
    };
    let exact = by("exact(store-all)");
    // The search lowers the validation loss (and, on this data, the test loss too).
    assert!(
        exact.final_val_loss < 0.7 * exact.initial_val_loss,
        "{exact:?}"
    );
    assert!(exact.final_test_loss < exact.initial_test_loss, "{exact:?}");
    // Noise features end with larger L2 weights than informative ones.
    assert!(
        exact.mean_hyper_noise > exact.mean_hyper_informative,
        "{exact:?}"
    );
    // Every checkpoint policy gives the same hypergradient to the last bit, hence the same search.
    let bin = by("exact(binomial,s=3)");
    assert_eq!(bin.rel_error_at_theta0, 0.0);
    assert_eq!(bin.val_curve, exact.val_curve);
    assert!(
        bin.states_peak <= 3 && exact.states_peak == 40,
        "{} {}",
        bin.states_peak,
        exact.states_peak
    );
    // Forward mode is the same derivative by other operations.
    assert!(by("forward-mode").rel_error_at_theta0 < 1e-10);
    // Implicit differentiation at φ_r is close but not exact (r = 40 steps do not reach the optimum exactly).
    let imp = by("implicit(CG)");
    assert!(
        imp.rel_error_at_theta0 > 0.0 && imp.rel_error_at_theta0 < 1e-3,
        "{imp:?}"
    );
    let solver = imp.solver.as_ref().expect("implicit reports its solver");
    assert!(solver.residual < 1e-9 && solver.iterations >= 1);
    // First-order: exactly zero here, so θ never moves.
    let fo = by("first-order");
    assert_eq!(fo.rel_error_at_theta0, 1.0);
    assert_eq!(fo.final_val_loss, fo.initial_val_loss);
    // UFO: unbiased (g = (ξ/q)·g_exact here), so it also makes progress.
    let ufo = by("ufo(q=0.3)");
    assert!(ufo.final_val_loss < ufo.initial_val_loss, "{ufo:?}");
    for r in &res {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(v["method"].as_str().unwrap(), r.method);
        assert!(v["final_val_loss"].as_f64().unwrap().is_finite());
    }
    assert!(hyperopt::table(&res).contains("implicit(CG)"));
    check_svg(&fig).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn maml_sine_policies_agree_and_memory_is_as_documented() {
    use blo_examples::maml_sine::{self, Config, Method};
    let dir = tmp_dir("maml_sine");
    let cfg = Config {
        rs: vec![1, 4],
        methods: vec![
            Method::FirstOrder,
            Method::Ufo(0.5),
            Method::ExactStoreAll,
            Method::ExactRecompute,
            Method::ExactBinomial(2),
        ],
        hidden: vec![16, 16],
        meta_steps: 40,
        meta_batch: 2,
        outer_lr: 1e-2,
        test_tasks: 30,
        figure_dir: Some(dir.clone()),
        progress: false,
        ..Config::default()
    };
    let out = maml_sine::run(&cfg).unwrap();
    assert_eq!(out.len(), 10);
    let get = |m: &str, r: usize| {
        out.iter()
            .find(|x| x.method == m && x.r == r)
            .unwrap_or_else(|| panic!("{m} {r}"))
    };
    for r in [1, 4] {
        let sa = get("exact(store-all)", r);
        // Every checkpoint policy gives bit-identical hypergradients, hence identical training.
        for m in ["exact(recompute)", "exact(binomial,s=2)"] {
            assert_eq!(get(m, r).final_test_loss, sa.final_test_loss, "{m} r = {r}");
        }
        // Memory and time as documented (blo::engine::plan): store-all holds r states
        // (φ_0 is regenerated from θ), recompute holds 1 and takes r(r+1)/2 forward
        // steps per task; one HVP per inner step.
        assert_eq!(sa.states_peak, r);
        assert_eq!(sa.forward_steps_per_task, r as f64);
        assert_eq!(sa.hvps_per_task, r as f64);
        let rc = get("exact(recompute)", r);
        assert_eq!(rc.states_peak, 1);
        assert_eq!(rc.forward_steps_per_task, (r * (r + 1) / 2) as f64);
        assert!(get("exact(binomial,s=2)", r).states_peak <= 2);
        // FO: one state, no HVPs.
        let fo = get("fo", r);
        assert_eq!((fo.states_peak, fo.hvps_per_task), (1, 0.0));
        // UFO with q = 0.5: between FO and exact in HVPs, one state (recompute branch).
        let ufo = get("ufo(q=0.5)", r);
        assert_eq!(ufo.states_peak, 1);
        assert!(
            ufo.hvps_per_task > 0.0 && ufo.hvps_per_task < r as f64,
            "{}",
            ufo.hvps_per_task
        );
        // Meta-training helps on held-out tasks.
        assert!(sa.final_test_loss < sa.initial_test_loss, "{sa:?}");
        assert!(sa.final_test_ci95 > 0.0 && sa.seconds_per_meta_step > 0.0);
    }
    for x in &out {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(x).unwrap()).unwrap();
        assert_eq!(v["r"].as_u64().unwrap() as usize, x.r);
        assert!(v["final_test_loss"].as_f64().unwrap().is_finite());
    }
    assert!(maml_sine::table(&out).contains("exact(recompute)"));
    for f in [
        "maml_sine_loss.svg",
        "maml_sine_time.svg",
        "maml_sine_states.svg",
        "maml_sine_train.svg",
    ] {
        check_svg(&dir.join(f)).unwrap();
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn tiny_fewshot(methods: Vec<blo_examples::fewshot::Method>) -> blo_examples::fewshot::Config {
    use blo_examples::fewshot::{Config, DataSource};
    Config {
        data: DataSource::Glyphs {
            train_classes: 12,
            test_classes: 8,
            per_class: 6,
            size: 28,
        },
        n_way: 3,
        k_shot: 1,
        q_query: 2,
        r: 2,
        alpha: 0.02,
        filters: Some(8),
        meta_batch: 2,
        meta_steps: 6,
        pilot_steps: 2,
        outer_lr: 1e-2,
        test_episodes: 600,
        methods,
        figure: None,
        progress: false,
        ..Config::default()
    }
}

#[test]
fn fewshot_equal_compute_policies_and_accuracy_interval() {
    use blo::Policy;
    use blo_examples::fewshot::{self, Method};
    let dir = tmp_dir("fewshot");
    let mut cfg = tiny_fewshot(vec![
        Method::FirstOrder,
        Method::Ufo(0.5),
        Method::Exact(Policy::StoreAll),
        Method::Reptile,
        Method::Imaml(20.0),
    ]);
    cfg.figure = Some(dir.join("f.svg"));
    let res = fewshot::run(&cfg).unwrap();
    assert_eq!(res.len(), 5);
    let budget = 6.0 * res[0].cost_per_step;
    // FO: r + 1 gradients per task at least; exact adds r HVPs (2 each) per task.
    let (fo, exact) = (&res[0], &res[2]);
    assert!(
        exact.cost_per_step >= fo.cost_per_step + 2.0 * 2.0 * 2.0,
        "{} {}",
        exact.cost_per_step,
        fo.cost_per_step
    );
    for r in &res {
        // Equal compute: steps = round(budget / cost per step), so the planned spend is within half a step.
        let planned = r.meta_steps as f64 * r.cost_per_step;
        assert!(
            (planned - budget).abs() <= 0.5 * r.cost_per_step + 1e-9,
            "{}: {planned} vs {budget}",
            r.method
        );
        assert_eq!(r.steps_done, r.meta_steps);
        // ≥ 600 episodes, accuracy in [0, 1] with a positive interval that the sample size explains
        // (the half-width of a mean of values in [0, 1] is at most 1.96·0.5/√(n−1)·√(n/n)).
        assert_eq!(r.test_episodes, 600);
        assert!((0.0..=1.0).contains(&r.test_accuracy));
        assert!(
            r.test_ci95 > 0.0
                && r.test_ci95 <= 1.96 * 0.5 * (600.0f64 / 599.0).sqrt() / 600f64.sqrt() + 1e-12
        );
        assert!(r.final_train_loss.is_finite());
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(v["method"].as_str().unwrap(), r.method);
        assert!(v["test_accuracy"].as_f64().is_some());
    }
    // Cheaper methods take more steps under the same budget.
    assert!(fo.meta_steps > exact.meta_steps);
    assert!(fewshot::table(&res).contains("test accuracy"));
    check_svg(&dir.join("f.svg")).unwrap();
    check_svg(&dir.join("f-steps.svg")).unwrap();

    // Equal steps: every checkpoint policy trains bit-identically.
    let mut cfg = tiny_fewshot(vec![
        Method::Exact(Policy::StoreAll),
        Method::Exact(Policy::Recompute),
        Method::Exact(Policy::Binomial { snapshots: 2 }),
    ]);
    cfg.equal_compute = false;
    cfg.test_episodes = 50;
    let res = fewshot::run(&cfg).unwrap();
    assert_eq!(res[0].theta, res[1].theta);
    assert_eq!(res[0].theta, res[2].theta);
    assert_eq!(res[0].test_accuracy, res[1].test_accuracy);
    std::fs::remove_dir_all(&dir).ok();
}

/// Few-shot accuracy well above chance on the small run. The run is
/// `tiny_fewshot` with inner step α = 0.2 instead of 0.02 (at 0.02 two inner
/// steps barely move the classifier: pilot accuracies 0.37–0.46 against chance
/// 1/3; the iMAML run of the equal-compute test needs α = 0.02, its CG meets
/// negative curvature at 0.1 and 0.2, so it is not in this run).
///
/// Threshold: chance + 0.10, for every method. Pilot seeds 100..=103 (not the
/// test's seed, which is the default and was not chosen) gave 0.58–0.79,
/// mean 0.70, between-seed sd ≈ 0.07, so the bound sits ≈ 3.8 sd below the
/// typical value; with 600 episodes × 6 queries the 95% half-width is ≈ 0.018,
/// so the bound is also > 5 half-widths above chance: a run at chance cannot
/// pass, and a learning one is not failed by sampling noise.
#[test]
fn fewshot_accuracy_is_well_above_chance() {
    use blo::Policy;
    use blo_examples::fewshot::{self, Method};
    let mut cfg = tiny_fewshot(vec![
        Method::FirstOrder,
        Method::Ufo(0.5),
        Method::Exact(Policy::StoreAll),
        Method::Reptile,
    ]);
    cfg.alpha = 0.2;
    let res = fewshot::run(&cfg).unwrap();
    let chance = 1.0 / cfg.n_way as f64;
    for r in &res {
        eprintln!(
            "{}: test accuracy {:.4} ± {:.4} ({} episodes, chance {chance:.4})",
            r.method, r.test_accuracy, r.test_ci95, r.test_episodes
        );
        assert_eq!(r.test_episodes, 600);
        assert!(
            r.test_accuracy > chance + 0.10,
            "{}: test accuracy {} ± {} is not well above chance {chance}",
            r.method,
            r.test_accuracy,
            r.test_ci95
        );
    }
}

#[test]
fn fewshot_checkpoint_and_resume_continue_bit_identically() {
    use blo_examples::fewshot::{self, Method};
    let dir = tmp_dir("fewshot-resume");
    let mut cfg = tiny_fewshot(vec![Method::Ufo(0.5)]);
    cfg.equal_compute = false;
    cfg.test_episodes = 30;
    let straight = fewshot::run(&cfg).unwrap();
    // Interrupted after 3 of 6 steps (checkpoint every 3), then resumed.
    cfg.checkpoint_dir = Some(dir.clone());
    cfg.checkpoint_every = 3;
    cfg.stop_after = Some(3);
    let first = fewshot::run(&cfg).unwrap();
    assert_eq!(first[0].steps_done, 3);
    assert!(!first[0].resumed);
    assert!(dir.join("ufo_0.5").join("log.jsonl").exists());
    cfg.stop_after = None;
    cfg.resume = true;
    let resumed = fewshot::run(&cfg).unwrap();
    assert!(resumed[0].resumed);
    assert_eq!(resumed[0].steps_done, 6);
    assert_eq!(
        resumed[0].theta, straight[0].theta,
        "resumed θ differs from the uninterrupted run"
    );
    assert_eq!(resumed[0].test_accuracy, straight[0].test_accuracy);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn readme_quick_start_is_the_two_ci_commands() {
    // .ci/run runs exactly the README's quick start: keep them in step.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("a '## Quick start' heading");
    let block = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("an sh block right after the heading");
    let body = &block[..block.find("```").expect("closing fence")];
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the quick start holds exactly two commands (demo, tests): {lines:?}"
    );
    assert_eq!(lines[0], "cargo run --release --example counterexample");
    let test_cmd = lines[1];
    assert!(
        test_cmd.starts_with("cargo test --workspace"),
        "the second command runs the whole suite: {test_cmd:?}"
    );
    // .ci/run runs it as a step: a line ending in exactly the README's command.
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        ci.lines()
            .map(str::trim)
            .any(|l| l == test_cmd || l.ends_with(&format!("\" {test_cmd}"))),
        ".ci/run does not run the README's test command {test_cmd:?}"
    );
}

#[test]
fn hyperopt_learns_inner_step_sizes_with_meta_sgd() {
    use blo::Estimator;
    use blo_examples::hyperopt::{self, Hyper, Method, RegressionData, RidgeHyperopt};
    use rand::SeedableRng;
    // Exact hypergradient w.r.t. per-feature step sizes against central differences of
    // the plain-arithmetic inner loop w ← w − α ⊙ ∇L_in.
    let p = RidgeHyperopt {
        data: RegressionData::synthetic(4, 2, [10, 20, 10], 0.3, 5),
        lambda_max: 5.0,
        inner: blo::InnerLoop::meta_sgd(12, vec![0]).unwrap(),
        hyper: Hyper::StepSizes { l2: 0.1 },
    };
    let alpha = tape::Tensor::new([4, 1], vec![0.05, 0.1, 0.02, 0.08]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let g = blo::Exact::new(blo::Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), std::slice::from_ref(&alpha), &mut rng)
        .unwrap();
    let val = |a: &tape::Tensor<f64>| {
        RidgeHyperopt::mse(&p.data.x_val, &p.data.y_val, &p.inner_solution(a))
    };
    assert!((val(&alpha) - g.outer_loss).abs() < 1e-12);
    for k in 0..4 {
        let h = 1e-6;
        let (mut a, mut b) = (alpha.clone(), alpha.clone());
        a.data_mut()[k] += h;
        b.data_mut()[k] -= h;
        let fd = (val(&a) - val(&b)) / (2.0 * h);
        let got = g.grad[0].data()[k];
        assert!(
            (fd - got).abs() < 1e-6 * (1.0 + fd.abs()),
            "α_{k}: fd {fd} vs {got}"
        );
    }
    // The search in step-size mode: forward mode equals exact; learning the steps lowers
    // the validation loss; the implicit estimator is refused with a reason.
    let mut cfg = small_hyperopt(
        vec![Method::ExactStoreAll, Method::ForwardMode, Method::Ufo(0.5)],
        None,
    );
    cfg.hyper = Hyper::StepSizes { l2: 0.1 };
    cfg.r = 10;
    cfg.alpha = 0.02;
    cfg.outer_lr = 0.01;
    let res = hyperopt::run(&cfg).unwrap();
    assert!(
        res[0].final_val_loss < 0.8 * res[0].initial_val_loss,
        "{:?}",
        res[0]
    );
    assert!(res[1].rel_error_at_theta0 < 1e-10);
    cfg.methods = vec![Method::Implicit];
    assert!(matches!(
        hyperopt::run(&cfg),
        Err(blo::BloError::InvalidHyperparameter { .. })
    ));
}
