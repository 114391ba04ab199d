//! The single-loop solvers (SOBA, AmIGO, F2SA, BOME) on the benchmark
//! problems: convergence to the quadratic problem's closed-form solution, each
//! step's direction against its closed form, SOBA's/AmIGO's products against
//! the exact estimator's, bad input, checkpoint/resume and thread counts.

use blo::problems::{HyperCleaning, L2Logreg, Quadratic};
use blo::solvers::f2sa::PenaltyObjective;
use blo::solvers::{
    inner_products, load_state, save_state, Amigo, Bome, F2sa, Penalty, Soba, Solver, SolverState,
    SolverWorkspace, StepSize, Work,
};
use blo::{BloError, Estimator, Exact, InnerLoop, Policy, Problem};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tape::{Real, Tape, Tensor, Var};

fn c(x: f64) -> StepSize {
    StepSize::constant(x)
}

fn run<S: Solver<f64>, P: Problem<f64, Task = ()>>(
    s: &S,
    p: &P,
    theta0: Vec<Tensor<f64>>,
    steps: u64,
) -> SolverState<f64> {
    let mut ws = SolverWorkspace::new();
    let mut st = s.init(&mut ws, p, &(), theta0).unwrap();
    for _ in 0..steps {
        s.step(&mut ws, p, &(), &mut st).unwrap();
    }
    st
}

/// max_i |a_i − b_i| / max(‖b‖_∞, 1e-300).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0_f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0_f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn randn(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

fn quad(seed: u64) -> Quadratic {
    Quadratic::generate(5, 8, seed).unwrap()
}

// ---------------------------------------------------------------------------
// Convergence to the closed form θ* = −S⁻¹(Kᵀ(C k₀ + c) + d).

/// SOBA's and AmIGO's fixed point is exact (D_φ = 0 ⇒ φ = φ*, D_v = 0 ⇒
/// v = v*, D_θ = 0 ⇒ ∇h = 0) and the deterministic iteration contracts
/// linearly, so θ reaches θ* to rounding: bound 1e-10 after 600 SOBA steps
/// (1800 gradient-equivalents) and 300 AmIGO steps (N_φ = N_v = 5).
#[test]
fn soba_and_amigo_converge_to_the_closed_form() {
    for seed in 0..3 {
        let q = quad(seed);
        let soba = Soba::new(c(0.3), c(0.1)).unwrap();
        let d = q.distance_to_solution(&run(&soba, &q, q.theta0(), 600).theta);
        assert!(d < 1e-10, "SOBA seed {seed}: ‖θ − θ*‖ = {d:e}");
        let amigo = Amigo::new(c(0.3), 0.3, 5, 5, c(0.1)).unwrap();
        let d = q.distance_to_solution(&run(&amigo, &q, q.theta0(), 300).theta);
        assert!(d < 1e-10, "AmIGO seed {seed}: ‖θ − θ*‖ = {d:e}");
    }
}

/// F2SA minimises the penalised value function h_λ, whose minimiser is
/// O(1/λ) from θ*: with λ capped at 10³ the bound is 10/λ_max = 1e-2 after
/// 3000 steps, and capping at 10⁴ instead must shrink the distance by more
/// than 5× (the 1/λ law; exactly 10× asymptotically).
#[test]
fn f2sa_converges_at_the_rate_of_its_penalty() {
    for seed in 0..3 {
        let q = quad(seed);
        let f = |cap: f64, growth: f64| {
            let s = F2sa::new(
                c(0.3),
                c(0.3),
                c(0.1),
                Penalty::new(1.0, growth, cap).unwrap(),
            )
            .unwrap();
            q.distance_to_solution(&run(&s, &q, q.theta0(), 3000).theta)
        };
        let (d3, d4) = (f(1e3, 1.0), f(1e4, 10.0));
        assert!(
            d3 < 1e-2,
            "F2SA seed {seed}: λ_max = 1e3: ‖θ − θ*‖ = {d3:e}"
        );
        assert!(
            d4 < d3 / 5.0,
            "F2SA seed {seed}: λ_max 1e3 → 1e4: {d3:e} → {d4:e}"
        );
    }
}

