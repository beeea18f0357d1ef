"""PFN benchmark: time per dataset of the PFN posterior predictive against the exact GP (Cholesky,
known hyperparameters), type-II ML (Adam restarts + predictive) and NUTS (blackjax, mixture
predictive), all measured in one run on the same Matérn-hyperprior datasets.

    python -m bench.bench_pfn [--quick] [--out docs/benchmarks_pfn.md]

Every method is a compiled JAX function (compile time reported apart); a measurement is one
warm-up call then the best of ``repeats`` calls (wall clock, and process CPU time). "single" = one
dataset per call (latency); "batched" = B datasets per call (vmapped), divided by B. The PFN is an
untrained model of the given size (its cost does not depend on the weights). The paper's ratios
(> 200× vs ML-II, 1000–8000× vs NUTS) were PyTorch/GPyTorch/Pyro on a GPU; here everything is JAX
on the machine named in the output.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

os.environ.setdefault("ICTL_NO_PROGRESS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench._timing import load_average  # noqa: E402
from ictl.tasks import gp_prior  # noqa: E402
from ictl.theory import gp  # noqa: E402
from models.pfn import PFN, PFNConfig, init_params, predict  # noqa: E402


def _measure(fn, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return first, min(walls), min(cpus)


def methods(model, params, prior, *, n, x, y, ml2_restarts, ml2_steps, nuts_warmup, nuts_samples):
    """name → zero-argument callable predicting the held-out point of every dataset in (x, y)."""
    xc, yc, xq = x[:, :n], y[:, :n], x[:, n:n + 1]
    f_pfn = jax.jit(lambda p, a, b, c: predict(model, p, a, b, c))
    ls, s, nz = (jnp.full((x.shape[0], x.shape[-1]), 0.5), jnp.full((x.shape[0],), 13.3), jnp.full((x.shape[0],), 1e-4))

    def exact():
        return gp.posterior_predictive(xc, yc, xq, kernel=prior.kernel, lengthscale=ls, outputscale=s, noise=nz)

    def ml2():
        h = gp.fit_ml2(jax.random.key(0), xc, yc, kernel=prior.kernel, restarts=ml2_restarts, steps=ml2_steps)
        return gp.posterior_predictive(xc, yc, xq, kernel=prior.kernel, lengthscale=h.lengthscale,
                                       outputscale=h.outputscale, noise=h.noise)

    def nuts():
        smp = gp.nuts_samples(jax.random.key(0), xc, yc, prior=prior, num_warmup=nuts_warmup, num_samples=nuts_samples)
        return gp.mixture_predictive(smp, xc, yc, xq, kernel=prior.kernel)

    return {"PFN": lambda: f_pfn(params, xc, yc, xq), "exact GP (Cholesky, known θ)": exact,
            f"ML-II ({ml2_restarts} restarts × {ml2_steps} Adam steps)": ml2,
            f"NUTS ({nuts_warmup} warm-up + {nuts_samples} draws)": nuts}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="docs/benchmarks_pfn.md")
    args = ap.parse_args(argv)
    d, n, batch = 1, 30, (16 if args.quick else 64)
    repeats = 3 if args.quick else 5
    prior = gp.HyperPrior()
    ds = gp_prior.sample_gp_hyperprior(jax.random.key(0), batch=batch, n_points=n + 1, d=d, prior=prior)
    cfg = PFNConfig(d_in=d, n_layers=4, n_heads=4, width=128, num_buckets=200)
    model, params = PFN(cfg), init_params(cfg, jax.random.key(1))
    kw = dict(ml2_restarts=8, ml2_steps=200, nuts_warmup=100, nuts_samples=100)
    load0, c_all = load_average(), time.process_time()
    single = methods(model, params, prior, n=n, x=ds.x[:1], y=ds.y[:1], **kw)
    batched = methods(model, params, prior, n=n, x=ds.x, y=ds.y, **kw)
    res = {}
    for name in single:
        first_1, w1, c1 = _measure(single[name], repeats if "NUTS" not in name else 1)
        first_b, wb, cb = _measure(batched[name], repeats if "NUTS" not in name else 1)
        res[name] = (first_1 - w1, w1, c1, wb / batch, cb / batch)
    load1 = load_average()
    pfn_w1, pfn_wb = res["PFN"][1], res["PFN"][3]
    lines = [
        "## PFN vs exact GP, ML-II and NUTS: time per dataset (`python -m bench.bench_pfn"
        + (" --quick" if args.quick else "") + "`)", "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}, backend "
        f"{jax.default_backend()}; 1-min load average {load0:.1f} at start, {load1:.1f} at end (above the core count "
        "other jobs shared the machine: times are upper bounds, ratios measured side by side in this run). "
        f"Process CPU time of the whole run {time.process_time() - c_all:.0f} s.", "",
        f"Matérn-5/2 hyperprior datasets (d = {d}), n = {n} context points, 1 query; PFN 4 layers × 128, 4 heads, "
        f"200 buckets (untrained: cost only). Single = one dataset per call; batched = {batch} datasets per call, "
        "per dataset. Best of repeated calls after a warm-up (NUTS: one call).", "",
        "| method | compile s | single ms | single CPU ms | × PFN (single) | batched ms/dataset "
        "| batched CPU ms/dataset | × PFN (batched) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (comp, w1, c1, wb, cb) in res.items():
        lines.append(f"| {name} | {comp:.1f} | {w1 * 1e3:.3g} | {c1 * 1e3:.3g} | {w1 / pfn_w1:.3g} | {wb * 1e3:.3g} | "
                     f"{cb * 1e3:.3g} | {wb / pfn_wb:.3g} |")
    lines += ["", "The paper reports the PFN > 200× faster than ML-II and 1000–8000× faster than NUTS per dataset."]
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
