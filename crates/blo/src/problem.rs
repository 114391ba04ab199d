//! Stating a bilevel problem: the losses ([`Problem`]) and the inner optimiser
//! ([`InnerLoop`], [`InnerOptimizer`]).

use tape::{Float, Real, Shape, Tape, Tensor, Var};

use crate::error::BloError;
use crate::rules::{check_trial_step, InnerRule, Rule};

/// A bilevel problem: minimise F(θ) = E_τ L_out(θ, φ_r(θ); τ), where φ_r is r
/// steps of an inner optimiser ([`Problem::inner_loop`]) on L_in(θ, φ; τ, j)
/// started from φ_0 = Φ_0(θ).
///
/// The losses are written once, generic over the element type, so the same code
/// gives values, gradients (on `F`) and Hessian-vector products (on `Dual<F>`).
/// The batch used at inner step `j` must be a deterministic function of the task
/// and `j`, so a recomputed step replays exactly (every checkpoint policy then
/// returns the same hypergradient to the last bit).
///
/// ```
/// use blo::{InnerLoop, Problem};
/// use tape::{Real, Tape, Var};
///
/// /// MAML on a 1-D quadratic: L_in = L_out = ½(φ − c)², φ_0 = θ.
/// struct Quad { inner: InnerLoop }
/// impl Problem<f64> for Quad {
///     type Task = f64; // the centre c
///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
///     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         (phi[0] - *c).square().sum() * 0.5
///     }
///     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
///         theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
///         self.inner_loss(t, c, 0, theta, phi)
///     }
/// }
/// let p = Quad { inner: InnerLoop::sgd(3, 0.5).unwrap() };
/// // φ_3 − c = (1 − 0.5)³ (θ − c): F(θ) = ½ (θ − c)² / 64
/// let theta = [tape::Tensor::vector(vec![3.0])];
/// let f = blo::meta_loss(&p, &1.0, &theta).unwrap();
/// assert!((f - 0.5 * 4.0 / 64.0).abs() < 1e-15);
/// ```
pub trait Problem<F: Float>: Sync {
    /// One task τ (its data and anything else that defines it).
    type Task: Sync;

    /// The inner optimiser and its number of steps r.
    fn inner_loop(&self) -> &InnerLoop;

    /// L_in(θ, φ; τ, step): the inner loss at inner step `step` (1-based, 1..=r).
    fn inner_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        step: usize,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T>;

    /// L_out(θ, φ; τ): the outer loss at the adapted state.
    fn outer_loss<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Var<'t, T>;

