//! Implicit differentiation: the general implicit-function-theorem estimator
//! against closed forms, and the errors an estimator returns instead of a
//! number when its assumptions do not hold.
#![allow(clippy::needless_range_loop)]

mod common;

use blo::{BloError, Estimator, Exact, Implicit, ImplicitSolver, InnerLoop, Policy, Problem};
use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Real, Tape, Tensor, Var};

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(11)
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    num.sqrt() / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// 5 features, 30 samples, θ = log per-feature L2 weights, φ_0 = 0.
fn ridge(steps: usize) -> Ridge {
    Ridge::new(5, 30, InnerLoop::sgd(steps, 0.3).unwrap())
}

const THETA: [f64; 5] = [0.2, -0.7, 0.5, -0.1, -1.0];

/// A + Λ with A = XᵀX/n and Λ = diag(e^θ) (row-major d × d).
fn ridge_hessian(p: &Ridge, theta: &[f64]) -> Vec<f64> {
    let d = p.dim;
    let (mut h, _) = p.gram();
    for k in 0..d {
        h[k * d + k] += theta[k].exp();
    }
    h
}

/// The implicit derivative of ridge regression in closed form.
///
/// φ*(θ) = (A + Λ)⁻¹ c with A = XᵀX/n, c = Xᵀy/n, Λ = diag(λ), λ_k = e^{θ_k}.
/// Differentiating (A + Λ)φ* = c in θ_m: (A + Λ) ∂φ*/∂θ_m + λ_m φ*_m e_m = 0, so
/// ∂φ*/∂θ_m = −λ_m φ*_m (A + Λ)⁻¹ e_m. With F = ½‖X_v φ* − y_v‖²/n_v and
/// ∇_φ F = X_vᵀ(X_v φ* − y_v)/n_v, and w = (A + Λ)⁻¹ ∇_φ F (A + Λ is symmetric):
/// dF/dθ_m = ∇_φ Fᵀ ∂φ*/∂θ_m = −λ_m φ*_m w_m.
fn ridge_implicit_derivative(p: &Ridge, theta: &[f64]) -> Vec<f64> {
    let (n, d) = (p.n, p.dim);
    let h = ridge_hessian(p, theta);
    let (_, c) = p.gram();
    let phi = solve(&h, 0.0, &c);
    let res: Vec<f64> = (0..n)
        .map(|i| (0..d).map(|k| p.xv[i * d + k] * phi[k]).sum::<f64>() - p.yv[i])
        .collect();
    let g_phi: Vec<f64> = (0..d)
        .map(|k| (0..n).map(|i| p.xv[i * d + k] * res[i]).sum::<f64>() / n as f64)
        .collect();
    let w = solve(&h, 0.0, &g_phi);
    (0..d).map(|m| -theta[m].exp() * phi[m] * w[m]).collect()
}

#[test]
fn ift_matches_the_closed_form_implicit_derivative_of_ridge() {
    let p = ridge(2000);
    let theta = [Tensor::vector(THETA.to_vec())];
    let want = ridge_implicit_derivative(&p, &THETA);
    let e = Implicit::ift()
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    let err = rel_err(e.grad[0].data(), &want);
    eprintln!("ridge: implicit (IFT) against the closed form: relative error {err:.2e}");
    assert!(err <= 1e-10, "{:?} vs {want:?}: {err:e}", e.grad[0].data());
    // The first-order part ∇_θ L_out is zero here: the whole value is −H_θφ v.
    assert!(
        norm(&want) > 1e-4 && want.iter().all(|g| g.abs() > 1e-6),
        "{want:?}"
    );
    let rep = e.stats.solver.clone().unwrap();
    assert!(rep.residual <= 1e-10 && rep.iterations >= 1, "{rep:?}");
    assert_eq!(e.stats.forward_steps, 2000);
    assert_eq!(e.stats.hvps, rep.iterations + 2);
    // The unrolled exact hypergradient agrees at the inner optimum.
    let ex = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    assert!(rel_err(ex.grad[0].data(), &want) <= 1e-10);
    // So does the Neumann series (α = 0.3 < 2/λ_max(A + Λ)).
    let neu = Implicit::ift()
        .with_solver(ImplicitSolver::Neumann(hvp::NeumannParams {
            alpha: 0.3,
            terms: 5000,
            tol: 1e-12,
        }))
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    assert!(rel_err(neu.grad[0].data(), &want) <= 1e-10);
}

