//! Lanczos iteration for both extreme eigenvalues of a symmetric operator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tape::Float;
use thiserror::Error;

use crate::linop::LinOp;

/// Parameters of [`lanczos`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct LanczosParams {
    /// Stop when neither extreme Ritz value moved by more than `tol`·(largest
    /// magnitude) in each of the last two iterations.
    pub tol: f64,
    /// At most this many operator applications (the Krylov dimension).
    pub max_iter: usize,
    /// Seed of the random start vector (ChaCha8), for determinism.
    pub seed: u64,
}

impl Default for LanczosParams {
    /// `tol = 1e-8`, `max_iter = 100`, `seed = 0`.
    fn default() -> Self {
        LanczosParams {
            tol: 1e-8,
            max_iter: 100,
            seed: 0,
        }
    }
}

/// What [`lanczos`] found.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct LanczosInfo {
    /// The smallest Ritz value: an upper bound on λ_min(A) (Ritz values lie in
    /// the spectrum's hull).
    pub min: f64,
    /// The largest Ritz value: a lower bound on λ_max(A).
    pub max: f64,
    /// Operator applications made.
    pub iterations: usize,
    /// Whether the Krylov space became invariant (β = 0): the Ritz values are
    /// then exact eigenvalues and `min`/`max` are the extremes of the spectrum
    /// restricted to that space (of all of A, unless the start vector was
    /// orthogonal to some eigenvector — probability zero for a random start).
    pub invariant: bool,
}

impl LanczosInfo {
    /// Whether the operator looks positive definite (`min > 0`). `min` is an
    /// upper bound on λ_min, so `false` is conclusive and `true` is an estimate.
    pub fn positive_definite(&self) -> bool {
        self.min > 0.0
    }

    /// 2/λ_max: the step-size limit for gradient descent (see
    /// [`crate::PowerInfo::stability_limit`]). `max` underestimates λ_max, so
    /// use a step safely below this.
    pub fn stability_limit(&self) -> f64 {
        2.0 / self.max.abs().max(self.min.abs())
    }
}

/// Why [`lanczos`] failed.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum LanczosError {
    /// The extreme Ritz values were still moving after `max_iter` iterations.
    #[error(
        "Lanczos did not converge after {iterations} iterations: Ritz values in [{min:.6e}, {max:.6e}], last change {change:.3e}"
    )]
    NotConverged {
        /// Iterations run.
        iterations: usize,
        /// The smallest Ritz value so far.
        min: f64,
        /// The largest Ritz value so far.
        max: f64,
        /// The last relative change of the extremes.
        change: f64,
    },
    /// A NaN or infinity appeared.
    #[error("Lanczos produced a non-finite value at iteration {iteration}")]
    NonFinite {
        /// The iteration (0-based) at which it happened.
        iteration: usize,
    },
}

