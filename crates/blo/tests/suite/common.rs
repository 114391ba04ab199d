//! `mod common;` in a module of this binary: the package's shared test helpers, left in `tests/common/` for the test files that are binaries of their own.
#![allow(unused_imports, dead_code)]

#[path = "../common/mod.rs"]
mod helpers;
pub use helpers::*;
