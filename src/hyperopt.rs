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
//! zero here: every bit of signal is in the second-order terms (docs/math.md §2,
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
    /// Draws the data set: x ~ N(0, I_d), w_true\[k\] ~ N(0, 1) for k < `informative`
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

/// Which hyperparameters θ holds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hyper {
    /// Per-feature L2 weights λ_k = λ_max·σ(θ_k); plain SGD inner loop.
    L2Weights,
    /// Per-feature inner step sizes α_k = θ_k (Meta-SGD inner loop,
    /// w ← w − α ⊙ ∇L_in) with a fixed L2 weight `l2` on every feature. θ
    /// enters the inner *optimiser*, not L_in, so the implicit estimator does
    /// not apply (at an exact optimum the solution does not depend on α).
    StepSizes {
        /// The fixed L2 weight.
        l2: f64,
    },
}

/// Ridge regression with learnable per-feature L2 weights (or inner step
/// sizes), as a [`Problem`] with a single task (the data set).
#[derive(Clone, Debug)]
pub struct RidgeHyperopt {
    /// The data.
    pub data: RegressionData,
    /// λ_k = `lambda_max`·σ(θ_k) (L2 mode).
    pub lambda_max: f64,
    /// r steps of gradient descent: `InnerLoop::sgd(r, α)` for
    /// [`Hyper::L2Weights`], `InnerLoop::meta_sgd(r, vec![0])` for [`Hyper::StepSizes`].
    pub inner: InnerLoop,
    /// What θ is.
    pub hyper: Hyper,
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

    /// The hyperparameters in their natural units: λ_k (L2 mode) or α_k (step mode).
    pub fn hypers(&self, theta: &Tensor<f64>) -> Vec<f64> {
        match self.hyper {
            Hyper::L2Weights => self.lambdas(theta),
            Hyper::StepSizes { .. } => theta.data().to_vec(),
        }
    }

    /// The inner solution w_r(θ) by running the r gradient steps directly
    /// (plain arithmetic, no tape): w ← w − α ⊙ (X_trᵀ(X_tr w − y_tr)/n + λ ⊙ w).
    ///
    /// # Panics
    /// If the inner optimiser is not the one [`RidgeHyperopt::inner`] documents.
    pub fn inner_solution(&self, theta: &Tensor<f64>) -> Tensor<f64> {
        let d = self.data.dim();
        let (lr, lam) = match (self.hyper, &self.inner.optimizer) {
            (Hyper::L2Weights, blo::InnerOptimizer::Sgd { lr }) => {
                (vec![*lr; d], self.lambdas(theta))
            }
            (Hyper::StepSizes { l2 }, blo::InnerOptimizer::MetaSgd { .. }) => {
                (theta.data().to_vec(), vec![l2; d])
            }
            (h, o) => panic!("RidgeHyperopt::inner_solution: {h:?} with inner optimiser {o:?}"),
        };
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
                w[k] -= lr[k] * g[k];
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
        match self.hyper {
            Hyper::L2Weights => {
                let lambda = theta[0].sigmoid().mul_scalar(self.lambda_max);
                fit + (lambda * w.square()).sum().mul_scalar(0.5)
            }
            Hyper::StepSizes { l2 } => fit + w.square().sum().mul_scalar(0.5 * l2),
        }
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

/// The stationarity the implicit estimator accepts here:
/// ‖∇_φ L_in(θ, w_r)‖ ≤ tol·‖∇_φ L_in(θ, w_0)‖. The search runs a fixed r
/// inner steps, not to convergence, so w_r is only near the optimum and the
/// implicit estimate is biased by about as much (the relative error against the
/// exact hypergradient is in the results); below this, it is an error.
pub const IMPLICIT_STATIONARITY_TOL: f64 = 1e-2;

/// A hypergradient estimator for the search.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact reverse sweep, every state stored (r states; φ_0 is regenerated).
    ExactStoreAll,
    /// Exact reverse sweep with binomial checkpointing (s snapshots).
    ExactBinomial(usize),
    /// Exact, recomputing from the start (1 state, r(r+1)/2 steps).
    ExactRecompute,
    /// Forward mode: one tangent per hyperparameter.
    ForwardMode,
    /// Implicit function theorem at φ_r (`blo::Implicit::ift`), CG with HVPs:
    /// g = ∇_θ L_out − H_θφ v with H_φφ v = ∇_φ L_out.
    Implicit,
    /// UFO-BLO with fixed q (here g_FO = 0, so g = (ξ/q)·g_exact).
    Ufo(f64),
    /// First-order: exactly zero on this problem (θ acts only through the
    /// inner loss's curvature), shown as the baseline that cannot move.
    FirstOrder,
}

impl Method {
    /// Label for tables, legends and JSON.
    pub fn label(&self) -> String {
        match self {
            Method::ExactStoreAll => "exact(store-all)".into(),
            Method::ExactBinomial(s) => format!("exact(binomial,s={s})"),
            Method::ExactRecompute => "exact(recompute)".into(),
            Method::ForwardMode => "forward-mode".into(),
            Method::Implicit => "implicit(CG)".into(),
            Method::Ufo(q) => format!("ufo(q={q})"),
            Method::FirstOrder => "first-order".into(),
        }
    }

