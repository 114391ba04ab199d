//! # blo: bilevel optimisation by differentiating through an inner loop
#![deny(missing_docs)]

pub mod error;
pub mod estimator;
pub mod problem;

pub use error::BloError;
pub use estimator::{Estimate, Estimator, SolverReport, Stats};
pub use problem::Problem;
