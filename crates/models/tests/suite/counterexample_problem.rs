//! The counterexample family as a `blo::Problem` (docs/math.md §6): a member
//! with b₁ ≠ 0 reaches its closed-form FO fixed point under first-order
//! gradient descent, and the exact hypergradient there has |F′| = √(2D).

use blo::{Estimator, Exact, FirstOrder, Policy};
use models::{Counterexample, CounterexampleProblem};
use rand::SeedableRng;
use tape::Tensor;

/// ½ Σ_i (estimator's task-i hypergradient at θ): the mean field over the two tasks.
fn mean_field<E: Estimator<f64, CounterexampleProblem>>(
    p: &CounterexampleProblem,
    est: &E,
    theta: f64,
) -> f64 {
    let th = [Tensor::vector(vec![theta])];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    (0..2)
        .map(|i| 0.5 * est.estimate(p, &i, &th, &mut rng).unwrap().grad[0].data()[0])
        .sum()
}

#[test]
fn a_member_with_b1_nonzero_has_its_closed_form_fo_fixed_point_and_gap() {
    // a = (0.8, 2.0), b₁ = −3, D = 0.1, r = 5, α = 0.1.
    let (a, b1, d, r, alpha) = ([0.8, 2.0], -3.0, 0.1, 5, 0.1);
    let p = CounterexampleProblem::new(Counterexample::from_d(a, b1, d, r, alpha)).unwrap();
    // Closed forms written out here from docs/math.md §6 (not through the struct):
    //   p_i = (1 − α a_i)^r: p₁ = 0.92⁵, p₂ = 0.8⁵;  c₁ = b₁/a₁ = −3.75
    //   Δ = 2√(2D)(a₁p₁ + a₂p₂) / (a₁a₂p₁p₂|p₁ − p₂|),  c₂ = c₁ + Δ
    //   θ_FO = (a₁p₁c₁ + a₂p₂c₂)/(a₁p₁ + a₂p₂) = c₁ + a₂p₂Δ/(a₁p₁ + a₂p₂)
    //   |F′(θ_FO)| = √(2D) = √0.2
    let (p1, p2) = (0.92f64.powi(5), 0.8f64.powi(5));
    let c1 = -3.75;
    let w = [a[0] * p1, a[1] * p2];
    let delta = 2.0 * (2.0 * d).sqrt() * (w[0] + w[1]) / (a[0] * a[1] * p1 * p2 * (p1 - p2).abs());
    let theta_fo = c1 + w[1] * delta / (w[0] + w[1]);
    assert!((p.ce().c(0) - c1).abs() < 1e-12);
    assert!(
        (p.ce().c(1) - (c1 + delta)).abs() < 1e-9,
        "{} vs {}",
        p.ce().c(1),
        c1 + delta
    );

    // Gradient descent on FO's mean field (through the library's FirstOrder
    // estimator on the problem) from far on each side converges to θ_FO.
    let fo = FirstOrder::new();
    for theta0 in [c1 - 2.0, c1 + delta + 2.0] {
        let mut theta: f64 = theta0;
        for _ in 0..3000 {
            theta -= 2.0 * mean_field(&p, &fo, theta);
        }
        assert!(
            (theta - theta_fo).abs() < 1e-9,
            "from {theta0}: θ = {theta}, closed form θ_FO = {theta_fo}"
        );
    }
    // The exact hypergradient there (the library's Exact estimator) is not 0:
    // |F′(θ_FO)| = √(2D), while FO's field vanishes.
    let exact = Exact::new(Policy::Recompute).unwrap();
    let g = mean_field(&p, &exact, theta_fo);
    assert!(
        (g.abs() - 0.2f64.sqrt()).abs() < 1e-9,
        "|F′(θ_FO)| = {}",
        g.abs()
    );
    assert!(mean_field(&p, &fo, theta_fo).abs() < 1e-9);
}

#[test]
fn the_problem_refuses_constants_without_an_inner_loop() {
    let mut ce = Counterexample::paper();
    ce.r = 0;
    let e = CounterexampleProblem::new(ce).unwrap_err();
    assert!(e.to_string().contains('r'), "{e}");
}
