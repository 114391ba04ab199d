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
}
