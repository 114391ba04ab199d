#!/usr/bin/env bash
# The idle rerun of docs/benchmarks.md: every side-by-side figure its
# "Idle rerun after …" sections report, in one go, on one machine with
# nothing else running (about 15 minutes on 2 cores per family).
#
#   scripts/bench-rerun.sh OUT_DIR [FAMILY …]
#
# FAMILY is a kernel family to force with `compare.py --family` (avx2,
# avx512, portable); with none, the machine's own family runs (the runner
# prints which) and JAX is left uncapped. Each command's output goes to
# OUT_DIR/NAME[-FAMILY].txt, and the machine (CPU model, instruction sets,
# load) to OUT_DIR/machine.txt. Needs the JAX install line in
# bench/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/bench-rerun.sh OUT_DIR [FAMILY ...]}"
shift
families=("$@")
[ ${#families[@]} -eq 0 ] && families=("")
mkdir -p "$out"

{
    date -u
    grep -m1 'model name' /proc/cpuinfo || true
    grep -m1 '^cpu family' /proc/cpuinfo || true
    grep -m1 -P '^model\t' /proc/cpuinfo || true
    grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|amx)' | sort -u | tr '\n' ' '
    echo
    nproc
    uptime
    git log -1 --format='commit %H %s'
    python3 -c 'import jax; print("jax", jax.__version__)'
} >"$out/machine.txt" 2>&1

run() {
    local name="$1"
    shift
    echo "==> $name: $*"
    { echo "# $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg): $*"; "$@"; } 2>&1 | tee "$out/$name.txt"
}

for fam in "${families[@]}"; do
    flag=()
    suffix=""
    if [ -n "$fam" ]; then
        flag=(--family "$fam")
        suffix="-$fam"
    fi
    run "mlp$suffix" python3 bench/compare.py "${flag[@]}" --rounds 2 mlp_grad mlp_hvp
    sine=()
    for r in 1 5 10 50 200; do
        sine+=("maml_sine:r$r:exact_batched" "maml_sine:r$r:first_order_batched")
    done
    run "sine$suffix" python3 bench/compare.py "${flag[@]}" --rounds 1 "${sine[@]}"
    run "sine-pinned$suffix" python3 bench/compare.py "${flag[@]}" --rounds 1 --pin 1 "${sine[@]}"
    run "conv4$suffix" python3 bench/compare.py "${flag[@]}" --rounds 1 \
        maml_conv4:r1:exact maml_conv4:r1:first_order maml_conv4:r5:exact maml_conv4:r5:first_order
done
run rules python3 bench/compare.py --rounds 2 maml_sine:r10:exact maml_sine:r10:first_order \
    maml_sine:r10:exact_rule maml_sine:r10:first_order_rule maml_sine:r10:exact_adam maml_sine:r10:exact_lslr
run solvers bash scripts/bench-solvers.sh 2 200
uptime >>"$out/machine.txt"
