//! Iterative solvers on a [`LinOp`]: conjugate gradient and a truncated Neumann
//! series for A⁻¹b, and power iteration for the largest-magnitude eigenvalue.
//!
//! Each has `Params` (with `Default`), an `Info` it returns, and an `Error`
//! carrying the evidence (residual, iteration, curvature). None of them ever
//! hands back a silent zero vector.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::Float;
use thiserror::Error;

use crate::linop::LinOp;

fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    let mut s = F::zero();
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

fn norm<F: Float>(a: &[F]) -> f64 {
    dot(a, a).to_f64().sqrt()
}

#[track_caller]
fn check_rhs<F: Float>(what: &str, a: &impl LinOp<F>, b: &[F]) {
    assert!(
        b.len() == a.dim(),
        "{what}: operator of dimension {} but right-hand side of length {}",
        a.dim(),
        b.len()
    );
}

/// Parameters of [`cg`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct CgParams {
    /// Stop when the relative residual ‖b − Ax‖/‖b‖ ≤ `tol`.
    pub tol: f64,
    /// At most this many iterations (operator applications).
    pub max_iter: usize,
}

impl Default for CgParams {
    /// `tol = 1e-10`, `max_iter = 1000`.
    fn default() -> Self {
        CgParams {
            tol: 1e-10,
            max_iter: 1000,
        }
    }
}

/// What [`cg`] did.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct CgInfo {
    /// Iterations run (each one operator application).
    pub iterations: usize,
    /// Final relative residual ‖r‖/‖b‖ (of the recurrence residual r).
    pub residual: f64,
}

/// Why [`cg`] failed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum CgError<F: Float> {
    /// The residual did not reach `tol` within `max_iter` iterations. The last
    /// iterate is returned for callers that want a truncated solve on purpose.
    #[error("CG did not converge: relative residual {residual:.3e} after {iterations} iterations")]
    NotConverged {
        /// Iterations run.
        iterations: usize,
        /// Relative residual ‖r‖/‖b‖ at the end.
        residual: f64,
        /// The last iterate.
        x: Vec<F>,
    },
    /// pᵀAp ≤ 0 for a search direction p: the operator is not positive definite
    /// (CG's step would be undefined or head uphill).
    #[error("CG met non-positive curvature pᵀAp/pᵀp = {curvature:.3e} at iteration {iteration}")]
    NegativeCurvature {
        /// The iteration (0-based) at which it happened.
        iteration: usize,
        /// The Rayleigh quotient pᵀAp/pᵀp of the offending direction.
        curvature: f64,
    },
    /// A NaN or infinity appeared (in the operator's output or the recurrences).
    #[error("CG produced a non-finite value at iteration {iteration}")]
    NonFinite {
        /// The iteration (0-based) at which it happened.
        iteration: usize,
    },
}

