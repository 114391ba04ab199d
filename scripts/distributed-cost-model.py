#!/usr/bin/env python3
"""docs/distributed.md's cost model, fed with scripts/bench-distributed.sh's output.

    python3 scripts/distributed-cost-model.py < bench.jsonl

Per meta-step of B tasks on N ranks (one core each), m = ceil(B/N) tasks per rank:
    T_N = m*c + 2*alpha*ceil(log2 N) + beta*(N-1)*m*P
(compute; two all-gathers' latency, lengths then data; every rank receives the
other ranks' per-task estimates, P bytes each), T_1 = B*c, efficiency
E = T_1 / (N*T_N). Prints medians, the 2-rank check, and the smallest B with
E >= 0.8 for N = 8, 64, 512 on the networks listed.
"""
import json, math, statistics, sys

rows = [json.loads(l) for l in sys.stdin if l.strip()]
med = {}
for r in rows:
    if "bench" in r:
        med.setdefault((r["bench"], r["method"], r["mode"]), []).append(r["ms_per_step"])
med = {k: statistics.median(v) for k, v in med.items()}
gather = {r["bytes_per_rank"]: r["median_s"] for r in rows if "bytes_per_rank" in r}

# (bench, method): (B, P bytes per task incl. ~300 B of stats, message bytes per rank in the bench)
work = {
    ("sinusoid", "fo"): (10, 14088 + 300, 72000),
    ("sinusoid", "exact"): (10, 14088 + 300, 72000),
    ("sinusoid", "ufo-adaptive"): (10, 14088 + 300, 72000),
    ("fewshot", "fo"): (4, 115860 + 300, 233000),
}
print("| workload | B | 1 process × 1 thread | 1 process × 2 threads | 2 ranks × 1 thread | all-gather alone | model T_2 = ⌈B/2⌉c + all-gather | c (per task) |")
print("|---|---|---|---|---|---|---|---|")
cs = {}
for (bench, method), (b, p, msg) in work.items():
    t11, t12, t21 = (med.get((bench, method, m)) for m in ("1x1", "1x2", "2x1"))
    if t11 is None:
        continue
    c = t11 / b
    cs[(bench, method)] = (c, p)
    g = 1e3 * gather.get(msg, float("nan"))
    model = math.ceil(b / 2) * c + g
    print(f"| {bench} {method} | {b} | {t11:.2f} ms | {t12:.2f} ms | {t21:.2f} ms | {g:.2f} ms | {model:.2f} ms | {c:.3f} ms |")

def min_batch(n, c_ms, p, alpha_us, beta_ns):
    c, alpha, beta = c_ms * 1e-3, alpha_us * 1e-6, beta_ns * 1e-9
    lat = 2 * alpha * math.ceil(math.log2(n))
    denom = 0.2 * c - 0.8 * beta * (n - 1) * p
    if denom <= 0:
        return None
    return n * max(1, math.ceil(1.6 * lat / denom))

alpha0 = 1e6 * gather.get(0, float("nan"))
b72, b233 = gather.get(72000), gather.get(233000)
beta0 = 1e9 * (b233 - b72) / (233000 - 72000) if b72 and b233 else float("nan")
nets = [
    (f"this VM, shared memory (measured: α = {alpha0:.1f} µs, β = {beta0:.2f} ns/B)", alpha0, beta0),
    ("10 GbE, TCP (assumed: α = 50 µs, β = 0.9 ns/B)", 50.0, 0.9),
    ("100 Gb/s InfiniBand (assumed: α = 3 µs, β = 0.085 ns/B)", 3.0, 0.085),
]
def table(title, smallest_batch):
    """Prints the smallest B with E >= 0.8 for each workload, network and N."""
    print()
    print(f"| {title} | network | N = 8 | N = 64 | N = 512 |")
    print("|---|---|---|---|---|")
    for (bench, method), (c, p) in cs.items():
        for name, a, bt in nets:
            cells = []
            for n in (8, 64, 512):
                m = smallest_batch(n, c, p, a, bt)
                cells.append("never" if m is None else f"B ≥ {m}")
            print(f"| {bench} {method} | {name} | " + " | ".join(cells) + " |")


table("workload", min_batch)

# The same with an exact tree reduction instead of the per-task all-gather (not
# implemented; see docs/distributed.md): a reduce and a broadcast of one θ-sized
# buffer along ceil(log2 N) levels, T_comm = 2*ceil(log2 N)*(alpha + beta*P).
def min_batch_tree(n, c_ms, p, alpha_us, beta_ns):
    comm = 2 * math.ceil(math.log2(n)) * (alpha_us * 1e-6 + beta_ns * 1e-9 * p)
    return n * max(1, math.ceil(4 * comm / (c_ms * 1e-3)))


table("workload (tree reduction, not implemented)", min_batch_tree)
