//! The exact hypergradient against closed forms and central differences.
#![allow(clippy::needless_range_loop)]

mod common;

use blo::{Estimator, Exact, InnerLoop, Policy};
use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::Tensor;

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(7)
}

#[test]
fn exact_matches_closed_form_on_quadratic_maml() {
    for (r, alpha) in [(1, 0.3), (5, 0.2), (20, 0.1)] {
        let p = QuadMaml::new(4, InnerLoop::sgd(r, alpha).unwrap());
        let theta = vec![0.3, -0.5, 1.2, 0.1];
        let want = p.closed_form(alpha, r, &theta);
        for policy in [
            Policy::StoreAll,
            Policy::Recompute,
            Policy::Sqrt,
            Policy::Binomial { snapshots: 2 },
        ] {
            let e = Exact::new(policy)
                .unwrap()
                .estimate(&p, &(), &[Tensor::vector(theta.clone())], &mut rng())
                .unwrap();
            let err = rel_err(e.grad[0].data(), &want);
            assert!(err <= 1e-10, "r={r} {policy:?}: rel err {err:e}");
        }
    }
}

#[test]
fn exact_matches_closed_form_on_ridge_hyperparameters() {
    for (r, alpha) in [(1, 0.3), (7, 0.2), (25, 0.15)] {
        let p = Ridge::new(3, 8, InnerLoop::sgd(r, alpha).unwrap());
        let theta = vec![-0.5, 0.2, -1.0];
        let want = p.closed_form(alpha, r, &theta);
        let e = Exact::new(Policy::StoreAll)
            .unwrap()
            .estimate(&p, &(), &[Tensor::vector(theta.clone())], &mut rng())
            .unwrap();
        let err = rel_err(e.grad[0].data(), &want);
        assert!(
            err <= 1e-10,
            "r={r}: rel err {err:e}, got {:?} want {want:?}",
            e.grad[0].data()
        );
    }
}

#[test]
fn exact_runs_in_f32_too() {
    // Same closed form as above, evaluated in f64; the f32 sweep agrees to f32 precision.
    let (r, alpha) = (5, 0.2);
    let p = QuadMaml::new(4, InnerLoop::sgd(r, alpha).unwrap());
    let theta = vec![0.3, -0.5, 1.2, 0.1];
    let want = p.closed_form(alpha, r, &theta);
    let th32 = [Tensor::vector(theta.iter().map(|&x| x as f32).collect())];
    for policy in [Policy::StoreAll, Policy::Binomial { snapshots: 2 }] {
        let e = Exact::new(policy)
            .unwrap()
            .estimate(&p, &(), &th32, &mut rng())
            .unwrap();
        let got: Vec<f64> = e.grad[0].data().iter().map(|&x| x as f64).collect();
        assert!(
            rel_err(&got, &want) < 1e-5,
            "{policy:?}: {got:?} vs {want:?}"
        );
    }
}
