//! The exact hypergradient: an adjoint sweep under a checkpoint plan.

use std::rc::Rc;

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::engine::plan::{Budget, Plan};
use crate::engine::policy::Policy;
use crate::engine::run::{budget_states, cached_plan, run_plan};
use crate::engine::sweep::Target;
use crate::error::BloError;
use crate::estimators::{CoupledEstimate, Estimate, Estimator};
use crate::problem::Problem;

/// The exact hypergradient ∇F(θ) of the unrolled inner loop, by the adjoint
/// sweep of docs/math.md §2 (one HVP + mixed-product pass per step, then the VJP
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
    /// ([`crate::engine::plan::plan_for_budget`]). A budget too small for one state is an
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
            Memory::Budget(b) => Ok(cached_plan(
                Policy::Binomial {
                    snapshots: budget_states(b, problem, task, theta)?,
                },
                r,
            )),
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
    ) -> Option<Result<CoupledEstimate<F>, BloError>> {
        let run = || {
            let plan = self.plan_for(problem, task, theta)?;
            let (exact, fo) = run_plan(problem, task, theta, &plan, Target::Outer, true)?;
            Ok(CoupledEstimate {
                first_order: fo.expect("asked for the first-order estimate"),
                exact,
            })
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
