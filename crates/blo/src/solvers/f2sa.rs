//! F2SA: the fully first-order stochastic approximation of Kwon, Kwon, Wright
//! and Nowak (ICML 2023), docs/math.md §11.

use tape::{Float, Real, Tape, Tensor, Var};

use super::{
    check_finite, checked_grad, initial, sub_scaled, Solver, SolverState, SolverStep,
    SolverWorkspace, StepSize, Work,
};
use crate::error::BloError;
use crate::problem::Problem;

/// F2SA's penalty schedule λ_k = min(λ_0 + δ·k, λ_max): increasing by δ > 0
/// per outer step until the cap λ_max > λ_0 (∞ for no cap).
///
/// ```
/// use blo::solvers::Penalty;
/// let p = Penalty::new(1.0, 0.5, 2.0)?;
/// assert_eq!((p.at(0), p.at(1), p.at(10)), (1.0, 1.5, 2.0));
/// assert!(Penalty::new(1.0, 0.0, 2.0).is_err()); // λ would not increase
/// assert!(Penalty::new(1.0, 0.5, 1.0).is_err()); // cap at the start: no increase either
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalty {
    /// λ_0 > 0.
    pub lambda0: f64,
    /// δ > 0, the increase per outer step.
    pub growth: f64,
    /// λ_max > λ_0 (may be ∞).
    pub lambda_max: f64,
}

impl Penalty {
    /// λ_k = min(λ_0 + δk, λ_max).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] unless λ_0 is finite and > 0, δ is
    /// finite and > 0 (the schedule must increase), and λ_max > λ_0.
    pub fn new(lambda0: f64, growth: f64, lambda_max: f64) -> Result<Self, BloError> {
        let p = Penalty {
            lambda0,
            growth,
            lambda_max,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the ranges of [`Penalty::new`].
    ///
    /// # Errors
    /// As [`Penalty::new`].
    pub fn validate(&self) -> Result<(), BloError> {
        if !(self.lambda0.is_finite() && self.lambda0 > 0.0) {
            return Err(BloError::invalid(
                "F2SA lambda0",
                self.lambda0,
                "the initial penalty must be finite and > 0",
            ));
        }
        if !(self.growth.is_finite() && self.growth > 0.0) {
            return Err(BloError::invalid(
                "F2SA lambda growth",
                self.growth,
                "the penalty schedule must increase (λ_k → ∞ makes the penalty exact): growth must be finite and > 0",
            ));
        }
        if self.lambda_max.is_nan() || self.lambda_max <= self.lambda0 {
            return Err(BloError::invalid(
                "F2SA lambda_max",
                self.lambda_max,
                &format!(
                    "the cap must exceed λ_0 = {} or the schedule does not increase",
                    self.lambda0
                ),
            ));
        }
        Ok(())
    }

    /// λ_k.
    pub fn at(&self, k: u64) -> f64 {
        (self.lambda0 + self.growth * k as f64).min(self.lambda_max)
    }
}

/// F2SA (Kwon, Kwon, Wright, Nowak, "A fully first-order method for
/// stochastic bilevel optimization", ICML 2023): no second derivative at all.
///
/// It descends the penalty L_λ(θ, y, z) = f(θ, y) + λ(g(θ, y) − g(θ, z)),
/// whose value function approaches h as λ → ∞ (docs/math.md §11), with y = φ
/// (the state's `phi`) and the second inner variable z. At (θ_k, y_k, z_k)
/// and one drawn index j, with λ = λ_k:
///
/// ```text
/// z_{k+1} = z_k − ρ_z ∇_z g(θ_k, z_k)
/// y_{k+1} = y_k − (ρ_y/λ) (∇_y f(θ_k, y_k) + λ ∇_y g(θ_k, y_k))
/// D_θ = ∇_θ f(θ_k, y_k) + λ (∇_θ g(θ_k, y_k) − ∇_θ g(θ_k, z_k))
/// θ_{k+1} = θ_k − γ_k D_θ
/// ```
///
/// The y step shrinks like 1/λ because the y-problem's curvature grows like
/// λ. All three gradients are one reverse pass of L_λ over (θ, y, z):
/// ∇_θ L_λ = D_θ, ∇_y L_λ and ∇_z L_λ = −λ∇_z g. Cost: 3 gradient-equivalents
/// (the pass records f and the gap g(y) − g(z), [`Problem::inner_loss_gap`]). y_0 = z_0 = Φ_0(θ_0).
///
/// ```
/// use blo::solvers::{F2sa, Penalty, StepSize};
/// let pen = Penalty::new(1.0, 0.1, f64::INFINITY)?;
/// assert!(F2sa::new(StepSize::constant(0.1), StepSize::constant(0.1), StepSize::constant(0.01), pen).is_ok());
/// assert!(F2sa::new(StepSize::constant(0.0), StepSize::constant(0.1), StepSize::constant(0.01), pen).is_err());
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct F2sa {
    /// ρ_y (divided by λ_k at each step).
    pub inner_lr: StepSize,
    /// ρ_z.
    pub z_lr: StepSize,
    /// γ_k.
    pub outer_lr: StepSize,
    /// λ_k.
    pub penalty: Penalty,
}

impl F2sa {
    /// F2SA with y step ρ_y/λ_k, z step ρ_z, θ step γ_k and penalty λ_k.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if a step size is not finite and
    /// positive or the penalty schedule does not increase ([`Penalty::validate`]).
    pub fn new(
        inner_lr: StepSize,
        z_lr: StepSize,
        outer_lr: StepSize,
        penalty: Penalty,
    ) -> Result<Self, BloError> {
        inner_lr.validate("F2SA inner_lr")?;
        z_lr.validate("F2SA z_lr")?;
        outer_lr.validate("F2SA outer_lr")?;
        penalty.validate()?;
        Ok(F2sa {
            inner_lr,
            z_lr,
            outer_lr,
            penalty,
        })
    }
}

/// L_λ(θ, y, z) = f(θ, y) + λ(g(θ, y; j) − g(θ, z; j)) as an [`hvp::Objective`]
/// over the inputs θ₁..θ_a, y₁..y_b, z₁..z_b; the gap g(y) − g(z) is the
/// problem's [`Problem::inner_loss_gap`] (one recording where the problem
/// shares the part that does not depend on the inner state).
pub struct PenaltyObjective<'a, F: Float, P: Problem<F>> {
    problem: &'a P,
    task: &'a P::Task,
    j: usize,
    lambda: f64,
    n_theta: usize,
    n_phi: usize,
}

impl<'a, F: Float, P: Problem<F>> PenaltyObjective<'a, F, P> {
    /// L_λ at index j, with a = `n_theta` θ tensors and b = `n_phi` φ tensors.
    pub fn new(
        problem: &'a P,
        task: &'a P::Task,
        j: usize,
        lambda: f64,
        n_theta: usize,
        n_phi: usize,
    ) -> Self {
        PenaltyObjective {
            problem,
            task,
            j,
            lambda,
            n_theta,
            n_phi,
        }
    }
}

impl<F: Float, P: Problem<F>> hvp::Objective<F> for PenaltyObjective<'_, F, P> {
    /// Records L_λ(θ, y, z).
    ///
    /// # Panics
    /// If there are not a + 2b inputs.
    #[track_caller]
    fn eval<'t, T: Real<Base = F>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let (a, b) = (self.n_theta, self.n_phi);
        assert_eq!(
            x.len(),
            a + 2 * b,
            "PenaltyObjective: {} inputs, expected θ ({a}), y ({b}) and z ({b})",
            x.len()
        );
        let (th, rest) = x.split_at(a);
        let (y, z) = rest.split_at(b);
        let f = self.problem.outer_loss(tape, self.task, th, y);
        let gap = self
            .problem
            .inner_loss_gap(tape, self.task, self.j, th, y, z);
        f + gap * self.lambda
    }
}

