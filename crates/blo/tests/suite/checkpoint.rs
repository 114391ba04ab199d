//! Every checkpoint policy gives StoreAll's hypergradient bit for bit, and the
//! states held and forward steps match the theory (revolve's optimum for the
//! binomial schedule).
#![allow(clippy::needless_range_loop)]

mod common;

use blo::{revolve_cost, Estimate, Estimator, Exact, InnerLoop, Policy};
use common::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn run(p: &TanhNet, policy: Policy, theta: &[tape::Tensor<f64>]) -> Estimate<f64> {
    let task = Wave {
        amp: 1.3,
        phase: 0.4,
    };
    Exact::new(policy)
        .unwrap()
        .estimate(p, &task, theta, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap()
}

fn bits(e: &Estimate<f64>) -> Vec<u64> {
    e.grad
        .iter()
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

/// The recurrence of revolve, by dynamic programming: t(1, s) = 0,
/// t(l, 1) = l(l−1)/2, t(l, s) = min_{1≤m<l} m + t(l−m, s−1) + t(m, s).
fn revolve_dp(lmax: usize, smax: usize) -> Vec<Vec<u128>> {
    let mut t = vec![vec![0u128; smax + 1]; lmax + 1];
    for l in 1..=lmax {
        for s in 1..=smax {
            t[l][s] = if l == 1 {
                0
            } else if s == 1 {
                (l * (l - 1) / 2) as u128
            } else {
                (1..l)
                    .map(|m| m as u128 + t[l - m][s - 1] + t[m][s])
                    .min()
                    .unwrap()
            };
        }
    }
    t
}

#[test]
fn revolve_closed_form_equals_the_recurrence() {
    let dp = revolve_dp(120, 7);
    for l in 1..=120 {
        for s in 1..=7 {
            assert_eq!(revolve_cost(l, s), dp[l][s], "l={l} s={s}");
        }
    }
    // Spot value by hand: l = 6, s = 2: β(2,1) = 3 < 6 ≤ β(2,2) = 6, τ = 2,
    // t = 2·6 − β(3,1) = 12 − 4 = 8.
    assert_eq!(revolve_cost(6, 2), 8);
}

/// docs/math.md §9's optimum over the whole unroll, by dynamic programming:
/// U(l, s) = 0 if l ≤ 1 or s ≥ l; U(l, 1) = T(l, 1);
/// U(l, s) = min_{1≤m<l} U(l − m, s − 1) + T(m, s); the total is r + U(r, s).
fn whole_unroll_optimum(r: usize, s: usize) -> usize {
    let t = revolve_dp(r.max(1), s);
    let mut u = vec![vec![0u128; s + 1]; r + 1];
    for l in 2..=r {
        for c in 1..=s {
            u[l][c] = if c >= l {
                0
            } else if c == 1 {
                t[l][1]
            } else {
                (1..l).map(|m| u[l - m][c - 1] + t[m][c]).min().unwrap()
            };
        }
    }
    r + u[r][s] as usize
}

/// Peak states of EveryK with spacing k (φ_0 is regenerated, not held): the
/// first sweep holds the n − 1 checkpoints φ_k, φ_2k, … plus the working
/// state; reversing segment c (0-based, length L_c) holds the c checkpoints
/// up to its own (φ_0's one buffer for c = 0) plus the L_c − 1 states it
/// recomputes.
fn every_k_peak(r: usize, k: usize) -> usize {
    let n = r.div_ceil(k);
    let seg = (0..n)
        .map(|c| c.max(1) + k.min(r - c * k) - 1)
        .max()
        .unwrap();
    seg.max(n)
}

fn check_counts(r: usize, policy: Policy, e: &Estimate<f64>, momentum: bool) {
    let s = &e.stats;
    assert_eq!(s.hvps, r, "{policy:?}: one HVP pass per step");
    assert_eq!(
        s.gradients,
        s.forward_steps + 2,
        "{policy:?}: steps + outer + Φ_0 VJP"
    );
    let (steps, peak) = match policy {
        Policy::StoreAll => (r, r),
        Policy::Recompute => (r * (r + 1) / 2, 1),
        Policy::EveryK { k } => (2 * r - r.div_ceil(k), every_k_peak(r, k)),
        Policy::Sqrt => unreachable!(),
        Policy::Binomial { snapshots } => (whole_unroll_optimum(r, snapshots), s.states_peak),
    };
    assert_eq!(s.forward_steps, steps, "{policy:?} r={r}: forward steps");
    assert_eq!(s.states_peak, peak, "{policy:?} r={r}: states at peak");
    if let Policy::Binomial { snapshots } = policy {
        assert!(
            s.states_peak <= snapshots,
            "binomial r={r} s={snapshots}: {} states",
            s.states_peak
        );
    }
    // One state is one [h,2] + [h] weight set here (twice that with a velocity).
    let per_state =
        e.grad.iter().map(|t| t.numel()).sum::<usize>() * 8 * if momentum { 2 } else { 1 };
    assert_eq!(s.state_bytes_peak, s.states_peak * per_state);
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Fixed seed: the same cases on every run, so CI cannot flake.
        rng_seed: proptest::test_runner::RngSeed::Fixed(24302),
        ..ProptestConfig::with_cases(32)
    })]
    #[test]
    fn every_policy_equals_store_all_bit_for_bit(
        r in 1usize..=14,
        k in 1usize..=15,
        s in 1usize..=15,
        momentum in any::<bool>(),
    ) {
        let inner = if momentum {
            InnerLoop::momentum(r, 0.1, 0.7).unwrap()
        } else {
            InnerLoop::sgd(r, 0.15).unwrap()
        };
        let p = TanhNet { inner, hidden: 3, meta_sgd: false };
        let theta = p.theta(3);
        let base = run(&p, Policy::StoreAll, &theta);
        check_counts(r, Policy::StoreAll, &base, momentum);
        for policy in [Policy::Recompute, Policy::EveryK { k }, Policy::Binomial { snapshots: s }, Policy::Sqrt] {
            let e = run(&p, policy, &theta);
            prop_assert_eq!(bits(&e), bits(&base), "{:?}", policy);
            prop_assert_eq!(e.outer_loss.to_bits(), base.outer_loss.to_bits());
            if policy != Policy::Sqrt {
                check_counts(r, policy, &e, momentum);
            }
        }
    }
}

