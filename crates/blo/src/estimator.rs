//! The estimator interface: one trait for every hypergradient estimator.

use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::error::BloError;
use crate::problem::Problem;

/// What one estimate cost and held. Summed over a meta-batch by [`Stats::add`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Reverse-mode gradients evaluated.
    pub gradients: usize,
    /// Hessian-vector (forward-over-reverse) products evaluated, mixed products included.
    pub hvps: usize,
    /// Inner forward steps taken, recomputation included.
    pub forward_steps: usize,
    /// Inner states held at once, at the peak.
    pub states_peak: usize,
    /// Bytes of those states at the peak.
    pub state_bytes_peak: usize,
    /// For randomised estimators (UFO): how many times the exact branch ran.
    pub exact_branches: usize,
    /// For randomised estimators: how many coins were drawn.
    pub coins: usize,
    /// Linear-solver report (implicit estimators), if any.
    pub solver: Option<SolverReport>,
}

impl Stats {
    /// Adds the counts of `o` (peaks take the maximum).
    pub fn add(&mut self, o: &Stats) {
        self.gradients += o.gradients;
        self.hvps += o.hvps;
        self.forward_steps += o.forward_steps;
        self.states_peak = self.states_peak.max(o.states_peak);
        self.state_bytes_peak = self.state_bytes_peak.max(o.state_bytes_peak);
        self.exact_branches += o.exact_branches;
        self.coins += o.coins;
        if o.solver.is_some() {
            self.solver = o.solver.clone();
        }
    }
}

/// What an iterative linear solver reported.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SolverReport {
    /// Iterations run.
    pub iterations: usize,
    /// Final relative residual ‖b − Ax‖/‖b‖.
    pub residual: f64,
}

/// One hypergradient estimate for one task.
#[derive(Clone, Debug)]
pub struct Estimate<F: Float> {
    /// The estimate of ∇_θ L_out(θ, φ_r(θ)), one tensor per θ tensor.
    pub grad: Vec<Tensor<F>>,
    /// L_out(θ, φ_r) at the adapted state.
    pub outer_loss: F,
    /// Costs and memory.
    pub stats: Stats,
}

/// A hypergradient estimator.
///
/// `estimate` takes `&self` so a meta-batch of tasks can run in parallel; an
/// estimator that adapts (UFO with adaptive q) updates itself in `observe`,
/// which the caller runs after each meta-batch with the estimates in task
/// order, so results do not depend on the thread count.
pub trait Estimator<F: Float, P: Problem<F>>: Sync {
    /// Estimates the hypergradient on one task. `rng` is this task's own stream.
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError>;

    /// Sees a meta-batch's estimates, in task order (default: nothing).
    fn observe(&mut self, estimates: &[Estimate<F>]) {
        let _ = estimates;
    }

    /// A short name for logs and tables.
    fn name(&self) -> String;
}
