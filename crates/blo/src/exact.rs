//! The exact hypergradient (adjoint sweep under a checkpoint [`Policy`]), its
//! first-order truncation and truncated backpropagation.

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use std::cell::RefCell;
use std::rc::Rc;

use crate::checkpoint::Policy;
use crate::engine::plan::{self, Action, Budget, Plan};
use crate::engine::sweep::{Sweep, SweepBuffers, Target};
use crate::error::BloError;
use crate::estimator::{Estimate, Estimator, Stats};
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
    let (sweep, reversal) = plan.split_at_turn();
    sw.run(sweep)?;
    let fo = if first_order {
        let mut g: Vec<Tensor<F>> = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
        sw.first_order_into(&mut g);
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

/// The exact hypergradient ∇F(θ) of the unrolled inner loop, by the adjoint
/// sweep of REFERENCE §2 (one HVP + mixed-product pass per step, then the VJP
/// through Φ_0), with the states supplied by a checkpoint [`Policy`]. All
/// policies return the same bits.
///
/// ```
/// # use blo::{Exact, Estimator, InnerLoop, Policy, Problem};
/// # use tape::{Real, Tape, Tensor, Var};
/// # use rand::SeedableRng;
/// # struct Quad { inner: InnerLoop }
/// # impl Problem<f64> for Quad {
/// #     type Task = f64;
/// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
/// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
/// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
/// #         (phi[0] - *c).square().sum() * 0.5
/// #     }
/// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
/// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 0, th, phi) }
/// # }
/// // MAML on L = ½(φ − c)², α = 0.5, r = 3: φ_3 − c = (θ − c)/8, F = (θ − c)²/128,
/// // F'(θ) = (θ − c)/64.
/// let p = Quad { inner: InnerLoop::sgd(3, 0.5)? };
/// let est = Exact::new(Policy::Recompute)?;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let e = est.estimate(&p, &1.0, &[Tensor::vector(vec![3.0])], &mut rng)?;
/// assert!((e.grad[0].data()[0] - 2.0 / 64.0).abs() < 1e-15);
/// assert_eq!(e.stats.forward_steps, 6); // r(r+1)/2
/// # Ok::<(), blo::BloError>(())
/// ```
///
/// Instead of a policy, a memory budget may be given ([`Exact::with_budget`]):
/// the estimate then runs the fastest plan whose peak fits it (binomial with
/// as many states as fit; store-all when r states fit), and `Stats` reports
/// the plan's predicted forward steps and peak beside the measured ones.
#[derive(Clone, Debug)]
pub struct Exact {
    memory: Memory,
}

/// How the exact estimator's plan is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Memory {
    /// A fixed checkpoint policy.
    Policy(Policy),
    /// The fastest plan within a memory budget.
    Budget(Budget),
}

impl Exact {
    /// The exact estimator under `policy`.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if the policy's budget is invalid.
    pub fn new(policy: Policy) -> Result<Self, BloError> {
        policy.validate()?;
        Ok(Exact {
            memory: Memory::Policy(policy),
        })
    }

    /// The exact estimator under the fastest plan that holds at most
    /// `budget` (states, or bytes of states) at once
    /// ([`plan::plan_for_budget`]). A budget too small for one state is an
    /// error of each estimate ([`BloError::Budget`], saying the minimum), as
    /// the size of a state is known only once Φ_0(θ) is.
    ///
    /// ```
    /// # use blo::{Exact, Estimator, InnerLoop, Problem};
    /// # use blo::engine::plan::Budget;
    /// # use tape::{Real, Tape, Tensor, Var};
    /// # use rand::SeedableRng;
    /// # struct Quad { inner: InnerLoop }
    /// # impl Problem<f64> for Quad {
    /// #     type Task = f64;
    /// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    /// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
    /// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    /// #         (phi[0] - *c).square().sum() * 0.5
    /// #     }
    /// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
    /// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 0, th, phi) }
    /// # }
    /// let p = Quad { inner: InnerLoop::sgd(50, 0.1)? };
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// let theta = [Tensor::vector(vec![3.0])];
    /// // One f64 state is 8 bytes: 7 states fit in 60 bytes, and revolve's
    /// // optimum for r = 50 in 7 states is 108 forward steps.
    /// let e = Exact::with_budget(Budget::Bytes(60)).estimate(&p, &1.0, &theta, &mut rng)?;
    /// assert_eq!((e.stats.forward_steps, e.stats.planned_forward_steps), (108, 108));
    /// assert!(e.stats.states_peak <= 7);
    /// // Not even one state fits in 4 bytes: the error says the minimum.
    /// let err = Exact::with_budget(Budget::Bytes(4)).estimate(&p, &1.0, &theta, &mut rng);
    /// assert!(err.unwrap_err().to_string().contains("minimum of 1 state (8 bytes"));
    /// # Ok::<(), blo::BloError>(())
    /// ```
    pub fn with_budget(budget: Budget) -> Self {
        Exact {
            memory: Memory::Budget(budget),
        }
    }

