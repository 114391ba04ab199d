//! `mod stats;` in a module of this binary: the statistical test helpers, left in `tests/stats/` for the test files that are binaries of their own.
#![allow(unused_imports, dead_code)]

#[path = "../stats/mod.rs"]
mod helpers;
pub use helpers::*;