/// BOME with a constant step γ settles in an O(γ) neighbourhood of θ* (the
/// barrier direction never vanishes away from the constraint's degenerate
/// KKT point): with T = 50 inner steps (ŷ ≈ y* to 1e-5), γ = 0.01, after 5000
/// steps ‖θ − θ*‖ < 0.02‖θ*‖, and γ = 0.03 is at least twice as far.
#[test]
fn bome_converges_to_a_step_size_neighbourhood() {
    let q = quad(0);
    let norm_star = q.theta_star().iter().map(|x| x * x).sum::<f64>().sqrt();
    let f = |g: f64| {
        let s = Bome::new(c(0.3), 50, 0.5, c(g)).unwrap();
        q.distance_to_solution(&run(&s, &q, q.theta0(), 5000).theta)
    };
    let (d1, d3) = (f(0.01), f(0.03));
    assert!(
        d1 < 0.02 * norm_star,
        "BOME γ = 0.01: ‖θ − θ*‖ = {d1:e}, ‖θ*‖ = {norm_star}"
    );
    assert!(
        d3 > 2.0 * d1,
        "BOME: γ = 0.03 gives {d3:e}, γ = 0.01 gives {d1:e}"
    );
}

// ---------------------------------------------------------------------------
// One step against its closed form, from a random state.

fn random_state(q: &Quadratic, seed: u64) -> SolverState<f64> {
    let (n, p) = q.dims();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut s = SolverState::new(
        vec![Tensor::vector(randn(&mut r, n))],
        vec![Tensor::vector(randn(&mut r, p))],
    );
    s.v = vec![Tensor::vector(randn(&mut r, p))];
    s.z = vec![Tensor::vector(randn(&mut r, p))];
    s
}

fn axpy(a: &[f64], s: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
}

#[test]
fn soba_step_matches_the_closed_form() {
    let q = quad(1);
    let (rho, gamma) = (0.3, 0.1);
    let soba = Soba::new(c(rho), c(gamma)).unwrap();
    let s0 = random_state(&q, 7);
    let (th, ph, v) = (s0.theta[0].data(), s0.phi[0].data(), s0.v[0].data());
    let mut s = s0.clone();
    let step = soba
        .step(&mut SolverWorkspace::new(), &q, &(), &mut s)
        .unwrap();
    // D_θ = D x + d + Bᵀ v; D_φ = A y + B x + a; D_v = A v + C y + c.
    let d_theta = axpy(&q.grad_outer_theta(th), 1.0, &q.mixed(v));
    let d_v = axpy(&q.hvp(v), 1.0, &q.grad_outer_phi(ph));
    assert!(rel(step.direction[0].data(), &d_theta) < 1e-12, "D_θ");
    assert!(
        rel(s.phi[0].data(), &axpy(ph, -rho, &q.grad_inner_phi(th, ph))) < 1e-12,
        "φ"
    );
    assert!(rel(s.v[0].data(), &axpy(v, -rho, &d_v)) < 1e-12, "v");
    assert!(
        rel(s.theta[0].data(), &axpy(th, -gamma, &d_theta)) < 1e-12,
        "θ"
    );
    assert_eq!(
        step.work,
        Work {
            gradients: 1,
            hvps: 1
        }
    );
    assert_eq!((s.iteration, s.samples), (1, 1));
}

