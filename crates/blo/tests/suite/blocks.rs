//! The building blocks on their own: one adjoint step is the transpose of one
//! forward step (dot-product test against central differences), and the HVP
//! pass gives H v and the mixed product M v (against differences of gradients).
#![allow(clippy::needless_range_loop)]

mod common;

use blo::{Cotangent, InnerLoop, InnerWorkspace, State};
use common::*;
use tape::Tensor;

fn perturb(x: &[Tensor<f64>], v: &[Tensor<f64>], h: f64) -> Vec<Tensor<f64>> {
    x.iter()
        .zip(v)
        .map(|(a, b)| {
            Tensor::new(
                a.shape(),
                a.data()
                    .iter()
                    .zip(b.data())
                    .map(|(p, q)| p + h * q)
                    .collect(),
            )
        })
        .collect()
}

fn dot(a: &[Tensor<f64>], b: &[Tensor<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.data().iter().zip(y.data()))
        .map(|(p, q)| p * q)
        .sum()
}

fn like(x: &[Tensor<f64>], seed: f64) -> Vec<Tensor<f64>> {
    x.iter()
        .enumerate()
        .map(|(i, t)| {
            Tensor::from_fn(t.shape(), |k| {
                ((k as f64 + 1.0) * (seed + i as f64 * 0.37)).sin()
            })
        })
        .collect()
}

/// ⟨ū, J v⟩ = ⟨Jᵀ ū, v⟩ with J the Jacobian of S_j(θ, s) in (θ, s), J v by
/// central differences of `step_in_place`, Jᵀ ū by `adjoint_step`.
#[test]
fn adjoint_step_is_the_transpose_of_the_step() {
    let cases = [
        (InnerLoop::sgd(3, 0.3).unwrap(), false),
        (InnerLoop::momentum(3, 0.2, 0.6).unwrap(), false),
        (InnerLoop::meta_sgd(3, vec![2, 3]).unwrap(), true),
    ];
    let task = Wave {
        amp: 0.9,
        phase: 0.2,
    };
    for (inner, meta_sgd) in cases {
        let p = TanhNet {
            inner: inner.clone(),
            hidden: 3,
            meta_sgd,
        };
        let theta = p.theta(4);
        let mut ws = InnerWorkspace::new();
        let mut s = ws.initial_state(&p, &task, &theta).unwrap();
        ws.step_in_place(&p, &task, 1, &theta, &mut s).unwrap(); // a generic state (v ≠ 0)
        let j = 2;
        let v_theta = like(&theta, 0.7);
        let v_state = State {
            phi: like(&s.phi, 1.3),
            extra: like(&s.extra, 2.1),
        };
        let step = |h: f64| {
            let mut ws = InnerWorkspace::new();
            let th = perturb(&theta, &v_theta, h);
            let mut st = State {
                phi: perturb(&s.phi, &v_state.phi, h),
                extra: perturb(&s.extra, &v_state.extra, h),
            };
            ws.step_in_place(&p, &task, j, &th, &mut st).unwrap();
            st
        };
        let h = 1e-5;
        let (plus, minus) = (step(h), step(-h));
        let jv = |a: &[Tensor<f64>], b: &[Tensor<f64>]| -> Vec<Tensor<f64>> {
            a.iter()
                .zip(b)
                .map(|(x, y)| {
                    Tensor::new(
                        x.shape(),
                        x.data()
                            .iter()
                            .zip(y.data())
                            .map(|(p, q)| (p - q) / (2.0 * h))
                            .collect(),
                    )
                })
                .collect()
        };
        let jv_phi = jv(&plus.phi, &minus.phi);
        let jv_vel = jv(&plus.extra, &minus.extra);

        let u = Cotangent {
            phi: like(&s.phi, 3.1),
            extra: like(&s.extra, 4.3),
        };
        let lhs = dot(&u.phi, &jv_phi) + dot(&u.extra, &jv_vel);
        let mut ut = u.clone();
        let mut g: Vec<Tensor<f64>> = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
        ws.adjoint_step(&p, &task, j, &theta, &s, &mut ut, &mut g, false)
            .unwrap();
        let rhs = dot(&ut.phi, &v_state.phi) + dot(&ut.extra, &v_state.extra) + dot(&g, &v_theta);
        assert!(
            (lhs - rhs).abs() < 1e-8 * (1.0 + lhs.abs()),
            "{inner:?}: {lhs} vs {rhs}"
        );
    }
}

