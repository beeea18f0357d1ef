"""Model initialisation time: flax's eager `init` (as before) against `init_params` (no forward pass:
the GPT's `initializers.Declare` specs, the PFN's `lazy_init`, the LSA's `LSA.weights`; and
`models.initializers`' shared draw programs), both giving the same parameters.

A run initialises its model eagerly: every operation of the forward pass and every initialiser at
a new shape compiles its own small program, seconds per model before any training. Each
measurement is a fresh process (no compilation cache) that first compiles one trivial program
(jax's own start-up is not counted); the two variants alternate (A B A B …); CPU seconds of the
init alone, with wall beside them.

    python -m bench.bench_init [--reps 3]          # the driver
    python -m bench.bench_init --one flax tiny     # one measurement, one JSON line
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VARIANTS = ("flax", "ictl")
MODELS = ("gpt_tiny", "gpt_small", "pfn", "lsa")


def _one(variant: str, model: str) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(2)))
    if model.startswith("gpt"):
        from models import gpt

        cfg = gpt.GPTConfig.named(model.split("_")[1], d_in=20, max_points=41)
        if variant == "flax":   # the initialisers and the init call of before
            gpt._dense_init = lambda std=0.02: nn.initializers.normal(std)
            gpt._torch_linear_init = lambda: nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
            run = lambda k: gpt.GPT(cfg).init(k, jnp.zeros((1, cfg.max_tokens, cfg.d_in), jnp.float32))  # noqa: E731
        else:
            run = lambda k: gpt.init_params(cfg, k)  # noqa: E731
    elif model == "pfn":
        from models import pfn

        cfg = pfn.PFNConfig(d_in=1, n_layers=4, n_heads=4, width=128, num_buckets=1000)
        if variant == "flax":
            pfn._init = lambda std=0.02: nn.initializers.normal(std, dtype=jnp.float32)
            pfn._torch_linear_init = lambda: nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", dtype=jnp.float32)
            run = lambda k: pfn.PFN(cfg).init(k, jnp.zeros((1, 2, 1)), jnp.zeros((1, 2)), 1)  # noqa: E731
        else:
            run = lambda k: pfn.init_params(cfg, k)  # noqa: E731
    else:
        from ictl import lsa_training as lt
        from models.lsa import LSA

        if variant == "flax":
            x = jnp.zeros((1, 2, 5), jnp.float32)
            run = lambda k: LSA(d=5).init(k, x, jnp.zeros((1, 2)), x[:, :1])  # noqa: E731
        else:
            run = lambda k: lt.init_params(k, d=5)[1]  # noqa: E731
    t, c = time.time(), time.process_time()
    params = jax.block_until_ready(run(jax.random.key(0)))
    leaves = jax.tree_util.tree_leaves(params)
    checksum = float(sum(float(jnp.sum(jnp.abs(p.astype(jnp.float64) if False else p))) for p in leaves))
    return {"variant": variant, "model": model, "cpu_s": time.process_time() - c, "wall_s": time.time() - t,
            "checksum": checksum}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=2)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    if a.one:
        print(json.dumps(_one(*a.one)))
        return
    import os

    print(f"# init CPU seconds, {a.reps} fresh processes per cell, alternating; load {os.getloadavg()[0]:.1f}")
    for model in MODELS:
        res = {v: [] for v in VARIANTS}
        for _ in range(a.reps):
            for v in VARIANTS:
                out = subprocess.run([sys.executable, "-m", "bench.bench_init", "--one", v, model],
                                     capture_output=True, text=True, check=True)
                res[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {v: statistics.median(r["cpu_s"] for r in res[v]) for v in VARIANTS}
        same = len({r["checksum"] for v in VARIANTS for r in res[v]}) == 1
        print(f"{model:10s} flax init {med['flax']:6.2f} s   init_params {med['ictl']:6.2f} s   "
              f"ratio {med['flax'] / med['ictl']:.2f}×   same parameters: {same}")


if __name__ == "__main__":
    main()
