"""Nonlinear-response in-context prompts (Mahankali, Hashimoto, Ma 2023, nonlinear setting).

Shapes: B prompts, N context examples, Q queries, d input dimension.

    x_i ~ N(0, Λ)              Λ = I unless ``cov`` is given (the theory needs Λ = I)
    w   ~ N(0, τ² I_d)         τ = ``w_std``
    y_i = f(wᵀ x_i) + ε_i      ε_i ~ N(0, σ²), f one of ``RESPONSES``

The responses are plain elementwise jnp functions so that ``ictl.theory.mahankali`` integrates
exactly the f that the sampler uses:

    linear  f(z) = z         (reduces to the linear task; used as a cross-check)
    tanh    f(z) = tanh z    (odd, bounded, smooth)
    relu    f(z) = max(z, 0) (not odd: E[y | w] ≠ 0)
    cubic   f(z) = z³        (odd, heavy tailed)
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl import rng
from ictl.tasks.linear import Prompts, sample_linear_prompts

RESPONSES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda z: z,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "cubic": lambda z: z * z * z,
}


def response_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The elementwise response f named ``name`` (ValueError listing the allowed names)."""
    if name not in RESPONSES:
        raise ValueError(f"response={name!r}: allowed {sorted(RESPONSES)}")
    return RESPONSES[name]


def sample_nonlinear_prompts(
    key: jax.Array,
    *,
    batch: int,
    n_ctx: int,
    d: int,
    response: str,
    w_std: float = 1.0,
    noise_std: float = 0.0,
    n_query: int = 1,
    cov: Float[Array, "d d"] | None = None,
    dtype=jnp.float32,
) -> Prompts:
    """Draws B prompts with labels y = f(wᵀx) + ε, context and queries alike. Pure in ``key``.

    The inputs and the task come from ``ictl.tasks.linear.sample_linear_prompts`` (noise-free,
    w ~ N(0, τ² I)); f is applied to its labels wᵀx and then the noise is added.
    Returns ``Prompts`` (x_ctx B×N×d, y_ctx B×N, x_q B×Q×d, y_q B×Q, w B×d, cov None).
    """
    f = response_fn(response)
    if w_std <= 0:
        raise ValueError(f"w_std={w_std}: must be > 0")
    if noise_std < 0:
        raise ValueError(f"noise_std={noise_std}: must be >= 0")
    k_lin, k_eps = jax.random.split(key)
    w_cov = (w_std**2) * jnp.eye(d, dtype=dtype)
    lin = sample_linear_prompts(
        k_lin, batch=batch, n_ctx=n_ctx, d=d, n_query=n_query, cov=cov, w_cov=w_cov, dtype=dtype
    )
    eps_BxT = noise_std * rng.normal(k_eps, (batch, n_ctx + n_query), dtype)
    y_ctx_BxN = f(lin.y_ctx) + eps_BxT[:, :n_ctx]
    y_q_BxQ = f(lin.y_q) + eps_BxT[:, n_ctx:]
    return lin._replace(y_ctx=y_ctx_BxN, y_q=y_q_BxQ)