    /// The checkpoint policy, if the estimator was built with one (`None`
    /// for a memory budget).
    pub fn policy(&self) -> Option<Policy> {
        match self.memory {
            Memory::Policy(p) => Some(p),
            Memory::Budget(_) => None,
        }
    }

    /// The plan this estimator runs for `problem` at θ (a budget needs the
    /// size of a state: one evaluation of Φ_0(θ)).
    ///
    /// # Errors
    /// A budget too small for one state; a non-finite φ_0.
    pub(crate) fn plan_for<F: Float, P: Problem<F>>(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
    ) -> Result<Rc<Plan>, BloError> {
        let r = problem.inner_loop().steps;
        match self.memory {
            Memory::Policy(p) => Ok(cached_plan(p, r)),
            Memory::Budget(b) => {
                let states = match b {
                    Budget::States(n) => n,
                    Budget::Bytes(_) => {
                        let mut bufs = SweepBuffers::<F>::cached();
                        let mut s = bufs.store.take_free(0);
                        let phi0 = bufs.ws.initial_state_into(problem, task, theta, &mut s);
                        let bytes = s.bytes();
                        bufs.store.put(0, s);
                        bufs.recycle();
                        phi0?;
                        plan::plan_for_budget(b, r, bytes)?.peak()
                    }
                };
                if states == 0 {
                    plan::plan_for_budget(b, r, 0)?;
                }
                Ok(cached_plan(
                    Policy::Binomial {
                        snapshots: states.min(r.max(1)),
                    },
                    r,
                ))
            }
        }
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for Exact {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let plan = self.plan_for(problem, task, theta)?;
        Ok(run_plan(problem, task, theta, &plan, Target::Outer, false)?.0)
    }

    fn estimate_with_first_order(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Option<Result<(Estimate<F>, Estimate<F>), BloError>> {
        let run = || {
            let plan = self.plan_for(problem, task, theta)?;
            let (exact, fo) = run_plan(problem, task, theta, &plan, Target::Outer, true)?;
            Ok((fo.expect("asked for the first-order estimate"), exact))
        };
        Some(run())
    }

    fn name(&self) -> String {
        match self.memory {
            Memory::Policy(p) => format!("exact({p:?})"),
            Memory::Budget(b) => format!("exact(budget {b})"),
        }
    }
}

/// The first-order estimator (FO-BLO / FOMAML, REFERENCE §3): every second
/// derivative dropped,
///
/// g_FO = ∇_θ L_out(θ, φ_r) + (∂Φ_0/∂θ)ᵀ ∇_φ L_out(θ, φ_r).
///
/// Cost: r + 2 gradients (r steps, the outer gradient, the VJP through Φ_0);
/// one state in memory. Biased in general; exact when L_in is linear in φ
/// and θ does not enter L_in.
#[derive(Clone, Debug, Default)]
pub struct FirstOrder;

impl FirstOrder {
    /// The first-order estimator.
    pub fn new() -> Self {
        FirstOrder
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for FirstOrder {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let r = problem.inner_loop().steps;
        let mut sw = Sweep::new(problem, task, theta, Target::Outer)?;
        sw.run(&first_order_actions(r))?;
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        "first-order".into()
    }

    fn is_first_order(&self) -> bool {
        true
    }
}

/// Truncated backpropagation (Shaban et al. 2019): the adjoint sweep over the
/// last k steps only (states φ_{r−k}..φ_{r−1} stored); the earlier steps are
/// treated as the identity on φ (their second derivatives and their θ
/// dependence dropped, a momentum cotangent discarded), so ū reaches Φ_0
/// unchanged: `Truncated { k: r }` is [`Exact`], and k = 0 would be
/// [`FirstOrder`]. Biased; O(k·d) memory, k HVPs.
#[derive(Clone, Debug)]
pub struct Truncated {
    k: usize,
}

impl Truncated {
    /// Truncation to the last `k` ≥ 1 steps (k > r means all r).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if k = 0 (use [`FirstOrder`]).
    pub fn new(k: usize) -> Result<Self, BloError> {
        if k == 0 {
            return Err(BloError::invalid(
                "k",
                0,
                "truncation needs at least one step; k = 0 is FirstOrder",
            ));
        }
        Ok(Truncated { k })
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for Truncated {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let r = problem.inner_loop().steps;
        let plan = cached_truncated(r, self.k);
        let mut sw = Sweep::new(problem, task, theta, Target::Outer)?;
        sw.run(plan.actions())?;
        if let Some(c) = sw.cot.as_mut() {
            c.velocity
                .iter_mut()
                .for_each(|v| v.data_mut().fill(F::zero()));
        }
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        format!("truncated(k={})", self.k)
    }
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

/// [`plan::truncated`] from this thread's cache.
fn cached_truncated(r: usize, k: usize) -> Rc<Plan> {
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
