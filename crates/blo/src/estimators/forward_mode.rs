//! Forward-mode hypergradients (Franceschi et al. 2017): propagate the
//! tangents Z_j = dφ_j/dθ alongside the inner loop, one column per θ entry.

use rand_chacha::ChaCha8Rng;
use tape::{Dual, Float, Tensor};

use crate::engine::step::{meta_sgd_steps, tensors_finite, update, Adjoints, InnerWorkspace};
use crate::error::BloError;
use crate::estimators::{Estimate, Estimator, Stats};
use crate::problem::{InnerOptimizer, Problem};

/// The hypergradient by forward mode: for each θ entry c (tangent θ̇ = e_c),
/// Ż_0 = (∂Φ_0/∂θ) e_c and, per step, one forward-over-reverse pass with
/// tangents (θ̇, Ż) gives ṫ = H Ż + (∂²L_in/∂φ∂θ) θ̇, then
///
/// - SGD: Ż ← Ż − α ṫ;
/// - Meta-SGD: Ż ← Ż − α ⊙ ṫ − α̇ ⊙ ∇_φL_in (α̇ the part of e_c on the steps);
/// - momentum: V̇ ← β V̇ + ṫ, Ż ← Ż − α V̇;
/// - a rule R: (Ż, ė) ← the JVP of R at (θ, φ, e, g) along (θ̇, Ż, ė, ṫ), one
///   forward pass on dual numbers (docs/math.md §12);
///
/// and finally ∂F/∂θ_c = ∇_θ L_out · e_c + ∇_φ L_out · Ż_r. No reverse sweep
/// over the trajectory, so no state is stored, but the cost is n·r HVP passes
/// for n = dim θ: meant for a handful of hyperparameters. Mathematically equal
/// to [`crate::Exact`] (not bitwise: the operations differ).
#[derive(Clone, Debug, Default)]
pub struct ForwardMode;

impl ForwardMode {
    /// The forward-mode estimator.
    pub fn new() -> Self {
        ForwardMode
    }
}

impl<F: Float, P: Problem<F>> Estimator<F, P> for ForwardMode {
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        let inner = problem.inner_loop();
        inner.validate()?;
        let mut ws = InnerWorkspace::new();
        let mut stats = Stats::default();
        let mut s = ws.initial_state(problem, task, theta)?;
        // Column c: θ̇ = e_c over the flattened θ.
        let mut units = Vec::new();
        for (ti, t) in theta.iter().enumerate() {
            for k in 0..t.numel() {
                let mut e: Vec<Tensor<F>> =
                    theta.iter().map(|x| Tensor::zeros(x.shape())).collect();
                e[ti].data_mut()[k] = F::one();
                units.push(e);
            }
        }
        let mut z: Vec<Vec<Tensor<F>>> = units
            .iter()
            .map(|e| ws.initial_state_jvp(problem, task, theta, e))
            .collect();
        stats.hvps += units.len();
        // The tangents of the extra state (ė_0 = 0: e_0 does not depend on θ).
        let mut zv: Vec<Vec<Tensor<F>>> = (0..units.len())
            .map(|_| s.extra.iter().map(|t| Tensor::zeros(t.shape())).collect())
            .collect();
        let bytes = s.bytes();
        // The state and one tangent state (Ż, ė) per column.
        stats.states_peak = 1 + units.len();
        stats.state_bytes_peak = bytes * stats.states_peak;
        for j in 1..=inner.steps {
            for c in 0..units.len() {
                if let InnerOptimizer::Rule(rule) = &inner.optimizer {
                    let (zc, zvc) = (&mut z[c], &mut zv[c]);
                    ws.rule_tangent_step(problem, task, rule, j, theta, &s, &units[c], zc, zvc)?;
                    stats.hvps += 1;
                    if !tensors_finite(z[c].iter().chain(&zv[c])) {
                        return Err(crate::engine::step::non_finite("forward tangent", j));
                    }
                    continue;
                }
                // H Ż + (∂²L/∂φ∂θ) θ̇ in `.d` and ∇_φL in `.v`, read in place
                // from the tape (a structural zero reads as zeros).
                let pass = ws.hvp_pass(problem, task, j, theta, &s.phi, &z[c], Some(&units[c]))?;
                let nt = theta.len();
                let on_phi: Adjoints<'_, Dual<F>> =
                    (nt..nt + s.phi.len()).map(|i| pass.adjoint(i)).collect();
                let zero = Dual::new(F::zero(), F::zero());
                stats.hvps += 1;
                match &inner.optimizer {
                    InnerOptimizer::Sgd { lr } => {
                        let a = F::from_f64(*lr);
                        for (zi, o) in z[c].iter_mut().zip(&on_phi) {
                            update(zi.data_mut(), o.as_deref(), zero, |x, t| *x -= a * t.d);
                        }
                    }
                    InnerOptimizer::MetaSgd { lr_index } => {
                        for (i, (zi, o)) in z[c].iter_mut().zip(&on_phi).enumerate() {
                            let alpha = meta_sgd_steps(theta, lr_index, i, zi);
                            let adot = &units[c][lr_index[i]];
                            let o = o.as_deref();
                            for k in 0..zi.numel() {
                                let (t, g) = o.map_or((zero.d, zero.v), |o| (o[k].d, o[k].v));
                                let d = alpha.data()[k] * t + adot.data()[k] * g;
                                zi.data_mut()[k] -= d;
                            }
                        }
                    }
                    InnerOptimizer::Momentum { lr, beta } => {
                        let (a, b) = (F::from_f64(*lr), F::from_f64(*beta));
                        for ((zi, vi), o) in z[c].iter_mut().zip(&mut zv[c]).zip(&on_phi) {
                            let mut vi = vi.data_mut().iter_mut();
                            update(zi.data_mut(), o.as_deref(), zero, |x, t| {
                                let v = vi.next().expect("V̇ has Ż's shape");
                                *v = b * *v + t.d;
                                *x -= a * *v;
                            });
                        }
                    }
                    InnerOptimizer::Rule(_) => unreachable!("a rule's tangent step is taken above"),
                }
                if !tensors_finite(&z[c]) {
                    return Err(crate::engine::step::non_finite("forward tangent", j));
                }
            }
            ws.step_in_place(problem, task, j, theta, &mut s)?;
            stats.forward_steps += 1;
            stats.gradients += 1;
        }
        let og = ws.outer_grad(problem, task, theta, &s.phi)?;
        stats.gradients += 1;
        let mut grad = og.theta;
        let mut c = 0;
        for g in grad.iter_mut() {
            for k in 0..g.numel() {
                let mut acc = F::zero();
                for (u, zi) in og.phi.iter().zip(&z[c]) {
                    for (&a, &b) in u.data().iter().zip(zi.data()) {
                        acc += a * b;
                    }
                }
                g.data_mut()[k] += acc;
                c += 1;
            }
        }
        Ok(Estimate {
            grad,
            outer_loss: og.loss,
            stats,
        })
    }

    fn name(&self) -> String {
        "forward-mode".into()
    }
}