    /// g(θ, y; τ, step) − g(θ, z; τ, step) for two inner states y and z
    /// shaped like φ: the gap in F2SA's penalty (docs/math.md §11). The
    /// default records [`Problem::inner_loss`] twice; a problem may record it
    /// once, sharing what does not depend on the inner state (a product
    /// B·θ, or one product of the data with the columns [y z]). An override
    /// must equal the default up to rounding.
    ///
    /// ```
    /// use blo::{InnerLoop, Problem};
    /// use tape::{Real, Tape, Tensor, Var};
    /// struct Sq { inner: InnerLoop }
    /// impl Problem<f64> for Sq {
    ///     type Task = ();
    ///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    ///     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(), _j: usize,
    ///         theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    ///         ((phi[0] - theta[0]).square() * 0.5).sum()
    ///     }
    ///     fn outer_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(),
    ///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { phi[0].sum() }
    /// }
    /// let p = Sq { inner: InnerLoop::sgd(1, 0.5).unwrap() };
    /// let t = Tape::<f64>::new();
    /// let v = |x: f64| t.var(&Tensor::vector(vec![x]));
    /// // ½(3 − 1)² − ½(2 − 1)² = 1.5
    /// assert_eq!(p.inner_loss_gap(&t, &(), 1, &[v(1.0)], &[v(3.0)], &[v(2.0)]).item(), 1.5);
    /// ```
    fn inner_loss_gap<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        step: usize,
        theta: &[Var<'t, T>],
        y: &[Var<'t, T>],
        z: &[Var<'t, T>],
    ) -> Var<'t, T> {
        self.inner_loss(tape, task, step, theta, y) - self.inner_loss(tape, task, step, theta, z)
    }

    /// φ_0 = Φ_0(θ), recorded on `tape` so that (∂Φ_0/∂θ)ᵀ u is one VJP.
    /// The default is MAML's φ_0 = θ (every θ tensor is a φ tensor).
    /// Hyperparameter search returns constants (a fixed start); Meta-SGD
    /// returns the weight tensors of θ but not its step-size tensors.
    fn initial_state<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
    ) -> Vec<Var<'t, T>> {
        let _ = (tape, task);
        theta.to_vec()
    }

    /// `Some(B)` to state that [`Problem::initial_state`] is θ tiled B times,
    /// every θ tensor in order: Φ_0(θ) = (tile_B(θ_1), …, tile_B(θ_n)), with
    /// tile_B(x) of shape `[B, ..dims]` holding B copies of x (what
    /// `Var::tile_batch(B)` records), so (∂Φ_0/∂θ)ᵀ u = (Σ_b u_1,b, …, Σ_b u_n,b).
    /// The sweeps then write φ_0 by block copies and take that VJP by block
    /// sums, in the order of `tile_batch`'s rule (u_1 + u_2 + … + u_B, then
    /// added to the gradient: the bits of the recorded VJP), without recording
    /// Φ_0 on a tape. The default, `None`, records Φ_0. A problem that states
    /// `Some(B)` must record exactly those tiles in `initial_state`.
    ///
    /// ```
    /// use blo::{Estimator, FirstOrder, InnerLoop, Problem};
    /// use rand::SeedableRng;
    /// use tape::{Real, Tape, Tensor, Var};
    /// /// Two tasks stacked: φ_0 = (θ, θ), L = ½ Σ_b (φ_b − c_b)².
    /// struct Two { inner: InnerLoop, tiles: Option<usize> }
    /// impl Problem<f64> for Two {
    ///     type Task = Tensor<f64>; // c, [2, 1]
    ///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    ///     fn inner_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &Tensor<f64>,
    ///         _j: usize, _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    ///         (phi[0] - t.constant_base(c)).square().sum() * 0.5
    ///     }
    ///     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &Tensor<f64>,
    ///         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    ///         self.inner_loss(t, c, 0, th, phi)
    ///     }
    ///     fn initial_state<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>,
    ///         _c: &Tensor<f64>, th: &[Var<'t, T>]) -> Vec<Var<'t, T>> {
    ///         vec![th[0].tile_batch(2)]
    ///     }
    ///     fn initial_state_tiles(&self, _c: &Tensor<f64>) -> Option<usize> { self.tiles }
    /// }
    /// let (c, theta) = (Tensor::new(&[2, 1], vec![1.0, 3.0]), [Tensor::vector(vec![0.5])]);
    /// let est = |tiles| {
    ///     let p = Two { inner: InnerLoop::sgd(2, 0.5).unwrap(), tiles };
    ///     FirstOrder::new().estimate(&p, &c, &theta, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0))
    /// };
    /// let (fast, taped) = (est(Some(2))?, est(None)?);
    /// // φ_2 − c = ¼ (θ − c): ∇ = Σ_b ¼ (θ − c_b) = ¼ (−0.5 − 2.5)
    /// assert_eq!(fast.grad[0].data(), &[-0.75]);
    /// assert_eq!(fast.grad[0].data(), taped.grad[0].data());
    /// # Ok::<(), blo::BloError>(())
    /// ```
    fn initial_state_tiles(&self, task: &Self::Task) -> Option<usize> {
        let _ = task;
        None
    }

    /// L_in(θ, φ_0; τ, 1), the first step's inner loss, recorded for a pass
    /// whose φ adjoint is read only through its block sums: φ_0 is tiles of θ
    /// ([`Problem::initial_state_tiles`] is `Some(B)`) and the sweep adds
    /// (Σ_b ḡφ_1,b, …) to θ's gradient and reads nothing else of it (the
    /// adjoint of an SGD step at φ_0). A problem may record it with ops that
    /// write every φ tensor's adjoint as its block sum into block 0, the
    /// other blocks unspecified (tape's `batched_affine_tiled`: a weight's
    /// adjoint as one product over the whole stack), and return `Some`; the
    /// sweep then reads block 0 alone. The value and θ's adjoint must be
    /// [`Problem::inner_loss`]'s at step 1, the block sums its up to
    /// rounding: where debug assertions are on, the sweep takes the step
    /// again with [`Problem::inner_loss`] and panics, naming this hook, if
    /// θ's adjoint or φ's block sums differ by more than √ε of their largest
    /// entry. The default, `None`, records nothing: the sweep records
    /// [`Problem::inner_loss`] and reads every block.
    ///
    /// ```
    /// use blo::{InnerLoop, Problem};
    /// use tape::{Real, Tape, Tensor, Var};
    /// struct Sq { inner: InnerLoop }
    /// impl Problem<f64> for Sq {
    ///     type Task = ();
    ///     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    ///     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(), _j: usize,
    ///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    ///         (phi[0].square() * 0.5).sum()
    ///     }
    ///     fn outer_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, _: &(),
    ///         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { phi[0].sum() }
    /// }
    /// let p = Sq { inner: InnerLoop::sgd(1, 0.5).unwrap() };
    /// let t = Tape::<f64>::new();
    /// let phi = t.var(&Tensor::vector(vec![3.0, 3.0])); // two tiles of θ = 3
    /// assert!(p.inner_loss_at_tiles(&t, &(), &[], &[phi]).is_none());
    /// ```
    fn inner_loss_at_tiles<'t, T: Real<Base = F>>(
        &self,
        tape: &'t Tape<T>,
        task: &Self::Task,
        theta: &[Var<'t, T>],
        phi: &[Var<'t, T>],
    ) -> Option<Var<'t, T>> {
        let _ = (tape, task, theta, phi);
        None
    }
}

