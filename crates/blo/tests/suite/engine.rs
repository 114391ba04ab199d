//! The unrolling engine end to end: plans executed on a real problem hold
//! and cost what they predict; UFO's exact branch continues the first-order
//! rollout (same bits as running the two estimators separately, and only the
//! exact extra in forward steps); a memory budget picks the fastest plan.

mod common;

use blo::engine::plan::{self, optimal_forward_steps, Budget};
use blo::{BloError, Estimate, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, Ufo};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::Tensor;

fn task() -> Wave {
    Wave {
        amp: 1.3,
        phase: 0.4,
    }
}

fn bits(g: &[Tensor<f64>]) -> Vec<u64> {
    g.iter()
        .flat_map(|t| t.data().iter().map(|x| x.to_bits()))
        .collect()
}

fn net(r: usize, momentum: bool) -> TanhNet {
    let inner = if momentum {
        InnerLoop::momentum(r, 0.05, 0.7).unwrap()
    } else {
        InnerLoop::sgd(r, 0.1).unwrap()
    };
    TanhNet {
        inner,
        hidden: 5,
        meta_sgd: false,
    }
}

fn estimate<E: Estimator<f64, TanhNet>>(e: &E, p: &TanhNet, seed: u64) -> Estimate<f64> {
    let theta = p.theta(3);
    e.estimate(p, &task(), &theta, &mut ChaCha8Rng::seed_from_u64(seed))
        .unwrap()
}

/// Binomial over the whole unroll: the measured forward steps are revolve's
/// optimum r + U(r, s) (docs/math.md §9, by the plan module's independent
/// dynamic program), the peak is at most s states, and `Stats` reports the
/// plan's prediction beside the measurement; the bits are store-all's.
#[test]
fn binomial_runs_at_revolves_optimum_within_s_states() {
    for (r, s) in [(1, 1), (7, 2), (12, 3), (30, 4), (50, 7)] {
        let p = net(r, false);
        let store = estimate(&Exact::new(Policy::StoreAll).unwrap(), &p, 0);
        let e = estimate(
            &Exact::new(Policy::Binomial { snapshots: s }).unwrap(),
            &p,
            0,
        );
        assert_eq!(bits(&e.grad), bits(&store.grad), "r={r} s={s}");
        let opt = optimal_forward_steps(r, s) as usize;
        assert_eq!(e.stats.forward_steps, opt, "r={r} s={s}");
        assert_eq!(e.stats.planned_forward_steps, opt, "r={r} s={s}");
        assert!(
            e.stats.states_peak <= s,
            "r={r} s={s}: peak {}",
            e.stats.states_peak
        );
        assert_eq!(
            e.stats.states_peak, e.stats.planned_states_peak,
            "r={r} s={s}"
        );
        assert_eq!(e.stats.hvps, r);
    }
    // docs/math.md §9's example, measured on a problem.
    let e = estimate(
        &Exact::new(Policy::Binomial { snapshots: 7 }).unwrap(),
        &net(50, false),
        0,
    );
    assert_eq!(e.stats.forward_steps, 108);
}

/// Every policy's measured counts are its plan's (store-all now holds r
/// states: φ_0 is regenerated for the last adjoint step instead of kept).
#[test]
fn every_policy_measures_what_its_plan_predicts() {
    for momentum in [false, true] {
        let r = 9;
        let p = net(r, momentum);
        let reference = estimate(&Exact::new(Policy::StoreAll).unwrap(), &p, 0);
        for policy in [
            Policy::StoreAll,
            Policy::Recompute,
            Policy::Sqrt,
            Policy::EveryK { k: 4 },
            Policy::Binomial { snapshots: 3 },
        ] {
            let e = estimate(&Exact::new(policy).unwrap(), &p, 0);
            let pl = plan::plan(policy, r);
            assert_eq!(bits(&e.grad), bits(&reference.grad), "{policy:?}");
            assert_eq!(e.stats.forward_steps, pl.forward_steps(), "{policy:?}");
            assert_eq!(e.stats.states_peak, pl.peak(), "{policy:?}");
            let one = p.theta(3)[..2].iter().map(|t| t.numel()).sum::<usize>()
                * if momentum { 2 } else { 1 }
                * 8;
            assert_eq!(e.stats.state_bytes_peak, pl.peak() * one, "{policy:?}");
        }
        let store = estimate(&Exact::new(Policy::StoreAll).unwrap(), &p, 0);
        assert_eq!((store.stats.states_peak, store.stats.forward_steps), (r, r));
    }
}

