//! Reptile's direction as a first-order surrogate, the exact gradient of the
//! summed inner losses, and the pair debiased.

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use super::debiased::{Debiased, QChoice};
use crate::engine::plan::Action;
use crate::engine::policy::Policy;
use crate::engine::run::{cached_plan, first_order_actions, run_plan};
use crate::engine::step::zip_map;
use crate::engine::sweep::{Sweep, Target};
use crate::error::BloError;
use crate::estimators::{Estimate, Estimator};
use crate::problem::{InnerOptimizer, Problem};

/// The Reptile pair debiased: [`ReptileFirstOrder`] with [`ReptileExact`].
pub type UfoReptile = Debiased<ReptileFirstOrder, ReptileExact>;

impl Debiased<ReptileFirstOrder, ReptileExact> {
    /// Debiased Reptile with a fixed q, the exact branch recomputing from θ.
    ///
    /// # Errors
    /// If q ∉ (0, 1].
    pub fn reptile(q: f64) -> Result<Self, BloError> {
        Debiased::new(
            ReptileFirstOrder,
            ReptileExact::new(Policy::Recompute)?,
            QChoice::Fixed(q),
        )
    }
}

/// Reptile's first-order direction as a surrogate gradient (Nichol et al.
/// 2018), for plain SGD with step α:
///
/// g_R = (∂Φ_0/∂θ)ᵀ (φ_0 − φ_r)/α = (∂Φ_0/∂θ)ᵀ Σ_{j=1}^r ∇_φ L_in(θ, φ_{j−1}; τ, j)
///
/// (MAML: g_R = (θ − φ_r)/α, Reptile's update direction scaled by 1/α). It is
/// the first-order truncation (every step Jacobian replaced by the identity)
/// of the gradient of the summed inner losses G(θ) = Σ_j L_in(θ, φ_{j−1}(θ)),
/// whose exact value is [`ReptileExact`]; when θ enters L_in directly, g_R also
/// drops Σ_j ∇_θ L_in. `outer_loss` reports L_out(θ, φ_r).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReptileFirstOrder;

impl<F: Float, P: Problem<F>> Estimator<F, P> for ReptileFirstOrder {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let InnerOptimizer::Sgd { lr } = problem.inner_loop().optimizer else {
            return Err(BloError::invalid(
                "optimizer",
                format!("{:?}", problem.inner_loop().optimizer),
                "Reptile's direction (φ_0 − φ_r)/α needs plain SGD",
            ));
        };
        let r = problem.inner_loop().steps;
        let mut sw = Sweep::new(problem, task, theta, Target::InnerSum)?;
        // φ_0 in buffer 1, the rollout to φ_r in buffer 0.
        let [init, advance, turn, _] = first_order_actions(r);
        sw.run(&[init, Action::Copy { from: 0, to: 1 }, advance, turn])?;
        let inv = F::from_f64(1.0 / lr);
        let phi = sw
            .state(1)
            .phi
            .iter()
            .zip(&sw.state(0).phi)
            .map(|(a, b)| zip_map(a, b, |a, b| (a - b) * inv))
            .collect();
        if let Some(c) = sw.cot.as_mut() {
            c.phi = phi;
        }
        sw.run(&[Action::Free { buf: 0 }, Action::Free { buf: 1 }])?;
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        "reptile-first-order".into()
    }
}

/// The exact gradient of the summed inner losses along the trajectory,
/// ∇_θ Σ_{j=1}^r L_in(θ, φ_{j−1}(θ); τ, j): the same adjoint sweep as
/// [`crate::Exact`] with no outer loss and each step's gradient (the primal part of
/// its HVP pass) injected into the cotangent. Paired with
/// [`ReptileFirstOrder`] it gives debiased Reptile.
#[derive(Clone, Debug)]
pub struct ReptileExact {
    policy: Policy,
}

impl ReptileExact {
    /// Under a checkpoint policy.
    ///
    /// # Errors
    /// If the policy's budget is invalid.
    pub fn new(policy: Policy) -> Result<Self, BloError> {
        policy.validate()?;
        Ok(ReptileExact { policy })
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for ReptileExact {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let plan = cached_plan(self.policy, problem.inner_loop().steps);
        Ok(run_plan(problem, task, theta, &plan, Target::InnerSum, false)?.0)
    }

    fn name(&self) -> String {
        format!("reptile-exact({:?})", self.policy)
    }
}