    /// The estimator.
    ///
    /// # Errors
    /// Invalid hyperparameters (q ∉ (0, 1], s = 0).
    pub fn estimator(&self) -> Result<Box<dyn blo::Estimator<f64, RidgeHyperopt>>, blo::BloError> {
        use blo::{Exact, FirstOrder, ForwardMode, Policy, Ufo};
        Ok(match *self {
            Method::ExactStoreAll => Box::new(Exact::new(Policy::StoreAll)?),
            Method::ExactBinomial(s) => Box::new(Exact::new(Policy::Binomial { snapshots: s })?),
            Method::ExactRecompute => Box::new(Exact::new(Policy::Recompute)?),
            Method::ForwardMode => Box::new(ForwardMode::new()),
            Method::Implicit => Box::new(
                blo::Implicit::ift()
                    .with_solver(blo::ImplicitSolver::Cg(hvp::CgParams {
                        tol: 1e-10,
                        max_iter: 500,
                    }))
                    .stationarity_tol(IMPLICIT_STATIONARITY_TOL)?,
            ),
            Method::Ufo(q) => Box::new(Ufo::fixed(q)?),
            Method::FirstOrder => Box::new(FirstOrder::new()),
        })
    }
}

/// Settings of the search.
#[derive(Clone, Debug)]
pub struct Config {
    /// Features d (= number of hyperparameters).
    pub d: usize,
    /// Features with signal.
    pub informative: usize,
    /// Training, validation and test sizes.
    pub n: [usize; 3],
    /// Label noise σ.
    pub noise: f64,
    /// Inner gradient steps r.
    pub r: usize,
    /// Inner step α.
    pub alpha: f64,
    /// Upper bound of each L2 weight.
    pub lambda_max: f64,
    /// What to learn: L2 weights, or inner step sizes (θ_0 = α for every feature).
    pub hyper: Hyper,
    /// Outer (hyperparameter) steps.
    pub outer_steps: usize,
    /// Adam step for θ.
    pub outer_lr: f64,
    /// Data and coin seed.
    pub seed: u64,
    /// Estimators to compare.
    pub methods: Vec<Method>,
    /// SVG figure of validation loss against outer step (`None`: none).
    pub figure: Option<std::path::PathBuf>,
    /// Progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            d: 20,
            informative: 5,
            n: [40, 200, 2000],
            noise: 0.5,
            r: 100,
            alpha: 0.1,
            lambda_max: 5.0,
            hyper: Hyper::L2Weights,
            outer_steps: 100,
            outer_lr: 0.1,
            seed: 0,
            methods: vec![
                Method::ExactStoreAll,
                Method::ExactBinomial(4),
                Method::ForwardMode,
                Method::Implicit,
                Method::Ufo(0.2),
                Method::FirstOrder,
            ],
            figure: Some("target/figures/hyperopt.svg".into()),
            progress: true,
        }
    }
}

