"""ictl vs the PyTorch original, side by side on this CPU → docs/benchmarks_peer.md.

    make bench-peer          # creates .venv-peer (torch CPU + transformers) if missing, then this
    .venv/bin/python -m bench.bench_peer [--rounds 2] [--configs tiny5,tiny,small,standard]

For each configuration the two implementations run in alternating processes (PyTorch, ictl,
PyTorch, ictl, …; ``--rounds`` pairs), each timing the median of its train steps after warm-up;
the table gives the median over rounds and the ratio PyTorch ms / ictl ms per round (> 1: ictl
is faster). Same model (Garg et al.'s read-in + GPT-2 + read-out; parameter counts printed for
both), batch 64, Adam, fresh linear-regression prompts each step, float32, 2 threads each.
ictl rows: one step per call, and for tiny d = 5 also ``steps_per_call`` = 10 (dispatch removed).
Achieved GFLOP/s = model FLOPs (B·T·(6·P + 12·L·T·D)) / step time, set against the FMA peak of
the cores (`fma_peak_gflops`) and against a large float32 GEMM measured in the same run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_PY = ROOT / ".venv-peer" / "bin" / "python"
CONFIGS = {"tiny5": ("tiny", 5, 11), "tiny": ("tiny", 20, 41), "small": ("small", 20, 41),
           "standard": ("standard", 20, 41)}
STEPS = {"tiny5": 40, "tiny": 20, "small": 10, "standard": 4}  # timed steps per process


def cpu_info() -> dict:
    """Model name, MHz, cores and FP32 FLOP per cycle per core from /proc/cpuinfo (Linux x86)."""
    info = {"model": platform.processor() or platform.machine(), "mhz": None, "cores": os.cpu_count(),
            "flags": set(), "family": None, "model_id": None, "vendor": None}
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "model name":
            info["model"] = v
        elif k == "cpu MHz" and info["mhz"] is None:
            info["mhz"] = float(v)
        elif k == "flags" and not info["flags"]:
            info["flags"] = set(v.split())
        elif k == "cpu family" and info["family"] is None:
            info["family"] = int(v)
        elif k == "model" and info["model_id"] is None:
            info["model_id"] = int(v)
        elif k == "vendor_id" and info["vendor"] is None:
            info["vendor"] = v
    return info


def flop_per_cycle(info: dict) -> int:
    """FP32 FLOP per cycle per core from FMA width × FMA units: AMD Zen 1 (family 23, model < 0x30)
    splits 256-bit FMAs into two 128-bit halves (2 × 4 lanes × 2 = 16); other AVX2+FMA cores have two
    256-bit FMA units (32); AVX-512 cores are counted at 64 (two 512-bit units; some have one)."""
    flags = info["flags"]
    if "avx512f" in flags:
        return 64
    if "fma" in flags and "avx2" in flags:
        if info["vendor"] == "AuthenticAMD" and info["family"] == 23 and (info["model_id"] or 0) < 0x30:
            return 16
        return 32
    return 8


def fma_peak_gflops(info: dict) -> float | None:
    if not info["mhz"]:
        return None
    return info["cores"] * info["mhz"] * 1e-3 * flop_per_cycle(info)


def _run_json(cmd: list[str]) -> dict:
    env = dict(os.environ, ICTL_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer(name: str) -> dict:
    size, d, n = CONFIGS[name]
    return _run_json([str(PEER_PY), "bench/peer_torch.py", "--size", size, "--d", str(d), "--points", str(n),
                      "--steps", str(STEPS[name])])


def ictl(name: str, steps_per_call: int = 1, seeds: int = 1) -> dict:
    steps = max(3, STEPS[name] // steps_per_call)
    return _run_json([sys.executable, "-m", "bench.bench_gpt", "--json", "--sizes", name, "--steps", str(steps),
                      "--steps-per-call", str(steps_per_call), "--seeds", str(seeds)])


def gemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """Float32 n×n GEMM rate of XLA on this machine (best of ``reps``), measured in a subprocess."""
    code = (f"import jax, jax.numpy as jnp, time; a = jnp.ones(({n}, {n}), jnp.float32); f = jax.jit(lambda a: a @ a);"
            f"f(a).block_until_ready(); ts = []\n"
            f"for _ in range({reps}):\n t = time.perf_counter(); f(a).block_until_ready(); ts.append(time.perf_counter() - t)\n"
            f"print(2 * {n}**3 / min(ts) / 1e9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny5,tiny,small,standard")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps-per-call", type=int, default=10, help="K for the extra tiny d=5 ictl row")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_peer.md"))
    args = ap.parse_args(argv)
    if not PEER_PY.exists():
        sys.exit("ictl: error: .venv-peer is missing; allowed: create it with `make bench-peer`")
    info = cpu_info()
    peak = fma_peak_gflops(info)
    load0 = os.getloadavg()[0]
    gemm = gemm_gflops()
    print(f"{info['model']}, {info['cores']} cores @ {info['mhz']} MHz: FMA peak {peak} GFLOP/s, XLA 2048² GEMM "
          f"{gemm:.1f} GFLOP/s", flush=True)
    results = {}
    for name in args.configs.split(","):
        variants = [("ictl", 1)] + ([("ictl", args.steps_per_call)] if name == "tiny5" else [])
        runs = {"pytorch": []} | {f"ictl K={k}": [] for _, k in variants}
        for r in range(args.rounds):
            runs["pytorch"].append(peer(name))
            for _, k in variants:
                runs[f"ictl K={k}"].append(ictl(name, k))
            line = "  ".join(f"{impl} {res[-1]['ms']:.1f} ms" for impl, res in runs.items())
            print(f"{name} round {r + 1}: {line}", flush=True)
        results[name] = runs
    write(args, info, peak, gemm, load0, results)


def write(args, info, peak, gemm, load0, results) -> None:
    ver = next(iter(results.values()))["pytorch"][0]["versions"]
    import jax

    lines = [
        "## ictl vs the PyTorch original (Garg et al.'s model), train step on the CPU",
        "",
        f"`make bench-peer` (= `.venv/bin/python -m bench.bench_peer --rounds {args.rounds}`), "
        f"{datetime.date.today().isoformat()}. Machine: {info['model']}, {info['cores']} cores at "
        f"{info['mhz']:.0f} MHz, FP32 FMA peak {peak:.0f} GFLOP/s ({flop_per_cycle(info)} FLOP/cycle/core); "
        f"XLA float32 2048² GEMM in the same run: {gemm:.1f} GFLOP/s. jax {jax.__version__}; torch "
        f"{ver['torch']} + transformers {ver['transformers']}, 2 threads. 1-min load average at start {load0:.1f}, "
        f"at end {os.getloadavg()[0]:.1f}.",
        "",
        "Each round runs PyTorch, then ictl, in fresh processes; ms = median step time within a process, the "
        "table gives the median over rounds; ratio = PyTorch ms / ictl ms of the same round (min–max over "
        "rounds). GFLOP/s = model FLOPs per step / ms; % peak against the FMA peak and against the GEMM.",
        "",
        "| config (L/H/D, d, points) | params (PyTorch / ictl) | PyTorch ms | ictl ms | ratio | ictl GFLOP/s | % FMA peak | % GEMM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        pt = runs["pytorch"]
        for impl, res in runs.items():
            if impl == "pytorch":
                continue
            ratios = [p["ms"] / r["ms"] for p, r in zip(pt, res)]
            ms = statistics.median(r["ms"] for r in res)
            gflops = res[0]["flops"] / ms / 1e6
            size, d, n = CONFIGS[name]
            from models.gpt import SIZES

            L, H, D = SIZES[size]
            label = f"{name} ({L}/{H}/{D}, d {d}, {n})" + (f", steps_per_call {res[0]['steps_per_call']}"
                                                          if res[0]["steps_per_call"] > 1 else "")
            lines.append(f"| {label} | {pt[0]['params']:,} / {res[0]['params']:,} | "
                         f"{statistics.median(p['ms'] for p in pt):.1f} | {ms:.1f} | "
                         f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {gflops:.1f} | "
                         f"{100 * gflops / peak:.0f}% | {100 * gflops / gemm:.0f}% |")
    lines += ["", "PyTorch's GPT2Model also holds a 50257 × D token-embedding table that `inputs_embeds` never "
                  "reads (no gradient, Adam skips it); the parameter counts above leave it out on both sides."]
    out = pathlib.Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