#[test]
fn binomial_memory_is_logarithmic_and_time_near_linear() {
    // r = 100 with 5 snapshots. Placing them only during the reversal would
    // cost 100 + t(100, 5): β(5, τ) = C(5 + τ, 5) ≥ 100 at τ = 4 (C(9,5) = 126),
    // t = 4·100 − β(6, 3) = 400 − 84 = 316. Placing them during the first
    // sweep (the plan) does better: r + U(100, 5).
    let p = TanhNet {
        inner: InnerLoop::sgd(100, 0.05).unwrap(),
        hidden: 2,
        meta_sgd: false,
    };
    let theta = p.theta(0);
    let e = run(&p, Policy::Binomial { snapshots: 5 }, &theta);
    assert_eq!(revolve_cost(100, 5), 316);
    let opt = whole_unroll_optimum(100, 5);
    assert!(opt < 100 + 316, "{opt}");
    assert_eq!(e.stats.forward_steps, opt);
    assert!(e.stats.states_peak <= 5);
    assert_eq!(bits(&e), bits(&run(&p, Policy::StoreAll, &theta)));
}

#[test]
fn zero_budgets_are_rejected_at_construction() {
    assert!(Exact::new(Policy::Binomial { snapshots: 0 }).is_err());
    assert!(Exact::new(Policy::EveryK { k: 0 }).is_err());
    assert!(Policy::Binomial { snapshots: 0 }.validate().is_err());
    assert!(Policy::EveryK { k: 0 }.validate().is_err());
    assert!(Policy::Binomial { snapshots: 1 }.validate().is_ok());
    // The deprecated checked constructors still work.
    #[allow(deprecated)]
    {
        assert!(Policy::binomial(0).is_err());
        assert!(Policy::every_k(0).is_err());
        assert_eq!(
            Policy::binomial(1).unwrap(),
            Policy::Binomial { snapshots: 1 }
        );
    }
}