impl<F: Float> Solver<F> for F2sa {
    fn name(&self) -> &'static str {
        "F2SA"
    }

    fn init<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        theta0: Vec<Tensor<F>>,
    ) -> Result<SolverState<F>, BloError> {
        let mut s = initial(ws, problem, task, theta0)?;
        s.z = s.phi.clone();
        Ok(s)
    }

    fn step<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        state: &mut SolverState<F>,
    ) -> Result<SolverStep<F>, BloError> {
        let k = state.iteration;
        let mut draws = state.draws();
        let j = draws.next_index(problem.inner_loop().steps);
        let lambda = self.penalty.at(k);
        let (nt, np) = (state.theta.len(), state.phi.len());
        let mut x: Vec<Tensor<F>> = Vec::with_capacity(nt + 2 * np);
        x.extend(state.theta.iter().cloned());
        x.extend(state.phi.iter().cloned());
        x.extend(state.z.iter().cloned());
        let obj = PenaltyObjective::new(problem, task, j, lambda, nt, np);
        let mut work = Work::default();
        let what = (
            "F2SA penalty L_out + λ(L_in(y) − L_in(z)) or its gradient",
            j,
        );
        // One pass recording f and g twice: 3 gradients.
        let (_, mut g) = checked_grad(ws, &obj, &x, what, 3, &mut work)?;
        let g_z = g.split_off(nt + np);
        let g_y = g.split_off(nt);
        let d_theta = g;
        let (rho_y, rho_z, gamma) = (
            self.inner_lr.at(k) / lambda,
            self.z_lr.at(k) / lambda,
            self.outer_lr.at(k),
        );
        let mut phi = state.phi.clone();
        let mut z = state.z.clone();
        let mut theta = state.theta.clone();
        sub_scaled(&mut phi, F::from_f64(rho_y), &g_y);
        // ∇_z L_λ = −λ ∇_z g, so z − ρ_z ∇_z g = z + (ρ_z/λ) ∇_z L_λ.
        sub_scaled(&mut z, F::from_f64(-rho_z), &g_z);
        sub_scaled(&mut theta, F::from_f64(gamma), &d_theta);
        check_finite("F2SA update (θ, y or z)", k, &[&theta, &phi, &z])?;
        state.theta = theta;
        state.phi = phi;
        state.z = z;
        Ok(state.commit(draws, work, None, d_theta, gamma))
    }
}
