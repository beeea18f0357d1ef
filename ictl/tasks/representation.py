"""Guo et al. (2024), "How do transformers learn in-context beyond simple functions? A case study on
learning with representations": y = ⟨w, Φ*(x)⟩ + σε with a fixed random MLP Φ*.

    Φ*(x) = h_L,  h_0 = x,  h_l = relu(A_l h_{l−1}) · √(2 / D_{l−1})  (A_l entries ~ N(0, 1))
    x ~ N(0, I_d),  w ~ N(0, τ² I_D) fresh per prompt,  y = wᵀΦ*(x) + σε

The √(2/fan_in) scaling keeps E‖h_l‖²/D_l = E‖h_{l−1}‖²/D_{l−1} (He et al.; E relu(g)² = ½ Var g), so
E‖Φ*(x)‖² = D (averaged over Φ*; for a fixed depth-1 Φ*, E_x‖Φ*(x)‖² = ‖A_1‖_F²/d) and
E y² = τ² E‖Φ*(x)‖² + σ². Φ* is drawn once from ``phi_seed`` and shared by
all prompts. The Bayes-optimal in-context predictor is ridge on the features, λ = σ²/τ²
(`ictl.bayes.gaussian_posterior_mean` applied to Φ*(x)); `representation_features` gives them.

Shapes: B prompts, N points, d input dim, D feature dim (the MLP width).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class RepPrompts(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N"]
    params: Any                      # {"w": [B, D]}


def make_phi(phi_seed: int, *, d: int, width: int, depth: int = 2, dtype=jnp.float32) -> list[Float[Array, "o i"]]:
    """The fixed MLP Φ*: ``depth`` matrices A_l [width, fan_in] with N(0, 1) entries, from ``phi_seed``."""
    for name, v in (("d", d), ("width", width), ("depth", depth)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed a positive integer")
    keys = jax.random.split(jax.random.key(phi_seed), depth)
    fans = [d] + [width] * (depth - 1)
    return [jax.random.normal(k, (width, f), dtype) for k, f in zip(keys, fans)]


def representation_features(phi: list, x_BxNxd: Float[Array, "B N d"]) -> Float[Array, "B N D"]:
    """Φ*(x) = relu(A_L … relu(A_1 x)·√(2/d) …)·√(2/D)."""
    h = x_BxNxd
    for a_OxI in phi:
        h = jax.nn.relu(jnp.einsum("bni,oi->bno", h, a_OxI)) * jnp.sqrt(2.0 / a_OxI.shape[1]).astype(h.dtype)
    return h


def sample_representation_prompts(key: jax.Array, phi: list, *, batch: int, n_points: int, w_std: float = 1.0,
                                  noise_std: float = 0.0) -> RepPrompts:
    """x ~ N(0, I_d), w ~ N(0, w_std² I_D), y = wᵀΦ*(x) + σε."""
    if batch < 1 or n_points < 1:
        raise ValueError(f"batch/n_points: got {batch}/{n_points}; allowed positive integers")
    d, D = phi[0].shape[1], phi[-1].shape[0]
    k_x, k_w, k_e = jax.random.split(key, 3)
    dtype = phi[0].dtype
    x_BxNxd = jax.random.normal(k_x, (batch, n_points, d), dtype)
    w_BxD = w_std * jax.random.normal(k_w, (batch, D), dtype)
    y_BxN = jnp.einsum("bnk,bk->bn", representation_features(phi, x_BxNxd), w_BxD)
    y_BxN = y_BxN + noise_std * jax.random.normal(k_e, y_BxN.shape, dtype)
    return RepPrompts(x_BxNxd, y_BxN, {"w": w_BxD})
