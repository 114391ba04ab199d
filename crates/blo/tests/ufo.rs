//! UFO-BLO: coupling, unbiasedness and second moment (statistically), the
//! adaptive choice of q, and the Reptile pair.
#![allow(clippy::needless_range_loop)]

mod common;

use blo::{
    optimal_q, rollout, summed_inner_loss, AdaptiveParams, BloError, Debiased, Estimate, Estimator,
    Exact, FirstOrder, InnerLoop, Policy, QChoice, ReptileExact, ReptileFirstOrder, Ufo,
};
use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::Tensor;

fn flat(g: &[Tensor<f64>]) -> Vec<f64> {
    g.iter().flat_map(|t| t.data().to_vec()).collect()
}

fn setup() -> (TanhNet, Vec<Tensor<f64>>, Wave) {
    let p = TanhNet {
        inner: InnerLoop::sgd(5, 0.4).unwrap(),
        hidden: 3,
        meta_sgd: false,
    };
    let theta = p.theta(11);
    (
        p,
        theta,
        Wave {
            amp: 1.7,
            phase: -0.4,
        },
    )
}

fn exact_and_fo(p: &TanhNet, theta: &[Tensor<f64>], w: &Wave) -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ex = Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(p, w, theta, &mut rng)
        .unwrap();
    let fo = FirstOrder::new().estimate(p, w, theta, &mut rng).unwrap();
    (flat(&ex.grad), flat(&fo.grad))
}

#[test]
fn ufo_with_q_one_is_exact() {
    let (p, theta, w) = setup();
    let (ex, _) = exact_and_fo(&p, &theta, &w);
    for policy in [
        Policy::Recompute,
        Policy::StoreAll,
        Policy::Binomial { snapshots: 2 },
    ] {
        let ufo = Ufo::fixed_with(1.0, policy).unwrap();
        let e = ufo
            .estimate(&p, &w, &theta, &mut ChaCha8Rng::seed_from_u64(5))
            .unwrap();
        assert_eq!(flat(&e.grad), ex);
        assert_eq!((e.stats.coins, e.stats.exact_branches), (1, 1));
    }
}

#[test]
fn invalid_q_is_rejected() {
    for q in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(
            matches!(
                Ufo::fixed(q),
                Err(BloError::InvalidHyperparameter { name: "q", .. })
            ),
            "{q}"
        );
    }
    let bad = AdaptiveParams {
        q_min: 0.0,
        decay: 0.99,
    };
    assert!(Ufo::adaptive_with(bad, Policy::Recompute).is_err());
    let bad = AdaptiveParams {
        q_min: 0.1,
        decay: 1.0,
    };
    assert!(Ufo::adaptive_with(bad, Policy::Recompute).is_err());
    assert!(Ufo::fixed_with(0.5, Policy::Binomial { snapshots: 0 }).is_err());
}

