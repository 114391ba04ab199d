#!/usr/bin/env python3
"""The JAX (CPU, float32, jax.jit) side of the benchmarks in docs/benchmarks.md.

    python3 bench/jax_workloads.py --list     # the configs
    python3 bench/jax_workloads.py CONFIG     # time one config, print one JSON line

One config per process, so the reported peak memory belongs to that workload.
Every config is the same work as `cargo run --release --example bench -- CONFIG`
(see bench/README.md for the table of definitions): same shapes, distributions
and hyperparameters, not the same random numbers.

Timing, the same as our runner: compile (trace, lower, XLA compile) is timed
apart; then one call and three warm-up calls; then N timed calls, each waited
for with block_until_ready, N = clamp(5 s / t_call, lo, 1000) with lo = 20
(10 if a call takes over 0.5 s, 5 if over 2 s); the median is the figure.
"""
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


# ------------------------------------------------------------------ measuring
def rusage_peak_mib():
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def status_field_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def time_jitted(fn, args):
    """Compile fn for args, then time calls as described in the module docstring."""
    before_compile = rusage_peak_mib()
    jitted = jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_ms = 1e3 * (time.perf_counter() - start)
    try:
        temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # not every backend reports it
        temp_mib = None

    def call():
        return jax.block_until_ready(jitted(*args))

    out = call()
    for _ in range(3):
        start = time.perf_counter()
        call()
        t_call = time.perf_counter() - start
    lo = 5 if t_call > 2.0 else (10 if t_call > 0.5 else 20)
    n = int(min(1000, max(lo, 5.0 / t_call)))
    # Reset VmHWM to the current RSS, so the steady peak covers the timed calls only.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(1e3 * (time.perf_counter() - start))
    loss = out[0] if isinstance(out, tuple) else None
    # |gradient| over every leaf (as our runner's grad_norm), for value-and-grad outputs.
    grad_norm = None
    if isinstance(out, tuple) and len(out) == 2:
        leaves = jax.tree_util.tree_leaves(out[1])
        grad_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in leaves)))
    return {
        "median_ms": round(statistics.median(samples), 4),
        "min_ms": round(min(samples), 4),
        "max_ms": round(max(samples), 4),
        "iterations": n,
        "compile_ms": round(compile_ms, 1),
        "peak_rss_mib": round(rusage_peak_mib(), 1),
        "steady_peak_rss_mib": round(status_field_mib("VmHWM"), 1),
        "rss_before_compile_mib": round(before_compile, 1),
        "xla_temp_mib": None if temp_mib is None else round(temp_mib, 3),
        "loss": None if loss is None else float(loss),
        "grad_norm": grad_norm,
    }


