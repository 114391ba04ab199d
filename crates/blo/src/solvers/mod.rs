//! Single-loop stochastic bilevel solvers (docs/math.md §11): SOBA, AmIGO,
//! F2SA and BOME on the same [`Problem`] trait as the unrolled estimators.
//!
//! These methods do not unroll. They solve
//!
//! min_θ h(θ) = L_out(θ, φ*(θ)),   φ*(θ) = argmin_φ L_in(θ, φ),
//!
//! for an inner loss L_in (= g) strongly convex in φ, keeping φ (and, where
//! the method has one, the linear-system variable v ≈ −H_φφ⁻¹ ∇_φ L_out) as a
//! persistent state that is warm-started from one outer step to the next.
//!
//! | method | file | per outer step (cost in gradient units, docs/math.md §8) |
//! |---|---|---|
//! | [`Soba`] | `soba.rs` | one dual pass of L_in (∇_φ L_in, H v, M v) + one gradient of L_out: 3 |
//! | [`Amigo`] | `amigo.rs` | N_φ inner gradients, N_v HVPs, one mixed product, one L_out gradient: N_φ + 2N_v + 3 |
//! | [`F2sa`] | `f2sa.rs` | one gradient of the penalty L_out + λ(L_in(y) − L_in(z)): 3, first order |
//! | [`Bome`] | `bome.rs` | T inner gradients + ∇L_in at two points + ∇L_out: T + 3, first order |
//!
//! Every second-order product goes through `hvp`: SOBA and AmIGO take H_φφ v
//! and H_θφ v from [`crate::InnerWorkspace::inner_hvp`]'s pass, the dual pass
//! of the exact estimators ([`hvp::Workspace::dual_pass`] through
//! [`Problem::inner_loss`] with the tangent v on φ).
//!
//! **What the problem supplies.** g = [`Problem::inner_loss`], f =
//! [`Problem::outer_loss`], φ_0 = [`Problem::initial_state`] of the starting θ
//! (then warm-started; φ_0 is not re-derived from θ). The problem's
//! [`crate::InnerLoop`] optimiser is not used (each solver has its own step
//! sizes), but its step count r names the inner-loss indices: every
//! evaluation of L_in draws the next index of a counter kept in the state
//! ([`SolverState::samples`]), j = 1 + (samples mod r), so a problem whose
//! inner loss at index j is minibatch j cycles through its r batches, and a
//! resumed run draws the same indices as an uninterrupted one. Within one
//! SOBA step the dual pass uses one index; AmIGO draws one per inner step, one
//! per linear-system step and one for the mixed product; F2SA draws one per
//! step (the y and z terms share it); BOME one per inner step and one for ∇ψ.
//!
//! **Determinism.** The solvers are sequential; every number comes from the
//! tape's passes, which are bit-identical for any thread count, so a run is too
//! (tested).
//!
//! **Checkpoints.** [`SolverState`] is serde-serialisable with every float
//! stored by its bit pattern ([`crate::io::ExactTensor`]), and [`save_state`] /
//! [`load_state`] write and read it through [`crate::io::write_atomic`]
//! together with the solver's name and settings: a resumed run equals an
//! uninterrupted one bit for bit (tested).
//!
//! ```
//! use blo::problems::Quadratic;
//! use blo::solvers::{Soba, Solver, SolverWorkspace, StepSize};
//!
//! let q = Quadratic::generate(4, 3, 0)?;
//! let soba = Soba::new(StepSize::constant(0.2), StepSize::constant(0.05))?;
//! let mut ws = SolverWorkspace::new();
//! let mut s = soba.init(&mut ws, &q, &(), q.theta0())?;
//! for _ in 0..3000 {
//!     soba.step(&mut ws, &q, &(), &mut s)?;
//! }
//! assert!(q.distance_to_solution(&s.theta) < 1e-6);
//! # Ok::<(), blo::BloError>(())
//! ```

pub mod amigo;
pub mod bome;
pub mod f2sa;
pub mod soba;

use std::path::Path;

use tape::{Float, Tensor};

use crate::engine::objective::InnerObjective;
use crate::engine::step::{tensors_finite, InnerWorkspace};
use crate::error::BloError;
use crate::io::{self, ExactTensor};
use crate::problem::Problem;

