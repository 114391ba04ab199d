#!/usr/bin/env bash
# MPI tests of distributed meta-training (issue 14, docs/distributed.md); .ci/run calls it.
#
#  1. `mpiexec -n 2` runs 20 meta-steps of the sinusoid example (UFO with adaptive q,
#     r = 10, one rayon thread per rank): θ, the optimiser's and UFO's state (the
#     checkpoint of step 20) and the log equal the one-process run's bit for bit.
#  2. A rank frozen mid-run (SIGSTOP: a hung process or machine, which no transport reports):
#     the other exits non-zero within seconds with blo's message naming the lost rank and the
#     step (the heartbeat, here with a 2 s timeout); the last checkpoint is whole, and resuming
#     from it (one process) reproduces the uninterrupted run bit for bit.
#  3. A rank killed mid-run (SIGKILL), launched as docs/distributed.md says
#     (`mpiexec -disable-auto-cleanup -n 2 scripts/mpi-rank.sh …`): the other exits 75 within
#     seconds with blo's message naming the killed rank and the step it was in (the step must be
#     the number of log lines rank 0 wrote: steps 0 … K − 1 done); the job's status is non-zero;
#     resuming from the checkpoint reproduces the uninterrupted run bit for bit.
#  4. The same kill under a plain `mpiexec -n 2`: MPICH's launcher ends the whole job non-zero
#     within seconds (it kills the survivors at once, so no one names the rank); resuming from
#     the checkpoint again reproduces the uninterrupted run.
#
# Needs mpiexec (MPICH) and `cargo build --release --features mpi --example maml_sine`.
# Prints `N passed, M failed` and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples/maml_sine
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export RAYON_NUM_THREADS=1
pass=0
fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAILED: $*"; fail=$((fail + 1)); }
# A log without its timing fields.
strip_log() { sed -E 's/,"step_seconds":[^,]*,"elapsed_seconds":[^,}]*//' "$1"; }
# A checkpoint's JSON without its wall-clock time and self-fingerprint.
strip_state() { grep -v -e '"elapsed_seconds"' -e '"content_fingerprint"' "$1"; }
# Same θ file, same state, same log? $1, $2: run directories; $3: step.
same_run() {
    local t
    t="$(printf 'ckpt/theta-%08d.safetensors' "$3")"
    cmp -s "$1/$t" "$2/$t" &&
        diff -q <(strip_state "$1/ckpt/trainer.json") <(strip_state "$2/ckpt/trainer.json") >/dev/null &&
        diff -q <(strip_log "$1/log.jsonl") <(strip_log "$2/log.jsonl") >/dev/null
}

# 1. Two ranks against one process, 20 meta-steps.
sine=(--rs 10 --method ufo-adaptive --meta-steps 20 --checkpoint-every 5)
$bin "${sine[@]}" --threads 1 --train-dir "$work/one" >/dev/null
timeout 120 mpiexec -n 2 $bin --mpi "${sine[@]}" --train-dir "$work/two" >/dev/null 2>"$work/two.err"
if [ "$(wc -l <"$work/two/log.jsonl")" -eq 20 ] && same_run "$work/one" "$work/two" 20; then
    ok "mpiexec -n 2: θ, optimiser and UFO state, and the log of 20 steps equal one process's"
else
    bad "mpiexec -n 2 differs from one process (see $work)"
    diff <(strip_log "$work/one/log.jsonl") <(strip_log "$work/two/log.jsonl") | head -5
fi