# ------------------------------------------------------------------ networks
def torch_uniform(key, shape, fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for linear and conv layers."""
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, F32, -bound, bound)


def dense_layers(key, widths):
    """[(w, b)] for an MLP with the given widths, w: (fan_in, fan_out)."""
    layers = []
    for key, fan_in, fan_out in zip(jax.random.split(key, len(widths) - 1), widths, widths[1:]):
        kw, kb = jax.random.split(key)
        layers.append((torch_uniform(kw, (fan_in, fan_out), fan_in), torch_uniform(kb, (fan_out,), fan_in)))
    return layers


def mlp_forward(layers, x, act=jax.nn.relu):
    *hidden, (w_out, b_out) = layers
    for w, b in hidden:
        x = act(x @ w + b)
    return x @ w_out + b_out


def cross_entropy(logits, labels):
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def conv4_params(key, bn=False):
    """4 x [3x3 conv, 64 filters] on one input channel, then a linear head to 5 classes: from 64
    features (the benchmark variant), or with bn (Finn et al.'s Omniglot Conv4) a batch-norm's
    gamma = 1 and beta = 0 per block and a head from 64 x 2 x 2 = 256 features."""
    keys = jax.random.split(key, 5)
    convs, c_in = [], 1
    for k in keys[:4]:
        kw, kb = jax.random.split(k)
        fan_in = 9 * c_in
        block = (torch_uniform(kw, (3, 3, c_in, 64), fan_in), torch_uniform(kb, (64,), fan_in))
        convs.append(block + ((jnp.ones((64,), F32), jnp.zeros((64,), F32)) if bn else ()))
        c_in = 64
    kw, kb = jax.random.split(keys[4])
    d = 256 if bn else 64
    return {"convs": convs, "head": (torch_uniform(kw, (d, 5), d), torch_uniform(kb, (5,), d))}


def conv4_bn_forward(params, x):
    """x: (N, 28, 28, 1); stride 2, padding 1 on each side (PyTorch's, not SAME's
    0/1 split); spatial 28 -> 14 -> 7 -> 4 -> 2; batch statistics over N, H, W."""
    for w, b, gamma, beta in params["convs"]:
        y = lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
        mean = jnp.mean(y, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
        x = jax.nn.relu((y - mean) / jnp.sqrt(var + BN_EPS) * gamma + beta)
    w, b = params["head"]
    return x.reshape(x.shape[0], -1) @ w + b


def pool2x2(x):
    """2x2 max-pool, stride 2, floor, NHWC (as reshape + max: cheap gradients on XLA:CPU)."""
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv4_forward(params, x):
    """x: (N, 28, 28, 1); spatial 28 -> 14 -> 7 -> 3 -> 1."""
    for w, b in params["convs"]:
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = pool2x2(jax.nn.relu(y + b))
    w, b = params["head"]
    return x.reshape(x.shape[0], -1) @ w + b


# ------------------------------------------------------------------ MAML
def sgd_unroll(params, loss, support, alpha, steps, remat, python_loop):
    """`steps` SGD steps of size alpha on loss(params, *support)."""
    def step(p):
        grads = jax.grad(loss)(p, *support)
        return jax.tree_util.tree_map(lambda w, g: w - alpha * g, p, grads)

    if remat:
        step = jax.checkpoint(step)
    if python_loop:
        for _ in range(steps):
            params = step(params)
        return params
    return lax.scan(lambda p, _: (step(p), None), params, None, length=steps)[0]


def adam_unroll(params, loss, support, steps, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """`steps` Adam steps on loss(params, *support), written out (optax-style,
    bias-corrected), with eps inside the square root as in our `blo::rules::Adam`:

        m_j = b1 m_{j-1} + (1 - b1) g_j,   v_j = b2 v_{j-1} + (1 - b2) g_j^2,
        p_j = p_{j-1} - lr m_hat_j / sqrt(v_hat_j + eps^2),
        m_hat_j = m_j / (1 - b1^j),   v_hat_j = v_j / (1 - b2^j),   m_0 = v_0 = 0.

    (optax.scale_by_adam(eps=0, eps_root=eps**2) is the same update.) The bias
    corrections are computed in float64 and scanned over as float32 constants.
    """
    j = np.arange(1, steps + 1, dtype=np.float64)
    corrections = jnp.asarray(np.stack([1.0 / (1.0 - b1**j), 1.0 / (1.0 - b2**j)], axis=1), F32)
    tree_map = jax.tree_util.tree_map

    def step(carry, c):
        p, m, v = carry
        g = jax.grad(loss)(p, *support)
        m = tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, m, g)
        v = tree_map(lambda v, g: b2 * v + (1.0 - b2) * g * g, v, g)
        p = tree_map(lambda p, m, v: p - lr * (m * c[0]) / jnp.sqrt(v * c[1] + eps * eps), p, m, v)
        return (p, m, v), None

    zeros = tree_map(jnp.zeros_like, params)
    return lax.scan(step, (params, zeros, zeros), corrections)[0][0]


def lslr_unroll(theta, loss, support, steps):
    """MAML++'s per-layer, per-step learnable steps (LSLR): theta = (params, table)
    with table of shape [steps, L] for the L leaves of params (w0, b0, w1, b1, ...,
    our tensor order); step j updates leaf i by p_i - table[j - 1, i] g_i."""
    params, table = theta
    assert table.shape == (steps, len(jax.tree_util.tree_leaves(params))), table.shape

    def step(p, row):
        leaves, treedef = jax.tree_util.tree_flatten(p)
        grads = jax.tree_util.tree_leaves(jax.grad(loss)(p, *support))
        return jax.tree_util.tree_unflatten(treedef, [w - row[i] * g for i, (w, g) in enumerate(zip(leaves, grads))]), None

    return lax.scan(step, params, table)[0]


RULE_UNROLLS = {"exact_adam": adam_unroll, "exact_lslr": lslr_unroll}


def maml_objective(loss, alpha, steps, mode, vectorise, python_loop):
    """f(params, tasks) -> (mean query loss, gradient for the initialisation).

    tasks = (support_x, support_y, query_x, query_y), each stacked over tasks.
    exact / exact_remat differentiate through the unroll (exact_remat recomputes
    each step in the backward pass); exact_adam and exact_lslr do the same
    through an Adam unroll (adam_unroll; alpha unused) or an LSLR unroll
    (lslr_unroll; params = (weights, [steps, L] step table)); first_order uses the query-loss gradient at
    the adapted parameters as the gradient for the initialisation.
    """
    def per_task(fn, tasks):
        if vectorise:
            return jax.vmap(fn)(*tasks)
        results = [fn(*(t[i] for t in tasks)) for i in range(tasks[0].shape[0])]
        return jax.tree_util.tree_map(lambda *r: jnp.stack(r), *results)

    if mode in ("exact", "exact_remat"):
        remat = mode == "exact_remat"

        def meta_loss(params, tasks):
            def one(xs, ys, xq, yq):
                phi = sgd_unroll(params, loss, (xs, ys), alpha, steps, remat, python_loop)
                return loss(phi, xq, yq)
            return jnp.mean(per_task(one, tasks))

        return jax.value_and_grad(meta_loss)

    if mode in RULE_UNROLLS:
        # exact through a stored unroll of another inner rule (lax.scan only).
        unroll = RULE_UNROLLS[mode]

        def meta_loss(theta, tasks):
            def one(xs, ys, xq, yq):
                return loss(unroll(theta, loss, (xs, ys), steps), xq, yq)
            return jnp.mean(per_task(one, tasks))

        return jax.value_and_grad(meta_loss)

    if mode == "first_order":
        def fo(params, tasks):
            def one(xs, ys, xq, yq):
                phi = sgd_unroll(params, loss, (xs, ys), alpha, steps, False, python_loop)
                return jax.value_and_grad(loss)(phi, xq, yq)
            losses, grads = per_task(one, tasks)
            return jnp.mean(losses), jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)

        return fo
    raise ValueError(f"unknown mode {mode!r}")


def sinusoid_tasks(rng, n_tasks=25, k=10):
    """Amplitude U(0.1, 5), phase U(0, pi), x U(-5, 5); k support and k query points."""
    amplitude = rng.uniform(0.1, 5.0, (n_tasks, 1, 1))
    phase = rng.uniform(0.0, np.pi, (n_tasks, 1, 1))
    xs = rng.uniform(-5.0, 5.0, (n_tasks, k, 1))
    xq = rng.uniform(-5.0, 5.0, (n_tasks, k, 1))
    wave = lambda x: amplitude * np.sin(x - phase)
    return tuple(jnp.asarray(a, F32) for a in (xs, wave(xs), xq, wave(xq)))


def random_image_tasks(rng, n_tasks=4, ways=5, shots=1, queries=15):
    """Uniform random 28x28x1 pixels; labels 0..ways-1 grouped by class."""
    xs = rng.uniform(0.0, 1.0, (n_tasks, ways * shots, 28, 28, 1))
    xq = rng.uniform(0.0, 1.0, (n_tasks, ways * queries, 28, 28, 1))
    ys = np.tile(np.repeat(np.arange(ways), shots), (n_tasks, 1))
    yq = np.tile(np.repeat(np.arange(ways), queries), (n_tasks, 1))
    return (jnp.asarray(xs, F32), jnp.asarray(ys, jnp.int32), jnp.asarray(xq, F32), jnp.asarray(yq, jnp.int32))


# ------------------------------------------------------------------ configs
# The MLP configs' networks (examples/bench/mlp.rs `Net`): model suffix ->
# (widths, batch, hidden activation).
BASE = [784, 256, 256, 10]
MLP_NETS = {
    "": (BASE, 64, "relu"),
    "_tanh": (BASE, 64, "tanh"),
    "_sigmoid": (BASE, 64, "sigmoid"),
    "_softplus": (BASE, 64, "softplus"),
    "_deep": ([784, 512, 512, 512, 512, 10], 100, "tanh"),
    "_bn": (BASE, 64, "relu"),
}
# Nets with a batch-norm (training mode) between each hidden affine map and its activation.
MLP_NORM = {"_bn"}
BN_EPS = 1e-5


def batch_norm(z, gamma, beta):
    """Training mode: the batch's mean and biased variance over axis 0."""
    mean = jnp.mean(z, axis=0)
    var = jnp.mean(jnp.square(z - mean), axis=0)
    return (z - mean) / jnp.sqrt(var + BN_EPS) * gamma + beta


def mlp_bn_forward(layers, x, act):
    *hidden, (w_out, b_out) = layers
    for w, b, gamma, beta in hidden:
        x = act(batch_norm(x @ w + b, gamma, beta))
    return x @ w_out + b_out
ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus}


def mlp_problem(suffix):
    widths, batch, act = MLP_NETS[suffix]
    k_params, k_x, k_y, k_dir = jax.random.split(jax.random.PRNGKey(0), 4)
    layers = dense_layers(k_params, widths)
    norm = suffix in MLP_NORM
    if norm:  # gamma = 1, beta = 0 for each hidden layer
        layers = [(w, b, jnp.ones_like(b), jnp.zeros_like(b)) for w, b in layers[:-1]] + layers[-1:]
    x = jax.random.normal(k_x, (batch, widths[0]), F32)
    y = jax.random.randint(k_y, (batch,), 0, widths[-1])
    leaves, treedef = jax.tree_util.tree_flatten(layers)
    direction = [jax.random.normal(k, leaf.shape, F32) for k, leaf in zip(jax.random.split(k_dir, len(leaves)), leaves)]
    f = ACTIVATIONS[act]
    forward = mlp_bn_forward if norm else mlp_forward
    loss = lambda p, x, y: cross_entropy(forward(p, x, f), y)
    params = {"sizes": widths, "batch": batch, "hidden": act}
    if norm:
        params["norm"] = {"batch_norm": "training mode", "eps": BN_EPS}
    return loss, layers, x, y, jax.tree_util.tree_unflatten(treedef, direction), params


def run_mlp_grad(suffix):
    loss, layers, x, y, _, params = mlp_problem(suffix)
    res = time_jitted(jax.value_and_grad(loss), (layers, x, y))
    res["params"] = params
    return res


def run_mlp_hvp(suffix):
    loss, layers, x, y, v, params = mlp_problem(suffix)

    def hvp(p, v, x, y):  # forward-over-reverse: the JVP of the gradient
        return jax.jvp(lambda q: jax.grad(loss)(q, x, y), (p,), (v,))[1]

    res = time_jitted(hvp, (layers, v, x, y))
    res["params"] = {**params, "mode": "jvp(grad)"}
    return res


def run_maml_sine(r, mode):
    layers = dense_layers(jax.random.PRNGKey(1), [1, 40, 40, 1])
    tasks = sinusoid_tasks(np.random.default_rng(0))
    mse = lambda p, x, y: jnp.mean((mlp_forward(p, x) - y) ** 2)
    fn = maml_objective(mse, 0.01, r, mode, vectorise=True, python_loop=False)
    theta = layers
    if mode == "exact_lslr":  # one step per step and tensor (6 tensors), all 0.01
        theta = (layers, jnp.full((r, len(jax.tree_util.tree_leaves(layers))), 0.01, F32))
    res = time_jitted(fn, (theta, tasks))
    res["params"] = {"r": r, "mode": mode, "tasks": 25, "k_support": 10, "k_query": 10,
                     "alpha": 0.01, "sizes": [1, 40, 40, 1], "impl": "vmap + lax.scan"}
    if mode == "exact_adam":
        res["params"].update({"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "eps_form": "sqrt(v_hat + eps^2)"})
    return res


def run_maml_conv4(r, mode, bn=False):
    params = conv4_params(jax.random.PRNGKey(2), bn)
    tasks = random_image_tasks(np.random.default_rng(0))
    forward = conv4_bn_forward if bn else conv4_forward
    loss = lambda p, x, y: cross_entropy(forward(p, x), y)
    # Python loops over tasks and steps: the fastest formulation on XLA:CPU.
    fn = maml_objective(loss, 0.4, r, mode, vectorise=False, python_loop=True)
    res = time_jitted(fn, (params, tasks))
    res["params"] = {"r": r, "mode": mode, "tasks": 4, "ways": 5, "shots": 1,
                     "queries_per_class": 15, "alpha": 0.4, "channels": 64, "impl": "unrolled",
                     "variant": "omniglot (stride 2, batch-norm)" if bn else "benchmark"}
    return res


def configs():
    table = {}
    for suffix in MLP_NETS:
        table[f"mlp_grad{suffix}"] = (lambda s=suffix: run_mlp_grad(s))
        table[f"mlp_hvp{suffix}"] = (lambda s=suffix: run_mlp_hvp(s))
    for r in (1, 5, 10, 50, 200):
        for mode in ("exact", "first_order", "exact_remat", "exact_adam", "exact_lslr"):
            table[f"maml_sine:r{r}:{mode}"] = (lambda r=r, mode=mode: run_maml_sine(r, mode))
    for r in (1, 5):
        for mode in ("exact", "first_order"):
            table[f"maml_conv4:r{r}:{mode}"] = (lambda r=r, mode=mode: run_maml_conv4(r, mode))
            table[f"maml_conv4_bn:r{r}:{mode}"] = (lambda r=r, mode=mode: run_maml_conv4(r, mode, True))
    return table


def main(argv):
    table = configs()
    if not argv or argv[0] == "--list":
        print("\n".join(table))
        return 0
    name = argv[0]
    if name not in table:
        print(f"unknown config {name!r}; --list names them", file=sys.stderr)
        return 2
    res = table[name]()
    res.update({"config": name, "side": "jax", "jax": jax.__version__,
                "cpus": len(os.sched_getaffinity(0))})
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
