//! Estimators against central differences of F(θ), against each other where
//! theory says they coincide, and the error paths.
#![allow(clippy::needless_range_loop)]

mod common;

use blo::{
    check_hypergradient, meta_loss, BloError, Estimator, Exact, FirstOrder, ForwardMode, Implicit,
    ImplicitSolver, InnerLoop, Policy, Problem, Truncated,
};
use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Real, Tape, Tensor, Var};

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(3)
}

fn flat(g: &[Tensor<f64>]) -> Vec<f64> {
    g.iter().flat_map(|t| t.data().to_vec()).collect()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-300)
}

fn wave() -> Wave {
    Wave {
        amp: 1.1,
        phase: 0.3,
    }
}

#[test]
fn exact_passes_the_finite_difference_check_for_every_inner_optimiser() {
    let cases = [
        (InnerLoop::sgd(6, 0.2).unwrap(), false),
        (InnerLoop::momentum(6, 0.1, 0.8).unwrap(), false),
        (InnerLoop::meta_sgd(6, vec![2, 3]).unwrap(), true),
    ];
    for (inner, meta_sgd) in cases {
        let p = TanhNet {
            inner: inner.clone(),
            hidden: 3,
            meta_sgd,
        };
        let theta = p.theta(5);
        for policy in [Policy::StoreAll, Policy::Binomial { snapshots: 2 }] {
            let rep = check_hypergradient(&p, &wave(), &theta, &Exact::new(policy).unwrap(), 1e-6)
                .unwrap_or_else(|e| panic!("{inner:?} {policy:?}: {e}"));
            assert!(rep.rel_err < 1e-6);
        }
        // Forward mode computes the same derivative by a different route.
        let rep = check_hypergradient(&p, &wave(), &theta, &ForwardMode::new(), 1e-6)
            .unwrap_or_else(|e| panic!("forward mode {inner:?}: {e}"));
        let ex = Exact::new(Policy::StoreAll)
            .unwrap()
            .estimate(&p, &wave(), &theta, &mut rng())
            .unwrap();
        let err = rel_err(&rep.estimate, &flat(&ex.grad));
        assert!(err < 1e-12, "{inner:?}: forward vs reverse {err:e}");
    }
}

#[test]
fn the_checker_fails_a_biased_estimator() {
    let p = TanhNet {
        inner: InnerLoop::sgd(6, 0.3).unwrap(),
        hidden: 3,
        meta_sgd: false,
    };
    let theta = p.theta(5);
    match check_hypergradient(&p, &wave(), &theta, &FirstOrder::new(), 1e-6) {
        Err(BloError::GradientMismatch { rel_err, .. }) => assert!(rel_err > 1e-3, "{rel_err}"),
        other => panic!("first order passed an exactness check: {other:?}"),
    }
}

#[test]
fn forward_mode_matches_closed_form_on_ridge_hyperparameters() {
    let (r, alpha) = (12, 0.2);
    let p = Ridge::new(3, 8, InnerLoop::sgd(r, alpha).unwrap());
    let theta = vec![-0.3, 0.1, -1.2];
    let want = p.closed_form(alpha, r, &theta);
    let e = ForwardMode::new()
        .estimate(&p, &(), &[Tensor::vector(theta)], &mut rng())
        .unwrap();
    assert!(rel_err(e.grad[0].data(), &want) < 1e-10);
    assert_eq!(
        e.stats.hvps,
        3 * r + 3,
        "dim θ passes per step plus the Φ_0 JVPs"
    );
}

/// L_in linear in φ (⟨w_j, φ⟩, a different w per step), θ not in L_in:
/// H = 0 and M = 0, so the first-order estimator is exact.
struct LinearInner {
    inner: InnerLoop,
}

impl<F: Float> Problem<F> for LinearInner {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        j: usize,
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let w: Vec<f64> = (0..3).map(|i| ((i + 2 * j) as f64).sin()).collect();
        (consts(t, &w) * phi[0]).sum()
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        t: &'t Tape<T>,
        _: &(),
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        (phi[0].tanh() - consts(t, &[0.2, -0.1, 0.4]))
            .square()
            .sum()
    }
}

