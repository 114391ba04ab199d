#!/usr/bin/env bash
# Checkpointing and UFO benchmarks of docs/benchmarks.md ("The unrolling
# engine"), side by side with JAX in one run on this machine.
#
#   bash scripts/bench-checkpointing.sh [ROUNDS]
#
# Each round runs, in turn: JAX's store-all and rematerialised exact MAML at
# R = 200, our store-all and binomial (⌈log2 R⌉ + 1 snapshots) exact at R = 200;
# then our UFO (q = 0.1) with the exact branch under recompute and under the
# binomial plan at R = 10, 50, 200 (each run times UFO, first order alone and
# the exact estimator alone in one process: its `cost_model`). Set
# TAPE_KERNELS=avx2 (or portable, avx512) to force a kernel family on both
# our runs; JAX is unaffected. Prints one JSON line per run.
# Needs `python3 -m pip install -r bench/requirements.txt` once (CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
jax=(python3 bench/jax_workloads.py)
cargo build --quiet --release --example bench
ours=(target/release/examples/bench)
for round in $(seq 1 "$rounds"); do
    echo "# round $round" >&2
    "${jax[@]}" maml_sine:r200:exact
    "${jax[@]}" maml_sine:r200:exact_remat
    "${ours[@]}" maml_sine:r200:exact
    "${ours[@]}" maml_sine:r200:exact_binomial
done
for r in 10 50 200; do
    "${ours[@]}" "maml_sine:r$r:ufo_binomial"
    "${ours[@]}" "maml_sine:r$r:ufo"
done