# 2 and 3. Kill rank 1 once the checkpoint of step 50 exists (of 300 steps).
long=(--rs 10 --method ufo-adaptive --meta-batch 20 --meta-steps 300 --checkpoint-every 25)
$bin "${long[@]}" --threads 1 --train-dir "$work/full" >/dev/null
kill_run() { # $1: name, $2: signal, $3…: the launcher's command; leaves $work/$1.{rc,err,ms,pid1}
    local d="$work/$1" sig="$2" pid1 t0
    shift 2
    (
        timeout 60 "$@" $bin --mpi "${long[@]}" --train-dir "$d" >"$d.err" 2>&1
        echo $? >"$d.rc"
    ) &
    local job=$!
    for _ in $(seq 600); do
        [ -f "$d/ckpt/theta-00000050.safetensors" ] && break
        sleep 0.05
    done
    pid1="$(grep -o 'rank 1 = pid [0-9]*' "$d.err" | awk '{print $5}')"
    echo "$pid1" >"$d.pid1"
    t0=$(date +%s%N)
    kill -"$sig" "$pid1"
    wait $job
    echo $((($(date +%s%N) - t0) / 1000000)) >"$d.ms"
}
resumes() { # $1: name: resume with one process, compare with the uninterrupted run
    local d="$work/$1" step
    step="$(grep -o '"step": [0-9]*' "$d/ckpt/trainer.json" | head -1 | awk '{print $2}')"
    if $bin "${long[@]}" --threads 1 --train-dir "$d" --resume >/dev/null 2>"$d.resume.err" &&
        same_run "$work/full" "$d" 300; then
        ok "$1: the checkpoint of step $step is whole; resuming from it reproduces the uninterrupted run"
    else
        bad "$1: resuming from the checkpoint of step $step: $(cat "$d.resume.err")"
    fi
}

BLO_MPI_HEARTBEAT_SECS=2 kill_run heartbeat STOP mpiexec -n 2
rc=$(cat "$work/heartbeat.rc") ms=$(cat "$work/heartbeat.ms")
msg="$(grep 'rank 1 lost' "$work/heartbeat.err")"
if [ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && [[ "$msg" == "blo: rank 0: rank 1 lost (no heartbeat for 2 s) during "*" at outer step "* ]]; then
    ok "heartbeat: rank 1 frozen, rank 0 exited with $rc after $ms ms: $msg"
else
    bad "heartbeat: exit $rc after $ms ms, message: ${msg:-none}; stderr: $(head -c 2000 "$work/heartbeat.err")"
fi
resumes heartbeat

# Known race (open defect): if the kill lands while rank 0's UCX is copying from rank 1's memory
# (CMA transport), UCX aborts rank 0 inside MPI_Test ("process_vm_readv ... No such process")
# before blo can name the lost rank. That failure alone is retried, at most twice, and each
# retry is printed; any other failure fails at once.
for attempt in 1 2 3; do
    rm -rf "$work/killed" "$work/killed".*
    kill_run killed KILL mpiexec -disable-auto-cleanup -n 2 scripts/mpi-rank.sh
    grep -q 'process_vm_readv' "$work/killed.err" && ! grep -q 'lost (its process ended' "$work/killed.err" && [ $attempt -lt 3 ] || break
    echo "retry: killed: attempt $attempt hit the UCX CMA race (rank 0 aborted inside MPI_Test); running it again"
done
rc=$(cat "$work/killed.rc") ms=$(cat "$work/killed.ms")
msg="$(grep 'lost' "$work/killed.err")"
logged=$(wc -l <"$work/killed/log.jsonl")
# The op is `all_gather` or `all_gather (lengths)`, depending on when the kill lands.
head="blo: rank 0: rank 1 lost (its process ended: mpiexec's notice, no heartbeat for 1 s) during all_gather"
tail=" at outer step $logged; stopping (exit code 75)"
want="$head…$tail"
if [ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && [ "$logged" -ge 50 ] && [[ "$msg" == "$head"*"$tail" ]]; then
    ok "killed: rank 1 killed, rank 0 exited after $ms ms (job status $rc): $msg"
else
    bad "killed: job status $rc after $ms ms, $logged steps logged; wanted: $want; stderr: $(head -c 2000 "$work/killed.err")"
fi
resumes killed

kill_run launcher KILL mpiexec -n 2
rc=$(cat "$work/launcher.rc") ms=$(cat "$work/launcher.ms") pid1=$(cat "$work/launcher.pid1")
if [ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && grep -q "rank 1 = pid $pid1" "$work/launcher.err" &&
    grep -q -e "BAD TERMINATION" -e "Killed (signal 9)" "$work/launcher.err"; then
    ok "launcher: rank 1 (pid $pid1) killed, mpiexec ended the job with $rc after $ms ms: $(grep -o 'PID [0-9]*' "$work/launcher.err" | head -1) reported"
else
    bad "launcher: exit $rc after $ms ms; stderr: $(head -c 2000 "$work/launcher.err")"
fi
resumes launcher

echo "mpi: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
