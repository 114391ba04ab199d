//! Meta-training: stochastic optimisation of F(θ) = E_τ L_out(θ, φ_r(θ); τ).
//!
//! Each outer step k draws a meta-batch of B tasks, estimates each task's
//! hypergradient g_i with an [`Estimator`], and updates θ with an outer
//! [`Optimiser`] on the mean
//!
//! ḡ_k = (1/B)·Σ_{i<B} g_i  (summed in task order i = 0, 1, …, B − 1).
//!
//! # Determinism
//!
//! Task i of step k draws from its own random streams, derived from
//! (seed, k, i) by [`task_rng`]: one stream samples the task, another drives
//! the estimator (e.g. UFO's coin). Tasks run in parallel with rayon, but the
//! estimates are collected in task order and summed sequentially, so the result
//! is bit-identical for any number of threads. A run resumed from a checkpoint
//! continues bit-identically too: the streams depend on (seed, k, i) only, and
//! the optimiser and estimator states are saved exactly.
//!
//! # Failure
//!
//! A non-finite loss or gradient in any task aborts the step with the
//! [`BloError`] naming the task index (and the inner step, when the estimator
//! reports it); θ, the optimiser and the estimator are left untouched.
//!
//! # Files
//!
//! - [`Trainer::log_jsonl`]: one JSON object per step ([`StepReport`]).
//! - [`Trainer::checkpoint_every`]: `theta-<step>.safetensors` (θ, tensors
//!   named `theta.0`, `theta.1`, … or [`Trainer::param_names`]) and
//!   `trainer.json` ([`CheckpointState`]: step, seed, optimiser and estimator
//!   state, the θ file's name and a fingerprint of its content, the run's
//!   settings, and a fingerprint of the JSON itself), each written
//!   atomically, the JSON last; [`read_checkpoint`] loads θ back, checking
//!   every field.
//! - [`Trainer::resume_from`]: continue from such a directory; a run whose
//!   settings ([`Trainer::settings`]) differ from the checkpoint's is refused
//!   unless [`Trainer::force_resume`].
//! - [`Trainer::planned`]: the estimator is chosen by the planner
//!   ([`plan_estimator`]) at θ₀; the checkpoint records its report (the choice
//!   and the figures it compared), and a resumed run continues with that
//!   choice instead of planning again.
//!
//! # Bad settings
//!
//! Builder methods never panic on values; [`Trainer::run`] starts with
//! [`Trainer::validate`] and returns [`BloError::InvalidHyperparameter`]
//! before the first step.
//!
//! ```
//! use blo::train::Trainer;
//! use blo::{BloError, Exact, InnerLoop, Policy, Problem, Sgd};
//! use rand::Rng;
//! use rand_chacha::ChaCha8Rng;
//! use tape::{Real, Tape, Tensor, Var};
//!
//! // MAML on tasks c: L_in = L_out = ½(φ − c)², one inner step with α = ½, so
//! // φ_1 − c = (θ − c)/2 and F(θ) = E (θ − c)²/8, minimised at θ = E[c].
//! struct Quad { inner: InnerLoop }
//! impl Problem<f64> for Quad {
//!     type Task = f64;
//!     fn inner_loop(&self) -> &InnerLoop { &self.inner }
//!     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
//!         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
//!         (phi[0] - *c).square().sum() * 0.5
//!     }
//!     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
//!         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
//!         self.inner_loss(t, c, 1, th, phi)
//!     }
//! }
//! // c ~ U(1, 3): the minimiser of F is E[c] = 2.
//! let sampler = |rng: &mut ChaCha8Rng| rng.gen_range(1.0..3.0);
//! let problem = Quad { inner: InnerLoop::sgd(1, 0.5)? };
//! let out = Trainer::new(problem, sampler, Exact::new(Policy::StoreAll)?,
//!                        Sgd::linear_decay(2.0, 200), vec![Tensor::scalar(0.0)])
//!     .meta_batch(32)
//!     .steps(200)
//!     .seed(7)
//!     .run()?;
//! assert!((out.theta[0].item() - 2.0).abs() < 0.1, "{}", out.theta[0].item());
//! assert_eq!(out.history.len(), 200);
//! # Ok::<(), BloError>(())
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::Value;
use tape::{Float, Tensor};

use crate::comm::{self, Communicator, Local};
use crate::error::BloError;
use crate::estimators::planner::{plan_estimator, Choice, PlanSpec, PlannerReport};
use crate::estimators::{Estimate, Estimator, Stats};
use crate::io;
use crate::outer::{Optimiser, OptimiserState};
use crate::problem::{check_start, Problem};

/// Draws tasks τ for a [`Problem`] from a random stream.
///
/// Implemented for every `Fn(&mut ChaCha8Rng) -> Task + Sync` closure.
///
/// ```
/// use blo::train::TaskSampler;
/// use rand::Rng;
/// use rand_chacha::ChaCha8Rng;
/// use rand::SeedableRng;
/// let sampler = |rng: &mut ChaCha8Rng| rng.gen_range(0..10_usize);
/// let mut rng = ChaCha8Rng::seed_from_u64(1);
/// assert!(sampler.sample(&mut rng) < 10);
/// ```
pub trait TaskSampler<Task>: Sync {
    /// One task, drawn from `rng` (the task's own stream; see [`task_rng`]).
    fn sample(&self, rng: &mut ChaCha8Rng) -> Task;
}

impl<Task, C: Fn(&mut ChaCha8Rng) -> Task + Sync> TaskSampler<Task> for C {
    fn sample(&self, rng: &mut ChaCha8Rng) -> Task {
        self(rng)
    }
}

/// A boxed estimator is an estimator, so a program can pick one at run time:
///
/// ```
/// # use blo::{Estimator, Exact, FirstOrder, Policy, Problem, Ufo};
/// fn pick<P: Problem<f64>>(name: &str) -> Box<dyn Estimator<f64, P>> {
///     match name {
///         "fo" => Box::new(FirstOrder::new()),
///         "exact" => Box::new(Exact::new(Policy::Recompute).unwrap()),
///         _ => Box::new(Ufo::adaptive()),
///     }
/// }
/// # struct Q { inner: blo::InnerLoop }
/// # impl Problem<f64> for Q {
/// #     type Task = f64;
/// #     fn inner_loop(&self) -> &blo::InnerLoop { &self.inner }
/// #     fn inner_loss<'t, T: tape::Real<Base = f64>>(&self, _t: &'t tape::Tape<T>, c: &f64, _j: usize,
/// #         _th: &[tape::Var<'t, T>], phi: &[tape::Var<'t, T>]) -> tape::Var<'t, T> {
/// #         (phi[0] - *c).square().sum() }
/// #     fn outer_loss<'t, T: tape::Real<Base = f64>>(&self, t: &'t tape::Tape<T>, c: &f64,
/// #         th: &[tape::Var<'t, T>], phi: &[tape::Var<'t, T>]) -> tape::Var<'t, T> { self.inner_loss(t, c, 1, th, phi) }
/// # }
/// assert_eq!(pick::<Q>("fo").name(), "first-order");
/// ```
impl<F, P, E> Estimator<F, P> for Box<E>
where
    F: Float,
    P: Problem<F>,
    E: Estimator<F, P> + ?Sized,
{
    fn estimate(
        &self,
        problem: &P,
        task: &P::Task,
        theta: &[Tensor<F>],
        rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        (**self).estimate(problem, task, theta, rng)
    }
    fn observe(&mut self, estimates: &[Estimate<F>]) {
        (**self).observe(estimates)
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn save_state(&self) -> Value {
        (**self).save_state()
    }
    fn load_state(&mut self, state: &Value) -> Result<(), String> {
        (**self).load_state(state)
    }
}

/// Which of a task's random streams (see [`task_rng`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The stream handed to [`TaskSampler::sample`].
    Sampler = 0,
    /// The stream handed to [`Estimator::estimate`].
    Estimator = 1,
}

