#!/usr/bin/env python3
"""Side by side: time each benchmark config in JAX and in this project, print ours / JAX.

    python3 bench/compare.py [--rounds N] [--pin CPU] [--family F] [--jax-ynn on|off] [--json] CONFIG [CONFIG ...]

Run from anywhere inside the repository (it finds the root from its own path).
Every round runs, for each config, the JAX workload (bench/jax_workloads.py)
and then our runner (`examples/bench.rs`, built once with cargo first), one
process per config and side, so each peak memory figure belongs to one
workload. A side's figure is the median over rounds of its per-call medians;
the ratio is taken within each round and then its median reported (a drift of
the machine's speed between rounds cancels in a ratio taken within a round).
Configs and their definitions: bench/README.md. Our `maml_sine:rR:exact_rule`
and `first_order_rule` (the inner SGD as a generic rule) are timed against
JAX's `exact` and `first_order` (the same numbers), and the table adds their
time over our hand path's when both are run; likewise our batched
`exact_batched` and `first_order_batched` (a chunk of tasks per tape, issue 11),
against JAX's `exact`/`first_order` and our per-task path. The table lists every
round's times and ratio after the medians. Needs the JAX install line in
bench/requirements.txt.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX = [sys.executable, os.path.join(ROOT, "bench", "jax_workloads.py")]


def json_line(cmd, env=None):
    """Runs cmd (with env added to this process's environment) and returns its
    last stdout line that parses as a JSON object."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=None if not env else {**os.environ, **env})
    if proc.returncode != 0:
        sys.exit(f"compare.py: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"compare.py: `{' '.join(cmd)}` printed no JSON line:\n{proc.stdout[-2000:]}")


def build_runner():
    """Builds our runner once and returns its path, so the timed rounds run the
    binary directly (a `cargo run` per process would wait for the build lock
    whenever another build holds it)."""
    cmd = ["cargo", "build", "--release", "--example", "bench", "--message-format=json-render-diagnostics"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"compare.py: `{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and target.get("name") == "bench" and "example" in target.get("kind", []):
            if msg.get("executable"):
                return msg["executable"]
    sys.exit("compare.py: cargo built no `bench` example executable")


# Our configs that compute the same numbers as a per-task, hand-derived config in
# another way: the inner optimiser as a generic rule (blo::rules), or a chunk of
# tasks batched on one tape (models::BatchedRegressionMaml). JAX has one
# formulation of each, the hand one's. Mode -> (twin mode, what the two are).
TWINS = {
    "exact_rule": ("exact", "generic rule / hand path"),
    "first_order_rule": ("first_order", "generic rule / hand path"),
    "exact_batched": ("exact", "batched / per-task"),
    "first_order_batched": ("first_order", "batched / per-task"),
}


# `--family F`: the instruction sets both sides may use, so one machine can stand
# for another kind. Ours: TAPE_KERNELS (our kernel family). JAX: oneDNN's ISA cap
# (its matrix products; ONEDNN_VERBOSE=1 prints the ISA it dispatched to) and
# XLA's LLVM code generation cap (its fused elementwise code). On an AVX-512
# machine, `--family avx2` measures what an AVX2+FMA machine would run: ours,
# and JAX's oneDNN and XLA code, but **not** JAX's YNNPACK dots (jax 0.10.2),
# which choose their kernels from CPUID with no cap: under these caps a perf
# profile of `mlp_hvp_deep` on a Zen 5 had 25 % of JAX's samples in
# `ynn::dot_fp32_5x64x1_1x16x1_avx512` (docs/benchmarks.md, "ynn"). So, on an
# AVX-512 machine, `--family avx2` also runs JAX under `bench/cpuid_avx2`
# (LD_PRELOAD; Linux's CPUID faulting), which hides AVX-512 from every `cpuid`
# of the process: YNNPACK, oneDNN and XLA then see an AVX2+FMA CPU. numpy,
# which reads CPUID too, must then report no AVX512F, or the run stops.
# Where CPUID faulting is missing (`cpuid_fault` not in /proc/cpuinfo), JAX
# runs with its AVX-512 dots and the table says so. `--jax-ynn off` turns
# YNNPACK's fusions off (`--xla_cpu_experimental_ynn_fusion_type=`), and JAX's
# dots then take its other paths (Eigen's contraction in `mlp_hvp_deep`'s
# profile), which JAX does not take by default on any machine.
FAMILIES = {
    "avx512": ({"TAPE_KERNELS": "avx512"}, {}),
    "avx2": ({"TAPE_KERNELS": "avx2"},
             {"ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}),
    "portable": ({"TAPE_KERNELS": "portable"},
                 {"ONEDNN_MAX_CPU_ISA": "SSE41", "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}),
}


def hand_twin(config):
    """The hand-path config computing the same numbers as `config`, or None."""
    head, _, mode = config.rpartition(":")
    return f"{head}:{TWINS[mode][0]}" if mode in TWINS else None


# `--jax-ynn off`: the XLA flag that turns YNNPACK's fusions off (see above).
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="


def cpu_flags():
    """The CPU's flags (Linux: the first `flags` line of /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(l.split(":", 1)[1].split()) for l in f if l.startswith("flags")), set())
    except OSError:
        return set()


def has_avx512():
    """Whether this CPU has AVX-512F."""
    return "avx512f" in cpu_flags()


CPUID_AVX2 = os.path.join(ROOT, "bench", "cpuid_avx2")


def avx2_preload():
    """On an AVX-512 CPU with CPUID faulting: builds bench/cpuid_avx2 and
    returns the environment that runs a process under it, after checking
    that numpy then sees no AVX512F (and still AVX2 and FMA3). Else None."""
    if not has_avx512() or "cpuid_fault" not in cpu_flags():
        return None
    cmd = ["cargo", "build", "--release", "--manifest-path", os.path.join(CPUID_AVX2, "Cargo.toml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"compare.py: `{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    env = {"LD_PRELOAD": os.path.join(CPUID_AVX2, "target", "release", "libcpuid_avx2.so")}
    probe = ("from numpy._core._multiarray_umath import __cpu_features__ as f; "
             "print(f['AVX512F'], f['AVX2'], f['FMA3'])")
    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, **env}).stdout.split()
    if seen != ["False", "True", "True"]:
        sys.exit(f"compare.py: under {env['LD_PRELOAD']} numpy saw AVX512F, AVX2, FMA3 = {seen}, "
                 "not False, True, True")
    return env


def measure(ours_cmd, config, rounds, pin, family=None, ynn=True, preload=None):
    ours_env, jax_env = FAMILIES[family] if family else ({}, {})
    if preload:
        jax_env = {**jax_env, **preload}
    if not ynn:
        jax_env = {**jax_env, "XLA_FLAGS": " ".join(filter(None, [jax_env.get("XLA_FLAGS"), YNN_OFF]))}
    prefix = ["taskset", "-c", pin] if pin is not None else []
    jax_config = hand_twin(config) or config
    ours, jax, ratios = [], [], []
    for _ in range(rounds):
        j = json_line(prefix + JAX + [jax_config], jax_env)
        o = json_line(prefix + ours_cmd + [config], ours_env)
        jax.append(j)
        ours.append(o)
        ratios.append(o["median_ms"] / j["median_ms"])
    peak = lambda runs, key: max((r[key] for r in runs if r.get(key) is not None), default=None)
    return {
        "config": config,
        "jax_config": jax_config,
        "rounds": rounds,
        "ours_ms": statistics.median(r["median_ms"] for r in ours),
        "jax_ms": statistics.median(r["median_ms"] for r in jax),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": [{"ours_ms": o["median_ms"], "jax_ms": j["median_ms"], "ratio": q}
                   for o, j, q in zip(ours, jax, ratios)],
        "ours_peak_rss_mib": peak(ours, "peak_rss_mib"),
        "jax_steady_rss_mib": peak(jax, "steady_peak_rss_mib"),
        # The value and |gradient| each side reports at its θ_0 (last round):
        # different random numbers on the two sides, so equal only in kind.
        "ours_loss": ours[-1].get("loss"),
        "jax_loss": jax[-1].get("loss"),
        "ours_grad_norm": ours[-1].get("grad_norm"),
        "jax_grad_norm": jax[-1].get("grad_norm"),
        "ours_threads": ours[-1].get("rayon_threads"),
        "ours_kernel_family": ours[-1].get("kernel_family"),
        "jax_env": jax_env,
        "family": family,
        "jax_ynn": ynn,
        "jax_cpuid_avx2": bool(preload),
        "ratios": ratios,
        # Share of this machine's FMA peak (see examples/bench.rs `fma_peak`),
        # median over rounds, where our runner reports one.
        "ours_fma_peak_share": median_of(ours, lambda r: r.get("fma_peak_share")),
        "ours_conv4_gemms_peak_share": median_of(ours, lambda r: (r.get("conv4_gemms") or {}).get("fma_peak_share")),
        "ours_fma_peak_gflops": (ours[-1].get("fma_peak") or {}).get("gflops"),
        # mlp_hvp: our HVP's time over our gradient's, from alternate calls in
        # one process (examples/bench/mlp.rs `over_grad`), per round.
        "ours_hvp_over_grad": [r["hvp_over_grad"]["median_ratio"] for r in ours if "hvp_over_grad" in r],
    }


def median_of(runs, get):
    """The median of get(run) over the runs that have it, or None."""
    xs = [get(r) for r in runs]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def table(rows):
    head = f"{'config':34} {'ours ms':>10} {'jax ms':>10} {'ours/jax':>9} {'(min-max)':>13} {'ours MiB':>9} {'jax MiB':>9}"
    lines = [head]
    fmt = lambda x: f"{x:9.1f}" if x is not None else f"{'-':>9}"
    for r in rows:
        spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
        lines.append(
            f"{r['config']:34} {r['ours_ms']:10.3f} {r['jax_ms']:10.3f} {r['ratio']:9.2f} {spread:>13} "
            f"{fmt(r['ours_peak_rss_mib'])} {fmt(r['jax_steady_rss_mib'])}"
        )
    lines.append("ratio < 1: we are faster; ours MiB = our process's peak RSS, jax MiB = JAX's peak over its timed calls")
    families = sorted({r["ours_kernel_family"] or "-" for r in rows})
    lines.append(f"our small-product kernel family: {', '.join(families)} (TAPE_KERNELS=portable|avx2|avx512 forces one)")
    caps = sorted({" ".join(f"{k}={v}" for k, v in r["jax_env"].items()) for r in rows if r["jax_env"]})
    if caps:
        lines.append(f"JAX's instruction sets capped by: {'; '.join(caps)}")
    if any(r["jax_cpuid_avx2"] for r in rows):
        lines.append("JAX ran under bench/cpuid_avx2: AVX-512 hidden from CPUID (numpy saw no AVX512F), "
                     "so its YNNPACK dots chose as on an AVX2+FMA machine")
    if any(r["family"] in ("avx2", "portable") and r["jax_ynn"] and not r["jax_cpuid_avx2"]
           for r in rows) and has_avx512():
        lines.append("warning: JAX's YNNPACK dots ignore these caps and run AVX-512 kernels on this CPU, "
                     "so the JAX side is not capped (bench/compare.py, FAMILIES; --jax-ynn off turns YNNPACK off)")
    if any(not r["jax_ynn"] for r in rows):
        lines.append(f"JAX's YNNPACK fusions off ({YNN_OFF}): its dots take other paths, "
                     "not what JAX runs by default on any machine")
    lines.append("ours/jax per round: " + "; ".join(
        f"{r['config']} " + " ".join(f"{x:.2f}" for x in r["ratios"]) for r in rows))
    for r in rows:
        for key, what in [("ours_fma_peak_share", "the whole call's GEMM work"),
                          ("ours_conv4_gemms_peak_share", "the Conv4 forward GEMMs alone")]:
            if r.get(key) is not None:
                lines.append(f"{r['config']}: {100 * r[key]:.1f}% of the FMA peak ({what}; "
                             f"peak {r['ours_fma_peak_gflops']} GFLOP/s, see examples/bench.rs fma_peak)")
    for r in rows:
        if r.get("ours_hvp_over_grad"):
            per = r["ours_hvp_over_grad"]
            lines.append(f"{r['config']}: our HVP / our gradient {statistics.median(per):.2f} (per round "
                         + " ".join(f"{x:.2f}" for x in per)
                         + "; median over alternate calls in one process, examples/bench/mlp.rs over_grad)")
    by_config = {r["config"]: r for r in rows}
    for r in rows:
        if r["jax_config"] != r["config"]:
            lines.append(f"{r['config']}: JAX side is {r['jax_config']} (the same numbers)")
        hand = by_config.get(hand_twin(r["config"]))
        if hand is not None:
            what = TWINS[r["config"].rpartition(":")[2]][1]
            lines.append(f"{r['config']} / {hand['config']} (ours, {what}): "
                         f"{r['ours_ms'] / hand['ours_ms']:.3f}")
    lines.append("every round (ours ms / jax ms = ratio):")
    for r in rows:
        per = "   ".join(f"{x['ours_ms']:.3f}/{x['jax_ms']:.3f} = {x['ratio']:.2f}" for x in r["rounds"])
        lines.append(f"  {r['config']:34} {per}")
    num = lambda x: f"{x:.6g}" if isinstance(x, (int, float)) else "-"
    lines.append("value and |gradient| at θ_0 (last round; the sides draw different random numbers):")
    for r in rows:
        lines.append(f"  {r['config']:34} ours loss {num(r['ours_loss'])} |g| {num(r['ours_grad_norm'])}"
                     f"   jax loss {num(r['jax_loss'])} |g| {num(r['jax_grad_norm'])}")
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", metavar="CONFIG")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per config (default 3)")
    ap.add_argument("--pin", metavar="CPU", help="run both sides under `taskset -c CPU`")
    ap.add_argument("--family", choices=sorted(FAMILIES),
                    help="force our kernel family (TAPE_KERNELS) and cap JAX's instruction sets to match "
                         "(oneDNN and XLA), so one machine measures another kind")
    ap.add_argument("--jax-ynn", choices=["on", "off"], default="on",
                    help="JAX's YNNPACK fusions (default on, as JAX ships; off: its dots take other paths; "
                         "see FAMILIES on why this matters under --family)")
    ap.add_argument("--json", action="store_true", help="one JSON line per config instead of the table")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: need at least 1")
    known = set(subprocess.run(JAX + ["--list"], capture_output=True, text=True, check=True).stdout.split())
    for c in args.configs:
        if c not in known and not c.startswith("maml_sine:") and not c.startswith("maml_conv4:"):
            ap.error(f"unknown config {c!r}; known: {' '.join(sorted(known))}")
    ours = [build_runner()]
    preload = avx2_preload() if args.family == "avx2" else None
    rows = []
    for config in args.configs:
        rows.append(measure(ours, config, args.rounds, args.pin, args.family, args.jax_ynn == "on", preload))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
