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
#     3b. The same kill timed to land mid-transfer: rank 0 is frozen (SIGSTOP) while it
#     waits inside a collective, rank 1 then enters the exchange and waits for rank 0 (its
#     block announced, not yet taken), rank 1 is killed, rank 0 thawed. Under UCX's default
#     rendezvous rank 0 would next copy the block out of the dead rank's memory (CMA) and UCX
#     would abort it unnamed (6 of 10 runs before the fix); blo sets UCX_RNDV_THRESH=inf
#     before MPI_Init (docs/distributed.md, "Faults"), so rank 0 must name rank 1 every time.
#  4. The same kill under a plain `mpiexec -n 2`: MPICH's launcher ends the whole job non-zero
#     within seconds (it kills the survivors at once, so no one names the rank); resuming from
#     the checkpoint again reproduces the uninterrupted run.
#
# KILL_LOOP=N runs only checks 3 and 3b, N times each, without the resumes (the loop figures
# of docs/distributed.md, "Faults").
#
# Needs mpiexec (MPICH) and `cargo build --release --features mpi --example maml_sine`
# (or the binary named by MAML_SINE_BIN: CI builds it in the test profile, target/debug).
# Prints `N passed, M failed` and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${MAML_SINE_BIN:-target/release/examples/maml_sine}
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

loops="${KILL_LOOP:-0}"
# 1. Two ranks against one process, 20 meta-steps.
sine=(--rs 10 --method ufo-adaptive --meta-steps 20 --checkpoint-every 5)
[ "$loops" -gt 0 ] || {
    $bin "${sine[@]}" --threads 1 --train-dir "$work/one" >/dev/null
    timeout 120 mpiexec -n 2 $bin --mpi "${sine[@]}" --train-dir "$work/two" >/dev/null 2>"$work/two.err"
    if [ "$(wc -l <"$work/two/log.jsonl")" -eq 20 ] && same_run "$work/one" "$work/two" 20; then
        ok "mpiexec -n 2: θ, optimiser and UFO state, and the log of 20 steps equal one process's"
    else
        bad "mpiexec -n 2 differs from one process (see $work)"
        diff <(strip_log "$work/one/log.jsonl") <(strip_log "$work/two/log.jsonl") | head -5
    fi

}

