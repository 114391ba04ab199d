//! # models: functional networks, tasks and data sets for bilevel optimisation
//!
//! Networks are pure functions of explicit parameters: a [`Model`] lists its
//! parameters ([`ParamSpec`]: stable name, shape, initialiser) and records its
//! forward pass on a tape from a slice of variables. An inner loop therefore
//! differentiates through adapted parameters with no hidden state, and the same
//! code runs on `f32`, `f64` and dual numbers (for Hessian-vector products).
//!
//! ```
//! use models::{Activation, Mlp, Model, SinusoidTasks};
//! use rand::SeedableRng;
//! use rand_chacha::ChaCha8Rng;
//! use tape::Tape;
//!
//! // One MAML inner step on a sinusoid task, differentiated end to end.
//! let net = Mlp::new(&[1, 16, 1], Activation::Tanh);
//! let theta = net.init::<f64>(0);
//! let mut rng = ChaCha8Rng::seed_from_u64(1);
//! let ep = SinusoidTasks::default().sample_episode::<f64, _>(&mut rng, 10, 10);
//!
//! let t = Tape::<f64>::new();
//! let params = theta.vars(&t);
//! let xs = t.constant_base(&ep.support_x);
//! let ys = t.constant_base(&ep.support_y);
//! let inner = net.forward(&t, &params, xs).mse(ys);
//! t.backward(inner);
//! // φ = θ − α ∇L_in(θ): new variables built from the old ones (the gradient is
//! // taken as a constant here, i.e. first-order; the exact hypergradient lives in `blo`).
//! let alpha = 0.01;
//! let phi: Vec<_> = params
//!     .iter()
//!     .map(|&p| p - t.constant(&t.grad(p)).mul_scalar(alpha))
//!     .collect();
//! let outer = net.forward(&t, &phi, t.constant_base(&ep.query_x)).mse(t.constant_base(&ep.query_y));
//! t.backward(outer);
//! assert!(outer.item().is_finite());
//! assert_eq!(t.grad(params[0]).dims(), &[16, 1]);
//! ```
//!
//! Contents:
//! - networks: [`Mlp`], [`Conv4`] (Omniglot, Mini-ImageNet and benchmark
//!   variants), [`Linear`]; [`Params`] with seeded initialisation ([`Init`]) and
//!   safetensors files ([`Params::save`], [`Params::load_like`]) carrying a
//!   content hash that is checked on load, so a damaged file is refused;
//! - tasks: [`SinusoidTasks`] and the paper's one-dimensional
//!   [`Counterexample`] with its closed forms;
//! - the paper's problems as `blo::Problem`s: [`CounterexampleProblem`],
//!   [`RegressionMaml`] (e.g. sinusoid regression with an [`Mlp`]) and
//!   [`ClassificationMaml`] (few-shot classification with a [`Conv4`]);
//!   [`BatchedRegressionMaml`] runs a chunk of regression tasks
//!   ([`RegressionChunk`]) on one tape with batched products, summed by
//!   [`sum_estimates`] in a thread-count-independent order;
//! - data: [`ImageSet`] with the [`EpisodeSampler`] (N-way K-shot), loaders for
//!   Omniglot ([`load_omniglot`]) and Mini-ImageNet ([`load_mini_imagenet`]),
//!   and procedural [`glyphs`] that need no download. Loaders check the
//!   layout and every image strictly; each failure is a [`DataError`] naming
//!   the file or folder.
//!
//! Using your own model and data is described in `docs/tutorial-own-model.md`.
#![deny(missing_docs)]

pub mod batched;
pub mod counterexample;
pub mod data;
pub mod error;
pub mod maml;
pub mod model;
pub mod params;
pub mod sinusoid;

pub use batched::{sum_estimates, BatchedRegressionMaml, RegressionChunk};
pub use counterexample::{Counterexample, CounterexampleProblem};
pub use data::glyphs::{glyphs, GlyphOptions};
pub use data::mini_imagenet::{load_mini_imagenet, load_mini_imagenet_pooled};
pub use data::omniglot::{load_omniglot, OmniglotOptions};
pub use data::split::{ClassSplit, SplitSize, Splits};
pub use data::{Episode, EpisodeSampler, ImageSet};
pub use error::{BatchError, DataError, ParamsError};
pub use maml::{ClassificationMaml, RegressionMaml};
pub use model::{binary_logistic_loss, Activation, Conv4, Conv4Variant, Linear, Mlp, Model};
pub use params::{init_params, Init, ParamSpec, Params};
pub use sinusoid::{RegressionEpisode, SinusoidTask, SinusoidTasks};

/// The tutorial `docs/tutorial-own-model.md`, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-own-model.md")]
pub struct TutorialOwnModel;
