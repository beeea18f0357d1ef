"""XLA:CPU fusion emitters (jaxlib 0.10's default) against the older elemental emitters
(XLA_FLAGS=--xla_cpu_use_fusion_emitters=false) on three programs of the quick experiments:
garg_linear's GPT train step (50 steps per dispatch), mahankali_onestep's LSA step (one per
dispatch, as it trains) and zfb_shifts' Monte Carlo evaluation program (M = 2 with OLS, M = 20
without; 10 000 prompts a call). Each measurement is a fresh process without the persistent
compilation cache; the two settings alternate (A B A B …). Compile and run times are process CPU
seconds (the machine is shared), with wall and the 1-min load average beside them.

    python -m bench.bench_xla_emitters [--reps 3]        # the driver (alternates the settings)
    python -m bench.bench_xla_emitters --one garg         # one measurement, one JSON line

The flag is only known to jaxlib 0.10.x: elsewhere XLA aborts on an unknown flag.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FLAG = "--xla_cpu_use_fusion_emitters=false"
PROGRAMS = ("garg", "mah", "zfb")


def _one(which: str) -> dict:
    os.environ.setdefault("ICTL_NO_PROGRESS", "1")
    import jax
    import jax.numpy as jnp
    import optax

    from ictl.train import TrainState, config_optimizer, make_train_step
    from ictl.train.loop import multi_step

    out = {"which": which, "flag": FLAG in os.environ.get("XLA_FLAGS", "")}

    def timed_compile(f, *a):
        t, c = time.time(), time.process_time()
        ex = f.lower(*a).compile()
        out["compile_wall"], out["compile_cpu"] = time.time() - t, time.process_time() - c
        return ex

    if which in ("garg", "mah"):
        if which == "garg":
            from experiments import garg_linear as G
            from models.gpt import GPT, init_params
            c = G.get_config("quick")
            model = GPT(G.model_config(c))
            tx = config_optimizer(c)
            step_fn, params, K, N = G.make_icl_step(model, tx, c), init_params(model.cfg, jax.random.key(0)), 50, 300
        else:
            from experiments import mahankali_onestep as M
            c = M.get_config("quick")
            s, model = M._setting("isotropic", c), M.LSA(d=c.d)
            params = model.init(jax.random.key(0), jnp.zeros((1, c.n_ctx, c.d)), jnp.zeros((1, c.n_ctx)),
                                jnp.zeros((1, 1, c.d)))
            tx = optax.adam(optax.cosine_decay_schedule(c.lr, c.num_steps))

            def loss_fn(p, k):
                pr = s["sample"](k, c.batch)
                return 0.5 * jnp.mean((model.apply(p, pr.x_ctx, pr.y_ctx, pr.x_q) - pr.y_q) ** 2), {}

            step_fn, K, N = make_train_step(loss_fn, tx), 1, 400
        st, key = TrainState.create(params=params, tx=tx), jax.random.key(1)
        ex = timed_compile(jax.jit(multi_step(step_fn), donate_argnums=0), st, (key, jnp.int32(0), jnp.int32(K)))
        st, _ = ex(st, (key, jnp.int32(0), jnp.int32(K)))
        jax.block_until_ready(st)
        n, t, cp = K, time.time(), time.process_time()
        while n < N + K:
            st, _ = ex(st, (key, jnp.int32(n), jnp.int32(K)))
            n += K
        jax.block_until_ready(st)
        out["run_ms_wall"], out["run_ms_cpu"] = 1e3 * (time.time() - t) / N, 1e3 * (time.process_time() - cp) / N
    else:
        from experiments import zfb_shifts as Z
        from ictl import lsa_training as lt
        c = Z.get_config("quick")
        model, params = lt.init_params(jax.random.key(0), d=c.d, sigma=c.sigma)
        eye, key = jnp.eye(c.d, dtype=jnp.float32), jax.random.key(3)
        tot = dict(compile_wall=0.0, compile_cpu=0.0, run_ms_wall=0.0, run_ms_cpu=0.0)
        for m in (2, 20):
            ex = timed_compile(Z._sq_errors, params, key, eye, eye, eye, model=model, M=m, d=c.d, chunk=10000,
                               with_ols=m < c.d, random_cov=None)
            tot["compile_wall"] += out["compile_wall"]
            tot["compile_cpu"] += out["compile_cpu"]
            jax.block_until_ready(ex(params, key, eye, eye, eye))
            t, cp = time.time(), time.process_time()
            for r in range(10):
                a = ex(params, jax.random.fold_in(key, r), eye, eye, eye)
            jax.block_until_ready(a)
            tot["run_ms_wall"] += 1e3 * (time.time() - t) / 10  # ms per pair of calls (M = 2 and 20)
            tot["run_ms_cpu"] += 1e3 * (time.process_time() - cp) / 10
        out.update(tot)
    out["load1"] = os.getloadavg()[0]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=PROGRAMS)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(_one(a.one)), flush=True)
        return 0
    res = []
    for _ in range(a.reps):
        for which in PROGRAMS:
            for flag in (False, True):
                env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + (" " + FLAG if flag else "")).strip())
                p = subprocess.run([sys.executable, "-m", "bench.bench_xla_emitters", "--one", which], env=env,
                                   capture_output=True, text=True, check=True)
                res.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print("| program | emitters | compile CPU s (median) | run CPU ms (median) | runs | load |")
    print("|---|---|---:|---:|---:|---|")
    for which in PROGRAMS:
        for flag in (False, True):
            r = [x for x in res if x["which"] == which and x["flag"] == flag]
            print(f"| {which} | {'elemental (flag)' if flag else 'fusion (default)'} | "
                  f"{statistics.median(x['compile_cpu'] for x in r):.2f} | {statistics.median(x['run_ms_cpu'] for x in r):.1f} | "
                  f"{len(r)} | {min(x['load1'] for x in r):.1f}–{max(x['load1'] for x in r):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
