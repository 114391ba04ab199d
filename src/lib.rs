//! # blo-examples: the programs in `examples/` as library functions
//!
//! Each example's logic lives here as a function taking a config struct and
//! returning its results, so the integration tests (`tests/suite/examples.rs`) can
//! run reduced versions and assert on the numbers. The `examples/*.rs` files
//! only parse flags and print.
#![deny(missing_docs)]

pub mod counterexample;
pub mod distributed;
pub mod dyn_estimator;
pub mod fewshot;
pub mod gemm_operands;
pub mod hyperopt;
pub mod maml_sine;
pub mod stats;
pub mod telescope_study;
pub mod util;

/// The README's code blocks, compiled and run as doctests so they never rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
