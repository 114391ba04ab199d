//! The paper's counterexample (docs/math.md §6): constants, closed forms, and the
//! tape version, each checked against the formulas or finite differences.

use models::Counterexample;
use tape::{Real, Tape, Tensor, Var};

/// Root of a continuous function by bisection on a bracketing interval.
fn bisect(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    assert!(f(lo) * f(hi) < 0.0, "not a bracket");
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(lo) * f(mid) <= 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    0.5 * (lo + hi)
}

#[test]
fn paper_constants_follow_the_reference_formulas() {
    let ce = Counterexample::paper();
    assert_eq!((ce.a, ce.r, ce.alpha, ce.b[0]), ([0.5, 1.5], 10, 0.1, 0.0));
    // p_i = (1 − α a_i)^r
    let p1 = 0.95f64.powi(10);
    let p2 = 0.85f64.powi(10);
    assert!((ce.p(0) - p1).abs() < 1e-15 && (ce.p(1) - p2).abs() < 1e-15);
    // b_2 = 2√(2D)/|(a1 p1² + a2 p2²) p2/(a1 p1 + a2 p2) − p2²| with D = 0.06.
    let b2 = 2.0 * 0.12f64.sqrt()
        / ((0.5 * p1 * p1 + 1.5 * p2 * p2) * p2 / (0.5 * p1 + 1.5 * p2) - p2 * p2).abs();
    assert!((ce.b[1] - b2).abs() < 1e-12);
    assert!(
        (ce.b[1] - 17.395).abs() < 5e-3,
        "docs/math.md §6 quotes ≈ 17.395, got {}",
        ce.b[1]
    );
    // A = |b1/a1 − b2/a2| + 1
    assert!((ce.big_a - (b2 / 1.5 + 1.0)).abs() < 1e-12);
}

#[test]
fn fixed_points_and_plateau() {
    let ce = Counterexample::paper();
    // θ_FO is the zero of FO's mean field (found by bisection on the general,
    // all-zone formula), θ* the zero of F' — both must match the quadratic-zone
    // closed forms and the values quoted in docs/math.md §6.
    let fo = bisect(|t| ce.fo_mean_field(t), -5.0, 12.0);
    let star = bisect(|t| ce.hypergradient(t), -5.0, 12.0);
    assert!(
        (fo - ce.theta_fo()).abs() < 1e-10,
        "{fo} vs {}",
        ce.theta_fo()
    );
    assert!(
        (star - ce.theta_star()).abs() < 1e-10,
        "{star} vs {}",
        ce.theta_star()
    );
    assert!(
        (ce.theta_fo() - 5.759).abs() < 1e-3,
        "θ_FO = {}",
        ce.theta_fo()
    );
    assert!(
        (ce.theta_star() - 2.840).abs() < 1e-3,
        "θ* = {}",
        ce.theta_star()
    );
    // |F'(θ_FO)| = √(2D) ≈ 0.346 by construction of b_2.
    let g = ce.hypergradient(ce.theta_fo()).abs();
    assert!((g - 0.12f64.sqrt()).abs() < 1e-12, "{g}");
    assert!((g - 0.346).abs() < 1e-3);
}

#[test]
fn quadratic_zone_formulas() {
    // In the quadratic zone φ_r − c = p(θ − c): g_FO = a p (θ − c), g_exact = a p² (θ − c).
    let ce = Counterexample::paper();
    // θ between the centres keeps |φ_j − c_i| ≤ |c_1 − c_2| < A for both tasks.
    for theta in [0.5, 4.0, 9.0, 11.0] {
        for i in 0..2 {
            let (a, p, c) = (ce.a[i], ce.p(i), ce.c(i));
            let phi_r = *ce.trajectory(i, theta).last().unwrap();
            assert!((phi_r - c - p * (theta - c)).abs() < 1e-10);
            assert!((ce.task_fo_gradient(i, theta) - a * p * (theta - c)).abs() < 1e-10);
            assert!((ce.task_hypergradient(i, theta) - a * p * p * (theta - c)).abs() < 1e-10);
        }
    }
}

