//! Errors: bad hyperparameters at construction, non-finite values during a run,
//! solvers that did not converge, files that are missing or corrupt.

use std::path::PathBuf;

/// Everything that can go wrong in `blo`, with the evidence.
#[derive(Debug, thiserror::Error)]
pub enum BloError {
    /// A hyperparameter is out of its range.
    #[error("invalid hyperparameter {name} = {value}: {reason}")]
    InvalidHyperparameter {
        /// Its name.
        name: &'static str,
        /// Its value, as given.
        value: String,
        /// The allowed range.
        reason: String,
    },
    /// A memory budget below one state (the error says the minimum).
    #[error(transparent)]
    Budget(#[from] crate::engine::plan::BudgetError),
    /// A depth distribution of a randomized telescope that is not a
    /// distribution, or not one the estimator can use.
    #[error(transparent)]
    Depths(#[from] crate::estimators::telescope::DepthError),
    /// A loss or gradient became non-finite; θ is left untouched.
    #[error("non-finite {what} at task {task}, inner step {step}")]
    NonFinite {
        /// What went non-finite (e.g. "inner loss", "inner gradient", "outer loss").
        what: &'static str,
        /// Task index within the meta-batch (0 when not in a meta-batch).
        task: usize,
        /// Inner step (0 = initial state, r+1 = outer loss).
        step: usize,
    },
    /// An estimator returned a non-finite estimate without reporting the inner
    /// step, or the outer update produced a non-finite θ; θ and the optimiser
    /// state are left untouched.
    #[error("non-finite {what} at outer step {outer_step}{}", task.map(|t| format!(", task {t}")).unwrap_or_default())]
    NonFiniteEstimate {
        /// What went non-finite (e.g. "hypergradient", "outer loss", "updated θ").
        what: &'static str,
        /// Task index within the meta-batch, when one task is to blame.
        task: Option<usize>,
        /// The outer (meta-training) step, 0-based.
        outer_step: u64,
    },
    /// An iterative solver did not converge.
    #[error("{solver} did not converge: residual {residual:e} after {iterations} iterations")]
    NotConverged {
        /// Which solver.
        solver: &'static str,
        /// Iterations run.
        iterations: usize,
        /// Final relative residual.
        residual: f64,
    },
    /// An iterative solver broke down (e.g. CG met non-positive curvature:
    /// the operator is not positive definite).
    #[error("{solver} failed: {reason}")]
    SolverFailed {
        /// Which solver.
        solver: &'static str,
        /// What happened, with the numbers.
        reason: String,
    },
    /// Implicit differentiation ([`crate::Implicit`]) needs a stationary point
    /// of the inner objective, ∇_φ L_in(θ, φ_r; τ, j) = 0, and the returned
    /// state is not one: ‖∇_φ L_in(θ, φ_r)‖ > tol · ‖∇_φ L_in(θ, φ_0)‖.
    #[error(
        "implicit differentiation needs a stationary inner point: at inner-loss index {step}, \
         ‖∇_φ L_in(θ, φ_r)‖ = {grad_norm:.3e} > tol {tol:.1e} × ‖∇_φ L_in(θ, φ_0)‖ = {initial_grad_norm:.3e} \
         (run more inner steps, or state a looser tolerance with Implicit::stationarity_tol)"
    )]
    NotStationary {
        /// The inner-loss index j the stationarity condition is taken at.
        step: usize,
        /// ‖∇_φ L_in(θ, φ_r; τ, j)‖ (with the implied proximal term, if any).
        grad_norm: f64,
        /// ‖∇_φ L_in(θ, φ_0; τ, j)‖, the scale the tolerance is relative to.
        initial_grad_norm: f64,
        /// The relative tolerance.
        tol: f64,
    },
    /// An estimator's assumption about how θ enters the problem does not hold
    /// (e.g. [`crate::Implicit::imaml`] on a problem where θ enters the inner
    /// loss other than as the proximal centre): it refuses rather than return
    /// a wrong number.
    #[error("{estimator}: {reason} (relative mismatch {mismatch:.3e} > tol {tol:.1e})")]
    UnsupportedStructure {
        /// The estimator's name.
        estimator: String,
        /// Which assumption failed, the evidence, and what to use instead.
        reason: String,
        /// The measured relative mismatch.
        mismatch: f64,
        /// The tolerance it exceeds.
        tol: f64,
    },
    /// A hypergradient check ([`crate::check_hypergradient`]) failed.
    #[error(
        "hypergradient check failed: relative error {rel_err:e} > tol {tol:e} \
         (worst entry {worst_index}: estimator {estimate}, central difference {difference})"
    )]
    GradientMismatch {
        /// ‖g − g_fd‖ / max(‖g_fd‖, 1e-12), over all θ entries.
        rel_err: f64,
        /// The tolerance asked for.
        tol: f64,
        /// Flat index (over all θ tensors in order) of the worst entry.
        worst_index: usize,
        /// The estimator's value there.
        estimate: f64,
        /// The central difference there.
        difference: f64,
    },
    /// An I/O failure with the file it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file exists but its content is not what was expected.
    #[error("{path}: corrupt or mismatched: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint field holds a value no run can have written (a NaN
    /// probability, a negative moment, a counter that disagrees with another);
    /// nothing is restored.
    #[error("{path}: checkpoint field {field} = {value}: {reason}")]
    CheckpointField {
        /// The checkpoint file.
        path: PathBuf,
        /// The field (dotted path, e.g. `optimiser.buffers.v.0`).
        field: String,
        /// The value found.
        value: String,
        /// Why it cannot be right.
        reason: String,
    },
    /// Resume: a setting of this run differs from the one recorded in the
    /// checkpoint (see `train::Trainer::force_resume` to continue anyway).
    #[error(
        "{path}: setting {field} is {checkpoint} in the checkpoint but {run} in this run \
         (resume with force, e.g. --force, to continue with this run's settings)"
    )]
    SettingsMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The setting (e.g. `inner.optimizer`, `meta_batch`, `data`).
        field: String,
        /// Its value in the checkpoint.
        checkpoint: String,
        /// Its value in this run.
        run: String,
    },
    /// A distributed run ([`crate::comm`]) cannot go on: rank `rank` failed
    /// (an error or panic in one of its tasks, a lost process, a departure) or
    /// disagrees with rank 0 on a setting. Every surviving rank returns it.
    #[error("rank {rank} failed at outer step {step}: {reason}")]
    RankFailed {
        /// The rank that failed (or disagrees).
        rank: usize,
        /// The outer step being run (the checkpoint's step, at start-up).
        step: u64,
        /// What happened.
        reason: String,
    },
}

impl BloError {
    /// A [`crate::comm::CommError`] met by rank `me` at outer step `step`,
    /// as a [`BloError::RankFailed`] naming the failed rank (`me` for a
    /// protocol error).
    pub fn from_comm(e: crate::comm::CommError, step: u64, me: usize) -> Self {
        use crate::comm::CommError;
        let (rank, reason) = match e {
            CommError::RankFailed { rank, reason } => (rank, reason),
            CommError::Timeout { rank, op, seconds } => (
                rank,
                format!("did not join {op} within {seconds} s (lost or stuck)"),
            ),
            CommError::Protocol(p) => (me, p),
        };
        BloError::RankFailed { rank, step, reason }
    }

    /// An [`BloError::InvalidHyperparameter`].
    pub fn invalid(name: &'static str, value: impl std::fmt::Display, reason: &str) -> Self {
        BloError::InvalidHyperparameter {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Sets the task index of a [`BloError::NonFinite`] (the meta-batch
    /// position, known to the caller but not to the estimator); other errors
    /// pass through unchanged.
    pub fn with_task(self, index: usize) -> Self {
        match self {
            BloError::NonFinite { what, step, .. } => BloError::NonFinite {
                what,
                task: index,
                step,
            },
            e => e,
        }
    }
}
