# Mirrors CI: `just ci` runs what .ci/run runs.
default: ci

# What CI runs.
ci:
    bash .ci/run

# The whole test suite (same command as CI), optimised, with debug assertions and overflow checks on ([profile.test] in Cargo.toml).
test:
    cargo test --workspace

# Distributed meta-training over MPI (CI's last step; needs MPICH: `apt-get install -y mpich libmpich-dev libclang-dev pkgconf`).
test-mpi:
    cargo build --release --features mpi --example maml_sine
    scripts/test-mpi.sh

# The README's main demo.
demo:
    cargo run --release --example counterexample

# Side-by-side benchmarks against JAX (needs `python3 -m pip install -r bench/requirements.txt` once; bench/README.md).
bench:
    python3 bench/compare.py mlp_grad mlp_hvp maml_sine:r1:exact maml_sine:r10:exact maml_sine:r10:first_order --rounds 3

# API docs with warnings denied; tutorials run as doctests in `just test`.
docs:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Formatting and clippy with warnings denied.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