#[test]
fn amigo_step_matches_the_closed_form() {
    let q = quad(2);
    let (rho, eta, gamma, n_phi, n_v) = (0.3, 0.2, 0.1, 4, 3);
    let amigo = Amigo::new(c(rho), eta, n_phi, n_v, c(gamma)).unwrap();
    let s0 = random_state(&q, 8);
    let th = s0.theta[0].data();
    let mut s = s0.clone();
    let step = amigo
        .step(&mut SolverWorkspace::new(), &q, &(), &mut s)
        .unwrap();
    let mut y = s0.phi[0].data().to_vec();
    for _ in 0..n_phi {
        y = axpy(&y, -rho, &q.grad_inner_phi(th, &y));
    }
    let b = q.grad_outer_phi(&y);
    let mut v = s0.v[0].data().to_vec();
    for _ in 0..n_v {
        v = axpy(&v, -eta, &axpy(&q.hvp(&v), 1.0, &b));
    }
    let d_theta = axpy(&q.grad_outer_theta(th), 1.0, &q.mixed(&v));
    assert!(rel(s.phi[0].data(), &y) < 1e-12, "φ");
    assert!(rel(s.v[0].data(), &v) < 1e-12, "v");
    assert!(rel(step.direction[0].data(), &d_theta) < 1e-12, "D_θ");
    assert!(
        rel(s.theta[0].data(), &axpy(th, -gamma, &d_theta)) < 1e-12,
        "θ"
    );
    assert_eq!(
        step.work,
        Work {
            gradients: n_phi as u64 + 1,
            hvps: n_v as u64 + 1
        }
    );
}

#[test]
fn f2sa_step_matches_the_closed_form() {
    let q = quad(3);
    let (rho_y, rho_z, gamma) = (0.3, 0.2, 0.1);
    let pen = Penalty::new(2.0, 3.0, 1e3).unwrap();
    let f2sa = F2sa::new(c(rho_y), c(rho_z), c(gamma), pen).unwrap();
    let mut s0 = random_state(&q, 9);
    s0.iteration = 4; // λ_4 = 2 + 3·4 = 14
    let lambda = 14.0;
    let (th, y, z) = (s0.theta[0].data(), s0.phi[0].data(), s0.z[0].data());
    let mut s = s0.clone();
    let step = f2sa
        .step(&mut SolverWorkspace::new(), &q, &(), &mut s)
        .unwrap();
    // D_θ = ∇_x f + λ(Bᵀy − Bᵀz).
    let d_theta = axpy(
        &q.grad_outer_theta(th),
        lambda,
        &axpy(&q.grad_inner_theta(y), -1.0, &q.grad_inner_theta(z)),
    );
    let d_y = axpy(&q.grad_outer_phi(y), lambda, &q.grad_inner_phi(th, y));
    assert!(rel(step.direction[0].data(), &d_theta) < 1e-12, "D_θ");
    assert!(
        rel(s.phi[0].data(), &axpy(y, -rho_y / lambda, &d_y)) < 1e-12,
        "y"
    );
    assert!(
        rel(s.z[0].data(), &axpy(z, -rho_z, &q.grad_inner_phi(th, z))) < 1e-12,
        "z"
    );
    assert!(
        rel(s.theta[0].data(), &axpy(th, -gamma, &d_theta)) < 1e-12,
        "θ"
    );
}

/// A problem with `P`'s losses but the default [`Problem::inner_loss_gap`]
/// (two [`Problem::inner_loss`] recordings).
struct TwoRecordings<P>(P);

impl<P: Problem<f64, Task = ()>> Problem<f64> for TwoRecordings<P> {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        self.0.inner_loop()
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        task: &(),
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.0.inner_loss(tape, task, j, theta, phi)
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        task: &(),
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.0.outer_loss(tape, task, theta, phi)
    }
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        task: &(),
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        self.0.initial_state(tape, task, theta)
    }
}

/// F2SA's penalty L_λ and its three gradients at (θ, y, z) = `x`, index j.
fn penalty<P: Problem<f64, Task = ()>>(p: &P, j: usize, x: &[Tensor<f64>]) -> Vec<Vec<f64>> {
    let obj = PenaltyObjective::new(p, &(), j, 7.5, 1, 1);
    let (l, g) = hvp::value_and_grad(&obj, x);
    let mut out = vec![vec![l]];
    out.extend(g.iter().map(|t| t.data().to_vec()));
    out
}

