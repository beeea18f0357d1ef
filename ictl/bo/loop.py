"""The Bayesian-optimisation loop: initial design, candidates, acquisition, bookkeeping, simple regret.

One run keeps a static buffer of T = n_init + iterations rows (x [T, d] in the unit cube, observed
outputs y [T, O], true value f [T], true feasibility [T]); after n evaluations the first n rows are
filled. A step (jitted once, vmapped over runs, n traced):

    key_n = fold_in(run_key, n);  (u [Q, d], out [Q, O]) = task.candidates(fn, key_n·0, Q, x, mask)
    i = argmax_q acq(x, y, mask = [t < n], u, key_n·1);   row n ← (u_i, out_i + noise, …)

The candidate sets, initial designs and noise draws depend only on (run key, n), so every method
sees the same ones (common random numbers: paired comparisons across methods). The initial design
is n_init candidates (uniform points, or uniform pool points). Runs of one method advance in
lockstep, so a step is one compiled call for all runs; `run_bo` times every call after an explicit
ahead-of-time compile (wall and process CPU seconds).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ictl.bo.tasks import Task


class BOState(NamedTuple):
    x: Float[Array, "*S T d"]          # evaluated points (unit cube)
    y: Float[Array, "*S T O"]          # what the surrogate sees: outputs (+ noise on output 0)
    f: Float[Array, "*S T"]            # true output 0 (to maximise) of each evaluated point
    feasible: Bool[Array, "*S T"]      # every true constraint ≤ 0


class BOResult(NamedTuple):
    state: BOState                     # [S, T, ...]
    opt: np.ndarray                    # [S] v*
    worst: np.ndarray                  # [S] v_worst
    n_init: int
    step_wall_s: np.ndarray            # [iterations] wall seconds of each (all-runs) step call
    step_cpu_s: np.ndarray             # [iterations] process CPU seconds of each step call
    compile_s: float                   # wall seconds of the ahead-of-time compiles


def _observe(task: Task, out_O, key):
    noise = task.noise_std * jax.random.normal(key, (), jnp.float32).astype(out_O.dtype)  # same draw in x64
    return out_O.at[0].add(noise)


def _feasible(out_O):
    return jnp.all(out_O[1:] <= 0) if out_O.shape[0] > 1 else jnp.bool_(True)


def init_state(task: Task, fn: Any, key: jax.Array, *, n_init: int, budget: int) -> BOState:
    """A run's buffer with its first ``n_init`` rows from the initial design (uniform candidates)."""
    d = task.d
    u, out = task.candidates(fn, jax.random.fold_in(jax.random.fold_in(key, 0), 0), n_init, jnp.zeros((1, d)),
                             jnp.zeros(1))
    keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 0), 2), n_init)
    y = jax.vmap(lambda o, k: _observe(task, o, k))(out, keys)
    pad = budget - n_init
    return BOState(x=jnp.pad(u, ((0, pad), (0, 0))), y=jnp.pad(y, ((0, pad), (0, 0))), f=jnp.pad(out[:, 0], (0, pad)),
                   feasible=jnp.pad(jax.vmap(_feasible)(out), (0, pad)))


def bo_step(task: Task, acq: Callable, fn: Any, state: BOState, n, key: jax.Array, *, num_candidates: int) -> BOState:
    """Evaluates the argmax of ``acq`` among fresh candidates and writes it to row ``n``."""
    k = jax.random.fold_in(key, n)
    mask = (jnp.arange(state.x.shape[0]) < n).astype(state.y.dtype)
    u, out = task.candidates(fn, jax.random.fold_in(k, 0), num_candidates, state.x, mask)
    score = acq(state.x, state.y, mask, u, jax.random.fold_in(k, 1))
    i = jnp.argmax(score)
    out_i = out[i]
    y_i = _observe(task, out_i, jax.random.fold_in(k, 2))
    return BOState(x=state.x.at[n].set(u[i]), y=state.y.at[n].set(y_i), f=state.f.at[n].set(out_i[0]),
                   feasible=state.feasible.at[n].set(_feasible(out_i)))


def run_bo(task: Task, acq: Callable, fns: Any, keys: jax.Array, *, n_init: int, iterations: int,
           num_candidates: int) -> BOResult:
    """All runs (``fns`` and ``keys`` batched over S) for ``iterations`` steps after ``n_init`` points."""
    for name, v in (("n_init", n_init), ("iterations", iterations), ("num_candidates", num_candidates)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")
    budget = n_init + iterations
    init = jax.jit(jax.vmap(lambda fn, k: init_state(task, fn, k, n_init=n_init, budget=budget)))
    step = jax.jit(jax.vmap(lambda fn, st, n, k: bo_step(task, acq, fn, st, n, k, num_candidates=num_candidates),
                            in_axes=(0, 0, None, 0)))
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(fns, keys))
    n0 = jnp.asarray(n_init, jnp.int32)
    step_c = step.lower(fns, state, n0, keys).compile()
    compile_s = time.perf_counter() - t0
    walls, cpus = [], []
    for t in range(iterations):
        w, c = time.perf_counter(), time.process_time()
        state = jax.block_until_ready(step_c(fns, state, jnp.asarray(n_init + t, jnp.int32), keys))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    opt = np.asarray(jax.vmap(task.opt_value)(fns), np.float64)
    worst = np.asarray(jax.vmap(task.worst_value)(fns), np.float64)
    state = BOState(*(np.asarray(a) for a in state))
    return BOResult(state, opt, worst, n_init, np.asarray(walls), np.asarray(cpus), compile_s)


def simple_regret(result: BOResult) -> np.ndarray:
    """[S, iterations + 1]: v* − best feasible true value after n_init, n_init + 1, …, T evaluations
    (v* − v_worst while no evaluated point is feasible)."""
    f = np.where(result.state.feasible, np.asarray(result.state.f, np.float64), -np.inf)
    best = np.maximum.accumulate(f, axis=1)[:, result.n_init - 1:]
    regret = result.opt[:, None] - best
    return np.where(np.isfinite(best), regret, (result.opt - result.worst)[:, None])


def step_latency(task: Task, acq: Callable, fn: Any, state: BOState, n: int, key: jax.Array, *, num_candidates: int,
                 repeats: int = 3) -> tuple[float, float]:
    """(wall, CPU) seconds of one single-run step at context size ``n`` (compiled ahead, median of ``repeats``)."""
    step = jax.jit(lambda fn, st, n, k: bo_step(task, acq, fn, st, n, k, num_candidates=num_candidates))
    nn = jnp.asarray(n, jnp.int32)
    step_c = step.lower(fn, state, nn, key).compile()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(step_c(fn, state, nn, key))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus))
