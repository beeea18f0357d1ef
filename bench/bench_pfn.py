"""PFN benchmark: time per dataset of the PFN posterior predictive against the exact GP (Cholesky,
known hyperparameters), type-II ML (Adam restarts + predictive) and NUTS (blackjax, mixture
predictive), all measured in one run on the same Matérn-hyperprior datasets.

    python -m bench.bench_pfn [--quick] [--out docs/benchmarks_pfn.md]

Every method is a compiled JAX function (compile time reported apart); a measurement is one
warm-up call then the best of ``repeats`` calls (wall clock, and process CPU time). "single" = one
dataset per call (latency); "batched" = B datasets per call (vmapped), divided by B. Two untrained
PFNs (the cost does not depend on the weights): the quick tiers' 4 layers × 64 and the paper's
6 layers × 512, both with 1000 buckets. The paper's ratios
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
from bench.bench_peer import cpu_info  # noqa: E402
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


def methods(pfns, prior, *, n, x, y, ml2_restarts, ml2_steps, nuts_warmup, nuts_samples):
    """name → zero-argument callable predicting the held-out point of every dataset in (x, y);
    ``pfns``: name → (model, params)."""
    xc, yc, xq = x[:, :n], y[:, :n], x[:, n:n + 1]
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

    def pfn(model, params):
        f = jax.jit(lambda p, a, b, c: predict(model, p, a, b, c))
        return lambda: f(params, xc, yc, xq)

    return {**{name: pfn(*mp) for name, mp in pfns.items()}, "exact GP (Cholesky, known θ)": exact,
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
    # the quick tiers' PFN (pfn_gp_hyperprior) and the paper's size (6 layers × 512, MLP 1024)
    cfgs = {"PFN 4 × 64 (quick tier)": PFNConfig(d_in=d, n_layers=4, n_heads=4, width=64, num_buckets=1000),
            "PFN 6 × 512 (paper size)": PFNConfig(d_in=d, n_layers=6, n_heads=4, width=512, num_buckets=1000)}
    pfns = {name: (PFN(cfg), init_params(cfg, jax.random.key(1))) for name, cfg in cfgs.items()}
    kw = dict(ml2_restarts=8, ml2_steps=200, nuts_warmup=100, nuts_samples=100)
    load0, c_all, t_all = load_average(), time.process_time(), time.perf_counter()
    single = methods(pfns, prior, n=n, x=ds.x[:1], y=ds.y[:1], **kw)
    batched = methods(pfns, prior, n=n, x=ds.x, y=ds.y, **kw)
    res = {}
    for name in single:
        first_1, w1, c1 = _measure(single[name], repeats if "NUTS" not in name else 1)
        first_b, wb, cb = _measure(batched[name], repeats if "NUTS" not in name else 1)
        res[name] = (first_1 - w1, w1, c1, wb / batch, cb / batch)
    load1 = load_average()
    names = list(cfgs)
    ref = {k: (res[k][1], res[k][3]) for k in names}
    lines = [
        "## PFN vs exact GP, ML-II and NUTS: time per dataset (`python -m bench.bench_pfn"
        + (" --quick" if args.quick else "") + "`)", "",
        f"Machine: {cpu_info()['model']} ({platform.machine()}), {os.cpu_count()} cores, jax {jax.__version__}, backend "
        f"{jax.default_backend()}; 1-min load average {load0:.1f} at start, {load1:.1f} at end (above the core count "
        "other jobs shared the machine: times are upper bounds, ratios measured side by side in this run). "
        f"The whole run: {time.perf_counter() - t_all:.0f} s wall, {time.process_time() - c_all:.0f} s process CPU.", "",
        f"Matérn-5/2 hyperprior datasets (d = {d}), n = {n} context points, 1 query; PFNs with 1000 buckets, "
        "untrained (cost only). Single = one dataset per call; batched = "
        f"{batch} datasets per call, per dataset. Best of repeated calls after a warm-up (NUTS: one call). "
        "The ratio columns divide by each PFN's time in the same mode.", "",
        "| method | compile s | single ms | single CPU ms | batched ms/dataset | batched CPU ms/dataset "
        "| × PFN quick (single / batched) | × PFN paper size (single / batched) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (comp, w1, c1, wb, cb) in res.items():
        rq, rp = ref[names[0]], ref[names[1]]
        lines.append(f"| {name} | {comp:.1f} | {w1 * 1e3:.3g} | {c1 * 1e3:.3g} | {wb * 1e3:.3g} | {cb * 1e3:.3g} | "
                     f"{w1 / rq[0]:.3g} / {wb / rq[1]:.3g} | {w1 / rp[0]:.3g} / {wb / rp[1]:.3g} |")
    lines += ["", "The paper reports the PFN > 200× faster than ML-II and 1000–8000× faster than NUTS per dataset."]
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