/// One method's search.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MethodResult {
    /// Estimator label.
    pub method: String,
    /// Validation MSE at θ_0.
    pub initial_val_loss: f64,
    /// Validation MSE after the search.
    pub final_val_loss: f64,
    /// Test MSE at θ_0 (held-out data).
    pub initial_test_loss: f64,
    /// Test MSE after the search.
    pub final_test_loss: f64,
    /// Mean hyperparameter (λ, or α in step mode) on the informative features after the search.
    pub mean_hyper_informative: f64,
    /// Mean hyperparameter on the noise features after the search.
    pub mean_hyper_noise: f64,
    /// ‖g − g_exact‖/‖g_exact‖ at θ_0 (single draw for UFO; 1 for first-order).
    pub rel_error_at_theta0: f64,
    /// Mean seconds per hypergradient.
    pub seconds_per_hypergradient: f64,
    /// Inner states held at the peak.
    pub states_peak: usize,
    /// Inner forward steps per hypergradient (mean).
    pub forward_steps: f64,
    /// HVPs per hypergradient (mean).
    pub hvps: f64,
    /// CG iterations and residual at θ_0 (implicit only).
    pub solver: Option<blo::SolverReport>,
    /// Validation MSE after each outer step (not in JSON).
    #[serde(skip)]
    pub val_curve: Vec<f64>,
}

