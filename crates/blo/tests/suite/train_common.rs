//! `mod train_common;` in a module of this binary: the meta-training test helpers, left in `tests/train_common/` for the test files that are binaries of their own.
#![allow(unused_imports, dead_code)]

#[path = "../train_common/mod.rs"]
mod helpers;
pub use helpers::*;