/// The random stream of task `task` at outer step `step` for `purpose`:
/// ChaCha8 keyed by `seed_from_u64(seed)`, stream number `step`, starting at
/// word position (2·task + purpose)·2³⁶. Streams of distinct (step, task,
/// purpose) never overlap (each has 2³⁶ words, 256 GiB), for task < 2³¹.
///
/// # Panics
/// If `task >= 2³¹`.
///
/// ```
/// use blo::train::{task_rng, Stream};
/// use rand::RngCore;
/// let a = task_rng(7, 3, 1, Stream::Sampler).next_u64();
/// assert_eq!(a, task_rng(7, 3, 1, Stream::Sampler).next_u64()); // reproducible
/// assert_ne!(a, task_rng(7, 3, 2, Stream::Sampler).next_u64()); // other task
/// assert_ne!(a, task_rng(7, 4, 1, Stream::Sampler).next_u64()); // other step
/// assert_ne!(a, task_rng(7, 3, 1, Stream::Estimator).next_u64()); // other purpose
/// ```
#[track_caller]
pub fn task_rng(seed: u64, step: u64, task: usize, purpose: Stream) -> ChaCha8Rng {
    assert!(
        task < (1 << 31),
        "task_rng: task index {task} must be < 2^31"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    rng.set_word_pos(((2 * task as u128) + purpose as u128) << 36);
    rng
}

/// What one outer step did: written as one JSON line to the log and handed to
/// observers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepReport {
    /// The outer step k (0-based); θ now holds θ_{k+1}.
    pub step: u64,
    /// Mean outer loss over the meta-batch, (1/B)·Σ_i L_out(θ_k, φ_r; τ_i).
    pub mean_outer_loss: f64,
    /// ‖ḡ_k‖₂, the norm of the mean hypergradient that was applied.
    pub grad_norm: f64,
    /// The step size η_k used.
    pub learning_rate: f64,
    /// The estimator's costs summed over the meta-batch ([`Stats::add`]).
    pub stats: Stats,
    /// Wall-clock seconds of this step.
    pub step_seconds: f64,
    /// Wall-clock seconds since training began (across resumes).
    pub elapsed_seconds: f64,
}

impl StepReport {
    /// The names of the fields that hold timings (they differ between runs).
    pub const TIMING_FIELDS: [&'static str; 2] = ["step_seconds", "elapsed_seconds"];
}

/// Watches training: called after every outer step.
///
/// Closures `FnMut(&StepReport)` are observers; use [`Trainer::on_step_theta`]
/// for a closure that also sees θ.
///
/// ```
/// use blo::train::{Observer, StepReport};
/// struct Count(usize);
/// impl Observer<f64> for Count {
///     fn on_step(&mut self, _r: &StepReport) { self.0 += 1; }
/// }
/// ```
pub trait Observer<F: Float> {
    /// Called after outer step `report.step`.
    fn on_step(&mut self, report: &StepReport);
    /// Called after outer step `report.step` with θ_{k+1}; defaults to [`Observer::on_step`].
    fn on_step_theta(&mut self, report: &StepReport, theta: &[Tensor<F>]) {
        let _ = theta;
        self.on_step(report)
    }
}

impl<F: Float, C: FnMut(&StepReport)> Observer<F> for C {
    fn on_step(&mut self, report: &StepReport) {
        self(report)
    }
}

/// An observer closure that also sees θ (see [`Trainer::on_step_theta`]).
pub struct ThetaObserver<C>(pub C);

impl<F: Float, C: FnMut(&StepReport, &[Tensor<F>])> Observer<F> for ThetaObserver<C> {
    fn on_step(&mut self, _report: &StepReport) {}
    fn on_step_theta(&mut self, report: &StepReport, theta: &[Tensor<F>]) {
        (self.0)(report, theta)
    }
}

/// What [`Trainer::run`] returns.
#[derive(Clone, Debug)]
pub struct TrainOutcome<F: Float> {
    /// θ after the last step.
    pub theta: Vec<Tensor<F>>,
    /// One report per step run by this call (a resumed run starts at the
    /// checkpoint's step).
    pub history: Vec<StepReport>,
}

/// The JSON half of a checkpoint (`trainer.json`), beside the θ file
/// `theta-<step>.safetensors` it names.
///
/// Saving writes the θ file first, then this JSON (each atomically), then
/// removes older θ files: the JSON's rename is the commit point, so after a
/// crash at any moment the directory holds a consistent pair — the new one or
/// the previous one.
///
/// Every field is checked on load ([`read_checkpoint`]): the whole file
/// against its `content_fingerprint` (so an edited or bit-flipped file is
/// refused even when it still parses), then each value against what a run can
/// have written. The run's settings ([`Trainer::settings`]) are recorded so a
/// resumed run with other settings is refused ([`Trainer::force_resume`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Format tag, [`CheckpointState::FORMAT`].
    pub format: String,
    /// Outer steps done; the next step is this one.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The meta-batch size B.
    pub meta_batch: usize,
    /// `"f32"` or `"f64"`.
    pub dtype: String,
    /// Tensor names in the safetensors file, in θ order.
    pub param_names: Vec<String>,
    /// Their shapes.
    pub param_shapes: Vec<Vec<usize>>,
    /// The safetensors file holding θ, in the same directory
    /// ([`CheckpointState::theta_file_name`]).
    pub theta_file: String,
    /// [`io::fingerprint`] of the safetensors file's bytes.
    pub theta_fingerprint: String,
    /// The estimator's name.
    pub estimator: String,
    /// The estimator's adaptive state ([`Estimator::save_state`]).
    pub estimator_state: Value,
    /// The outer optimiser's state.
    pub optimiser: OptimiserState,
    /// Wall-clock seconds of training so far.
    pub elapsed_seconds: f64,
    /// The planner's report in a planned run ([`Trainer::planned`]): the
    /// estimator it chose and every figure it compared. Absent (and not
    /// written) otherwise. Checked on load ([`PlannerReport::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<PlannerReport>,
    /// The settings of the run that wrote it ([`Trainer::settings`]);
    /// `None` in checkpoints of format `blo-checkpoint/1`.
    #[serde(default)]
    pub settings: Option<BTreeMap<String, String>>,
    /// [`io::fingerprint`] of this file's bytes as written, with these 16 hex
    /// digits replaced by `0`s; `None` in format `blo-checkpoint/1`. Must stay
    /// the last field (it is located in the text by its key).
    #[serde(default)]
    pub content_fingerprint: Option<String>,
}

impl CheckpointState {
    /// The format tag written and expected.
    pub const FORMAT: &'static str = "blo-checkpoint/2";
    /// The format of checkpoints written before settings and the content
    /// fingerprint were recorded: readable by [`read_checkpoint`], resumable
    /// only with [`Trainer::force_resume`].
    pub const LEGACY_FORMAT: &'static str = "blo-checkpoint/1";
    /// The key that introduces the content fingerprint in the file.
    const FP_KEY: &'static [u8] = b"\"content_fingerprint\": \"";

    /// The file's bytes: pretty JSON ending in a newline, with
    /// `content_fingerprint` set to the fingerprint of these bytes with its
    /// own 16 digits zeroed.
    fn encode(&self) -> Vec<u8> {
        let mut s = self.clone();
        s.content_fingerprint = Some("0".repeat(16));
        let mut text = serde_json::to_string_pretty(&s)
            .expect("a checkpoint state serialises")
            .into_bytes();
        text.push(b'\n');
        let at =
            find_unique(&text, Self::FP_KEY).expect("the key is written once") + Self::FP_KEY.len();
        let fp = io::fingerprint(&text);
        text[at..at + 16].copy_from_slice(fp.as_bytes());
        text
    }

    /// Parses `bytes` read from `path` and, for the current format, checks
    /// the content fingerprint.
    fn decode(path: &Path, bytes: &[u8]) -> Result<Self, BloError> {
        let state: CheckpointState =
            serde_json::from_slice(bytes).map_err(|e| BloError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("bad JSON: {e}"),
            })?;
        if state.format == Self::LEGACY_FORMAT {
            return Ok(state);
        }
        if state.format != Self::FORMAT {
            return Err(field_err(
                path,
                "format",
                format!("{:?}", state.format),
                format!("expected {:?} (or {:?})", Self::FORMAT, Self::LEGACY_FORMAT),
            ));
        }
        let stored = state.content_fingerprint.clone().unwrap_or_default();
        let at = find_unique(bytes, Self::FP_KEY)
            .map(|i| i + Self::FP_KEY.len())
            .filter(|&i| bytes.get(i..i + 16) == Some(stored.as_bytes()));
        let Some(at) = at else {
            return Err(field_err(
                path,
                "content_fingerprint",
                format!("{:?}", state.content_fingerprint),
                "missing, malformed or not in the form written (16 hex digits, once)".into(),
            ));
        };
        let mut zeroed = bytes.to_vec();
        zeroed[at..at + 16].copy_from_slice(b"0000000000000000");
        let fp = io::fingerprint(&zeroed);
        if fp != stored {
            return Err(field_err(
                path,
                "content_fingerprint",
                stored,
                format!("the file hashes to {fp}: it was edited, torn or corrupted"),
            ));
        }
        Ok(state)
    }
    /// File name of this JSON state.
    pub const STATE_FILE: &'static str = "trainer.json";

    /// The θ file of the checkpoint after `step` steps: `theta-<step, 8 digits>.safetensors`.
    ///
    /// ```
    /// use blo::train::CheckpointState;
    /// assert_eq!(CheckpointState::theta_file_name(120), "theta-00000120.safetensors");
    /// ```
    pub fn theta_file_name(step: u64) -> String {
        format!("theta-{step:08}.safetensors")
    }
}

