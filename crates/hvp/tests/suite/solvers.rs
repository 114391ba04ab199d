//! Linear operators and solvers: CG on random SPD systems and its two failure
//! modes, the Neumann series and its truncation error, power iteration on known
//! spectra, the Hessian operator's buffer reuse, and dense Jacobians.

mod common;

use common::*;
use hvp::{
    cg, dense_jacobian, dense_matrix, lanczos, neumann, power_iteration, CgError, CgParams, Damped,
    DenseOp, FnOp, Hessian, Identity, LanczosError, LanczosParams, LinOp, NeumannError,
    NeumannParams, Objective, PowerError, PowerParams, VectorFunction,
};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use tape::{Real, Tape, Tensor, Var};

/// A = BᵀB + shift·I: symmetric positive definite with λ_min ≥ shift.
fn random_spd(r: &mut ChaCha8Rng, n: usize, shift: f64) -> DenseOp<f64> {
    let b = uniform(r, &[n, n], -1.0, 1.0);
    let bd = b.data();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| bd[k * n + i] * bd[k * n + j]).sum::<f64>()
                + if i == j { shift } else { 0.0 };
        }
    }
    DenseOp::new(n, a)
}

/// Q·diag(e)·Qᵀ with Q orthogonal (Gram–Schmidt of a random matrix) and
/// eigenvalues e: the smallest in [0.1, 0.5], the largest in [12, 17], the rest
/// in [1, 10], so both extremes are separated from the others by a gap ≥ 0.5
/// (power iteration then converges at a rate of at most 10/12 per step).
fn spd_with_gaps(r: &mut ChaCha8Rng, n: usize) -> (DenseOp<f64>, f64, f64) {
    let m = uniform(r, &[n, n], -1.0, 1.0);
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(n);
    for i in 0..n {
        let mut v = m.data()[i * n..(i + 1) * n].to_vec();
        for u in &q {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let nv = norm(&v);
        v.iter_mut().for_each(|a| *a /= nv);
        q.push(v);
    }
    let u = uniform(r, &[n], 0.0, 1.0);
    let e: Vec<f64> = (0..n)
        .map(|i| match i {
            0 => 0.1 + 0.4 * u.data()[i],
            _ if i == n - 1 => 12.0 + 5.0 * u.data()[i],
            _ => 1.0 + 9.0 * u.data()[i],
        })
        .collect();
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| q[k][i] * e[k] * q[k][j]).sum();
        }
    }
    (DenseOp::new(n, a), e[0], e[n - 1])
}

fn apply(a: &impl LinOp<f64>, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a.dim()];
    a.apply(x, &mut out);
    out
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Fixed seed: the same cases on every run, so CI cannot flake.
        rng_seed: proptest::test_runner::RngSeed::Fixed(24302),
        ..ProptestConfig::with_cases(32)
    })]

    #[test]
    fn cg_recovers_x_of_random_spd_systems(seed in any::<u64>()) {
        let mut r = rng(seed);
        let n = 8;
        let a = random_spd(&mut r, n, 0.5);
        let x_true = uniform(&mut r, &[n], -1.0, 1.0).into_data();
        let b = apply(&a, &x_true);
        let (x, info) = cg(&a, &b, CgParams { tol: 1e-12, max_iter: 100 }).unwrap();
        assert!(info.residual <= 1e-12);
        // The true residual, recomputed (the reported one comes from the recurrence).
        let res: Vec<f64> = apply(&a, &x).iter().zip(&b).map(|(p, q)| p - q).collect();
        assert!(norm(&res) <= 1e-10 * norm(&b), "true residual {}", norm(&res) / norm(&b));
        assert_close("CG solution", &x, &x_true, 1e-9);
    }

    #[test]
    fn neumann_converges_when_alpha_a_is_a_contraction(seed in any::<u64>()) {
        let mut r = rng(seed);
        let n = 6;
        let a = random_spd(&mut r, n, 1.0);
        // ‖A‖ ≤ Frobenius norm, so α = 1/‖A‖_F gives 0 < αλ ≤ 1 for every eigenvalue.
        let fro = (0..n * n).map(|k| a.get(k / n, k % n).powi(2)).sum::<f64>().sqrt();
        let alpha = 1.0 / fro;
        let x_true = uniform(&mut r, &[n], -1.0, 1.0).into_data();
        let b = apply(&a, &x_true);

        // Truncation error after k applications is exactly (I − αA)^{k+1} x_true.
        let k = 5;
        // tol = 0 runs all k terms; the truncated sum comes back in the error.
        let (x, terms) = match neumann(&a, &b, NeumannParams { alpha, terms: k, tol: 0.0 }) {
            Err(NeumannError::NotConverged { x, terms, .. }) => (x, terms),
            other => panic!("expected NotConverged, got {other:?}"),
        };
        assert_eq!(terms, k);
        let mut e = x_true.clone();
        for _ in 0..=k {
            let ae = apply(&a, &e);
            e = e.iter().zip(&ae).map(|(p, q)| p - alpha * q).collect();
        }
        let err: Vec<f64> = x_true.iter().zip(&x).map(|(p, q)| p - q).collect();
        assert_close("Neumann truncation error", &err, &e, 1e-10);

        // Enough terms: the solution (λ_min ≥ 1 so ρ(I − αA) ≤ 1 − α).
        let p = NeumannParams { alpha, terms: 100_000, tol: 1e-13 };
        let (x, info) = neumann(&a, &b, p).unwrap();
        assert!(info.last_term <= 1e-13 && info.terms < 100_000);
        assert!(info.residual <= 1e-13, "{info:?}");
        assert_close("Neumann solution", &x, &x_true, 1e-10);
    }
}