/// The problems' one-recording gaps g(θ, y) − g(θ, z) against the default's
/// two recordings, through F2SA's penalty (value and the gradients over θ, y
/// and z) at random points, to rounding (B x shared; one mean of the
/// differences), on each minibatch j.
#[test]
fn inner_loss_gaps_equal_two_inner_losses() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let q = quad(4);
    let (n, p) = q.dims();
    let x: Vec<Tensor<f64>> = [n, p, p]
        .iter()
        .map(|&k| Tensor::vector(randn(&mut rng, k)))
        .collect();
    let close = |one: Vec<Vec<f64>>, two: Vec<Vec<f64>>, what: &str| {
        for (a, b) in one.iter().zip(&two) {
            assert!(rel(a, b) < 1e-13, "{what}: {a:?} vs {b:?}");
        }
    };
    let two = TwoRecordings(q.clone());
    close(penalty(&q, 1, &x), penalty(&two, 1, &x), "quadratic");
    let lr = L2Logreg::generate(6, 3, 40, 30, 4, 1).unwrap();
    let x: Vec<Tensor<f64>> = (0..3).map(|_| Tensor::vector(randn(&mut rng, 6))).collect();
    let two = TwoRecordings(lr.clone());
    for j in 1..=4 {
        close(
            penalty(&lr, j, &x),
            penalty(&two, j, &x),
            &format!("logreg, j = {j}"),
        );
    }
}

#[test]
fn bome_step_matches_the_closed_form() {
    let q = quad(4);
    let (alpha, t, eta, gamma) = (0.3, 7, 0.5, 0.1);
    let bome = Bome::new(c(alpha), t, eta, c(gamma)).unwrap();
    let s0 = random_state(&q, 10);
    let (th, y) = (s0.theta[0].data(), s0.phi[0].data());
    let mut s = s0.clone();
    let step = bome
        .step(&mut SolverWorkspace::new(), &q, &(), &mut s)
        .unwrap();
    let mut yh = y.to_vec();
    for _ in 0..t {
        yh = axpy(&yh, -alpha, &q.grad_inner_phi(th, &yh));
    }
    let psi_x = axpy(&q.grad_inner_theta(y), -1.0, &q.grad_inner_theta(&yh));
    let psi_y = q.grad_inner_phi(th, y);
    let (f_x, f_y) = (q.grad_outer_theta(th), q.grad_outer_phi(y));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let psi2 = dot(&psi_x, &psi_x) + dot(&psi_y, &psi_y);
    let lambda = ((eta * psi2 - dot(&f_x, &psi_x) - dot(&f_y, &psi_y)) / psi2).max(0.0);
    assert!(
        lambda > 0.0,
        "the state is chosen so that the barrier is active"
    );
    let (d_x, d_y) = (axpy(&f_x, lambda, &psi_x), axpy(&f_y, lambda, &psi_y));
    assert!(rel(step.direction[0].data(), &d_x) < 1e-12, "D_θ");
    assert!(rel(s.theta[0].data(), &axpy(th, -gamma, &d_x)) < 1e-12, "θ");
    assert!(rel(s.phi[0].data(), &axpy(y, -gamma, &d_y)) < 1e-12, "φ");
    assert_eq!(
        step.work,
        Work {
            gradients: t as u64 + 3,
            hvps: 0
        }
    );
}

/// The barrier multiplier: ∇f already decreasing ψ fast enough (⟨∇f, ∇ψ⟩ ≥
/// η‖∇ψ‖²) gives λ = 0; against ∇ψ it is η + |⟨∇f, ∇ψ⟩|/‖∇ψ‖²; ∇ψ = 0 gives 0.
#[test]
fn bome_multiplier_is_the_dynamic_barrier() {
    let bome = Bome::new(c(0.1), 1, 0.5, c(0.1)).unwrap();
    let t = |x: &[f64]| vec![Tensor::vector(x.to_vec())];
    let (psi_x, psi_y) = (t(&[1.0, 0.0]), t(&[0.0, 2.0])); // ‖∇ψ‖² = 5
    let along = (t(&[3.0, 0.0]), t(&[0.0, 6.0])); // ⟨∇f, ∇ψ⟩ = 15
    assert_eq!(bome.multiplier((&along.0, &along.1), (&psi_x, &psi_y)), 0.0);
    let against = (t(&[-1.0, 0.0]), t(&[0.0, -2.0])); // ⟨∇f, ∇ψ⟩ = −5
    assert_eq!(
        bome.multiplier((&against.0, &against.1), (&psi_x, &psi_y)),
        1.5
    );
    let zero = (t(&[0.0, 0.0]), t(&[0.0, 0.0]));
    assert_eq!(
        bome.multiplier((&against.0, &against.1), (&zero.0, &zero.1)),
        0.0
    );
}

