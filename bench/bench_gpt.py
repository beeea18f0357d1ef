"""Train-step throughput of the Garg GPT sizes on this machine → docs/benchmarks_gpt.md.

    .venv/bin/python -m bench.bench_gpt [--quick] [--out docs/benchmarks_gpt.md]

One jitted Adam step on fresh linear-regression prompts (the real training step of
experiments/garg_linear.py), B = 64 prompts. Shapes: the quick setting (d = 5, 11 points, T = 22)
and the paper setting (d = 20, 41 points, T = 82). Reports compile time, median step time over
``steps`` timed steps, steps/s and prompts/s (examples/s). The 1-minute load average is recorded:
on a shared machine the numbers are upper bounds on the time.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments.garg_linear import make_icl_step, model_config
from ictl.train import TrainState, seed_keys, unstack, vmap_seeds
from ictl.train.loop import multi_step
from models.gpt import GPT, init_params, num_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {"tiny5": ("tiny", 5, 11), "tiny": ("tiny", 20, 41), "small": ("small", 20, 41),
         "standard": ("standard", 20, 41)}  # name -> (size, d, points)


def bench_one(size: str, d: int, n_points: int, batch: int, steps: int, dtype: str = "float32", *,
              steps_per_call: int = 1, seeds: int = 1) -> dict:
    """Median wall time of one train step (a call of ``steps_per_call`` steps, divided by it) over
    ``steps`` timed calls after a compiling call; ``seeds`` > 1 trains that many models per step."""
    c = ml_collections.ConfigDict(dict(task="linear", size=size, dtype=dtype, attention_backend="softmax", d=d,
                                       n_points=n_points, batch=batch, curriculum=False))
    model = GPT(model_config(c))
    tx = optax.adam(1e-4)
    step_fn = make_icl_step(model, tx, c)
    key = jax.random.key(1)
    if seeds > 1:
        state = jax.vmap(lambda k: TrainState.create(params=init_params(model.cfg, k), tx=tx))(seed_keys(0, seeds))
        step_fn, key = vmap_seeds(step_fn), seed_keys(1, seeds)
    else:
        state = TrainState.create(params=init_params(model.cfg, jax.random.key(0)), tx=tx)
    params = unstack(state.params, 0) if seeds > 1 else state.params
    step = jax.jit(multi_step(step_fn), donate_argnums=0)
    t0 = time.perf_counter()
    state, (m, _, _) = step(state, (key, jnp.int32(0), jnp.int32(steps_per_call)))
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, (m, _, _) = step(state, (key, jnp.int32((i + 1) * steps_per_call), jnp.int32(steps_per_call)))
        jax.block_until_ready(m["loss"])
        times.append((time.perf_counter() - t) / steps_per_call)
    med = statistics.median(times)
    return dict(impl="ictl", size=size, d=d, points=n_points, T=2 * n_points, batch=batch, params=num_params(params),
                compile_s=compile_s, step_ms=1e3 * med, ms=1e3 * med, ms_all=[1e3 * t for t in times],
                steps_per_s=1 / med, examples_per_s=batch * seeds / med, load=os.getloadavg()[0],
                steps_per_call=steps_per_call, seeds=seeds, jax=jax.__version__,
                flops=seeds * train_flops(size, num_params(params), 2 * n_points, batch))


def train_flops(size: str, n_params: int, T: int, batch: int) -> float:
    """Model FLOPs of one train step (fwd + bwd): B·T·(6·P + 12·L·T·D), the usual dense estimate
    (6 per parameter per token, plus attention scores and mixing, 12·L·T·D per token)."""
    from models.gpt import SIZES

    L, _, D = SIZES[size]
    return batch * T * (6 * n_params + 12 * L * T * D)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 timed steps per size instead of 20")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_gpt.md"))
    ap.add_argument("--sizes", default="tiny5,tiny,small,standard",
                    help="comma list of tiny5 (d=5, 11 points), tiny, small, standard (d=20, 41 points)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak for MFU (e.g. 989 = H200 dense bf16 spec)")
    ap.add_argument("--steps-per-call", type=int, default=1, help="train steps per dispatch (lax.scan)")
    ap.add_argument("--seeds", type=int, default=1, help="models trained per vmapped step")
    ap.add_argument("--steps", type=int, default=None, help="timed calls (default 20, --quick 5)")
    ap.add_argument("--json", action="store_true", help="print one JSON line per size, write no markdown")
    args = ap.parse_args(argv)
    steps = args.steps or (5 if args.quick else 20)
    cases = [CASES[s] for s in args.sizes.split(",")]
    if args.json:
        for size, d, n in cases:
            print(json.dumps(bench_one(size, d, n, args.batch, steps, args.dtype, steps_per_call=args.steps_per_call,
                                       seeds=args.seeds)), flush=True)
        return
    rows = []
    for size, d, n in cases:
        r = bench_one(size, d, n, args.batch, steps if size != "standard" else max(3, steps // 4), args.dtype)
        print(f"{size:9s} d={d:2d} T={r['T']:3d}: {r['step_ms']:8.1f} ms/step  {r['examples_per_s']:8.0f} prompts/s"
              f"  (compile {r['compile_s']:.1f} s, load {r['load']:.1f})", flush=True)
        rows.append(r)
    cpu = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    lines = [
        "# GPT (Garg et al.) train-step throughput",
        "",
        f"Machine: {cpu}, jax {jax.__version__}, backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), {args.dtype}, Adam, batch {args.batch} prompts, "
        f"fresh prompts sampled inside the step. Command: `.venv/bin/python -m bench.bench_gpt"
        f"{' --quick' if args.quick else ''}`. Median of {steps} timed steps after one compile step "
        "(standard: a quarter as many). `load` is the 1-minute load average during the run (the machine is "
        "shared; with load > cores the times are inflated).",
        "",
        "Model FLOPs per step = B·T·(6·params + 12·L·T·D); MFU = achieved / `--peak-tflops` when given.",
        "",
        "| size (L/H/D) | params | d | T | compile s | ms / step | steps / s | prompts / s | TFLOP/s | MFU | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    from models.gpt import SIZES

    for r in rows:
        L, H, D = SIZES[r["size"]]
        tflops = r["flops"] / r["step_ms"] / 1e9
        mfu = f"{tflops / args.peak_tflops:.1%}" if args.peak_tflops else "—"
        lines.append(f"| {r['size']} ({L}/{H}/{D}) | {r['params']:,} | {r['d']} | {r['T']} | {r['compile_s']:.1f} | "
                     f"{r['step_ms']:.1f} | {r['steps_per_s']:.2f} | {r['examples_per_s']:.0f} | {tflops:.3g} | "
                     f"{mfu} | {r['load']:.1f} |")
    out = pathlib.Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