pub use amigo::Amigo;
pub use bome::Bome;
pub use f2sa::{F2sa, Penalty};
pub use soba::Soba;

/// A step-size schedule η_k = base · (k + 1)^(−decay), k = 0, 1, … the outer
/// iteration. `decay` = 0 is a constant step; the papers' decreasing steps use
/// decay in (0, 1].
///
/// ```
/// use blo::solvers::StepSize;
/// let s = StepSize::decaying(0.4, 0.5);
/// assert_eq!(s.at(0), 0.4);
/// assert_eq!(s.at(3), 0.2); // 0.4 / √4
/// assert!(StepSize::constant(0.0).validate("rho").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSize {
    /// η_0 > 0.
    pub base: f64,
    /// The decay exponent, in [0, 1].
    pub decay: f64,
}

impl StepSize {
    /// η_k = η.
    pub fn constant(eta: f64) -> Self {
        StepSize {
            base: eta,
            decay: 0.0,
        }
    }

    /// η_k = η_0 (k + 1)^(−decay).
    pub fn decaying(base: f64, decay: f64) -> Self {
        StepSize { base, decay }
    }

    /// η_k.
    pub fn at(&self, k: u64) -> f64 {
        if self.decay == 0.0 {
            self.base
        } else {
            self.base * ((k + 1) as f64).powf(-self.decay)
        }
    }

