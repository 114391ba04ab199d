//! The paper's counterexample (docs/math.md §6): first-order SGD converges to a
//! point that is not stationary, UFO-BLO does not.
#![allow(clippy::needless_range_loop)]

mod common;
mod stats;

use blo::{Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, Ufo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::{Real, Tape, Tensor, Var};

/// Two tasks; task i's inner and outer loss are the C² "Huber-like" f_i
/// centred at c_i = b_i/a_i, with z = |φ − c_i|:
/// z ≤ A: a z²/2; A < z ≤ A+1: −a(z−A)³/6 + a(z−A)²/2 + aAz − aA²/2;
/// z > A+1: (a/2 + aA) z − a/6 − aA²/2 − aA/2.
struct Counter {
    inner: InnerLoop,
    a: [f64; 2],
    c: [f64; 2],
    big_a: f64,
}

impl Counter {
    fn paper() -> Self {
        let (r, alpha, a, b1, d): (usize, f64, [f64; 2], f64, f64) =
            (10, 0.1, [0.5, 1.5], 0.0, 0.06);
        let p = a.map(|ai: f64| (1.0 - alpha * ai).powi(r as i32));
        let b2 = 2.0 * (2.0 * d).sqrt()
            / ((a[0] * p[0] * p[0] + a[1] * p[1] * p[1]) * p[1] / (a[0] * p[0] + a[1] * p[1])
                - p[1] * p[1])
                .abs();
        let c = [b1 / a[0], b2 / a[1]];
        Counter {
            inner: InnerLoop::sgd(r, alpha).unwrap(),
            a,
            c,
            big_a: (c[0] - c[1]).abs() + 1.0,
        }
    }

    fn p(&self, i: usize) -> f64 {
        (1.0 - 0.1 * self.a[i]).powi(10)
    }

    fn f<'t, T: Real>(&self, i: usize, phi: Var<'t, T>) -> Var<'t, T> {
        let (a, big) = (self.a[i], self.big_a);
        let x = phi - self.c[i];
        let z = x.abs();
        let quad = x.square() * (a / 2.0);
        let s = z - big;
        let cubic =
            s.powf(3.0) * (-a / 6.0) + s.square() * (a / 2.0) + z * (a * big) - a * big * big / 2.0;
        let lin = z * (a / 2.0 + a * big) - (a / 6.0 + a * big * big / 2.0 + a * big / 2.0);
        let in_quad = big - z; // > 0 iff z < A
        let in_cubic = (big + 1.0) - z; // > 0 iff z < A + 1
        in_quad.where_(quad, in_cubic.where_(cubic, lin)).sum()
    }
}

impl Problem<f64> for Counter {
    type Task = usize;
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        i: &usize,
        _j: usize,
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.f(*i, phi[0])
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        _t: &'t Tape<T>,
        i: &usize,
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.f(*i, phi[0])
    }
}

/// F′(θ) = ½ Σ_i (exact hypergradient of task i).
fn f_prime(p: &Counter, theta: f64) -> f64 {
    let ex = Exact::new(Policy::StoreAll).unwrap();
    let th = [Tensor::vector(vec![theta])];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    (0..2)
        .map(|i| ex.estimate(p, &i, &th, &mut rng).unwrap().grad[0].data()[0])
        .sum::<f64>()
        / 2.0
}

fn sgd<E: Estimator<f64, Counter>>(p: &Counter, est: &E, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut theta = rng.gen_range(-10.0..30.0);
    for k in 0..10_000 {
        let task = usize::from(rng.gen_bool(0.5));
        let g = est
            .estimate(p, &task, &[Tensor::vector(vec![theta])], &mut rng)
            .unwrap();
        theta -= 10.0 / (k as f64 + 1.0) * g.grad[0].data()[0];
    }
    theta
}

#[test]
fn constants_match_the_paper() {
    let p = Counter::paper();
    assert!(
        (p.c[1] * p.a[1] - 17.395).abs() < 1e-3,
        "b_2 = {}",
        p.c[1] * p.a[1]
    );
    // In the quadratic zone g_exact = a p² (θ − c), so F′ vanishes at
    // θ* = Σ a p² c / Σ a p², and the tape agrees with that closed form.
    let w = |i: usize, k: i32| p.a[i] * p.p(i).powi(k);
    let theta_star = (w(0, 2) * p.c[0] + w(1, 2) * p.c[1]) / (w(0, 2) + w(1, 2));
    assert!((theta_star - 2.840).abs() < 1e-3, "{theta_star}");
    assert!(f_prime(&p, theta_star).abs() < 1e-12);
    let theta_fo = (w(0, 1) * p.c[0] + w(1, 1) * p.c[1]) / (w(0, 1) + w(1, 1));
    assert!((theta_fo - 5.759).abs() < 1e-3, "{theta_fo}");
    // |F′(θ_FO)| = √(2D) = √0.12 by the choice of b_2.
    assert!((f_prime(&p, theta_fo).abs() - 0.12f64.sqrt()).abs() < 1e-12);
    // Far outside the quadratic zone the tape loss matches the closed form.
    let t = Tape::<f64>::new();
    let z = 3.0 * p.big_a;
    let phi = t.var(&Tensor::vector(vec![p.c[1] + z]));
    let f = p.f(1, phi).item();
    let (a, big) = (p.a[1], p.big_a);
    let want = (a / 2.0 + a * big) * z - a / 6.0 - a * big * big / 2.0 - a * big / 2.0;
    assert!((f - want).abs() < 1e-9 * want.abs());
}

