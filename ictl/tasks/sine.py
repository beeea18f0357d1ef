"""Sine-regression prompts (von Oswald et al. 2022, the nonlinear regression task).

Shapes: B prompts, N context examples, Q queries; inputs are scalars (d = 1).

    A ~ U(0.1, 0.5),  φ ~ U(0, π)        one (A, φ) per prompt
    x_i ~ U(−5, 5),   y_i = A sin(x_i + φ)

The defaults are the paper's ranges; all three are arguments.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl import rng


class SinePrompts(NamedTuple):
    x_ctx: Float[Array, "B N 1"]
    y_ctx: Float[Array, "B N"]
    x_q: Float[Array, "B Q 1"]
    y_q: Float[Array, "B Q"]
    amp: Float[Array, "B"]
    phase: Float[Array, "B"]


def _check_range(name, lo_hi):
    lo, hi = lo_hi
    if not lo < hi:
        raise ValueError(f"{name}: got {lo_hi!r}; allowed (lo, hi) with lo < hi")


def sample_sine_prompts(
    key: jax.Array,
    *,
    batch: int,
    n_ctx: int,
    n_query: int = 1,
    amp_range: tuple[float, float] = (0.1, 0.5),
    phase_range: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    dtype=jnp.float32,
) -> SinePrompts:
    """Draws B prompts y = A sin(x + φ) with N context points and Q queries; pure in ``key``."""
    for name, val in (("batch", batch), ("n_ctx", n_ctx), ("n_query", n_query)):
        if int(val) != val or val < 1:
            raise ValueError(f"{name}: got {val!r}; allowed a positive integer")
    _check_range("amp_range", amp_range)
    _check_range("phase_range", phase_range)
    _check_range("x_range", x_range)
    k_a, k_p, k_x = jax.random.split(key, 3)
    amp_B = rng.uniform(k_a, (batch,), dtype, *amp_range)
    phase_B = rng.uniform(k_p, (batch,), dtype, *phase_range)
    x_BxTx1 = rng.uniform(k_x, (batch, n_ctx + n_query, 1), dtype, *x_range)
    y_BxT = amp_B[:, None] * jnp.sin(x_BxTx1[..., 0] + phase_B[:, None])
    return SinePrompts(x_BxTx1[:, :n_ctx], y_BxT[:, :n_ctx], x_BxTx1[:, n_ctx:], y_BxT[:, n_ctx:], amp_B, phase_B)