    /// Checks η_0 finite and > 0, decay in [0, 1].
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming `name` and the value.
    pub fn validate(&self, name: &'static str) -> Result<(), BloError> {
        if !(self.base.is_finite() && self.base > 0.0) {
            return Err(BloError::invalid(
                name,
                self.base,
                "a step size must be finite and > 0",
            ));
        }
        if !(self.decay.is_finite() && (0.0..=1.0).contains(&self.decay)) {
            return Err(BloError::invalid(
                name,
                format!("decay {}", self.decay),
                "the decay exponent must be in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// Checks a count ≥ 1.
pub(crate) fn check_count(name: &'static str, n: usize) -> Result<(), BloError> {
    if n == 0 {
        Err(BloError::invalid(name, 0, "needs at least one step"))
    } else {
        Ok(())
    }
}

/// Work counted in the units of docs/math.md §8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Work {
    /// Reverse-mode gradients of L_in or L_out (a pass recording both counts each).
    pub gradients: u64,
    /// Forward-over-reverse passes (an HVP and its mixed product from one pass count once).
    pub hvps: u64,
}

impl Work {
    /// Adds the counts of `o`.
    pub fn add(&mut self, o: Work) {
        self.gradients += o.gradients;
        self.hvps += o.hvps;
    }

    /// Gradient-equivalents: gradients + 2 · HVPs (the model of `Stats::cost`).
    pub fn cost(&self) -> f64 {
        self.gradients as f64 + 2.0 * self.hvps as f64
    }
}

/// A solver's persistent state: θ, the warm-started inner variable φ, and
/// the method's extra variables, with the counters a resumed run needs.
///
/// Serialisable (serde): every float is stored by its bit pattern, so a
/// round trip is exact. See [`save_state`] for files.
#[derive(Clone, Debug, PartialEq)]
pub struct SolverState<F: Float> {
    /// θ, the outer variable (x in the papers).
    pub theta: Vec<Tensor<F>>,
    /// φ, the inner variable (y), warm-started across outer steps.
    pub phi: Vec<Tensor<F>>,
    /// v ≈ −H_φφ⁻¹ ∇_φ L_out (SOBA, AmIGO), shaped like φ; empty otherwise.
    pub v: Vec<Tensor<F>>,
    /// z ≈ argmin_φ L_in (F2SA's second inner variable), shaped like φ; empty otherwise.
    pub z: Vec<Tensor<F>>,
    /// Outer steps taken.
    pub iteration: u64,
    /// Inner-loss indices drawn so far (the next one is 1 + samples mod r).
    pub samples: u64,
    /// Work done so far.
    pub work: Work,
}

impl<F: Float> SolverState<F> {
    /// A fresh state at θ with φ = φ_0, v and z empty and zero counters.
    pub fn new(theta: Vec<Tensor<F>>, phi: Vec<Tensor<F>>) -> Self {
        SolverState {
            theta,
            phi,
            v: Vec::new(),
            z: Vec::new(),
            iteration: 0,
            samples: 0,
            work: Work::default(),
        }
    }

    /// A counter of inner-loss indices starting where this state's stops: a
    /// step draws from it and hands it back to [`SolverState::commit`] only
    /// if it succeeds, so a failed step leaves the state unchanged.
    pub fn draws(&self) -> Draws {
        Draws {
            samples: self.samples,
        }
    }

    /// Ends a successful outer step k = `self.iteration`: the iteration
    /// counter advances, the drawn indices and the work are recorded, and the
    /// step's report is returned.
    pub fn commit(
        &mut self,
        draws: Draws,
        work: Work,
        outer_loss: Option<F>,
        direction: Vec<Tensor<F>>,
        outer_lr: f64,
    ) -> SolverStep<F> {
        let iteration = self.iteration;
        self.iteration += 1;
        self.samples = draws.samples;
        self.work.add(work);
        SolverStep {
            iteration,
            outer_loss,
            direction,
            outer_lr,
            work,
        }
    }
}

/// The inner-loss index counter of one step (see [`SolverState::draws`]).
#[derive(Clone, Copy, Debug)]
pub struct Draws {
    samples: u64,
}

impl Draws {
    /// The next inner-loss index j = 1 + (samples mod r) ∈ 1..=r.
    pub fn next_index(&mut self, r: usize) -> usize {
        let j = 1 + (self.samples % r.max(1) as u64) as usize;
        self.samples += 1;
        j
    }
}

/// The serde form of a [`SolverState`] (floats by bit pattern).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct SavedState {
    theta: Vec<ExactTensor>,
    phi: Vec<ExactTensor>,
    v: Vec<ExactTensor>,
    z: Vec<ExactTensor>,
    iteration: u64,
    samples: u64,
    work: Work,
}

fn exact<F: Float>(ts: &[Tensor<F>]) -> Vec<ExactTensor> {
    ts.iter().map(ExactTensor::from_tensor).collect()
}

fn restore<F: Float>(field: &str, ts: &[ExactTensor]) -> Result<Vec<Tensor<F>>, String> {
    ts.iter()
        .enumerate()
        .map(|(i, t)| t.to_tensor().map_err(|e| format!("{field}[{i}]: {e}")))
        .collect()
}

impl<F: Float> serde::Serialize for SolverState<F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SavedState {
            theta: exact(&self.theta),
            phi: exact(&self.phi),
            v: exact(&self.v),
            z: exact(&self.z),
            iteration: self.iteration,
            samples: self.samples,
            work: self.work,
        }
        .serialize(s)
    }
}

impl<'de, F: Float> serde::Deserialize<'de> for SolverState<F> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = SavedState::deserialize(d)?;
        let err = <D::Error as serde::de::Error>::custom;
        Ok(SolverState {
            theta: restore("theta", &s.theta).map_err(err)?,
            phi: restore("phi", &s.phi).map_err(err)?,
            v: restore("v", &s.v).map_err(err)?,
            z: restore("z", &s.z).map_err(err)?,
            iteration: s.iteration,
            samples: s.samples,
            work: s.work,
        })
    }
}

/// What one outer step reports.
#[derive(Clone, Debug)]
pub struct SolverStep<F: Float> {
    /// The outer iteration k this step was (0-based).
    pub iteration: u64,
    /// L_out(θ_k, φ) at the φ the θ direction was taken at, when the step
    /// evaluated it on its own (F2SA records it inside its penalty: `None`).
    pub outer_loss: Option<F>,
    /// The direction D_θ the outer step moved θ along (θ ← θ − γ_k D_θ): the
    /// method's hypergradient estimate.
    pub direction: Vec<Tensor<F>>,
    /// The outer step size γ_k used.
    pub outer_lr: f64,
    /// Work done by this step.
    pub work: Work,
}

/// Reusable tapes for the solvers: the inner workspace of the estimators
/// (forward steps, the HVP pass, the outer gradient) and an `hvp` workspace
/// for plain gradients of other objectives. One per thread.
#[derive(Debug, Default)]
pub struct SolverWorkspace<F: Float> {
    pub(crate) inner: InnerWorkspace<F>,
    pub(crate) ws: hvp::Workspace<F>,
}

