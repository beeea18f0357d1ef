"""Distribution Transformer (Whittle et al. 2025): a GMM prior and a data set in, a GMM posterior out.

Tokens. Each mixture component k is one token with the features
    [log π_k, μ_k / s, log diag(L_k) − log s, strictly-lower(L_k) / s]      (Σ_k = L_k L_kᵀ)
(s = `DTConfig.scale`, a fixed unit for states and observations) embedded by an MLP. Each
observation y_i of type t (sensor t, width m_t) is one token, embedded by that type's own MLP
(y / s); a learned "null" observation token is always present, so the cross-attention is defined
for n = 0 and its share of the attention tells the components how much data there is.

Blocks (pre-LayerNorm, residual): self-attention among the K component tokens, cross-attention
from the components to the observation tokens (padded observations masked out), an MLP. There
are no positional encodings anywhere: the map is equivariant under permutations of the
components and invariant under permutations (and padding) of the observations.

De-embedding: a zero-initialised linear read-out gives per component the change of every
feature, added to the prior's (so the untrained model returns the prior), then
    log π' = log_softmax(log π + Δ_0),  μ' = μ + s Δ_μ,  diag L' = diag L · exp(Δ_diag),
    strictly-lower L' = strictly-lower L + s Δ_off,
which is always a valid GMM (weights positive summing to 1, L' lower-triangular with a positive
diagonal). Output family = input family: the posterior can be fed back in as the next prior.

Attention (`Attention`) is written here: cross-attention needs separate key/value inputs and a
padding mask, which `models.attention` (causal self-attention) does not take, and flax's
`nn.MultiHeadDotProductAttention` lowers the tiny per-head matmuls (K = 2 queries, ~10 keys) to
batched dots that made a training step ≈ 3× slower on CPU than the broadcast products used here.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


class GMM(NamedTuple):
    """A batch of mixtures: log weights (normalised on output), means, lower Cholesky factors."""

    logits_BxK: Float[Array, "B K"]
    means_BxKxd: Float[Array, "B K d"]
    chol_BxKxdxd: Float[Array, "B K d d"]


@dataclasses.dataclass(frozen=True)
class DTConfig:
    d: int = 1                          # state width
    obs_dims: tuple[int, ...] = (1,)    # width m_t of each observation type (one embedding MLP each)
    width: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_hidden: int = 128
    scale: float = 1.0                  # unit of states and observations
    param_dtype: Any = jnp.float32


def n_features(d: int) -> int:
    return 1 + 2 * d + d * (d - 1) // 2


def _tril_index(d: int):
    return jnp.tril_indices(d, -1)


def gmm_features(gmm: GMM, scale: float) -> Float[Array, "B K F"]:
    """Per-component token features of the module docstring."""
    d = gmm.means_BxKxd.shape[-1]
    logw = jax.nn.log_softmax(gmm.logits_BxK, axis=-1)[..., None]
    diag = jnp.diagonal(gmm.chol_BxKxdxd, axis1=-2, axis2=-1)
    i, j = _tril_index(d)
    off = gmm.chol_BxKxdxd[..., i, j]
    return jnp.concatenate([logw, gmm.means_BxKxd / scale, jnp.log(diag) - math.log(scale), off / scale], axis=-1)


def apply_delta(gmm: GMM, delta_BxKxF: Float[Array, "B K F"], scale: float) -> GMM:
    """The de-embedding: prior + change → a valid GMM (module docstring)."""
    d = gmm.means_BxKxd.shape[-1]
    logits = jax.nn.log_softmax(jax.nn.log_softmax(gmm.logits_BxK, -1) + delta_BxKxF[..., 0], axis=-1)
    means = gmm.means_BxKxd + scale * delta_BxKxF[..., 1:1 + d]
    diag = jnp.diagonal(gmm.chol_BxKxdxd, axis1=-2, axis2=-1) * jnp.exp(delta_BxKxF[..., 1 + d:1 + 2 * d])
    i, j = _tril_index(d)
    off = gmm.chol_BxKxdxd[..., i, j] + scale * delta_BxKxF[..., 1 + 2 * d:]
    k = jnp.arange(d)
    chol = jnp.zeros_like(gmm.chol_BxKxdxd).at[..., i, j].set(off).at[..., k, k].set(diag)
    return GMM(logits, means, chol)


def solve_lower(L_xdxd: Float[Array, "*S d d"], b_xd: Float[Array, "*S d"]) -> Float[Array, "*S d"]:
    """L⁻¹b by forward substitution, unrolled over d (the states here are small: batched LAPACK
    triangular solves of 1×1 and 2×2 matrices cost far more than these few vector ops on CPU)."""
    z = []
    for i in range(L_xdxd.shape[-1]):
        acc = b_xd[..., i]
        for j in range(i):
            acc = acc - L_xdxd[..., i, j] * z[j]
        z.append(acc / L_xdxd[..., i, i])
    return jnp.stack(z, axis=-1)


def gmm_log_prob(gmm: GMM, theta_Bxd: Float[Array, "B d"]) -> Float[Array, "B"]:
    """log q(θ) = log Σ_k π_k N(θ; μ_k, L_kL_kᵀ), through a triangular solve."""
    d = theta_Bxd.shape[-1]
    diff_BxKxd = theta_Bxd[:, None, :] - gmm.means_BxKxd
    z = solve_lower(gmm.chol_BxKxdxd, diff_BxKxd)
    logdet_BxK = jnp.sum(jnp.log(jnp.diagonal(gmm.chol_BxKxdxd, axis1=-2, axis2=-1)), -1)
    lp_BxK = -0.5 * jnp.sum(z * z, -1) - logdet_BxK - 0.5 * d * math.log(2 * math.pi)
    return jax.scipy.special.logsumexp(lp_BxK + jax.nn.log_softmax(gmm.logits_BxK, -1), axis=-1)


def gmm_from_moments(weights, means, covs, dtype=jnp.float32) -> GMM:
    """(π [B, K], μ [B, K, d], Σ [B, K, d, d]) → GMM tokens (log π, μ, chol Σ)."""
    return GMM(jnp.log(jnp.asarray(weights, dtype)), jnp.asarray(means, dtype),
               jnp.linalg.cholesky(jnp.asarray(covs, dtype)))


def gmm_to_moments(gmm: GMM):
    """GMM tokens → (π, μ, Σ = LLᵀ)."""
    L = gmm.chol_BxKxdxd
    return jax.nn.softmax(gmm.logits_BxK, -1), gmm.means_BxKxd, L @ jnp.swapaxes(L, -1, -2)


class _MLP(nn.Module):
    hidden: int
    out: int
    param_dtype: Any
    zero_out: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.hidden, param_dtype=self.param_dtype, dtype=self.param_dtype)(x))
        init = nn.initializers.zeros if self.zero_out else nn.initializers.lecun_normal()
        return nn.Dense(self.out, param_dtype=self.param_dtype, dtype=self.param_dtype, kernel_init=init)(x)


class Attention(nn.Module):
    """Multi-head softmax attention of queries x [B, Q, D] on keys/values o [B, N, D] (mask [B, N]:
    False = padding). The scores and the weighted sum are broadcast products summed over the head
    width: with Q, N ≤ a few dozen this is several times faster on CPU than batched matmuls."""

    width: int
    n_heads: int
    param_dtype: Any

    @nn.compact
    def __call__(self, x_BxQxD, o_BxNxD, mask_BxN=None):
        H, Kh = self.n_heads, self.width // self.n_heads
        kw = dict(param_dtype=self.param_dtype, dtype=self.param_dtype)
        q_BxQxHxK = nn.DenseGeneral((H, Kh), name="query", **kw)(x_BxQxD)
        k_BxNxHxK = nn.DenseGeneral((H, Kh), name="key", **kw)(o_BxNxD)
        v_BxNxHxK = nn.DenseGeneral((H, Kh), name="value", **kw)(o_BxNxD)
        # one query (a 1-component prior, dt_filter): XLA:CPU (jax 0.10.2) runs the broadcast products with
        # the size-1 axis ≈ 13× slower than einsums (B = 256, N = 3: 1.6 vs 0.12 ms forward, 3.3 vs 0.24 ms
        # with gradients); from two queries on the broadcast products are the faster (Q = 2, N = 9: 0.48 vs
        # 0.63 ms)
        one_query = x_BxQxD.shape[1] == 1
        if one_query:
            s_BxQxNxH = jnp.einsum("bqhk,bnhk->bqnh", q_BxQxHxK, k_BxNxHxK) / math.sqrt(Kh)
        else:
            s_BxQxNxH = jnp.sum(q_BxQxHxK[:, :, None] * k_BxNxHxK[:, None], axis=-1) / math.sqrt(Kh)
        if mask_BxN is not None:
            s_BxQxNxH = jnp.where(mask_BxN[:, None, :, None], s_BxQxNxH, -1e30)
        p_BxQxNxH = jax.nn.softmax(s_BxQxNxH, axis=2)
        if one_query:
            out_BxQxHxK = jnp.einsum("bqnh,bnhk->bqhk", p_BxQxNxH, v_BxNxHxK)
        else:
            out_BxQxHxK = jnp.sum(p_BxQxNxH[..., None] * v_BxNxHxK[:, None], axis=2)
        return nn.DenseGeneral(x_BxQxD.shape[-1], axis=(-2, -1), name="out", **kw)(out_BxQxHxK)


class DistributionTransformer(nn.Module):
    """(prior GMM, observations per type, masks per type) → posterior GMM; see the module docstring."""

    cfg: DTConfig

    @nn.compact
    def __call__(self, prior: GMM, obs: Sequence[Float[Array, "B n m"]],
                 masks: Sequence[Bool[Array, "B n"]] | None = None) -> GMM:
        c = self.cfg
        pd = c.param_dtype
        if len(obs) != len(c.obs_dims):
            raise ValueError(f"obs: allowed {len(c.obs_dims)} observation types (DTConfig.obs_dims); got {len(obs)}")
        B = prior.logits_BxK.shape[0]
        dense = dict(param_dtype=pd, dtype=pd)
        h_BxKxD = _MLP(c.mlp_hidden, c.width, pd, name="component_embed")(gmm_features(prior, c.scale).astype(pd))
        toks, keep = [], []
        for t, y in enumerate(obs):
            if y.shape[-1] != c.obs_dims[t]:
                raise ValueError(f"obs[{t}]: allowed width {c.obs_dims[t]}; got shape {y.shape}")
            toks.append(_MLP(c.mlp_hidden, c.width, pd, name=f"obs_embed_{t}")(y.astype(pd) / c.scale))
            keep.append(jnp.ones(y.shape[:2], bool) if masks is None else masks[t].astype(bool))
        null = self.param("null_token", nn.initializers.normal(1.0), (c.width,), pd)
        toks.append(jnp.broadcast_to(null, (B, 1, c.width)))
        keep.append(jnp.ones((B, 1), bool))
        o_BxNxD = nn.LayerNorm(param_dtype=pd, dtype=pd, name="obs_norm")(jnp.concatenate(toks, axis=1))
        mask_BxN = jnp.concatenate(keep, axis=1)
        for layer in range(c.n_layers):
            x = nn.LayerNorm(**dense, name=f"ln_self_{layer}")(h_BxKxD)
            h_BxKxD = h_BxKxD + Attention(c.width, c.n_heads, pd, name=f"self_attn_{layer}")(x, x)
            x = nn.LayerNorm(**dense, name=f"ln_cross_{layer}")(h_BxKxD)
            h_BxKxD = h_BxKxD + Attention(c.width, c.n_heads, pd, name=f"cross_attn_{layer}")(x, o_BxNxD, mask_BxN)
            x = nn.LayerNorm(**dense, name=f"ln_mlp_{layer}")(h_BxKxD)
            h_BxKxD = h_BxKxD + _MLP(c.mlp_hidden, c.width, pd, name=f"mlp_{layer}")(x)
        x = nn.LayerNorm(**dense, name="ln_out")(h_BxKxD)
        delta = nn.Dense(n_features(c.d), kernel_init=nn.initializers.zeros, name="read_out", **dense)(x)
        return apply_delta(prior, delta, c.scale)


def init_params(cfg: DTConfig, key: jax.Array, *, K: int = 2):
    """Parameters for `DistributionTransformer(cfg)` (shapes do not depend on K or n)."""
    prior = GMM(jnp.zeros((1, K), jnp.float32), jnp.zeros((1, K, cfg.d), jnp.float32),
                jnp.broadcast_to(jnp.eye(cfg.d, dtype=jnp.float32), (1, K, cfg.d, cfg.d)))
    obs = [jnp.zeros((1, 1, m), jnp.float32) for m in cfg.obs_dims]
    return DistributionTransformer(cfg).init(key, prior, obs)