# 2 and 3. Kill rank 1 once the checkpoint of step 50 exists (of 300 steps).
long=(--rs 10 --method ufo-adaptive --meta-batch 20 --meta-steps 300 --checkpoint-every 25)
[ "$loops" -gt 0 ] || $bin "${long[@]}" --threads 1 --train-dir "$work/full" >/dev/null
# The syscalls a thread sleeping in std::thread::sleep (blo's Mpi::poll between tests) is in.
case "$(uname -m)" in
aarch64) naps=" 101 115 " ;;
*) naps=" 35 230 " ;; # x86_64: nanosleep, clock_nanosleep
esac
napping() { # $1: pid: is its main thread asleep in a syscall of $naps?
    local sc
    read -r sc _ <"/proc/$1/syscall" 2>/dev/null && [[ "$naps" == *" $sc "* ]]
}
kill_run() { # $1: name, $2: signal, $3…: the launcher's command; leaves $work/$1.{rc,err,ms,pid1}
    # With MID_TRANSFER=1: rank 0 frozen inside a collective, rank 1 killed once it waits there too.
    local d="$work/$1" sig="$2" pid0 pid1 t0 n
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
    pid0="$(grep -o 'rank 0 = pid [0-9]*' "$d.err" | awk '{print $5}')"
    pid1="$(grep -o 'rank 1 = pid [0-9]*' "$d.err" | awk '{print $5}')"
    echo "$pid1" >"$d.pid1"
    if [ "${MID_TRANSFER:-0}" = 1 ]; then
        # Freeze rank 0 while it naps in Mpi::poll (checked again once stopped), …
        for _ in $(seq 1000); do
            for _ in $(seq 2000); do napping "$pid0" && break; done
            kill -STOP "$pid0"
            sleep 0.01
            napping "$pid0" && break
            kill -CONT "$pid0"
        done
        # … then wait until rank 1 naps there too (three looks 10 ms apart).
        n=0
        for _ in $(seq 500); do
            if napping "$pid1"; then n=$((n + 1)); else n=0; fi
            [ $n -ge 3 ] && break
            sleep 0.01
        done
    fi
    t0=$(date +%s%N)
    kill -"$sig" "$pid1"
    if [ "${MID_TRANSFER:-0}" = 1 ]; then
        sleep 0.05
        kill -CONT "$pid0"
    fi
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

[ "$loops" -gt 0 ] || {
    BLO_MPI_HEARTBEAT_SECS=2 kill_run heartbeat STOP mpiexec -n 2
    rc=$(cat "$work/heartbeat.rc") ms=$(cat "$work/heartbeat.ms")
    msg="$(grep 'rank 1 lost' "$work/heartbeat.err")"
    if [ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && [[ "$msg" == "blo: rank 0: rank 1 lost (no heartbeat for 2 s) during "*" at outer step "* ]]; then
        ok "heartbeat: rank 1 frozen, rank 0 exited with $rc after $ms ms: $msg"
    else
        bad "heartbeat: exit $rc after $ms ms, message: ${msg:-none}; stderr: $(head -c 2000 "$work/heartbeat.err")"
    fi
    resumes heartbeat
}

# A rank killed under the wrapper; then killed mid-transfer (see 3b above).
# The op is `all_gather` or `all_gather (lengths)`, depending on when the kill lands.
head="blo: rank 0: rank 1 lost (its process ended: mpiexec's notice, no heartbeat for 1 s) during all_gather"
for i in $(seq "$(((loops > 0 ? loops : 1) * 2))"); do
    name=$([ $((i % 2)) = 1 ] && echo killed || echo transfer)
    rm -rf "${work:?}/$name" "$work/$name".*
    MID_TRANSFER=$([ $name = transfer ] && echo 1 || echo 0) \
        kill_run $name KILL mpiexec -disable-auto-cleanup -n 2 scripts/mpi-rank.sh
    rc=$(cat "$work/$name.rc") ms=$(cat "$work/$name.ms")
    msg="$(grep ' lost (' "$work/$name.err")"
    logged=$(wc -l <"$work/$name/log.jsonl")
    tail=" at outer step $logged; stopping (exit code 75)"
    if [ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && [ "$logged" -ge 50 ] && [[ "$msg" == "$head"*"$tail" ]]; then
        ok "$name: rank 1 killed, rank 0 exited after $ms ms (job status $rc): $msg"
    else
        bad "$name: job status $rc after $ms ms, $logged steps logged; wanted: $head…$tail; stderr: $(head -c 2000 "$work/$name.err")"
    fi
    [ "$loops" -gt 0 ] || resumes $name
done

[ "$loops" -gt 0 ] || {
    kill_run launcher KILL mpiexec -n 2
    rc=$(cat "$work/launcher.rc") ms=$(cat "$work/launcher.ms") pid1=$(cat "$work/launcher.pid1")
    if [ "$rc" -ne 0 ] && [ "$ms" -lt 10000 ] && grep -q "rank 1 = pid $pid1" "$work/launcher.err" &&
        grep -q -e "BAD TERMINATION" -e "Killed (signal 9)" "$work/launcher.err"; then
        ok "launcher: rank 1 (pid $pid1) killed, mpiexec ended the job with $rc after $ms ms: $(grep -o 'PID [0-9]*' "$work/launcher.err" | head -1) reported"
    else
        bad "launcher: exit $rc after $ms ms; stderr: $(head -c 2000 "$work/launcher.err")"
    fi
    resumes launcher
}

echo "mpi: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
