//! Implicit differentiation: differentiate the inner optimum's stationarity
//! condition instead of the trajectory.
//!
//! If φ*(θ) satisfies ∇_φ L_in(θ, φ*; τ, j) = 0 and H_φφ = ∂²L_in/∂φ² is
//! invertible there, the implicit function theorem gives
//!
//! dφ*/dθ = −H_φφ⁻¹ H_φθ,
//!
//! so the hypergradient of F(θ) = L_out(θ, φ*(θ)) is
//!
//! g = ∇_θ L_out + (dφ*/dθ)ᵀ ∇_φ L_out = ∇_θ L_out − H_θφ v,  with  H_φφ v = ∇_φ L_out,
//!
//! where H_θφ = ∂²L_in/∂θ∂φ is the mixed block. The start Φ_0(θ) plays no role
//! at a fixed point. Every product is taken by `hvp` on the adapters of
//! [`crate::engine::objective`]: H_φφ·x inside the solver ([`hvp::Hessian`] over φ with
//! θ fixed), and ∇_φ L_in, H_φφ v, H_θφ v from one [`hvp::Workspace::mixed_hvp`]
//! pass over (θ, φ).

use hvp::{
    cg, flatten, neumann, unflatten, CgError, CgParams, FnOp, Hessian, NeumannError, NeumannParams,
};
use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::engine::objective::{InnerObjective, OuterObjective};
use crate::engine::step::InnerWorkspace;
use crate::error::BloError;
use crate::estimators::{Estimate, Estimator, SolverReport, Stats};
use crate::problem::Problem;

/// How the linear system A u = ∇_φ L_out is solved (A is given in [`Implicit`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImplicitSolver {
    /// Conjugate gradient (`hvp::cg`): one HVP per iteration. Fails with
    /// [`BloError::SolverFailed`] if A is not positive definite at φ_r.
    Cg(CgParams),
    /// Truncated Neumann series α Σ_k (I − αA)^k b (`hvp::neumann`): one HVP per
    /// term; its `tol` is the required true relative residual.
    Neumann(NeumannParams),
}

/// Which structure the estimator assumes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// The general implicit-function-theorem estimator.
    Ift,
    /// iMAML: θ enters L_in only as the proximal centre Φ_0(θ) of λ/2‖φ − Φ_0(θ)‖²
    /// (written in the loss, or implied).
    Imaml { lambda: f64, proximal_in_loss: bool },
}