/// UFO with the exact branch continuing the first-order rollout gives the
/// bits of the uncoupled estimator on the same coins: g_FO + (g_E − g_FO)/q
/// with g_FO and g_E computed by separate runs, and the coin drawn from the
/// same stream. Its forward steps are the first-order rollout's r plus only
/// the exact branch's recomputation (the plan's total), not r + the plan's.
#[test]
fn ufo_exact_branch_continues_the_first_order_rollout() {
    let q = 0.4;
    for momentum in [false, true] {
        let r = 8;
        let p = net(r, momentum);
        for policy in [
            Policy::Recompute,
            Policy::StoreAll,
            Policy::Binomial { snapshots: 3 },
            Policy::Sqrt,
        ] {
            let ufo = Ufo::fixed_with(q, policy).unwrap();
            let fo = estimate(&FirstOrder::new(), &p, 0);
            let ex = estimate(&Exact::new(policy).unwrap(), &p, 0);
            let plan_steps = plan::plan(policy, r).forward_steps();
            let mut branches = 0;
            for seed in 0..40 {
                let e = estimate(&ufo, &p, seed);
                let coin = ChaCha8Rng::seed_from_u64(seed).gen::<f64>() < q;
                assert_eq!(e.stats.coins, 1);
                assert_eq!(e.stats.exact_branches, usize::from(coin), "seed {seed}");
                let expect: Vec<Tensor<f64>> = if coin {
                    let w = 1.0 / q;
                    fo.grad
                        .iter()
                        .zip(&ex.grad)
                        .map(|(s, x)| {
                            Tensor::new(
                                s.shape(),
                                s.data()
                                    .iter()
                                    .zip(x.data())
                                    .map(|(&a, &b)| a + w * (b - a))
                                    .collect(),
                            )
                        })
                        .collect()
                } else {
                    fo.grad.clone()
                };
                assert_eq!(bits(&e.grad), bits(&expect), "{policy:?} seed {seed}");
                let steps = if coin { plan_steps } else { r };
                assert_eq!(e.stats.forward_steps, steps, "{policy:?} seed {seed}");
                if coin {
                    branches += 1;
                    // The sample for the adaptive q: the exact branch's cost is
                    // only what it added (the reversal), not a whole estimate.
                    let d = e.stats.debias.as_ref().unwrap();
                    let extra = (plan_steps - r) as f64 + 2.0 * r as f64 + 1.0;
                    assert_eq!(d.exact_cost, Some(extra), "{policy:?}");
                    assert_eq!(d.surrogate_cost, (r + 2) as f64);
                }
            }
            assert!(branches > 5, "the coin never came up often enough to test");
        }
    }
}