/// Solves A·x = b for a symmetric positive-definite A by conjugate gradient,
/// starting from x₀ = 0. Each iteration costs one `apply` (one HVP for a
/// [`crate::Hessian`]) and O(n) vector work; memory is four n-vectors.
///
/// ```
/// use hvp::{cg, CgParams, DenseOp};
/// // [[4, 1], [1, 3]] x = [1, 2]  ⇒  x = [1/11, 7/11]
/// let a = DenseOp::new(2, vec![4.0_f64, 1.0, 1.0, 3.0]);
/// let (x, info) = cg(&a, &[1.0, 2.0], CgParams::default()).unwrap();
/// assert!((x[0] - 1.0 / 11.0).abs() < 1e-12 && (x[1] - 7.0 / 11.0).abs() < 1e-12);
/// assert!(info.iterations <= 2); // exact in n steps
/// ```
///
/// # Errors
/// [`CgError::NotConverged`] (with the last iterate), [`CgError::NegativeCurvature`]
/// if pᵀAp ≤ 0, [`CgError::NonFinite`].
///
/// # Panics
/// If `b.len() != a.dim()`.
#[track_caller]
pub fn cg<F: Float>(
    a: &impl LinOp<F>,
    b: &[F],
    params: CgParams,
) -> Result<(Vec<F>, CgInfo), CgError<F>> {
    check_rhs("cg", a, b);
    let n = b.len();
    let mut x = vec![F::zero(); n];
    let b_norm = norm(b);
    if !b_norm.is_finite() {
        return Err(CgError::NonFinite { iteration: 0 });
    }
    if b_norm == 0.0 {
        // A⁻¹0 = 0 exactly: not a silent failure.
        return Ok((
            x,
            CgInfo {
                iterations: 0,
                residual: 0.0,
            },
        ));
    }
    let mut r = b.to_vec();
    let mut p = b.to_vec();
    let mut ap = vec![F::zero(); n];
    let mut rr = dot(&r, &r);
    let mut residual = 1.0;
    for k in 0..params.max_iter {
        if residual <= params.tol {
            return Ok((
                x,
                CgInfo {
                    iterations: k,
                    residual,
                },
            ));
        }
        a.apply(&p, &mut ap);
        let pap = dot(&p, &ap);
        if !pap.is_finite() {
            return Err(CgError::NonFinite { iteration: k });
        }
        if pap <= F::zero() {
            return Err(CgError::NegativeCurvature {
                iteration: k,
                curvature: pap.to_f64() / dot(&p, &p).to_f64(),
            });
        }
        let alpha = rr / pap;
        for i in 0..n {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        let rr_new = dot(&r, &r);
        if !rr_new.is_finite() {
            return Err(CgError::NonFinite { iteration: k });
        }
        let beta = rr_new / rr;
        rr = rr_new;
        for i in 0..n {
            p[i] = r[i] + beta * p[i];
        }
        residual = rr.to_f64().sqrt() / b_norm;
    }
    if residual <= params.tol {
        Ok((
            x,
            CgInfo {
                iterations: params.max_iter,
                residual,
            },
        ))
    } else {
        Err(CgError::NotConverged {
            iterations: params.max_iter,
            residual,
            x,
        })
    }
}

/// Parameters of [`neumann`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct NeumannParams {
    /// The step α of the series; it converges iff the spectral radius of
    /// I − αA is below 1, i.e. for SPD A iff 0 < α < 2/λ_max(A)
    /// (see [`power_iteration`]).
    pub alpha: f64,
    /// k: at most this many operator applications in the series (the sum then
    /// has k + 1 terms); one more application checks the result.
    pub terms: usize,
    /// The required relative residual ‖b − Ax‖/‖b‖ of the result. The series
    /// stops early once its recurrence residual (the next term's norm, see
    /// [`neumann`]) is ≤ `tol`; the result is accepted only if the *true*
    /// residual, recomputed by one extra application, is ≤ `tol` too.
    /// `tol = 0` asks for an exact solve, so in practice it runs all k terms
    /// and returns the truncated sum inside [`NeumannError::NotConverged`]:
    /// the way to ask for a truncated series on purpose.
    pub tol: f64,
}

impl Default for NeumannParams {
    /// `alpha = 0.01`, `terms = 1000`, `tol = 1e-6`.
    fn default() -> Self {
        NeumannParams {
            alpha: 0.01,
            terms: 1000,
            tol: 1e-6,
        }
    }
}

/// What [`neumann`] did.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct NeumannInfo {
    /// Operator applications made in the series (terms summed minus one); the
    /// check of the true residual made one more.
    pub terms: usize,
    /// The true relative residual ‖b − Ax‖/‖b‖ of the returned x, recomputed
    /// with one operator application after the series (0 when b = 0).
    pub residual: f64,
    /// ‖t_k‖/‖b‖ for the last term summed, t_k = (I − αA)^k b: how much the
    /// series still moved at the end (a truncation indicator, not a residual).
    pub last_term: f64,
}

/// Why [`neumann`] failed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum NeumannError<F: Float> {
    /// The true relative residual ‖b − Ax‖/‖b‖ is above `tol` after the series
    /// (too few terms for the spectrum, or rounding). The truncated sum is
    /// returned for callers that want a truncated series on purpose.
    #[error(
        "Neumann series did not converge: relative residual ‖b − Ax‖/‖b‖ = {residual:.3e} > tol {tol:.3e} after {terms} terms"
    )]
    NotConverged {
        /// Operator applications in the series.
        terms: usize,
        /// The true relative residual of `x`.
        residual: f64,
        /// The tolerance asked for.
        tol: f64,
        /// The truncated sum x_k.
        x: Vec<F>,
    },
    /// A term grew beyond ‖b‖. For a symmetric A every term's norm is ≤ ‖b‖ iff
    /// the spectral radius of I − αA is ≤ 1, so growth proves the series diverges
    /// (α too large, or A has negative eigenvalues).
    #[error("Neumann series diverges: term {term} has norm {growth:.3e} × ‖b‖")]
    Diverging {
        /// The index j of the term t_j that grew.
        term: usize,
        /// ‖t_j‖/‖b‖ (> 1).
        growth: f64,
    },
    /// A NaN or infinity appeared.
    #[error("Neumann series produced a non-finite value at term {term}")]
    NonFinite {
        /// The index of the term.
        term: usize,
    },
}

