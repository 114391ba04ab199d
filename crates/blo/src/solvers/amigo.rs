//! AmIGO: amortized implicit gradient optimisation of Arbel and Mairal
//! (ICLR 2022), docs/math.md §11.

use tape::{Float, Tensor};

use super::{
    add_to, check_count, check_finite, initial_with_v, inner_gradient_phi, inner_products,
    outer_gradient, sub_scaled, Solver, SolverState, SolverStep, SolverWorkspace, StepSize, Work,
};
use crate::error::BloError;
use crate::problem::Problem;

/// AmIGO (Arbel, Mairal, "Amortized implicit differentiation for stochastic
/// bilevel optimization", ICLR 2022): per outer step, a few warm-started SGD
/// steps on φ, then a few warm-started SGD steps on the linear system in v,
/// then one step on θ.
///
/// With g = L_in (a fresh index j per evaluation), f = L_out,
/// H = ∂²g/∂φ², M = ∂²g/∂θ∂φ:
///
/// ```text
/// φ ← φ − ρ ∇_φ g(θ_k, φ)                     (N_φ times; the paper's T)
/// b = ∇_φ f(θ_k, φ)
/// v ← v − η (H(θ_k, φ) v + b)                  (N_v times; the paper's M)
/// D_θ = ∇_θ f(θ_k, φ) + M(θ_k, φ) v
/// θ_{k+1} = θ_k − γ_k D_θ
/// ```
///
/// φ and v are warm-started from the previous outer step (v_0 = 0), which
/// amortises the two inner solves. Each v step is one dual pass of g with the
/// tangent v on φ (the pass of the exact estimators); D_θ's mixed product M v
/// at the final v is one more pass of the same kind. Cost per outer step:
/// N_φ + 1 gradients and N_v + 1 HVPs (N_φ + 2N_v + 3 gradient-equivalents).
///
/// ```
/// use blo::solvers::{Amigo, StepSize};
/// assert!(Amigo::new(StepSize::constant(0.1), 0.1, 5, 5, StepSize::constant(0.01)).is_ok());
/// assert!(Amigo::new(StepSize::constant(0.1), 0.1, 0, 5, StepSize::constant(0.01)).is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Amigo {
    /// ρ_k, the step of the inner SGD on φ.
    pub inner_lr: StepSize,
    /// η, the step of the SGD on the linear system (constant).
    pub linear_lr: f64,
    /// N_φ ≥ 1, inner steps per outer step.
    pub inner_steps: usize,
    /// N_v ≥ 1, linear-system steps per outer step.
    pub linear_steps: usize,
    /// γ_k, the step on θ.
    pub outer_lr: StepSize,
}

impl Amigo {
    /// AmIGO with N_φ = `inner_steps` SGD steps of size ρ_k on φ and
    /// N_v = `linear_steps` of size η on v per outer step of size γ_k.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if a step size is not finite and
    /// positive, or a step count is 0.
    pub fn new(
        inner_lr: StepSize,
        linear_lr: f64,
        inner_steps: usize,
        linear_steps: usize,
        outer_lr: StepSize,
    ) -> Result<Self, BloError> {
        inner_lr.validate("AmIGO inner_lr")?;
        StepSize::constant(linear_lr).validate("AmIGO linear_lr")?;
        outer_lr.validate("AmIGO outer_lr")?;
        check_count("AmIGO inner_steps", inner_steps)?;
        check_count("AmIGO linear_steps", linear_steps)?;
        Ok(Amigo {
            inner_lr,
            linear_lr,
            inner_steps,
            linear_steps,
            outer_lr,
        })
    }
}

impl<F: Float> Solver<F> for Amigo {
    fn name(&self) -> &'static str {
        "AmIGO"
    }

    fn init<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        theta0: Vec<Tensor<F>>,
    ) -> Result<SolverState<F>, BloError> {
        initial_with_v(ws, problem, task, theta0)
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
        let rho = F::from_f64(self.inner_lr.at(k));
        let mut phi = state.phi.clone();
        for _ in 0..self.inner_steps {
            let j = draws.next_index(r);
            let (_, g) = inner_gradient_phi(ws, problem, task, j, theta, &phi, &mut work)?;
            sub_scaled(&mut phi, rho, &g);
        }
        let (outer_loss, mut d_theta, b) =
            outer_gradient(ws, problem, task, theta, &phi, &mut work)?;
        let eta = F::from_f64(self.linear_lr);
        let mut v = state.v.clone();
        for _ in 0..self.linear_steps {
            let j = draws.next_index(r);
            let p = inner_products(ws, problem, task, j, theta, &phi, &v, &mut work)?;
            let mut d_v = p.hv;
            add_to(&mut d_v, &b);
            sub_scaled(&mut v, eta, &d_v);
        }
        let j = draws.next_index(r);
        let p = inner_products(ws, problem, task, j, theta, &phi, &v, &mut work)?;
        add_to(&mut d_theta, &p.mv);
        let gamma = self.outer_lr.at(k);
        let mut theta = state.theta.clone();
        sub_scaled(&mut theta, F::from_f64(gamma), &d_theta);
        check_finite("AmIGO update (θ, φ or v)", k, &[&theta, &phi, &v])?;
        state.theta = theta;
        state.phi = phi;
        state.v = v;
        Ok(state.commit(draws, work, Some(outer_loss), d_theta, gamma))
    }
}
