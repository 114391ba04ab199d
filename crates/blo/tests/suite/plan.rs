//! Checkpoint plans as data (`blo::engine::plan`), property-tested without any
//! `Problem`: every plan is replayed by `Plan::check` and, independently, run
//! by a toy executor whose "states" are numbers (so a wrong state in a buffer
//! shows as a wrong value), and its counts are compared with docs/math.md §9's
//! recurrences evaluated by plain dynamic programming.

use std::time::Instant;

use blo::engine::plan::{
    first_order, optimal_forward_steps, plan, plan_for_budget, reversal_steps,
    reversal_steps_after_sweep, truncated, Action, Budget, Plan, PlanError,
};
use blo::{revolve_cost, Policy};

const R_MAX: usize = 300;
const S_MAX: usize = 12;

/// docs/math.md §9's T(l, s) and U(l, s), as written there, by dynamic
/// programming over l ≤ n, s ≤ s_max (indexed [l][s]; s = 0 unused).
struct Oracle {
    t: Vec<Vec<u128>>,
    u: Vec<Vec<u128>>,
}

fn oracle(n: usize, s_max: usize) -> Oracle {
    let mut t = vec![vec![0u128; s_max + 1]; n + 1];
    let mut u = vec![vec![0u128; s_max + 1]; n + 1];
    for l in 2..=n {
        for s in 1..=s_max {
            let tri = (l * (l - 1) / 2) as u128;
            t[l][s] = if s == 1 {
                tri
            } else {
                (1..l)
                    .map(|m| m as u128 + t[l - m][s - 1] + t[m][s])
                    .min()
                    .unwrap()
            };
            u[l][s] = if s >= l {
                0
            } else if s == 1 {
                t[l][1]
            } else {
                (1..l).map(|m| u[l - m][s - 1] + t[m][s]).min().unwrap()
            };
        }
    }
    Oracle { t, u }
}

/// The toy inner step: state_j = step(state_{j−1}, j), injective enough that a
/// wrong state or a skipped step changes the value.
fn step(x: u64, j: usize) -> u64 {
    x.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407 ^ j as u64)
        .rotate_left(17)
}

/// What the toy executor saw.
struct Run {
    adjoints: Vec<(usize, u64)>,
    turn: Option<u64>,
    forward_steps: usize,
    peak: usize,
}

/// Runs a plan on numbers: buffers hold values, a held-state meter counts
/// Init/Copy up and Free down. Panics on any misuse.
fn execute(p: &Plan, phi0: u64) -> Run {
    let n = p.buffers();
    let (mut held, mut val) = (vec![false; n], vec![None::<u64>; n]);
    let (mut live, mut run) = (
        0usize,
        Run {
            adjoints: vec![],
            turn: None,
            forward_steps: 0,
            peak: 0,
        },
    );
    for (i, &a) in p.actions().iter().enumerate() {
        match a {
            Action::Init { buf } | Action::Copy { to: buf, .. } => {
                assert!(!held[buf], "action {i} {a}: target held");
                let v = match a {
                    Action::Copy { from, .. } => val[from].expect("copy of an empty buffer"),
                    _ => phi0,
                };
                held[buf] = true;
                val[buf] = Some(v);
                live += 1;
                run.peak = run.peak.max(live);
            }
            Action::Advance { buf, from, to } => {
                let mut x = val[buf].expect("advance of an empty buffer");
                for j in from + 1..=to {
                    x = step(x, j);
                    run.forward_steps += 1;
                }
                val[buf] = Some(x);
            }
            Action::Turn { buf } => {
                assert!(run.turn.is_none(), "second turn");
                run.turn = Some(val[buf].expect("turn at an empty buffer"));
            }
            Action::Adjoint { buf, step } => {
                assert!(run.turn.is_some(), "adjoint before the turn");
                let x = val[buf].take().expect("adjoint at an empty buffer");
                run.adjoints.push((step, x));
            }
            Action::Free { buf } => {
                assert!(held[buf], "action {i}: free of a free buffer");
                held[buf] = false;
                val[buf] = None;
                live -= 1;
            }
        }
    }
    assert_eq!(live, 0, "buffers left held");
    run
}