#[test]
fn derivatives_match_central_differences_in_every_zone() {
    let ce = Counterexample::paper();
    let big_a = ce.big_a;
    let h = 1e-5;
    for i in 0..2 {
        let c = ce.c(i);
        // Points in the three zones on both sides of the centre (away from boundaries).
        for z in [0.3, big_a - 0.5, big_a + 0.2, big_a + 0.7, big_a + 3.0] {
            for phi in [c + z, c - z] {
                let d1 = (ce.f(i, phi + h) - ce.f(i, phi - h)) / (2.0 * h);
                let d2 = (ce.df(i, phi + h) - ce.df(i, phi - h)) / (2.0 * h);
                assert!(
                    (ce.df(i, phi) - d1).abs() < 1e-7,
                    "f' at φ={phi}: {} vs {d1}",
                    ce.df(i, phi)
                );
                assert!(
                    (ce.d2f(i, phi) - d2).abs() < 1e-7,
                    "f'' at φ={phi}: {} vs {d2}",
                    ce.d2f(i, phi)
                );
            }
        }
        // C²: value, slope and curvature are continuous across z = A and z = A + 1.
        for zb in [big_a, big_a + 1.0] {
            let (l, r) = (c + zb - 1e-9, c + zb + 1e-9);
            assert!((ce.f(i, l) - ce.f(i, r)).abs() < 1e-7);
            assert!((ce.df(i, l) - ce.df(i, r)).abs() < 1e-7);
            assert!((ce.d2f(i, l) - ce.d2f(i, r)).abs() < 1e-7);
        }
    }
}

#[test]
fn hypergradient_matches_central_difference_of_f_everywhere() {
    // θ ranges over the quadratic zone and far outside it (the SGD start is
    // θ_0 ~ U(−10, 30)), so steps cross into the cubic and linear zones.
    for ce in [
        Counterexample::paper(),
        Counterexample::from_d([1.0, 3.0], 2.0, 0.1, 4, 0.2),
    ] {
        for k in 0..60 {
            let theta = -40.0 + k as f64 * 1.7;
            let h = 1e-6;
            let num = (ce.loss(theta + h) - ce.loss(theta - h)) / (2.0 * h);
            let ana = ce.hypergradient(theta);
            assert!(
                (ana - num).abs() < 1e-6 * (1.0 + num.abs()),
                "θ = {theta}: F' {ana} vs {num}"
            );
        }
    }
}

#[test]
fn every_constant_is_settable() {
    let mut ce = Counterexample::from_d([1.0, 2.0], 1.0, 0.1, 3, 0.05);
    assert_eq!((ce.r, ce.alpha, ce.b[0]), (3, 0.05, 1.0));
    assert!((ce.big_a - ((1.0 - ce.b[1] / 2.0).abs() + 1.0)).abs() < 1e-12);
    ce.big_a = 0.5; // fields are public: a narrow quadratic zone
    ce.r = 2;
    let theta = 4.0;
    let num = (ce.loss(theta + 1e-6) - ce.loss(theta - 1e-6)) / 2e-6;
    assert!((ce.hypergradient(theta) - num).abs() < 1e-6);
}

/// Task i's loss on the tape, in the relu form (`piecewise = false`) or the
/// literal three-zone `where_` form (`piecewise = true`).
struct TaskLoss<'a>(&'a Counterexample, usize, bool);

impl hvp::Objective<f64> for TaskLoss<'_> {
    fn eval<'t, T: Real<Base = f64>>(&self, _tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        if self.2 {
            self.0.f_tape_piecewise(self.1, x[0]).sum()
        } else {
            self.0.f_tape(self.1, x[0]).sum()
        }
    }
}

#[test]
fn tape_version_matches_closed_forms_including_second_derivative() {
    let ce = Counterexample::paper();
    for i in 0..2 {
        let c = ce.c(i);
        for z in [
            0.0,
            0.4,
            ce.big_a - 0.3,
            ce.big_a + 0.3,
            ce.big_a + 0.9,
            ce.big_a + 4.0,
        ] {
            for (phi, piecewise) in [(c + z, false), (c - z, false), (c + z, true), (c - z, true)] {
                let x = [Tensor::vector(vec![phi])];
                let out = hvp::hvp(
                    &TaskLoss(&ce, i, piecewise),
                    &x,
                    &[Tensor::vector(vec![1.0])],
                );
                assert!(
                    (out.value - ce.f(i, phi)).abs() < 1e-9 * (1.0 + ce.f(i, phi).abs()),
                    "f at {phi}"
                );
                assert!(
                    (out.grad[0].data()[0] - ce.df(i, phi)).abs() < 1e-10,
                    "f' at {phi}"
                );
                assert!(
                    (out.hv[0].data()[0] - ce.d2f(i, phi)).abs() < 1e-10,
                    "f'' at {phi}"
                );
            }
        }
    }
    // Works on an f32 tape too.
    let t = Tape::<f32>::new();
    let v = t.var(&Tensor::vector(vec![1.0f32]));
    let y = ce.f_tape(0, v).sum();
    t.backward(y);
    assert!((t.grad(v).data()[0] as f64 - ce.df(0, 1.0)).abs() < 1e-5);
}