/// The inner optimiser: one step maps (θ, state_{j−1}) to state_j.
///
/// With g_j = ∇_φ L_in(θ, φ_{j−1}; τ, j):
///
/// | variant | state | step |
/// |---|---|---|
/// | `Sgd { lr: α }` | φ | φ_j = φ_{j−1} − α g_j |
/// | `MetaSgd { lr_index }` | φ | φ_j = φ_{j−1} − α ⊙ g_j, with α_i = θ[`lr_index[i]`] (same shape as φ_i) |
/// | `Momentum { lr: α, beta: β }` | (φ, v), v_0 = 0 | v_j = β v_{j−1} + g_j, φ_j = φ_{j−1} − α v_j |
/// | `Rule(rule)` | (φ, e), e_0 = 0 | (φ_j, e_j) = R(θ, φ_{j−1}, e_{j−1}, g_j; j), any [`InnerRule`] |
///
/// The first three have hand-derived adjoints (the fast paths,
/// docs/math.md §2); a [`Rule`]'s adjoint is derived from its one step by
/// the engine (docs/math.md §12). [`crate::rules`] has SGD, Meta-SGD with any
/// broadcastable step shape, LSLR, heavy-ball and Nesterov momentum with a
/// fixed or learnable β, and Adam as rules.
#[derive(Clone, Debug, PartialEq)]
pub enum InnerOptimizer {
    /// Plain SGD with a fixed scalar step α > 0.
    Sgd {
        /// The step α.
        lr: f64,
    },
    /// SGD with learnable per-parameter steps (Meta-SGD, Li et al. 2017): the
    /// step of φ tensor i is the θ tensor `lr_index[i]`, elementwise.
    MetaSgd {
        /// For each φ tensor, the index of the θ tensor holding its steps.
        lr_index: Vec<usize>,
    },
    /// Heavy-ball momentum; the velocity is part of the state, so it enters the
    /// adjoint sweep.
    Momentum {
        /// The step α > 0.
        lr: f64,
        /// The momentum β ∈ [0, 1).
        beta: f64,
    },
    /// Any update rule ([`InnerRule`]), its adjoint derived by the engine.
    Rule(Rule),
}

/// The inner loop: `steps` = r steps of `optimizer`.
///
/// The fields are public so a config can be written as a literal; every
/// estimator validates it ([`InnerLoop::validate`]) before running, and the
/// constructors validate at once.
#[derive(Clone, Debug, PartialEq)]
pub struct InnerLoop {
    /// The number of inner steps r ≥ 1.
    pub steps: usize,
    /// The inner optimiser.
    pub optimizer: InnerOptimizer,
}

impl InnerLoop {
    /// r steps of plain SGD with step α.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if r = 0 or α is not finite and positive.
    pub fn sgd(steps: usize, lr: f64) -> Result<Self, BloError> {
        let s = InnerLoop {
            steps,
            optimizer: InnerOptimizer::Sgd { lr },
        };
        s.validate()?;
        Ok(s)
    }

    /// r steps of Meta-SGD; see [`InnerOptimizer::MetaSgd`].
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if r = 0.
    pub fn meta_sgd(steps: usize, lr_index: Vec<usize>) -> Result<Self, BloError> {
        let s = InnerLoop {
            steps,
            optimizer: InnerOptimizer::MetaSgd { lr_index },
        };
        s.validate()?;
        Ok(s)
    }

    /// r steps of heavy-ball momentum; see [`InnerOptimizer::Momentum`].
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if r = 0, α is not finite and
    /// positive, or β is not in [0, 1).
    pub fn momentum(steps: usize, lr: f64, beta: f64) -> Result<Self, BloError> {
        let s = InnerLoop {
            steps,
            optimizer: InnerOptimizer::Momentum { lr, beta },
        };
        s.validate()?;
        Ok(s)
    }

