"""LSA benchmark: train steps/s of ZFB's LSA, and the ODE solve time against the training time
needed to reach the same loss.

    python -m bench.bench_lsa [--quick] [--out docs/benchmarks_lsa.md]

Prints a markdown table (machine and jax version named) and writes it to --out.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

os.environ.setdefault("ICTL_NO_PROGRESS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ictl import lsa_training as lt  # noqa: E402
from ictl.theory import zfb  # noqa: E402
from ictl.train import TrainState, make_train_step  # noqa: E402
from models.lsa import reduced_params  # noqa: E402


def _time_steps(step, state, key, n):
    state, m = step(state, key)  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(n):
        state, m = step(state, jax.random.fold_in(key, i))
    jax.block_until_ready(m)
    return (time.perf_counter() - t0) / n, state


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="docs/benchmarks_lsa.md")
    args = ap.parse_args(argv)
    n_steps = 100 if args.quick else 400
    load = os.getloadavg()[0]
    lines = [f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__}, "
             f"backend {jax.default_backend()}; 1-min load average at start {load:.1f} "
             "(above ~0.5 means other work shared the cores and the times are upper bounds).", "",
             "| setting | step time (ms) | steps/s | prompts/s |", "|---|---|---|---|"]
    for d, n, batch in [(5, 20, 1024), (20, 20, 1024), (5, 20, 8192)]:
        model, params = lt.init_params(jax.random.key(0), d=d, sigma=0.1)
        tx = optax.sgd(0.01)
        step = jax.jit(make_train_step(lt.prompt_loss_fn(model, d=d, N=n, batch=batch), tx), donate_argnums=0)
        dt, _ = _time_steps(step, TrainState.create(params=params, tx=tx), jax.random.key(1), n_steps)
        lines.append(f"| LSA d={d}, N={n}, batch {batch}, SGD | {dt * 1e3:.2f} | {1 / dt:.0f} | {batch / dt:.3g} |")

    # ODE vs training: time for the float64 gradient-flow solve to t1 against SGD wall time to the same loss
    d, n, lr, batch = 5, 20, 0.01, 2048
    lam = np.eye(d)
    model, params = lt.init_params(jax.random.key(0), d=d, sigma=0.1)
    u0, U0 = (np.asarray(a, np.float64) for a in reduced_params(params))
    zfb.gradient_flow(float(u0), U0, lam, n, t1=6.0, num_saves=401)  # compile
    t0 = time.perf_counter()
    traj = zfb.gradient_flow(float(u0), U0, lam, n, t1=6.0, num_saves=401)
    ode_s = time.perf_counter() - t0
    target = zfb.min_loss(lam, n) * 1.01
    t_hit = zfb.time_to_eps(traj, 0.01 * zfb.min_loss(lam, n))
    tx = optax.sgd(lr)
    step = jax.jit(make_train_step(lt.prompt_loss_fn(model, d=d, N=n, batch=batch), tx))
    evaluate = lt.eval_fn(Lam=lam, N=n)
    state = TrainState.create(params=params, tx=tx)
    state, m = step(state, jax.random.key(2))
    jax.block_until_ready(m)
    state = TrainState.create(params=params, tx=tx)
    t0 = time.perf_counter()
    k = 0
    while True:
        state, _ = step(state, jax.random.fold_in(jax.random.key(3), k))
        k += 1
        if k % 10 == 0 and float(evaluate(state)["pop_loss"]) <= target:
            break
    train_s = time.perf_counter() - t0
    lines += ["", f"Reaching L*·1.01 (d={d}, N={n}, Λ = I, paper init σ = 0.1): the float64 dopri5 solve of "
              f"the whole flow to t = 6 takes {ode_s * 1e3:.1f} ms (hits the target at t = {t_hit:.2f}); SGD "
              f"(lr {lr}, batch {batch}) needs {k} steps (t = {k * lr:.2f}) and {train_s:.2f} s — the ODE is "
              f"{train_s / ode_s:.0f}× faster, both timed after compilation in this run."]
    text = "\n".join(lines)
    print(text)
    pathlib.Path(args.out).write_text("## LSA training and the gradient-flow ODE (`python -m bench.bench_lsa`)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