/// The implicit hypergradient, at the state φ_r the inner loop returns.
///
/// **General form** ([`Implicit::ift`]): for any problem whose φ_r is a
/// stationary point of the inner loss at index j (default j = r, the last
/// step's loss; see [`Implicit::stationary_at`]), with θ anywhere in L_in and
/// any Φ_0:
///
/// H_φφ v = ∇_φ L_out(θ, φ_r),   g = ∇_θ L_out(θ, φ_r) − H_θφ v,
///
/// with H_φφ = ∂²L_in/∂φ² and H_θφ = ∂²L_in/∂θ∂φ at (θ, φ_r; τ, j): one HVP per
/// solver iteration, plus one mixed pass.
///
/// **iMAML** ([`Implicit::imaml`], Rajeswaran et al. 2019), the special case
/// φ*(θ) = argmin_φ L(φ) + λ/2‖φ − θ‖² with φ_0 = Φ_0(θ) the proximal centre:
/// then H_φφ = H_L + λI and H_θφ = −λ(∂Φ_0/∂θ)ᵀ, so with u = λv
///
/// (I + H_L/λ) u = ∇_φ L_out,   g = ∇_θ L_out + (∂Φ_0/∂θ)ᵀ u.
///
/// The proximal term may be written in L_in ([`Implicit::proximal_in_loss`],
/// then H_L = H_{L_in} − λI) or implied (the default: L_in = L and the
/// stationarity condition is ∇L(φ_r) + λ(φ_r − φ_0) = 0).
///
/// **Honest**: an estimate whose assumptions fail is an error, never a number.
/// - φ_r must be stationary: ‖∇_φ L_in(θ, φ_r; j)‖ ≤ tol · ‖∇_φ L_in(θ, φ_0; j)‖
///   (with the implied proximal term, if any; `tol` from
///   [`Implicit::stationarity_tol`], default 1e-6), else [`BloError::NotStationary`].
/// - iMAML's structure is checked along ∇_φ L_out before the solve and along
///   the solution after it, by one mixed product each: H_θφ w must equal
///   −λ(∂Φ_0/∂θ)ᵀ w (proximal term in the loss) or 0 (implied), to a relative
///   √ε of the element type (1.5e-8 in f64, 3.5e-4 in f32); else
///   [`BloError::UnsupportedStructure`], which names [`Implicit::ift`].
/// - The solve must reach its tolerance on the *true* relative residual
///   ‖b − Au‖/‖b‖ (recomputed by the final mixed pass and reported in
///   `Stats::solver`), else [`BloError::NotConverged`]; CG's non-positive
///   curvature is [`BloError::SolverFailed`].
///
/// Cost: r inner steps, two gradients (L_in at φ_0 for the stationarity scale,
/// L_out at φ_r), k + 2 HVPs for a k-iteration solve. Memory: one state (two
/// with the implied proximal term, whose centre φ_0 is kept).
///
/// ```
/// use blo::{Estimator, Implicit, InnerLoop, Problem};
/// use rand::SeedableRng;
/// use tape::{Real, Tape, Tensor, Var};
///
/// /// L_in = ½ e^θ (φ − 1)² + ½ φ², L_out = ½ (φ − 2)², φ_0 = 0:
/// /// φ*(θ) = e^θ/(e^θ + 1) = σ(θ), so dF/dθ = (σ − 2)·σ(1 − σ).
/// struct P { inner: InnerLoop }
/// impl Problem<f64> for P {
///     type Task = ();
///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
///     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(), _j: usize,
///         theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         ((theta[0].exp() * (phi[0] - 1.0).square()) + phi[0].square()).sum() * 0.5
///     }
///     fn outer_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(),
///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         (phi[0] - 2.0).square().sum() * 0.5
///     }
///     fn initial_state<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, _: &(),
///         _theta: &[Var<'t, T>]) -> Vec<Var<'t, T>> {
///         vec![t.constant_base(&Tensor::vector(vec![0.0]))]
///     }
/// }
/// let p = P { inner: InnerLoop::sgd(200, 0.5)? };
/// let theta = [Tensor::vector(vec![0.3])];
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let g = Implicit::ift().estimate(&p, &(), &theta, &mut rng)?;
/// let s = 1.0 / (1.0 + (-0.3f64).exp());
/// assert!((g.grad[0].data()[0] - (s - 2.0) * s * (1.0 - s)).abs() < 1e-12);
/// // iMAML assumes θ is only a proximal centre: here it refuses.
/// let e = Implicit::imaml(1.0)?.proximal_in_loss(true).estimate(&p, &(), &theta, &mut rng);
/// assert!(matches!(e, Err(blo::BloError::UnsupportedStructure { .. })));
/// // Too few inner steps: not a stationary point, so no number either.
/// let short = P { inner: InnerLoop::sgd(3, 0.5)? };
/// let e = Implicit::ift().estimate(&short, &(), &theta, &mut rng);
/// assert!(matches!(e, Err(blo::BloError::NotStationary { .. })));
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Implicit {
    form: Form,
    solver: ImplicitSolver,
    stationary_at: Option<usize>,
    stationarity_tol: f64,
}

impl Implicit {
    /// The general implicit-function-theorem estimator (no λ): CG with tol
    /// 1e-10 and at most 200 iterations, stationarity at j = r, tol 1e-6.
    pub fn ift() -> Self {
        Implicit {
            form: Form::Ift,
            solver: ImplicitSolver::Cg(CgParams {
                tol: 1e-10,
                max_iter: 200,
            }),
            stationary_at: None,
            stationarity_tol: 1e-6,
        }
    }

