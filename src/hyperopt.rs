//! Hyperparameter search by hypergradient: per-feature L2 weights of a ridge
//! regression, learned on a train/validation split.
//!
//! Model: y ≈ X w, with w = φ ∈ R^{d×1}. Hyperparameters θ ∈ R^{d×1} give the
//! per-feature weights λ_k = λ_max·σ(θ_k) (bounded, so the inner loop stays
//! stable for every θ: α·(L + λ_max) < 2). Inner loss on the training split
//!
//! L_in(θ, w) = ½·mean((X_tr w − y_tr)²) + ½·Σ_k λ_k w_k²,
//!
//! minimised by r steps of gradient descent from the fixed start w_0 = 0;
//! outer loss: the validation MSE mean((X_val w_r − y_val)²). θ does not enter
//! L_out and w_0 does not depend on θ, so the first-order estimate is exactly
//! zero here: every bit of signal is in the second-order terms (REFERENCE §2,
//! the mixed products M_j), which is why this problem compares the exact,
//! checkpointed, forward-mode, implicit and UFO estimators only.

use blo::problem::InnerLoop;
use blo::Problem;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use tape::{Real, Tape, Tensor, Var};

/// A synthetic regression data set: d features of which the first
/// `informative` carry signal; the rest are noise the L2 weights should shrink.
#[derive(Clone, Debug)]
pub struct RegressionData {
    /// Training inputs `[n_train, d]`.
    pub x_train: Tensor<f64>,
    /// Training targets `[n_train, 1]`.
    pub y_train: Tensor<f64>,
    /// Validation inputs `[n_val, d]`.
    pub x_val: Tensor<f64>,
    /// Validation targets `[n_val, 1]`.
    pub y_val: Tensor<f64>,
    /// Test inputs `[n_test, d]` (never seen by the search).
    pub x_test: Tensor<f64>,
    /// Test targets `[n_test, 1]`.
    pub y_test: Tensor<f64>,
    /// The true weights `[d, 1]`.
    pub w_true: Tensor<f64>,
}

impl RegressionData {
    /// Draws the data set: x ~ N(0, I_d), w_true[k] ~ N(0, 1) for k < `informative`
    /// and 0 otherwise, y = x·w_true + ε with ε ~ N(0, noise²). Seeded.
    pub fn synthetic(d: usize, informative: usize, n: [usize; 3], noise: f64, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let std = Normal::new(0.0, 1.0).expect("unit normal");
        let w: Vec<f64> = (0..d)
            .map(|k| {
                if k < informative {
                    std.sample(&mut rng)
                } else {
                    0.0
                }
            })
            .collect();
        let mut split = |m: usize| {
            let x: Vec<f64> = (0..m * d).map(|_| std.sample(&mut rng)).collect();
            let y: Vec<f64> = (0..m)
                .map(|i| {
                    (0..d).map(|k| x[i * d + k] * w[k]).sum::<f64>() + noise * std.sample(&mut rng)
                })
                .collect();
            (Tensor::new([m, d], x), Tensor::new([m, 1], y))
        };
        let (x_train, y_train) = split(n[0]);
        let (x_val, y_val) = split(n[1]);
        let (x_test, y_test) = split(n[2]);
        RegressionData {
            x_train,
            y_train,
            x_val,
            y_val,
            x_test,
            y_test,
            w_true: Tensor::new([d, 1], w),
        }
    }

    /// Number of features d.
    pub fn dim(&self) -> usize {
        self.x_train.dims()[1]
    }
}

/// Ridge regression with learnable per-feature L2 weights, as a [`Problem`]
/// with a single task (the data set).
#[derive(Clone, Debug)]
pub struct RidgeHyperopt {
    /// The data.
    pub data: RegressionData,
    /// λ_k = `lambda_max`·σ(θ_k).
    pub lambda_max: f64,
    /// r steps of gradient descent with step α.
    pub inner: InnerLoop,
}

impl RidgeHyperopt {
    /// λ_k = λ_max·σ(θ_k) for each feature.
    pub fn lambdas(&self, theta: &Tensor<f64>) -> Vec<f64> {
        theta
            .data()
            .iter()
            .map(|&t| self.lambda_max / (1.0 + (-t).exp()))
            .collect()
    }

    /// Mean squared error of weights `w` on inputs `x` and targets `y`.
    pub fn mse(x: &Tensor<f64>, y: &Tensor<f64>, w: &Tensor<f64>) -> f64 {
        let (m, d) = (x.dims()[0], x.dims()[1]);
        let (xd, wd, yd) = (x.data(), w.data(), y.data());
        (0..m)
            .map(|i| {
                let p: f64 = (0..d).map(|k| xd[i * d + k] * wd[k]).sum();
                (p - yd[i]).powi(2)
            })
            .sum::<f64>()
            / m as f64
    }

    /// The inner solution w_r(θ) by running the r gradient steps directly
    /// (plain arithmetic, no tape): w ← w − α (X_trᵀ(X_tr w − y_tr)/n + λ ⊙ w).
    pub fn inner_solution(&self, theta: &Tensor<f64>) -> Tensor<f64> {
        let lr = match self.inner.optimizer {
            blo::problem::InnerOptimizer::Sgd { lr } => lr,
            ref o => panic!("RidgeHyperopt::inner_solution: plain SGD expected, got {o:?}"),
        };
        let lam = self.lambdas(theta);
        let x = &self.data.x_train;
        let (n, d) = (x.dims()[0], x.dims()[1]);
        let (xd, yd) = (x.data(), self.data.y_train.data());
        let mut w = vec![0.0; d];
        for _ in 0..self.inner.steps {
            let mut g: Vec<f64> = (0..d).map(|k| lam[k] * w[k]).collect();
            for i in 0..n {
                let res: f64 = (0..d).map(|k| xd[i * d + k] * w[k]).sum::<f64>() - yd[i];
                for k in 0..d {
                    g[k] += xd[i * d + k] * res / n as f64;
                }
            }
            for k in 0..d {
                w[k] -= lr * g[k];
            }
        }
        Tensor::new([d, 1], w)
    }
}

impl Problem<f64> for RidgeHyperopt {
    type Task = ();

    fn inner_loop(&self) -> &InnerLoop {
        &self.inner
    }

    fn inner_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = tape.constant_base(&self.data.x_train);
        let y = tape.constant_base(&self.data.y_train);
        let w = phi[0];
        let fit = x.matmul(w).mse(y).mul_scalar(0.5);
        let lambda = theta[0].sigmoid().mul_scalar(self.lambda_max);
        fit + (lambda * w.square()).sum().mul_scalar(0.5)
    }

    fn outer_loss<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T> {
        let x = tape.constant_base(&self.data.x_val);
        let y = tape.constant_base(&self.data.y_val);
        x.matmul(phi[0]).mse(y)
    }

    fn initial_state<'t, T: Real<Base = f64>>(
        &self,
        tape: &'t Tape<T>,
        _task: &(),
        _theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        vec![tape.constant_base(&Tensor::zeros([self.data.dim(), 1]))]
    }
}