/// Both extreme eigenvalues of a symmetric operator by the Lanczos iteration
/// (three-term recurrence, no reorthogonalisation: loss of orthogonality only
/// duplicates converged Ritz values, it does not spoil the extremes). Each
/// iteration is one `apply`; memory is three n-vectors plus the k × 2
/// tridiagonal. The extremes of the tridiagonal matrix are found by Sturm
/// bisection.
///
/// Converges much faster than [`crate::power_iteration`] when the top
/// eigenvalues are close, and also gives λ_min: whether a Hessian is positive
/// definite (so that CG applies) and the largest step α < 2/λ_max.
///
/// ```
/// use hvp::{lanczos, DenseOp, LanczosParams};
/// let a = DenseOp::new(3, vec![2.0_f64, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0]);
/// let info = lanczos(&a, LanczosParams::default()).unwrap();
/// // Eigenvalues 2 − √2, 2, 2 + √2.
/// assert!((info.min - (2.0 - 2f64.sqrt())).abs() < 1e-10);
/// assert!((info.max - (2.0 + 2f64.sqrt())).abs() < 1e-10);
/// ```
///
/// # Errors
/// [`LanczosError::NotConverged`], [`LanczosError::NonFinite`].
pub fn lanczos<F: Float>(
    a: &impl LinOp<F>,
    params: LanczosParams,
) -> Result<LanczosInfo, LanczosError> {
    let n = a.dim();
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut q: Vec<F> = (0..n)
        .map(|_| F::from_f64(rng.gen_range(-1.0..1.0)))
        .collect();
    let qn = F::from_f64(norm(&q));
    q.iter_mut().for_each(|x| *x /= qn);
    let mut q_prev = vec![F::zero(); n];
    let mut w = vec![F::zero(); n];
    // The tridiagonal: alpha on the diagonal, beta[i] between i − 1 and i.
    let mut alpha: Vec<f64> = Vec::new();
    let mut beta: Vec<f64> = vec![0.0];
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut change = f64::INFINITY;
    for j in 0..params.max_iter.min(n) {
        a.apply(&q, &mut w);
        let aj = dot(&q, &w);
        let bj = F::from_f64(beta[j]);
        for i in 0..n {
            w[i] = w[i] - aj * q[i] - bj * q_prev[i];
        }
        let b_next = norm(&w);
        alpha.push(aj.to_f64());
        if !(b_next.is_finite() && alpha[j].is_finite()) {
            return Err(LanczosError::NonFinite { iteration: j });
        }
        let (new_lo, new_hi) = tridiagonal_extremes(&alpha, &beta);
        let scale = new_lo.abs().max(new_hi.abs()).max(f64::MIN_POSITIVE);
        let prev_change = change;
        change = (new_lo - lo).abs().max((new_hi - hi).abs()) / scale;
        (lo, hi) = (new_lo, new_hi);
        let invariant = b_next <= 1e-12 * scale.max(alpha[j].abs());
        let info = LanczosInfo {
            min: lo,
            max: hi,
            iterations: j + 1,
            invariant,
        };
        if invariant || change.max(prev_change) <= params.tol || j + 1 == n {
            return Ok(LanczosInfo {
                invariant: invariant || j + 1 == n,
                ..info
            });
        }
        beta.push(b_next);
        let s = F::from_f64(b_next);
        for i in 0..n {
            q_prev[i] = q[i];
            q[i] = w[i] / s;
        }
    }
    Err(LanczosError::NotConverged {
        iterations: alpha.len(),
        min: lo,
        max: hi,
        change,
    })
}

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

/// The number of eigenvalues below `x` of the symmetric tridiagonal matrix with
/// diagonal `a` and off-diagonal `b[1..]` (Sturm sequence of the LDLᵀ pivots).
fn count_below(a: &[f64], b: &[f64], x: f64) -> usize {
    let mut count = 0;
    let mut d = 1.0;
    for i in 0..a.len() {
        let off = if i == 0 { 0.0 } else { b[i] * b[i] / d };
        d = a[i] - x - off;
        if d == 0.0 {
            d = -f64::EPSILON * (a[i].abs() + x.abs()).max(f64::MIN_POSITIVE);
        }
        if d < 0.0 {
            count += 1;
        }
    }
    count
}

/// (λ_min, λ_max) of the tridiagonal matrix, by bisection inside the
/// Gershgorin interval to full f64 precision.
fn tridiagonal_extremes(a: &[f64], b: &[f64]) -> (f64, f64) {
    let m = a.len();
    let (mut glo, mut ghi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..m {
        let r = if i > 0 { b[i].abs() } else { 0.0 } + if i + 1 < m { b[i + 1].abs() } else { 0.0 };
        glo = glo.min(a[i] - r);
        ghi = ghi.max(a[i] + r);
    }
    let bisect = |target: usize| {
        // The smallest x with count_below(x) ≥ target, i.e. the target-th eigenvalue.
        let (mut lo, mut hi) = (glo, ghi);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if count_below(a, b, mid) >= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        0.5 * (lo + hi)
    };
    (bisect(1), bisect(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sturm_bisection_finds_known_tridiagonal_extremes() {
        // tridiag(−1, 2, −1) of size m has eigenvalues 2 − 2cos(kπ/(m+1)).
        let m = 7;
        let a = vec![2.0; m];
        let mut b = vec![0.0];
        b.extend(std::iter::repeat_n(-1.0, m - 1));
        let (lo, hi) = tridiagonal_extremes(&a, &b);
        let ev = |k: f64| 2.0 - 2.0 * (k * std::f64::consts::PI / (m as f64 + 1.0)).cos();
        assert!((lo - ev(1.0)).abs() < 1e-14, "{lo}");
        assert!((hi - ev(m as f64)).abs() < 1e-14, "{hi}");
        assert_eq!(count_below(&a, &b, 2.0 + 1e-9), 4); // 4 eigenvalues ≤ 2 (k = 1..4)
    }
}
