//! Benchmark bilevel problems of benchopt's `benchmark_bilevel` (Moreau et
//! al., NeurIPS 2022), generated deterministically from a seed, for the
//! solvers of [`crate::solvers`] and the unrolled estimators alike:
//!
//! | problem | θ | φ | closed form |
//! |---|---|---|---|
//! | [`Quadratic`] | x ∈ Rⁿ | y ∈ Rᵖ | φ*(θ), h(θ), ∇h(θ), θ* |
//! | [`L2Logreg`] | one log-strength per feature | logistic weights | no ([`reference()`]) |
//! | [`HyperCleaning`] | one weight logit per training sample | softmax weights | no ([`reference()`]) |
//!
//! They live in `blo` (not `models`) so that `blo`'s own tests can use them;
//! `models` does not depend on `blo`.
//!
//! Each implements [`Problem<f64>`] with task `()`. The inner loss at index j
//! uses minibatch (j − 1) mod b of b equal batches (b = 1: the full batch), so
//! a solver's drawn index j picks the batch. Every problem holds an
//! [`crate::InnerLoop`] for the unrolled estimators (default: r SGD steps).

mod cleaning;
mod logreg;
mod quadratic;

pub use cleaning::HyperCleaning;
pub use logreg::L2Logreg;
pub use quadratic::Quadratic;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tape::{Real, Tape, Tensor, Var};

use crate::engine::objective::OuterObjective;
use crate::error::BloError;
use crate::problem::Problem;