#[test]
fn imaml_refuses_ridge_with_a_typed_error() {
    // θ enters L_in as per-feature L2 weights and φ_0 = 0 does not depend on θ:
    // neither iMAML form applies (the former estimator returned all zeros here).
    let p = ridge(2000);
    let theta = [Tensor::vector(THETA.to_vec())];
    for in_loss in [false, true] {
        let est = Implicit::imaml(1.0).unwrap().proximal_in_loss(in_loss);
        match est.estimate(&p, &(), &theta, &mut rng()) {
            Err(e @ BloError::UnsupportedStructure { mismatch, tol, .. }) => {
                assert!(mismatch > tol && tol < 1e-7, "{e}");
                assert!(e.to_string().contains("Implicit::ift()"), "{e}");
            }
            Err(e) => panic!("in_loss = {in_loss}: expected UnsupportedStructure, got {e}"),
            Ok(g) => panic!("in_loss = {in_loss}: a number {:?}", g.grad[0].data()),
        }
    }
}

/// ∇F = λ(A + λI)⁻¹(Cφ* − d) with φ* = (A + λI)⁻¹(b + λθ) (see [`Prox`]).
fn prox_closed_form(p: &Prox, theta: &[f64]) -> Vec<f64> {
    let lambda = p.lambda;
    let rhs: Vec<f64> =
        p.q.b
            .iter()
            .zip(theta)
            .map(|(b, t)| b + lambda * t)
            .collect();
    let phi_star = solve(&p.q.a, lambda, &rhs);
    let u: Vec<f64> = matvec(&p.q.c, &phi_star)
        .iter()
        .zip(&p.q.d)
        .map(|(x, d)| x - d)
        .collect();
    solve(&p.q.a, lambda, &u)
        .iter()
        .map(|x| lambda * x)
        .collect()
}

#[test]
fn imaml_is_the_special_case_and_checks_the_proximal_centre() {
    let theta_v = vec![0.4, -0.3, 0.8, 0.0];
    let theta = [Tensor::vector(theta_v.clone())];
    let prox = |from_zero| Prox {
        q: QuadMaml::new(4, InnerLoop::sgd(400, 0.2).unwrap()),
        lambda: 2.0,
        from_zero,
    };
    let p = prox(false);
    let want = prox_closed_form(&p, &theta_v);
    // The general estimator and iMAML agree with the closed form.
    let ift = Implicit::ift()
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    assert!(rel_err(ift.grad[0].data(), &want) < 1e-10);
    let imaml = Implicit::imaml(2.0)
        .unwrap()
        .proximal_in_loss(true)
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    assert!(rel_err(imaml.grad[0].data(), &want) < 1e-10);
    // Started at φ_0 = 0 (θ still the proximal centre), φ* and the IFT value are unchanged (Φ_0 plays no role at
    // the fixed point), but iMAML's formula would drop the whole θ term: refused.
    let p0 = prox(true);
    let ift0 = Implicit::ift()
        .estimate(&p0, &(), &theta, &mut rng())
        .unwrap();
    assert!(rel_err(ift0.grad[0].data(), &want) < 1e-10);
    let e = Implicit::imaml(2.0)
        .unwrap()
        .proximal_in_loss(true)
        .estimate(&p0, &(), &theta, &mut rng());
    assert!(
        matches!(e, Err(BloError::UnsupportedStructure { .. })),
        "{e:?}"
    );
    // A wrong λ is a wrong structure too (H_θφ = −2I, not −3I).
    let e = Implicit::imaml(3.0)
        .unwrap()
        .proximal_in_loss(true)
        .estimate(&p, &(), &theta, &mut rng());
    assert!(
        matches!(e, Err(BloError::UnsupportedStructure { .. })),
        "{e:?}"
    );
}

