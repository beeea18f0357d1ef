"""ODE solves for pytrees on diffrax: adaptive Dormand–Prince 5(4) and fixed-step classical RK4.

Solves y' = f(t, y), y(t0) = y0 on [t0, t1] and returns y at ``num_saves`` equally spaced
times t0 = s_0 < s_1 < … < s_{S−1} = t1. The state y is any pytree of float arrays; the
solve runs in y0's dtype (call it under ``jax.enable_x64(True)`` with float64 leaves for
tight tolerances).

* ``method="dopri5"``: ``diffrax.Dopri5`` with a ``PIDController`` (an I-controller with
  diffrax's defaults: safety 0.9, step factor clipped to [0.2, 10]); a step is accepted when
  the RMS over all leaves of e / (atol + rtol · max(|y|, |y_new|)) is ≤ 1. A
  ``ClipStepSizeController`` makes the steps land on the save times, so saved states carry
  the full 5th-order accuracy (no interpolation). ``success`` is False when ``max_steps``
  (attempted steps) ran out before t1.
* ``method="rk4"``: the classical 4-stage Runge–Kutta tableau (diffrax ships no classical
  RK4; it is declared here as a ``ButcherTableau``) with constant steps
  h = (t1 − t0) / ((S − 1)·k), k steps per save interval. Global error O(h⁴).

``solve_ode`` jits the solve with f static (reuse one f object to reuse the compilation; times,
steps and tolerances are traced) and can be called inside ``jax.jit``. Events, dense output and adjoints are
diffrax's: ``ictl.theory.zfb.time_to_eps`` stops a solve at an ``Event``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

PyTree = Any


class Solution(NamedTuple):
    """``ts[s]`` and ``ys`` (y0's pytree with a leading save axis of size S) = y(ts[s])."""

    ts: Float[Array, "S"]
    ys: PyTree
    num_steps: Int[Array, ""]  # accepted steps
    num_rejected: Int[Array, ""]  # rejected steps (0 for rk4)
    success: Bool[Array, ""]  # False if dopri5 ran out of max_steps


class _RK4(diffrax.AbstractERK):
    """Classical RK4: c = (½, ½, 1), b = (1/6, 1/3, 1/3, 1/6); fixed steps only (no error estimate)."""

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        c=np.array([0.5, 0.5, 1.0]),
    )
    interpolation_cls: ClassVar[Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k)

    def order(self, terms):
        del terms
        return 4


def _check(name: str, ok: bool, allowed: str, got) -> None:
    if not ok:
        raise ValueError(f"{name}: must be {allowed}, got {got!r}")


def _is_concrete(x) -> bool:
    try:
        float(x)
        return True
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return False


def dopri5_controller(rtol: float, atol: float, step_ts=None):
    """The adaptive step controller of ``solve_ode(method="dopri5")`` (optionally landing on step_ts)."""
    pid = diffrax.PIDController(rtol=rtol, atol=atol)
    return pid if step_ts is None else diffrax.ClipStepSizeController(pid, step_ts=step_ts)