/// Checks a plan every way: `check`, the toy run (adjoint j sees the true
/// state_{j−1}, r..=lowest in order; the turn sees φ_r; the meters agree), and
/// buffers = peak. Returns the checked counts.
#[track_caller]
fn verify(p: &Plan, what: &str) -> blo::engine::plan::PlanCounts {
    let c = p
        .check()
        .unwrap_or_else(|e| panic!("{what}: check failed: {e}\n{p}"));
    let r = p.r();
    let phi0 = 0x9e37_79b9_7f4a_7c15 ^ r as u64;
    let mut traj = vec![phi0];
    for j in 1..=r {
        traj.push(step(traj[j - 1], j));
    }
    let run = execute(p, phi0);
    assert_eq!(run.turn, Some(traj[r]), "{what}: turn not at φ_r");
    let want: Vec<(usize, u64)> = p.adjoint_steps().rev().map(|j| (j, traj[j - 1])).collect();
    assert_eq!(run.adjoints, want, "{what}: adjoint steps/states");
    assert_eq!(
        run.forward_steps,
        p.forward_steps(),
        "{what}: forward steps"
    );
    assert_eq!(run.peak, p.peak(), "{what}: peak");
    assert_eq!(c.forward_steps, p.forward_steps(), "{what}");
    assert_eq!(c.peak, p.peak(), "{what}");
    assert_eq!(p.buffers(), p.peak(), "{what}: lowest-free allocation");
    let (sweep, reversal) = p.split_at_turn();
    assert!(matches!(sweep.last(), Some(Action::Turn { .. })), "{what}");
    assert!(
        !reversal.iter().any(|a| matches!(a, Action::Turn { .. })),
        "{what}"
    );
    c
}

/// The documented peak of `EveryK { k }`: n − 1 snapshots and the working
/// buffer in the first sweep; max(i, 1) + len_i − 1 while segment i is reversed.
fn every_k_peak(r: usize, k: usize) -> usize {
    if r == 0 {
        return 1;
    }
    let n = r.div_ceil(k);
    (0..n).fold(n, |p, i| p.max(i.max(1) + k.min(r - i * k) - 1))
}

#[test]
fn recurrences_closed_forms_and_reference_examples() {
    let o = oracle(R_MAX, S_MAX);
    for l in 0..=R_MAX {
        for s in 1..=S_MAX {
            assert_eq!(reversal_steps(l, s), o.t[l][s], "T({l}, {s})");
            assert_eq!(revolve_cost(l, s), o.t[l][s], "revolve_cost({l}, {s})");
            assert_eq!(reversal_steps_after_sweep(l, s), o.u[l][s], "U({l}, {s})");
            assert_eq!(optimal_forward_steps(l, s), l as u128 + o.u[l][s]);
        }
    }
    // docs/math.md §9's numbers.
    assert_eq!(50 + o.u[50][7], 108);
    assert_eq!(50 + o.t[50][7], 155);
    assert_eq!(200 + o.u[200][9], 537);
    assert_eq!(200 + o.t[200][9], 734);
    // Recompute: r + r(r − 1)/2.
    assert_eq!(optimal_forward_steps(300, 1), 300 + 300 * 299 / 2);
}

#[test]
fn closed_forms_match_the_recurrences_for_longer_unrolls() {
    let (n, s_max) = (1500, 4);
    let o = oracle(n, s_max);
    for l in (0..=n).step_by(7).chain([n]) {
        for s in 1..=s_max {
            assert_eq!(reversal_steps(l, s), o.t[l][s], "T({l}, {s})");
            assert_eq!(reversal_steps_after_sweep(l, s), o.u[l][s], "U({l}, {s})");
        }
    }
}