/// Reads the checkpoint in `dir` and checks it is whole and possible: the JSON
/// parses, has a known format, and (format 2) hashes to its
/// `content_fingerprint`; each field holds a value a trainer in `F` can have
/// written (dtype, meta-batch ≥ 1, θ file name of its step, names distinct and
/// one per shape, elapsed time finite and ≥ 0, the optimiser's step equal to
/// the step and its state consistent with θ's shapes, [`OptimiserState::check`]);
/// the θ file it names exists, its content fingerprint and header step match
/// the JSON, and it holds exactly the named tensors with the recorded shapes,
/// all finite. The estimator's state is checked when a trainer restores it
/// ([`Estimator::load_state`]). Returns the state and θ.
///
/// Useful to load trained parameters, e.g. for evaluation:
///
/// ```no_run
/// let (state, theta) = blo::train::read_checkpoint::<f32>("runs/maml/ckpt".as_ref())?;
/// println!("θ after {} steps: {} tensors", state.step, theta.len());
/// # Ok::<(), blo::BloError>(())
/// ```
///
/// # Errors
/// [`BloError::Io`] for a missing or unreadable file, [`BloError::Corrupt`]
/// naming the file and what is wrong, [`BloError::CheckpointField`] naming the
/// file, the field and its value.
pub fn read_checkpoint<F: Float>(
    dir: &Path,
) -> Result<(CheckpointState, Vec<Tensor<F>>), BloError> {
    let (json, theta) = read_checkpoint_files::<F>(dir)?;
    checkpoint_from_bytes(dir, &json, &theta)
}

/// The bytes of the checkpoint in `dir`: its JSON state (checked) and the θ
/// file it names ([`checkpoint_from_bytes`] checks it against the JSON).
fn read_checkpoint_files<F: Float>(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), BloError> {
    let json_path = io::join(dir, CheckpointState::STATE_FILE);
    let json = io::read_file(&json_path)?;
    let state = CheckpointState::decode(&json_path, &json)?;
    check_fields::<F>(&json_path, &state)?;
    let theta = io::read_file(&io::join(dir, &state.theta_file))?;
    Ok((json, theta))
}

/// [`read_checkpoint`] on the files' bytes (`dir` names them in errors).
fn checkpoint_from_bytes<F: Float>(
    dir: &Path,
    json: &[u8],
    bytes: &[u8],
) -> Result<(CheckpointState, Vec<Tensor<F>>), BloError> {
    let json_path = io::join(dir, CheckpointState::STATE_FILE);
    let state = CheckpointState::decode(&json_path, json)?;
    check_fields::<F>(&json_path, &state)?;
    let theta_path = io::join(dir, &state.theta_file);
    let bad = |reason: String| BloError::Corrupt {
        path: theta_path.clone(),
        reason,
    };
    let fp = io::fingerprint(bytes);
    if fp != state.theta_fingerprint {
        return Err(bad(format!(
            "content fingerprint {fp} differs from {} recorded in {} (torn, edited or from another checkpoint)",
            state.theta_fingerprint,
            json_path.display()
        )));
    }
    let meta = io::metadata_from_bytes(&theta_path, bytes)?;
    if meta.get("step") != Some(&state.step.to_string()) {
        return Err(bad(format!(
            "header step {:?} differs from step {} in {}",
            meta.get("step"),
            state.step,
            json_path.display()
        )));
    }
    let theta: Vec<Tensor<F>> = io::tensors_from_bytes(&theta_path, bytes, &state.param_names)?;
    for ((t, s), name) in theta
        .iter()
        .zip(&state.param_shapes)
        .zip(&state.param_names)
    {
        if t.dims() != s.as_slice() {
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}, {} records {s:?}",
                t.dims(),
                json_path.display()
            )));
        }
        if let Some(j) = t.data().iter().position(|x| !x.is_finite()) {
            return Err(bad(format!(
                "tensor {name:?} element {j} is {} (a trainer never commits a non-finite θ)",
                t.data()[j].to_f64()
            )));
        }
    }
    Ok((state, theta))
}

