//! The unrolling engine: checkpoint plans as data ([`plan`]), one owner of the
//! held states, and one loop that executes a plan ([`execute`]).
//!
//! Every exact, truncated and first-order estimate of the crate is a
//! [`plan::Plan`] executed by the same loop, with every state produced by the
//! same step function ([`crate::InnerWorkspace::step_in_place`]) and every
//! adjoint step taken by the same forward-over-reverse pass
//! ([`crate::InnerWorkspace::adjoint_step`], one of `hvp`'s passes), so every
//! plan of the same sweep gives the same bits.

mod cache;
mod linear;
pub mod objective;
pub mod plan;
pub mod policy;
mod resident;
pub(crate) mod run;
pub mod step;
pub(crate) mod store;
pub(crate) mod sweep;
mod tiles;

use tape::{Float, Tensor};

use crate::error::BloError;
use crate::estimators::Estimate;
use crate::problem::Problem;

/// Executes `plan` on `problem`'s inner loop for `task` at θ and returns what
/// its adjoint steps compute: g = ∇_θ L_out + the adjoint steps' θ parts +
/// (∂Φ_0/∂θ)ᵀ ū (the exact hypergradient when the plan's adjoint steps run
/// down to step 1; a truncated one otherwise; the first-order estimate when
/// it has none). `Stats` count what the plan did (measured) beside what it
/// predicted (`planned_forward_steps`, `planned_states_peak`).
///
/// Build a plan with [`plan::plan`], [`plan::plan_for_budget`] or your own
/// action list ([`plan::Plan::from_actions`], which checks it):
///
/// ```
/// use blo::engine::{execute, plan::{plan, Action, Plan}};
/// use blo::{InnerLoop, Policy, Problem};
/// use tape::{Real, Tape, Tensor, Var};
/// # struct Quad { inner: InnerLoop }
/// # impl Problem<f64> for Quad {
/// #     type Task = f64;
/// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
/// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
/// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
/// #         (phi[0] - *c).square().sum() * 0.5 + phi[0].tanh().sum()
/// #     }
/// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
/// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 0, th, phi) }
/// # }
/// let p = Quad { inner: InnerLoop::sgd(2, 0.3)? };
/// let theta = [Tensor::vector(vec![0.5, -1.0])];
/// // A hand-written plan for r = 2: walk to φ_2 keeping φ_1, turn, then the
/// // adjoint steps 2 (at φ_1) and 1 (at a fresh φ_0).
/// use Action::*;
/// let mine = Plan::from_actions(2, 1, vec![
///     Init { buf: 0 }, Advance { buf: 0, from: 0, to: 1 }, Copy { from: 0, to: 1 },
///     Advance { buf: 0, from: 1, to: 2 }, Turn { buf: 0 }, Free { buf: 0 },
///     Adjoint { buf: 1, step: 2 }, Free { buf: 1 },
///     Init { buf: 0 }, Adjoint { buf: 0, step: 1 }, Free { buf: 0 },
/// ])?;
/// let a = execute(&mine, &p, &1.0, &theta)?;
/// let b = execute(&plan(Policy::Recompute, 2), &p, &1.0, &theta)?;
/// assert_eq!(a.grad[0].data(), b.grad[0].data()); // same sweep, same bits
/// assert_eq!((a.stats.forward_steps, a.stats.states_peak), (2, 2));
/// assert_eq!((b.stats.forward_steps, b.stats.states_peak), (3, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// A non-finite loss, gradient or cotangent (naming the inner step); invalid
/// inner-loop settings.
///
/// # Panics
/// If the plan is for another number of inner steps than the problem's.
#[track_caller]
pub fn execute<F: Float, P: Problem<F>>(
    plan: &plan::Plan,
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
) -> Result<Estimate<F>, BloError> {
    let r = problem.inner_loop().steps;
    assert_eq!(
        plan.r(),
        r,
        "engine::execute: a plan for r = {} inner steps, but the problem takes {r}",
        plan.r()
    );
    Ok(run::run_plan(problem, task, theta, plan, sweep::Target::Outer, false)?.0)
}
