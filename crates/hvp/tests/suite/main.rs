//! The integration tests of this package in one binary (one link instead of one per file).
//! Each former `tests/<name>.rs` is the module `<name>` (its `mod common;` resolves,
//! through the `#[path]`, to `suite/common.rs`, which loads `tests/common/`); test names
//! read `<name>::<test>`, so `cargo test --test suite <name>::` runs one former file.
//! Files that install a `#[global_allocator]` stay binaries of their own.

// Each former file keeps its own `mod common;` (so the files move unchanged), so the
// helpers load once per module, as they loaded once per binary before.
#![allow(clippy::duplicate_mod)]

#[path = "api.rs"]
mod api;

#[path = "closed_forms.rs"]
mod closed_forms;

#[path = "ops.rs"]
mod ops;

#[path = "solvers.rs"]
mod solvers;

#[path = "hvp_only.rs"]
mod hvp_only;
