//! SOBA: the stochastic bilevel algorithm of Dagréou, Ablin, Vaiter and Moreau
//! (NeurIPS 2022), docs/math.md §11.

use tape::{Float, Tensor};

use super::{
    add_to, check_finite, initial_with_v, inner_products, outer_gradient, sub_scaled, Solver,
    SolverState, SolverStep, SolverWorkspace, StepSize, Work,
};
use crate::error::BloError;
use crate::problem::Problem;

/// SOBA (Dagréou, Ablin, Vaiter, Moreau, "A framework for bilevel optimization
/// that enables stochastic and global variance reduction algorithms",
/// NeurIPS 2022): joint steps on φ, v and θ from the same point.
///
/// With g = L_in (at one drawn index j), f = L_out, H = ∂²g/∂φ², M = ∂²g/∂θ∂φ,
/// all at (θ_k, φ_k):
///
/// ```text
/// D_φ = ∇_φ g
/// D_v = H v_k + ∇_φ f
/// D_θ = ∇_θ f + M v_k
/// φ_{k+1} = φ_k − ρ_k D_φ,   v_{k+1} = v_k − ρ_k D_v,   θ_{k+1} = θ_k − γ_k D_θ
/// ```
///
/// At φ = φ*(θ) and v = v* = −H⁻¹∇_φ f, D_θ is the hypergradient ∇h(θ).
/// ∇_φ g, H v and M v come from ONE dual pass of g with the tangent v on φ
/// (the pass of the exact estimators, [`crate::InnerWorkspace::inner_hvp`]),
/// ∇_θ f and ∇_φ f from one reverse pass of f: 3 gradient-equivalents per step.
/// v_0 = 0.
///
/// ```
/// use blo::solvers::{Soba, StepSize};
/// assert!(Soba::new(StepSize::constant(0.1), StepSize::constant(0.01)).is_ok());
/// assert!(Soba::new(StepSize::constant(-0.1), StepSize::constant(0.01)).is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Soba {
    /// ρ_k, the step on φ and on v.
    pub inner_lr: StepSize,
    /// γ_k, the step on θ.
    pub outer_lr: StepSize,
}

impl Soba {
    /// SOBA with inner (φ and v) step ρ_k and outer step γ_k.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if a step size is not finite and
    /// positive or its decay is outside [0, 1].
    pub fn new(inner_lr: StepSize, outer_lr: StepSize) -> Result<Self, BloError> {
        inner_lr.validate("SOBA inner_lr")?;
        outer_lr.validate("SOBA outer_lr")?;
        Ok(Soba { inner_lr, outer_lr })
    }
}

impl<F: Float> Solver<F> for Soba {
    fn name(&self) -> &'static str {
        "SOBA"
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
        let mut work = Work::default();
        let mut draw = state.draws();
        let j = draw.next_index(problem.inner_loop().steps);
        let p = inner_products(
            ws,
            problem,
            task,
            j,
            &state.theta,
            &state.phi,
            &state.v,
            &mut work,
        )?;
        let (outer_loss, mut d_theta, mut d_v) =
            outer_gradient(ws, problem, task, &state.theta, &state.phi, &mut work)?;
        // D_v = H v + ∇_φ f; D_θ = ∇_θ f + M v.
        add_to(&mut d_v, &p.hv);
        add_to(&mut d_theta, &p.mv);
        let (rho, gamma) = (self.inner_lr.at(k), self.outer_lr.at(k));
        let mut phi = state.phi.clone();
        let mut v = state.v.clone();
        let mut theta = state.theta.clone();
        sub_scaled(&mut phi, F::from_f64(rho), &p.grad_phi);
        sub_scaled(&mut v, F::from_f64(rho), &d_v);
        sub_scaled(&mut theta, F::from_f64(gamma), &d_theta);
        check_finite("SOBA update (θ, φ or v)", k, &[&theta, &phi, &v])?;
        state.theta = theta;
        state.phi = phi;
        state.v = v;
        Ok(state.commit(draw, work, Some(outer_loss), d_theta, gamma))
    }
}
