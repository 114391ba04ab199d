//! BOME: bilevel optimisation made easy, of Ye, Liu, Wright, Stone and Liu
//! (NeurIPS 2022), docs/math.md §11.

use tape::{Float, Tensor};

use super::{
    add_scaled, check_count, check_finite, dot, initial, inner_gradient, inner_gradient_phi,
    outer_gradient, sub_scaled, Solver, SolverState, SolverStep, SolverWorkspace, StepSize, Work,
};
use crate::error::BloError;
use crate::problem::Problem;

/// BOME (Ye, Liu, Wright, Stone, Liu, "BOME! Bilevel optimization made easy: a
/// simple first-order approach", NeurIPS 2022): a value-function constraint,
/// first order only.
///
/// At (θ_k, φ_k), with g = L_in and f = L_out: ŷ is T gradient steps of size α
/// on g(θ_k, ·) from φ_k (one index j per step, a constant: no derivative
/// flows through ŷ), then at one more index j
///
/// ```text
/// ψ(θ, φ) = g(θ, φ) − g(θ, ŷ)       ∇ψ = (∇_θ g(θ, φ) − ∇_θ g(θ, ŷ),  ∇_φ g(θ, φ))
/// ∇f = (∇_θ f(θ, φ), ∇_φ f(θ, φ))
/// λ = max((η‖∇ψ‖² − ⟨∇f, ∇ψ⟩) / ‖∇ψ‖², 0)     (λ = 0 if ∇ψ = 0)
/// (θ, φ)_{k+1} = (θ, φ)_k − γ_k (∇f + λ∇ψ)
/// ```
///
/// λ makes d = ∇f + λ∇ψ the closest direction to ∇f with ⟨∇ψ, d⟩ ≥ η‖∇ψ‖²
/// (the dynamic barrier): the step follows −∇f while decreasing the value gap
/// at least at rate η‖∇ψ‖². The state's φ is the paper's y_k. Cost: T + 3
/// gradients per outer step (T inner steps, ∇g at φ and at ŷ, ∇f).
///
/// ```
/// use blo::solvers::{Bome, StepSize};
/// assert!(Bome::new(StepSize::constant(0.1), 10, 0.5, StepSize::constant(0.01)).is_ok());
/// assert!(Bome::new(StepSize::constant(0.1), 0, 0.5, StepSize::constant(0.01)).is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Bome {
    /// α_k, the step of the T inner gradient steps that make ŷ.
    pub inner_lr: StepSize,
    /// T ≥ 1.
    pub inner_steps: usize,
    /// η > 0, the barrier's rate.
    pub eta: f64,
    /// γ_k, the joint step on (θ, φ) (the paper's ξ).
    pub outer_lr: StepSize,
}

impl Bome {
    /// BOME with T = `inner_steps` steps of α_k for ŷ, barrier rate η and
    /// joint step γ_k.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if T = 0, η is not finite and
    /// positive, or a step size is not finite and positive.
    pub fn new(
        inner_lr: StepSize,
        inner_steps: usize,
        eta: f64,
        outer_lr: StepSize,
    ) -> Result<Self, BloError> {
        inner_lr.validate("BOME inner_lr")?;
        check_count("BOME inner_steps (T)", inner_steps)?;
        if !(eta.is_finite() && eta > 0.0) {
            return Err(BloError::invalid(
                "BOME eta",
                eta,
                "the barrier rate must be finite and > 0",
            ));
        }
        outer_lr.validate("BOME outer_lr")?;
        Ok(Bome {
            inner_lr,
            inner_steps,
            eta,
            outer_lr,
        })
    }

    /// The barrier multiplier λ = max((η‖∇ψ‖² − ⟨∇f, ∇ψ⟩)/‖∇ψ‖², 0), 0 when
    /// ∇ψ = 0; `grad_f` and `grad_psi` are (θ part, φ part).
    pub fn multiplier<F: Float>(
        &self,
        grad_f: (&[Tensor<F>], &[Tensor<F>]),
        grad_psi: (&[Tensor<F>], &[Tensor<F>]),
    ) -> f64 {
        let psi2 = dot(grad_psi.0, grad_psi.0) + dot(grad_psi.1, grad_psi.1);
        if psi2 == 0.0 {
            return 0.0;
        }
        let fpsi = dot(grad_f.0, grad_psi.0) + dot(grad_f.1, grad_psi.1);
        ((self.eta * psi2 - fpsi) / psi2).max(0.0)
    }
}

impl<F: Float> Solver<F> for Bome {
    fn name(&self) -> &'static str {
        "BOME"
    }

    fn init<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        theta0: Vec<Tensor<F>>,
    ) -> Result<SolverState<F>, BloError> {
        initial(ws, problem, task, theta0)
    }

    fn step<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        state: &mut SolverState<F>,
    ) -> Result<SolverStep<F>, BloError> {
        let k = state.iteration;
        let r = problem.inner_loop().steps;
        let mut work = Work::default();
        let mut draws = state.draws();
        let theta = &state.theta;
        let alpha = F::from_f64(self.inner_lr.at(k));
        let mut y_hat = state.phi.clone();
        for _ in 0..self.inner_steps {
            let j = draws.next_index(r);
            let (_, g) = inner_gradient_phi(ws, problem, task, j, theta, &y_hat, &mut work)?;
            sub_scaled(&mut y_hat, alpha, &g);
        }
        let j = draws.next_index(r);
        let (_, g_theta, g_phi) =
            inner_gradient(ws, problem, task, j, theta, &state.phi, &mut work)?;
        let (_, g_theta_hat, _) = inner_gradient(ws, problem, task, j, theta, &y_hat, &mut work)?;
        let psi_theta = add_scaled(&g_theta, -F::one(), &g_theta_hat);
        let psi_phi = g_phi;
        let (outer_loss, f_theta, f_phi) =
            outer_gradient(ws, problem, task, theta, &state.phi, &mut work)?;
        let lambda = self.multiplier((&f_theta, &f_phi), (&psi_theta, &psi_phi));
        let l = F::from_f64(lambda);
        let d_theta = add_scaled(&f_theta, l, &psi_theta);
        let d_phi = add_scaled(&f_phi, l, &psi_phi);
        let gamma = self.outer_lr.at(k);
        let mut theta = state.theta.clone();
        let mut phi = state.phi.clone();
        sub_scaled(&mut theta, F::from_f64(gamma), &d_theta);
        sub_scaled(&mut phi, F::from_f64(gamma), &d_phi);
        check_finite("BOME update (θ or φ)", k, &[&theta, &phi])?;
        state.theta = theta;
        state.phi = phi;
        Ok(state.commit(draws, work, Some(outer_loss), d_theta, gamma))
    }
}