#[test]
fn first_order_equals_exact_when_the_inner_loss_is_linear() {
    let p = LinearInner {
        inner: InnerLoop::sgd(7, 0.3).unwrap(),
    };
    let theta = [Tensor::vector(vec![0.5, -0.2, 0.9])];
    let fo = FirstOrder::new()
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    let ex = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), &theta, &mut rng())
        .unwrap();
    assert!(rel_err(&flat(&fo.grad), &flat(&ex.grad)) < 1e-15);
    assert_eq!(fo.stats.forward_steps, 7);
    assert_eq!(fo.stats.hvps, 0);
    assert_eq!(fo.stats.states_peak, 1);
    check_hypergradient(&p, &(), &theta, &FirstOrder::new(), 1e-7).unwrap();
}

#[test]
fn truncation_interpolates_between_first_order_and_exact() {
    let r = 6;
    let p = TanhNet {
        inner: InnerLoop::sgd(r, 0.3).unwrap(),
        hidden: 3,
        meta_sgd: false,
    };
    let theta = p.theta(2);
    let ex = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &wave(), &theta, &mut rng())
        .unwrap();
    let fo = FirstOrder::new()
        .estimate(&p, &wave(), &theta, &mut rng())
        .unwrap();
    for k in [r, r + 3] {
        let t = Truncated::new(k)
            .unwrap()
            .estimate(&p, &wave(), &theta, &mut rng())
            .unwrap();
        assert_eq!(flat(&t.grad), flat(&ex.grad), "k = {k} ≥ r is exact");
    }
    // The error shrinks as more steps are differentiated.
    let mut last = rel_err(&flat(&fo.grad), &flat(&ex.grad));
    for k in 1..r {
        let t = Truncated::new(k)
            .unwrap()
            .estimate(&p, &wave(), &theta, &mut rng())
            .unwrap();
        assert_eq!(t.stats.hvps, k);
        assert_eq!(t.stats.states_peak, k + 1);
        let err = rel_err(&flat(&t.grad), &flat(&ex.grad));
        assert!(err < last * 1.0001 + 1e-15, "k={k}: {err:e} after {last:e}");
        last = err;
    }
    assert!(Truncated::new(0).is_err());
}

#[test]
fn implicit_matches_the_closed_form_at_the_inner_optimum() {
    let lambda = 2.0;
    let p = Prox {
        q: QuadMaml::new(4, InnerLoop::sgd(400, 0.2).unwrap()),
        lambda,
        from_zero: false,
    };
    let theta = vec![0.4, -0.3, 0.8, 0.0];
    let rhs: Vec<f64> =
        p.q.b
            .iter()
            .zip(&theta)
            .map(|(b, t)| b + lambda * t)
            .collect();
    let phi_star = solve(&p.q.a, lambda, &rhs);
    let u: Vec<f64> = matvec(&p.q.c, &phi_star)
        .iter()
        .zip(&p.q.d)
        .map(|(x, d)| x - d)
        .collect();
    let want: Vec<f64> = solve(&p.q.a, lambda, &u)
        .iter()
        .map(|x| lambda * x)
        .collect();
    let th = [Tensor::vector(theta)];
    let est = Implicit::imaml(lambda).unwrap().proximal_in_loss(true);
    let e = est.estimate(&p, &(), &th, &mut rng()).unwrap();
    // φ_400 equals φ* to ~1e-15 (contraction ≤ 1 − 0.2·λ_min(A + λI) per step).
    assert!(
        rel_err(e.grad[0].data(), &want) < 1e-9,
        "{:?} vs {want:?}",
        e.grad[0].data()
    );
    let rep = e.stats.solver.clone().unwrap();
    assert!(rep.residual <= 1e-10 && rep.iterations <= 6, "{rep:?}");
    // θ enters L_in here (proximal term), yet at the optimum the unrolled exact
    // hypergradient agrees with the implicit one.
    // Recompute (constant memory, r(r+1)/2 forward steps) must succeed here,
    // and give the store-all bits.
    let ex = Exact::new(Policy::Recompute)
        .unwrap()
        .estimate(&p, &(), &th, &mut rng())
        .unwrap_or_else(|e| panic!("exact under Recompute failed: {e}"));
    assert_eq!(ex.stats.forward_steps, 400 * 401 / 2);
    let stored = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &(), &th, &mut rng())
        .unwrap();
    assert_eq!(flat(&ex.grad), flat(&stored.grad));
    assert!(rel_err(&flat(&ex.grad), &want) < 1e-9);
    // The Neumann series converges too (‖I − 0.2·A/λ‖ < 1 here).
    let neu = est
        .clone()
        .with_solver(ImplicitSolver::Neumann(hvp::NeumannParams {
            alpha: 0.3,
            terms: 400,
            tol: 1e-13,
        }))
        .estimate(&p, &(), &th, &mut rng())
        .unwrap();
    assert!(rel_err(neu.grad[0].data(), &want) < 1e-9);
}

