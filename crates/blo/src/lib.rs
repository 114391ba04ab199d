//! # blo: bilevel optimisation by differentiating through an inner loop
//!
//! State a bilevel problem ([`Problem`]: an inner loss, an outer loss, an
//! [`InnerLoop`]), then ask any [`Estimator`] for the hypergradient of
//! F(θ) = L_out(θ, φ_r(θ)) on a task:
//!
//! ```
//! use blo::{check_hypergradient, Estimator, Exact, FirstOrder, InnerLoop, Policy, Problem, Ufo};
//! use rand::SeedableRng;
//! use tape::{Real, Tape, Tensor, Var};
//!
//! /// MAML on a smooth 1-D regression: φ = (w, b), predict tanh(w x + b);
//! /// the task is a target slope s, the inner batch at step j is x = j/4 (one point).
//! struct Slopes { inner: InnerLoop }
//! impl Slopes {
//!     fn loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, s: f64, xs: &[f64], phi: &[Var<'t, T>]) -> Var<'t, T> {
//!         let x = t.constant_base(&Tensor::vector(xs.to_vec()));
//!         let y = t.constant_base(&Tensor::vector(xs.iter().map(|x| (s * x).tanh()).collect()));
//!         ((x * phi[0] + phi[1]).tanh() - y).square().mean()
//!     }
//! }
//! impl Problem<f64> for Slopes {
//!     type Task = f64;
//!     fn inner_loop(&self) -> &InnerLoop { &self.inner }
//!     fn inner_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, s: &f64, j: usize,
//!         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
//!         self.loss(t, *s, &[j as f64 / 4.0], phi)
//!     }
//!     fn outer_loss<'t, T: Real<Base = f64>>(&self, t: &'t Tape<T>, s: &f64,
//!         _theta: &[Var<'t, T>], phi: &[Var<'t, T>]) -> Var<'t, T> {
//!         self.loss(t, *s, &[-1.0, 0.5, 1.5], phi)
//!     }
//! }
//!
//! let problem = Slopes { inner: InnerLoop::sgd(5, 0.5)? };
//! let theta = vec![Tensor::vector(vec![0.3]), Tensor::vector(vec![-0.1])];
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//!
//! // Exact, with constant memory (states recomputed from θ).
//! let exact = Exact::new(Policy::Recompute)?;
//! let g = exact.estimate(&problem, &2.0, &theta, &mut rng)?;
//! assert_eq!(g.stats.forward_steps, 15); // r(r+1)/2
//! assert_eq!(g.stats.states_peak, 1);
//! // … and it is the derivative of F: central differences agree.
//! check_hypergradient(&problem, &2.0, &theta, &exact, 1e-7)?;
//!
//! // First order is cheaper and biased; UFO-BLO is cheap on average and unbiased.
//! let fo = FirstOrder::new().estimate(&problem, &2.0, &theta, &mut rng)?;
//! assert!(check_hypergradient(&problem, &2.0, &theta, &FirstOrder::new(), 1e-7).is_err());
//! let ufo = Ufo::fixed(0.2)?.estimate(&problem, &2.0, &theta, &mut rng)?;
//! assert_eq!(ufo.stats.coins, 1);
//! # let _ = fo;
//! # Ok::<(), blo::BloError>(())
//! ```
//!
//! The pieces:
//!
//! - [`Problem`], [`InnerLoop`], [`InnerOptimizer`]: SGD, Meta-SGD (learnable
//!   per-parameter steps in θ), momentum, and any update rule written once as
//!   an [`InnerRule`] ([`rules`]: Adam, LSLR, Nesterov, learnable β, …), its
//!   adjoint derived by the engine (docs/math.md §12).
//! - Estimators: [`Exact`] under a checkpoint [`Policy`] (store all, recompute,
//!   every k-th, binomial/revolve), [`FirstOrder`], [`Ufo`] and the generic
//!   [`Debiased`] hook (also for Reptile: [`ReptileFirstOrder`] +
//!   [`ReptileExact`]), [`Truncated`], [`Implicit`] (the implicit-function-theorem estimator
//!   and iMAML), [`ForwardMode`].
//! - The unrolling engine ([`engine`]): checkpoint plans as data
//!   ([`engine::plan`]: every policy, or the fastest plan within a memory
//!   budget, as a checked list of actions), executed by one loop
//!   ([`engine::execute`]) over one owner of the held states.
//! - Building blocks for your own estimator: [`InnerWorkspace`] (one forward
//!   step, one adjoint step, the HVP pass, the outer gradient, the VJP/JVP
//!   through Φ_0), the losses as `hvp` objectives ([`InnerObjective`],
//!   [`OuterObjective`]), [`rollout`], [`meta_loss`], [`check_hypergradient`].
//! - Meta-training ([`Trainer`], outer optimisers) and checkpoint files ([`io`]).
//! - Single-loop stochastic bilevel solvers ([`solvers`]: SOBA, AmIGO, F2SA,
//!   BOME) with a warm-started, checkpointable state, and the benchmark
//!   problems of benchopt's `benchmark_bilevel` ([`problems`]).
//!
//! Tutorials: `docs/tutorial-hypergradients.md`, `docs/tutorial-ufo.md`,
//! `docs/tutorial-telescopes.md`, `docs/tutorial-custom-estimator.md`,
//! `docs/tutorial-inner-optimiser.md`; design: `docs/design/adjoint-and-checkpointing.md`.
#![deny(missing_docs)]

