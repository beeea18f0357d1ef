"""MoBA vs dense causal softmax: forward time and compiled memory at long T.

    python -m bench.bench_moba                 # T = 32768, 32 blocks of 1024, top-3 (2-core CPU: ~3 min)
    python -m bench.bench_moba --quick         # T = 4096, 32 blocks of 128, top-3 (~25 s)
    python -m bench.bench_moba --device gpu --out $OUT/moba_gpu.md

Rows: MoBA "xla" (sparse: query tiles grouped by selected key block), MoBA "xla_union" (loop over
the union of the blocks selected by a query block), MoBA "pallas" (the union loop as a kernel,
interpreted on CPU, compiled on GPU), dense causal softmax computed in query chunks of 512 (exact,
O(T·512) memory), and dense causal softmax materialising the T×T logits (`jax.nn.dot_product_attention`, implementation
"xla"), which is only run when XLA's planned temp memory is under `--dense-limit-gb` (else the
planned size is reported). Memory = `compiled.memory_analysis()` temp + output bytes (what XLA
plans to allocate); on GPU also the device's peak bytes in use after the row (cumulative, rows
run in increasing-memory order). Time = median wall time of `--repeats` jitted calls after a
warm-up/compile call. Writes a markdown table to `--out` (default
docs/benchmarks_kernels_sparse.md for the full CPU run; quick runs only print unless --out).
"""
from __future__ import annotations

import argparse
import functools
import math
import platform
import statistics