impl<F: Float> SolverWorkspace<F> {
    /// Empty tapes.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A single-loop bilevel solver: a state created by [`Solver::init`] and
/// advanced one outer step at a time by [`Solver::step`].
pub trait Solver<F: Float>: std::fmt::Debug {
    /// The method's name (stored in checkpoints).
    fn name(&self) -> &'static str;

    /// The hyperparameters, as text (stored in checkpoints; a resume with
    /// different settings is refused by [`load_state`]). Default: the
    /// solver's `Debug` form, which lists every hyperparameter.
    fn settings(&self) -> String {
        format!("{self:?}")
    }

    /// The state at θ_0: φ = Φ_0(θ_0) ([`Problem::initial_state`]), plus the
    /// method's extra variables (v = 0, z = φ_0).
    ///
    /// # Errors
    /// [`BloError::NonFinite`] if φ_0 is not finite.
    fn init<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        theta0: Vec<Tensor<F>>,
    ) -> Result<SolverState<F>, BloError>;

    /// One outer step, in place. On error the state is left unchanged.
    ///
    /// # Errors
    /// [`BloError::NonFinite`] (a loss or gradient at an inner index) or
    /// [`BloError::NonFiniteEstimate`] (an updated variable) naming what went
    /// non-finite.
    fn step<P: Problem<F>>(
        &self,
        ws: &mut SolverWorkspace<F>,
        problem: &P,
        task: &P::Task,
        state: &mut SolverState<F>,
    ) -> Result<SolverStep<F>, BloError>;
}

/// φ_0 = Φ_0(θ_0) as a fresh state.
pub(crate) fn initial<F: Float, P: Problem<F>>(
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    theta0: Vec<Tensor<F>>,
) -> Result<SolverState<F>, BloError> {
    let phi = ws.inner.initial_state(problem, task, &theta0)?.phi;
    Ok(SolverState::new(theta0, phi))
}

/// φ = Φ_0(θ_0) and v = 0: the start of the methods with a linear system (SOBA, AmIGO).
pub(crate) fn initial_with_v<F: Float, P: Problem<F>>(
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    theta0: Vec<Tensor<F>>,
) -> Result<SolverState<F>, BloError> {
    let mut s = initial(ws, problem, task, theta0)?;
    s.v = zeros_like(&s.phi);
    Ok(s)
}

/// x ← x − s·d, elementwise over tensor lists of the same shapes.
#[track_caller]
pub(crate) fn sub_scaled<F: Float>(x: &mut [Tensor<F>], s: F, d: &[Tensor<F>]) {
    assert_eq!(
        x.len(),
        d.len(),
        "sub_scaled: {} tensors but {} directions",
        x.len(),
        d.len()
    );
    for (a, b) in x.iter_mut().zip(d) {
        assert_eq!(
            a.shape(),
            b.shape(),
            "sub_scaled: {:?} but {:?}",
            a.shape(),
            b.shape()
        );
        for (p, &q) in a.data_mut().iter_mut().zip(b.data()) {
            *p -= s * q;
        }
    }
}

/// a += b, elementwise over tensor lists of the same shapes.
#[track_caller]
pub(crate) fn add_to<F: Float>(a: &mut [Tensor<F>], b: &[Tensor<F>]) {
    sub_scaled(a, -F::one(), b);
}

/// a + s·b, elementwise, as new tensors.
pub(crate) fn add_scaled<F: Float>(a: &[Tensor<F>], s: F, b: &[Tensor<F>]) -> Vec<Tensor<F>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x.data().iter().zip(y.data()).map(|(&p, &q)| p + s * q);
            Tensor::new(x.shape(), d.collect())
        })
        .collect()
}

/// ⟨a, b⟩ over tensor lists, accumulated in f64 in order.
pub(crate) fn dot<F: Float>(a: &[Tensor<F>], b: &[Tensor<F>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.data().iter().zip(y.data()))
        .map(|(&p, &q)| p.to_f64() * q.to_f64())
        .sum()
}

/// ‖a‖ over a tensor list.
pub fn norm<F: Float>(a: &[Tensor<F>]) -> f64 {
    dot(a, a).sqrt()
}

/// Zeros shaped like `like`.
pub(crate) fn zeros_like<F: Float>(like: &[Tensor<F>]) -> Vec<Tensor<F>> {
    like.iter().map(|t| Tensor::zeros(t.shape())).collect()
}