@functools.partial(jax.jit, static_argnames=("f", "num_saves", "method", "max_steps"))
def _solve(f, y0, t0, t1, dt, rtol, atol, *, num_saves, method, max_steps):
    """The diffrax solve; f, S, method and max_steps are static, times, step and tolerances traced
    (so one compilation serves every horizon, step size and tolerance for a given f)."""
    ts = jnp.linspace(t0, t1, num_saves)
    term = diffrax.ODETerm(lambda t, y, args: f(t, y))
    saveat = diffrax.SaveAt(ts=ts)
    if method == "rk4":
        # Constant steps dt = interval / k land on the save times up to rounding of t (≈ k ulp);
        # a save time a rounding error past a step end is read off the next step's interpolant.
        sol = diffrax.diffeqsolve(term, _RK4(), t0, t1, dt, y0, saveat=saveat, max_steps=max_steps,
                                  stepsize_controller=diffrax.ConstantStepSize(), throw=False)
    else:
        sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0, t1, dt, y0, saveat=saveat, max_steps=max_steps,
                                  stepsize_controller=dopri5_controller(rtol, atol, ts), throw=False)
    return Solution(ts, sol.ys, jnp.asarray(sol.stats["num_accepted_steps"], jnp.int32),
                    jnp.asarray(sol.stats["num_rejected_steps"], jnp.int32),
                    sol.result == diffrax.RESULTS.successful)


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
      f: the vector field ``f(t, y) -> dy/dt`` with the pytree structure and dtypes of y
        (hashable: calls with the same f object share one compilation).
      y0: the initial state (a pytree of float arrays).
      t1, t0: the end and start times (t1 > t0; may be traced under jit).
      num_saves: S ≥ 2 save times, ``linspace(t0, t1, S)``.
      method: ``"dopri5"`` (adaptive) or ``"rk4"`` (fixed step).
      rtol, atol: dopri5 tolerances (ignored by rk4).
      dt0: rk4 step (rounded down so each save interval holds a whole number of steps);
        dopri5's first trial step (default (t1 − t0)/(100 (S − 1))).
      num_steps: rk4 only, alternative to dt0: total steps (rounded up to a multiple of S − 1).
      max_steps: the budget of attempted steps (``success`` is False when it runs out).

    Returns:
      ``Solution(ts, ys, num_steps, num_rejected, success)``.
    """
    _check("method", method in ("dopri5", "rk4"), "'dopri5' or 'rk4'", method)
    _check("num_saves", isinstance(num_saves, int) and num_saves >= 2, "an int >= 2", num_saves)
    concrete = _is_concrete(t0) and _is_concrete(t1)
    if concrete:
        _check("t1", float(t1) > float(t0), f"> t0 = {t0}", t1)
    leaves = jax.tree.leaves(y0)
    _check("y0", len(leaves) > 0 and all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves),
           "a non-empty pytree of float arrays", jax.tree.map(jnp.result_type, y0))
    y0 = jax.tree.map(jnp.asarray, y0)
    dtype = jnp.result_type(*leaves)
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    interval = (t1 - t0) / (num_saves - 1)
    if method == "rk4":
        _check("num_steps/dt0", (num_steps is None) != (dt0 is None), "exactly one given for rk4",
               (num_steps, dt0))
        if num_steps is not None:
            _check("num_steps", int(num_steps) >= 1, "a positive int", num_steps)
            k = math.ceil(int(num_steps) / (num_saves - 1))
        else:
            _check("dt0", float(dt0) > 0, "> 0", dt0)
            _check("t0, t1", concrete, "Python numbers when rk4 gets dt0", (t0, t1))
            k = math.ceil(float(interval) / float(dt0) - 1e-9)
        max_steps = max(int(max_steps), k * (num_saves - 1) + 1)
        sol = _solve(f, y0, t0, t1, interval / k, 0.0, 0.0, num_saves=num_saves, method=method, max_steps=max_steps)
        return sol._replace(num_steps=jnp.asarray(k * (num_saves - 1), jnp.int32))
    _check("rtol", float(rtol) > 0, "> 0", rtol)
    _check("atol", float(atol) >= 0, ">= 0", atol)
    _check("dt0", dt0 is None or float(dt0) > 0, "> 0", dt0)
    h0 = interval / 100 if dt0 is None else jnp.asarray(dt0, dtype)
    return _solve(f, y0, t0, t1, h0, jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype), num_saves=num_saves,
                  method=method, max_steps=int(max_steps))


def fitted_order(errors: np.ndarray, dts: np.ndarray) -> float:
    """Least-squares slope of log(error) against log(dt): the observed convergence order."""
    return float(np.polyfit(np.log(np.asarray(dts)), np.log(np.asarray(errors)), 1)[0])