#[test]
fn cg_reports_non_convergence_with_its_residual() {
    let mut r = rng(1);
    let n = 12;
    let a = random_spd(&mut r, n, 1e-3);
    let b = uniform(&mut r, &[n], -1.0, 1.0).into_data();
    match cg(
        &a,
        &b,
        CgParams {
            tol: 1e-12,
            max_iter: 3,
        },
    ) {
        Err(CgError::NotConverged {
            iterations,
            residual,
            x,
        }) => {
            assert_eq!(iterations, 3);
            assert!(residual > 1e-12);
            let res: Vec<f64> = apply(&a, &x).iter().zip(&b).map(|(p, q)| p - q).collect();
            let true_res = norm(&res) / norm(&b);
            assert!(
                (true_res - residual).abs() < 1e-8,
                "{true_res} vs {residual}"
            );
            assert!(
                x.iter().any(|&v| v != 0.0),
                "the iterate is not a silent zero"
            );
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
}

#[test]
fn cg_reports_negative_curvature_of_indefinite_operators() {
    // A = diag(1, −1, 2), b = (1, 1, 1): p₀ = b, p₀ᵀAp₀ = 1 − 1 + 2 = 2 > 0, then
    // the next direction meets the negative eigenvalue. Either way CG must say so.
    let a = DenseOp::new(3, vec![1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 2.0]);
    match cg(&a, &[1.0, 1.0, 1.0], CgParams::default()) {
        Err(CgError::NegativeCurvature { curvature, .. }) => assert!(curvature <= 0.0),
        other => panic!("expected NegativeCurvature, got {other:?}"),
    }
    // With b along the negative eigenvector it fails at iteration 0 with
    // curvature exactly −1 (pᵀAp/pᵀp = λ).
    let err = cg(&a, &[0.0, 3.0, 0.0], CgParams::default()).unwrap_err();
    assert_eq!(
        err,
        CgError::NegativeCurvature {
            iteration: 0,
            curvature: -1.0
        }
    );
}

#[test]
fn cg_on_identity_and_zero_rhs() {
    let (x, info) = cg(&Identity::new(3), &[1.0, -2.0, 3.0], CgParams::default()).unwrap();
    assert_eq!(x, vec![1.0, -2.0, 3.0]);
    assert_eq!(info.iterations, 1);
    let (x, info) = cg(&Identity::new(2), &[0.0, 0.0], CgParams::default()).unwrap();
    assert_eq!((x, info.iterations), (vec![0.0, 0.0], 0));
}

#[test]
fn neumann_reports_divergence() {
    // A = diag(1, 4), α = 1: (I − αA) = diag(0, −3), so terms grow by 3 each step.
    let a = DenseOp::new(2, vec![1.0, 0.0, 0.0, 4.0]);
    let err = neumann(
        &a,
        &[1.0, 1.0],
        NeumannParams {
            alpha: 1.0,
            terms: 10,
            tol: 0.0,
        },
    )
    .unwrap_err();
    // t₁ = (0, −3): ‖t₁‖/‖b‖ = 3/√2.
    match err {
        NeumannError::Diverging { term, growth } => {
            assert_eq!(term, 1);
            assert!((growth - 3.0 / 2f64.sqrt()).abs() < 1e-14);
        }
        other => panic!("expected Diverging, got {other:?}"),
    }
}

/// f(x) = ½ Σ d_i x_i²: H = diag(d).
struct Diag {
    d: Tensor<f64>,
}

impl Objective<f64> for Diag {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        (t.constant_base(&self.d) * x[0].square())
            .sum()
            .mul_scalar(0.5)
    }
}

#[test]
fn power_iteration_finds_the_top_eigenvalue_of_a_hessian() {
    let d = Tensor::vector(vec![0.5, 3.0, -1.0, 2.0, 0.1]);
    let f = Diag { d };
    let x = [uniform(&mut rng(3), &[5], -1.0, 1.0)];
    let h = Hessian::new(&f, &x);
    let params = PowerParams {
        tol: 1e-10,
        ..PowerParams::default()
    };
    let (v, info) = power_iteration(&h, params).unwrap();
    assert!(
        (info.eigenvalue - 3.0).abs() < 1e-9,
        "λ = {}",
        info.eigenvalue
    );
    assert!(v[1].abs() > 1.0 - 1e-9);
    assert_eq!(h.applications(), info.iterations);
    // Deterministic: the same seed gives the same numbers.
    let (v2, info2) = power_iteration(&h, params).unwrap();
    assert_eq!((v, info), (v2, info2));

    // The stability limit 2/λ_max separates convergent from divergent gradient
    // descent on the (convex part of the) quadratic: with d = (0.5, 3, 2, 0.1),
    // x ← x − α·d⊙x contracts iff |1 − α·d_i| < 1 for all i.
    let limit = info.stability_limit();
    assert!((limit - 2.0 / 3.0).abs() < 1e-9);
    let run = |alpha: f64| {
        let mut x = [1.0, 1.0, 1.0, 1.0];
        for _ in 0..200 {
            for (xi, di) in x.iter_mut().zip([0.5, 3.0, 2.0, 0.1]) {
                *xi -= alpha * di * *xi;
            }
        }
        norm(&x)
    };
    assert!(run(0.95 * limit) < 1e-3);
    assert!(run(1.05 * limit) > 1e3);
}

#[test]
fn power_iteration_reports_non_convergence_for_opposite_eigenvalues() {
    // ±2: the iterate oscillates between eigenvectors and never settles.
    let a = DenseOp::new(2, vec![2.0, 0.0, 0.0, -2.0]);
    let err = power_iteration(
        &a,
        PowerParams {
            max_iter: 50,
            ..PowerParams::default()
        },
    );
    assert!(
        matches!(err, Err(PowerError::NotConverged { iterations: 50, .. })),
        "{err:?}"
    );
}

#[test]
fn hessian_operator_reuses_its_workspace_and_composes() {
    let f = Diag {
        d: Tensor::vector(vec![1.0, 2.0, 3.0]),
    };
    let x = [Tensor::vector(vec![0.3, -0.2, 0.9])];
    let h = Hessian::new(&f, &x);
    let mut out = [0.0; 3];
    h.apply(&[1.0, 1.0, 1.0], &mut out);
    assert_eq!(out, [1.0, 2.0, 3.0]);
    let ws = h.into_workspace();
    let reserved = ws.dual.bytes_reserved();
    assert!(reserved > 0);
    let h = Hessian::block_with_workspace(&f, &x, &[0], ws);
    for _ in 0..5 {
        h.apply(&[1.0, -1.0, 0.5], &mut out);
    }
    let ws = h.into_workspace();
    assert_eq!(
        ws.dual.bytes_reserved(),
        reserved,
        "re-recording must not grow the tape"
    );

    // (H + λI), a closure operator and the identity, densified.
    let h = Hessian::new(&f, &x);
    let damped = dense_matrix(&Damped::new(&h, 0.5));
    assert_eq!(
        damped.data(),
        &[1.5, 0.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 3.5]
    );
    let twice = FnOp::new(3, |x: &[f64], out: &mut [f64]| {
        out.iter_mut().zip(x).for_each(|(o, v)| *o = 2.0 * v)
    });
    assert_eq!(
        dense_matrix(&twice).data(),
        dense_matrix(&Damped::new(Identity::new(3), 1.0)).data()
    );

    // CG through the damped Hessian: (diag(1,2,3) + 0.5I) x = b.
    let (sol, _) = cg(&Damped::new(&h, 0.5), &[1.5, 2.5, 7.0], CgParams::default()).unwrap();
    assert_close("CG on damped Hessian", &sol, &[1.0, 1.0, 2.0], 1e-12);
}

/// y = tanh(Wx): J = diag(1 − y²)·W.
struct TanhLayer {
    w: Tensor<f64>,
}

impl VectorFunction<f64> for TanhLayer {
    fn eval<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let n = x[0].shape().numel();
        t.constant_base(&self.w)
            .matmul(x[0].reshape([n, 1]))
            .tanh()
            .reshape([self.w.dims()[0]])
    }
}

