"""Bayesian-neural-network prior for binary classification (the PFN paper's BNN experiments).

Per dataset: W₁ ∈ R^{d×h}, b₁ ∈ R^h, W₂ ∈ R^{h×2}, b₂ ∈ R² all i.i.d. N(0, 1); x_i ~ N(0, I_d);
logits = act(x W₁ + b₁) W₂ + b₂; y_i ~ Categorical(softmax(logits)) ∈ {0, 1}. The paper's settings
(`SETTINGS`): "small" d = 3, h = 5 and "big" d = 8, h = 64. The authors' model stacks the two
linear layers with no nonlinearity in between (then P(y = 1 | x) = σ(wᵀx + c) is a logistic model
with a Gaussian-mixture-like prior on (w, c)); ``activation`` "tanh" or "relu" gives a genuine
one-hidden-layer BNN.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

SETTINGS = {"small": (3, 5), "big": (8, 64)}    # name → (d, hidden)
ACTIVATIONS = {"none": lambda h: h, "tanh": jnp.tanh, "relu": jax.nn.relu}


class BNNDatasets(NamedTuple):
    x: Float[Array, "B N d"]
    y: Int[Array, "B N"]
    p1: Float[Array, "B N"]         # P(y = 1 | x, weights): the Bayes-optimal rule given the weights


def sample_bnn_classification(key: jax.Array, *, batch: int, n_points: int, d: int, hidden: int,
                              activation: str = "none", dtype=jnp.float32) -> BNNDatasets:
    """``batch`` binary-classification datasets of ``n_points`` from the BNN prior."""
    for name, v in (("batch", batch), ("n_points", n_points), ("d", d), ("hidden", hidden)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: got {activation!r}; allowed {tuple(ACTIVATIONS)}")
    k_w1, k_b1, k_w2, k_b2, k_x, k_y = jax.random.split(key, 6)
    w1_Bxdxh = jax.random.normal(k_w1, (batch, d, hidden), dtype)
    b1_Bxh = jax.random.normal(k_b1, (batch, hidden), dtype)
    w2_Bxhx2 = jax.random.normal(k_w2, (batch, hidden, 2), dtype)
    b2_Bx2 = jax.random.normal(k_b2, (batch, 2), dtype)
    x_BxNxd = jax.random.normal(k_x, (batch, n_points, d), dtype)
    h_BxNxh = ACTIVATIONS[activation](jnp.einsum("bnd,bdh->bnh", x_BxNxd, w1_Bxdxh) + b1_Bxh[:, None, :])
    logits_BxNx2 = jnp.einsum("bnh,bhk->bnk", h_BxNxh, w2_Bxhx2) + b2_Bx2[:, None, :]
    y_BxN = jax.random.categorical(k_y, logits_BxNx2, axis=-1).astype(jnp.int32)
    p1_BxN = jax.nn.softmax(logits_BxNx2, axis=-1)[..., 1]
    return BNNDatasets(x_BxNxd, y_BxN, p1_BxN)
