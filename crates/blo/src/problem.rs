//! Stating a bilevel problem.

use tape::{Float, Real, Tape, Var};

/// A bilevel problem: minimise F(θ) = E_τ L_out(θ, φ_r(θ); τ), where φ_r is r
/// steps of an inner optimiser on L_in(θ, φ; τ, j) started from φ_0 = Φ_0(θ).
///
/// The losses are written once, generic over the element type, so the same code
/// gives values, gradients (on `F`) and Hessian-vector products (on `Dual<F>`).
/// The batch used at inner step `j` must be a deterministic function of the task
/// and `j`, so a recomputed step replays exactly.
pub trait Problem<F: Float>: Sync {
    /// One task τ (its data and anything else that defines it).
    type Task: Sync;

    /// L_in(θ, φ; τ, step): the inner loss at inner step `step` (1-based, 1..=r).
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T>;

    /// L_out(θ, φ; τ): the outer loss at the adapted state.
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T>;

    /// φ_0 = Φ_0(θ), recorded on `tape` so that (∂Φ_0/∂θ)ᵀ u is one VJP.
    /// The default is MAML's φ_0 = θ (every θ tensor is a φ tensor).
    /// Hyperparameter search returns constants (a fixed start).
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        let _ = (tape, task);
        theta.to_vec()
    }
}
