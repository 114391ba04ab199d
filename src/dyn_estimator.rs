//! A boxed estimator that is itself an [`Estimator`], so a run can pick its
//! estimator at run time and still hand it to [`blo::Trainer`].

use blo::{BloError, Estimate, Estimator, Problem};
use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

/// `Box<dyn Estimator<F, P>>` as an [`Estimator`]: every method delegates.
pub struct DynEstimator<F: Float, P: Problem<F>>(pub Box<dyn Estimator<F, P>>);

impl<F: Float, P: Problem<F>> Estimator<F, P> for DynEstimator<F, P> {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        self.0.estimate(problem, task, theta, rng)
    }
    fn observe(&mut self, estimates: &[Estimate<F>]) {
        self.0.observe(estimates)
    }
    fn name(&self) -> String {
        self.0.name()
    }
    fn save_state(&self) -> serde_json::Value {
        self.0.save_state()
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        self.0.load_state(state)
    }
}

/// Resets the process's peak resident set size (`VmHWM`) to the current RSS by
/// writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0). Returns whether it
/// worked; where it does not, `VmHWM` stays the peak since process start.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