// ---------------------------------------------------------------------------
// SOBA's and AmIGO's products against the exact estimator's.

/// The base problem with φ_0 appended to θ (Φ_0(θ, φ_0) = φ_0) and one SGD
/// inner step of size α. The exact hypergradient is then, with
/// φ_1 = φ_0 − α∇_φ g(θ, φ_0) and u = ∇_φ f(θ, φ_1),
/// g_θ = ∇_θ f(θ, φ_1) − M(θ, φ_0)(αu),  g_{φ_0} = u − H(θ, φ_0)(αu):
/// the mixed product and the HVP at (θ, φ_0) along u, from the adjoint sweep.
struct Probe<'a, P> {
    base: &'a P,
    inner: InnerLoop,
    n_theta: usize,
}

impl<P: Problem<f64, Task = ()>> Problem<f64> for Probe<'_, P> {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        j: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.base.inner_loss(t, &(), j, &theta[..self.n_theta], phi)
    }
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.base.outer_loss(t, &(), &theta[..self.n_theta], phi)
    }
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        _: &'t Tape<T>,
        _: &(),
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        theta[self.n_theta..].to_vec()
    }
}

fn products_agree_with_exact<P: Problem<f64, Task = ()>>(
    base: &P,
    theta: Vec<Tensor<f64>>,
    phi0: Vec<Tensor<f64>>,
) {
    let alpha = 0.5;
    let nt = theta.len();
    let probe = Probe {
        base,
        inner: InnerLoop::sgd(1, alpha).unwrap(),
        n_theta: nt,
    };
    let mut theta_w = theta.clone();
    theta_w.extend(phi0.iter().cloned());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let g = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&probe, &(), &theta_w, &mut rng)
        .unwrap()
        .grad;
    // φ_1 and u = ∇_φ f(θ, φ_1), ∇_θ f(θ, φ_1).
    let mut iws = blo::InnerWorkspace::new();
    let mut ws = SolverWorkspace::new();
    let mut work = Work::default();
    let p0 = inner_products(&mut ws, base, &(), 1, &theta, &phi0, &phi0, &mut work).unwrap();
    let phi1: Vec<Tensor<f64>> = phi0
        .iter()
        .zip(&p0.grad_phi)
        .map(|(p, g)| {
            Tensor::new(
                p.shape(),
                p.data()
                    .iter()
                    .zip(g.data())
                    .map(|(a, b)| a - alpha * b)
                    .collect(),
            )
        })
        .collect();
    let og = iws.outer_grad(base, &(), &theta, &phi1).unwrap();
    let u = og.phi;
    // The solvers' pass at (θ, φ_0) along v = u.
    let p = inner_products(&mut ws, base, &(), 1, &theta, &phi0, &u, &mut work).unwrap();
    let flat = |ts: &[Tensor<f64>]| hvp::flatten(ts);
    let mv_exact: Vec<f64> = flat(&og.theta)
        .iter()
        .zip(flat(&g[..nt]))
        .map(|(a, b)| (a - b) / alpha)
        .collect();
    let hv_exact: Vec<f64> = flat(&u)
        .iter()
        .zip(flat(&g[nt..]))
        .map(|(a, b)| (a - b) / alpha)
        .collect();
    let (em, eh) = (rel(&flat(&p.mv), &mv_exact), rel(&flat(&p.hv), &hv_exact));
    assert!(em < 1e-12, "mixed product: relative difference {em:e}");
    assert!(eh < 1e-12, "HVP: relative difference {eh:e}");
    assert!(
        flat(&p.mv).iter().any(|x| x.abs() > 1e-3),
        "a non-trivial mixed product"
    );
}