/// On the ridge problem L_in = ½‖Xφ − y‖²/n + ½Σ e^{θ_k} φ_k²:
/// H v = (XᵀX/n + diag(e^θ)) v and M v = ∂(∇_θ L)/∂φ · v = e^θ ⊙ φ ⊙ v.
#[test]
fn inner_hvp_gives_the_hessian_and_mixed_products() {
    let p = Ridge::new(3, 5, InnerLoop::sgd(1, 0.1).unwrap());
    let theta: Vec<Tensor<f64>> = vec![Tensor::vector(vec![0.2, -0.4, 0.1])];
    let phi = vec![Tensor::vector(vec![0.5, -1.0, 2.0])];
    let v = vec![Tensor::vector(vec![1.0, 0.3, -0.7])];
    let out = InnerWorkspace::new()
        .inner_hvp(&p, &(), 1, &theta, &phi, &v, None)
        .unwrap();
    let (n, d) = (p.n, p.dim);
    for k in 0..d {
        let lam = theta[0].data()[k].exp();
        let xtxv: f64 = (0..n)
            .map(|i| p.x[i * d + k] * (0..d).map(|l| p.x[i * d + l] * v[0].data()[l]).sum::<f64>())
            .sum::<f64>()
            / n as f64;
        let hv = xtxv + lam * v[0].data()[k];
        assert!((out.tangent_phi[0].data()[k] - hv).abs() < 1e-12);
        let mv = lam * phi[0].data()[k] * v[0].data()[k];
        assert!((out.tangent_theta[0].data()[k] - mv).abs() < 1e-12);
        let g_theta = 0.5 * lam * phi[0].data()[k].powi(2);
        assert!((out.grad_theta[0].data()[k] - g_theta).abs() < 1e-12);
    }
}

/// `TanhNet` with Φ_0(θ) = 1·θ: the same map as the identity, recorded as an
/// op, so `initial_state_vjp` takes its general sweep instead of the
/// identity shortcut.
struct OneTimes(TanhNet);

impl blo::Problem<f64> for OneTimes {
    type Task = Wave;
    fn inner_loop(&self) -> &InnerLoop {
        &self.0.inner
    }
    fn inner_loss<'t, T: tape::Real<Base = f64>>(
        &self,
        t: &'t tape::Tape<T>,
        task: &Wave,
        j: usize,
        theta: &[tape::Var<'t, T>],
        phi: &[tape::Var<'t, T>],
    ) -> tape::Var<'t, T> {
        self.0.inner_loss(t, task, j, theta, phi)
    }
    fn outer_loss<'t, T: tape::Real<Base = f64>>(
        &self,
        t: &'t tape::Tape<T>,
        task: &Wave,
        theta: &[tape::Var<'t, T>],
        phi: &[tape::Var<'t, T>],
    ) -> tape::Var<'t, T> {
        self.0.outer_loss(t, task, theta, phi)
    }
    fn initial_state<'t, T: tape::Real<Base = f64>>(
        &self,
        _t: &'t tape::Tape<T>,
        _task: &Wave,
        theta: &[tape::Var<'t, T>],
    ) -> Vec<tape::Var<'t, T>> {
        theta.iter().map(|v| v.mul_scalar(1.0)).collect()
    }
}

/// When Φ_0 returns θ itself, `initial_state_vjp` adds u to ḡ_θ without a
/// sweep; the bits equal the sweep's (checked against Φ_0 = 1·θ, with −0 in
/// u and in ḡ_θ, where a careless `g += u` would differ in the sign of zero).
#[test]
fn identity_initial_state_vjp_matches_the_sweep() {
    let net = TanhNet {
        inner: InnerLoop::sgd(3, 0.3).unwrap(),
        hidden: 4,
        meta_sgd: false,
    };
    let task = Wave {
        amp: 0.9,
        phase: 0.2,
    };
    let theta = net.theta(3);
    let mut u = like(&theta, 0.61);
    let mut g0 = like(&theta, 0.29);
    for (k, (ui, gi)) in u.iter_mut().zip(g0.iter_mut()).enumerate() {
        ui.data_mut()[0] = -0.0;
        gi.data_mut()[0] = -0.0;
        ui.data_mut()[1] = -0.0;
        gi.data_mut()[1] = 0.5 + k as f64;
    }
    let mut ws = InnerWorkspace::new();
    let (mut fast, mut swept) = (g0.clone(), g0.clone());
    ws.initial_state_vjp(&net, &task, &theta, &u, &mut fast);
    let general = OneTimes(net);
    ws.initial_state_vjp(&general, &task, &theta, &u, &mut swept);
    for (a, b) in fast.iter().zip(&swept) {
        for (x, y) in a.data().iter().zip(b.data()) {
            assert_eq!(x.to_bits(), y.to_bits(), "{x} vs {y}");
        }
    }
    // And the value: ḡ_θ + u.
    assert_eq!(fast[0].data()[2], g0[0].data()[2] + u[0].data()[2]);
    assert_eq!(fast[0].data()[0].to_bits(), 0.0f64.to_bits()); // −0 + (0 + −0) = +0
}
