//! Examples for the workspace live in `examples/`.
