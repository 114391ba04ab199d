//! The estimators: one trait for every hypergradient estimator, and the
//! built-in ones, one per file.
//!
//! | estimator | file | what it returns |
//! |---|---|---|
//! | [`Exact`](exact::Exact) | `exact.rs` | the exact hypergradient under a checkpoint plan |
//! | [`FirstOrder`](first_order::FirstOrder) | `first_order.rs` | the first-order truncation |
//! | [`Truncated`](truncated::Truncated) | `truncated.rs` | backpropagation through the last k steps |
//! | [`Debiased`](debiased::Debiased), [`Ufo`](debiased::Ufo) | `debiased.rs` | a surrogate debiased by an exact estimator (UFO-BLO) |
//! | [`ReptileFirstOrder`](reptile::ReptileFirstOrder), [`ReptileExact`](reptile::ReptileExact) | `reptile.rs` | Reptile's direction and its exact counterpart |
//! | [`Telescope`](telescope::Telescope) | `telescope.rs` | randomized telescopes over the truncation depth |
//! | [`Implicit`](implicit::Implicit) | `implicit.rs` | implicit differentiation at the inner optimum |
//! | [`ForwardMode`](forward_mode::ForwardMode) | `forward_mode.rs` | the exact hypergradient by forward mode |
//!
//! [`check_hypergradient`](check::check_hypergradient) (`check.rs`) compares
//! any estimator with central differences of F; [`planner`] (`planner.rs`)
//! picks among first order, UFO, the telescopes and exact from a memory
//! budget and measured moments.

pub mod check;
pub mod debiased;
pub mod exact;
pub mod first_order;
pub mod forward_mode;
pub mod implicit;
pub mod planner;
pub mod reptile;
pub mod telescope;
pub mod truncated;

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
    /// The forward steps the checkpoint plan predicted (0 for estimators
    /// without a plan); equal to `forward_steps` for the exact estimator.
    /// For a debiased estimate whose exact branch continued the first-order
    /// rollout: the branch's own steps, r fewer than its plan's total.
    #[serde(default)]
    pub planned_forward_steps: usize,
    /// The states the checkpoint plan predicted holding at once, at the peak
    /// (0 for estimators without a plan).
    #[serde(default)]
    pub planned_states_peak: usize,
    /// Bytes of those states at the peak.
    pub state_bytes_peak: usize,
    /// For randomised estimators (UFO): how many times the exact branch ran.
    pub exact_branches: usize,
    /// For randomised estimators: how many coins were drawn.
    pub coins: usize,
    /// Linear-solver report (implicit estimators), if any.
    pub solver: Option<SolverReport>,
    /// What a debiased estimator ([`crate::Debiased`]) measured on this task,
    /// for the adaptive choice of q. Per task: [`Stats::add`] leaves it alone.
    #[serde(default)]
    pub debias: Option<DebiasSample>,
    /// What a randomized telescope ([`crate::Telescope`]) measured on this
    /// task, for the adaptive choice of its depth distribution. Per task:
    /// [`Stats::add`] leaves it alone.
    #[serde(default)]
    pub telescope: Option<telescope::TelescopeSample>,
}

impl Stats {
    /// Adds the counts of `o` (peaks take the maximum).
    pub fn add(&mut self, o: &Stats) {
        self.gradients += o.gradients;
        self.hvps += o.hvps;
        self.forward_steps += o.forward_steps;
        self.planned_forward_steps += o.planned_forward_steps;
        self.states_peak = self.states_peak.max(o.states_peak);
        self.planned_states_peak = self.planned_states_peak.max(o.planned_states_peak);
        self.state_bytes_peak = self.state_bytes_peak.max(o.state_bytes_peak);
        self.exact_branches += o.exact_branches;
        self.coins += o.coins;
        if o.solver.is_some() {
            self.solver = o.solver.clone();
        }
    }

    /// The cost in gradient units under docs/math.md §8's model: one per
    /// gradient, two per Hessian-vector (forward-over-reverse) pass.
    pub fn cost(&self) -> f64 {
        self.gradients as f64 + 2.0 * self.hvps as f64
    }
}

/// One debiased estimate's measurements: the surrogate's cost, and, when the
/// exact branch ran, ‖g_S − g_E‖², ‖g_E‖² and the exact branch's cost.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DebiasSample {
    /// Cost of the surrogate (first-order) estimate, [`Stats::cost`].
    pub surrogate_cost: f64,
    /// ‖g_S − g_E‖² if the exact branch ran.
    pub diff_sq: Option<f64>,
    /// ‖g_E‖² if the exact branch ran.
    pub exact_sq: Option<f64>,
    /// Cost of the exact branch if it ran.
    pub exact_cost: Option<f64>,
}

/// What an iterative linear solver reported.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SolverReport {
    /// Iterations run.
    pub iterations: usize,
    /// Final relative residual ‖b − Ax‖/‖b‖.
    pub residual: f64,
}

/// The first-order estimate and an exact estimate of the same task from one
/// coupled run ([`Estimator::estimate_with_first_order`]).
#[derive(Clone, Debug)]
pub struct CoupledEstimate<F: Float> {
    /// The first-order estimate, read off at the turn.
    pub first_order: Estimate<F>,
    /// The exact estimate; its `Stats` count only what it added to the
    /// first-order run.
    pub exact: Estimate<F>,
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

    /// Whether this estimator is the first-order truncation [`crate::FirstOrder`]
    /// (default `false`): [`crate::Debiased`] then lets an exact partner that
    /// implements [`Estimator::estimate_with_first_order`] compute both on one
    /// rollout.
    fn is_first_order(&self) -> bool {
        false
    }

    /// Both this estimator's estimate and the first-order estimate of the same
    /// task from one coupled run, if this estimator's
    /// first sweep is the first-order rollout ([`crate::Exact`]: its plan
    /// reads the first-order estimate off at the turn and continues with the
    /// reversal, so the pair costs the first-order estimate plus only the
    /// exact extra). `this`'s `Stats` then count only what it added to the
    /// first-order run. The default is `None`: the caller runs the two
    /// separately.
    fn estimate_with_first_order(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Option<Result<CoupledEstimate<F>, BloError>> {
        let _ = (problem, task, theta, rng);
        None
    }

    /// The adaptive state (what `observe` changes) as JSON, for checkpoints, so
    /// a resumed meta-training run continues bit-identically. Store floats
    /// exactly (e.g. as bit patterns, see `crate::io::float_to_bits`). The
    /// default, for estimators without state, is `null`.
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Restores a state captured by [`Estimator::save_state`]; the error says
    /// what does not match. The default accepts only `null`.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        if state.is_null() {
            Ok(())
        } else {
            Err(format!(
                "estimator {} keeps no state, but the checkpoint holds {state}",
                self.name()
            ))
        }
    }
}
