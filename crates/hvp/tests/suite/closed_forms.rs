//! Hessians with closed forms (quadratic, Rosenbrock, logistic regression), small
//! networks against dense Hessians from differences of gradients, the mixed
//! block of `mixed_hvp`, and third-order derivatives from nested duals.

mod common;

use common::*;
use hvp::{dense_hessian, Hessian, LinOp, Objective, Workspace};
use proptest::prelude::*;
use rand::Rng;
use tape::{Dual, Real, Tape, Tensor, Var};

/// f(x) = xᵀAx, so ∇f = (A + Aᵀ)x and H = A + Aᵀ (A not symmetric).
struct Quadratic {
    a: Tensor<f64>,
}

impl Objective<f64> for Quadratic {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let n = x[0].shape().numel();
        let a = t.constant_base(&self.a);
        x[0].reshape([1, n])
            .matmul(a)
            .matmul(x[0].reshape([n, 1]))
            .sum()
    }
}

/// f(x) = Σ_{i<n−1} 100(x_{i+1} − x_i²)² + (1 − x_i)².
struct Rosenbrock;

impl Objective<f64> for Rosenbrock {
    fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let n = x[0].shape().numel();
        let (a, b) = (x[0].slice(0, 0, n - 1), x[0].slice(0, 1, n));
        (b - a.square()).square().mul_scalar(100.0).sum() + (1.0 - a).square().sum()
    }
}

/// The closed-form Rosenbrock Hessian (tridiagonal):
/// H_ii = [i < n−1](1200x_i² − 400x_{i+1} + 2) + [i > 0]·200, H_{i,i+1} = −400x_i.
fn rosenbrock_hessian(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mut h = vec![0.0; n * n];
    for i in 0..n {
        if i + 1 < n {
            h[i * n + i] += 1200.0 * x[i] * x[i] - 400.0 * x[i + 1] + 2.0;
            h[i * n + i + 1] = -400.0 * x[i];
            h[(i + 1) * n + i] = -400.0 * x[i];
        }
        if i > 0 {
            h[i * n + i] += 200.0;
        }
    }
    h
}

/// Mean logistic loss (1/m) Σ softplus(z_i) − y_i z_i with z = Xw, y ∈ {0, 1}.
/// ∇ = Xᵀ(p − y)/m and H = Xᵀ diag(p(1 − p)) X / m with p = σ(Xw).
struct Logistic {
    x: Tensor<f64>,
    y: Tensor<f64>,
}

impl Objective<f64> for Logistic {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, w: &[Var<'t, T>]) -> Var<'t, T> {
        let (m, d) = (self.x.dims()[0], self.x.dims()[1]);
        let z = t
            .constant_base(&self.x)
            .matmul(w[0].reshape([d, 1]))
            .reshape([m]);
        (z.softplus() - t.constant_base(&self.y) * z).mean()
    }
}

/// The dense Hessian by central differences of gradients, column j from e_j.
fn fd_dense_hessian<O: Objective<f64>>(f: &O, x: &[Tensor<f64>], h: f64) -> Vec<f64> {
    let n: usize = x.iter().map(Tensor::numel).sum();
    let mut out = vec![0.0; n * n];
    for j in 0..n {
        let mut e = vec![0.0; n];
        e[j] = 1.0;
        let col = flat(&fd_hvp(f, x, &hvp::unflatten(&e, x), h));
        for i in 0..n {
            out[i * n + j] = col[i];
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Fixed seed: the same cases on every run, so CI cannot flake.
        rng_seed: proptest::test_runner::RngSeed::Fixed(24302),
        ..ProptestConfig::with_cases(16)
    })]

    #[test]
    fn quadratic_form_hessian_is_a_plus_a_transpose(seed in any::<u64>()) {
        let mut r = rng(seed);
        let n = 5;
        let a = uniform(&mut r, &[n, n], -1.0, 1.0);
        let x = [uniform(&mut r, &[n], -1.0, 1.0)];
        let h = dense_hessian(&Quadratic { a: a.clone() }, &x);
        let want: Vec<f64> =
            (0..n * n).map(|k| a.data()[k] + a.data()[(k % n) * n + k / n]).collect();
        assert_close("xᵀAx Hessian", h.data(), &want, 1e-14);
    }

    #[test]
    fn rosenbrock_hessian_matches_closed_form(seed in any::<u64>()) {
        let mut r = rng(seed);
        let x = [uniform(&mut r, &[6], -1.5, 1.5)];
        let h = dense_hessian(&Rosenbrock, &x);
        assert_close("Rosenbrock Hessian", h.data(), &rosenbrock_hessian(x[0].data()), 1e-14);
    }