/// Approximates A⁻¹b by the truncated Neumann series
/// x_k = α Σ_{j=0}^{k} t_j with t_j = (I − αA)^j b, which needs only k operator
/// applications and three extra n-vectors. It converges to A⁻¹b as k → ∞ iff
/// ρ(I − αA) < 1; the truncation error is (I − αA)^{k+1} A⁻¹ b.
///
/// Since αA t_j = t_j − t_{j+1}, the residual of x_k is b − A x_k = t_{k+1}:
/// the series stops as soon as a new term has ‖t_{k+1}‖ ≤ `tol`·‖b‖ (that term
/// is still added). That identity holds in exact arithmetic only, so the
/// returned residual is the true one, ‖b − A x‖/‖b‖ from one more operator
/// application, and a result whose true residual is above `tol` is an error.
///
/// ```
/// use hvp::{neumann, DenseOp, NeumannParams};
/// // A = diag(1, 2), α = 0.5: (I − αA) = diag(0.5, 0) so the series converges fast.
/// let a = DenseOp::new(2, vec![1.0_f64, 0.0, 0.0, 2.0]);
/// let p = NeumannParams { alpha: 0.5, terms: 60, tol: 1e-12 };
/// let (x, info) = neumann(&a, &[1.0, 1.0], p).unwrap();
/// assert!((x[0] - 1.0).abs() < 1e-12 && (x[1] - 0.5).abs() < 1e-12);
/// assert!(info.residual <= 1e-12 && info.terms < 60);
/// // Three terms are not enough: the error carries the true residual
/// // (‖t_4‖/‖b‖ = 0.5⁴/√2) and the truncated sum.
/// let few = NeumannParams { alpha: 0.5, terms: 3, tol: 1e-12 };
/// match neumann(&a, &[1.0, 1.0], few) {
///     Err(hvp::NeumannError::NotConverged { terms, residual, .. }) => {
///         assert_eq!(terms, 3);
///         assert!((residual - 0.0625 / 2f64.sqrt()).abs() < 1e-15);
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
///
/// # Errors
/// [`NeumannError::NotConverged`] (with the true residual and the truncated
/// sum) if ‖b − Ax‖/‖b‖ > `tol` at the end, [`NeumannError::Diverging`] if a
/// term's norm exceeds ‖b‖ (by a relative margin of 1e-6),
/// [`NeumannError::NonFinite`].
///
/// # Panics
/// If `b.len() != a.dim()`.
#[track_caller]
pub fn neumann<F: Float>(
    a: &impl LinOp<F>,
    b: &[F],
    params: NeumannParams,
) -> Result<(Vec<F>, NeumannInfo), NeumannError<F>> {
    check_rhs("neumann", a, b);
    let n = b.len();
    let alpha = F::from_f64(params.alpha);
    let b_norm = norm(b);
    if !b_norm.is_finite() {
        return Err(NeumannError::NonFinite { term: 0 });
    }
    if b_norm == 0.0 {
        // A⁻¹0 = 0 exactly: not a silent failure.
        let info = NeumannInfo {
            terms: 0,
            residual: 0.0,
            last_term: 0.0,
        };
        return Ok((vec![F::zero(); n], info));
    }
    let mut term = b.to_vec();
    let mut sum = b.to_vec();
    let mut at = vec![F::zero(); n];
    let mut terms = 0;
    let mut last_term = 1.0;
    for j in 1..=params.terms {
        a.apply(&term, &mut at);
        for i in 0..n {
            term[i] -= alpha * at[i];
            sum[i] += term[i];
        }
        // ‖t_j‖/‖b‖: the recurrence residual of the sum before t_j was added.
        let rel = norm(&term) / b_norm;
        terms = j;
        last_term = rel;
        if !rel.is_finite() {
            return Err(NeumannError::NonFinite { term: j });
        }
        if rel > 1.0 + 1e-6 {
            return Err(NeumannError::Diverging {
                term: j,
                growth: rel,
            });
        }
        if rel <= params.tol {
            break;
        }
    }
    for s in &mut sum {
        *s *= alpha;
    }
    // The true residual ‖b − A x‖/‖b‖ (one more application; `term` is reused).
    a.apply(&sum, &mut at);
    for i in 0..n {
        term[i] = b[i] - at[i];
    }
    let residual = norm(&term) / b_norm;
    if !residual.is_finite() {
        return Err(NeumannError::NonFinite { term: terms + 1 });
    }
    if residual <= params.tol {
        let info = NeumannInfo {
            terms,
            residual,
            last_term,
        };
        Ok((sum, info))
    } else {
        Err(NeumannError::NotConverged {
            terms,
            residual,
            tol: params.tol,
            x: sum,
        })
    }
}

/// Parameters of [`power_iteration`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct PowerParams {
    /// Stop when ‖Av − λv‖ ≤ `tol`·|λ| for the unit iterate v.
    pub tol: f64,
    /// At most this many operator applications.
    pub max_iter: usize,
    /// Seed of the random start vector (ChaCha8), for determinism.
    pub seed: u64,
}

