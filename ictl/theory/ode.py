"""Explicit ODE solvers for pytrees: fixed-step RK4 and adaptive Dormand–Prince 5(4).

Solves y' = f(t, y), y(t0) = y0 on [t0, t1] and returns y at ``num_saves`` equally spaced
times t0 = s_0 < s_1 < … < s_{S−1} = t1. The state y is any pytree of float arrays; the
solver works in y0's dtype (call it under ``jax.enable_x64(True)`` with float64 leaves for
tight tolerances).

* ``method="rk4"``: the classical 4-stage Runge–Kutta scheme with a fixed step
  h = (t1 − t0) / ((S − 1)·k), k = ceil(num_steps / (S − 1)) steps per save interval (or
  k = ceil((s_{j+1} − s_j) / dt0)). Global error O(h⁴).
* ``method="dopri5"``: Dormand & Prince's embedded 5(4) pair (7 stages; the 5th-order
  solution is propagated). A step h is accepted when the weighted RMS of the embedded error
  e = h Σ_i (b_i − b̂_i) k_i,
      ‖e‖ = sqrt(mean_j (e_j / (atol + rtol · max(|y_j|, |y_new,j|)))²) ≤ 1,
  and the next step is h · clip(0.9 ‖e‖^(−1/5), 0.2, 10). Steps are clipped to land exactly on
  the save times (no dense-output interpolation, so saved states carry the full 5th-order
  accuracy). At most ``max_steps`` attempted steps in total; ``success`` is False when that
  budget ran out (the remaining saves then repeat the last state reached).

Everything is traced with ``lax.scan`` / ``lax.while_loop``, so ``solve_ode`` can be called
inside ``jax.jit`` (``f`` must then be a closure over traced values or a static function).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

PyTree = Any

# Dormand–Prince 5(4) tableau (Dormand & Prince 1980), nodes c, stage matrix a, weights b (5th
# order, propagated) and b_hat (embedded 4th order).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_B_ERR = tuple(b - bh for b, bh in zip(_B, _B_HAT))


class Solution(NamedTuple):
    """``ts[s]`` and ``ys`` (y0's pytree with a leading save axis of size S) = y(ts[s])."""

    ts: Float[Array, "S"]
    ys: PyTree
    num_steps: Int[Array, ""]  # accepted steps
    num_rejected: Int[Array, ""]  # rejected steps (0 for rk4)
    success: Bool[Array, ""]  # False if dopri5 ran out of max_steps


def _axpy(y: PyTree, h, ks: list[PyTree], coeffs) -> PyTree:
    """y + h Σ_i coeffs[i] k_i, leaf by leaf (zero coefficients skipped)."""
    def leaf(y_leaf, *k_leaves):
        acc = jnp.zeros_like(y_leaf)
        for c, k in zip(coeffs, k_leaves):
            if c != 0.0:
                acc = acc + c * k
        return y_leaf + h * acc
    return jax.tree.map(leaf, y, *ks)


def _rk4_step(f, t, y, h):
    k1 = f(t, y)
    k2 = f(t + h / 2, _axpy(y, h, [k1], (0.5,)))
    k3 = f(t + h / 2, _axpy(y, h, [k2], (0.5,)))
    k4 = f(t + h, _axpy(y, h, [k3], (1.0,)))
    return _axpy(y, h, [k1, k2, k3, k4], (1 / 6, 1 / 3, 1 / 3, 1 / 6))


def _dopri5_step(f, t, y, h):
    """One Dormand–Prince step: (5th-order y_new, error estimate e)."""
    ks: list[PyTree] = []
    for c, a in zip(_C, _A):
        ks.append(f(t + c * h, _axpy(y, h, ks, a) if a else y))
    y_new = _axpy(y, h, ks, _B)
    err = _axpy(jax.tree.map(jnp.zeros_like, y), h, ks, _B_ERR)
    return y_new, err


def _error_norm(err, y, y_new, rtol, atol):
    leaves = zip(jax.tree.leaves(err), jax.tree.leaves(y), jax.tree.leaves(y_new))
    sq, n = 0.0, 0
    for e, a, b in leaves:
        scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
        sq = sq + jnp.sum((e / scale) ** 2)
        n += e.size
    return jnp.sqrt(sq / max(n, 1))


def _check(name: str, ok: bool, allowed: str, got) -> None:
    if not ok:
        raise ValueError(f"{name}: must be {allowed}, got {got!r}")


def solve_ode(
    f: Callable[[Float[Array, ""], PyTree], PyTree],
    y0: PyTree,
    *,
    t1: float,
    num_saves: int,
    t0: float = 0.0,
    method: str = "dopri5",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dt0: float | None = None,
    num_steps: int | None = None,
    max_steps: int = 100_000,
) -> Solution:
    """Integrates y' = f(t, y) from t0 to t1, saving y at ``num_saves`` equally spaced times.

    Args:
      f: the vector field ``f(t, y) -> dy/dt`` with the pytree structure and dtypes of y.
      y0: the initial state (a pytree of float arrays).
      t1, t0: the end and start times (Python numbers, t1 > t0; under jit rescale time in f
        instead of tracing them, as ``zfb.gradient_flow`` does).
      num_saves: S ≥ 2 save times, ``linspace(t0, t1, S)``.
      method: ``"dopri5"`` (adaptive) or ``"rk4"`` (fixed step).
      rtol, atol: dopri5 tolerances (ignored by rk4).
      dt0: rk4 step (rounded down so each save interval holds a whole number of steps);
        dopri5's first trial step (default (t1 − t0)/(100 (S − 1))).
      num_steps: rk4 only, alternative to dt0: total steps (rounded up to a multiple of S − 1).
      max_steps: dopri5's budget of attempted steps.

    Returns:
      ``Solution(ts, ys, num_steps, num_rejected, success)``.
    """
    _check("method", method in ("dopri5", "rk4"), "'dopri5' or 'rk4'", method)
    _check("num_saves", isinstance(num_saves, int) and num_saves >= 2, "an int >= 2", num_saves)
    _check("t1", float(t1) > float(t0), f"> t0 = {t0}", t1)
    leaves = jax.tree.leaves(y0)
    _check("y0", len(leaves) > 0 and all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves),
           "a non-empty pytree of float arrays", jax.tree.map(jnp.result_type, y0))
    y0 = jax.tree.map(jnp.asarray, y0)
    dtype = jnp.result_type(*leaves)
    ts = jnp.linspace(t0, t1, num_saves, dtype=dtype)
    interval = (float(t1) - float(t0)) / (num_saves - 1)

    if method == "rk4":
        _check("num_steps/dt0", (num_steps is None) != (dt0 is None), "exactly one given for rk4",
               (num_steps, dt0))
        if num_steps is not None:
            _check("num_steps", int(num_steps) >= 1, "a positive int", num_steps)
            k = math.ceil(int(num_steps) / (num_saves - 1))
        else:
            _check("dt0", float(dt0) > 0, "> 0", dt0)
            k = math.ceil(interval / float(dt0) - 1e-9)
        h = jnp.asarray(interval / k, dtype)

        def save_interval(y, t_start):
            y = lax.fori_loop(0, k, lambda i, yy: _rk4_step(f, t_start + i * h, yy, h), y)
            return y, y

        _, ys = lax.scan(save_interval, y0, ts[:-1])
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
        zero = jnp.asarray(0, jnp.int32)
        return Solution(ts, ys, jnp.asarray(k * (num_saves - 1), jnp.int32), zero, jnp.asarray(True))

    _check("rtol", float(rtol) > 0, "> 0", rtol)
    _check("atol", float(atol) >= 0, ">= 0", atol)
    h0 = interval / 100 if dt0 is None else float(dt0)
    _check("dt0", h0 > 0, "> 0", dt0)

    def save_interval(carry, t_end):
        def cond(c):
            t, _, _, n_acc, n_rej = c
            return (t < t_end) & (n_acc + n_rej < max_steps)

        def body(c):
            t, y, h_prop, n_acc, n_rej = c
            remaining = t_end - t
            clipped = h_prop >= remaining
            h = jnp.where(clipped, remaining, h_prop)
            y_new, err = _dopri5_step(f, t, y, h)
            norm = _error_norm(err, y, y_new, rtol, atol)
            finite = jnp.isfinite(norm)
            accept = finite & (norm <= 1.0)
            factor = jnp.where(finite, jnp.clip(0.9 * jnp.where(norm > 0, norm, 1e-10) ** -0.2, 0.2, 10.0), 0.2)
            h_next = jnp.where(accept & clipped, jnp.maximum(h_prop, h * factor), h * factor)
            t = jnp.where(accept, jnp.where(clipped, t_end, t + h), t)
            y = jax.tree.map(lambda a, b: jnp.where(accept, a, b), y_new, y)
            return t, y, h_next, n_acc + accept, n_rej + (~accept)

        carry = lax.while_loop(cond, body, carry)
        return carry, carry[1]

    int0 = jnp.asarray(0, jnp.int32)
    init = (ts[0], y0, jnp.asarray(h0, dtype), int0, int0)
    (t_last, _, _, n_acc, n_rej), ys = lax.scan(save_interval, init, ts[1:])
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    success = t_last >= ts[-1]  # each interval ends with t set exactly to its save time
    return Solution(ts, ys, n_acc, n_rej, success)


def fitted_order(errors: np.ndarray, dts: np.ndarray) -> float:
    """Least-squares slope of log(error) against log(dt): the observed convergence order."""
    return float(np.polyfit(np.log(np.asarray(dts)), np.log(np.asarray(errors)), 1)[0])