    #[test]
    fn logistic_regression_hessian_is_xt_d_x(seed in any::<u64>()) {
        let mut r = rng(seed);
        let (m, d) = (7, 3);
        let x = uniform(&mut r, &[m, d], -1.0, 1.0);
        let y = Tensor::from_fn(&[m], |_| if r.gen_bool(0.5) { 1.0 } else { 0.0 });
        let w = [uniform(&mut r, &[d], -1.0, 1.0)];
        let f = Logistic { x: x.clone(), y };
        let h = dense_hessian(&f, &w);
        let xd = x.data();
        let mut want = vec![0.0; d * d];
        for i in 0..m {
            let z: f64 = (0..d).map(|k| xd[i * d + k] * w[0].data()[k]).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            for a in 0..d {
                for b in 0..d {
                    want[a * d + b] += p * (1.0 - p) * xd[i * d + a] * xd[i * d + b] / m as f64;
                }
            }
        }
        assert_close("logistic Hessian", h.data(), &want, 1e-14);
    }
}

/// Softmax cross-entropy of a 3-4-3 tanh MLP on 5 examples; inputs W1, b1, W2, b2.
struct Mlp {
    x: Tensor<f64>,
    labels: Vec<usize>,
}

impl Objective<f64> for Mlp {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let h = (t.constant_base(&self.x).matmul(p[0]) + p[1]).tanh();
        (h.matmul(p[2]) + p[3]).softmax_cross_entropy(&self.labels)
    }
}

/// conv2d → batch_norm → tanh → avg-pool → cross-entropy; inputs: kernel, γ, β.
struct ConvBn {
    x: Tensor<f64>,
    labels: Vec<usize>,
}

impl Objective<f64> for ConvBn {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let y = t.constant_base(&self.x).conv2d(p[0], 1, 0); // [2, 2, 3, 3]
        let y = y.batch_norm(p[1], p[2], 1e-5).tanh().avg_pool2d(3, 1); // [2, 2, 1, 1]
        y.reshape([2, 2]).softmax_cross_entropy(&self.labels)
    }
}

fn check_dense_against_fd<O: Objective<f64>>(name: &str, f: &O, x: &[Tensor<f64>]) {
    let h = dense_hessian(f, x);
    let n = h.dims()[0];
    let fd = fd_dense_hessian(f, x, 1e-5);
    assert_close(&format!("{name}: Hessian vs FD"), h.data(), &fd, 1e-7);
    for i in 0..n {
        for j in 0..i {
            let (a, b) = (h.data()[i * n + j], h.data()[j * n + i]);
            assert!(
                (a - b).abs() < 1e-13,
                "{name}: H[{i},{j}] = {a} but H[{j},{i}] = {b}"
            );
        }
    }
}

#[test]
fn mlp_cross_entropy_hessian_matches_differences_of_gradients() {
    let mut r = rng(7);
    let f = Mlp {
        x: uniform(&mut r, &[5, 3], -1.0, 1.0),
        labels: vec![0, 2, 1, 1, 0],
    };
    let p = [
        uniform(&mut r, &[3, 4], -1.0, 1.0),
        uniform(&mut r, &[4], -0.5, 0.5),
        uniform(&mut r, &[4, 3], -1.0, 1.0),
        uniform(&mut r, &[3], -0.5, 0.5),
    ];
    check_dense_against_fd("MLP", &f, &p);
}

#[test]
fn conv_batchnorm_hessian_matches_differences_of_gradients() {
    let mut r = rng(8);
    let f = ConvBn {
        x: uniform(&mut r, &[2, 1, 5, 5], -1.0, 1.0),
        labels: vec![1, 0],
    };
    let p = [
        uniform(&mut r, &[2, 1, 3, 3], -1.0, 1.0),
        uniform(&mut r, &[2], 0.5, 1.5),
        uniform(&mut r, &[2], -0.5, 0.5),
    ];
    check_dense_against_fd("conv+batch_norm", &f, &p);
}

/// f(θ, φ) = mean((Xφ − y)²) + Σ e^θ ⊙ φ² + tanh(θ·φ): an inner ridge-like loss
/// with learned per-feature penalties and a coupling term.
struct Inner {
    x: Tensor<f64>,
    y: Tensor<f64>,
}

