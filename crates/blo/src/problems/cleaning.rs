//! Data hyper-cleaning: per-sample weights on a corrupted training set.

use rand::Rng;
use tape::{Real, Tape, Tensor, Var};

use super::{normals, rng};
use crate::error::BloError;
use crate::problem::{InnerLoop, Problem};

/// Data hyper-cleaning (Franceschi et al. 2017; benchopt `benchmark_bilevel`'s
/// `datacleaning`): learn one weight per training sample so that a
/// multinomial logistic regression trained on the weighted, partly corrupted
/// training set does well on a clean validation set. θ ∈ R^n (weight logits),
/// φ ∈ R^{d×C}:
///
/// ```text
/// g(θ, φ; j) = mean_{i ∈ batch j} σ(θ_i) CE(x_iᵀφ, ỹ_i) + (μ/2) ‖φ‖²
/// f(θ, φ)    = mean_{i ∈ validation} CE(x_iᵀφ, y_i)
/// ```
///
/// with CE the softmax cross-entropy and σ the logistic function. The data
/// are generated from a seed: C Gaussian classes in R^d with means
/// N(0, sep² I), unit noise; each training label is replaced, with
/// probability p (the corruption), by a class drawn uniformly (benchopt's
/// corruption). φ_0 = 0, θ_0 = 0 (every weight σ(0) = ½).
///
/// ```
/// use blo::problems::HyperCleaning;
/// let p = HyperCleaning::generate(4, 3, 30, 30, 0.5, 1, 0)?;
/// assert!(p.corrupted().iter().any(|&c| c));
/// assert!(HyperCleaning::generate(4, 3, 30, 30, 1.5, 1, 0).is_err());
/// # Ok::<(), blo::BloError>(())
/// ```
#[derive(Clone, Debug)]
pub struct HyperCleaning {
    d: usize,
    classes: usize,
    n_train: usize,
    batches: usize,
    train_x: Vec<Tensor<f64>>,
    train_y: Vec<Vec<usize>>,
    val_x: Tensor<f64>,
    val_y: Vec<usize>,
    corrupted: Vec<bool>,
    mu: f64,
    inner: InnerLoop,
}

impl HyperCleaning {
    /// `d` features, `classes` ≥ 2 classes, `n_train` training samples in
    /// `batches` minibatches with corruption probability `p` ∈ [0, 1],
    /// `n_val` clean validation samples, from `seed`. Class separation 1.5,
    /// ridge μ = 1e-2.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if p is outside [0, 1], a size is
    /// 0, classes < 2, or `batches` does not divide `n_train`.
    pub fn generate(
        d: usize,
        classes: usize,
        n_train: usize,
        n_val: usize,
        p: f64,
        batches: usize,
        seed: u64,
    ) -> Result<Self, BloError> {
        if !(0.0..=1.0).contains(&p) {
            return Err(BloError::invalid(
                "HyperCleaning corruption p",
                p,
                "a probability must be in [0, 1]",
            ));
        }
        if d == 0
            || classes < 2
            || n_train == 0
            || n_val == 0
            || batches == 0
            || !n_train.is_multiple_of(batches)
        {
            return Err(BloError::invalid(
                "HyperCleaning sizes",
                format!("d = {d}, classes = {classes}, n_train = {n_train}, n_val = {n_val}, batches = {batches}"),
                "need d, n_train, n_val, batches ≥ 1, classes ≥ 2 and batches dividing n_train",
            ));
        }
        let mut r = rng(seed);
        let sep = 1.5;
        let means: Vec<f64> = normals(&mut r, classes * d)
            .iter()
            .map(|x| sep * x)
            .collect();
        let draw = |r: &mut rand_chacha::ChaCha8Rng, n: usize| {
            let mut x = Vec::with_capacity(n * d);
            let mut y = Vec::with_capacity(n);
            for _ in 0..n {
                let c = r.gen_range(0..classes);
                let noise = normals(r, d);
                x.extend((0..d).map(|k| means[c * d + k] + noise[k]));
                y.push(c);
            }
            (x, y)
        };
        let (tx, ty) = draw(&mut r, n_train);
        let (vx, vy) = draw(&mut r, n_val);
        let mut corrupted = vec![false; n_train];
        let mut noisy = ty.clone();
        for (i, yi) in noisy.iter_mut().enumerate() {
            if r.gen::<f64>() < p {
                *yi = r.gen_range(0..classes);
                corrupted[i] = *yi != ty[i];
            }
        }
        let nb = n_train / batches;
        let train_x = (0..batches)
            .map(|b| Tensor::new([nb, d], tx[b * nb * d..(b + 1) * nb * d].to_vec()))
            .collect();
        let train_y = (0..batches)
            .map(|b| noisy[b * nb..(b + 1) * nb].to_vec())
            .collect();
        Ok(HyperCleaning {
            d,
            classes,
            n_train,
            batches,
            train_x,
            train_y,
            val_x: Tensor::new([n_val, d], vx),
            val_y: vy,
            corrupted,
            mu: 1e-2,
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
        vec![Tensor::zeros(&[self.n_train][..])]
    }

    /// φ's shape `[d, C]`.
    pub fn phi_shape(&self) -> [usize; 2] {
        [self.d, self.classes]
    }

    /// Which training labels the corruption changed.
    pub fn corrupted(&self) -> &[bool] {
        &self.corrupted
    }
}

impl Problem<f64> for HyperCleaning {
    type Task = ();

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    /// Weighted cross-entropy on batch (j − 1) mod b plus (μ/2)‖φ‖².
    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let b = (step.max(1) - 1) % self.batches;
        let nb = self.n_train / self.batches;
        let logits = tape.constant_base(&self.train_x[b]).matmul(phi[0]);
        let logp = logits.log_softmax(1).gather(&self.train_y[b]);
        let w = theta[0].slice(0, b * nb, (b + 1) * nb).sigmoid();
        -(w * logp).mean() + phi[0].square().sum() * (0.5 * self.mu)
    }

    /// Mean cross-entropy on the clean validation set.
    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let logits = tape.constant_base(&self.val_x).matmul(phi[0]);
        -logits.log_softmax(1).gather(&self.val_y).mean()
    }

    /// φ_0 = 0 (a constant).
    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![tape.constant_base(&Tensor::zeros(&self.phi_shape()[..]))]
    }
}