#[test]
fn binomial_plans_reach_the_optimum_within_s_buffers() {
    let o = oracle(R_MAX, S_MAX);
    for r in 0..=R_MAX {
        for s in 1..=S_MAX {
            let p = plan(Policy::Binomial { snapshots: s }, r);
            let c = verify(&p, &format!("binomial r={r} s={s}"));
            assert_eq!(
                c.forward_steps as u128,
                r as u128 + o.u[r][s],
                "binomial r={r} s={s}: forward steps vs the DP optimum"
            );
            assert!(
                c.peak == s.min(r.max(1)),
                "binomial r={r} s={s}: peak {}",
                c.peak
            );
            assert_eq!(p.adjoint_steps(), 1..=r);
        }
    }
}

#[test]
fn store_all_recompute_every_k_sqrt_truncated_first_order() {
    for r in 0..=R_MAX {
        let p = plan(Policy::StoreAll, r);
        let c = verify(&p, &format!("store-all r={r}"));
        assert_eq!((c.forward_steps, c.peak), (r, r.max(1)), "store-all r={r}");

        let p = plan(Policy::Recompute, r);
        let c = verify(&p, &format!("recompute r={r}"));
        assert_eq!(
            (c.forward_steps, c.peak),
            (r * (r + 1) / 2, 1),
            "recompute r={r}"
        );

        let sqrt = Policy::Sqrt.spacing(r).unwrap();
        for (policy, k) in (1..=S_MAX)
            .map(|k| (Policy::EveryK { k }, k))
            .chain([(Policy::Sqrt, sqrt)])
        {
            let p = plan(policy, r);
            let c = verify(&p, &format!("{policy:?} r={r}"));
            let n = r.div_ceil(k);
            assert_eq!(c.forward_steps, 2 * r - n, "{policy:?} r={r}");
            assert_eq!(c.peak, every_k_peak(r, k), "{policy:?} r={r}");
            assert!(c.peak < n + k || r == 0, "{policy:?} r={r}");
        }

        for k in 0..=S_MAX {
            let p = truncated(r, k);
            let c = verify(&p, &format!("truncated r={r} k={k}"));
            let k1 = k.min(r);
            assert_eq!(p.adjoint_steps(), r - k1 + 1..=r, "truncated r={r} k={k}");
            assert_eq!(c.adjoints, k1);
            let peak = if k1 < r { k1 + 1 } else { r.max(1) };
            assert_eq!(
                (c.forward_steps, c.peak),
                (r, peak),
                "truncated r={r} k={k}"
            );
        }

        let p = first_order(r);
        let c = verify(&p, &format!("first order r={r}"));
        assert_eq!((c.forward_steps, c.peak, c.adjoints), (r, 1, 0));
        assert_eq!(p, truncated(r, 0));
    }
}

#[test]
fn a_budget_gives_the_fastest_plan_that_fits() {
    let o = oracle(R_MAX, S_MAX);
    let state_bytes = 1000;
    for r in 0..=R_MAX {
        for s in 1..=S_MAX {
            let by_states = plan_for_budget(Budget::States(s), r, state_bytes).unwrap();
            let by_bytes = plan_for_budget(
                Budget::Bytes(s * state_bytes + state_bytes - 1),
                r,
                state_bytes,
            )
            .unwrap();
            assert_eq!(by_states, by_bytes);
            let c = verify(&by_states, &format!("budget r={r} s={s}"));
            assert!(c.peak <= s, "budget r={r} s={s}: peak {}", c.peak);
            assert_eq!(
                c.forward_steps as u128,
                r as u128 + o.u[r][s],
                "budget r={r} s={s}: forward steps vs the DP optimum"
            );
            // No other plan that fits is faster.
            let others = [Policy::StoreAll, Policy::Recompute, Policy::Sqrt]
                .into_iter()
                .chain((1..=S_MAX).map(|k| Policy::EveryK { k }));
            for q in others.map(|policy| plan(policy, r)) {
                if q.peak() <= s {
                    assert!(q.forward_steps() >= c.forward_steps, "r={r} s={s}");
                }
            }
        }
    }
}

