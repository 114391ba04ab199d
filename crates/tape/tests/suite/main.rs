//! The integration tests of `tape` in one binary (one link instead of one per file).
//! Each former `tests/<name>.rs` is the module `<name>` (its `mod common;` and the like
//! resolve, through the `#[path]`, to the shims beside this file, which load the shared
//! helpers in `tests/`); test names read `<name>::<test>`, so
//! `cargo test -p tape --test suite <name>::` runs one former file.
//! `alloc.rs` (a counting `#[global_allocator]`), `kernel_families.rs` (it forces a kernel family process-wide), `tape_mixing.rs` (it needs the process's first two tape ids), and `errors.rs` and `views.rs` (they install a process-wide panic hook to read each panic's location, which other tests' panics in the same process would race) stay binaries of their own.

// Each former file keeps its own `mod common;` (so the files move unchanged).
#![allow(clippy::duplicate_mod)]

#[path = "f32.rs"]
mod f32;

#[path = "gemm.rs"]
mod gemm;

#[path = "grad_table.rs"]
mod grad_table;

#[path = "literal.rs"]
mod literal;

#[path = "persist.rs"]
mod persist;

#[path = "real_left.rs"]
mod real_left;

#[path = "thin.rs"]
mod thin;

#[path = "testing_api.rs"]
mod testing_api;