    /// iMAML with proximal weight λ > 0 (the term implied, see
    /// [`Implicit::proximal_in_loss`]); the defaults of [`Implicit::ift`].
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if λ is not finite and positive.
    pub fn imaml(lambda: f64) -> Result<Self, BloError> {
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(BloError::invalid(
                "lambda",
                lambda,
                "must be finite and > 0",
            ));
        }
        Ok(Implicit {
            form: Form::Imaml {
                lambda,
                proximal_in_loss: false,
            },
            ..Self::ift()
        })
    }

    /// The same as [`Implicit::imaml`] (the name before the general estimator
    /// existed): it asks for a λ even where there is no proximal term, so use
    /// [`Implicit::imaml`] for iMAML and [`Implicit::ift`] otherwise.
    ///
    /// # Errors
    /// As [`Implicit::imaml`].
    #[deprecated(
        since = "0.1.0",
        note = "use `Implicit::imaml(λ)` for iMAML's proximal problem, `Implicit::ift()` for the general one (no λ)"
    )]
    pub fn new(lambda: f64) -> Result<Self, BloError> {
        Self::imaml(lambda)
    }

    /// Uses `solver` instead.
    pub fn with_solver(mut self, solver: ImplicitSolver) -> Self {
        self.solver = solver;
        self
    }

    /// iMAML only: whether L_in already contains λ/2‖φ − Φ_0(θ)‖² (then
    /// H_L = H_{L_in} − λI and the inner loop minimises L_in itself).
    ///
    /// # Panics
    /// On the general estimator ([`Implicit::ift`] reads every θ dependence
    /// off the loss, so there is nothing to declare).
    #[track_caller]
    pub fn proximal_in_loss(mut self, yes: bool) -> Self {
        match &mut self.form {
            Form::Imaml {
                proximal_in_loss, ..
            } => *proximal_in_loss = yes,
            Form::Ift => panic!(
                "Implicit::proximal_in_loss: only for Implicit::imaml; Implicit::ift reads the proximal term off the loss"
            ),
        }
        self
    }

    /// The inner-loss index j (1 ≤ j ≤ r) whose stationarity condition
    /// ∇_φ L_in(θ, φ; τ, j) = 0 defines φ*, and at which H_φφ and H_θφ are
    /// taken. Default: r, the loss of the last inner step. (When L_in does not
    /// depend on j, any j gives the same estimate; with a different batch per
    /// step, φ_r is usually stationary for none of them, and the estimator says
    /// so.) An index outside 1..=r is [`BloError::InvalidHyperparameter`] at
    /// estimate time.
    pub fn stationary_at(mut self, j: usize) -> Self {
        self.stationary_at = Some(j);
        self
    }

    /// The relative tolerance of the stationarity test
    /// ‖∇_φ L_in(θ, φ_r; j)‖ ≤ tol · ‖∇_φ L_in(θ, φ_0; j)‖ (default 1e-6). The
    /// error of the estimate grows with this gradient, so a looser tolerance
    /// states how biased an estimate you accept.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] unless `tol` is finite and ≥ 0.
    pub fn stationarity_tol(mut self, tol: f64) -> Result<Self, BloError> {
        if !(tol.is_finite() && tol >= 0.0) {
            return Err(BloError::invalid(
                "stationarity_tol",
                tol,
                "must be finite and ≥ 0",
            ));
        }
        self.stationarity_tol = tol;
        Ok(self)
    }

    /// iMAML's λ, or `None` for the general estimator.
    pub fn lambda(&self) -> Option<f64> {
        match self.form {
            Form::Imaml { lambda, .. } => Some(lambda),
            Form::Ift => None,
        }
    }
}

/// √(Σ‖t‖²) over a tensor list, in f64.
fn norm<F: Float>(ts: &[Tensor<F>]) -> f64 {
    ts.iter()
        .flat_map(|t| t.data())
        .map(|&x| x.to_f64().powi(2))
        .sum::<f64>()
        .sqrt()
}

