//! # tape: reverse-mode tensor autodiff on an arena Wengert tape
//!
//! A [`Tape`] records operations on tensors; a [`Var`] is an index into it.
//! [`Tape::backward`] runs one reverse loop over the recorded nodes and leaves
//! every adjoint in a dense buffer.
//!
//! ```
//! use tape::{Tape, Tensor};
//!
//! // Logistic regression loss of one example, and its gradient.
//! let t = Tape::<f64>::new();
//! let w = t.var(&Tensor::vector(vec![0.5, -0.25]));
//! let x = t.constant(&Tensor::vector(vec![2.0, 4.0]));
//! let z = (w * x).sum();                 // z = w·x = 0
//! let loss = (-z).softplus();            // −ln σ(z) for label 1
//! t.backward(loss);
//! // ∂loss/∂w = −(1 − σ(z))·x = −0.5·x
//! assert_eq!(t.grad(w).data(), &[-1.0, -2.0]);
//! assert!((loss.item() - 2f64.ln()).abs() < 1e-15);
//! ```
//!
//! Every op's rules are written once, generic over the element type [`Real`]:
//! on `f32`/`f64` they give values and gradients; on [`Dual`] numbers the
//! forward pass is a JVP and the reverse sweep yields Hessian-vector products
//! (see the `hvp` crate). The design is explained in `docs/design/tape.md`.
//!
//! All `unsafe` code of the crate (the matrix-product kernels) lives in
//! [`kernels`], behind safe functions and views built by checked
//! constructors; the kernel family of small products can be forced with
//! `TAPE_KERNELS=portable|avx2|avx512` or [`kernels::with_family`].
#![deny(missing_docs)]

mod constant;
pub mod fs;
pub mod gemm;
pub mod kernels;
pub mod ops;
pub mod real;
pub mod shape;
mod tape;
pub mod tensor;

#[cfg(feature = "testing")]
pub mod testing;

pub use constant::Constant;
pub use ops::shape_ops::concat;
pub use real::{Dual, Float, Real};
pub use shape::Shape;
pub use tape::{Tape, Var};
pub use tensor::Tensor;

/// The tutorial `docs/tutorial-gradients.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/tutorial-gradients.md")]
pub struct TutorialGradients;
