#!/usr/bin/env bash
# The single-loop solver benchmark of docs/benchmarks.md ("Single-loop
# bilevel solvers"): SOBA and F2SA on the quadratic (dim θ = 50, dim φ = 100)
# and ℓ2-selection (d = 50, 1000 training and 1000 validation samples, full
# batch) problems, ours and JAX side by side in one run on this machine.
#
#   bash scripts/bench-solvers.sh [ROUNDS] [STEPS]
#
# Each round and case: our example writes the problem's data, the
# hyperparameters and our θ trajectory (K = STEPS outer steps) and times our
# steps (median of 5 runs; `ours_us`); then bench/jax_solvers.py runs the same
# method from the same point on the same data in JAX (f64), checks the
# trajectories agree (`trajectory_max_rel_diff`) and times a jitted step per
# call (`jax_step_us`) and all K steps in one jitted lax.scan (`jax_scan_us`).
# Ours runs with RAYON_NUM_THREADS=1 (one thread, as the scalar-sized GEMMs
# here gain nothing from a second thread); a second line times ours
# with the default threading. Prints one JSON line per case.
# Needs `python3 -m pip install jax` once (CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
steps="${2:-200}"
cargo build --quiet --release --example bilevel_bench
ours=target/release/examples/bilevel_bench
out=target/bench-solvers
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
    echo "# round $round" >&2
    for method in soba f2sa; do
        for problem in quadratic logreg; do
            trace="$out/$method-$problem.json"
            "$ours" --trace "$method" --problem "$problem" --steps "$steps" --out "$out/threads-default.json" \
                | sed 's/"ours_us_per_step"/"ours_default_threads_us_per_step"/'
            RAYON_NUM_THREADS=1 "$ours" --trace "$method" --problem "$problem" --steps "$steps" --out "$trace" >/dev/null
            JAX_ENABLE_X64=1 python3 bench/jax_solvers.py "$trace" 2> >(grep -v -e '^WARNING' -e 'NVIDIA' >&2)
        done
    done
done
