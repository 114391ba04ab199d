//! # hvp: second-order products on the tape's one differentiation core
//!
//! Forward mode is the tape's forward rules run on [`Dual`](tape::Dual) numbers;
//! forward-over-reverse is the tape's reverse sweep run on `Dual` numbers. One
//! pass returns the value, the gradient and the Hessian-vector product. This
//! crate has no per-op code: every op of `tape` gets JVPs and HVPs for free.
//!
//! ```
//! use hvp::{hvp, Objective};
//! use tape::{Real, Tape, Tensor, Var};
//!
//! /// f(x) = Σ x³, so ∇f = 3x², H = diag(6x).
//! struct Cubes;
//! impl Objective<f64> for Cubes {
//!     fn eval<'t, T: Real<Base = f64>>(&self, _t: &'t Tape<T>, x: &[Var<'t, T>]) -> Var<'t, T> {
//!         x[0].powf(3.0).sum()
//!     }
//! }
//! let x = Tensor::vector(vec![1.0, 2.0]);
//! let v = Tensor::vector(vec![1.0, 1.0]);
//! let out = hvp(&Cubes, &[x], &[v]);
//! assert_eq!(out.value, 9.0);
//! assert_eq!(out.grad[0].data(), &[3.0, 12.0]);
//! assert_eq!(out.hv[0].data(), &[6.0, 12.0]);
//! ```
//!
//! What is here:
//!
//! - [`Objective`] (scalar) and [`VectorFunction`] (tensor-valued): functions
//!   written once, generic over the element type.
//! - [`Workspace`]: reusable tapes with [`Workspace::value_and_grad`],
//!   [`Workspace::jvp`], [`Workspace::jvp_vec`], [`Workspace::vjp_vec`],
//!   [`Workspace::hvp`], [`Workspace::hvp_into`], [`Workspace::hvp_only`]
//!   (H·v alone, without the primal weight-gradient products) and [`Workspace::mixed_hvp`]
//!   (H_φφ·v and H_θφ·v from one pass).
//! - [`LinOp`] with [`Hessian`], [`Damped`], [`Identity`], [`FnOp`], [`DenseOp`].
//! - Solvers: [`cg`], [`neumann`], [`power_iteration`], [`lanczos`] (both extreme
//!   eigenvalues), each with `Params`, `Info` and `Error`.
//! - [`dense_hessian`], [`dense_jacobian`], [`dense_matrix`] for small problems.
//!
//! The tutorial is `docs/tutorial-hvp.md`; the design is explained in
//! `docs/design/forward-over-reverse.md`.
#![deny(missing_docs)]

mod dense;
mod lanczos;
mod linop;
mod objective;
mod pass;
mod solve;
mod workspace;

pub use dense::{dense_hessian, dense_jacobian, dense_matrix};
pub use lanczos::{lanczos, LanczosError, LanczosInfo, LanczosParams};
pub use linop::{Damped, DenseOp, FnOp, Hessian, Identity, LinOp};
pub use objective::{AsVector, Objective, VectorFunction};
pub use pass::{Leaves, Pass, Seed};
pub use solve::{
    cg, neumann, power_iteration, CgError, CgInfo, CgParams, NeumannError, NeumannInfo,
    NeumannParams, PowerError, PowerInfo, PowerParams,
};
pub use workspace::{
    flatten, hvp, jvp, jvp_vec, unflatten, value_and_grad, HvpOutput, MixedHvp, Workspace,
};

/// The tutorial `docs/tutorial-hvp.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-hvp.md")]
pub struct TutorialHvp;