#[test]
fn estimates_are_deterministic_given_the_rng() {
    let (p, theta, w) = setup();
    let ufo = Ufo::fixed(0.5).unwrap();
    for seed in 0..8 {
        let a = ufo
            .estimate(&p, &w, &theta, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        let b = ufo
            .estimate(&p, &w, &theta, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        assert_eq!(flat(&a.grad), flat(&b.grad));
        assert_eq!(a.stats, b.stats);
    }
}

/// On a fixed task, ξ is the only randomness: g = g_FO + (ξ/q)(g_ex − g_FO).
/// With N samples the mean is within 4 standard errors of g_ex in every
/// coordinate (a 4σ event has probability ≈ 6e-5 per coordinate, and the seeds
/// are fixed, so the test is deterministic), while g_FO is > 10 standard
/// errors away in some coordinate. The empirical second moment matches
/// ‖g_ex‖² + (1/q − 1)‖g_FO − g_ex‖² within 4 standard errors of ‖g‖².
#[test]
fn ufo_is_unbiased_and_has_the_predicted_second_moment() {
    let (p, theta, w) = setup();
    let (ex, fo) = exact_and_fo(&p, &theta, &w);
    let q = 0.25;
    let ufo = Ufo::fixed(q).unwrap();
    let n = 4000;
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let samples: Vec<Vec<f64>> = (0..n)
        .map(|_| flat(&ufo.estimate(&p, &w, &theta, &mut rng).unwrap().grad))
        .collect();
    let d = ex.len();
    let mut fo_far = 0.0f64;
    for i in 0..d {
        let mean = samples.iter().map(|s| s[i]).sum::<f64>() / n as f64;
        let var = samples.iter().map(|s| (s[i] - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        if se == 0.0 {
            assert_eq!(ex[i], fo[i]);
            continue;
        }
        assert!(
            (mean - ex[i]).abs() < 4.0 * se,
            "coord {i}: mean {mean} exact {} se {se}",
            ex[i]
        );
        fo_far = fo_far.max((fo[i] - ex[i]).abs() / se);
    }
    assert!(
        fo_far > 10.0,
        "first order is only {fo_far} standard errors from exact"
    );

    let sq: Vec<f64> = samples
        .iter()
        .map(|s| s.iter().map(|x| x * x).sum())
        .collect();
    let m2 = sq.iter().sum::<f64>() / n as f64;
    let se2 = (sq.iter().map(|x| (x - m2).powi(2)).sum::<f64>() / (n - 1) as f64 / n as f64).sqrt();
    let ex2: f64 = ex.iter().map(|x| x * x).sum();
    let d2: f64 = ex.iter().zip(&fo).map(|(a, b)| (a - b).powi(2)).sum();
    let predicted = ex2 + (1.0 / q - 1.0) * d2;
    assert!(
        (m2 - predicted).abs() < 4.0 * se2,
        "E‖g‖² {m2} vs {predicted} (se {se2})"
    );
}

fn observe_batches(
    ufo: &mut Ufo,
    p: &TanhNet,
    theta: &[Tensor<f64>],
    tasks: &[Wave],
    rounds: usize,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for _ in 0..rounds {
        let ests: Vec<Estimate<f64>> = tasks
            .iter()
            .map(|w| ufo.estimate(p, w, theta, &mut rng).unwrap())
            .collect();
        Estimator::<f64, TanhNet>::observe(ufo, &ests);
    }
}

#[test]
fn adaptive_q_follows_the_closed_form_from_its_moving_averages() {
    let tasks = [
        Wave {
            amp: 1.7,
            phase: -0.4,
        },
        Wave {
            amp: 0.6,
            phase: 1.0,
        },
    ];
    // A small inner step keeps first order close to exact (interior q*); a
    // large one makes D² exceed V² (q* = 1).
    for (alpha, interior) in [(0.02, true), (0.4, false)] {
        let p = TanhNet {
            inner: InnerLoop::sgd(5, alpha).unwrap(),
            hidden: 3,
            meta_sgd: false,
        };
        let theta = p.theta(11);
        let mut ufo = Ufo::adaptive();
        assert_eq!(ufo.q(), 0.05, "starts at q_min");
        observe_batches(&mut ufo, &p, &theta, &tasks, 40);
        let (d2, v2, c_det, c_rnd) = ufo.moments().expect("exact samples were seen");
        assert_eq!(ufo.q(), optimal_q(c_det, c_rnd, v2, d2, 0.05));
        // Costs in gradient units for r = 5, Recompute: FO = 5 + 2; the exact
        // branch continues the rollout, so it adds only the recomputation
        // (15 − 5 steps), its Φ_0 VJP and 2·5 for the HVP passes.
        assert!(
            (c_det - 7.0).abs() < 1e-12 && (c_rnd - 21.0).abs() < 1e-12,
            "{c_det} {c_rnd}"
        );
        if interior {
            assert!(
                v2 > d2 && ufo.q() > 0.05 && ufo.q() < 1.0,
                "α={alpha}: D² {d2} V² {v2} q {}",
                ufo.q()
            );
        } else {
            assert!(
                d2 >= v2 && ufo.q() == 1.0,
                "α={alpha}: D² {d2} V² {v2} q {}",
                ufo.q()
            );
        }

        // save/load round trip restores the state bit for bit.
        let saved = Estimator::<f64, TanhNet>::save_state(&ufo);
        let mut other = Ufo::adaptive();
        Estimator::<f64, TanhNet>::load_state(&mut other, &saved).unwrap();
        assert_eq!(other.q().to_bits(), ufo.q().to_bits());
        assert_eq!(other.moments(), ufo.moments());
        assert!(
            Estimator::<f64, TanhNet>::load_state(&mut other, &serde_json::json!({"q": 1}))
                .is_err()
        );
    }
}

#[test]
fn optimal_q_minimises_cost_times_second_moment() {
    // D² = 0 (first order exact): as rarely as allowed.
    assert_eq!(optimal_q(7.0, 27.0, 1.0, 0.0, 0.05), 0.05);
    // D² ≥ V²: always exact.
    assert_eq!(optimal_q(7.0, 27.0, 1.0, 1.5, 0.05), 1.0);
    // Interior: q* = √(C_det D² / (C_rnd (V² − D²))) = √(7·0.2/(27·0.8)).
    let q = optimal_q(7.0, 27.0, 1.0, 0.2, 0.05);
    assert!((q - (7.0 * 0.2 / (27.0 * 0.8f64)).sqrt()).abs() < 1e-15);
    // And q* minimises (C_det + q C_rnd)(V² + (1/q − 1) D²) on a fine grid.
    let f = |q: f64| (7.0 + q * 27.0) * (1.0 + (1.0 / q - 1.0) * 0.2);
    let grid_best = (1..=1000)
        .map(|i| i as f64 / 1000.0)
        .min_by(|a, b| f(*a).total_cmp(&f(*b)))
        .unwrap();
    assert!((grid_best - q).abs() < 1e-3, "{grid_best} vs {q}");
}

#[test]
fn fixed_q_ignores_observations() {
    let (p, theta, w) = setup();
    let mut ufo = Ufo::fixed(0.3).unwrap();
    observe_batches(&mut ufo, &p, &theta, &[w], 5);
    assert_eq!(ufo.q(), 0.3);
    assert!(Estimator::<f64, TanhNet>::save_state(&ufo).is_null());
}

#[test]
fn reptile_pair_surrogate_is_reptile_and_exact_is_the_summed_loss_gradient() {
    let (p, theta, w) = setup();
    let alpha = 0.4;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Surrogate = (θ − φ_r)/α for MAML's φ_0 = θ.
    let rep = ReptileFirstOrder
        .estimate(&p, &w, &theta, &mut rng)
        .unwrap();
    let (phi_r, _) = rollout(&p, &w, &theta).unwrap();
    for (g, (t, f)) in rep.grad.iter().zip(theta.iter().zip(&phi_r.phi)) {
        for (gi, (ti, fi)) in g.data().iter().zip(t.data().iter().zip(f.data())) {
            assert!((gi - (ti - fi) / alpha).abs() < 1e-12);
        }
    }
    // Exact = ∇ Σ_j L_in(φ_{j−1}(θ)) by central differences.
    let ex = ReptileExact::new(Policy::Binomial { snapshots: 2 })
        .unwrap()
        .estimate(&p, &w, &theta, &mut rng)
        .unwrap();
    let g = flat(&ex.grad);
    let mut th = theta.clone();
    let mut k = 0;
    for ti in 0..th.len() {
        for e in 0..th[ti].numel() {
            let x0 = th[ti].data()[e];
            let h = 1e-5;
            th[ti].data_mut()[e] = x0 + h;
            let fp = summed_inner_loss(&p, &w, &th).unwrap();
            th[ti].data_mut()[e] = x0 - h;
            let fm = summed_inner_loss(&p, &w, &th).unwrap();
            th[ti].data_mut()[e] = x0;
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (g[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                "entry {k}: {} vs {fd}",
                g[k]
            );
            k += 1;
        }
    }
    // The bits do not depend on the policy, and debiasing with q = 1 returns them.
    let ex2 = ReptileExact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &w, &theta, &mut rng)
        .unwrap();
    assert_eq!(flat(&ex2.grad), g);
    let d = Debiased::new(
        ReptileFirstOrder,
        ReptileExact::new(Policy::Recompute).unwrap(),
        QChoice::Fixed(1.0),
    )
    .unwrap();
    assert_eq!(flat(&d.estimate(&p, &w, &theta, &mut rng).unwrap().grad), g);
    assert!(Debiased::reptile(0.2).is_ok());
    // Reptile's direction needs plain SGD.
    let pm = TanhNet {
        inner: InnerLoop::momentum(3, 0.1, 0.5).unwrap(),
        hidden: 3,
        meta_sgd: false,
    };
    assert!(ReptileFirstOrder
        .estimate(&pm, &w, &pm.theta(0), &mut rng)
        .is_err());
}
