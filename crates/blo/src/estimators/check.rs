//! A hypergradient checker: central differences of F(θ) through the whole
//! inner loop against any estimator.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tape::{Float, Tensor};

use crate::engine::step::meta_loss;
use crate::error::BloError;
use crate::estimators::Estimator;
use crate::problem::Problem;

/// What [`check_hypergradient`] compared.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// ‖g − g_fd‖ / max(‖g_fd‖, 1e-12).
    pub rel_err: f64,
    /// max_i |g_i − g_fd,i|.
    pub max_abs_err: f64,
    /// The estimator's hypergradient, flattened over θ's tensors in order.
    pub estimate: Vec<f64>,
    /// The central differences, flattened the same way.
    pub difference: Vec<f64>,
}

/// Compares `estimator`'s hypergradient on one task with central differences
/// of F(θ) = [`meta_loss`] (the whole inner loop re-run per evaluation):
/// g_fd,i = (F(θ + h_i e_i) − F(θ − h_i e_i)) / 2h_i with
/// h_i = ε^{1/3}·max(1, |θ_i|) (ε the machine epsilon of `F`). The estimator
/// gets a `ChaCha8Rng` seeded with 0. Costs 2·dim θ inner loops: for small
/// problems. Use smooth losses (tanh, softplus) where you check: central
/// differences across a kink are meaningless.
///
/// # Errors
/// [`BloError::GradientMismatch`] (with the worst entry) if the relative error
/// exceeds `tol`; any error of the estimator or of the inner loop.
pub fn check_hypergradient<F, P, E>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    estimator: &E,
    tol: f64,
) -> Result<CheckReport, BloError>
where
    F: Float,
    P: Problem<F>,
    E: Estimator<F, P>,
{
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let est = estimator.estimate(problem, task, theta, &mut rng)?;
    let estimate: Vec<f64> = est
        .grad
        .iter()
        .flat_map(|t| t.data().iter().map(|x| x.to_f64()))
        .collect();
    let eps = F::EPSILON.to_f64().cbrt();
    let mut difference = Vec::with_capacity(estimate.len());
    let mut th = theta.to_vec();
    for ti in 0..th.len() {
        for k in 0..th[ti].numel() {
            let x0 = th[ti].data()[k];
            let h = eps * x0.to_f64().abs().max(1.0);
            th[ti].data_mut()[k] = F::from_f64(x0.to_f64() + h);
            let fp = meta_loss(problem, task, &th)?.to_f64();
            th[ti].data_mut()[k] = F::from_f64(x0.to_f64() - h);
            let fm = meta_loss(problem, task, &th)?.to_f64();
            th[ti].data_mut()[k] = x0;
            difference.push((fp - fm) / (2.0 * h));
        }
    }
    let (mut num, mut den, mut worst) = (0.0f64, 0.0f64, (0usize, -1.0f64));
    for (i, (a, b)) in estimate.iter().zip(&difference).enumerate() {
        num += (a - b).powi(2);
        den += b * b;
        if (a - b).abs() > worst.1 {
            worst = (i, (a - b).abs());
        }
    }
    let rel_err = num.sqrt() / den.sqrt().max(1e-12);
    let report = CheckReport {
        rel_err,
        max_abs_err: worst.1.max(0.0),
        estimate,
        difference,
    };
    if rel_err > tol || !rel_err.is_finite() {
        return Err(BloError::GradientMismatch {
            rel_err,
            tol,
            worst_index: worst.0,
            estimate: report.estimate[worst.0],
            difference: report.difference[worst.0],
        });
    }
    Ok(report)
}