#[test]
fn a_point_that_is_not_stationary_is_an_error_with_its_gradient_norm() {
    // 5 steps of α = 0.3 are far from the ridge optimum.
    let p = ridge(5);
    let theta = [Tensor::vector(THETA.to_vec())];
    // ∇_φ L_in = (A + Λ)φ − c at φ_0 = 0 and at φ_5 (plain arithmetic).
    let h = ridge_hessian(&p, &THETA);
    let (_, c) = p.gram();
    let grad =
        |phi: &[f64]| -> Vec<f64> { matvec(&h, phi).iter().zip(&c).map(|(x, c)| x - c).collect() };
    let mut phi = vec![0.0; 5];
    for _ in 0..5 {
        phi = phi
            .iter()
            .zip(grad(&phi))
            .map(|(x, g)| x - 0.3 * g)
            .collect();
    }
    let (g_r, g_0) = (norm(&grad(&phi)), norm(&c));
    for est in [
        Implicit::ift(),
        Implicit::ift().stationarity_tol(1e-3).unwrap(),
    ] {
        match est.estimate(&p, &(), &theta, &mut rng()) {
            Err(BloError::NotStationary {
                step,
                grad_norm,
                initial_grad_norm,
                tol,
            }) => {
                assert_eq!(step, 5);
                assert!(
                    (grad_norm - g_r).abs() <= 1e-12 * g_r,
                    "{grad_norm} vs {g_r}"
                );
                assert!((initial_grad_norm - g_0).abs() <= 1e-12 * g_0);
                assert!(grad_norm > tol * initial_grad_norm);
            }
            other => panic!("expected NotStationary, got {other:?}"),
        }
    }
    // A tolerance the point meets gives the (biased) estimate.
    let loose = g_r / g_0 * 1.01;
    assert!(Implicit::ift()
        .stationarity_tol(loose)
        .unwrap()
        .estimate(&p, &(), &theta, &mut rng())
        .is_ok());
    // iMAML with the implied proximal term: the inner loop minimises L alone,
    // so ∇L(φ_r) + λ(φ_r − φ_0) ≠ 0.
    let q = QuadMaml::new(4, InnerLoop::sgd(400, 0.2).unwrap());
    let th = [Tensor::vector(vec![0.4, -0.3, 0.8, 0.0])];
    let e = Implicit::imaml(2.0)
        .unwrap()
        .estimate(&q, &(), &th, &mut rng());
    assert!(matches!(e, Err(BloError::NotStationary { .. })), "{e:?}");
    // Bad settings are typed errors too.
    assert!(Implicit::ift().stationarity_tol(-1.0).is_err());
    assert!(Implicit::ift().stationarity_tol(f64::NAN).is_err());
    for j in [0, 6] {
        let e = Implicit::ift()
            .stationary_at(j)
            .estimate(&p, &(), &theta, &mut rng());
        assert!(
            matches!(e, Err(BloError::InvalidHyperparameter { .. })),
            "{e:?}"
        );
    }
}

#[test]
fn a_solve_below_tolerance_is_an_error_with_its_residual() {
    let p = ridge(2000);
    let theta = [Tensor::vector(THETA.to_vec())];
    for solver in [
        ImplicitSolver::Neumann(hvp::NeumannParams {
            alpha: 0.3,
            terms: 3,
            tol: 1e-10,
        }),
        ImplicitSolver::Cg(hvp::CgParams {
            tol: 1e-14,
            max_iter: 1,
        }),
    ] {
        match Implicit::ift()
            .with_solver(solver)
            .estimate(&p, &(), &theta, &mut rng())
        {
            Err(BloError::NotConverged {
                iterations,
                residual,
                ..
            }) => {
                assert!(
                    iterations <= 3 && residual > 1e-6,
                    "{iterations} {residual}"
                );
            }
            other => panic!("expected NotConverged, got {other:?}"),
        }
    }
}

/// L_in(θ, φ; j) = ½(φ − c_j)² with c_1 = 0 and c_j = θ for j ≥ 2; L_out = ½(φ − 1)²,
/// φ_0 = 0. Only the losses from step 2 on have φ* = θ as their stationary point.
struct StepDependent {
    inner: InnerLoop,
}

impl<F: Float> Problem<F> for StepDependent {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        j: usize,
        th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let centre = if j == 1 { th[0] * 0.0 } else { th[0] };
        (phi[0] - centre).square().sum() * 0.5
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0] - 1.0).square().sum() * 0.5
    }
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        _th: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![consts(t, &[0.0])]
    }
}

#[test]
fn the_stationarity_index_is_a_parameter() {
    // 60 steps of α = 0.5 on ½(φ − θ)² from step 2 on: φ_r = θ(1 − 2^−59).
    let p = StepDependent {
        inner: InnerLoop::sgd(60, 0.5).unwrap(),
    };
    let theta = [Tensor::vector(vec![0.3])];
    // At j = r (default) or any j ≥ 2: φ* = θ, so dF/dθ = φ* − 1 = −0.7.
    for est in [Implicit::ift(), Implicit::ift().stationary_at(2)] {
        let g = est.estimate(&p, &(), &theta, &mut rng()).unwrap();
        assert!((g.grad[0].data()[0] + 0.7).abs() < 1e-12, "{:?}", g.grad);
    }
    // At j = 1 the condition is φ = 0, which φ_r is not: ‖∇‖ = 0.3 at φ_r, 0 at φ_0.
    match Implicit::ift()
        .stationary_at(1)
        .estimate(&p, &(), &theta, &mut rng())
    {
        Err(BloError::NotStationary {
            step, grad_norm, ..
        }) => {
            assert_eq!(step, 1);
            assert!((grad_norm - 0.3).abs() < 1e-12, "{grad_norm}");
        }
        other => panic!("expected NotStationary, got {other:?}"),
    }
}
