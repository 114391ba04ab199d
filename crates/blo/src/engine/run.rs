//! Running plans: the plans of the built-in policies cached per thread, and
//! the runner every plan-based estimator shares ([`run_plan`]).

use std::cell::RefCell;
use std::rc::Rc;

use tape::{Float, Tensor};

use super::plan::{self, Action, Plan};
use super::policy::Policy;
use super::sweep::{Sweep, Target};
use crate::error::BloError;
use crate::estimators::{Estimate, Stats};
use crate::problem::Problem;

/// The plan `policy` gives for r steps, from this thread's cache (plans are
/// pure functions of (policy, r); building one allocates, reusing it does not).
pub(crate) fn cached_plan(policy: Policy, r: usize) -> Rc<Plan> {
    thread_local! {
        static PLANS: RefCell<Vec<(Policy, usize, Rc<Plan>)>> = const { RefCell::new(Vec::new()) };
    }
    /// At most this many plans are kept per thread.
    const PLANS_LEN: usize = 8;
    PLANS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, _, p)) = c.iter().find(|(q, n, _)| *q == policy && *n == r) {
            return Rc::clone(p);
        }
        let p = Rc::new(plan::plan(policy, r));
        if c.len() == PLANS_LEN {
            c.remove(0);
        }
        c.push((policy, r, Rc::clone(&p)));
        p
    })
}

/// Runs `plan` on a sweep of `target` and returns the estimate; with
/// `first_order`, also the first-order estimate read off at the turn (the
/// first sweep of every plan is the first-order rollout), with its own
/// counts (r steps, the outer gradient, the VJP through Φ_0): the exact
/// estimate's counts are then only what the exact branch adds.
pub(crate) fn run_plan<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    plan: &Plan,
    target: Target,
    first_order: bool,
) -> Result<(Estimate<F>, Option<Estimate<F>>), BloError> {
    let mut sw = Sweep::new(problem, task, theta, target)?;
    let (mut sweep, mut reversal) = plan.split_at_turn();
    // The turned state's `Free` goes with the sweep (it changes neither g,
    // ū nor the peak), so the sweep knows the state is not read again.
    if let (Some(&Action::Turn { buf }), Some(&Action::Free { buf: f })) =
        (sweep.last(), reversal.first())
    {
        if f == buf {
            (sweep, reversal) = plan.actions().split_at(sweep.len() + 1);
        }
    }
    sw.run(sweep)?;
    let fo = if first_order {
        let mut g: Vec<Tensor<F>> = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
        sw.truncated_into(&mut g);
        let stats = std::mem::take(&mut sw.stats);
        Some(Estimate {
            grad: g,
            outer_loss: sw.outer_loss,
            stats: Stats {
                states_peak: sw.bufs.store.peak(),
                state_bytes_peak: sw.bufs.store.peak_bytes(),
                ..stats
            },
        })
    } else {
        None
    };
    sw.run(reversal)?;
    let mut est = sw.finish();
    est.stats.planned_forward_steps = plan.forward_steps();
    est.stats.planned_states_peak = plan.peak();
    if let Some(fo) = &fo {
        // The exact branch's own counts: what it added to the first sweep.
        est.stats.planned_forward_steps -= fo.stats.forward_steps;
    }
    Ok((est, fo))
}

/// The first-order plan's actions ([`plan::first_order`]) without building a
/// plan: the first sweep and the turn, in one buffer.
pub(crate) fn first_order_actions(r: usize) -> [Action; 4] {
    [
        Action::Init { buf: 0 },
        Action::Advance {
            buf: 0,
            from: 0,
            to: r,
        },
        Action::Turn { buf: 0 },
        Action::Free { buf: 0 },
    ]
}

/// [`plan::truncated_within`]`(r, k, s)` from this thread's cache (a
/// randomized telescope draws a depth per task: the plans of the last few
/// depths are kept).
pub(crate) fn cached_truncated_within(r: usize, k: usize, s: usize) -> Rc<Plan> {
    /// (r, k, s) and its plan.
    type Entry = ((usize, usize, usize), Rc<Plan>);
    thread_local! {
        static PLANS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    }
    /// At most this many plans are kept per thread.
    const PLANS_LEN: usize = 64;
    PLANS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, p)) = c.iter().find(|(key, _)| *key == (r, k, s)) {
            return Rc::clone(p);
        }
        let p = Rc::new(plan::truncated_within(r, k, s));
        if c.len() == PLANS_LEN {
            c.remove(0);
        }
        c.push(((r, k, s), Rc::clone(&p)));
        p
    })
}

/// The number of states a memory budget holds for `problem` at θ, at most
/// max(r, 1) (a `Bytes` budget needs the size of a state: one evaluation of
/// Φ_0(θ)).
///
/// # Errors
/// A budget too small for one state ([`BloError::Budget`], saying the
/// minimum); a non-finite φ_0.
pub(crate) fn budget_states<F: Float, P: Problem<F>>(
    budget: plan::Budget,
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
) -> Result<usize, BloError> {
    let r = problem.inner_loop().steps;
    let states = match budget {
        plan::Budget::States(n) => n,
        plan::Budget::Bytes(_) => {
            let mut bufs = super::sweep::SweepBuffers::<F>::cached();
            let mut s = bufs.store.take_free(0);
            let phi0 = bufs.ws.initial_state_into(problem, task, theta, &mut s);
            let bytes = s.bytes();
            bufs.store.put(0, s);
            bufs.recycle();
            phi0?;
            plan::plan_for_budget(budget, r, bytes)?.peak()
        }
    };
    if states == 0 {
        plan::plan_for_budget(budget, r, 0)?;
    }
    Ok(states.min(r.max(1)))
}

/// [`plan::truncated`] from this thread's cache.
pub(crate) fn cached_truncated(r: usize, k: usize) -> Rc<Plan> {
    thread_local! {
        static PLANS: RefCell<Option<(usize, usize, Rc<Plan>)>> = const { RefCell::new(None) };
    }
    PLANS.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((n, kk, p)) if *n == r && *kk == k => Rc::clone(p),
            _ => {
                let p = Rc::new(plan::truncated(r, k));
                *c = Some((r, k, Rc::clone(&p)));
                p
            }
        }
    })
}
