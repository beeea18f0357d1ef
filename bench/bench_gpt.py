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
import os
import pathlib
import platform
import statistics
import time

import jax
import ml_collections
import optax

from experiments.garg_linear import make_icl_step, model_config
from ictl.train import TrainState
from models.gpt import GPT, init_params, num_params

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench_one(size: str, d: int, n_points: int, batch: int, steps: int, dtype: str = "float32") -> dict:
    c = ml_collections.ConfigDict(dict(task="linear", size=size, dtype=dtype, attention_backend="softmax", d=d,
                                       n_points=n_points, batch=batch, curriculum=False))
    model = GPT(model_config(c))
    params = init_params(model.cfg, jax.random.key(0))
    tx = optax.adam(1e-4)
    state = TrainState.create(params=params, tx=tx)
    step = jax.jit(make_icl_step(model, tx, c), donate_argnums=0)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step(state, key)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, m = step(state, jax.random.fold_in(key, i + 1))
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return dict(size=size, d=d, T=2 * n_points, batch=batch, params=num_params(params), compile_s=compile_s,
                step_ms=1e3 * med, steps_per_s=1 / med, examples_per_s=batch / med, load=os.getloadavg()[0],
                flops=train_flops(size, num_params(params), 2 * n_points, batch))


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
    args = ap.parse_args(argv)
    steps = 5 if args.quick else 20
    known = {"tiny5": ("tiny", 5, 11), "tiny": ("tiny", 20, 41), "small": ("small", 20, 41),
             "standard": ("standard", 20, 41)}
    cases = [known[s] for s in args.sizes.split(",")]
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