#[test]
fn implicit_reports_a_solver_that_does_not_converge() {
    let p = Prox {
        q: QuadMaml::new(4, InnerLoop::sgd(20, 0.2).unwrap()),
        lambda: 2.0,
        from_zero: false,
    };
    let th = [Tensor::vector(vec![0.4, -0.3, 0.8, 0.0])];
    let est = Implicit::imaml(2.0)
        .unwrap()
        .proximal_in_loss(true)
        .with_solver(ImplicitSolver::Cg(hvp::CgParams {
            tol: 1e-14,
            max_iter: 1,
        }));
    match est.estimate(&p, &(), &th, &mut rng()) {
        Err(BloError::NotConverged {
            iterations,
            residual,
            ..
        }) => {
            assert_eq!(iterations, 1);
            assert!(residual > 1e-14);
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
    assert!(Implicit::imaml(0.0).is_err());
    assert!(Implicit::imaml(f64::NAN).is_err());
    #[allow(deprecated)]
    {
        assert!(Implicit::new(0.0).is_err());
        assert_eq!(Implicit::new(2.0).unwrap().lambda(), Some(2.0));
    }
}

/// L_in = ½(φ − c)² on steps 1, 2 and +∞·(φ − c)² from step 3 on.
struct Blows {
    inner: InnerLoop,
}

impl<F: Float> Problem<F> for Blows {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        j: usize,
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let l = (phi[0] - 1.0).square().sum() * 0.5;
        if j >= 3 {
            l * f64::INFINITY
        } else {
            l
        }
    }
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        _t: &'t Tape<T>,
        _: &(),
        _th: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        phi[0].square().sum()
    }
}

#[test]
fn non_finite_losses_name_the_inner_step() {
    let p = Blows {
        inner: InnerLoop::sgd(5, 0.1).unwrap(),
    };
    let theta = vec![Tensor::vector(vec![2.0])];
    let before = theta.clone();
    for est in [
        Box::new(Exact::new(Policy::Recompute).unwrap()) as Box<dyn Estimator<f64, Blows>>,
        Box::new(FirstOrder::new()),
        Box::new(ForwardMode::new()),
    ] {
        match est.estimate(&p, &(), &theta, &mut rng()) {
            Err(BloError::NonFinite { what, step: 3, .. }) => assert!(what.contains("inner")),
            other => panic!(
                "{}: expected NonFinite at step 3, got {other:?}",
                est.name()
            ),
        }
    }
    match meta_loss(&p, &(), &theta) {
        Err(e @ BloError::NonFinite { .. }) => {
            let e = e.with_task(4);
            assert_eq!(
                e.to_string(),
                "non-finite inner loss at task 4, inner step 3"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(theta[0].data(), before[0].data());
}

#[test]
fn bad_hyperparameters_are_rejected_at_construction() {
    assert!(InnerLoop::sgd(0, 0.1).is_err());
    assert!(InnerLoop::sgd(3, 0.0).is_err());
    assert!(InnerLoop::sgd(3, -1.0).is_err());
    assert!(InnerLoop::sgd(3, f64::INFINITY).is_err());
    assert!(InnerLoop::momentum(3, 0.1, 1.0).is_err());
    assert!(InnerLoop::meta_sgd(0, vec![]).is_err());
    // A literal config is validated when an estimator runs.
    let p = QuadMaml::new(
        2,
        InnerLoop {
            steps: 0,
            optimizer: blo::InnerOptimizer::Sgd { lr: 0.1 },
        },
    );
    let th = [Tensor::vector(vec![0.0, 0.0])];
    let e = FirstOrder::new().estimate(&p, &(), &th, &mut rng());
    assert!(matches!(
        e,
        Err(BloError::InvalidHyperparameter { name: "steps", .. })
    ));
}