#[test]
fn dense_jacobian_matches_closed_form() {
    let mut r = rng(5);
    let (m, n) = (3, 4);
    let w = uniform(&mut r, &[m, n], -1.0, 1.0);
    let x = uniform(&mut r, &[n], -1.0, 1.0);
    let j = dense_jacobian(&TanhLayer { w: w.clone() }, std::slice::from_ref(&x));
    assert_eq!(j.dims(), &[m, n]);
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        let z: f64 = (0..n).map(|k| w.data()[i * n + k] * x.data()[k]).sum();
        let s = 1.0 - z.tanh().powi(2);
        for k in 0..n {
            want[i * n + k] = s * w.data()[i * n + k];
        }
    }
    assert_close("Jacobian", j.data(), &want, 1e-14);
}

#[test]
fn lanczos_finds_both_extremes_of_a_known_spectrum() {
    // A Hessian with eigenvalues spread over [−2, 5] (30 of them): f = ½ Σ d_i x_i².
    let n = 30;
    let d = Tensor::from_fn([n], |i| -2.0 + 7.0 * i as f64 / (n - 1) as f64);
    let f = Diag { d };
    let x = [uniform(&mut rng(4), &[n], -1.0, 1.0)];
    let h = Hessian::new(&f, &x);
    let info = lanczos(&h, LanczosParams::default()).unwrap();
    assert!((info.min + 2.0).abs() < 1e-8, "λ_min = {}", info.min);
    assert!((info.max - 5.0).abs() < 1e-8, "λ_max = {}", info.max);
    assert!(!info.positive_definite());
    assert!(info.iterations <= n);
    assert_eq!(h.applications(), info.iterations);
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Fixed seed: the same cases on every run, so CI cannot flake.
        rng_seed: proptest::test_runner::RngSeed::Fixed(24303),
        ..ProptestConfig::with_cases(16)
    })]

    #[test]
    fn lanczos_agrees_with_power_iteration_on_random_spd(seed in any::<u64>()) {
        let mut r = rng(seed);
        let n = 10;
        let (a, e_min, e_max) = spd_with_gaps(&mut r, n);
        let info = lanczos(&a, LanczosParams { tol: 1e-12, ..LanczosParams::default() }).unwrap();
        // Both against the spectrum the matrix was built from.
        assert!((info.max - e_max).abs() < 1e-8 * e_max, "λ_max {} vs {e_max}", info.max);
        assert!((info.min - e_min).abs() < 1e-8 * e_max, "λ_min {} vs {e_min}", info.min);
        // λ_max by power iteration on A, λ_min by power iteration on (c·I − A),
        // whose top eigenvalue is c − λ_min for c ≥ λ_max.
        let pp = PowerParams { tol: 1e-9, max_iter: 100_000, seed: 1 };
        let (_, top) = power_iteration(&a, pp).unwrap();
        let c = 1.5 * top.eigenvalue;
        let shifted = FnOp::new(n, |x: &[f64], out: &mut [f64]| {
            a.apply(x, out);
            out.iter_mut().zip(x).for_each(|(o, &xi)| *o = c * xi - *o);
        });
        let (_, bottom) = power_iteration(&shifted, pp).unwrap();
        let lmin = c - bottom.eigenvalue;
        // Power iteration's Rayleigh quotient error is O(residual²/gap); 1e-7 is loose.
        assert!((info.max - top.eigenvalue).abs() < 1e-7 * top.eigenvalue, "{} vs {}", info.max, top.eigenvalue);
        assert!((info.min - lmin).abs() < 1e-7 * top.eigenvalue, "{} vs {lmin}", info.min);
        assert!(info.positive_definite());
    }
}

