//! ℓ2-regularisation selection for logistic regression.

use tape::{concat, Constant, Real, Tape, Tensor, Var};

use super::{col, normals, rng};
use crate::error::BloError;
use crate::problem::{InnerLoop, Problem};

/// Selecting one ℓ2 strength per feature of a logistic regression
/// (benchopt `benchmark_bilevel`'s ℓ2-regularised logistic regression), with
/// θ ∈ R^d the log-strengths and φ ∈ R^d the weights:
///
/// ```text
/// g(θ, φ; j) = mean_{i ∈ batch j} log(1 + exp(−y_i x_iᵀφ)) + ½ Σ_k e^{θ_k} φ_k²
/// f(θ, φ)    = mean_{i ∈ validation} log(1 + exp(−y_i x_iᵀφ))
/// ```
///
/// g is strongly convex in φ (modulus min_k e^{θ_k}). The data are generated
/// from a seed: x ~ N(0, I_d); a true weight vector with `informative`
/// nonzero N(0, 4) entries (the rest zero); y = sign(xᵀw + ε), ε ~ N(0, 1).
/// The training set is split into `batches` equal minibatches (batch j − 1
/// mod b at index j). φ_0 = 0, θ_0 = 0 (all strengths 1).
///
/// ```
/// use blo::problems::{reference, L2Logreg};
/// let p = L2Logreg::generate(5, 2, 40, 40, 1, 3)?;
/// let r = reference(&p, &p.theta0(), &[tape::Tensor::zeros(&[5][..])], 1e-12)?;
/// assert!(r.value > 0.0 && r.grad[0].data().iter().all(|g| g.is_finite()));
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Debug)]
pub struct L2Logreg {
    d: usize,
    /// Per batch: −y_i x_i as rows, `[n_b, d]` (shared with the tapes: each
    /// pass reads them in place, [`Tape::constant_shared`]).
    train: Vec<Constant<f64>>,
    /// −y_i x_i on the validation set, `[n_val, d]`.
    val: Constant<f64>,
    /// [1, −1]: the signs of the two columns' means in
    /// [`Problem::inner_loss_gap`].
    gap_signs: Constant<f64>,
    inner: InnerLoop,
}

/// Rows −y_i x_i of `n` generated samples.
fn samples(r: &mut rand_chacha::ChaCha8Rng, n: usize, w: &[f64]) -> Vec<f64> {
    let d = w.len();
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let x = normals(r, d);
        let eps = normals(r, 1)[0];
        let s: f64 = x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + eps;
        let y = if s >= 0.0 { 1.0 } else { -1.0 };
        out.extend(x.iter().map(|xi| -y * xi));
    }
    out
}

impl L2Logreg {
    /// `d` features of which `informative` carry signal, `n_train` training
    /// samples in `batches` minibatches, `n_val` validation samples, from `seed`.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if a size is 0, `informative` > d,
    /// or `batches` does not divide `n_train`.
    pub fn generate(
        d: usize,
        informative: usize,
        n_train: usize,
        n_val: usize,
        batches: usize,
        seed: u64,
    ) -> Result<Self, BloError> {
        if d == 0 || n_train == 0 || n_val == 0 || batches == 0 || informative > d {
            return Err(BloError::invalid(
                "L2Logreg sizes",
                format!("d = {d}, informative = {informative}, n_train = {n_train}, n_val = {n_val}, batches = {batches}"),
                "sizes must be ≥ 1 and informative ≤ d",
            ));
        }
        if !n_train.is_multiple_of(batches) {
            return Err(BloError::invalid(
                "L2Logreg batches",
                batches,
                &format!("must divide n_train = {n_train}"),
            ));
        }
        let mut r = rng(seed);
        let w: Vec<f64> = (0..d)
            .map(|k| {
                if k < informative {
                    2.0 * normals(&mut r, 1)[0]
                } else {
                    0.0
                }
            })
            .collect();
        let train = samples(&mut r, n_train, &w);
        let val = samples(&mut r, n_val, &w);
        let nb = n_train / batches;
        let train = (0..batches)
            .map(|b| {
                Constant::new(Tensor::new(
                    [nb, d],
                    train[b * nb * d..(b + 1) * nb * d].to_vec(),
                ))
            })
            .collect();
        Ok(L2Logreg {
            d,
            train,
            val: Constant::new(Tensor::new([n_val, d], val)),
            gap_signs: Constant::new(Tensor::vector(vec![1.0, -1.0])),
            inner: InnerLoop::sgd(batches.max(50), 0.5)?,
        })
    }

    /// Replaces the inner loop the unrolled estimators run.
    pub fn with_inner_loop(mut self, inner: InnerLoop) -> Self {
        self.inner = inner;
        self
    }

    /// θ_0 = 0.
    pub fn theta0(&self) -> Vec<Tensor<f64>> {
        vec![Tensor::zeros(&[self.d][..])]
    }

    /// The minibatch of inner step `step` (1-based): batch (j − 1) mod b.
    fn batch(&self, step: usize) -> &Constant<f64> {
        &self.train[(step.max(1) - 1) % self.train.len()]
    }

    /// The training minibatches (rows −y_i x_i) and the validation rows.
    pub fn data(&self) -> (Vec<&Tensor<f64>>, &Tensor<f64>) {
        (
            self.train.iter().map(Constant::value).collect(),
            self.val.value(),
        )
    }
}

impl Problem<f64> for L2Logreg {
    type Task = ();

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    /// Mean logistic loss on batch (j − 1) mod b plus ½ Σ e^θ φ².
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        // mean softplus(X·φ) in one node (`Var::mean_softplus_matmul`:
        // its adjoint does not read X again).
        let loss = tape
            .constant_shared(self.batch(step))
            .mean_softplus_matmul(col(phi[0]));
        loss.sum() + (theta[0].exp() * phi[0].square()).sum() * 0.5
    }

    /// g(θ, y) − g(θ, z) from ONE fused node over X·[y z] (the batch is
    /// read once, forward, for both columns' mean losses and their
    /// adjoints Xᵀσ(X·[y z]); `Var::mean_softplus_matmul`), and e^θ
    /// recorded once.
    fn inner_loss_gap<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        step: usize,
        theta: &[Var<'t, T>],
        y: &[Var<'t, T>],
        z: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let batch = tape.constant_shared(self.batch(step));
        let yz = concat(&[col(y[0]), col(z[0])], 1);
        let means = (batch.mean_softplus_matmul(yz) * tape.constant_shared(&self.gap_signs)).sum();
        let e = theta[0].exp();
        let ridge = |y: Var<'t, T>| (e * y.square()).sum() * 0.5;
        means + ridge(y[0]) - ridge(z[0])
    }

    /// Mean logistic loss on the validation set.
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        tape.constant_shared(&self.val)
            .mean_softplus_matmul(col(phi[0]))
            .sum()
    }

    /// φ_0 = 0 (a constant).
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![tape.constant_base(&Tensor::zeros(&[self.d][..]))]
    }
}