#[test]
fn a_budget_too_small_is_a_typed_error_with_the_minimum() {
    let e = plan_for_budget(Budget::States(0), 10, 64).unwrap_err();
    assert_eq!(
        (e.minimum_states, e.minimum_bytes, e.given),
        (1, 64, Budget::States(0))
    );
    let e = plan_for_budget(Budget::Bytes(63), 10, 64).unwrap_err();
    assert_eq!((e.minimum_states, e.minimum_bytes, e.r), (1, 64, 10));
    let msg = e.to_string();
    assert!(
        msg.contains("63 bytes") && msg.contains("64 bytes"),
        "{msg}"
    );
    // Exactly one state is enough: the recompute plan.
    let p = plan_for_budget(Budget::Bytes(64), 10, 64).unwrap();
    assert_eq!(p, plan(Policy::Recompute, 10));
    // A huge budget is the store-all plan.
    assert_eq!(
        plan_for_budget(Budget::States(usize::MAX), 10, 64).unwrap(),
        plan(Policy::StoreAll, 10)
    );
}

#[test]
fn long_unrolls_plan_fast_and_optimally() {
    let (r, s) = (10_000, 15);
    let t0 = Instant::now();
    let p = plan(Policy::Binomial { snapshots: s }, r);
    let dt = t0.elapsed();
    eprintln!(
        "binomial r={r} s={s}: {} actions, {} forward steps, peak {}, built in {dt:?}",
        p.actions().len(),
        p.forward_steps(),
        p.peak()
    );
    let c = verify(&p, "binomial r=10000 s=15");
    assert_eq!(c.forward_steps as u128, optimal_forward_steps(r, s));
    assert!(c.peak <= s);
    // Milliseconds, not seconds (generous for a loaded machine; debug builds
    // also replay the plan in a debug_assert).
    if !cfg!(debug_assertions) {
        assert!(dt.as_secs_f64() < 0.5, "building took {dt:?}");
    }
    for s in [1, 2, 3, 5, 100, 20_000] {
        let t0 = Instant::now();
        let p = plan(Policy::Binomial { snapshots: s }, r);
        let dt = t0.elapsed();
        eprintln!(
            "binomial r={r} s={s}: {} forward steps, built in {dt:?}",
            p.forward_steps()
        );
        assert_eq!(p.forward_steps() as u128, optimal_forward_steps(r, s));
        if !cfg!(debug_assertions) {
            assert!(dt.as_secs_f64() < 0.5, "building took {dt:?}");
        }
    }
    // Long unrolls with many and with few slots: optimal, within budget, fast.
    for (r, s) in [(100_000, 50_000), (100_000, 7)] {
        let t0 = Instant::now();
        let p = plan(Policy::Binomial { snapshots: s }, r);
        eprintln!(
            "binomial r={r} s={s}: {} forward steps, peak {}, built in {:?}",
            p.forward_steps(),
            p.peak(),
            t0.elapsed()
        );
        verify(&p, &format!("binomial r={r} s={s}"));
        assert_eq!(p.forward_steps() as u128, optimal_forward_steps(r, s));
        assert!(p.peak() <= s);
    }
    for s in [1, 2, 3] {
        let p = plan(Policy::Binomial { snapshots: s }, 2000);
        verify(&p, &format!("binomial r=2000 s={s}"));
        assert_eq!(p.forward_steps() as u128, optimal_forward_steps(2000, s));
    }
}

/// The index of the `n`-th action matching `f`.
fn nth(p: &Plan, n: usize, f: impl Fn(&Action) -> bool) -> usize {
    p.actions()
        .iter()
        .enumerate()
        .filter(|(_, a)| f(a))
        .nth(n)
        .unwrap()
        .0
}

