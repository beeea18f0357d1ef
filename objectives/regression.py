"""Regression losses as pure functions of predictions and targets (any matching shapes)."""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def half_mse(pred: Float[Array, "*S"], target: Float[Array, "*S"]) -> Float[Array, ""]:
    """½ E[(ŷ − y)²], the loss of the LSA papers (ZFB, von Oswald, Mahankali)."""
    return 0.5 * jnp.mean(jnp.square(pred - target))


def mse(pred: Float[Array, "*S"], target: Float[Array, "*S"]) -> Float[Array, ""]:
    """E[(ŷ − y)²], Garg et al.'s squared error."""
    return jnp.mean(jnp.square(pred - target))


def gaussian_nll(mean: Float[Array, "*S"], log_var: Float[Array, "*S"], target: Float[Array, "*S"]) -> Float[Array, ""]:
    """E[½ log 2πσ² + (y − μ)²/(2σ²)] with σ² = exp(log_var)."""
    return jnp.mean(0.5 * (jnp.log(2 * jnp.pi) + log_var + jnp.square(target - mean) * jnp.exp(-log_var)))
