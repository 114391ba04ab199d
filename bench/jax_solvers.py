#!/usr/bin/env python3
"""SOBA and F2SA in JAX, on the data and hyperparameters of one trace written by
`cargo run --release --example bilevel_bench -- --trace soba|f2sa --problem quadratic|logreg`.

Runs the same number of outer steps from the same initial point (θ_0 = 0,
φ_0 = 0, v_0 = 0, z_0 = 0), compares the θ trajectory with ours (max over steps
of ‖θ_k^JAX − θ_k^ours‖_∞ / ‖θ_k^ours‖_∞), and times an outer step two ways:

- `jax_step_us`: one jitted step per Python call (state in, state out), the
  way a training loop calls it;
- `jax_scan_us`: all K steps in one jitted `lax.scan`, divided by K (no
  per-step dispatch: JAX's best case).

Each second-order product is one forward-over-reverse pass, as in ours:
`jax.jvp(jax.grad(g, (0, 1)), (x, y), (0, v))` gives (∇_x g, ∇_y g) and
(H_xy v, H_yy v) at once. Needs JAX_ENABLE_X64=1 (f64). Prints one JSON line.

    JAX_ENABLE_X64=1 python3 bench/jax_solvers.py TRACE.json [--repeats 5]
"""
import argparse
import json
import os
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def problem(p):
    """(g, f, dim θ, dim φ) for the trace's problem."""
    if p["kind"] == "quadratic":
        n, m = p["n"], p["p"]
        A = jnp.array(p["A"]).reshape(m, m)
        B = jnp.array(p["B"]).reshape(m, n)
        C = jnp.array(p["C"]).reshape(m, m)
        D = jnp.array(p["D"]).reshape(n, n)
        a, c, d = jnp.array(p["a"]), jnp.array(p["c"]), jnp.array(p["d"])

        def g(x, y):
            return y @ (0.5 * (A @ y) + B @ x + a)

        def f(x, y):
            return y @ (0.5 * (C @ y) + c) + x @ (0.5 * (D @ x) + d)

        return g, f, n, m
    if p["kind"] == "logreg":
        Z = jnp.array(p["train"]["data"]).reshape(p["train"]["shape"])
        V = jnp.array(p["val"]["data"]).reshape(p["val"]["shape"])
        dim = Z.shape[1]

        def g(x, y):
            return jnp.mean(jax.nn.softplus(Z @ y)) + 0.5 * jnp.sum(jnp.exp(x) * y * y)

        def f(x, y):
            return jnp.mean(jax.nn.softplus(V @ y))

        return g, f, dim, dim
    raise ValueError(p["kind"])


def soba(g, f, h):
    rho, gamma = h["rho"], h["gamma"]
    grad_g = jax.grad(g, (0, 1))
    grad_f = jax.grad(f, (0, 1))

    def step(state):
        k, x, y, v = state
        # One forward-over-reverse pass: ∇g and (H_xy v, H_yy v).
        (_, gy), (mv, hv) = jax.jvp(grad_g, (x, y), (jnp.zeros_like(x), v))
        fx, fy = grad_f(x, y)
        return (k + 1, x - gamma * (fx + mv), y - rho * gy, v - rho * (hv + fy))

    return step


def f2sa(g, f, h):
    rho_y, rho_z, gamma = h["rho_y"], h["rho_z"], h["gamma"]
    lam0, growth, lam_max = h["lambda0"], h["growth"], h["lambda_max"]

    def penalty(x, y, z, lam):
        return f(x, y) + (g(x, y) - g(x, z)) * lam

    grad_l = jax.grad(penalty, (0, 1, 2))

    def step(state):
        k, x, y, z = state
        lam = jnp.minimum(lam0 + growth * k, lam_max)
        gx, gy, gz = grad_l(x, y, z, lam)
        # ∇_z L = −λ ∇_z g, so z − ρ_z ∇_z g = z + (ρ_z/λ) ∇_z L.
        return (k + 1, x - gamma * gx, y - (rho_y / lam) * gy, z + (rho_z / lam) * gz)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    with open(a.trace) as fh:
        t = json.load(fh)
    g, f, n, m = problem(t["problem"])
    h = t["hyper"]
    step = {"soba": soba, "f2sa": f2sa}[h["method"]](g, f, h)
    K = t["steps"]
    init = (jnp.float64(0.0), jnp.zeros(n), jnp.zeros(m), jnp.zeros(m))

    def body(state, _):
        s = step(state)
        return s, s[1]

    scan = jax.jit(lambda s: jax.lax.scan(body, s, None, length=K))
    _, traj = scan(init)
    traj.block_until_ready()
    ours = jnp.array(t["theta"])
    scale = jnp.maximum(jnp.max(jnp.abs(ours), axis=1), 1e-300)
    rel = float(jnp.max(jnp.max(jnp.abs(traj - ours), axis=1) / scale))

    jstep = jax.jit(step)
    jstep(init)[1].block_until_ready()
    per_call, per_scan = [], []
    for _ in range(a.repeats):
        s = init
        t0 = time.perf_counter()
        for _ in range(K):
            s = jstep(s)
        s[1].block_until_ready()
        per_call.append((time.perf_counter() - t0) / K)
        t0 = time.perf_counter()
        _, tr = scan(init)
        tr.block_until_ready()
        per_scan.append((time.perf_counter() - t0) / K)
    per_call.sort()
    per_scan.sort()
    print(json.dumps({
        "problem": t["problem"]["kind"],
        "method": h["method"],
        "steps": K,
        "dims": [n, m],
        "ours_us": t["ours_seconds_per_step"] * 1e6,
        "jax_step_us": per_call[len(per_call) // 2] * 1e6,
        "jax_scan_us": per_scan[len(per_scan) // 2] * 1e6,
        "trajectory_max_rel_diff": rel,
        "jax": jax.__version__,
        "x64": bool(jax.config.jax_enable_x64),
    }))


if __name__ == "__main__":
    main()