/// [`BloError::NonFiniteEstimate`] unless every tensor is finite.
pub(crate) fn check_finite<F: Float>(
    what: &'static str,
    outer_step: u64,
    ts: &[&[Tensor<F>]],
) -> Result<(), BloError> {
    if ts.iter().all(|t| tensors_finite(t.iter())) {
        Ok(())
    } else {
        Err(BloError::NonFiniteEstimate {
            what,
            task: None,
            outer_step,
        })
    }
}

/// The products SOBA and AmIGO need at (θ, φ, v), from ONE dual pass of L_in
/// with the tangent v on φ ([`crate::InnerWorkspace::inner_hvp`], the pass of
/// the exact estimators): ∇_φ L_in, H_φφ v and H_θφ v.
#[derive(Clone, Debug)]
pub struct InnerProducts<F: Float> {
    /// L_in(θ, φ; j).
    pub inner_loss: F,
    /// ∇_φ L_in(θ, φ; j).
    pub grad_phi: Vec<Tensor<F>>,
    /// H_φφ v = ∂²L_in/∂φ² · v.
    pub hv: Vec<Tensor<F>>,
    /// H_θφ v = ∂²L_in/∂θ∂φ · v (the mixed product M v).
    pub mv: Vec<Tensor<F>>,
}

/// The one dual pass behind [`InnerProducts`] (counted as one HVP in `work`).
///
/// # Errors
/// [`BloError::NonFinite`] naming index j if the loss is not finite.
#[allow(clippy::too_many_arguments)]
pub fn inner_products<F: Float, P: Problem<F>>(
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    j: usize,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    v: &[Tensor<F>],
    work: &mut Work,
) -> Result<InnerProducts<F>, BloError> {
    let p = ws.inner.inner_hvp(problem, task, j, theta, phi, v, None)?;
    work.hvps += 1;
    Ok(InnerProducts {
        inner_loss: p.loss,
        grad_phi: p.grad_phi,
        hv: p.tangent_phi,
        mv: p.tangent_theta,
    })
}

/// A loss and its gradients over (θ, φ).
pub(crate) type LossGrads<F> = (F, Vec<Tensor<F>>, Vec<Tensor<F>>);

/// One gradient of L_out over (θ, φ): (L_out, ∇_θ L_out, ∇_φ L_out).
pub(crate) fn outer_gradient<F: Float, P: Problem<F>>(
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    work: &mut Work,
) -> Result<LossGrads<F>, BloError> {
    let g = ws.inner.outer_grad(problem, task, theta, phi)?;
    work.gradients += 1;
    Ok((g.loss, g.theta, g.phi))
}