impl Objective<f64> for Inner {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, v: &[Var<'t, T>]) -> Var<'t, T> {
        let (theta, phi) = (v[0], v[1]);
        let d = phi.shape().numel();
        let pred = t
            .constant_base(&self.x)
            .matmul(phi.reshape([d, 1]))
            .reshape([self.y.numel()]);
        pred.mse(t.constant_base(&self.y))
            + (theta.exp() * phi.square()).sum()
            + (theta * phi).sum().tanh()
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Fixed seed: the same cases on every run, so CI cannot flake.
        rng_seed: proptest::test_runner::RngSeed::Fixed(24303),
        ..ProptestConfig::with_cases(16)
    })]

    #[test]
    fn mixed_hvp_matches_differences_of_gradients(seed in any::<u64>()) {
        let mut r = rng(seed);
        let f = Inner { x: uniform(&mut r, &[6, 3], -1.0, 1.0), y: uniform(&mut r, &[6], -1.0, 1.0) };
        let theta = [uniform(&mut r, &[3], -1.0, 1.0)];
        let phi = [uniform(&mut r, &[3], -1.0, 1.0)];
        let v = [uniform(&mut r, &[3], -1.0, 1.0)];
        let mut ws = Workspace::new();
        let m = ws.mixed_hvp(&f, &theta, &phi, &v);

        let x = [theta[0].clone(), phi[0].clone()];
        let (value, grad) = ws.value_and_grad(&f, &x);
        assert_eq!(m.value, value);
        assert_close("grad θ", m.grad_theta[0].data(), grad[0].data(), 1e-14);
        assert_close("grad φ", m.grad_phi[0].data(), grad[1].data(), 1e-14);

        // Central differences of both gradients along (0, v).
        let dir = [Tensor::zeros([3]), v[0].clone()];
        let fd = fd_hvp(&f, &x, &dir, 1e-5);
        assert_close("H_θφ·v vs FD", m.h_thetaphi_v[0].data(), fd[0].data(), 1e-8);
        assert_close("H_φφ·v vs FD", m.h_phiphi_v[0].data(), fd[1].data(), 1e-8);

        // The Hessian block operator on φ agrees.
        let hb = Hessian::block(&f, &x, &[1]);
        let mut out = [0.0; 3];
        hb.apply(v[0].data(), &mut out);
        assert_close("Hessian::block", &out, m.h_phiphi_v[0].data(), 1e-14);
    }
}

/// f(x) = exp(aᵀx): D²f[u, u] = e^{aᵀx}(aᵀu)², ∇³f[u, u, ·] = e^{aᵀx}(aᵀu)²·a.
struct ExpLinear {
    a: Tensor<f64>,
}

impl Objective<f64> for ExpLinear {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        (x[0] * t.constant_base(&self.a)).sum().exp()
    }
}

/// Σ tanh(Wx)²: no simple closed third derivative; checked by differences of HVPs.
struct TanhSq {
    w: Tensor<f64>,
}

impl Objective<f64> for TanhSq {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let n = x[0].shape().numel();
        t.constant_base(&self.w)
            .matmul(x[0].reshape([n, 1]))
            .tanh()
            .square()
            .sum()
    }
}

/// The reverse sweep on `Dual<Dual<f64>>` from x + ε₁u + ε₂u: the ε₁ε₂ part of
/// the adjoint is ∇³f(x)[u, u, ·], the ε₁ (and ε₂) part is H·u.
fn third_order<O: Objective<f64>>(
    f: &O,
    x: &Tensor<f64>,
    u: &Tensor<f64>,
) -> (f64, Vec<f64>, Vec<f64>) {
    let t = Tape::<Dual<Dual<f64>>>::new();
    let data: Vec<_> = x
        .data()
        .iter()
        .zip(u.data())
        .map(|(&xi, &ui)| Dual::new(Dual::new(xi, ui), Dual::new(ui, 0.0)))
        .collect();
    let xv = t.leaf(x.shape(), &data, true);
    let out = f.eval(&t, &[xv]);
    let second = out.item().d.d; // D²f[u, u]
    t.backward(out);
    let g = t.grad(xv);
    (
        second,
        g.data().iter().map(|e| e.v.d).collect(),
        g.data().iter().map(|e| e.d.d).collect(),
    )
}

