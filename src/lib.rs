//! # blo-examples: the programs in `examples/` as library functions
//!
//! Each example's logic lives here as a function taking a config struct and
//! returning its results, so the integration tests (`tests/examples.rs`) can
//! run reduced versions and assert on the numbers. The `examples/*.rs` files
//! only parse flags and print.
#![deny(missing_docs)]

pub mod hyperopt;
pub mod maml;
pub mod util;