#[test]
fn soba_and_amigo_products_agree_with_the_exact_estimator() {
    let q = quad(5);
    let s = random_state(&q, 11);
    products_agree_with_exact(&q, s.theta, s.phi);
    let lr = L2Logreg::generate(6, 3, 40, 30, 1, 2).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let theta = vec![Tensor::vector(
        randn(&mut r, 6).iter().map(|x| 0.5 * x).collect(),
    )];
    let phi = vec![Tensor::vector(randn(&mut r, 6))];
    products_agree_with_exact(&lr, theta, phi);
    let hc = HyperCleaning::generate(4, 3, 12, 10, 0.5, 1, 3).unwrap();
    let theta = vec![Tensor::vector(randn(&mut r, 12))];
    let phi = vec![Tensor::new([4, 3], randn(&mut r, 12))];
    products_agree_with_exact(&hc, theta, phi);
}

// ---------------------------------------------------------------------------
// Bad input.

fn is_invalid<T: std::fmt::Debug>(r: Result<T, BloError>, name: &str) {
    match r {
        Err(BloError::InvalidHyperparameter { name: n, .. }) => {
            assert!(n.contains(name), "{n} should name {name}")
        }
        other => panic!("expected InvalidHyperparameter naming {name}, got {other:?}"),
    }
}

#[test]
fn bad_hyperparameters_are_typed_errors() {
    for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        is_invalid(Soba::new(c(bad), c(0.1)), "SOBA inner_lr");
        is_invalid(Soba::new(c(0.1), c(bad)), "SOBA outer_lr");
        is_invalid(Amigo::new(c(bad), 0.1, 1, 1, c(0.1)), "AmIGO inner_lr");
        is_invalid(Amigo::new(c(0.1), bad, 1, 1, c(0.1)), "AmIGO linear_lr");
        is_invalid(Amigo::new(c(0.1), 0.1, 1, 1, c(bad)), "AmIGO outer_lr");
        let pen = Penalty::new(1.0, 1.0, 10.0).unwrap();
        is_invalid(F2sa::new(c(bad), c(0.1), c(0.1), pen), "F2SA inner_lr");
        is_invalid(F2sa::new(c(0.1), c(bad), c(0.1), pen), "F2SA z_lr");
        is_invalid(F2sa::new(c(0.1), c(0.1), c(bad), pen), "F2SA outer_lr");
        is_invalid(Bome::new(c(bad), 1, 0.5, c(0.1)), "BOME inner_lr");
        is_invalid(Bome::new(c(0.1), 1, bad, c(0.1)), "BOME eta");
        is_invalid(Bome::new(c(0.1), 1, 0.5, c(bad)), "BOME outer_lr");
        is_invalid(Penalty::new(bad, 1.0, 10.0), "F2SA lambda0");
    }
    is_invalid(
        Soba::new(StepSize::decaying(0.1, 1.5), c(0.1)),
        "SOBA inner_lr",
    );
    is_invalid(Amigo::new(c(0.1), 0.1, 0, 1, c(0.1)), "AmIGO inner_steps");
    is_invalid(Amigo::new(c(0.1), 0.1, 1, 0, c(0.1)), "AmIGO linear_steps");
    is_invalid(Bome::new(c(0.1), 0, 0.5, c(0.1)), "BOME inner_steps (T)");
    // λ schedules that do not increase: no growth, a negative growth, a cap at (or below) λ_0.
    is_invalid(Penalty::new(1.0, 0.0, 10.0), "F2SA lambda growth");
    is_invalid(Penalty::new(1.0, -1.0, 10.0), "F2SA lambda growth");
    is_invalid(Penalty::new(1.0, 1.0, 1.0), "F2SA lambda_max");
    is_invalid(Penalty::new(1.0, 1.0, 0.5), "F2SA lambda_max");
    is_invalid(Penalty::new(1.0, 1.0, f64::NAN), "F2SA lambda_max");
    // A struct literal bypassing the constructor is still caught by F2sa::new.
    let flat = Penalty {
        lambda0: 1.0,
        growth: 0.0,
        lambda_max: f64::INFINITY,
    };
    is_invalid(
        F2sa::new(c(0.1), c(0.1), c(0.1), flat),
        "F2SA lambda growth",
    );
    assert!(HyperCleaning::generate(4, 3, 12, 10, -0.1, 1, 0).is_err());
}

