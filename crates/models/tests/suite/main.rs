//! The integration tests of this package in one binary (one link instead of one per file).
//! Each former `tests/<name>.rs` is the module `<name>` (its `mod common;` resolves,
//! through the `#[path]`, to `suite/common.rs`, which loads `tests/common/`); test names
//! read `<name>::<test>`, so `cargo test --test suite <name>::` runs one former file.
//! Files that install a `#[global_allocator]` stay binaries of their own.

// Each former file keeps its own `mod common;` (so the files move unchanged), so the
// helpers load once per module, as they loaded once per binary before.
#![allow(clippy::duplicate_mod)]

#[path = "batched_maml.rs"]
mod batched_maml;

#[path = "conv4_order.rs"]
mod conv4_order;

#[path = "corrupt_layouts.rs"]
mod corrupt_layouts;

#[path = "corrupt_png.rs"]
mod corrupt_png;

#[path = "corrupt_safetensors.rs"]
mod corrupt_safetensors;

#[path = "counterexample.rs"]
mod counterexample;

#[path = "counterexample_problem.rs"]
mod counterexample_problem;

#[path = "gradcheck.rs"]
mod gradcheck;

#[path = "loaders.rs"]
mod loaders;

#[path = "safetensors.rs"]
mod safetensors;

#[path = "sampler.rs"]
mod sampler;

#[path = "shapes.rs"]
mod shapes;

#[path = "split.rs"]
mod split;