from bench import _timing


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="T = 4096 (blocks of 128) instead of 32768 (blocks of 1024)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--heads", type=int, default=None, help="H (default 1 on cpu, 8 on gpu)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 2 full, 3 quick)")
    p.add_argument("--dense-limit-gb", type=float, default=3.0)
    p.add_argument("--no-pallas", action="store_true")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def _dense_chunked(q, k, v, chunk=512):
    """Exact causal softmax, lax.map over query chunks against all keys (memory O(T·chunk))."""
    import jax
    import jax.numpy as jnp

    B, T, H, K = q.shape
    c = math.gcd(T, chunk)
    q_CxBxcxHxK = jnp.moveaxis(q.reshape(B, T // c, c, H, K), 1, 0)

    def one(args):
        i, q_BxcxHxK = args
        s_BxHxcxT = jnp.einsum("bchk,bshk->bhcs", q_BxcxHxK, k, preferred_element_type=jnp.float32) / math.sqrt(K)
        causal_cxT = (i * c + jnp.arange(c))[:, None] >= jnp.arange(T)[None, :]
        p = jax.nn.softmax(jnp.where(causal_cxT[None, None], s_BxHxcxT, -jnp.inf), axis=-1)
        return jnp.einsum("bhcs,bshv->bchv", p.astype(v.dtype), v, preferred_element_type=jnp.float32)

    o = jax.lax.map(one, (jnp.arange(T // c), q_CxBxcxHxK))
    return jnp.moveaxis(o, 0, 1).reshape(B, T, H, v.shape[-1]).astype(q.dtype)


def _measure(name, fn, args, repeats, run=True, limit_bytes=None):
    import jax

    compiled, compile_s = _timing.compile_jitted(fn, args)
    planned = _timing.planned_bytes(compiled)
    row = dict(name=name, compile_s=compile_s, planned=planned, time=None, cpu=None, peak=None, note="")
    if limit_bytes is not None and planned is not None and planned > limit_bytes:
        row["note"] = f"not run: planned memory over the {limit_bytes / 2**30:.1f} GB limit"
        return row, None
    if not run:
        return row, None
    out, times, cpu = _timing.time_calls(compiled, args, repeats)
    row["time"], row["cpu"] = statistics.median(times), statistics.median(cpu)
    stats = jax.devices()[0].memory_stats() or {}
    row["peak"] = stats.get("peak_bytes_in_use")
    return row, out


def _load():
    load = _timing.load_average()
    return "unknown" if load is None else f"{load:.1f}"


def _fmt_bytes(b):
    return "–" if b is None else f"{b / 2**20:,.0f} MiB"


def main(argv=None):
    args = _parse(argv)
    import jax

    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp

    from kernels.moba import moba_attention

    backend = jax.default_backend()
    load = _load()
    if args.device == "gpu" and backend != "gpu":
        raise SystemExit(f"--device gpu but jax.default_backend() is {backend!r}")
    T, bs = (4096, 128) if args.quick else (32768, 1024)
    H = args.heads or (8 if args.device == "gpu" else 1)
    K = args.head_dim
    repeats = args.repeats or (3 if args.quick else 2)
    dtype = jnp.bfloat16 if args.device == "gpu" else jnp.float32
    kq, kk, kv, kc, km = jax.random.split(jax.random.key(0), 5)
    q, k, v = (jax.random.normal(key, (1, T, H, K), jnp.float32) for key in (kq, kk, kv))
    # "clustered": every key of block j carries a block direction μ_j and every query a shared
    # direction c, so the gate ≈ c·μ_j ranks blocks alike for all queries (small unions).
    c_11HK = jax.random.normal(kc, (1, 1, H, K))
    mu_1THK = jnp.repeat(jax.random.normal(km, (1, T // bs, H, K)), bs, axis=1)
    data = {"random": (q, k, v), "clustered": (q + 2.0 * c_11HK, k + 2.0 * mu_1THK, v)}
    data = {name: tuple(x.astype(dtype) for x in xs) for name, xs in data.items()}

    from kernels.moba import _block_gate, _plan, _prepare, _query_tile, _select_blocks, _sparse_layout

    @jax.jit
    def used_tiles(q, k, v):
        qp, kp, _ = _prepare(q, k, v, bs)
        idx, valid = _select_blocks(_block_gate(qp, kp, T, bs), args.top_k, None, bs)
        G, S = idx.shape[0] * idx.shape[1], idx.shape[-1]
        return _sparse_layout(idx.reshape(G, -1, S), valid.reshape(G, -1, S), T // bs, _query_tile(bs))[2]

    moba = functools.partial(moba_attention, block_size=bs, top_k=args.top_k)
    rows = []
    for name, qkv in data.items():
        row, o_xla = _measure(f"MoBA xla (sparse), {name} q/k", functools.partial(moba, implementation="xla"), qkv,
                              repeats)
        logits = float(used_tiles(*qkv)) * _query_tile(bs) * bs / (H * T * (T + 1) / 2)
        row["note"] = f"q·k products: {100 * logits:.0f}% of the causal T(T+1)/2"
        rows.append(row)
        row, o_union = _measure(f"MoBA xla_union, {name} q/k", functools.partial(moba, implementation="xla_union"),
                                qkv, repeats)
        count = jax.jit(lambda q, k, v: _plan(q, k, v, bs, args.top_k, None)[5])(*qkv)
        visited = float(count.sum()) / (count.shape[0] * sum(range(1, T // bs + 1)))
        diff = float(jnp.max(jnp.abs(o_union.astype(jnp.float32) - o_xla.astype(jnp.float32))))
        row["note"] = f"key blocks visited: {100 * visited:.0f}% of the causal block pairs; max abs diff vs xla {diff:.1e}"
        rows.append(row)
        if args.no_pallas:
            continue
        label = f"MoBA pallas{' (interpret)' if backend == 'cpu' else ''}, {name} q/k"
        try:
            row, o_pl = _measure(label, functools.partial(moba, implementation="pallas"), qkv, repeats)
            diff = float(jnp.max(jnp.abs(o_pl.astype(jnp.float32) - o_xla.astype(jnp.float32))))
            row["note"] = f"max abs diff vs xla {diff:.1e}"
        except Exception as e:  # noqa: BLE001 - report, do not hide, a failing compiled path
            row = dict(name=label, compile_s=None, planned=None, time=None, cpu=None, peak=None,
                       note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        rows.append(row)
    q, k, v = data["random"]
    rows.append(_measure("dense causal, query-chunked (512)", _dense_chunked, (q, k, v), repeats)[0])
    dense = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation="xla")
    rows.append(_measure("dense causal, materialised (jax.nn.dot_product_attention)", dense, (q, k, v), repeats,
                         limit_bytes=args.dense_limit_gb * 2**30)[0])

    dev = jax.devices()[0]
    machine = (f"{platform.processor() or platform.machine()} CPU ({__import__('os').cpu_count()} cores)"
               if backend == "cpu" else dev.device_kind)
    cmd = "python -m bench.bench_moba" + (" --quick" if args.quick else "") + (" --device gpu" if backend != "cpu" else "")
    lines = [
        "# Sparse attention kernels: benchmarks",
        "",
        f"`{cmd}` on {machine}, jax {jax.__version__}, backend {backend}. Forward pass only.",
        f"Shapes: B = 1, T = {T}, H = {H}, K = V = {K}, {jnp.dtype(dtype).name}; MoBA blocks of {bs} "
        f"({T // bs} blocks), top-{args.top_k} (own block included): each query attends ≤ {args.top_k * bs} keys "
        f"vs ≤ {T} for dense. Dense cost does not depend on the data; MoBA xla_union's and pallas's do, through the "
        "union of the blocks selected by the queries of a block (xla's does not) (\"random\": i.i.d. N(0, 1) q, k; \"clustered\": "
        "k += 2·μ_block, q += 2·c, so all queries rank the blocks alike).",
        "Memory = XLA's planned temp + output bytes (`compiled.memory_analysis()`); times = median of "
        f"{repeats} calls after a warm-up (wall clock, and process CPU time, which is less sensitive to "
        f"other jobs on the machine; 1-min load average {load} at start, {_load()} at end, on "
        f"{__import__('os').cpu_count()} cores: other jobs shared the machine when it is above the core count).",
        "",
        "| method | fwd wall (s) | fwd CPU (s) | planned memory | device peak | compile (s) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = "–" if r["time"] is None else f"{r['time']:.3f}"
        c = "–" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        cpu = "–" if r["cpu"] is None else f"{r['cpu']:.3f}"
        lines.append(f"| {r['name']} | {t} | {cpu} | {_fmt_bytes(r['planned'])} | {_fmt_bytes(r['peak'])} | {c} | {r['note']} |")
    lines += [
        "",
        "Notes: the query-chunked dense baseline computes all T×T logits (no skipping of the upper "
        "triangle), so a causal-skipping dense kernel would be ≈ 2× faster than it. \"key blocks visited\" "
        "= Σ over query blocks of the union size / Σ of the causal block counts; \"q·k products\" = used "
        "tiles × tile rows × block size / (H·T(T+1)/2) (own-block tiles count whole, masked or not). "
        "GPU numbers: not yet "
        "measured; `bash bench/gpu.sh` writes them to `$OUT/benchmarks_kernels_sparse_gpu.md`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or (None if args.quick or backend != "cpu" else "docs/benchmarks_kernels_sparse.md")
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