/// A memory budget picks the fastest plan that fits: the binomial plan with
/// as many states as fit (store-all when r fit); too small a budget is the
/// typed error that says the minimum.
#[test]
fn a_memory_budget_picks_the_fastest_plan_that_fits() {
    let r = 20;
    let p = net(r, false);
    let theta = p.theta(3);
    let state_bytes = theta[..2].iter().map(|t| t.numel()).sum::<usize>() * 8;
    let store = estimate(&Exact::new(Policy::StoreAll).unwrap(), &p, 0);
    for states in [1, 2, 3, 5, 19, 20, 25] {
        for budget in [
            Budget::States(states),
            Budget::Bytes(states * state_bytes + state_bytes / 2),
        ] {
            let e = estimate(&Exact::with_budget(budget), &p, 0);
            let s = states.min(r);
            assert_eq!(bits(&e.grad), bits(&store.grad), "{budget}");
            assert!(
                e.stats.states_peak <= s,
                "{budget}: peak {}",
                e.stats.states_peak
            );
            assert_eq!(
                e.stats.forward_steps,
                optimal_forward_steps(r, s) as usize,
                "{budget}"
            );
        }
    }
    let err = Exact::with_budget(Budget::Bytes(state_bytes - 1))
        .estimate(&p, &task(), &theta, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap_err();
    match err {
        BloError::Budget(e) => {
            assert_eq!((e.minimum_states, e.minimum_bytes), (1, state_bytes));
        }
        e => panic!("expected a budget error, got {e}"),
    }
    assert!(Exact::with_budget(Budget::States(0))
        .estimate(&p, &task(), &theta, &mut ChaCha8Rng::seed_from_u64(0))
        .is_err());
}

/// The problem trait is used only through the public API here; make sure the
/// test problem is what the other tests assume (Φ_0 takes the first two θ
/// tensors).
#[test]
fn test_problem_sanity() {
    let p = net(3, false);
    let theta = p.theta(3);
    let s = blo::rollout(&p, &task(), &theta).unwrap().0;
    assert_eq!(s.phi.len(), 2);
    let _ = <TanhNet as Problem<f64>>::inner_loop(&p);
}

/// L_in = Σ a² + Σ b² + Σ √c over φ = (a, b, c), θ = φ_0: with an element of
/// c at 0 the loss is finite and ∂L/∂c is +∞ there, while a's and b's
/// gradients are finite.
struct SqrtAtZero {
    inner: InnerLoop,
}

impl Problem<f64> for SqrtAtZero {
    type Task = ();
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: tape::Real<Base = f64>>(
        &self,
        _t: &'t tape::Tape<T>,
        _: &(),
        _j: usize,
        _theta: &[tape::Var<'t, T>],
        phi: &[tape::Var<'t, T>],
    ) -> tape::Var<'t, T> {
        phi[0].square().sum() + phi[1].square().sum() + phi[2].sqrt().sum()
    }
    fn outer_loss<'t, T: tape::Real<Base = f64>>(
        &self,
        _t: &'t tape::Tape<T>,
        _: &(),
        _theta: &[tape::Var<'t, T>],
        phi: &[tape::Var<'t, T>],
    ) -> tape::Var<'t, T> {
        phi[0].sum()
    }
}

/// SGD checks the gradient and updates φ in one pass per tensor, so a
/// non-finite gradient in the last tensor is found after the first ones were
/// updated: the step still fails naming step j and "inner gradient", and
/// leaves the state as it was, bit for bit (restored from the pass's leaves).
/// With c away from 0 the same step succeeds and is φ − α·∇L.
#[test]
fn a_non_finite_sgd_gradient_leaves_the_state_unchanged() {
    let p = SqrtAtZero {
        inner: InnerLoop::sgd(2, 0.1).unwrap(),
    };
    let a = Tensor::vector((0..37).map(|i| 0.3 + i as f64 / 7.0).collect());
    let b = Tensor::vector((0..70).map(|i| -1.0 + i as f64 / 9.0).collect());
    let c_at = |z: f64| {
        Tensor::vector(
            (0..19)
                .map(|i| if i == 11 { z } else { 1.0 + i as f64 })
                .collect(),
        )
    };
    let bits = |s: &blo::State<f64>| bits(&s.phi);
    let mut ws = blo::InnerWorkspace::new();
    let th = vec![a.clone(), b.clone(), c_at(0.0)];
    let mut s = ws.initial_state(&p, &(), &th).unwrap();
    let before = bits(&s);
    let err = ws.step_in_place(&p, &(), 1, &th, &mut s).unwrap_err();
    assert!(
        matches!(
            err,
            BloError::NonFinite {
                what: "inner gradient",
                step: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(bits(&s), before, "the state changed");
    let th = vec![a.clone(), b.clone(), c_at(4.0)];
    let mut s = ws.initial_state(&p, &(), &th).unwrap();
    ws.step_in_place(&p, &(), 1, &th, &mut s).unwrap();
    for (x, x0) in s.phi[0].data().iter().zip(a.data()) {
        assert_eq!(*x, x0 - 0.1 * (2.0 * x0));
    }
}

/// Two tasks stacked, φ_0 = `scale`·(θ, θ); it promises two tiles of θ when
/// `promise` (a broken promise when `scale` ≠ 1).
struct Tiled {
    inner: InnerLoop,
    scale: f64,
    promise: bool,
}

impl Problem<f64> for Tiled {
    type Task = Tensor<f64>;
    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }
    fn inner_loss<'t, T: tape::Real<Base = f64>>(
        &self,
        t: &'t tape::Tape<T>,
        c: &Tensor<f64>,
        _j: usize,
        _theta: &[tape::Var<'t, T>],
        phi: &[tape::Var<'t, T>],
    ) -> tape::Var<'t, T> {
        (phi[0] - t.constant_base(c)).square().sum() * 0.5
    }
    fn outer_loss<'t, T: tape::Real<Base = f64>>(
        &self,
        t: &'t tape::Tape<T>,
        c: &Tensor<f64>,
        theta: &[tape::Var<'t, T>],
        phi: &[tape::Var<'t, T>],
    ) -> tape::Var<'t, T> {
        self.inner_loss(t, c, 0, theta, phi)
    }
    fn initial_state<'t, T: tape::Real<Base = f64>>(
        &self,
        _t: &'t tape::Tape<T>,
        _c: &Tensor<f64>,
        theta: &[tape::Var<'t, T>],
    ) -> Vec<tape::Var<'t, T>> {
        vec![(theta[0] * self.scale).tile_batch(2)]
    }
    fn initial_state_tiles(&self, _c: &Tensor<f64>) -> Option<usize> {
        self.promise.then_some(2)
    }
}

fn tiled_estimate(scale: f64, promise: bool) -> Estimate<f64> {
    let p = Tiled {
        inner: InnerLoop::sgd(3, 0.5).unwrap(),
        scale,
        promise,
    };
    let (c, theta) = (
        Tensor::new([2, 2], vec![1.0, -2.0, 3.0, 0.5]),
        [Tensor::vector(vec![0.5, 0.25])],
    );
    Exact::new(Policy::StoreAll)
        .unwrap()
        .estimate(&p, &c, &theta, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap()
}

#[test]
fn a_kept_tiles_promise_gives_the_recorded_bits() {
    assert_eq!(
        bits(&tiled_estimate(1.0, true).grad),
        bits(&tiled_estimate(1.0, false).grad)
    );
}

/// A problem whose `initial_state` is not the tiles it promised is caught
/// where debug assertions are on (CI's debug run), not answered wrongly.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "initial_state_tiles promised φ_0 = 2 tiles of θ")]
fn a_broken_tiles_promise_panics_where_assertions_are_on() {
    tiled_estimate(2.0, true);
}
