//! The implicit (iMAML-style) hypergradient: differentiate the inner optimum's
//! stationarity condition instead of the trajectory.

use std::cell::RefCell;

use hvp::{cg, neumann, CgError, CgParams, FnOp, NeumannError, NeumannParams};
use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::engine::sweep::{Sweep, Target};
use crate::error::BloError;
use crate::estimator::{Estimate, Estimator, SolverReport};
use crate::exact::first_order_actions;
use crate::problem::Problem;

/// How the linear system is solved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImplicitSolver {
    /// Conjugate gradient (`hvp::cg`): one HVP per iteration.
    Cg(CgParams),
    /// Truncated Neumann series α Σ_k (I − αA)^k b (`hvp::neumann`).
    Neumann(NeumannParams),
}

/// The implicit hypergradient of iMAML (Rajeswaran et al. 2019):
///
/// v = (I + H/λ)⁻¹ ∇_φ L_out(θ, φ_r),   g = ∇_θ L_out + (∂Φ_0/∂θ)ᵀ v,
///
/// with H = ∇²_φφ L_in(θ, φ_r; τ, r) at the last state (one HVP per solver
/// iteration). It is the exact hypergradient of the proximal inner problem
/// φ*(θ) = argmin_φ L(φ) + λ/2‖φ − θ‖² when φ_r = φ* and H is the Hessian of
/// L; biased otherwise. If the inner loss you wrote already contains the
/// proximal term (so its Hessian is H + λI), set
/// [`Implicit::proximal_in_loss`] and λI is subtracted.
///
/// The solver's iterations and relative residual are reported in
/// `Stats::solver`; a solve that does not reach its tolerance is an error
/// ([`BloError::NotConverged`]), never a zero or partial vector.
#[derive(Clone, Debug)]
pub struct Implicit {
    lambda: f64,
    solver: ImplicitSolver,
    proximal_in_loss: bool,
}

impl Implicit {
    /// λ > 0, CG with tol 1e-10 and at most 200 iterations.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if λ is not finite and positive.
    pub fn new(lambda: f64) -> Result<Self, BloError> {
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(BloError::invalid(
                "lambda",
                lambda,
                "must be finite and > 0",
            ));
        }
        Ok(Implicit {
            lambda,
            solver: ImplicitSolver::Cg(CgParams {
                tol: 1e-10,
                max_iter: 200,
            }),
            proximal_in_loss: false,
        })
    }

    /// Uses `solver` instead.
    pub fn with_solver(mut self, solver: ImplicitSolver) -> Self {
        self.solver = solver;
        self
    }

    /// Whether L_in already contains λ/2‖φ − θ‖² (then H − λI is used).
    pub fn proximal_in_loss(mut self, yes: bool) -> Self {
        self.proximal_in_loss = yes;
        self
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
        let mut sw = Sweep::new(problem, task, theta, Target::Outer)?;
        let r = sw.r;
        // The rollout to φ_r and the turn, φ_r kept in buffer 0.
        let [init, advance, turn, free] = first_order_actions(r);
        sw.run(&[init, advance, turn])?;
        let phi_r = sw.state(0).clone();
        sw.run(&[free])?;
        let u = sw.cot.as_ref().expect("forward sweep ran").phi.clone();
        let shapes: Vec<_> = u.iter().map(|t| t.shape()).collect();
        let b: Vec<F> = u.iter().flat_map(|t| t.data().iter().copied()).collect();
        let lam = F::from_f64(self.lambda);
        let shift = if self.proximal_in_loss {
            lam
        } else {
            F::zero()
        };
        let inv = F::from_f64(1.0 / self.lambda);
        let ws = RefCell::new(&mut sw.bufs.ws);
        let failure: RefCell<Option<BloError>> = RefCell::new(None);
        let count = std::cell::Cell::new(0usize);
        // A v = v + (H v − shift·v)/λ, one HVP per application.
        let op = FnOp::new(b.len(), |x: &[F], out: &mut [F]| {
            count.set(count.get() + 1);
            let mut at = 0;
            let v: Vec<Tensor<F>> = shapes
                .iter()
                .map(|&s| {
                    let n = s.numel();
                    let t = Tensor::new(s, x[at..at + n].to_vec());
                    at += n;
                    t
                })
                .collect();
            let res = ws
                .borrow_mut()
                .inner_hvp(problem, task, r, theta, &phi_r.phi, &v, None);
            match res {
                Ok(h) => {
                    let hv = h.tangent_phi.iter().flat_map(|t| t.data().iter().copied());
                    for ((o, &xi), hvi) in out.iter_mut().zip(x).zip(hv) {
                        *o = xi + (hvi - shift * xi) * inv;
                    }
                }
                Err(e) => {
                    failure.borrow_mut().get_or_insert(e);
                    out.iter_mut().for_each(|o| *o = F::from_f64(f64::NAN));
                }
            }
        });
        let solved = match self.solver {
            ImplicitSolver::Cg(p) => cg(&op, &b, p)
                .map_err(|e| match e {
                    CgError::NotConverged {
                        iterations,
                        residual,
                        ..
                    } => BloError::NotConverged {
                        solver: "implicit: conjugate gradient",
                        iterations,
                        residual,
                    },
                    e => BloError::SolverFailed {
                        solver: "implicit: conjugate gradient",
                        reason: e.to_string(),
                    },
                })
                .map(|(x, info)| (x, info.iterations, info.residual)),
            ImplicitSolver::Neumann(p) => neumann(&op, &b, p)
                .map_err(|e: NeumannError| BloError::SolverFailed {
                    solver: "implicit: Neumann series",
                    reason: e.to_string(),
                })
                .map(|(x, info)| (x, info.terms, info.last_term)),
        };
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        let (x, iterations, residual) = solved?;
        sw.stats.hvps += count.get();
        sw.stats.solver = Some(SolverReport {
            iterations,
            residual,
        });
        let mut at = 0;
        let v: Vec<Tensor<F>> = shapes
            .iter()
            .map(|&s| {
                let n = s.numel();
                let t = Tensor::new(s, x[at..at + n].to_vec());
                at += n;
                t
            })
            .collect();
        sw.cot.as_mut().expect("forward sweep ran").phi = v;
        Ok(sw.finish())
    }

    fn name(&self) -> String {
        format!("implicit(λ={})", self.lambda)
    }
}
