//! The first-order estimator: the rollout and the outer gradient, every
//! second derivative dropped.

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::engine::run::first_order_actions;
use crate::engine::sweep::{Sweep, Target};
use crate::error::BloError;
use crate::estimators::{Estimate, Estimator};
use crate::problem::Problem;

/// The first-order estimator (FO-BLO / FOMAML, docs/math.md §3): every second
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