/// A seeded generator of the problems' data (ChaCha8: the same numbers on
/// every platform).
pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` standard normal draws.
pub(crate) fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// A vector variable as a column `[n, 1]`.
pub(crate) fn col<'t, T: Real>(v: Var<'t, T>) -> Var<'t, T> {
    let n = v.shape().numel();
    v.reshape([n, 1])
}

/// Solves S x = b for a symmetric positive definite S (`n × n`, row-major)
/// by Cholesky, in f64.
///
/// # Errors
/// [`BloError::SolverFailed`] if S is not positive definite.
pub fn spd_solve(s: &[f64], n: usize, b: &[f64]) -> Result<Vec<f64>, BloError> {
    assert_eq!(s.len(), n * n, "spd_solve: {} entries for {n}×{n}", s.len());
    assert_eq!(
        b.len(),
        n,
        "spd_solve: right-hand side of {} for {n}×{n}",
        b.len()
    );
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = s[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum.is_nan() || sum <= 0.0 {
                    return Err(BloError::SolverFailed {
                        solver: "spd_solve (Cholesky)",
                        reason: format!("pivot {i} = {sum:e}: the matrix is not positive definite"),
                    });
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut sum = b[i];
        for k in 0..i {
            sum -= l[i * n + k] * y[k];
        }
        y[i] = sum / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut sum = y[i];
        for k in i + 1..n {
            sum -= l[k * n + i] * x[k];
        }
        x[i] = sum / l[i * n + i];
    }
    Ok(x)
}

/// The mean inner loss (1/r) Σ_{j=1..r} L_in(θ, φ; j) over the problem's r
/// indices (its minibatches): the inner objective whose minimiser defines
/// h(θ) in [`reference`]. Inputs θ₁..θ_a, φ₁..φ_b (or φ only, θ fixed).
struct MeanInner<'a, P> {
    problem: &'a P,
    theta: Option<&'a [Tensor<f64>]>,
    n_theta: usize,
}

impl<P: Problem<f64, Task = ()>> hvp::Objective<f64> for MeanInner<'_, P> {
    fn eval<'t, T: Real<Base = f64>>(&self, tape: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
        let (th, ph): (Vec<Var<'t, T>>, &[Var<'t, T>]) = match self.theta {
            Some(t) => (t.iter().map(|t| tape.constant_base(t)).collect(), x),
            None => (x[..self.n_theta].to_vec(), &x[self.n_theta..]),
        };
        let r = self.problem.inner_loop().steps;
        let mut sum = self.problem.inner_loss(tape, &(), 1, &th, ph);
        for j in 2..=r {
            sum = sum + self.problem.inner_loss(tape, &(), j, &th, ph);
        }
        sum * (1.0 / r as f64)
    }
}

/// The reference value function and hypergradient at θ, for problems without
/// a closed form: φ*(θ) by damped Newton on the mean inner loss (dense
/// Hessians through `hvp`, so for small φ), then
/// h = L_out(θ, φ*), ∇h = ∇_θ L_out + M v*, v* = −H⁻¹ ∇_φ L_out.
#[derive(Clone, Debug)]
pub struct Reference {
    /// h(θ) = L_out(θ, φ*(θ)).
    pub value: f64,
    /// ∇h(θ).
    pub grad: Vec<Tensor<f64>>,
    /// φ*(θ).
    pub phi: Vec<Tensor<f64>>,
}

/// [`Reference`] at θ, starting Newton from `phi` (a warm start), until the
/// inner gradient norm is below `tol` (absolute; near 1e-10 for losses of
/// order one is what f64 rounding allows).
///
/// # Errors
/// [`BloError::NotConverged`] after 100 Newton steps; [`BloError::SolverFailed`]
/// if a Hessian is not positive definite.
pub fn reference<P: Problem<f64, Task = ()>>(
    problem: &P,
    theta: &[Tensor<f64>],
    phi: &[Tensor<f64>],
    tol: f64,
) -> Result<Reference, BloError> {
    let mut ws = hvp::Workspace::new();
    let mut phi = phi.to_vec();
    let of_phi = MeanInner {
        problem,
        theta: Some(theta),
        n_theta: 0,
    };
    let n: usize = phi.iter().map(Tensor::numel).sum();
    let mut it = 0;
    loop {
        let (l, g) = ws.value_and_grad(&of_phi, &phi);
        let gf = hvp::flatten(&g);
        let gn = gf.iter().map(|x| x * x).sum::<f64>().sqrt();
        if gn <= tol {
            break;
        }
        if it == 100 {
            return Err(BloError::NotConverged {
                solver: "problems::reference (Newton on the inner problem)",
                iterations: it,
                residual: gn,
            });
        }
        let h = hvp::dense_hessian(&of_phi, &phi);
        let step = spd_solve(h.data(), n, &gf)?;
        // Backtracking on the inner loss while far from φ*; near it (where the
        // loss differences drown in rounding) the full Newton step.
        let x = hvp::flatten(&phi);
        let decrease: f64 = gf.iter().zip(&step).map(|(a, b)| a * b).sum();
        let mut t = 1.0;
        loop {
            let cand: Vec<f64> = x.iter().zip(&step).map(|(a, b)| a - t * b).collect();
            let cand = hvp::unflatten(&cand, &phi);
            if gn < 1e-4 || t < 1e-8 {
                phi = cand;
                break;
            }
            let (lc, _) = ws.value_and_grad(&of_phi, &cand);
            if lc <= l - 1e-4 * t * decrease {
                phi = cand;
                break;
            }
            t *= 0.5;
        }
        it += 1;
    }
    let nt = theta.len();
    let mut x: Vec<Tensor<f64>> = theta.to_vec();
    x.extend(phi.iter().cloned());
    let (value, mut g_theta) = ws.value_and_grad(&OuterObjective::joint(problem, &(), nt), &x);
    let b = hvp::flatten(&g_theta.split_off(nt));
    let h = hvp::dense_hessian(&of_phi, &phi);
    let v: Vec<f64> = spd_solve(h.data(), n, &b)?.iter().map(|x| -x).collect();
    let v = hvp::unflatten(&v, &phi);
    let joint = MeanInner {
        problem,
        theta: None,
        n_theta: nt,
    };
    let m = ws.mixed_hvp(&joint, theta, &phi, &v);
    for (g, mv) in g_theta.iter_mut().zip(&m.h_thetaphi_v) {
        for (a, &b) in g.data_mut().iter_mut().zip(mv.data()) {
            *a += b;
        }
    }
    Ok(Reference {
        value,
        grad: g_theta,
        phi,
    })
}