/// a + s·b, elementwise over tensor lists of the same shapes.
fn axpy<F: Float>(a: &[Tensor<F>], s: F, b: &[Tensor<F>]) -> Vec<Tensor<F>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x.data().iter().zip(y.data()).map(|(&p, &q)| p + s * q);
            Tensor::new(x.shape(), d.collect())
        })
        .collect()
}

impl Implicit {
    /// iMAML's structure along a direction w: `m` = H_θφ w (of L_in) and
    /// `k` = λ(∂Φ_0/∂θ)ᵀ w. The assumption is m = −k (in the loss) or m = 0
    /// (implied); the mismatch ‖m + [in loss]·k‖ / (‖m‖ + ‖k‖) is scale-free.
    fn check_structure<F: Float>(
        &self,
        along: &str,
        m: &[Tensor<F>],
        k: &[Tensor<F>],
    ) -> Result<(), BloError> {
        let Form::Imaml {
            proximal_in_loss, ..
        } = self.form
        else {
            return Ok(());
        };
        let tol = F::EPSILON.to_f64().sqrt();
        let den = norm(m) + norm(k);
        let num = if proximal_in_loss {
            norm(&axpy(m, F::one(), k))
        } else {
            norm(m)
        };
        let mismatch = if den == 0.0 { 0.0 } else { num / den };
        if mismatch.is_nan() || mismatch > tol {
            let reason = if proximal_in_loss {
                format!(
                    "assumes θ enters L_in only through λ/2‖φ − Φ_0(θ)‖² (so H_θφ w = −λ(∂Φ_0/∂θ)ᵀw), \
                     but along w = {along} ‖H_θφ w + λ(∂Φ_0/∂θ)ᵀw‖ = {num:.3e}: θ enters the inner loss \
                     otherwise, or Φ_0(θ) is not the proximal centre; use Implicit::ift()"
                )
            } else {
                format!(
                    "assumes θ does not enter L_in (the proximal term λ/2‖φ − Φ_0(θ)‖² is implied, so H_θφ w = 0), \
                     but along w = {along} ‖H_θφ w‖ = {num:.3e}: θ enters the inner loss; use Implicit::ift() \
                     (or proximal_in_loss(true) if L_in holds the proximal term)"
                )
            };
            return Err(BloError::UnsupportedStructure {
                estimator: self.label(),
                reason,
                mismatch,
                tol,
            });
        }
        Ok(())
    }

    /// λ(∂Φ_0/∂θ)ᵀ w, or `None` for the general estimator.
    fn prox_vjp<F: Float, P: Problem<F>>(
        &self,
        iws: &mut InnerWorkspace<F>,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        w: &[Tensor<F>],
    ) -> Option<Vec<Tensor<F>>> {
        let Form::Imaml { lambda, .. } = self.form else {
            return None;
        };
        let mut k: Vec<Tensor<F>> = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
        let lw: Vec<Tensor<F>> = w
            .iter()
            .map(|t| t.map(|x| x * F::from_f64(lambda)))
            .collect();
        iws.initial_state_vjp(problem, task, theta, &lw, &mut k);
        Some(k)
    }

