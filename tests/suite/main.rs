//! The integration tests of this package in one binary (one link instead of one per file).
//! Each former `tests/<name>.rs` is the module `<name>`; test names
//! read `<name>::<test>`, so `cargo test --test suite <name>::` runs one former file.
//! `tests/telescope_counterexample.rs` is still a binary of its own.

#[path = "examples.rs"]
mod examples;

#[path = "fewshot_cli.rs"]
mod fewshot_cli;

#[path = "fewshot_resume_force.rs"]
mod fewshot_resume_force;

#[path = "gemm_threads.rs"]
mod gemm_threads;

#[path = "seed_stats.rs"]
mod seed_stats;
