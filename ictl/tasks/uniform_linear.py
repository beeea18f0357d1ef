"""Linear-regression prompts with uniform inputs (von Oswald et al. 2022's setup).

Shapes: B prompts, N context examples, Q queries, d input dimension.

    x_i ~ U(−a, a)^d        (context and queries; a = ``x_range``, the paper's code: a = 0.5)
    w   ~ N(0, s² I_d)      (s = ``w_scale``; the paper: s = 1)
    y_i = wᵀ x_i            (noiseless)

Out-of-distribution variants are other arguments: input scale α ↦ ``x_range = α·a``, weight
scale α ↦ ``w_scale = α·s``. Returns `ictl.tasks.linear.Prompts` (``cov`` is None).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ictl import rng
from ictl.tasks.linear import Prompts


def sample_uniform_linear_prompts(
    key: jax.Array,
    *,
    batch: int,
    n_ctx: int,
    d: int,
    n_query: int = 1,
    x_range: float = 0.5,
    w_scale: float = 1.0,
    dtype=jnp.float32,
) -> Prompts:
    """Draws B prompts of N context examples and Q queries; pure in ``key``.

    Each coordinate of every input is U(−x_range, x_range) (variance x_range²/3, fourth moment
    x_range⁴/5); w ~ N(0, w_scale² I); labels are noiseless y = wᵀx.
    """
    for name, val in (("batch", batch), ("n_ctx", n_ctx), ("d", d), ("n_query", n_query)):
        if int(val) != val or val < 1:
            raise ValueError(f"{name}: got {val!r}; allowed a positive integer")
    # x_range / w_scale may be traced (one jitted sampler for every OOD scale): check concrete ones
    if isinstance(x_range, (int, float)) and not x_range > 0:
        raise ValueError(f"x_range: got {x_range!r}; allowed a positive number")
    if isinstance(w_scale, (int, float)) and not w_scale >= 0:
        raise ValueError(f"w_scale: got {w_scale!r}; allowed a non-negative number")
    k_x, k_q, k_w = jax.random.split(key, 3)
    x_BxNxd = rng.uniform(k_x, (batch, n_ctx, d), dtype, -x_range, x_range)
    xq_BxQxd = rng.uniform(k_q, (batch, n_query, d), dtype, -x_range, x_range)
    w_Bxd = w_scale * rng.normal(k_w, (batch, d), dtype)
    y_BxN = jnp.einsum("bnd,bd->bn", x_BxNxd, w_Bxd)
    yq_BxQ = jnp.einsum("bqd,bd->bq", xq_BxQxd, w_Bxd)
    return Prompts(x_BxNxd, y_BxN, xq_BxQxd, yq_BxQ, w_Bxd, None)