#[test]
fn lanczos_reports_non_convergence() {
    let n = 50;
    let a = random_spd(&mut rng(9), n, 0.01);
    let err = lanczos(
        &a,
        LanczosParams {
            tol: 1e-14,
            max_iter: 3,
            seed: 0,
        },
    )
    .unwrap_err();
    match err {
        LanczosError::NotConverged {
            iterations,
            min,
            max,
            change,
        } => {
            assert_eq!(iterations, 3);
            assert!(min < max && change > 1e-14);
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
}

/// ‖b − Ax‖/‖b‖, computed here with the test's own product.
fn true_residual(a: &DenseOp<f64>, x: &[f64], b: &[f64]) -> f64 {
    let res: Vec<f64> = apply(a, x).iter().zip(b).map(|(p, q)| q - p).collect();
    norm(&res) / norm(b)
}

/// A = diag(1, 2, …, 5) scaled by `scale`, b = (1, …, 1).
fn neumann_diag(scale: f64) -> (DenseOp<f64>, Vec<f64>) {
    let n = 5;
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        a[i * n + i] = scale * (i + 1) as f64;
    }
    (DenseOp::new(n, a), vec![1.0; n])
}

#[test]
fn neumann_reports_its_true_residual_when_it_converges() {
    // A = diag(1..5), α = 0.3: the factors 1 − 0.3·λ are 0.7, 0.4, 0.1, −0.2, −0.5,
    // so ‖t_{j+1}‖ ≈ 0.7‖t_j‖: the last term summed is ≈ 1/0.7 times the residual.
    let (a, b) = neumann_diag(1.0);
    let p = NeumannParams {
        alpha: 0.3,
        terms: 500,
        tol: 1e-9,
    };
    let (x, info) = neumann(&a, &b, p).unwrap();
    let want = true_residual(&a, &x, &b);
    assert!(
        (info.residual - want).abs() <= 1e-12 * want,
        "reported {} vs recomputed {want}",
        info.residual
    );
    assert!(info.residual <= 1e-9 && info.terms < 500, "{info:?}");
    // The last term is not the residual (it is ≈ 1/0.7 times larger).
    assert!(info.last_term > 1.3 * info.residual, "{info:?}");
    for (i, xi) in x.iter().enumerate() {
        assert!((xi - 1.0 / (i + 1) as f64).abs() < 1e-8, "x_{i} = {xi}");
    }
}

#[test]
fn neumann_below_tolerance_is_an_error_with_its_true_residual() {
    // Too few terms: after k = 10 the residual is t_11, dominated by 0.7^11 ≈ 0.02.
    let (a, b) = neumann_diag(1.0);
    let p = NeumannParams {
        alpha: 0.3,
        terms: 10,
        tol: 1e-6,
    };
    match neumann(&a, &b, p) {
        Err(NeumannError::NotConverged {
            terms,
            residual,
            tol,
            x,
        }) => {
            assert_eq!((terms, tol), (10, 1e-6));
            let want = true_residual(&a, &x, &b);
            assert!(
                (residual - want).abs() <= 1e-12 * want,
                "{residual} vs {want}"
            );
            // Analytically, b − Ax = t_11 with entries (1 − 0.3·λ_i)^11.
            let t11: Vec<f64> = (1..=5).map(|l| (1.0 - 0.3 * l as f64).powi(11)).collect();
            assert!((residual - norm(&t11) / norm(&b)).abs() < 1e-12);
            assert!(residual > 5e-3, "{residual}");
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
    // A spectrum where the series converges slowly: λ_min·α = 1e-3, so 2000
    // terms leave (1 − 1e-3)^2001 ≈ 0.135 of the first component.
    let (a, b) = neumann_diag(1e-3);
    let p = NeumannParams {
        alpha: 1.0,
        terms: 2000,
        tol: 1e-8,
    };
    match neumann(&a, &b, p) {
        Err(NeumannError::NotConverged { residual, x, .. }) => {
            let want = true_residual(&a, &x, &b);
            assert!((residual - want).abs() <= 1e-12 * want);
            assert!(residual > 0.03, "{residual}");
        }
        other => panic!("expected NotConverged, got {other:?}"),
    }
    // b = 0 is solved exactly by x = 0, with no application.
    let (x, info) = neumann(&a, &[0.0; 5], p).unwrap();
    assert_eq!((x, info.terms, info.residual), (vec![0.0; 5], 0, 0.0));
}