/// f(x) and ∇f(x) of any objective by one reverse pass, counted as `cost`
/// gradients.
///
/// # Errors
/// [`BloError::NonFinite`] naming `what` and the inner-loss index j if the
/// value or a gradient is not finite.
pub(crate) fn checked_grad<F: Float, O: hvp::Objective<F>>(
    ws: &mut SolverWorkspace<F>,
    obj: &O,
    x: &[Tensor<F>],
    (what, j): (&'static str, usize),
    cost: u64,
    work: &mut Work,
) -> Result<(F, Vec<Tensor<F>>), BloError> {
    let (l, g) = ws.ws.value_and_grad(obj, x);
    work.gradients += cost;
    if !(l.is_finite() && tensors_finite(g.iter())) {
        return Err(BloError::NonFinite {
            what,
            task: 0,
            step: j,
        });
    }
    Ok((l, g))
}

/// One gradient of L_in(·, ·; j) over (θ, φ): (L_in, ∇_θ L_in, ∇_φ L_in).
pub(crate) fn inner_gradient<F: Float, P: Problem<F>>(
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    j: usize,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    work: &mut Work,
) -> Result<LossGrads<F>, BloError> {
    let mut x: Vec<Tensor<F>> = theta.to_vec();
    x.extend(phi.iter().cloned());
    let obj = InnerObjective::joint(problem, task, j, theta.len());
    let what = ("inner loss or gradient", j);
    let (l, mut g) = checked_grad(ws, &obj, &x, what, 1, work)?;
    let gp = g.split_off(theta.len());
    Ok((l, g, gp))
}

/// One gradient of L_in(θ, ·; j) over φ alone (θ a constant): (L_in, ∇_φ L_in).
pub(crate) fn inner_gradient_phi<F: Float, P: Problem<F>>(
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    j: usize,
    theta: &[Tensor<F>],
    phi: &[Tensor<F>],
    work: &mut Work,
) -> Result<(F, Vec<Tensor<F>>), BloError> {
    let obj = InnerObjective::of_phi(problem, task, j, theta);
    checked_grad(ws, &obj, phi, ("inner loss or gradient", j), 1, work)
}

/// Runs `steps` outer steps from `state`, calling `observe` after each.
///
/// # Errors
/// The first step's error; the state is then that of the last completed step.
pub fn run<F: Float, S: Solver<F>, P: Problem<F>>(
    solver: &S,
    ws: &mut SolverWorkspace<F>,
    problem: &P,
    task: &P::Task,
    state: &mut SolverState<F>,
    steps: u64,
    mut observe: impl FnMut(&SolverStep<F>, &SolverState<F>),
) -> Result<(), BloError> {
    for _ in 0..steps {
        let s = solver.step(ws, problem, task, state)?;
        observe(&s, state);
    }
    Ok(())
}

/// The checkpoint file's format tag.
pub const CHECKPOINT_FORMAT: &str = "blo-solver-checkpoint/1";

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointFile<S> {
    format: String,
    method: String,
    settings: String,
    state: S,
}

/// Saves a solver's state to `path` (JSON with the method's name and
/// settings; floats by bit pattern), atomically through
/// [`crate::io::write_atomic`]: a crash leaves the old file or the new one.
///
/// ```
/// use blo::problems::Quadratic;
/// use blo::solvers::{load_state, save_state, Soba, Solver, SolverWorkspace, StepSize};
/// let q = Quadratic::generate(3, 2, 1)?;
/// let soba = Soba::new(StepSize::constant(0.1), StepSize::constant(0.01))?;
/// let mut ws = SolverWorkspace::new();
/// let mut s = soba.init(&mut ws, &q, &(), q.theta0())?;
/// soba.step(&mut ws, &q, &(), &mut s)?;
/// let path = std::env::temp_dir().join(format!("blo-solver-doc-{}.json", std::process::id()));
/// save_state(&path, &soba, &s)?;
/// assert_eq!(load_state::<f64, _>(&path, &soba)?, s);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), blo::BloError>(())
/// ```
///
/// # Errors
/// [`BloError::Io`] naming the file.
pub fn save_state<F: Float, S: Solver<F>>(
    path: &Path,
    solver: &S,
    state: &SolverState<F>,
) -> Result<(), BloError> {
    let file = CheckpointFile {
        format: CHECKPOINT_FORMAT.to_string(),
        method: solver.name().to_string(),
        settings: solver.settings(),
        state,
    };
    let bytes = serde_json::to_vec(&file).expect("in-memory JSON serialisation");
    io::write_atomic(path, &bytes)
}

/// Loads a state saved by [`save_state`], checking that it was written by the
/// same method with the same settings.
///
/// # Errors
/// [`BloError::Io`] if the file cannot be read; [`BloError::Corrupt`] if it is
/// not a solver checkpoint (or a float has the wrong dtype);
/// [`BloError::SettingsMismatch`] if the method or its settings differ.
pub fn load_state<F: Float, S: Solver<F>>(
    path: &Path,
    solver: &S,
) -> Result<SolverState<F>, BloError> {
    let bytes = io::read_file(path)?;
    let corrupt = |reason: String| BloError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: CheckpointFile<SolverState<F>> = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("not a solver checkpoint: {e}")))?;
    if file.format != CHECKPOINT_FORMAT {
        return Err(corrupt(format!(
            "format {:?}, expected {CHECKPOINT_FORMAT:?}",
            file.format
        )));
    }
    for (field, saved, run) in [
        ("method", file.method, solver.name().to_string()),
        ("settings", file.settings, solver.settings()),
    ] {
        if saved != run {
            return Err(BloError::SettingsMismatch {
                path: path.to_path_buf(),
                field: field.to_string(),
                checkpoint: saved,
                run,
            });
        }
    }
    Ok(file.state)
}
