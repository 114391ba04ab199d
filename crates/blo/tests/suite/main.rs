//! The integration tests of `blo` in one binary (one link instead of one per file).
//! Each former `tests/<name>.rs` is the module `<name>` (its `mod common;` and the like
//! resolve, through the `#[path]`, to the shims beside this file, which load the shared
//! helpers in `tests/`); test names read `<name>::<test>`, so
//! `cargo test -p blo --test suite <name>::` runs one former file.
//! `alloc.rs` (a counting `#[global_allocator]`) and `train_soak.rs` (it re-runs its own binary with a test filter) stay binaries of their own.

// Each former file keeps its own `mod common;` (so the files move unchanged).
#![allow(clippy::duplicate_mod)]

#[path = "blocks.rs"]
mod blocks;

#[path = "checkpoint.rs"]
mod checkpoint;

#[path = "counterexample.rs"]
mod counterexample;

#[path = "distributed.rs"]
mod distributed;

#[path = "engine.rs"]
mod engine;

#[path = "estimators.rs"]
mod estimators;

#[path = "exact.rs"]
mod exact;

#[path = "implicit.rs"]
mod implicit;

#[path = "inner_rules.rs"]
mod inner_rules;

#[path = "plan.rs"]
mod plan;

#[path = "resident.rs"]
mod resident;

#[path = "solvers.rs"]
mod solvers;

#[path = "telescope.rs"]
mod telescope;

#[path = "train_checkpoint.rs"]
mod train_checkpoint;

#[path = "train_corrupt.rs"]
mod train_corrupt;

#[path = "train_estimators.rs"]
mod train_estimators;

#[path = "train_loop.rs"]
mod train_loop;

#[path = "train_outer.rs"]
mod train_outer;

#[path = "train_planner.rs"]
mod train_planner;

#[path = "train_telescope.rs"]
mod train_telescope;

#[path = "train_trust.rs"]
mod train_trust;

#[path = "ufo.rs"]
mod ufo;