/// Runs the search with every method.
///
/// # Errors
/// What the estimators report, and figure-writing failures.
pub fn run(cfg: &Config) -> Result<Vec<MethodResult>, blo::BloError> {
    use blo::Optimiser;
    let data = RegressionData::synthetic(cfg.d, cfg.informative, cfg.n, cfg.noise, cfg.seed);
    let (inner, theta0) = match cfg.hyper {
        Hyper::L2Weights => (
            InnerLoop::sgd(cfg.r, cfg.alpha)?,
            vec![Tensor::zeros([cfg.d, 1])],
        ),
        Hyper::StepSizes { .. } => {
            if cfg.methods.contains(&Method::Implicit) {
                return Err(blo::BloError::invalid(
                    "method",
                    "implicit",
                    "the implicit estimator does not apply to inner step sizes",
                ));
            }
            (
                InnerLoop::meta_sgd(cfg.r, vec![0])?,
                vec![Tensor::full([cfg.d, 1], cfg.alpha)],
            )
        }
    };
    let problem = RidgeHyperopt {
        data,
        lambda_max: cfg.lambda_max,
        inner,
        hyper: cfg.hyper,
    };
    let mut rng0 = ChaCha8Rng::seed_from_u64(cfg.seed);
    let reference = blo::Estimator::estimate(
        &blo::Exact::new(blo::Policy::StoreAll)?,
        &problem,
        &(),
        &theta0,
        &mut rng0,
    )?;
    let gref = reference.grad[0].data().to_vec();
    let gnorm = gref.iter().map(|x| x * x).sum::<f64>().sqrt();
    let test = |theta: &Tensor<f64>| {
        let w = problem.inner_solution(theta);
        RidgeHyperopt::mse(&problem.data.x_test, &problem.data.y_test, &w)
    };
    let bar = crate::util::progress(
        (cfg.methods.len() * cfg.outer_steps) as u64,
        "hyperopt",
        !cfg.progress,
    );
    let mut results = Vec::new();
    for &method in &cfg.methods {
        let mut est = method.estimator()?;
        let mut theta = theta0.clone();
        let mut adam = blo::Adam::<f64>::new(cfg.outer_lr);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xA11CE);
        let mut curve = Vec::with_capacity(cfg.outer_steps);
        let mut stats = blo::Stats::default();
        let mut seconds = 0.0;
        let mut first: Option<blo::Estimate<f64>> = None;
        let mut initial_val = f64::NAN;
        for _ in 0..cfg.outer_steps {
            let t = std::time::Instant::now();
            let e = est.estimate(&problem, &(), &theta, &mut rng)?;
            seconds += t.elapsed().as_secs_f64();
            stats.add(&e.stats);
            est.observe(std::slice::from_ref(&e));
            if first.is_none() {
                initial_val = e.outer_loss;
                first = Some(e.clone());
            }
            adam.step(&mut theta, &e.grad);
            curve.push(e.outer_loss);
            bar.inc(1);
        }
        let first = first.expect("outer_steps ≥ 1");
        let final_val = blo::meta_loss(&problem, &(), &theta)?;
        curve.push(final_val);
        let g0 = first.grad[0].data();
        let err = g0
            .iter()
            .zip(&gref)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
            / gnorm.max(1e-300);
        let lam = problem.hypers(&theta[0]);
        let k = cfg.informative.min(cfg.d);
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let steps = cfg.outer_steps as f64;
        results.push(MethodResult {
            method: method.label(),
            initial_val_loss: initial_val,
            final_val_loss: final_val,
            initial_test_loss: test(&theta0[0]),
            final_test_loss: test(&theta[0]),
            mean_hyper_informative: mean(&lam[..k]),
            mean_hyper_noise: mean(&lam[k..]),
            rel_error_at_theta0: err,
            seconds_per_hypergradient: seconds / steps,
            states_peak: stats.states_peak,
            forward_steps: stats.forward_steps as f64 / steps,
            hvps: stats.hvps as f64 / steps,
            solver: first.stats.solver.clone(),
            val_curve: curve,
        });
    }
    bar.finish_and_clear();
    if let Some(path) = &cfg.figure {
        let series: Vec<crate::util::Series> = results
            .iter()
            .map(|r| {
                crate::util::Series::new(
                    r.method.clone(),
                    r.val_curve
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| (i as f64, v))
                        .collect(),
                )
            })
            .collect();
        let spec = crate::util::PlotSpec {
            title: format!(
                "Hyperparameter search: validation MSE, d = {} L2 weights",
                cfg.d
            ),
            x_label: "outer (hyperparameter) step".into(),
            y_label: "validation MSE".into(),
            log_y: false,
            reference: None,
        };
        crate::util::line_plot_svg(path, &spec, &series).map_err(|e| blo::BloError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(results)
}

/// The table printed by the example.
pub fn table(results: &[MethodResult]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:>15} {:>15} {:>10} {:>10} {:>12} {:>7} {:>9} {:>7}",
        "estimator",
        "val MSE 0→end",
        "test MSE 0→end",
        "λ|α signal",
        "λ|α noise",
        "time/hypergr",
        "states",
        "fwd steps",
        "HVPs"
    );
    for r in results {
        let _ = writeln!(
            s,
            "{:<22} {:>15} {:>15} {:>10.3} {:>10.3} {:>12} {:>7} {:>9.0} {:>7.0}",
            r.method,
            format!("{:.3}→{:.3}", r.initial_val_loss, r.final_val_loss),
            format!("{:.3}→{:.3}", r.initial_test_loss, r.final_test_loss),
            r.mean_hyper_informative,
            r.mean_hyper_noise,
            crate::util::fmt_secs(r.seconds_per_hypergradient),
            r.states_peak,
            r.forward_steps,
            r.hvps
        );
    }
    let _ = writeln!(
        s,
        "\nrelative error of the hypergradient at θ_0 against exact(store-all):"
    );
    for r in results {
        let solver = r
            .solver
            .as_ref()
            .map(|sr| {
                format!(
                    " (CG: {} iterations, residual {:.1e})",
                    sr.iterations, sr.residual
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<22} {:.2e}{solver}",
            r.method, r.rel_error_at_theta0
        );
    }
    s
}