impl Default for PowerParams {
    /// `tol = 1e-6`, `max_iter = 1000`, `seed = 0`.
    fn default() -> Self {
        PowerParams {
            tol: 1e-6,
            max_iter: 1000,
            seed: 0,
        }
    }
}

/// What [`power_iteration`] found.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct PowerInfo {
    /// The Rayleigh quotient λ = vᵀAv of the final unit iterate: the eigenvalue
    /// of largest magnitude (it may be negative).
    pub eigenvalue: f64,
    /// Operator applications made.
    pub iterations: usize,
    /// ‖Av − λv‖ at the end (absolute).
    pub residual: f64,
}

impl PowerInfo {
    /// 2/|λ_max|: gradient descent x ← x − α∇f on a function whose Hessian has
    /// eigenvalues in (0, λ_max] is stable (contracts along every eigenvector, as
    /// |1 − αλ| < 1) iff 0 < α < 2/λ_max, and the Neumann series with step α
    /// converges under the same condition. Use a step safely below this bound
    /// (e.g. `0.5 * info.stability_limit()`), since λ_max is estimated.
    pub fn stability_limit(&self) -> f64 {
        2.0 / self.eigenvalue.abs()
    }
}

/// Why [`power_iteration`] failed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum PowerError {
    /// The residual did not reach `tol`·|λ|. This happens when the two
    /// largest-magnitude eigenvalues are close (or equal and opposite).
    #[error(
        "power iteration did not converge: λ ≈ {eigenvalue:.6e}, residual {residual:.3e} after {iterations} iterations"
    )]
    NotConverged {
        /// Iterations run.
        iterations: usize,
        /// The last Rayleigh quotient.
        eigenvalue: f64,
        /// ‖Av − λv‖ at the end.
        residual: f64,
    },
    /// A NaN or infinity appeared.
    #[error("power iteration produced a non-finite value at iteration {iteration}")]
    NonFinite {
        /// The iteration (0-based) at which it happened.
        iteration: usize,
    },
}

/// The eigenvalue of largest magnitude of a symmetric operator and its unit
/// eigenvector, by power iteration from a seeded random start. Each iteration
/// is one `apply` (one HVP for a [`crate::Hessian`]).
///
/// Typical use: estimate λ_max of the inner Hessian once, then pick an inner
/// step size α < 2/λ_max ([`PowerInfo::stability_limit`]).
///
/// ```
/// use hvp::{power_iteration, DenseOp, PowerParams};
/// let a = DenseOp::new(3, vec![1.0_f64, 0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 2.0]);
/// let (v, info) = power_iteration(&a, PowerParams::default()).unwrap();
/// assert!((info.eigenvalue + 5.0).abs() < 1e-6); // largest magnitude, negative
/// assert!(v[1].abs() > 0.999);
/// ```
///
/// # Errors
/// [`PowerError::NotConverged`], [`PowerError::NonFinite`].
pub fn power_iteration<F: Float>(
    a: &impl LinOp<F>,
    params: PowerParams,
) -> Result<(Vec<F>, PowerInfo), PowerError> {
    let n = a.dim();
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut v: Vec<F> = (0..n)
        .map(|_| F::from_f64(rng.gen_range(-1.0..1.0)))
        .collect();
    let v_norm = F::from_f64(norm(&v));
    v.iter_mut().for_each(|x| *x /= v_norm);
    let mut av = vec![F::zero(); n];
    let mut eigenvalue = 0.0;
    let mut residual = f64::INFINITY;
    for k in 0..params.max_iter {
        a.apply(&v, &mut av);
        let lambda = dot(&v, &av);
        let mut r2 = F::zero();
        for i in 0..n {
            let d = av[i] - lambda * v[i];
            r2 += d * d;
        }
        eigenvalue = lambda.to_f64();
        residual = r2.to_f64().sqrt();
        if !eigenvalue.is_finite() || !residual.is_finite() {
            return Err(PowerError::NonFinite { iteration: k });
        }
        let info = PowerInfo {
            eigenvalue,
            iterations: k + 1,
            residual,
        };
        if residual <= params.tol * eigenvalue.abs() {
            return Ok((v, info));
        }
        let av_norm = norm(&av);
        if av_norm == 0.0 {
            // A random v with Av = 0 exactly: A is zero (almost surely); λ = 0 is exact.
            return Ok((v, info));
        }
        let s = F::from_f64(av_norm);
        for i in 0..n {
            v[i] = av[i] / s;
        }
    }
    Err(PowerError::NotConverged {
        iterations: params.max_iter,
        eigenvalue,
        residual,
    })
}
