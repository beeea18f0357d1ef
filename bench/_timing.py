"""Timing helpers shared by the kernel benchmarks (bench_linear_attention, bench_moba).

A measurement = compile once (`compile_jitted`), one warm-up call, then `repeats` timed calls,
each wall clock (`time.perf_counter`) and process CPU time (`time.process_time`, less sensitive
to other jobs on a shared machine); callers pick the statistic (min or median).
"""
from __future__ import annotations

import os
import time


def compile_jitted(fn, args):
    """(compiled, compile seconds) of `jax.jit(fn)` lowered for `args`."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_calls(compiled, args, repeats: int):
    """(output of the warm-up call, wall seconds per call, CPU seconds per call)."""
    import jax

    out = jax.block_until_ready(compiled(*args))  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, walls, cpus


def planned_bytes(compiled, *, with_arguments: bool = False):
    """XLA's planned temp + output bytes (+ arguments − aliased), None when unavailable."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    total = mem.temp_size_in_bytes + mem.output_size_in_bytes
    if with_arguments:
        total += mem.argument_size_in_bytes - mem.alias_size_in_bytes
    return total


def load_average() -> float | None:
    """The 1-minute load average, None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
