//! Outer optimisers: SGD with a step-size schedule, and Adam.
//!
//! An optimiser turns the meta-batch hypergradient g_k into an update of θ.
//! Its state (the step counter k and, for Adam, the moment estimates) is
//! captured by [`Optimiser::state`] as an [`OptimiserState`], which serialises
//! to JSON bit-exactly, so a resumed run continues with the same numbers.
//!
//! ```
//! use blo::outer::{Optimiser, Schedule, Sgd};
//! use tape::Tensor;
//! // η_k = 1·(1 − k/4): steps 1, 0.75, 0.5, 0.25.
//! let mut sgd = Sgd::new(Schedule::linear_decay(1.0, 4));
//! let mut theta = vec![Tensor::vector(vec![0.0_f64])];
//! let g = vec![Tensor::vector(vec![1.0])];
//! for _ in 0..4 {
//!     sgd.step(&mut theta, &g);
//! }
//! assert_eq!(theta[0].data()[0], -2.5); // −(1 + 0.75 + 0.5 + 0.25)
//! ```

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Value};
use tape::{Float, Tensor};

use crate::error::BloError;
use crate::io::ExactTensor;

/// A step-size schedule η_k, k = 0, 1, 2, … the number of steps already taken.
///
/// The constructors never panic; [`Schedule::validate`] checks the values
/// (η ≥ 0 and finite; k₀ > 0), and [`crate::train::Trainer::run`] calls it
/// before its first step (a [`Schedule::Custom`] is checked at every step: the
/// trainer refuses a step with a non-finite or negative η_k).
///
/// ```
/// use blo::outer::Schedule;
/// assert_eq!(Schedule::constant(0.1).eta(7), 0.1);
/// assert_eq!(Schedule::linear_decay(2.0, 4).eta(1), 1.5);      // 2·(1 − 1/4)
/// assert_eq!(Schedule::inverse_time(10.0, 1.0).eta(4), 2.0);    // 10/(4 + 1)
/// assert_eq!(Schedule::custom("halving", |k| 0.5f64.powi(k as i32)).eta(3), 0.125);
/// ```
#[derive(Clone)]
pub enum Schedule {
    /// η_k = η.
    Constant(f64),
    /// η_k = η₀·(1 − k/K), reaching 0 at k = K (and staying there): the linear
    /// decay of the paper's few-shot runs.
    LinearDecay {
        /// η₀.
        eta0: f64,
        /// K, the total number of steps.
        total: u64,
    },
    /// η_k = c/(k + k₀): the counterexample uses 10/(k + 1).
    InverseTime {
        /// c.
        scale: f64,
        /// k₀ (> 0).
        offset: f64,
    },
    /// Any function of k; `name` identifies it in checkpoints.
    Custom {
        /// Identifies the schedule (a resumed run must use the same name).
        name: String,
        /// k ↦ η_k.
        f: Arc<dyn Fn(u64) -> f64 + Send + Sync>,
    },
}

impl Schedule {
    /// η_k = η.
    pub fn constant(eta: f64) -> Self {
        Schedule::Constant(eta)
    }
    /// η_k = η₀·(1 − k/K).
    pub fn linear_decay(eta0: f64, total: u64) -> Self {
        Schedule::LinearDecay { eta0, total }
    }
    /// η_k = c/(k + k₀). Valid for c ≥ 0 and k₀ > 0, both finite (see
    /// [`Schedule::validate`]; an offset k₀ ≤ 0 would make η_0 infinite or
    /// negative).
    ///
    /// ```
    /// use blo::outer::Schedule;
    /// assert!(Schedule::inverse_time(10.0, 1.0).validate().is_ok());
    /// let e = Schedule::inverse_time(10.0, 0.0).validate().unwrap_err();
    /// assert!(e.to_string().contains("offset"), "{e}");
    /// ```
    pub fn inverse_time(scale: f64, offset: f64) -> Self {
        Schedule::InverseTime { scale, offset }
    }