// ---------------------------------------------------------------------------
// Checkpoint and resume; thread counts.

fn bits(s: &SolverState<f64>) -> Vec<u64> {
    s.theta
        .iter()
        .chain(&s.phi)
        .chain(&s.v)
        .chain(&s.z)
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

fn resume_equals_uninterrupted<S: Solver<f64>, P: Problem<f64, Task = ()>>(
    s: &S,
    p: &P,
    theta0: Vec<Tensor<f64>>,
    dir: &std::path::Path,
) {
    let whole = run(s, p, theta0.clone(), 13);
    let first = run(s, p, theta0, 7);
    let path = dir.join(format!("{}.json", s.name()));
    save_state(&path, s, &first).unwrap();
    let mut st: SolverState<f64> = load_state(&path, s).unwrap();
    let mut ws = SolverWorkspace::new(); // a fresh process: new tapes
    for _ in 0..6 {
        s.step(&mut ws, p, &(), &mut st).unwrap();
    }
    assert_eq!(
        bits(&st),
        bits(&whole),
        "{}: resumed ≠ uninterrupted",
        s.name()
    );
    assert_eq!(
        (st.iteration, st.samples, st.work),
        (whole.iteration, whole.samples, whole.work)
    );
}

#[test]
fn resume_from_a_checkpoint_equals_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("blo-solvers-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Four minibatches, so the drawn inner-loss indices matter.
    let p = L2Logreg::generate(6, 3, 40, 30, 4, 1)
        .unwrap()
        .with_inner_loop(InnerLoop::sgd(4, 0.5).unwrap());
    resume_equals_uninterrupted(
        &Soba::new(StepSize::decaying(0.5, 0.5), c(0.2)).unwrap(),
        &p,
        p.theta0(),
        &dir,
    );
    resume_equals_uninterrupted(
        &Amigo::new(c(0.5), 0.5, 3, 2, c(0.2)).unwrap(),
        &p,
        p.theta0(),
        &dir,
    );
    let pen = Penalty::new(1.0, 1.0, 100.0).unwrap();
    resume_equals_uninterrupted(
        &F2sa::new(c(0.5), c(0.5), c(0.2), pen).unwrap(),
        &p,
        p.theta0(),
        &dir,
    );
    resume_equals_uninterrupted(
        &Bome::new(c(0.5), 3, 0.5, c(0.2)).unwrap(),
        &p,
        p.theta0(),
        &dir,
    );

    // Another method's or another setting's checkpoint is refused, naming the field.
    let soba = Soba::new(c(0.5), c(0.2)).unwrap();
    let path = dir.join("SOBA.json");
    save_state(&path, &soba, &run(&soba, &p, p.theta0(), 2)).unwrap();
    let other = Soba::new(c(0.5), c(0.3)).unwrap();
    match load_state::<f64, _>(&path, &other) {
        Err(BloError::SettingsMismatch { field, .. }) => assert_eq!(field, "settings"),
        e => panic!("expected SettingsMismatch, got {e:?}"),
    }
    let bome = Bome::new(c(0.5), 3, 0.5, c(0.2)).unwrap();
    match load_state::<f64, _>(&path, &bome) {
        Err(BloError::SettingsMismatch { field, .. }) => assert_eq!(field, "method"),
        e => panic!("expected SettingsMismatch, got {e:?}"),
    }
    // f32 from an f64 file, and a truncated file: Corrupt, naming the file.
    match load_state::<f32, _>(&path, &soba) {
        Err(BloError::Corrupt { path: p, reason }) => {
            assert!(p == path && reason.contains("f64"), "{reason}")
        }
        e => panic!("expected Corrupt, got {e:?}"),
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load_state::<f64, _>(&path, &soba),
        Err(BloError::Corrupt { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_are_bit_identical_for_any_thread_count() {
    let p = HyperCleaning::generate(10, 4, 64, 40, 0.7, 2, 5).unwrap();
    let at = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let soba = Soba::new(c(0.5), c(1.0)).unwrap();
            let a = bits(&run(&soba, &p, p.theta0(), 10));
            let amigo = Amigo::new(c(0.5), 0.5, 2, 2, c(1.0)).unwrap();
            let b = bits(&run(&amigo, &p, p.theta0(), 5));
            (a, b)
        })
    };
    assert_eq!(at(1), at(4));
}

/// A diverging run stops with a typed error at the first non-finite value,
/// and the failing step leaves the state as it was (no NaN is committed).
#[test]
fn divergence_is_a_typed_error_and_leaves_the_state_unchanged() {
    let q = quad(0);
    let soba = Soba::new(c(10.0), c(10.0)).unwrap(); // far beyond 2/λ_max(A)
    let mut ws = SolverWorkspace::new();
    let mut st = soba.init(&mut ws, &q, &(), q.theta0()).unwrap();
    for k in 0..10_000 {
        let before = st.clone();
        match soba.step(&mut ws, &q, &(), &mut st) {
            Ok(_) => assert!(bits(&st).iter().all(|&b| f64::from_bits(b).is_finite())),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        BloError::NonFinite { .. } | BloError::NonFiniteEstimate { .. }
                    ),
                    "{e}"
                );
                assert_eq!(bits(&st), bits(&before), "step {k} changed the state");
                assert_eq!(
                    (st.iteration, st.samples, st.work),
                    (before.iteration, before.samples, before.work)
                );
                return;
            }
        }
    }
    panic!("SOBA with ρ = γ = 10 did not diverge");
}