    fn run<F: Float, P: Problem<F>>(
        &self,
        iws: &mut InnerWorkspace<F>,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        j: usize,
    ) -> Result<Estimate<F>, BloError> {
        let r = problem.inner_loop().steps;
        let n_theta = theta.len();
        let mut ws = hvp::Workspace::new();
        let mut state = iws.initial_state(problem, task, theta)?;
        // The scale of the stationarity test: ‖∇_φ L_in(θ, φ_0; j)‖ (the
        // implied proximal term vanishes at its centre φ_0).
        let (l0, g0) =
            ws.value_and_grad(&InnerObjective::of_phi(problem, task, j, theta), &state.phi);
        let g0_norm = norm(&g0);
        if !(l0.is_finite() && g0_norm.is_finite()) {
            return Err(non_finite("inner gradient at φ_0 (stationarity scale)", 0));
        }
        for k in 1..=r {
            iws.step_in_place(problem, task, k, theta, &mut state)?;
        }
        let state_bytes = state.bytes();
        let phi = state.phi;

        // L_out, ∇_θ L_out and b = ∇_φ L_out at φ_r, by one reverse sweep.
        let mut x: Vec<Tensor<F>> = theta.to_vec();
        x.extend(phi.iter().cloned());
        let (outer_loss, mut g_theta) =
            ws.value_and_grad(&OuterObjective::joint(problem, task, n_theta), &x);
        let b = g_theta.split_off(n_theta);
        if !outer_loss.is_finite() {
            return Err(non_finite("outer loss", r + 1));
        }
        if !(norm(&g_theta) + norm(&b)).is_finite() {
            return Err(non_finite("outer gradient", r + 1));
        }

        // iMAML's implied proximal term λ/2‖φ − φ_0‖²: its centre, and the
        // system's scale s and shift μ, A = s (H_φφ[L_in] + μ I).
        let (centre, scale, shift) = match self.form {
            Form::Ift => (None, 1.0, 0.0),
            Form::Imaml {
                lambda,
                proximal_in_loss: true,
            } => (None, 1.0 / lambda, 0.0),
            Form::Imaml {
                lambda,
                proximal_in_loss: false,
            } => (
                Some(iws.initial_state(problem, task, theta)?.phi),
                1.0 / lambda,
                lambda,
            ),
        };
        let (scale, shift) = (F::from_f64(scale), F::from_f64(shift));

        // One mixed pass at φ_r along b: ∇_φ L_in (stationarity) and H_θφ b (structure).
        let joint = InnerObjective::joint(problem, task, j, n_theta);
        let probe = ws.mixed_hvp(&joint, theta, &phi, &b);
        if let Some(k) = self.prox_vjp(iws, problem, task, theta, &b) {
            self.check_structure("∇_φ L_out", &probe.h_thetaphi_v, &k)?;
        }
        let grad_r = match &centre {
            Some(c) => axpy(&probe.grad_phi, shift, &axpy(&phi, -F::one(), c)),
            None => probe.grad_phi,
        };
        let grad_norm = norm(&grad_r);
        // A NaN norm fails the test too.
        if grad_norm.is_nan() || grad_norm > self.stationarity_tol * g0_norm {
            return Err(BloError::NotStationary {
                step: j,
                grad_norm,
                initial_grad_norm: g0_norm,
                tol: self.stationarity_tol,
            });
        }

        // Solve A u = b with A = s (H_φφ + μI), H_φφ·x by `hvp` over φ (θ fixed).
        let b_flat = flatten(&b);
        let of_phi = InnerObjective::of_phi(problem, task, j, theta);
        let all: Vec<usize> = (0..phi.len()).collect();
        let hess = Hessian::block_with_workspace(&of_phi, &phi, &all, ws);
        let (u, iterations, tol) = {
            let op = FnOp::new(b_flat.len(), |x: &[F], out: &mut [F]| {
                hvp::LinOp::apply(&hess, x, out);
                for (o, &xi) in out.iter_mut().zip(x) {
                    *o = scale * (*o + shift * xi);
                }
            });
            match self.solver {
                ImplicitSolver::Cg(p) => {
                    let (u, info) = cg(&op, &b_flat, p).map_err(cg_error)?;
                    (u, info.iterations, p.tol)
                }
                ImplicitSolver::Neumann(p) => {
                    let (u, info) = neumann(&op, &b_flat, p).map_err(neumann_error)?;
                    (u, info.terms, p.tol)
                }
            }
        };
        let solver_hvps = hess.applications();
        let mut ws = hess.into_workspace();

        // v = s·u solves (H_φφ + μI) v = b. One mixed pass along v gives the
        // true residual and H_θφ v.
        let u = unflatten(&u, &b);
        let v: Vec<Tensor<F>> = u.iter().map(|t| t.map(|x| x * scale)).collect();
        let fin = ws.mixed_hvp(&joint, theta, &phi, &v);
        let av = axpy(&fin.h_phiphi_v, shift, &v);
        let b_norm = norm(&b);
        let residual = if b_norm == 0.0 {
            0.0
        } else {
            norm(&axpy(&b, -F::one(), &av)) / b_norm
        };
        if residual.is_nan() || residual > tol {
            return Err(BloError::NotConverged {
                solver: self.solver_name(),
                iterations,
                residual,
            });
        }
        let grad = match self.prox_vjp(iws, problem, task, theta, &v) {
            // iMAML: g = ∇_θ L_out + (∂Φ_0/∂θ)ᵀ u, with λ(∂Φ_0/∂θ)ᵀ v = (∂Φ_0/∂θ)ᵀ u.
            Some(k) => {
                self.check_structure("the solution v", &fin.h_thetaphi_v, &k)?;
                axpy(&g_theta, F::one(), &k)
            }
            // General: g = ∇_θ L_out − H_θφ v.
            None => axpy(&g_theta, -F::one(), &fin.h_thetaphi_v),
        };
        if !norm(&grad).is_finite() {
            return Err(non_finite("implicit hypergradient", r + 1));
        }
        let held = 1 + usize::from(centre.is_some());
        Ok(Estimate {
            grad,
            outer_loss,
            stats: Stats {
                gradients: r + 2,
                hvps: solver_hvps + 2,
                forward_steps: r,
                states_peak: held,
                state_bytes_peak: held * state_bytes,
                solver: Some(SolverReport {
                    iterations,
                    residual,
                }),
                ..Stats::default()
            },
        })
    }