/// A [`BloError::CheckpointField`].
fn field_err(path: &Path, field: &str, value: impl ToString, reason: String) -> BloError {
    BloError::CheckpointField {
        path: path.to_path_buf(),
        field: field.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// The position of the only occurrence of `needle` in `hay`, if it occurs once.
fn find_unique(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut hits = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// Checks each field of a parsed checkpoint state (written to `path`) against
/// what a trainer in dtype `F` can have written.
fn check_fields<F: Float>(path: &Path, state: &CheckpointState) -> Result<(), BloError> {
    let err =
        |field: &str, value: String, reason: String| Err(field_err(path, field, value, reason));
    if state.dtype != F::NAME {
        return err(
            "dtype",
            state.dtype.clone(),
            format!("this run trains in {}", F::NAME),
        );
    }
    if state.meta_batch == 0 {
        return err(
            "meta_batch",
            "0".into(),
            "a meta-batch has at least one task".into(),
        );
    }
    let want = CheckpointState::theta_file_name(state.step);
    if state.theta_file != want {
        return err(
            "theta_file",
            format!("{:?}", state.theta_file),
            format!("the checkpoint of step {} names {want:?}", state.step),
        );
    }
    let hex = state.theta_fingerprint.len() == 16
        && state
            .theta_fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return err(
            "theta_fingerprint",
            format!("{:?}", state.theta_fingerprint),
            "expected 16 lowercase hex digits".into(),
        );
    }
    if state.param_names.len() != state.param_shapes.len() {
        return err(
            "param_names",
            format!("{:?}", state.param_names),
            format!(
                "{} names for {} shapes",
                state.param_names.len(),
                state.param_shapes.len()
            ),
        );
    }
    let mut sorted = state.param_names.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != state.param_names.len() || state.param_names.is_empty() {
        return err(
            "param_names",
            format!("{:?}", state.param_names),
            "expected at least one name, all distinct".into(),
        );
    }
    if !(state.elapsed_seconds.is_finite() && state.elapsed_seconds >= 0.0) {
        return err(
            "elapsed_seconds",
            state.elapsed_seconds.to_string(),
            "expected a finite time >= 0".into(),
        );
    }
    if state.optimiser.step != state.step {
        return err(
            "optimiser.step",
            state.optimiser.step.to_string(),
            format!(
                "the trainer's optimiser takes one step per outer step, and step is {}",
                state.step
            ),
        );
    }
    if let Err(f) = state.optimiser.check(Some(&state.param_shapes)) {
        return err(&format!("optimiser.{}", f.field), f.value, f.reason);
    }
    if let Some(report) = &state.planner {
        // The report against the r the run recorded (else its own r).
        let r = state
            .settings
            .as_ref()
            .and_then(|s| s.get("inner.steps"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(report.r);
        if let Err(f) = report.check(r) {
            return err(&format!("planner.{}", f.field), f.value, f.reason);
        }
    }
    if state.format == CheckpointState::FORMAT && state.settings.is_none() {
        return err(
            "settings",
            "(absent)".into(),
            format!(
                "format {} records the run's settings",
                CheckpointState::FORMAT
            ),
        );
    }
    Ok(())
}

/// Whether `dir` holds a checkpoint (its JSON state file exists).
pub fn checkpoint_exists(dir: &Path) -> bool {
    dir.join(CheckpointState::STATE_FILE).is_file()
}

/// Meta-training driver: a builder, then [`Trainer::run`].
///
/// θ_{k+1} = optimiser(θ_k, ḡ_k) for k = 0 … K − 1 where ḡ_k is the mean of the
/// estimator's hypergradients on B sampled tasks (see the [module docs](self)).
///
/// ```
/// # use blo::train::Trainer;
/// # use blo::{Adam, BloError, FirstOrder, InnerLoop, Problem};
/// # use rand_chacha::ChaCha8Rng;
/// # use tape::{Real, Tape, Tensor, Var};
/// # struct Quad { inner: InnerLoop }
/// # impl Problem<f64> for Quad {
/// #     type Task = f64;
/// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
/// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
/// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
/// #         (phi[0] - *c).square().sum() * 0.5 }
/// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
/// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 1, th, phi) }
/// # }
/// // Every task is c = 1 (see the module example for the problem `Quad`).
/// let mut losses = Vec::new();
/// let dir = std::env::temp_dir().join(format!("blo-trainer-doc-{}", std::process::id()));
/// let problem = Quad { inner: InnerLoop::sgd(2, 0.5)? };
/// let mut trainer = Trainer::new(problem, |_: &mut ChaCha8Rng| 1.0, FirstOrder::new(),
///                                Adam::new(0.1), vec![Tensor::scalar(0.0_f64)])
///     .steps(50)
///     .log_jsonl(dir.join("log.jsonl"))
///     .checkpoint_every(25, &dir)
///     .on_step(|r: &blo::train::StepReport| losses.push(r.mean_outer_loss));
/// let out = trainer.run()?;
/// drop(trainer);
/// assert_eq!(losses.len(), 50);
/// assert!(losses[49] < 0.01 * losses[0]);
/// assert!(blo::train::checkpoint_exists(&dir));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), BloError>(())
/// ```
pub struct Trainer<'o, F, P, S, E, O>
where
    F: Float,
    P: Problem<F>,
{
    problem: P,
    sampler: S,
    estimator: E,
    optimiser: O,
    theta: Vec<Tensor<F>>,
    names: Vec<String>,
    meta_batch: usize,
    steps: u64,
    seed: u64,
    threads: Option<usize>,
    step: u64,
    elapsed_before: f64,
    log_path: Option<PathBuf>,
    checkpoint: Option<(u64, PathBuf)>,
    resume: Option<PathBuf>,
    force: bool,
    overrides: Vec<SettingDiff>,
    data_id: Option<String>,
    progress: bool,
    observers: Vec<Box<dyn Observer<F> + 'o>>,
    comm: Box<dyn Communicator + 'o>,
    planner: Option<Planning<'o, E>>,
}

/// A planned run's planner ([`Trainer::planned`]): what it is asked, its
/// report once it has run (or been restored), and how an estimator is built
/// from a choice.
struct Planning<'o, E> {
    spec: PlanSpec,
    report: Option<PlannerReport>,
    build: BuildFromChoice<'o, E>,
}

/// Builds a trainer's estimator from the planner's choice.
type BuildFromChoice<'o, E> = Box<dyn Fn(&Choice) -> Result<E, BloError> + 'o>;

/// The outer-step number whose task streams draw a planned run's pilot
/// tasks ([`task_rng`]`(seed, PILOT_STEP, i, Sampler)`): a step no run
/// reaches, so the pilot shares no stream with training.
pub const PILOT_STEP: u64 = u64::MAX;

/// The estimator of a planned trainer before its planner has run.
struct Unplanned;

impl<F: Float, P: Problem<F>> Estimator<F, P> for Unplanned {
    fn estimate(
        &self,
        _problem: &P,
        _task: &P::Task,
        _theta: &[Tensor<F>],
        _rng: &mut ChaCha8Rng,
    ) -> Result<Estimate<F>, BloError> {
        Err(BloError::invalid(
            "estimator",
            "(not planned)",
            "a planned trainer estimates only after Trainer::run has planned",
        ))
    }
    fn name(&self) -> String {
        "planned (the planner has not run)".into()
    }
}

/// A setting that differs between a checkpoint and the run resuming from it
/// (see [`Trainer::force_resume`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingDiff {
    /// The setting's name (a key of [`Trainer::settings`]).
    pub field: String,
    /// Its value in the checkpoint (`(absent)` if not recorded).
    pub checkpoint: String,
    /// Its value in this run.
    pub run: String,
}

/// The text recorded for a setting a checkpoint does not have.
const ABSENT: &str = "(absent)";

impl<'o, F, P, S, E, O> Trainer<'o, F, P, S, E, O>
where
    F: Float,
    P: Problem<F>,
    S: TaskSampler<P::Task>,
    E: Estimator<F, P>,
    O: Optimiser<F>,
{
    /// A trainer starting from θ₀ = `theta0`, with meta-batch 1, 0 steps,
    /// seed 0, no log, no checkpoints, and a progress bar when stderr is a
    /// terminal.
    pub fn new(problem: P, sampler: S, estimator: E, optimiser: O, theta0: Vec<Tensor<F>>) -> Self {
        let names = (0..theta0.len()).map(|i| format!("theta.{i}")).collect();
        Trainer {
            problem,
            sampler,
            estimator,
            optimiser,
            theta: theta0,
            names,
            meta_batch: 1,
            steps: 0,
            seed: 0,
            threads: None,
            step: 0,
            elapsed_before: 0.0,
            log_path: None,
            checkpoint: None,
            resume: None,
            force: false,
            overrides: Vec::new(),
            data_id: None,
            progress: true,
            observers: Vec::new(),
            comm: Box::new(Local),
            planner: None,
        }
    }

    /// The planner's report in a planned run ([`Trainer::planned`]), once it
    /// has planned (at the start of [`Trainer::run`]) or been restored from a
    /// checkpoint; `None` otherwise.
    pub fn planner_report(&self) -> Option<&PlannerReport> {
        self.planner.as_ref().and_then(|p| p.report.as_ref())
    }

    /// Plans, if this is a planned run that has not: `pilot_tasks` tasks
    /// from the streams of [`PILOT_STEP`], measured at the current θ.
    fn plan_if_needed(&mut self) -> Result<(), BloError> {
        let Some(pl) = self.planner.as_mut().filter(|p| p.report.is_none()) else {
            return Ok(());
        };
        let tasks: Vec<P::Task> = (0..pl.spec.pilot_tasks)
            .map(|i| {
                self.sampler
                    .sample(&mut task_rng(self.seed, PILOT_STEP, i, Stream::Sampler))
            })
            .collect();
        let report = plan_estimator(
            &self.problem,
            &tasks,
            &self.theta,
            pl.spec.budget,
            &pl.spec.params,
        )?;
        self.estimator = (pl.build)(&report.choice().choice)?;
        pl.report = Some(report);
        Ok(())
    }

    /// Tasks per outer step, B ≥ 1. Like every builder setting, it is
    /// checked by [`Trainer::validate`], which [`Trainer::run`] calls before
    /// its first step: B = 0 is an [`BloError::InvalidHyperparameter`] there.
    pub fn meta_batch(mut self, b: usize) -> Self {
        self.meta_batch = b;
        self
    }

    /// Total outer steps K: [`Trainer::run`] runs until K steps are done
    /// (counting those before a resume).
    pub fn steps(mut self, k: u64) -> Self {
        self.steps = k;
        self
    }

    /// The seed from which every task's streams derive ([`task_rng`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs the meta-batch on a dedicated rayon pool of `n` ≥ 1 threads
    /// (default: the current pool). Results do not depend on `n`. `n = 0` is
    /// reported by [`Trainer::validate`].
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Names of the θ tensors in checkpoints (default `theta.0`, `theta.1`, …).
    ///
    /// # Panics
    /// If there is not one distinct name per θ tensor.
    #[track_caller]
    pub fn param_names<N: Into<String>>(mut self, names: impl IntoIterator<Item = N>) -> Self {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        assert_eq!(
            names.len(),
            self.theta.len(),
            "Trainer::param_names: {} names for {} θ tensors",
            names.len(),
            self.theta.len()
        );
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            names.len(),
            "Trainer::param_names: duplicate names in {names:?}"
        );
        self.names = names;
        self
    }

    /// Appends one JSON object per step ([`StepReport`]) to `path` (its
    /// directory is created if needed). A fresh run truncates the file; a resumed run keeps the lines of steps before the
    /// checkpoint and drops later ones.
    pub fn log_jsonl(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_path = Some(path.into());
        self
    }

    /// Writes a checkpoint to `dir` after every `every` ≥ 1 steps and after
    /// the last one (`dir` is created if needed). `every = 0` is reported by
    /// [`Trainer::validate`].
    pub fn checkpoint_every(mut self, every: u64, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some((every, dir.into()));
        self
    }

    /// Continues from the checkpoint in `dir` when [`Trainer::run`] starts: θ,
    /// the step count, the optimiser's and the estimator's states are restored.
    ///
    /// Every field of the checkpoint is checked ([`read_checkpoint`]), and the
    /// settings it records must equal this run's ([`Trainer::settings`]): the
    /// first that differs is a [`BloError::SettingsMismatch`] naming it with
    /// both values, unless [`Trainer::force_resume`] is set. A checkpoint of
    /// the older format [`CheckpointState::LEGACY_FORMAT`] records no
    /// settings: resuming from it is a `SettingsMismatch` on `settings`, and
    /// needs `force_resume`.
    pub fn resume_from(mut self, dir: impl Into<PathBuf>) -> Self {
        self.resume = Some(dir.into());
        self
    }

    /// With `true`, [`Trainer::resume_from`] continues even when settings
    /// differ from the checkpoint's (or it records none): each difference is
    /// printed to stderr as `blo: resume forced: …` and kept in
    /// [`Trainer::resume_overrides`]; the run continues with *this* run's
    /// settings (e.g. a new optimiser configuration keeps the saved step count
    /// and moments), and later checkpoints record them. A different estimator
    /// starts from its fresh state. Never forced: a file that fails its checks
    /// (corrupt), another dtype, other θ names or shapes, another optimiser
    /// kind.
    pub fn force_resume(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// An identity of the task distribution (data set, its version or
    /// split, sampler options…), recorded in checkpoints as the setting
    /// `data` and compared on resume like the others. The trainer cannot see
    /// inside a [`TaskSampler`], so without this call a resumed run's data is
    /// not checked (the setting reads `(not set)`).
    pub fn data_id(mut self, id: impl Into<String>) -> Self {
        self.data_id = Some(id.into());
        self
    }

    /// Runs as one rank of a distributed run ([`crate::comm`]; default
    /// [`Local`], one rank). Each meta-batch's tasks are split into
    /// contiguous blocks ([`comm::block`]); each rank estimates its block with
    /// the usual per-task streams ([`task_rng`]), the results are gathered to
    /// every rank and summed in task order, so θ, the log and the estimator's
    /// adaptive state are bit-identical to a one-process run for any number
    /// of ranks and threads. Every rank must be given the same settings (they
    /// are compared when [`Trainer::run`] starts: a difference is a
    /// [`BloError::RankFailed`] naming the rank and the setting).
    ///
    /// Rank 0 alone writes the log and checkpoints; on resume it reads the
    /// checkpoint and sends it to the others (which need no shared disk), so a
    /// run may resume with another number of ranks. Observers are called on
    /// every rank. A rank that fails (an error in one of its tasks, a panic, a
    /// lost process) makes every other rank return [`BloError::RankFailed`]
    /// naming it and the step; the failing rank returns its own error (or
    /// resumes its panic).
    ///
    /// ```
    /// # use blo::train::Trainer;
    /// # use blo::{BloError, FirstOrder, InnerLoop, Problem, Sgd};
    /// # use blo::comm::ThreadComm;
    /// # use rand::Rng;
    /// # use rand_chacha::ChaCha8Rng;
    /// # use tape::{Real, Tape, Tensor, Var};
    /// # #[derive(Clone)]
    /// # struct Quad { inner: InnerLoop }
    /// # impl Problem<f64> for Quad {
    /// #     type Task = f64;
    /// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    /// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
    /// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    /// #         (phi[0] - *c).square().sum() * 0.5 }
    /// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
    /// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 1, th, phi) }
    /// # }
    /// let train = |comm: Option<ThreadComm>| {
    ///     let t = Trainer::new(Quad { inner: InnerLoop::sgd(1, 0.5).unwrap() },
    ///                          |rng: &mut ChaCha8Rng| rng.gen_range(1.0..3.0),
    ///                          FirstOrder::new(), Sgd::constant(0.5), vec![Tensor::scalar(0.0)])
    ///         .meta_batch(5)
    ///         .steps(10);
    ///     let mut t = match comm { Some(c) => t.communicator(c), None => t };
    ///     t.run().unwrap().theta[0].item()
    /// };
    /// let one = train(None);
    /// // Three ranks on threads (tasks 0–1, 2–3, 4): the same θ, bit for bit, on every rank.
    /// for theta in ThreadComm::spawn(3, |c| train(Some(c))) {
    ///     assert_eq!(theta.unwrap().to_bits(), one.to_bits());
    /// }
    /// ```
    pub fn communicator(mut self, comm: impl Communicator + 'o) -> Self {
        self.comm = Box::new(comm);
        self
    }

    /// This run's communicator ([`Trainer::communicator`]).
    pub fn comm(&self) -> &dyn Communicator {
        &*self.comm
    }

    /// The settings a resumed run must share with the run that wrote the
    /// checkpoint, by name: `dtype`, `seed`, `meta_batch`, `inner.steps` (r),
    /// `inner.optimizer` (the inner optimiser with α, β or the Meta-SGD
    /// index), `estimator` (its name, which carries its configuration such as
    /// q or the checkpoint policy; an adaptive UFO also checks q_min and the
    /// decay in its state), `optimiser` and `optimiser.config` (the outer
    /// optimiser, its hyperparameters and step-size schedule), `theta` (names
    /// and shapes) and `data` ([`Trainer::data_id`]); in a planned run
    /// ([`Trainer::planned`]) also `planner.budget`, `planner.pilot_tasks`,
    /// `planner.floor` and `planner.fo_tolerance` ([`PlanSpec::settings`]).
    /// The number of steps K is not a setting: a run may be resumed to train
    /// longer.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let inner = self.problem.inner_loop();
        let opt = self.optimiser.state();
        let theta = self
            .names
            .iter()
            .zip(&self.theta)
            .map(|(n, t)| format!("{n} {:?}", t.dims()))
            .collect::<Vec<_>>()
            .join(", ");
        [
            ("dtype", F::NAME.to_string()),
            ("seed", self.seed.to_string()),
            ("meta_batch", self.meta_batch.to_string()),
            ("inner.steps", inner.steps.to_string()),
            ("inner.optimizer", format!("{:?}", inner.optimizer)),
            ("estimator", self.estimator.name()),
            ("optimiser", opt.kind),
            ("optimiser.config", opt.config.to_string()),
            ("theta", theta),
            (
                "data",
                self.data_id.clone().unwrap_or_else(|| "(not set)".into()),
            ),
        ]
        .into_iter()
        .chain(self.planner.iter().flat_map(|p| p.spec.settings()))
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The settings that differed from the checkpoint's when the last
    /// [`Trainer::run`] resumed with [`Trainer::force_resume`].
    pub fn resume_overrides(&self) -> &[SettingDiff] {
        &self.overrides
    }

    /// Checks the trainer's configuration without running: B ≥ 1, threads ≥
    /// 1, checkpoint interval ≥ 1, the outer optimiser's hyperparameters
    /// ([`Optimiser::validate`]), the inner loop ([`crate::InnerLoop::validate`])
    /// and θ against it ([`crate::InnerLoop::validate_theta`]: Meta-SGD's
    /// `lr_index` in range, step sizes finite and ≥ 0), θ finite, and the
    /// optimiser fresh (its step count is the trainer's, so a checkpoint can
    /// be checked). [`Trainer::run`] calls it first; builder methods do not
    /// panic on bad values, so existing chains keep compiling and the error
    /// comes from here.
    ///
    /// # Errors
    /// [`BloError::InvalidHyperparameter`] naming the setting and its value.
    ///
    /// ```
    /// # use blo::train::Trainer;
    /// # use blo::{BloError, FirstOrder, InnerLoop, Problem, Sgd};
    /// # use rand_chacha::ChaCha8Rng;
    /// # use tape::{Real, Tape, Tensor, Var};
    /// # struct Quad { inner: InnerLoop }
    /// # impl Problem<f64> for Quad {
    /// #     type Task = f64;
    /// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    /// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
    /// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    /// #         (phi[0] - *c).square().sum() }
    /// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
    /// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 1, th, phi) }
    /// # }
    /// let mut t = Trainer::new(Quad { inner: InnerLoop::sgd(1, 0.5)? }, |_: &mut ChaCha8Rng| 1.0,
    ///                          FirstOrder::new(), Sgd::constant(0.1), vec![Tensor::scalar(0.0)])
    ///     .meta_batch(0)
    ///     .steps(5);
    /// let e = t.run().unwrap_err();
    /// assert!(matches!(e, BloError::InvalidHyperparameter { name: "meta_batch", .. }), "{e}");
    /// # Ok::<(), BloError>(())
    /// ```
    pub fn validate(&self) -> Result<(), BloError> {
        if self.meta_batch == 0 {
            return Err(BloError::invalid(
                "meta_batch",
                0,
                "a meta-batch needs at least one task",
            ));
        }
        if self.threads == Some(0) {
            return Err(BloError::invalid("threads", 0, "need at least one thread"));
        }
        if let Some(pl) = self.planner.as_ref().filter(|p| p.spec.pilot_tasks == 0) {
            return Err(BloError::invalid(
                "planner.pilot_tasks",
                pl.spec.pilot_tasks,
                "the planner measures at least one pilot task",
            ));
        }
        if let Some((0, dir)) = &self.checkpoint {
            return Err(BloError::invalid(
                "checkpoint_every",
                format!("0 (directory {})", dir.display()),
                "checkpoint at least every step",
            ));
        }
        self.optimiser.validate()?;
        let inner = self.problem.inner_loop();
        inner.validate()?;
        inner.validate_theta(&self.theta)?;
        for (name, t) in self.names.iter().zip(&self.theta) {
            if let Some(j) = t.data().iter().position(|x| !x.is_finite()) {
                return Err(BloError::invalid(
                    "theta",
                    format!("{name} element {j} = {}", t.data()[j].to_f64()),
                    "θ_0 must be finite",
                ));
            }
        }
        if self.resume.is_none() && self.optimiser.steps_taken() != self.step {
            return Err(BloError::invalid(
                "optimiser",
                format!("{} steps taken", self.optimiser.steps_taken()),
                "the trainer counts outer steps from a fresh optimiser",
            ));
        }
        Ok(())
    }

    /// Shows (when stderr is a terminal) or hides the progress bar.
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// Adds an observer.
    pub fn observer(mut self, observer: impl Observer<F> + 'o) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// Adds a closure called with each [`StepReport`].
    pub fn on_step(self, f: impl FnMut(&StepReport) + 'o) -> Self {
        struct Wrap<C>(C);
        impl<F: Float, C: FnMut(&StepReport)> Observer<F> for Wrap<C> {
            fn on_step(&mut self, report: &StepReport) {
                (self.0)(report)
            }
        }
        self.observer(Wrap(f))
    }

    /// Adds a closure called with each [`StepReport`] and θ_{k+1}.
    pub fn on_step_theta(self, f: impl FnMut(&StepReport, &[Tensor<F>]) + 'o) -> Self {
        self.observer(ThetaObserver(f))
    }

    /// The current θ.
    pub fn theta(&self) -> &[Tensor<F>] {
        &self.theta
    }
    /// Outer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// The problem.
    pub fn problem(&self) -> &P {
        &self.problem
    }
    /// The estimator.
    pub fn estimator(&self) -> &E {
        &self.estimator
    }
    /// The optimiser.
    pub fn optimiser(&self) -> &O {
        &self.optimiser
    }
    /// Problem, estimator, optimiser and θ, consuming the trainer.
    pub fn into_parts(self) -> (P, E, O, Vec<Tensor<F>>) {
        (self.problem, self.estimator, self.optimiser, self.theta)
    }

    /// Runs outer steps until K are done (see [`Trainer::steps`]), after
    /// restoring a checkpoint if [`Trainer::resume_from`] was given.
    ///
    /// # Errors
    /// - [`BloError::InvalidHyperparameter`] before the first step
    ///   ([`Trainer::validate`], and φ_0 against Meta-SGD's `lr_index`), or at
    ///   a step whose η_k is not finite and ≥ 0 or whose update would make a
    ///   Meta-SGD step size negative or non-finite (the step does not happen);
    /// - [`BloError::CheckpointField`], [`BloError::Corrupt`] or
    ///   [`BloError::SettingsMismatch`] from [`Trainer::resume_from`];
    /// - [`BloError::NonFinite`] / [`BloError::NonFiniteEstimate`] naming the
    ///   task (θ, optimiser and estimator untouched: the step did not happen);
    /// - any other error of the estimator;
    /// - [`BloError::Io`] / [`BloError::Corrupt`] naming the file, for the log
    ///   and checkpoints.
    pub fn run(&mut self) -> Result<TrainOutcome<F>, BloError> {
        self.validate()?;
        if let Some(dir) = self.resume.clone() {
            self.load_checkpoint(&dir)?;
            self.resume = None;
        }
        if self.comm.size() > 1 {
            self.check_ranks_agree()?;
        }
        self.plan_if_needed()?;
        let lead = self.comm.rank() == 0;
        if self.problem.inner_loop().checks_phi0() && self.step < self.steps {
            // φ_0's shapes (Meta-SGD's `lr_index`, a rule's) need a task: the first one
            // the next step will draw (its stream is a function of (seed, k, 0),
            // so drawing it here changes no numbers).
            let task = self
                .sampler
                .sample(&mut task_rng(self.seed, self.step, 0, Stream::Sampler));
            check_start(&self.problem, &task, &self.theta)?;
        }
        let mut log = match &self.log_path {
            Some(p) if lead => Some(self.or_fail(open_log(p, self.step))?),
            _ => None,
        };
        let bar = if self.progress && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(self.steps)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("static template"),
        );
        bar.set_position(self.step);
        let start = Instant::now();
        let mut history = Vec::new();
        let pool = self.threads.map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("building a rayon pool")
        });
        while self.step < self.steps {
            let t0 = Instant::now();
            let (problem, sampler, estimator, theta) = (
                &self.problem,
                &self.sampler,
                &self.estimator,
                &self.theta[..],
            );
            let (seed, k, b) = (self.seed, self.step, self.meta_batch);
            let comm = &*self.comm;
            let tasks = comm::block(b, comm.size(), comm.rank());
            let batch = || estimate_batch(problem, sampler, estimator, theta, seed, k, tasks);
            let run_batch = || match &pool {
                Some(pool) => pool.install(batch),
                None => batch(),
            };
            let results = if comm.size() == 1 {
                run_batch()
            } else {
                comm.set_context(&format!("outer step {k}"));
                // A panic is sent to the other ranks, then resumed here.
                let local = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run_batch));
                let (payload, panic) = match local {
                    Ok(r) => (Ok(r), None),
                    Err(p) => (Err(comm::panic_text(&*p)), Some(p)),
                };
                let all = comm::exchange(comm, k, b, payload);
                if let Some(p) = panic {
                    std::panic::resume_unwind(p);
                }
                all?
            };
            let mut report = self.apply(results)?;
            report.step_seconds = t0.elapsed().as_secs_f64();
            report.elapsed_seconds = self.elapsed_before + start.elapsed().as_secs_f64();
            if let Some((file, path)) = &mut log {
                let mut line = serde_json::to_string(&report).expect("StepReport serialises");
                line.push('\n');
                let written = file.write_all(line.as_bytes()).map_err(|e| BloError::Io {
                    path: path.clone(),
                    source: e,
                });
                self.or_fail(written)?;
            }
            for obs in &mut self.observers {
                obs.on_step_theta(&report, &self.theta);
            }
            bar.set_position(self.step);
            bar.set_message(format!("loss {:.4e}", report.mean_outer_loss));
            history.push(report);
            if let Some((every, dir)) = &self.checkpoint {
                // `%` rather than `is_multiple_of`, which is newer than the workspace's MSRV.
                #[allow(clippy::manual_is_multiple_of)]
                let due = self.step % every == 0 || self.step == self.steps;
                if due && lead {
                    let dir = dir.clone();
                    let elapsed = self.elapsed_before + start.elapsed().as_secs_f64();
                    let saved = self.save_checkpoint(&dir, elapsed);
                    self.or_fail(saved)?;
                }
            }
        }
        self.elapsed_before += start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        Ok(TrainOutcome {
            theta: self.theta.clone(),
            history,
        })
    }

    /// `r`, after telling the other ranks that this one stops if it is an
    /// error they cannot know of (rank 0's log and checkpoint files).
    fn or_fail<T>(&self, r: Result<T, BloError>) -> Result<T, BloError> {
        if let Err(e) = &r {
            if self.comm.size() > 1 {
                self.comm.fail(&format!("at outer step {}: {e}", self.step));
            }
        }
        r
    }

    /// Compares this rank's settings, step and θ with rank 0's: a rank given
    /// other settings would silently compute another run.
    fn check_ranks_agree(&self) -> Result<(), BloError> {
        let mut mine = self.settings();
        mine.insert("steps".into(), self.steps.to_string());
        mine.insert("step".into(), self.step.to_string());
        mine.insert(
            "theta values".into(),
            io::fingerprint(&io::tensors_to_bytes(&self.names, &self.theta, None)),
        );
        let text = serde_json::to_vec(&mine).expect("settings serialise");
        let me = self.comm.rank();
        let all = self
            .comm
            .all_gather(&text)
            .map_err(|e| BloError::from_comm(e, self.step, me))?;
        let parse = |b: &[u8]| serde_json::from_slice::<BTreeMap<String, String>>(b).ok();
        let first = parse(&all[0]);
        for (rank, b) in all.iter().enumerate().skip(1) {
            let (Some(there), Some(lead)) = (parse(b), first.as_ref()) else {
                return Err(BloError::RankFailed {
                    rank,
                    step: self.step,
                    reason: "sent settings that do not parse".into(),
                });
            };
            let keys: std::collections::BTreeSet<&String> =
                there.keys().chain(lead.keys()).collect();
            for key in keys {
                let (a, b) = (
                    lead.get(key).map_or(ABSENT, String::as_str),
                    there.get(key).map_or(ABSENT, String::as_str),
                );
                if a != b {
                    return Err(BloError::RankFailed {
                        rank,
                        step: self.step,
                        reason: format!("setting {key} is {b} on rank {rank} but {a} on rank 0"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The checkpoint in `dir`, read by rank 0 and sent to every rank.
    fn read_checkpoint_shared(
        &self,
        dir: &Path,
    ) -> Result<(CheckpointState, Vec<Tensor<F>>), BloError> {
        if self.comm.size() == 1 {
            return read_checkpoint(dir);
        }
        let me = self.comm.rank();
        let read = (me == 0).then(|| read_checkpoint_files::<F>(dir));
        let mut msg = Vec::new();
        match &read {
            Some(Ok((json, theta))) => {
                msg.push(0);
                msg.extend((json.len() as u64).to_le_bytes());
                msg.extend(json);
                msg.extend(theta);
            }
            Some(Err(e)) => {
                msg.push(1);
                msg.extend(e.to_string().into_bytes());
            }
            None => {}
        }
        self.comm
            .broadcast(0, &mut msg)
            .map_err(|e| BloError::from_comm(e, self.step, me))?;
        if let Some(Err(_)) = read {
            return Err(read.expect("rank 0 read").expect_err("an error"));
        }
        let failed = |reason: String| BloError::RankFailed {
            rank: 0,
            step: self.step,
            reason,
        };
        match msg.first() {
            Some(0) if msg.len() >= 9 => {
                let n = u64::from_le_bytes(msg[1..9].try_into().expect("8 bytes")) as usize;
                let json = msg
                    .get(9..9usize.saturating_add(n))
                    .ok_or_else(|| failed("sent a checkpoint message cut short".into()))?;
                checkpoint_from_bytes(dir, json, &msg[9 + n..])
            }
            Some(1) => Err(failed(format!(
                "could not read the checkpoint: {}",
                String::from_utf8_lossy(&msg[1..])
            ))),
            _ => Err(failed("sent an undecodable checkpoint message".into())),
        }
    }

    /// Finishes outer step k = `self.step` from the meta-batch's results; on
    /// error nothing is changed.
    fn apply(
        &mut self,
        results: Vec<Result<Estimate<F>, BloError>>,
    ) -> Result<StepReport, BloError> {
        let k = self.step;
        let theta = &self.theta;
        // Fixed-order reduction, first failure in task order wins.
        let mut estimates = Vec::with_capacity(results.len());
        for (i, r) in results.into_iter().enumerate() {
            let est = r.map_err(|e| match e {
                BloError::NonFinite { what, step, .. } => BloError::NonFinite {
                    what,
                    task: i,
                    step,
                },
                BloError::NonFiniteEstimate { what, .. } => BloError::NonFiniteEstimate {
                    what,
                    task: Some(i),
                    outer_step: k,
                },
                e => e,
            })?;
            check_estimate_shapes(&est, theta, i);
            let bad = if !est.outer_loss.is_finite() {
                Some("outer loss")
            } else if !est.grad.iter().all(Tensor::is_finite) {
                Some("hypergradient")
            } else {
                None
            };
            if let Some(what) = bad {
                return Err(BloError::NonFiniteEstimate {
                    what,
                    task: Some(i),
                    outer_step: k,
                });
            }
            estimates.push(est);
        }
        let b = F::from_f64(estimates.len() as f64);
        let mut grad: Vec<Tensor<F>> = estimates[0].grad.clone();
        let mut loss = estimates[0].outer_loss;
        let mut stats = estimates[0].stats.clone();
        for est in &estimates[1..] {
            for (acc, g) in grad.iter_mut().zip(&est.grad) {
                for (a, &x) in acc.data_mut().iter_mut().zip(g.data()) {
                    *a += x;
                }
            }
            loss += est.outer_loss;
            stats.add(&est.stats);
        }
        for g in &mut grad {
            for a in g.data_mut() {
                *a /= b;
            }
        }
        let loss = loss / b;
        if !loss.is_finite() || !grad.iter().all(Tensor::is_finite) {
            return Err(BloError::NonFiniteEstimate {
                what: "meta-batch mean (sum overflowed)",
                task: None,
                outer_step: k,
            });
        }
        let grad_norm = grad.iter().map(|g| g.norm().powi(2)).sum::<f64>().sqrt();

        // Apply the update on a copy; commit only if θ stays finite (and
        // Meta-SGD's step sizes stay valid).
        let learning_rate = self.optimiser.checked_learning_rate()?;
        let saved = self.optimiser.state();
        let mut new_theta = self.theta.clone();
        self.optimiser.step(&mut new_theta, &grad);
        let refused = if !new_theta.iter().all(Tensor::is_finite) {
            Some(BloError::NonFiniteEstimate {
                what: "updated θ",
                task: None,
                outer_step: k,
            })
        } else {
            match self.problem.inner_loop().validate_theta(&new_theta) {
                Err(BloError::InvalidHyperparameter {
                    name,
                    value,
                    reason,
                }) => Some(BloError::InvalidHyperparameter {
                    name,
                    value: format!("{value} after the update of outer step {k}"),
                    reason,
                }),
                Err(e) => Some(e),
                Ok(()) => None,
            }
        };
        if let Some(e) = refused {
            self.optimiser
                .load_state(&saved)
                .expect("restoring the optimiser's own state");
            return Err(e);
        }
        self.theta = new_theta;
        self.estimator.observe(&estimates);
        self.step += 1;
        Ok(StepReport {
            step: k,
            mean_outer_loss: loss.to_f64(),
            grad_norm,
            learning_rate,
            stats,
            step_seconds: 0.0,
            elapsed_seconds: 0.0,
        })
    }

    /// Writes the θ file, then `trainer.json` (the commit point), each
    /// atomically, then removes older θ files.
    fn save_checkpoint(&self, dir: &Path, elapsed: f64) -> Result<(), BloError> {
        fs::create_dir_all(dir).map_err(|e| BloError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let meta = [
            ("format".to_string(), CheckpointState::FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
        ]
        .into_iter()
        .collect();
        let bytes = io::tensors_to_bytes(&self.names, &self.theta, Some(meta));
        let theta_file = CheckpointState::theta_file_name(self.step);
        io::write_atomic(&io::join(dir, &theta_file), &bytes)?;
        let state = CheckpointState {
            format: CheckpointState::FORMAT.into(),
            step: self.step,
            seed: self.seed,
            meta_batch: self.meta_batch,
            dtype: F::NAME.into(),
            param_names: self.names.clone(),
            param_shapes: self.theta.iter().map(|t| t.dims().to_vec()).collect(),
            theta_file: theta_file.clone(),
            theta_fingerprint: io::fingerprint(&bytes),
            estimator: self.estimator.name(),
            estimator_state: self.estimator.save_state(),
            optimiser: self.optimiser.state(),
            elapsed_seconds: elapsed,
            planner: self.planner.as_ref().and_then(|p| p.report.clone()),
            settings: Some(self.settings()),
            content_fingerprint: None,
        };
        io::write_atomic(&io::join(dir, CheckpointState::STATE_FILE), &state.encode())?;
        // Older θ files are no longer referenced; failing to remove one is harmless.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("theta-")
                    && name.ends_with(".safetensors")
                    && name != theta_file
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Reads and checks a checkpoint, compares its settings with this run's,
    /// then restores it; on error nothing is changed.
    fn load_checkpoint(&mut self, dir: &Path) -> Result<(), BloError> {
        let json_path = io::join(dir, CheckpointState::STATE_FILE);
        let (state, theta) = self.read_checkpoint_shared(dir)?;
        // A planned run continues with the choice its checkpoint records (a
        // pilot at the resumed θ would choose afresh): the estimator it names
        // is built first, and the settings compared with its name.
        let mut restored = match (&self.planner, &state.planner) {
            (Some(pl), Some(report)) => {
                let est = (pl.build)(&report.choice().choice).map_err(|e| {
                    field_err(
                        &json_path,
                        "planner.chosen",
                        format!("{:?}", report.choice().choice),
                        e.to_string(),
                    )
                })?;
                Some((report.clone(), est))
            }
            _ => None,
        };
        let mut here = self.settings();
        if let Some((_, est)) = &restored {
            here.insert("estimator".into(), est.name());
        }
        let mismatch = |d: &SettingDiff| BloError::SettingsMismatch {
            path: json_path.clone(),
            field: d.field.clone(),
            checkpoint: d.checkpoint.clone(),
            run: d.run.clone(),
        };
        // θ's names and shapes decide what the files mean: never forced.
        let stored_theta = state
            .param_names
            .iter()
            .zip(&state.param_shapes)
            .map(|(n, s)| format!("{n} {s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if stored_theta != here["theta"] {
            return Err(mismatch(&SettingDiff {
                field: "theta".into(),
                checkpoint: stored_theta,
                run: here["theta"].clone(),
            }));
        }
        let diffs: Vec<SettingDiff> = match &state.settings {
            None => vec![SettingDiff {
                field: "settings".into(),
                checkpoint: format!("(none recorded: format {})", state.format),
                run: format!("{} settings", here.len()),
            }],
            Some(stored) => {
                let keys: std::collections::BTreeSet<&String> =
                    stored.keys().chain(here.keys()).collect();
                keys.into_iter()
                    .filter_map(|k| {
                        let a = stored.get(k).map_or(ABSENT, String::as_str);
                        let b = here.get(k).map_or(ABSENT, String::as_str);
                        (a != b).then(|| SettingDiff {
                            field: k.clone(),
                            checkpoint: a.into(),
                            run: b.into(),
                        })
                    })
                    .collect()
            }
        };
        if let Some(d) = diffs.first().filter(|_| !self.force) {
            return Err(mismatch(d));
        }
        // Forced with other planner settings: the saved choice was made for
        // other settings, so the run plans again at the resumed θ.
        let replan = diffs.iter().any(|d| d.field.starts_with("planner."));
        if replan {
            restored = None;
        }
        // Restore the estimator last-but-one and the optimiser last, undoing on failure.
        let mut opt_state = state.optimiser.clone();
        if self.force {
            // Continue with this run's hyperparameters, the saved counter and moments.
            opt_state.config = self.optimiser.state().config;
        }
        let saved_opt = self.optimiser.state();
        self.optimiser
            .load_state(&opt_state)
            .map_err(|e| field_err(&json_path, "optimiser", &state.optimiser.kind, e))?;
        let target = match &mut restored {
            Some((_, est)) => est,
            None => &mut self.estimator,
        };
        let restore_estimator = !replan && (!self.force || state.estimator == target.name());
        if restore_estimator {
            if let Err(e) = target.load_state(&state.estimator_state) {
                self.optimiser
                    .load_state(&saved_opt)
                    .expect("restoring the optimiser's own state");
                let mut value: String = state.estimator_state.to_string();
                if value.chars().count() > 300 {
                    value = value.chars().take(300).chain(['…']).collect();
                }
                return Err(field_err(&json_path, "estimator_state", value, e));
            }
        }
        for d in &diffs {
            eprintln!(
                "blo: resume forced: {}: setting {} is {} in the checkpoint but {} in this run; continuing with this run's",
                json_path.display(),
                d.field,
                d.checkpoint,
                d.run
            );
        }
        if !restore_estimator {
            eprintln!("blo: resume forced: the estimator differs, its saved state is not restored");
        }
        if let Some(pl) = &mut self.planner {
            pl.report = None;
            if let Some((report, est)) = restored {
                self.estimator = est;
                pl.report = Some(report);
            }
        }
        self.overrides = diffs;
        self.theta = theta;
        self.step = state.step;
        self.elapsed_before = state.elapsed_seconds;
        Ok(())
    }
}

impl<'o, F, P, S, O> Trainer<'o, F, P, S, Box<dyn Estimator<F, P>>, O>
where
    F: Float,
    P: Problem<F>,
    S: TaskSampler<P::Task>,
    O: Optimiser<F>,
{
    /// A trainer whose estimator the planner chooses ([`plan_estimator`]):
    /// when [`Trainer::run`] starts, `spec.pilot_tasks` tasks are drawn from
    /// the streams of [`PILOT_STEP`] (shared with no training step), measured
    /// at θ₀ within `spec.budget`, and the estimator with the smallest
    /// cost × variance is built ([`Choice::build`]); its report is
    /// [`Trainer::planner_report`].
    ///
    /// Checkpoints record the report (the choice and every figure compared,
    /// [`CheckpointState::planner`]), and the spec is part of the settings
    /// (`planner.budget`, `planner.pilot_tasks`, `planner.floor`,
    /// `planner.fo_tolerance`). Resuming restores the recorded choice without
    /// planning again, so the run continues bit-identically. A resume with
    /// another spec is a [`BloError::SettingsMismatch`] naming the setting and
    /// both values; with [`Trainer::force_resume`] the saved choice is
    /// dropped and the planner runs again at the resumed θ under the new spec
    /// (a documented re-plan: the continuation is then not that of the saved
    /// run). A stored report that no planner can have written is a
    /// [`BloError::CheckpointField`] naming `planner.<field>`.
    ///
    /// ```
    /// # use blo::train::Trainer;
    /// # use blo::{Adam, BloError, Budget, InnerLoop, PlanSpec, Problem};
    /// # use rand::Rng;
    /// # use rand_chacha::ChaCha8Rng;
    /// # use tape::{Real, Tape, Tensor, Var};
    /// # struct Quad { inner: InnerLoop }
    /// # impl Problem<f64> for Quad {
    /// #     type Task = f64;
    /// #     fn inner_loop(&self) -> &InnerLoop { &self.inner }
    /// #     fn inner_loss<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, c: &f64, _j: usize,
    /// #         _th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
    /// #         (phi[0] - *c).square().sum() * 0.5 }
    /// #     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, c: &f64,
    /// #         th: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> { self.inner_loss(t, c, 1, th, phi) }
    /// # }
    /// let mut t = Trainer::planned(Quad { inner: InnerLoop::sgd(4, 0.3)? },
    ///                              |rng: &mut ChaCha8Rng| rng.gen_range(-1.0..1.0),
    ///                              PlanSpec::new(Budget::States(2), 8),
    ///                              Adam::new(0.05), vec![Tensor::scalar(2.0_f64)])
    ///     .meta_batch(4)
    ///     .steps(5);
    /// t.run()?;
    /// let report = t.planner_report().expect("planned at the start of run");
    /// println!("{report}"); // every figure compared, the choice marked
    /// assert_eq!(blo::Estimator::<f64, Quad>::name(t.estimator()),
    ///            report.choice().choice.build::<f64, Quad>()?.name());
    /// # Ok::<(), BloError>(())
    /// ```
    pub fn planned(
        problem: P,
        sampler: S,
        spec: PlanSpec,
        optimiser: O,
        theta0: Vec<Tensor<F>>,
    ) -> Self {
        let mut t = Trainer::new(
            problem,
            sampler,
            Box::new(Unplanned) as Box<dyn Estimator<F, P>>,
            optimiser,
            theta0,
        );
        t.planner = Some(Planning {
            spec,
            report: None,
            build: Box::new(|c: &Choice| c.build::<F, P>()),
        });
        t
    }
}

/// The estimates of tasks `tasks` (of the B tasks of step `k`), in task
/// order, computed in parallel on the current rayon pool. Task i samples from
/// `task_rng(seed, k, i, Sampler)` and estimates with `task_rng(seed, k, i, Estimator)`.
fn estimate_batch<F, P, S, E>(
    problem: &P,
    sampler: &S,
    estimator: &E,
    theta: &[Tensor<F>],
    seed: u64,
    k: u64,
    tasks: std::ops::Range<usize>,
) -> Vec<Result<Estimate<F>, BloError>>
where
    F: Float,
    P: Problem<F>,
    S: TaskSampler<P::Task>,
    E: Estimator<F, P>,
{
    tasks
        .into_par_iter()
        // One task per job, so a long task (UFO's exact branch) never holds
        // queued tasks back: idle threads steal them. Results are collected in
        // task order, so this changes no numbers.
        .with_max_len(1)
        .map(|i| {
            let task = sampler.sample(&mut task_rng(seed, k, i, Stream::Sampler));
            let mut rng = task_rng(seed, k, i, Stream::Estimator);
            estimator.estimate(problem, &task, theta, &mut rng)
        })
        .collect()
}

/// Panics (programmer error) if an estimate does not have θ's shapes.
#[track_caller]
fn check_estimate_shapes<F: Float>(est: &Estimate<F>, theta: &[Tensor<F>], task: usize) {
    assert_eq!(
        est.grad.len(),
        theta.len(),
        "Trainer: the estimate for task {task} has {} tensors, θ has {}",
        est.grad.len(),
        theta.len()
    );
    for (j, (g, t)) in est.grad.iter().zip(theta).enumerate() {
        assert_eq!(
            g.dims(),
            t.dims(),
            "Trainer: the estimate for task {task}, tensor {j}, has shape {:?}, θ has {:?}",
            g.dims(),
            t.dims()
        );
    }
}

/// Opens the log for appending after keeping only lines of steps < `step`
/// (creating its directory if needed). Lines are appended one `write` each
/// (not renamed into place like the checkpoint files), so a crash can cut the
/// last line short; on resume such a line is dropped, and any other line that
/// does not parse is reported as [`BloError::Corrupt`] with its number.
fn open_log(path: &Path, step: u64) -> Result<(fs::File, PathBuf), BloError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| BloError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let kept = if step == 0 {
        String::new()
    } else {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(BloError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        // Each line is appended in one write ending in '\n'; a last line without
        // it was cut short by a crash and is dropped (its step is re-run).
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let mut kept = String::new();
        for (n, line) in whole.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| BloError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("line {}: bad JSON: {e}", n + 1),
            })?;
            let s = v
                .get("step")
                .and_then(Value::as_u64)
                .ok_or_else(|| BloError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("line {}: no integer \"step\" field", n + 1),
                })?;
            if s < step {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        kept
    };
    io::write_atomic(path, kept.as_bytes())?;
    let file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| BloError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok((file, path.to_path_buf()))
}