/// `from_actions` on a modified copy of `p`'s actions.
fn mutated(p: &Plan, lowest: usize, f: impl FnOnce(&mut Vec<Action>)) -> Result<Plan, PlanError> {
    let mut a = p.actions().to_vec();
    f(&mut a);
    Plan::from_actions(p.r(), lowest, a)
}

/// The error `from_actions` gives for a modified copy of `p`'s actions.
#[track_caller]
fn broken(p: &Plan, lowest: usize, f: impl FnOnce(&mut Vec<Action>)) -> PlanError {
    mutated(p, lowest, f).expect_err("the checker accepts a broken plan")
}

#[test]
fn the_checker_catches_broken_plans() {
    let p = plan(Policy::Binomial { snapshots: 4 }, 20);
    assert_eq!(mutated(&p, 1, |_| {}).as_ref(), Ok(&p));
    let is_adjoint = |a: &Action| matches!(a, Action::Adjoint { .. });

    // Two adjoint steps swapped.
    let (i, j) = (nth(&p, 3, is_adjoint), nth(&p, 4, is_adjoint));
    let e = broken(&p, 1, |a| a.swap(i, j));
    assert!(matches!(e, PlanError::AdjointOrder { .. }), "{e}");

    // Only the adjoint steps' numbers swapped: each then finds the wrong state.
    let e = broken(&p, 1, |a| {
        let (Action::Adjoint { step: si, .. }, Action::Adjoint { step: sj, .. }) = (a[i], a[j])
        else {
            unreachable!()
        };
        if let Action::Adjoint { step, .. } = &mut a[i] {
            *step = sj;
        }
        if let Action::Adjoint { step, .. } = &mut a[j] {
            *step = si;
        }
    });
    assert!(matches!(e, PlanError::AdjointOrder { .. }), "{e}");

    // An adjoint step dropped.
    let e = broken(&p, 1, |a| {
        a.remove(i);
    });
    assert!(
        matches!(e, PlanError::AdjointOrder { expected, found, .. } if found + 1 == expected),
        "{e}"
    );
    let last = nth(&p, 19, is_adjoint);
    let e = broken(&p, 1, |a| {
        a.remove(last);
    });
    assert!(
        matches!(e, PlanError::MissingAdjoints { next: 1, lowest: 1 }),
        "{e}"
    );

    // Off by one in a recomputing Advance (after the turn): the adjoint finds the wrong state.
    let turn = nth(&p, 0, |a| matches!(a, Action::Turn { .. }));
    let k = (turn..p.actions().len())
        .find(|&k| matches!(p.actions()[k], Action::Advance { .. }))
        .unwrap();
    let e = broken(&p, 1, |a| {
        if let Action::Advance { to, .. } = &mut a[k] {
            *to += 1;
        }
    });
    assert!(matches!(e, PlanError::WrongState { .. }), "{e}");
    let e = broken(&p, 1, |a| {
        if let Action::Advance { from, .. } = &mut a[k] {
            *from += 1;
        }
    });
    assert!(matches!(e, PlanError::WrongState { .. }), "{e}");

    // A missing Free: the buffer is written again while held, or leaks.
    let frees: Vec<usize> = (0..p.actions().len())
        .filter(|&k| matches!(p.actions()[k], Action::Free { .. }))
        .collect();
    for &f in &frees {
        let e = broken(&p, 1, |a| {
            a.remove(f);
        });
        assert!(
            matches!(e, PlanError::NotFree { .. } | PlanError::Leaked { .. }),
            "free {f}: {e}"
        );
    }
    let e = broken(&p, 1, |a| {
        a.remove(*frees.last().unwrap());
    });
    assert!(matches!(e, PlanError::Leaked { .. }), "{e}");

    // A Copy onto a held buffer.
    let c = nth(&p, 0, |a| matches!(a, Action::Copy { .. }));
    let e = broken(&p, 1, |a| {
        if let Action::Copy { from, to } = &mut a[c] {
            *to = *from;
        }
    });
    assert!(matches!(e, PlanError::NotFree { .. }), "{e}");

    // Turn missing, twice, late, at the wrong state; adjoint before the turn.
    let e = broken(&p, 1, |a| {
        a.remove(turn);
    });
    assert!(
        matches!(e, PlanError::AdjointBeforeTurn { step: 20, .. }),
        "{e}"
    );
    let e = broken(&p, 1, |a| a.insert(turn, a[turn]));
    assert!(matches!(e, PlanError::TurnRepeated { .. }), "{e}");
    let e = broken(&p, 1, |a| {
        let t = a.remove(turn);
        a.push(t);
    });
    assert!(matches!(e, PlanError::AdjointBeforeTurn { .. }), "{e}");
    let fo = first_order(5);
    assert_eq!(
        broken(&fo, 6, |a| {
            a.remove(2);
        }),
        PlanError::NoTurn
    );
    let e = broken(&fo, 6, |a| {
        a.insert(2, Action::Free { buf: 1 });
        a.insert(
            2,
            Action::Advance {
                buf: 1,
                from: 0,
                to: 1,
            },
        );
        a.insert(2, Action::Init { buf: 1 });
    });
    assert_eq!(
        e,
        PlanError::TurnLate {
            at: 5,
            steps: 6,
            r: 5
        }
    );
    // The first-order sweep advancing 0 → `to` instead of 0 → 5.
    let sweep_to = |to| {
        broken(&fo, 6, |a| {
            a[1] = Action::Advance {
                buf: 0,
                from: 0,
                to,
            }
        })
    };
    assert_eq!(
        sweep_to(4),
        PlanError::WrongState {
            at: 2,
            buf: 0,
            expected: 5,
            held: 4
        }
    );

    // Use of a consumed or freed buffer, advancing backwards or past r.
    let e = Plan::from_actions(
        1,
        1,
        vec![
            Action::Init { buf: 0 },
            Action::Advance {
                buf: 0,
                from: 0,
                to: 1,
            },
            Action::Turn { buf: 0 },
            Action::Free { buf: 0 },
            Action::Init { buf: 0 },
            Action::Adjoint { buf: 0, step: 1 },
            Action::Copy { from: 0, to: 1 },
        ],
    )
    .unwrap_err();
    assert_eq!(e, PlanError::Consumed { at: 6, buf: 0 });
    let e = broken(&fo, 6, |a| a.push(Action::Copy { from: 0, to: 1 }));
    assert_eq!(e, PlanError::NotHeld { at: 4, buf: 0 });
    let e = broken(&fo, 6, |a| a[0] = Action::Init { buf: usize::MAX });
    assert_eq!(
        e,
        PlanError::BufferOutOfRange {
            at: 0,
            buf: usize::MAX,
            buffers: 4
        }
    );
    assert_eq!(
        sweep_to(6),
        PlanError::BadAdvance {
            at: 1,
            from: 0,
            to: 6,
            r: 5
        }
    );
    assert_eq!(
        broken(&fo, 0, |_| {}),
        PlanError::Lowest { lowest: 0, r: 5 }
    );
    // An extra adjoint step below `lowest`.
    let t = truncated(5, 2);
    let e = broken(&t, 4, |a| {
        let n = a.len();
        a.insert(n, Action::Free { buf: 0 });
        a.insert(n, Action::Adjoint { buf: 0, step: 3 });
        a.insert(
            n,
            Action::Advance {
                buf: 0,
                from: 0,
                to: 2,
            },
        );
        a.insert(n, Action::Init { buf: 0 });
    });
    assert!(
        matches!(
            e,
            PlanError::AdjointBelowLowest {
                step: 3,
                lowest: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn plans_print_one_action_per_line() {
    let p = plan(Policy::Recompute, 2);
    let text = p.to_string();
    assert_eq!(text.lines().count(), 1 + p.actions().len(), "{text}");
    assert!(
        text.starts_with("plan: r = 2, adjoint steps 1..=2, 1 buffers, peak 1, 3 forward steps"),
        "{text}"
    );
}
