//! The paper's MAML problems as [`blo::Problem`]s: regression episodes (the
//! sinusoid tasks) and N-way K-shot classification with any [`Model`]
//! (docs/math.md §1: φ_0 = θ, L_in on the support set, L_out on the query set;
//! §7 for the few-shot experiments).

use crate::{Episode, Model, RegressionEpisode};
use blo::problem::InnerLoop;
use blo::Problem;
use tape::{Float, Real, Tape, Var};

/// MAML on regression episodes: L_in = MSE on the support set (every inner
/// step uses the whole support set), L_out = MSE on the query set.
#[derive(Clone, Debug)]
pub struct RegressionMaml<M> {
    /// The network.
    pub net: M,
    /// r steps of SGD with step α.
    pub inner: InnerLoop,
}

impl<F: Float, M: Model + Sync> Problem<F> for RegressionMaml<M> {
    type Task = RegressionEpisode<F>;

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _step: usize,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = tape.constant_base(&task.support_x);
        let y = tape.constant_base(&task.support_y);
        self.net.forward(tape, phi, x).mse(y)
    }

    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = tape.constant_base(&task.query_x);
        let y = tape.constant_base(&task.query_y);
        self.net.forward(tape, phi, x).mse(y)
    }
}

/// MAML on classification episodes: softmax cross-entropy on the support set
/// (inner) and on the query set (outer).
///
/// With `proximal = Some(λ)` the inner loss is iMAML's
/// CE_support(φ) + λ/2·‖φ − θ‖², whose Hessian is H + λI (use
/// `blo::Implicit::imaml(λ)?.proximal_in_loss(true)`).
#[derive(Clone, Debug)]
pub struct ClassificationMaml<M> {
    /// The network; its output is `[batch, N]` logits.
    pub net: M,
    /// r steps of SGD with step α.
    pub inner: InnerLoop,
    /// iMAML's proximal weight λ, if any.
    pub proximal: Option<f64>,
}

impl<F: Float, M: Model + Sync> Problem<F> for ClassificationMaml<M> {
    type Task = Episode<F>;

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = tape.constant_base(&task.support_x);
        let ce = self
            .net
            .forward(tape, phi, x)
            .softmax_cross_entropy(&task.support_y);
        match self.proximal {
            None => ce,
            Some(lambda) => {
                let mut prox = (phi[0] - theta[0]).square().sum();
                for (p, t) in phi.iter().zip(theta).skip(1) {
                    prox = prox + (*p - *t).square().sum();
                }
                ce + prox.mul_scalar(0.5 * lambda)
            }
        }
    }

    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = tape.constant_base(&task.query_x);
        self.net
            .forward(tape, phi, x)
            .softmax_cross_entropy(&task.query_y)
    }
}
