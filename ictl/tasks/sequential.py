"""Sequential function classes: linear dynamics, sliding-window ReLU nets, randomized labels.

    linear_dynamics   x_1 ~ N(0, I_d), x_{t+1} = W x_t + s ε_t (ε_t ~ N(0, I_d), s = noise_std),
                      W = G · min(1, r/‖G‖₂), G_ij ~ N(0, 1/d), r = max_radius (0.8): the spectral
                      norm, hence the spectral radius, of W is ≤ r, so the sequence contracts
                      (‖x_{t+1}‖ ≤ r ‖x_t‖ without noise). In-context target of x_t: x_{t+1}.
                      (The spectral norm is used instead of eigenvalue clamping: `eig` is CPU-only.)
    window_relu       x_t ~ N(0, I_d) iid, y_t = √(2/h) Σ_j a_j relu(W_jᵀ u_t) with u_t = (x_{t−w+1},
                      …, x_t) ∈ R^{w·d} (zeros before t = 1), W_j ~ N(0, I_{wd}), a_j ~ N(0, 1):
                      E y_t² = d · min(t, w) (E relu(g)² = ½ Var g).
    randomize_labels  each label is replaced independently with probability p by an independent
                      N(0, label_std²) draw; returns the new labels and the replaced mask.

Shapes: B prompts, N steps, d state/input dim, w window, h hidden width.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class SeqPrompts(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N ..."]   # [B, N, d] next states (dynamics) or [B, N] (window ReLU)
    params: Any


def _check(**kw) -> None:
    for name, v in kw.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed a positive integer")


def sample_linear_dynamics(key: jax.Array, *, batch: int, n_points: int, d: int, max_radius: float = 0.8,
                           noise_std: float = 0.0, dtype=jnp.float32) -> SeqPrompts:
    """x_1..x_N of x_{t+1} = W x_t + s ε_t with ‖W‖₂ ≤ max_radius; y_t = x_{t+1}; params = {"W": [B, d, d]}."""
    _check(batch=batch, n_points=n_points, d=d)
    if not 0 < max_radius < 1:
        raise ValueError(f"max_radius: got {max_radius!r}; allowed 0 < max_radius < 1")
    k_w, k_x, k_e = jax.random.split(key, 3)
    g_Bxdxd = jax.random.normal(k_w, (batch, d, d), dtype) / jnp.sqrt(d).astype(dtype)
    norm_B = jnp.linalg.norm(g_Bxdxd, ord=2, axis=(1, 2))
    w_Bxdxd = g_Bxdxd * jnp.minimum(1.0, max_radius / norm_B)[:, None, None]
    x0_Bxd = jax.random.normal(k_x, (batch, d), dtype)
    eps_NxBxd = noise_std * jax.random.normal(k_e, (n_points, batch, d), dtype)

    def step(x_Bxd, e_Bxd):
        nxt = jnp.einsum("bij,bj->bi", w_Bxdxd, x_Bxd) + e_Bxd
        return nxt, x_Bxd

    x_last, xs_NxBxd = jax.lax.scan(step, x0_Bxd, eps_NxBxd)
    x_BxNxd = jnp.swapaxes(xs_NxBxd, 0, 1)
    y_BxNxd = jnp.concatenate([x_BxNxd[:, 1:], x_last[:, None]], axis=1)
    return SeqPrompts(x_BxNxd, y_BxNxd, {"W": w_Bxdxd})


def window_features(x_BxNxd: Float[Array, "B N d"], window: int) -> Float[Array, "B N wd"]:
    """u_t = (x_{t−w+1}, …, x_t) with zeros before the first step (oldest first)."""
    B, N, d = x_BxNxd.shape
    pad = jnp.concatenate([jnp.zeros((B, window - 1, d), x_BxNxd.dtype), x_BxNxd], axis=1)
    return jnp.concatenate([pad[:, i:i + N] for i in range(window)], axis=-1)


def sample_window_relu(key: jax.Array, *, batch: int, n_points: int, d: int, window: int = 3,
                       hidden: int = 100, dtype=jnp.float32) -> SeqPrompts:
    """y_t = √(2/h) aᵀ relu(W u_t) on the last ``window`` inputs; params = {"w1": [B, wd, h], "a": [B, h]}."""
    _check(batch=batch, n_points=n_points, d=d, window=window, hidden=hidden)
    k_x, k_w, k_a = jax.random.split(key, 3)
    x_BxNxd = jax.random.normal(k_x, (batch, n_points, d), dtype)
    w1_BxUxH = jax.random.normal(k_w, (batch, window * d, hidden), dtype)
    a_BxH = jax.random.normal(k_a, (batch, hidden), dtype)
    return SeqPrompts(x_BxNxd, apply_window_relu({"w1": w1_BxUxH, "a": a_BxH}, x_BxNxd), {"w1": w1_BxUxH, "a": a_BxH})


def apply_window_relu(params, x_BxNxd: Float[Array, "B N d"]) -> Float[Array, "B N"]:
    window = params["w1"].shape[1] // x_BxNxd.shape[-1]
    act_BxNxH = jax.nn.relu(jnp.einsum("bnu,buh->bnh", window_features(x_BxNxd, window), params["w1"]))
    return jnp.sqrt(2.0 / params["a"].shape[-1]) * jnp.einsum("bnh,bh->bn", act_BxNxH, params["a"])


def randomize_labels(key: jax.Array, y_BxN: Float[Array, "B N"], *, fraction: float,
                     label_std: float = 1.0) -> tuple[Float[Array, "B N"], Bool[Array, "B N"]]:
    """Replaces each label with probability ``fraction`` by an independent N(0, label_std²) draw."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction: got {fraction!r}; allowed 0 <= fraction <= 1")
    k_m, k_y = jax.random.split(key)
    mask_BxN = jax.random.bernoulli(k_m, fraction, y_BxN.shape)
    fresh_BxN = label_std * jax.random.normal(k_y, y_BxN.shape, y_BxN.dtype)
    return jnp.where(mask_BxN, fresh_BxN, y_BxN), mask_BxN
