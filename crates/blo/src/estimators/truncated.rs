//! Truncated backpropagation: the adjoint sweep over the last k steps.

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::engine::run::cached_truncated;
use crate::engine::sweep::{Sweep, Target};
use crate::error::BloError;
use crate::estimators::{Estimate, Estimator};
use crate::problem::Problem;

/// Truncated backpropagation (Shaban et al. 2019): the adjoint sweep over the
/// last k steps only (states φ_{r−k}..φ_{r−1} stored); the earlier steps are
/// treated as the identity on φ (their second derivatives and their θ
/// dependence dropped, a momentum cotangent discarded), so ū reaches Φ_0
/// unchanged: `Truncated { k: r }` is [`crate::Exact`], and k = 0 would be
/// [`crate::FirstOrder`]. Biased; O(k·d) memory, k HVPs.
#[derive(Clone, Debug)]
pub struct Truncated {
    k: usize,
}

impl Truncated {
    /// Truncation to the last `k` ≥ 1 steps (k > r means all r).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if k = 0 (use [`crate::FirstOrder`]).
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
            c.extra
                .iter_mut()
                .for_each(|v| v.data_mut().fill(F::zero()));
        }
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        format!("truncated(k={})", self.k)
    }
}