/// An update that overflows although every loss and product was finite (a
/// step of 1e308 along a direction of order 100) is refused by the check of the updated variables.
#[test]
fn an_overflowing_update_is_refused() {
    let q = quad(0);
    type Step<'a> = Box<dyn Fn(&mut SolverState<f64>) -> Result<(), BloError> + 'a>;
    let solvers: [(&str, Step<'_>); 4] = [
        (
            "SOBA",
            Box::new(|s| {
                Soba::new(c(0.1), c(1e308))
                    .unwrap()
                    .step(&mut SolverWorkspace::new(), &q, &(), s)
                    .map(drop)
            }),
        ),
        (
            "AmIGO",
            Box::new(|s| {
                Amigo::new(c(0.1), 0.1, 1, 1, c(1e308))
                    .unwrap()
                    .step(&mut SolverWorkspace::new(), &q, &(), s)
                    .map(drop)
            }),
        ),
        (
            "F2SA",
            Box::new(|s| {
                let pen = Penalty::new(1.0, 1.0, 10.0).unwrap();
                F2sa::new(c(0.1), c(0.1), c(1e308), pen)
                    .unwrap()
                    .step(&mut SolverWorkspace::new(), &q, &(), s)
                    .map(drop)
            }),
        ),
        (
            "BOME",
            Box::new(|s| {
                Bome::new(c(0.1), 1, 0.5, c(1e308))
                    .unwrap()
                    .step(&mut SolverWorkspace::new(), &q, &(), s)
                    .map(drop)
            }),
        ),
    ];
    for (name, step) in solvers {
        let mut st = random_state(&q, 3);
        // ‖D_θ‖_∞ ≫ 1.8, so γ D_θ overflows.
        st.theta[0] = st.theta[0].map(|x| 100.0 * x);
        let before = st.clone();
        match step(&mut st) {
            Err(BloError::NonFiniteEstimate { outer_step: 0, .. }) => {}
            other => panic!("{name}: expected NonFiniteEstimate at outer step 0, got {other:?}"),
        }
        assert_eq!(bits(&st), bits(&before), "{name}: the state changed");
    }
}
