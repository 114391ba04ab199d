//! Reduced runs of every example, asserting on the numbers they return (and on
//! the JSON lines and figures they write). The examples' logic lives in the
//! library (`src/`), so these call it directly with small settings.

use std::path::PathBuf;

use blo_examples::counterexample::{self, CounterexampleProblem, Method};
use blo_examples::util::check_svg;

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
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
    let p = CounterexampleProblem::new(models::Counterexample::paper());
    let ce = &p.ce;
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
    // REFERENCE §6: θ* ≈ 2.840, θ_FO ≈ 5.759, |F′(θ_FO)| = √(2·0.06) ≈ 0.346.
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
    std::fs::remove_dir_all(&dir).ok();
}
