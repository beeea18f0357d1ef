"""In-sequence classifiers for GPICL prompts, jitted and batched over prompts and positions.

A sequence holds inputs x_1..x_L ∈ R^D and labels y_1..y_L ∈ {0..V−1}; at a position t (0-based)
a learner sees the t labelled examples s < t and predicts y_t from x_t — what the sequence model
sees at token t. Every learner returns scores [B, Q, V] for Q query positions ``positions_Q``:

    logistic_gd   multinomial logistic regression W ∈ R^{(D+1)×V} (bias as a constant feature)
                  from W = 0 by ``steps`` full-batch gradient steps on
                      (1/k) Σ_{s<t} CE(softmax(Wᵀx̄_s), y_s) + (l2/2)‖W‖²,   k = max(t, 1),
                  step size lr / (½ λ_max(X̄ᵀX̄/k) + l2) (½ λ_max bounds the softmax-CE curvature, so
                  lr < 2 is stable); λ_max by power iteration. Kirsch et al.'s "SGD" row: a learner
                  trained by gradient descent on the context. t = 0 → W = 0 → uniform scores.
    knn           votes of the n_neighbors nearest earlier inputs (Euclidean; a nearer neighbour
                  breaks ties); t = 0 → no votes.
    chance        accuracy 1/V (V labels used uniformly), cross-entropy ln V.

Masked sums are written as einsums/dots (the XLA CPU fused-reduce miscompile, docs/architecture.md);
`tests/test_gpicl_baselines.py` checks logistic_gd against scikit-learn's LogisticRegression and the
whole batch against chunks. Hand-written because scikit-learn fits one problem at a time, not
B·Q prefix problems inside jit.

Shapes: B prompts, L sequence length, Q query positions, D input width, V label slots.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _prefix_mask(positions_Q: Int[Array, "Q"], L: int) -> Float[Array, "Q L"]:
    return (jnp.arange(L)[None, :] < positions_Q[:, None]).astype(jnp.float32)


def _check(x_BxLxD, y_BxL, positions_Q) -> None:
    if x_BxLxD.ndim != 3 or y_BxL.shape != x_BxLxD.shape[:2]:
        raise ValueError(f"x/y: got shapes {x_BxLxD.shape}/{y_BxL.shape}; allowed [B, L, D]/[B, L]")
    if positions_Q.ndim != 1:
        raise ValueError(f"positions: got shape {positions_Q.shape}; allowed [Q]")


@functools.partial(jax.jit, static_argnames=("n_labels", "steps", "power_iters"))
def logistic_gd(x_BxLxD: Float[Array, "B L D"], y_BxL: Int[Array, "B L"], positions_Q: Int[Array, "Q"], *,
                n_labels: int, steps: int = 100, lr: float = 1.0, l2: float = 1e-3,
                power_iters: int = 20) -> Float[Array, "B Q V"]:
    """Scores Wᵀx̄_t of logistic regression trained by GD on each prefix (see the module doc)."""
    _check(x_BxLxD, y_BxL, positions_Q)
    B, L, D = x_BxLxD.shape
    xb_BxLxE = jnp.concatenate([x_BxLxD, jnp.ones((B, L, 1), x_BxLxD.dtype)], axis=-1)   # E = D + 1
    m_QxL = _prefix_mask(positions_Q, L)
    w_Q = m_QxL / jnp.maximum(jnp.sum(m_QxL, axis=1, keepdims=True), 1.0)                 # (1/k) on the prefix
    yoh_BxLxV = jax.nn.one_hot(y_BxL, n_labels, dtype=jnp.float32)
    gram_BxQxExE = jnp.einsum("ql,ble,blf->bqef", w_Q, xb_BxLxE, xb_BxLxE)

    def power(v_BxQxE, _):
        v = jnp.einsum("bqef,bqf->bqe", gram_BxQxExE, v_BxQxE)
        return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12), None

    v0 = jnp.ones((B, positions_Q.shape[0], D + 1), jnp.float32) / jnp.sqrt(D + 1.0)
    v, _ = jax.lax.scan(power, v0, None, length=power_iters)
    lam_BxQ = jnp.einsum("bqe,bqef,bqf->bq", v, gram_BxQxExE, v)
    eta_BxQ = lr / (0.5 * lam_BxQ + l2)

    def step(W_BxQxExV, _):
        logits_BxQxLxV = jnp.einsum("ble,bqev->bqlv", xb_BxLxE, W_BxQxExV)
        r_BxQxLxV = (jax.nn.softmax(logits_BxQxLxV, axis=-1) - yoh_BxLxV[:, None]) * w_Q[None, :, :, None]
        grad = jnp.einsum("ble,bqlv->bqev", xb_BxLxE, r_BxQxLxV) + l2 * W_BxQxExV
        return W_BxQxExV - eta_BxQ[..., None, None] * grad, None

    W0 = jnp.zeros((B, positions_Q.shape[0], D + 1, n_labels), jnp.float32)
    W, _ = jax.lax.scan(step, W0, None, length=steps)
    xq_BxQxE = jnp.take_along_axis(xb_BxLxE, jnp.broadcast_to(positions_Q[None, :, None], (B, positions_Q.shape[0], 1)),
                                   axis=1)
    return jnp.einsum("bqe,bqev->bqv", xq_BxQxE, W)


@functools.partial(jax.jit, static_argnames=("n_labels", "n_neighbors"))
def knn(x_BxLxD: Float[Array, "B L D"], y_BxL: Int[Array, "B L"], positions_Q: Int[Array, "Q"], *,
        n_labels: int, n_neighbors: int = 1) -> Float[Array, "B Q V"]:
    """Vote counts of the n_neighbors nearest earlier inputs (+ a tie-break toward the nearest)."""
    _check(x_BxLxD, y_BxL, positions_Q)
    B, L, _ = x_BxLxD.shape
    Q = positions_Q.shape[0]
    xq_BxQxD = x_BxLxD[:, positions_Q]
    sq_BxL = jnp.einsum("bld,bld->bl", x_BxLxD, x_BxLxD)
    d2_BxQxL = (jnp.einsum("bqd,bqd->bq", xq_BxQxD, xq_BxQxD)[..., None] + sq_BxL[:, None]
                - 2.0 * jnp.einsum("bqd,bld->bql", xq_BxQxD, x_BxLxD))
    usable_QxL = _prefix_mask(positions_Q, L) > 0
    d2_BxQxL = jnp.where(usable_QxL[None], d2_BxQxL, jnp.inf)
    kk = min(n_neighbors, L)
    neg_BxQxK, idx_BxQxK = jax.lax.top_k(-d2_BxQxL, kk)
    valid_BxQxK = jnp.isfinite(neg_BxQxK).astype(jnp.float32)
    lab_BxQxK = jnp.take_along_axis(jnp.broadcast_to(y_BxL[:, None], (B, Q, L)), idx_BxQxK, axis=2)
    weight_K = 1.0 + 1e-3 / (1.0 + jnp.arange(kk, dtype=jnp.float32))   # nearer wins a tie
    return jnp.einsum("bqk,bqkv->bqv", valid_BxQxK * weight_K[None, None, :], jax.nn.one_hot(lab_BxQxK, n_labels, dtype=jnp.float32))


def accuracy(scores_BxQxV: Float[Array, "B Q V"], labels_BxQ: Int[Array, "B Q"]) -> Float[Array, "B Q"]:
    """1[argmax scores = label] (ties → the first maximum, so no votes → label 0: chance on average)."""
    return (jnp.argmax(scores_BxQxV, axis=-1) == labels_BxQ).astype(jnp.float32)


def cross_entropy(scores_BxQxV: Float[Array, "B Q V"], labels_BxQ: Int[Array, "B Q"]) -> Float[Array, "B Q"]:
    logp = jax.nn.log_softmax(scores_BxQxV, axis=-1)
    return -jnp.take_along_axis(logp, labels_BxQ[..., None], axis=-1)[..., 0]
