//! # blo: bilevel optimisation by differentiating through an inner loop
#![deny(missing_docs)]

pub mod check;
pub mod checkpoint;
pub mod debias;
pub mod error;
pub mod estimator;
pub mod exact;
pub mod forward;
pub mod implicit;
pub mod inner;
pub mod io;
pub mod outer;
pub mod problem;
pub mod train;

pub use check::{check_hypergradient, CheckReport};
pub use checkpoint::{revolve_beta, revolve_cost, Policy};
pub use debias::{
    optimal_q, AdaptiveParams, Debiased, QChoice, ReptileExact, ReptileFirstOrder, Ufo, UfoReptile,
};
pub use error::BloError;
pub use estimator::{DebiasSample, Estimate, Estimator, SolverReport, Stats};
pub use exact::{Exact, FirstOrder, Truncated};
pub use forward::ForwardMode;
pub use implicit::{Implicit, ImplicitSolver};
pub use inner::{
    meta_loss, rollout, summed_inner_loss, Cotangent, InnerHvp, InnerWorkspace, OuterGrad, State,
};
pub use outer::{Adam, Optimiser, Schedule, Sgd};
pub use problem::{InnerLoop, InnerOptimizer, Problem};
pub use train::{StepReport, TaskSampler, TrainOutcome, Trainer};

/// The tutorial `docs/tutorial-meta-training.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-meta-training.md")]
pub struct TutorialMetaTraining;
