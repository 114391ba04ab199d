#!/usr/bin/env bash
# docs/distributed.md's measurements: time per meta-step of one process with 1
# and 2 rayon threads (1x1, 1x2) against 2 MPI ranks with 1 thread each (2x1) (sinusoid MAML r = 10,
# few-shot Conv4), one process with 1 thread at a smaller meta-batch (1x1-small: with 1x1 it
# separates the per-task compute c from the per-step serial work s, T_1(B) = s + B·c), and the
# all-gather's time alone for each step's message size.
# Prints one JSON object per line. Needs MPICH and:
#   cargo build --release --features mpi --example maml_sine --example fewshot --example comm_bench
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${REPS:-5}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ex=target/release/examples
echo "{\"machine\":\"$(lscpu | sed -n 's/^Model name: *//p')\",\"cpus\":$(nproc),\"load_before\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
row() { # bench method mode rep ms meta-batch
    echo "{\"bench\":\"$1\",\"method\":\"$2\",\"mode\":\"$3\",\"rep\":$4,\"ms_per_step\":$5,\"meta_batch\":$6}"
}

# sinusoid, B = 10 (2 for 1x1-small): milliseconds per meta-step as the example reports them
# (mean over 200 steps).
for method in fo exact ufo-adaptive; do
    for i in $(seq "$reps"); do
        for mode in 1x1 1x2 2x1 1x1-small; do
            b=10
            [ $mode = 1x1-small ] && b=2
            args=(--rs 10 --meta-batch $b --meta-steps 200 --checkpoint-every 1000 --method "$method")
            rm -rf "$work/s"
            if [ $mode = 1x1 ] || [ $mode = 1x1-small ]; then
                out="$(RAYON_NUM_THREADS=1 $ex/maml_sine "${args[@]}" --train-dir "$work/s")"
            elif [ $mode = 1x2 ]; then
                out="$(RAYON_NUM_THREADS=2 $ex/maml_sine "${args[@]}" --train-dir "$work/s")"
            else
                out="$(RAYON_NUM_THREADS=1 mpiexec -n 2 $ex/maml_sine --mpi "${args[@]}" --train-dir "$work/s" 2>/dev/null)"
            fi
            row sinusoid "$method" $mode "$i" "$(echo "$out" | sed -E 's/.* ([0-9.]+) ms per meta-step.*/\1/')" $b
        done
    done
done

# few-shot Conv4 (5-way 1-shot glyphs, 32 filters), first order, B = 4 (1 for 1x1-small), 30 steps.
for i in $(seq "$reps"); do
    for mode in 1x1 1x2 2x1 1x1-small; do
        b=4
        if [ $mode = 1x1-small ]; then
            b=1
            out="$(RAYON_NUM_THREADS=1 $ex/fewshot --methods fo --meta-batch 1 --meta-steps 30 --test-episodes 10 --json --no-figure)"
        elif [ $mode = 1x1 ]; then
            out="$(RAYON_NUM_THREADS=1 $ex/fewshot --methods fo --meta-batch 4 --meta-steps 30 --test-episodes 10 --json --no-figure)"
        elif [ $mode = 1x2 ]; then
            out="$(RAYON_NUM_THREADS=2 $ex/fewshot --methods fo --meta-batch 4 --meta-steps 30 --test-episodes 10 --json --no-figure)"
        else
            out="$(RAYON_NUM_THREADS=1 mpiexec -n 2 $ex/fewshot --mpi --methods fo --meta-batch 4 --meta-steps 30 --test-episodes 10 --json --no-figure 2>/dev/null)"
        fi
        s="$(echo "$out" | sed -E 's/.*"train_seconds":([0-9.e-]+).*/\1/')"
        row fewshot fo $mode "$i" "$(awk -v s="$s" 'BEGIN { printf "%.3f", 1000 * s / 30 }')" $b
    done
done

# The all-gather alone, at each step's message size per rank (B/2 tasks × |θ| floats + stats):
# sinusoid 5 × 14,088 B + stats ≈ 72 kB, few-shot 2 × 115,860 B + stats ≈ 233 kB.
mpiexec -n 2 $ex/comm_bench --mpi --bytes 0,72000,233000 --reps 300 2>/dev/null
# The same after each rank computed for about its block's time (⌈B/2⌉·c: sinusoid fo ≈ 0.5 ms,
# exact ≈ 6 ms, UFO ≈ 10 ms; few-shot ≈ 100 ms): the exchange including the wait for the later rank.
mpiexec -n 2 $ex/comm_bench --mpi --bytes 72000 --work-us 500,6000,10000 --reps 100 --warmup 5 2>/dev/null
mpiexec -n 2 $ex/comm_bench --mpi --bytes 233000 --work-us 100000 --reps 40 --warmup 3 2>/dev/null
echo "{\"load_after\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
