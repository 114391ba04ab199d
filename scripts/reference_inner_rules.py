#!/usr/bin/env python3
"""Independent reference for blo's inner-optimiser rules (docs/math.md §12).

Computes, with JAX in float64, the unrolled hypergradient dF/dθ of
F(θ) = L_out(φ_r(θ)) for r = 10 steps of

  - Adam (bias-corrected, ε inside the square root: φ −= α m̂ / √(v̂ + ε²)),
  - MAML++ LSLR (per-layer, per-step learnable steps, an [r, 3] table in θ),

on the small problem of crates/blo/tests/suite/inner_rules.rs (`Net`), defined here
identically with closed-form data (no random numbers):

  batch(j): X[k, d] = sin(0.7 k + 1.3 d + 0.5 j) (4 × 2), y[k] = 0.8 cos(k + 0.3 j)
  fit(j, φ) = mean((Σ_c tanh(X W + b)[:, c] v[c] − y)²),   φ = (W [2,3], b [3], v [3])
  L_in(θ, φ; j) = fit(j, φ) + 0.05 σ(ρ) ‖W‖²,   L_out(φ) = fit(100, φ),   φ_0 = θ[:3].

Writes crates/blo/tests/fixtures/inner_rules_reference.json: per case θ (the
initial point, flattened in θ's order, row-major, with its shapes), the rule's
hyperparameters, F and dF/dθ, and the batches X_j, y_j of every step j = 1..r
and of the outer loss (j = 100) as this script computed them. The test
`rules_agree_with_the_jax_reference` reads it: it starts from the same θ with
the same hyperparameters, checks that its own batches equal these (so both
sides fit the same data), and compares F and dF/dθ. Regenerate with

  JAX_ENABLE_X64=1 python3 scripts/reference_inner_rules.py
"""

import json
import math
import os
import sys

os.environ.setdefault("JAX_ENABLE_X64", "1")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

R = 10
OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "blo", "tests", "fixtures", "inner_rules_reference.json",
)


def batch(j, n=4):
    x = [[math.sin(0.7 * k + 1.3 * d + 0.5 * j) for d in range(2)] for k in range(n)]
    y = [math.cos(k + 0.3 * j) * 0.8 for k in range(n)]
    return jnp.array(x), jnp.array(y)


def fit(j, phi):
    w, b, v = phi
    x, y = batch(j)
    h = jnp.tanh(x @ w + b)
    return jnp.mean((jnp.sum(h * v, axis=1) - y) ** 2)


def inner_loss(theta, phi, j):
    rho = theta[3]
    return fit(j, phi) + jnp.sum(jax.nn.sigmoid(rho)) * jnp.sum(phi[0] ** 2) * 0.05


def outer_loss(phi):
    return fit(100, phi)


ADAM = dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8)


def unroll_adam(theta):
    phi = list(theta[:3])
    m = [jnp.zeros_like(p) for p in phi]
    v = [jnp.zeros_like(p) for p in phi]
    a, b1, b2, eps = ADAM["lr"], ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
    for j in range(1, R + 1):
        g = jax.grad(lambda p: inner_loss(theta, p, j))(phi)
        c1 = 1.0 / (1.0 - b1 ** j)
        c2 = 1.0 / (1.0 - b2 ** j)
        for i in range(3):
            m[i] = b1 * m[i] + (1.0 - b1) * g[i]
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] ** 2
            phi[i] = phi[i] - a * (m[i] * c1) / jnp.sqrt(v[i] * c2 + eps * eps)
    return outer_loss(phi)


def unroll_lslr(theta):
    phi = list(theta[:3])
    table = theta[4]  # [r, 3]: step j of φ tensor i is table[j − 1, i]
    for j in range(1, R + 1):
        g = jax.grad(lambda p: inner_loss(theta, p, j))(phi)
        phi = [phi[i] - table[j - 1, i] * g[i] for i in range(3)]
    return outer_loss(phi)


def base_theta():
    w = jnp.array([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]])
    b = jnp.array([0.05, -0.1, 0.2])
    v = jnp.array([0.7, -0.5, 0.4])
    rho = jnp.array([-0.3])
    return [w, b, v, rho]


def case(f, theta):
    loss, grad = jax.value_and_grad(f)(theta)
    flat = lambda ts: [float(x) for t in ts for x in jnp.ravel(t)]
    return {
        "theta_shapes": [list(t.shape) for t in theta],
        "theta": flat(theta),
        "loss": float(loss),
        "grad": flat(grad),
    }


def main():
    assert jnp.zeros(1).dtype == jnp.float64, "run with JAX_ENABLE_X64=1"
    table = jnp.array([[0.1 + 0.01 * (3 * j + i) for i in range(3)] for j in range(R)])
    out = {
        "generator": "scripts/reference_inner_rules.py",
        "jax": jax.__version__,
        "r": R,
        "batches": {
            str(j): {"x": [float(v) for v in jnp.ravel(batch(j)[0])],
                     "y": [float(v) for v in batch(j)[1]]}
            for j in list(range(1, R + 1)) + [100]
        },
        "adam": dict(case(unroll_adam, base_theta()), **ADAM),
        "lslr": case(unroll_lslr, base_theta() + [table]),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