pub mod comm;
pub mod engine;
pub mod error;
pub mod estimators;
pub mod io;
pub mod outer;
pub mod problem;
pub mod problems;
pub mod rules;
pub mod solvers;
pub mod train;

pub use engine::objective::{InnerObjective, OuterObjective};
pub use engine::plan::Budget;
pub use engine::policy::{revolve_beta, revolve_cost, Policy};
pub use engine::step::{
    meta_loss, rollout, summed_inner_loss, Cotangent, InnerHvp, InnerWorkspace, OuterGrad, State,
};
pub use error::BloError;
pub use estimators::check::{check_hypergradient, CheckReport};
pub use estimators::debiased::{optimal_q, AdaptiveParams, Debiased, QChoice, Ufo};
pub use estimators::exact::Exact;
pub use estimators::first_order::FirstOrder;
pub use estimators::forward_mode::ForwardMode;
pub use estimators::implicit::{Implicit, ImplicitSolver};
pub use estimators::planner::{
    plan_estimator, Choice, PlanSpec, PlannerParams, PlannerReport, ReportFault,
};
pub use estimators::reptile::{ReptileExact, ReptileFirstOrder, UfoReptile};
pub use estimators::telescope::{
    doubling_depths, every_depth, optimal_depths, AdaptiveDepths, Baselines, DepthDistribution,
    DepthError, DepthModel, Depths, Telescope, TelescopeKind, TelescopeSample,
};
pub use estimators::truncated::Truncated;
pub use estimators::{CoupledEstimate, DebiasSample, Estimate, Estimator, SolverReport, Stats};
pub use outer::{Adam, Optimiser, Schedule, Sgd};
pub use problem::{InnerLoop, InnerOptimizer, Problem};
pub use rules::{InnerRule, Rule, RuleStep};
pub use train::{StepReport, TaskSampler, TrainOutcome, Trainer};

/// The tutorial `docs/tutorial-meta-training.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-meta-training.md")]
pub struct TutorialMetaTraining;

/// The tutorial `docs/tutorial-hypergradients.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-hypergradients.md")]
pub struct TutorialHypergradients;

/// The tutorial `docs/tutorial-ufo.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-ufo.md")]
pub struct TutorialUfo;

/// The tutorial `docs/tutorial-telescopes.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-telescopes.md")]
pub struct TutorialTelescopes;

/// The tutorial `docs/tutorial-custom-estimator.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-custom-estimator.md")]
pub struct TutorialCustomEstimator;

/// The tutorial `docs/tutorial-inner-optimiser.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-inner-optimiser.md")]
pub struct TutorialInnerOptimiser;
