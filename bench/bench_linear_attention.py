"""Time and memory of the xla paths of GLA and causal linear attention vs softmax attention.

Measures, for T = t_min, 2·t_min, …, t_max (B, H, K = V fixed), the forward and the
forward+backward (grads of every input) wall and process-CPU time of a jitted call (the
best of ``--reps`` after one compiling warm-up call: the least disturbed by other jobs on a
shared machine) and XLA's peak-memory estimate of the compiled program (``compiled.memory_analysis()``:
temporaries + outputs + arguments, in MB). The softmax baseline is
``jax.nn.dot_product_attention(..., is_causal=True)``; it stops at ``--softmax-max-t``, once
one of its calls took longer than ``--softmax-max-s``, or when it fails (e.g. out of memory);
the table says so. Prints a markdown fragment: the table, the speed-ups at T = 16k against
the ≥ 10× target and the log-log growth slope of each op (1.0 = linear in T).

CLI (also what ``bench/gpu.sh`` calls):
    python -m bench.bench_linear_attention --quick                # CPU, T = 1k…64k, H = 1
    python -m bench.bench_linear_attention --device gpu --dtype bfloat16 --heads 8 \
        --batch 4 --t-max 65536 --softmax-max-t 65536 --out /tmp/bench_linear_gpu.md
Options: --device {cpu,gpu,tpu} --dtype {float32,bfloat16} --batch --heads --dim --t-min
--t-max --reps --softmax-max-t --softmax-max-s --out FILE (writes the markdown fragment
there, overwriting; ``--quick`` defaults it to docs/benchmarks_kernels_linear.md, which
``bench/run_all.py`` collects into docs/benchmarks.md; ``--out -`` only prints).
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp

from bench import _timing
from kernels.gla import gla
from kernels.linear_attention import linear_attention


NOTES = """Notes (fixed text, from one-off measurements on the 2-core CPU, jax 0.10.2,
2026-11-30): the default GLA block sizes (chunk 64, sub-chunk 8) were the fastest of (64, 16),
(64, 8), (32, 8), (32, 4), (16, 16), (16, 4) in a T = 8k sweep; looping over groups of 32
chunks (CPU default, `BlockSizes.group`) instead of one batch cut GLA fwd+bwd at T = 8k from
400 to 160 ms. GLA costs several times linear attention because its element-wise diagonal
sub-blocks need ≈ (C/c + c)·K exponentials per token. Softmax stops at 16k by default: its
T² scores take 3.1 GB for fwd+bwd there (≈ 12 GB at 32k)."""


def _softmax(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def _gla(q, k, v, g):
    return gla(q, k, v, g)[0]


def _linear(q, k, v):
    return linear_attention(q, k, v)[0]


def _inputs(key, op, b, t, h, d, dtype):
    ks = jax.random.split(key, 5)
    q = jax.random.normal(ks[0], (b, t, h, d), dtype) * d ** -0.5
    k = jax.random.normal(ks[1], (b, t, h, d), dtype)
    v = jax.random.normal(ks[2], (b, t, h, d), dtype)
    ct = jax.random.normal(ks[3], (b, t, h, d), jnp.float32)
    if op == "gla":  # GLA's gates: logsigmoid(x) / 16
        g = (jax.nn.log_sigmoid(jax.random.normal(ks[4], (b, t, h, d))) / 16).astype(dtype)
        return (q, k, v, g), ct
    return (q, k, v), ct


def _measure(fn, args, reps):
    """(wall s, process-CPU s, peak MB estimate) of jit(fn)(*args), best of ``reps``."""
    compiled, _ = _timing.compile_jitted(fn, args)
    planned = _timing.planned_bytes(compiled, with_arguments=True)
    mb = None if planned is None else planned / 2 ** 20
    _, walls, cpus = _timing.time_calls(compiled, args, reps)
    return min(walls), min(cpus), mb


def run(args) -> tuple[list[dict], str | None]:
    ops = {"gla": _gla, "linear": _linear, "softmax": _softmax}
    dtype = jnp.dtype(args.dtype)
    rows, softmax_stop = [], None
    t = args.t_min
    while t <= args.t_max:
        for name, f in ops.items():
            if name == "softmax" and softmax_stop:
                continue
            inp, ct = _inputs(jax.random.PRNGKey(t), name, args.batch, t, args.heads,
                              args.dim, dtype)
            loss = lambda *a, f=f, ct=ct: jnp.sum(f(*a).astype(jnp.float32) * ct)
            grad = jax.grad(loss, argnums=tuple(range(len(inp))))
            try:
                fwd = _measure(f, inp, args.reps)
                both = _measure(grad, inp, args.reps)
            except Exception as err:  # e.g. out of memory for the T² softmax scores
                if name != "softmax":
                    raise
                softmax_stop = f"softmax stopped at T={t}: {type(err).__name__} {str(err)[:120]}"
                continue
            rows.append(dict(T=t, op=name, fwd_ms=1e3 * fwd[0], fwd_cpu_ms=1e3 * fwd[1],
                             fwdbwd_ms=1e3 * both[0], fwdbwd_cpu_ms=1e3 * both[1],
                             fwd_mb=fwd[2], fwdbwd_mb=both[2]))
            print(f"T={t:6d} {name:8s} fwd {1e3 * fwd[0]:10.2f} ms  "
                  f"fwd+bwd {1e3 * both[0]:10.2f} ms", flush=True)
            if name == "softmax":
                if 2 * t > args.softmax_max_t:
                    softmax_stop = f"softmax stopped after T={t} (--softmax-max-t)"
                elif max(fwd[0], both[0]) > args.softmax_max_s:
                    softmax_stop = (f"softmax stopped after T={t}: a call took "
                                    f"{max(fwd[0], both[0]):.1f} s > --softmax-max-s")
        t *= 2
    return rows, softmax_stop


def _slope(rows, op, key):
    """Least-squares slope of log(y) vs log(T) over T ≥ 4096 (1.0 = linear growth)."""
    pts = [(math.log(r["T"]), math.log(r[key])) for r in rows
           if r["op"] == op and r["T"] >= 4096 and r[key]]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return (sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts))


def to_markdown(rows, stop, args, load) -> str:
    """The whole docs fragment: command, machine, what is measured, table, target checks."""
    dev = jax.devices(args.device)[0]
    mb = lambda x: "n/a" if x is None else f"{x:.1f}"
    cmd = " ".join(["python -m bench.bench_linear_attention"] + list(args.argv))
    where = (f"{os.cpu_count()}-core {platform.machine()} CPU" if args.device == "cpu"
             else f"{dev.device_kind}")
    lines = [
        "## Linear attention and GLA (xla paths) vs softmax attention", "",
        f"Command: `{cmd}`. Machine: {where}, jax {jax.__version__}, backend {args.device}, "
        f"{time.strftime('%Y-%m-%d')}; 1-min load average {load[0]:.1f} at start, "
        f"{load[1]:.1f} at end (other jobs share the machine when it is above the core count).",
        "",
        f"B = {args.batch}, H = {args.heads}, K = V = {args.dim}, {args.dtype}. `gla` = "
        "`kernels.gla` (xla path, default block sizes, gates logsigmoid(x)/16), `linear` = "
        "`kernels.linear_attention` (causal, xla path), `softmax` = "
        "`jax.nn.dot_product_attention(q, k, v, is_causal=True)`. Times: best of "
        f"{args.reps} calls after a compiling warm-up, wall clock and process CPU time (the "
        "latter less sensitive to other jobs); fwd+bwd = grads of every input. Peak MB: "
        "XLA's compile-time memory analysis (temporaries + outputs + arguments).", "",
        "| T | op | fwd ms | fwd CPU ms | fwd+bwd ms | fwd+bwd CPU ms | fwd MB | fwd+bwd MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['op']} | {r['fwd_ms']:.2f} | {r['fwd_cpu_ms']:.2f} | "
                     f"{r['fwdbwd_ms']:.2f} | {r['fwdbwd_cpu_ms']:.2f} | {mb(r['fwd_mb'])} | "
                     f"{mb(r['fwdbwd_mb'])} |")
    lines.append("")
    if stop:
        lines.append(f"- {stop}.")
    by = {(r["T"], r["op"]): r for r in rows}
    t16 = 16384
    for op in ("gla", "linear"):
        if (t16, "softmax") in by and (t16, op) in by:
            ratio = {k: by[(t16, "softmax")][k] / by[(t16, op)][k]
                     for k in ("fwd_ms", "fwdbwd_ms", "fwd_cpu_ms", "fwdbwd_cpu_ms")}
            ok = "met" if min(ratio.values()) >= 10 else "NOT met"
            lines.append(f"- Target ≥ 10× faster than softmax at T = 16k, {op}: {ok} "
                         f"(wall {ratio['fwd_ms']:.0f}× fwd, {ratio['fwdbwd_ms']:.0f}× fwd+bwd; "
                         f"CPU time {ratio['fwd_cpu_ms']:.0f}×, {ratio['fwdbwd_cpu_ms']:.0f}×).")
    for op in ("gla", "linear", "softmax"):
        sl = {k: _slope(rows, op, k) for k in ("fwd_ms", "fwd_cpu_ms", "fwdbwd_ms",
                                                 "fwdbwd_cpu_ms", "fwdbwd_mb")}
        lines.append(f"- Growth in T (log-log slope over T ≥ 4096; 1 = linear, 2 = quadratic), "
                     f"{op}: wall fwd {sl['fwd_ms']:.2f}, fwd+bwd {sl['fwdbwd_ms']:.2f}; "
                     f"CPU fwd {sl['fwd_cpu_ms']:.2f}, fwd+bwd {sl['fwdbwd_cpu_ms']:.2f}; "
                     f"fwd+bwd memory {sl['fwdbwd_mb']:.2f}.")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="CPU defaults: H=1, 3 reps, writes docs/benchmarks_kernels_linear.md")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "tpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--t-min", type=int, default=1024)
    p.add_argument("--t-max", type=int, default=65536)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--softmax-max-t", type=int, default=16384)
    p.add_argument("--softmax-max-s", type=float, default=60.0)
    p.add_argument("--out", default=None,
                   help="write the markdown fragment here ('-': print only)")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.heads = args.heads or (1 if args.quick else 4)
    args.reps = args.reps or (3 if args.quick else 5)
    if args.out is None and args.quick:
        args.out = str(pathlib.Path(__file__).resolve().parents[1] / "docs"
                       / "benchmarks_kernels_linear.md")
    load0 = _timing.load_average()
    with jax.default_device(jax.devices(args.device)[0]):
        rows, stop = run(args)
    md = to_markdown(rows, stop, args, (load0, _timing.load_average()))
    print(md)
    if args.out and args.out != "-":
        pathlib.Path(args.out).write_text(md)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