    fn solver_name(&self) -> &'static str {
        match self.solver {
            ImplicitSolver::Cg(_) => "implicit: conjugate gradient",
            ImplicitSolver::Neumann(_) => "implicit: Neumann series",
        }
    }
}

fn non_finite(what: &'static str, step: usize) -> BloError {
    BloError::NonFinite {
        what,
        task: 0,
        step,
    }
}

fn cg_error<F: Float>(e: CgError<F>) -> BloError {
    match e {
        CgError::NotConverged {
            iterations,
            residual,
            ..
        } => BloError::NotConverged {
            solver: "implicit: conjugate gradient",
            iterations,
            residual,
        },
        e @ CgError::NegativeCurvature { .. } => BloError::SolverFailed {
            solver: "implicit: conjugate gradient",
            reason: format!(
                "{e} (H_φφ is not positive definite at φ_r: not a strict local minimum)"
            ),
        },
        e => BloError::SolverFailed {
            solver: "implicit: conjugate gradient",
            reason: e.to_string(),
        },
    }
}

fn neumann_error<F: Float>(e: NeumannError<F>) -> BloError {
    match e {
        NeumannError::NotConverged {
            terms, residual, ..
        } => BloError::NotConverged {
            solver: "implicit: Neumann series",
            iterations: terms,
            residual,
        },
        e => BloError::SolverFailed {
            solver: "implicit: Neumann series",
            reason: e.to_string(),
        },
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for Implicit {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let inner = problem.inner_loop();
        inner.validate()?;
        let r = inner.steps;
        let j = self.stationary_at.unwrap_or(r);
        if !(1..=r).contains(&j) {
            return Err(BloError::invalid(
                "stationary_at",
                j,
                &format!("the inner-loss index must be in 1..={r}"),
            ));
        }
        let mut iws = InnerWorkspace::new();
        self.run(&mut iws, problem, task, theta, j)
    }

    fn name(&self) -> String {
        self.label()
    }
}

impl Implicit {
    /// The name in logs and errors.
    fn label(&self) -> String {
        let solver = match self.solver {
            ImplicitSolver::Cg(_) => "CG",
            ImplicitSolver::Neumann(_) => "Neumann",
        };
        match self.form {
            Form::Ift => format!("implicit(IFT, {solver})"),
            Form::Imaml { lambda, .. } => format!("implicit(iMAML λ={lambda}, {solver})"),
        }
    }
}