    /// r steps of an update rule; see [`InnerOptimizer::Rule`] and
    /// [`crate::rules`].
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] if r = 0.
    ///
    /// ```
    /// use blo::{rules::Adam, InnerLoop};
    /// let inner = InnerLoop::rule(10, Adam::new(0.01, 0.9, 0.999, 1e-8)?)?;
    /// assert!(InnerLoop::rule(0, Adam::new(0.01, 0.9, 0.999, 1e-8)?).is_err());
    /// # let _ = inner;
    /// # Ok::<(), blo::BloError>(())
    /// ```
    pub fn rule(steps: usize, rule: impl InnerRule) -> Result<Self, BloError> {
        let s = InnerLoop {
            steps,
            optimizer: InnerOptimizer::Rule(Rule::new(rule)),
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the ranges: r ≥ 1, α finite and > 0, β ∈ [0, 1).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the offending value.
    pub fn validate(&self) -> Result<(), BloError> {
        if self.steps == 0 {
            return Err(BloError::invalid(
                "steps",
                0,
                "need at least one inner step",
            ));
        }
        match &self.optimizer {
            InnerOptimizer::Sgd { lr } => check_lr(*lr),
            InnerOptimizer::MetaSgd { .. } | InnerOptimizer::Rule(_) => Ok(()),
            InnerOptimizer::Momentum { lr, beta } => {
                check_lr(*lr)?;
                if !(beta.is_finite() && (0.0..1.0).contains(beta)) {
                    return Err(BloError::invalid(
                        "beta",
                        beta,
                        "momentum must be in [0, 1)",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks θ against the inner optimiser, before any step is run. For
    /// Meta-SGD: every `lr_index` entry names a θ tensor, and every step size
    /// α (an element of such a tensor) is finite and ≥ 0 (a negative α ascends
    /// the inner loss). Other optimisers take their steps from the config and
    /// accept any θ.
    ///
    /// [`crate::train::Trainer::run`] calls this (with
    /// [`InnerLoop::validate_phi0`], through [`check_start`]) before its first
    /// step, and checks the step sizes again on every updated θ before
    /// committing it.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the entry, the θ tensor, the
    /// element index and the value.
    ///
    /// ```
    /// use blo::InnerLoop;
    /// use tape::Tensor;
    /// let inner = InnerLoop::meta_sgd(1, vec![1]).unwrap();
    /// let w = Tensor::vector(vec![0.0_f64, 0.0]);
    /// assert!(inner.validate_theta(&[w.clone(), Tensor::vector(vec![0.1, 0.2])]).is_ok());
    /// let e = inner.validate_theta(&[w.clone(), Tensor::vector(vec![0.1, -0.2])]).unwrap_err();
    /// assert!(e.to_string().contains("θ[1] element 1 = -0.2"), "{e}");
    /// assert!(inner.validate_theta(&[w]).is_err()); // θ[1] does not exist
    /// ```
    pub fn validate_theta<F: Float>(&self, theta: &[Tensor<F>]) -> Result<(), BloError> {
        if let InnerOptimizer::Rule(rule) = &self.optimizer {
            return rule.validate(self.steps, &to_f64(theta), None);
        }
        let InnerOptimizer::MetaSgd { lr_index } = &self.optimizer else {
            return Ok(());
        };
        for (i, &k) in lr_index.iter().enumerate() {
            let Some(alpha) = theta.get(k) else {
                return Err(BloError::invalid(
                    "lr_index",
                    format!("lr_index[{i}] = {k}"),
                    &format!("θ has {} tensors", theta.len()),
                ));
            };
            if let Some(j) = alpha
                .data()
                .iter()
                .position(|a| !(a.is_finite() && a.to_f64() >= 0.0))
            {
                return Err(BloError::invalid(
                    "Meta-SGD step size",
                    format!(
                        "θ[{k}] element {j} = {} (the steps of φ tensor {i})",
                        alpha.data()[j].to_f64()
                    ),
                    "a step size must be finite and >= 0",
                ));
            }
        }
        Ok(())
    }

    /// Checks the shapes of φ_0 (one task's [`Problem::initial_state`])
    /// against the inner optimiser: for Meta-SGD, one `lr_index` entry per φ
    /// tensor, and θ[`lr_index[i]`] shaped like φ tensor i. Others accept any φ_0.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the entry and both shapes.
    ///
    /// ```
    /// use blo::InnerLoop;
    /// use tape::Tensor;
    /// let inner = InnerLoop::meta_sgd(1, vec![1]).unwrap();
    /// let theta = [Tensor::vector(vec![0.0_f64; 3]), Tensor::vector(vec![0.1; 2])];
    /// let e = inner.validate_phi0(&theta, &[vec![3]]).unwrap_err();
    /// assert!(e.to_string().contains("[2]") && e.to_string().contains("[3]"), "{e}");
    /// ```
    pub fn validate_phi0<F: Float>(
        &self,
        theta: &[Tensor<F>],
        phi0_shapes: &[Vec<usize>],
    ) -> Result<(), BloError> {
        if let InnerOptimizer::Rule(rule) = &self.optimizer {
            let theta = to_f64(theta);
            let phi0: Vec<Shape> = phi0_shapes.iter().map(|s| Shape::new(s)).collect();
            rule.validate(self.steps, &theta, Some(&phi0))?;
            return check_trial_step(rule, &theta, &phi0);
        }
        let InnerOptimizer::MetaSgd { lr_index } = &self.optimizer else {
            return Ok(());
        };
        if lr_index.len() != phi0_shapes.len() {
            return Err(BloError::invalid(
                "lr_index",
                format!("{lr_index:?}"),
                &format!(
                    "needs one entry per φ tensor, and φ_0 has {}",
                    phi0_shapes.len()
                ),
            ));
        }
        for (i, (&k, phi)) in lr_index.iter().zip(phi0_shapes).enumerate() {
            match theta.get(k) {
                Some(a) if a.dims() == phi.as_slice() => {}
                a => {
                    return Err(BloError::invalid(
                        "lr_index",
                        format!("lr_index[{i}] = {k}"),
                        &format!(
                            "θ[{k}] has shape {}, φ tensor {i} has shape {phi:?}",
                            a.map_or("(none: θ has fewer tensors)".into(), |a| format!(
                                "{:?}",
                                a.dims()
                            ))
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Whether [`InnerLoop::validate_phi0`] checks anything (Meta-SGD and
    /// rules), i.e. whether a run must record φ_0 once before its first step
    /// to check the optimiser against it ([`check_start`]).
    pub fn checks_phi0(&self) -> bool {
        matches!(
            self.optimizer,
            InnerOptimizer::MetaSgd { .. } | InnerOptimizer::Rule(_)
        )
    }

    /// The shapes of the optimiser's extra state (zeros at step 0) for φ of
    /// shapes `phi`: φ's shapes for momentum's velocity,
    /// [`Rule::stored_extra_state`] for a rule ([`InnerRule::extra_state`],
    /// or `[N]` vectors for an elementwise rule, docs/math.md §12, "Flat steps"), none
    /// otherwise.
    pub fn extra_state(&self, phi: &[Shape]) -> Vec<Shape> {
        match &self.optimizer {
            InnerOptimizer::Momentum { .. } => phi.to_vec(),
            InnerOptimizer::Rule(rule) => rule.stored_extra_state(phi),
            InnerOptimizer::Sgd { .. } | InnerOptimizer::MetaSgd { .. } => Vec::new(),
        }
    }
}

/// θ as `f64` tensors, for the rules' checks.
fn to_f64<F: Float>(theta: &[Tensor<F>]) -> Vec<Tensor<f64>> {
    theta.iter().map(|t| t.map(|x| x.to_f64())).collect()
}

/// An error unless the step size α is finite and > 0.
pub(crate) fn check_lr(lr: f64) -> Result<(), BloError> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(BloError::invalid(
            "lr",
            lr,
            "the step size must be finite and > 0",
        ))
    }
}

/// Checks a problem's inner loop against θ before a run: the ranges
/// ([`InnerLoop::validate`]), θ ([`InnerLoop::validate_theta`]) and the
/// shapes of φ_0 = Φ_0(θ) on `task` ([`InnerLoop::validate_phi0`]; φ_0 is
/// recorded once on a scratch tape).
///
/// # Errors
/// [`BloError::InvalidHyperparameter`] naming the offending value.
pub fn check_start<F: Float, P: Problem<F>>(
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
) -> Result<(), BloError> {
    let inner = problem.inner_loop();
    inner.validate()?;
    inner.validate_theta(theta)?;
    if !inner.checks_phi0() {
        return Ok(());
    }
    let tape = Tape::<F>::new();
    let vars: Vec<Var<'_, F>> = theta.iter().map(|t| tape.constant(t)).collect();
    let phi0: Vec<Vec<usize>> = problem
        .initial_state(&tape, task, &vars)
        .iter()
        .map(|v| v.shape().dims().to_vec())
        .collect();
    inner.validate_phi0(theta, &phi0)
}