/// Seeds of the SGD test: all of 0..SEEDS, fixed before any run of this
/// version of the test (an earlier version used seeds 1..=6, chosen after
/// seed 0 missed a per-seed bound; every seed now counts).
const SEEDS: u64 = 20;

/// The end of both SGD runs from one seed: (θ_FO, F′(θ_FO), θ_UFO, F′(θ_UFO)).
fn ends(p: &Counter, seed: u64) -> (f64, f64, f64, f64) {
    let ufo = Ufo::fixed(0.1).unwrap();
    let fo = sgd(p, &FirstOrder::new(), seed);
    let uf = sgd(p, &ufo, seed);
    (fo, f_prime(p, fo), uf, f_prime(p, uf))
}

/// SGD with step 10/(k+1), 10,000 iterations, one task per iteration,
/// θ_0 ~ U(−10, 30), every seed in 0..20, FO and UFO (q = 0.1) from the same
/// seed. The criteria, and why (σ's from the linearised SGD: with η_k = c/k,
/// c = 10, mean-field slope μ and gradient variance s², the last iterate has
/// Var θ ≈ c²s²/((2cμ − 1)k), k = 10⁴):
///
/// * FO, every seed: |θ − θ_FO| < 0.45 and |F′(θ)| = √0.12 ± 0.06. Here
///   μ = ½Σ a_i p_i ≈ 0.30 and s² ≈ 3 give sd θ ≈ 0.08 (pilot seeds 100..139:
///   0.077), so 0.45 is > 5.5σ (two-sided 4·10⁻⁸ per seed); F″ ≈ 0.12 turns it
///   into ±0.054 on F′.
/// * UFO, over all seeds: the root mean square of F′(θ) is < 0.1. Near θ*,
///   μ = F″ ≈ 0.12 and s² ≈ 20 (the 1/q-weighted exact branch) give
///   sd F′ ≈ 0.045 (pilot seeds 100..139: 0.055, mean −0.003). With
///   σ ≤ 0.06, 20·RMS²/σ² ~ χ²_20 and P(RMS ≥ 0.1) ≤ P(χ²_20 ≥ 55.6) ≈ 4·10⁻⁵
///   (computed below). FO's RMS is ≈ 0.35.
/// * UFO, every seed: |F′(θ)| < 0.3 (> 5σ at σ = 0.06: ≤ 1.2·10⁻⁵ for all
///   20 seeds): no seed stalls at FO's plateau √0.12 ≈ 0.346.
///
/// Together the false-alarm rate is < 10⁻⁴.
#[test]
fn first_order_plateaus_and_ufo_reaches_the_stationary_point() {
    use rayon::prelude::*;
    let p = Counter::paper();
    let w = |i: usize| p.a[i] * p.p(i);
    let theta_fo = (w(0) * p.c[0] + w(1) * p.c[1]) / (w(0) + w(1));
    let runs: Vec<_> = (0..SEEDS).into_par_iter().map(|s| ends(&p, s)).collect();
    let plateau = 0.12f64.sqrt();
    for (seed, &(th_fo, g_fo, th_ufo, g_ufo)) in runs.iter().enumerate() {
        eprintln!(
            "seed {seed}: FO θ = {th_fo:.4} F′ = {g_fo:.4}; UFO θ = {th_ufo:.4} F′ = {g_ufo:.4}"
        );
        assert!(
            (th_fo - theta_fo).abs() < 0.45,
            "seed {seed}: FO ended at θ = {th_fo}, θ_FO = {theta_fo}"
        );
        assert!(
            (g_fo.abs() - plateau).abs() < 0.06,
            "seed {seed}: FO |F′| = {}",
            g_fo.abs()
        );
        assert!(
            g_ufo.abs() < 0.3,
            "seed {seed}: UFO ended at θ = {th_ufo} with |F′| = {}",
            g_ufo.abs()
        );
    }
    let rms = (runs.iter().map(|r| r.3 * r.3).sum::<f64>() / SEEDS as f64).sqrt();
    // The false-alarm bound quoted above: P(χ²_20 ≥ 20·(0.1/0.06)²).
    let fa = stats::chi2_sf_even(SEEDS as usize, SEEDS as f64 * (0.1f64 / 0.06).powi(2));
    assert!(fa < 5e-5, "{fa}");
    assert!(
        rms < 0.1,
        "UFO: root mean square F′ over seeds 0..{SEEDS} is {rms} (FO plateau {plateau})"
    );
}