    /// Checks the schedule's values: η (constant), η₀ (linear decay) and c
    /// (inverse time) finite and ≥ 0, the inverse-time offset k₀ finite and
    /// positive. A custom schedule cannot be checked ahead; its η_k is checked
    /// when used (see [`Schedule::check_eta`]).
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the value.
    ///
    /// ```
    /// use blo::outer::Schedule;
    /// assert!(Schedule::constant(0.0).validate().is_ok()); // η = 0: a frozen θ
    /// assert!(Schedule::constant(f64::NAN).validate().is_err());
    /// assert!(Schedule::linear_decay(-1.0, 10).validate().is_err());
    /// assert!(Schedule::inverse_time(f64::INFINITY, 1.0).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), BloError> {
        let eta = |name: &'static str, x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(())
            } else {
                Err(BloError::invalid(
                    name,
                    x,
                    "a step size must be finite and >= 0",
                ))
            }
        };
        match self {
            Schedule::Constant(x) => eta("Schedule::constant eta", *x),
            Schedule::LinearDecay { eta0, .. } => eta("Schedule::linear_decay eta0", *eta0),
            Schedule::InverseTime { scale, offset } => {
                eta("Schedule::inverse_time scale", *scale)?;
                if offset.is_finite() && *offset > 0.0 {
                    Ok(())
                } else {
                    Err(BloError::invalid(
                        "Schedule::inverse_time offset",
                        offset,
                        "must be finite and > 0 (eta_0 = scale/offset)",
                    ))
                }
            }
            Schedule::Custom { .. } => Ok(()),
        }
    }

    /// η_k, checked: finite and ≥ 0.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the schedule, k and η_k.
    ///
    /// ```
    /// use blo::outer::Schedule;
    /// let s = Schedule::custom("bad", |k| 1.0 - k as f64);
    /// assert_eq!(s.check_eta(0).unwrap(), 1.0);
    /// assert!(s.check_eta(2).unwrap_err().to_string().contains("-1"));
    /// ```
    pub fn check_eta(&self, k: u64) -> Result<f64, BloError> {
        let eta = self.eta(k);
        if eta.is_finite() && eta >= 0.0 {
            Ok(eta)
        } else {
            Err(BloError::invalid(
                "learning rate",
                format!("eta_{k} = {eta} from {}", self.config()),
                "a step size must be finite and >= 0",
            ))
        }
    }
    /// η_k = f(k), identified by `name`.
    pub fn custom(name: impl Into<String>, f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule::Custom {
            name: name.into(),
            f: Arc::new(f),
        }
    }

    /// η_k.
    pub fn eta(&self, k: u64) -> f64 {
        match self {
            Schedule::Constant(eta) => *eta,
            Schedule::LinearDecay { eta0, total } => {
                if *total == 0 || k >= *total {
                    0.0
                } else {
                    eta0 * (1.0 - k as f64 / *total as f64)
                }
            }
            Schedule::InverseTime { scale, offset } => scale / (k as f64 + offset),
            Schedule::Custom { f, .. } => f(k),
        }
    }

    /// The schedule's configuration as JSON (for checkpoints: a resumed run must
    /// use the same schedule).
    pub fn config(&self) -> Value {
        match self {
            Schedule::Constant(eta) => json!({ "constant": eta }),
            Schedule::LinearDecay { eta0, total } => {
                json!({ "linear_decay": { "eta0": eta0, "total": total } })
            }
            Schedule::InverseTime { scale, offset } => {
                json!({ "inverse_time": { "scale": scale, "offset": offset } })
            }
            Schedule::Custom { name, .. } => json!({ "custom": name }),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({})", self.config())
    }
}

/// An optimiser's state: what it is, how it is configured, how many steps it
/// took, and its buffers (bit-exact).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimiserState {
    /// `"sgd"`, `"adam"`, …
    pub kind: String,
    /// Hyperparameters; a resumed run must have the same.
    pub config: Value,
    /// Steps taken (k).
    pub step: u64,
    /// Named buffers (e.g. `"m.0"`, `"v.0"` for Adam), bit-exact.
    pub buffers: Vec<(String, ExactTensor)>,
}

/// What is wrong with one field of a saved state (see [`OptimiserState::check`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StateFault {
    /// The field, e.g. `buffers.v.0`.
    pub field: String,
    /// The value found.
    pub value: String,
    /// Why it cannot be right.
    pub reason: String,
}

impl fmt::Display for StateFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.reason)
    }
}