#[test]
fn nested_duals_give_third_order_directional_derivatives() {
    let mut r = rng(11);
    let a = uniform(&mut r, &[4], -1.0, 1.0);
    let x = uniform(&mut r, &[4], -1.0, 1.0);
    let u = uniform(&mut r, &[4], -1.0, 1.0);
    let (ax, au): (f64, f64) = (
        a.data().iter().zip(x.data()).map(|(p, q)| p * q).sum(),
        a.data().iter().zip(u.data()).map(|(p, q)| p * q).sum(),
    );
    let (second, hu, third) = third_order(&ExpLinear { a: a.clone() }, &x, &u);
    let e = ax.exp();
    assert!(
        (second - e * au * au).abs() < 1e-14,
        "D²f[u,u] = {second}, want {}",
        e * au * au
    );
    let want_hu: Vec<f64> = a.data().iter().map(|ai| e * au * ai).collect();
    assert_close("H·u", &hu, &want_hu, 1e-14);
    let want3: Vec<f64> = a.data().iter().map(|ai| e * au * au * ai).collect();
    assert_close("∇³f[u,u,·]", &third, &want3, 1e-14);

    // A function without a tidy closed form: against (H(x+hu)u − H(x−hu)u)/2h.
    let f = TanhSq {
        w: uniform(&mut r, &[3, 4], -1.0, 1.0),
    };
    let (_, _, third) = third_order(&f, &x, &u);
    let h = 1e-5;
    let mut ws = Workspace::new();
    let hvp_at = |ws: &mut Workspace<f64>, s: f64| {
        let xs = axpy(std::slice::from_ref(&x), s, std::slice::from_ref(&u));
        ws.hvp(&f, &xs, std::slice::from_ref(&u)).hv[0]
            .data()
            .to_vec()
    };
    let (p, m) = (hvp_at(&mut ws, h), hvp_at(&mut ws, -h));
    let fd: Vec<f64> = p.iter().zip(&m).map(|(a, b)| (a - b) / (2.0 * h)).collect();
    assert_close("∇³f[u,u,·] vs FD of HVPs", &third, &fd, 1e-7);
}

/// The benchmark's network at small sizes: 12-8-8-5 ReLU MLP, softmax
/// cross-entropy; inputs [w1, b1, w2, b2, w3, b3].
struct ReluMlp {
    x: Tensor<f64>,
    labels: Vec<usize>,
}

impl Objective<f64> for ReluMlp {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, p: &[Var<'t, T>]) -> Var<'t, T> {
        let mut h = t.constant_base(&self.x);
        for l in 0..3 {
            let z = h.matmul(p[2 * l]) + p[2 * l + 1];
            h = if l < 2 { z.relu() } else { z };
        }
        h.softmax_cross_entropy(&self.labels)
    }
}

/// The smallest |pre-activation| of the two hidden layers: how far the point is
/// from a relu kink.
fn kink_margin(f: &ReluMlp, p: &[Tensor<f64>]) -> f64 {
    let t = Tape::<f64>::new();
    let v: Vec<_> = p.iter().map(|pi| t.var(pi)).collect();
    let z1 = t.constant_base(&f.x).matmul(v[0]) + v[1];
    let z2 = z1.relu().matmul(v[2]) + v[3];
    z1.value()
        .data()
        .iter()
        .chain(z2.value().data())
        .fold(f64::INFINITY, |m, z| m.min(z.abs()))
}

#[test]
fn relu_mlp_hvp_matches_differences_of_gradients_away_from_kinks() {
    let mut r = rng(21);
    let sizes = [12, 8, 8, 5];
    let f = ReluMlp {
        x: uniform(&mut r, &[6, 12], -1.0, 1.0),
        labels: vec![0, 4, 2, 1, 3, 2],
    };
    let mut p = Vec::new();
    for w in sizes.windows(2) {
        let s = 1.0 / (w[0] as f64).sqrt();
        p.push(uniform(&mut r, &[w[0], w[1]], -s, s));
        p.push(uniform(&mut r, &[w[1]], -s, s));
    }
    let v: Vec<Tensor<f64>> = p
        .iter()
        .map(|pi| uniform(&mut r, pi.dims(), -1.0, 1.0))
        .collect();
    // The difference quotient is valid only if x ± hv crosses no kink: with
    // |v| ≤ 1, |x| ≤ 1, pre-activations move by at most ~h·(fan_in + 1)·(1 + ‖w‖).
    let h = 1e-6;
    let margin = kink_margin(&f, &p);
    assert!(
        margin > 1e3 * h,
        "test point too close to a relu kink: {margin}"
    );
    let vs = &v;
    let out = hvp::hvp(&f, &p, vs);
    let fd = fd_hvp(&f, &p, &v, h);
    assert_close("relu MLP HVP vs FD", &flat(&out.hv), &flat(&fd), 1e-6);

    // The allocation-free variant writes the same numbers into given buffers.
    let mut ws = Workspace::new();
    let zeros = || {
        p.iter()
            .map(|pi| Tensor::zeros(pi.shape()))
            .collect::<Vec<_>>()
    };
    let (mut g, mut hv) = (zeros(), zeros());
    let value = ws.hvp_into(&f, &p, vs, &mut g, &mut hv);
    assert_eq!(value, out.value);
    assert_eq!(flat(&g), flat(&out.grad));
    assert_eq!(flat(&hv), flat(&out.hv));
    // Curvature exists despite relu'' = 0 (softmax and products of layers).
    assert!(flat(&out.hv).iter().any(|x| x.abs() > 1e-3));
}