fn fault(field: impl Into<String>, value: impl fmt::Display, reason: &str) -> StateFault {
    StateFault {
        field: field.into(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl OptimiserState {
    /// Checks that the state is one an optimiser can have reached: every
    /// buffer holds as many values as its shape says, all finite; for
    /// `"sgd"` no buffers; for `"adam"` buffers `m.0 … m.{n−1}, v.0 … v.{n−1}`
    /// with v ≥ 0 and m.i shaped like v.i, none at step 0 and some after it,
    /// and a step counter below 2³¹ − 1 (Adam's bias correction raises β to
    /// the power k + 1 as an `i32`). With `theta_shapes`, a buffer named
    /// `<x>.<i>` must have θ tensor i's shape, and Adam must hold one m and one
    /// v per θ tensor.
    ///
    /// # Errors
    /// The first [`StateFault`]: the field, the value, the reason.
    ///
    /// ```
    /// use blo::outer::{Adam, Optimiser};
    /// use tape::Tensor;
    /// let mut adam = Adam::new(0.1);
    /// let mut theta = vec![Tensor::vector(vec![1.0_f64, 2.0])];
    /// adam.step(&mut theta, &[Tensor::vector(vec![0.5, -0.5])]);
    /// let mut state = Optimiser::<f64>::state(&adam);
    /// assert!(state.check(Some(&[vec![2]])).is_ok());
    /// state.buffers[1].1.bits[0] = (-1.0f64).to_bits(); // v.0 < 0
    /// assert_eq!(state.check(None).unwrap_err().field, "buffers.v.0");
    /// ```
    pub fn check(&self, theta_shapes: Option<&[Vec<usize>]>) -> Result<(), StateFault> {
        let mut values = Vec::with_capacity(self.buffers.len());
        for (name, t) in &self.buffers {
            let field = format!("buffers.{name}");
            let v = t
                .values_f64()
                .map_err(|e| fault(&field, format!("{:?}", t.shape), &e))?;
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(fault(
                    field,
                    format!("element {j}: {}", v[j]),
                    "optimiser buffers are finite",
                ));
            }
            if let (Some(shapes), Some(i)) = (
                theta_shapes,
                name.rsplit('.')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok()),
            ) {
                if shapes.get(i) != Some(&t.shape) {
                    return Err(fault(
                        field,
                        format!("shape {:?}", t.shape),
                        &format!(
                            "θ tensor {i} has shape {:?}",
                            shapes.get(i).map_or("(none)".into(), |s| format!("{s:?}"))
                        ),
                    ));
                }
            }
            values.push(v);
        }
        match self.kind.as_str() {
            "sgd" if !self.buffers.is_empty() => Err(fault(
                "buffers",
                format!("{} buffers", self.buffers.len()),
                "sgd keeps no buffers",
            )),
            "adam" => {
                let n = self.buffers.len() / 2;
                if self.step >= i32::MAX as u64 {
                    return Err(fault(
                        "step",
                        self.step,
                        "Adam's step counter must be < 2^31 - 1",
                    ));
                }
                if 2 * n != self.buffers.len() || (n == 0) != (self.step == 0) {
                    return Err(fault(
                        "buffers",
                        format!("{} buffers at step {}", self.buffers.len(), self.step),
                        "adam holds one m and one v per θ tensor after its first step, none before",
                    ));
                }
                if let Some(shapes) = theta_shapes {
                    if n != shapes.len() {
                        return Err(fault(
                            "buffers",
                            format!("{n} m and {n} v buffers"),
                            &format!("θ has {} tensors", shapes.len()),
                        ));
                    }
                }
                for (j, ((name, t), vals)) in self.buffers.iter().zip(&values).enumerate() {
                    let want = if j < n {
                        format!("m.{j}")
                    } else {
                        format!("v.{}", j - n)
                    };
                    if *name != want {
                        return Err(fault(
                            format!("buffers[{j}]"),
                            format!("{name:?}"),
                            &format!("expected {want:?}"),
                        ));
                    }
                    if j < n && t.shape != self.buffers[j + n].1.shape {
                        return Err(fault(
                            format!("buffers.{name}"),
                            format!("shape {:?}", t.shape),
                            &format!("v.{j} has shape {:?}", self.buffers[j + n].1.shape),
                        ));
                    }
                    if j >= n {
                        if let Some(k) = vals.iter().position(|&x| x < 0.0) {
                            return Err(fault(
                                format!("buffers.{name}"),
                                format!("element {k}: {}", vals[k]),
                                "Adam's second moment is >= 0",
                            ));
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// An outer optimiser: θ ← update(θ, g) with internal state.
///
/// Implementations must be deterministic functions of their state and inputs,
/// so that a run restored with [`Optimiser::load_state`] continues bit-identically.
pub trait Optimiser<F: Float>: Send {
    /// One update of `theta` in place with the gradient `grad` (same shapes),
    /// using η_k for the current k, then k ← k + 1.
    ///
    /// # Panics
    /// If `grad` does not match `theta` in count or shapes; for [`Sgd`] and
    /// [`Adam`], if η_k is not finite and ≥ 0 (the trainer checks
    /// [`Optimiser::checked_learning_rate`] first and returns an error instead).
    fn step(&mut self, theta: &mut [Tensor<F>], grad: &[Tensor<F>]);
    /// The step size the next [`Optimiser::step`] will use, η_k.
    fn learning_rate(&self) -> f64;
    /// Steps taken so far, k.
    fn steps_taken(&self) -> u64;
    /// The full state.
    fn state(&self) -> OptimiserState;
    /// Restores a state captured by [`Optimiser::state`].
    ///
    /// # Errors
    /// A description of the mismatch (other kind, other configuration, buffers
    /// of other shapes); `self` is unchanged then.
    fn load_state(&mut self, state: &OptimiserState) -> Result<(), String>;
    /// A short name for logs, e.g. `"sgd"`.
    fn name(&self) -> String;
    /// Checks the hyperparameters (e.g. the schedule, [`Schedule::validate`]);
    /// [`crate::train::Trainer::run`] calls it before its first step. The
    /// default accepts everything.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the value.
    fn validate(&self) -> Result<(), BloError> {
        Ok(())
    }
    /// The step size η_k the next step will use, checked finite and ≥ 0 (the
    /// trainer calls it before each step). The default checks
    /// [`Optimiser::learning_rate`].
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming k and η_k.
    fn checked_learning_rate(&self) -> Result<f64, BloError> {
        let eta = self.learning_rate();
        if eta.is_finite() && eta >= 0.0 {
            Ok(eta)
        } else {
            Err(BloError::invalid(
                "learning rate",
                format!("eta_{} = {eta} ({})", self.steps_taken(), self.name()),
                "a step size must be finite and >= 0",
            ))
        }
    }
}

impl<F: Float, O: Optimiser<F> + ?Sized> Optimiser<F> for Box<O> {
    fn step(&mut self, theta: &mut [Tensor<F>], grad: &[Tensor<F>]) {
        (**self).step(theta, grad)
    }
    fn learning_rate(&self) -> f64 {
        (**self).learning_rate()
    }
    fn steps_taken(&self) -> u64 {
        (**self).steps_taken()
    }
    fn state(&self) -> OptimiserState {
        (**self).state()
    }
    fn load_state(&mut self, state: &OptimiserState) -> Result<(), String> {
        (**self).load_state(state)
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn validate(&self) -> Result<(), BloError> {
        (**self).validate()
    }
    fn checked_learning_rate(&self) -> Result<f64, BloError> {
        (**self).checked_learning_rate()
    }
}

#[track_caller]
fn check_grad<F: Float>(op: &str, theta: &[Tensor<F>], grad: &[Tensor<F>]) {
    assert_eq!(
        theta.len(),
        grad.len(),
        "{op}: {} θ tensors but {} gradient tensors",
        theta.len(),
        grad.len()
    );
    for (i, (t, g)) in theta.iter().zip(grad).enumerate() {
        assert_eq!(
            t.dims(),
            g.dims(),
            "{op}: θ tensor {i} has shape {:?}, gradient {:?}",
            t.dims(),
            g.dims()
        );
    }
}

fn check_config(kind: &str, state: &OptimiserState, config: &Value) -> Result<(), String> {
    if state.kind != kind {
        return Err(format!(
            "optimiser kind {:?} stored, this run uses {kind:?}",
            state.kind
        ));
    }
    if &state.config != config {
        return Err(format!(
            "optimiser configuration {} stored, this run uses {config}",
            state.config
        ));
    }
    Ok(())
}

/// Plain stochastic gradient descent: θ ← θ − η_k·g.
///
/// ```
/// use blo::outer::{Optimiser, Schedule, Sgd};
/// use tape::Tensor;
/// // The counterexample's schedule 10/(k + 1): steps 10, 5, …
/// let mut sgd = Sgd::new(Schedule::inverse_time(10.0, 1.0));
/// let mut theta = vec![Tensor::scalar(0.0_f64)];
/// sgd.step(&mut theta, &[Tensor::scalar(1.0)]);
/// sgd.step(&mut theta, &[Tensor::scalar(1.0)]);
/// assert_eq!(theta[0].item(), -15.0);
/// assert_eq!(Optimiser::<f64>::steps_taken(&sgd), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Sgd {
    schedule: Schedule,
    k: u64,
}

impl Sgd {
    /// SGD with the given schedule, at k = 0.
    pub fn new(schedule: Schedule) -> Self {
        Sgd { schedule, k: 0 }
    }
    /// SGD with a constant step η.
    pub fn constant(eta: f64) -> Self {
        Sgd::new(Schedule::constant(eta))
    }
    /// SGD with η_k = η₀·(1 − k/K).
    pub fn linear_decay(eta0: f64, total: u64) -> Self {
        Sgd::new(Schedule::linear_decay(eta0, total))
    }
    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn config(&self) -> Value {
        json!({ "schedule": self.schedule.config() })
    }
}

impl<F: Float> Optimiser<F> for Sgd {
    #[track_caller]
    fn step(&mut self, theta: &mut [Tensor<F>], grad: &[Tensor<F>]) {
        check_grad("Sgd::step", theta, grad);
        if let Err(e) = self.schedule.check_eta(self.k) {
            panic!("Sgd::step: {e}");
        }
        let eta = F::from_f64(self.schedule.eta(self.k));
        for (t, g) in theta.iter_mut().zip(grad) {
            for (x, &gx) in t.data_mut().iter_mut().zip(g.data()) {
                *x -= eta * gx;
            }
        }
        self.k += 1;
    }
    fn learning_rate(&self) -> f64 {
        self.schedule.eta(self.k)
    }
    fn steps_taken(&self) -> u64 {
        self.k
    }
    fn state(&self) -> OptimiserState {
        OptimiserState {
            kind: "sgd".into(),
            config: self.config(),
            step: self.k,
            buffers: Vec::new(),
        }
    }
    fn load_state(&mut self, state: &OptimiserState) -> Result<(), String> {
        check_config("sgd", state, &self.config())?;
        state.check(None).map_err(|f| f.to_string())?;
        self.k = state.step;
        Ok(())
    }
    fn name(&self) -> String {
        "sgd".into()
    }
    fn validate(&self) -> Result<(), BloError> {
        self.schedule.validate()
    }
    fn checked_learning_rate(&self) -> Result<f64, BloError> {
        self.schedule.check_eta(self.k)
    }
}

/// Adam (Kingma & Ba 2015), bias-corrected. With t = k + 1:
///
/// m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,
/// m̂ = m/(1 − β₁ᵗ),  v̂ = v/(1 − β₂ᵗ),  θ ← θ − η_k·m̂/(√v̂ + ε).
///
/// Moments start at zero and take θ's shapes at the first step.
///
/// ```
/// use blo::outer::{Adam, Optimiser};
/// use tape::Tensor;
/// // At the first step m̂ = g and v̂ = g², so the step is η·g/(|g| + ε) ≈ η·sign(g).
/// let mut adam = Adam::new(0.1);
/// let mut theta = vec![Tensor::vector(vec![1.0_f64, 1.0])];
/// adam.step(&mut theta, &[Tensor::vector(vec![4.0, -0.5])]);
/// assert!((theta[0].data()[0] - 0.9).abs() < 1e-8);
/// assert!((theta[0].data()[1] - 1.1).abs() < 1e-7);
/// ```
#[derive(Clone, Debug)]
pub struct Adam<F: Float> {
    schedule: Schedule,
    beta1: f64,
    beta2: f64,
    eps: f64,
    k: u64,
    m: Vec<Tensor<F>>,
    v: Vec<Tensor<F>>,
}

impl<F: Float> Adam<F> {
    /// Adam with constant step η, β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    pub fn new(eta: f64) -> Self {
        Adam::with_schedule(Schedule::constant(eta))
    }
    /// Adam with a step-size schedule, β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    pub fn with_schedule(schedule: Schedule) -> Self {
        Adam {
            schedule,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            k: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
    /// Sets β₁, β₂.
    ///
    /// # Panics
    /// Unless both lie in [0, 1).
    #[track_caller]
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2),
            "Adam::betas: β₁ = {beta1}, β₂ = {beta2} must lie in [0, 1)"
        );
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }
    /// Sets ε.
    ///
    /// # Panics
    /// Unless ε > 0.
    #[track_caller]
    pub fn eps(mut self, eps: f64) -> Self {
        assert!(eps > 0.0, "Adam::eps: ε = {eps} must be > 0");
        self.eps = eps;
        self
    }
    fn config(&self) -> Value {
        json!({
            "schedule": self.schedule.config(),
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
        })
    }
}

impl<F: Float> Optimiser<F> for Adam<F> {
    #[track_caller]
    fn step(&mut self, theta: &mut [Tensor<F>], grad: &[Tensor<F>]) {
        check_grad("Adam::step", theta, grad);
        if let Err(e) = self.schedule.check_eta(self.k) {
            panic!("Adam::step: {e}");
        }
        if self.m.is_empty() {
            self.m = theta.iter().map(|t| Tensor::zeros(t.shape())).collect();
            self.v = self.m.clone();
        }
        check_grad("Adam::step (moments)", &self.m, grad);
        let t = (self.k + 1) as i32;
        let eta = F::from_f64(self.schedule.eta(self.k));
        let (b1, b2) = (F::from_f64(self.beta1), F::from_f64(self.beta2));
        let (c1, c2) = (F::one() - b1, F::one() - b2);
        let bc1 = F::from_f64(1.0 - self.beta1.powi(t));
        let bc2 = F::from_f64(1.0 - self.beta2.powi(t));
        let eps = F::from_f64(self.eps);
        for (((th, g), m), v) in theta
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let (th, m, v) = (th.data_mut(), m.data_mut(), v.data_mut());
            for i in 0..th.len() {
                let gi = g.data()[i];
                m[i] = b1 * m[i] + c1 * gi;
                v[i] = b2 * v[i] + c2 * gi * gi;
                let m_hat = m[i] / bc1;
                let v_hat = v[i] / bc2;
                th[i] -= eta * m_hat / (v_hat.sqrt() + eps);
            }
        }
        self.k += 1;
    }
    fn learning_rate(&self) -> f64 {
        self.schedule.eta(self.k)
    }
    fn steps_taken(&self) -> u64 {
        self.k
    }
    fn state(&self) -> OptimiserState {
        let mut buffers = Vec::new();
        for (i, m) in self.m.iter().enumerate() {
            buffers.push((format!("m.{i}"), ExactTensor::from_tensor(m)));
        }
        for (i, v) in self.v.iter().enumerate() {
            buffers.push((format!("v.{i}"), ExactTensor::from_tensor(v)));
        }
        OptimiserState {
            kind: "adam".into(),
            config: self.config(),
            step: self.k,
            buffers,
        }
    }
    fn load_state(&mut self, state: &OptimiserState) -> Result<(), String> {
        check_config("adam", state, &self.config())?;
        state.check(None).map_err(|f| f.to_string())?;
        let n = state.buffers.len() / 2;
        let mut m = Vec::with_capacity(n);
        let mut v = Vec::with_capacity(n);
        for (j, (name, t)) in state.buffers.iter().enumerate() {
            let (want, dst) = if j < n {
                (format!("m.{j}"), &mut m)
            } else {
                (format!("v.{}", j - n), &mut v)
            };
            if *name != want {
                return Err(format!("adam buffer {j} is {name:?}, expected {want:?}"));
            }
            dst.push(
                t.to_tensor::<F>()
                    .map_err(|e| format!("adam buffer {name}: {e}"))?,
            );
        }
        self.m = m;
        self.v = v;
        self.k = state.step;
        Ok(())
    }
    fn name(&self) -> String {
        "adam".into()
    }
    fn validate(&self) -> Result<(), BloError> {
        self.schedule.validate()
    }
    fn checked_learning_rate(&self) -> Result<f64, BloError> {
        self.schedule.check_eta(self.k)
    }
}
