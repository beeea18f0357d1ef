"""Spark Transformer statistical top-k: a linear-time, sort-free approximate top-k.

For a row x ∈ Rⁿ that is roughly Gaussian, the k-th largest entry is close to

    θ = mean(x) + std(x) · Φ⁻¹(1 − k/n)                   (std with ddof = 0)

so keeping {x_i ≥ θ} keeps ≈ k entries in O(n), with no sort. For Gaussian rows the kept count
has mean k (n = 1024, k = 64: Monte Carlo 64.05 over 100k rows) and a spread *below* the
binomial √(k(1 − k/n)), because θ adapts to each row. k ≥ n gives θ = −∞ (keep all).

Public functions (all along `axis`, θ returned with that axis kept as size 1):
- `statistical_threshold(x, k)` → θ.
- `statistical_topk(x, k)` → (where(x ≥ θ, x, fill), θ).
- `statistical_topk_reference(x, k)` → the same with the exact k-th largest entry (by sort) as θ.
- `statistical_soft_threshold(x, k)` → max(x − θ, 0), Spark's FFN activation.
- `spark_topk_attention(q, k, v, k_keep=...)`: softmax attention whose logits below the row's
  statistical threshold (computed over the causally visible entries only) are masked out. θ is
  clipped to the row maximum so every row keeps ≥ 1 entry; k_keep ≥ visible count is dense.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri
from jaxtyping import Array, Bool, Float

_HI = jax.lax.Precision.HIGHEST  # fp32 matmuls stay fp32 on GPU (no TF32)


def _check_k(k, name="k"):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be an int ≥ 1; got {k!r}")


def _masked_threshold(x, k: int, valid, axis: int):
    """θ over the entries where `valid` (None: all); −∞ where k ≥ the valid count."""
    x = x.astype(jnp.float32)
    if valid is None:
        n = jnp.asarray(x.shape[axis], jnp.float32)
        mean = jnp.mean(x, axis=axis, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=axis, keepdims=True)
    else:
        n = jnp.maximum(jnp.sum(valid, axis=axis, keepdims=True), 1).astype(jnp.float32)
        mean = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=True) / n
        var = jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0), axis=axis, keepdims=True) / n
    tail = 1.0 - k / n  # fraction left below θ
    z = ndtri(jnp.clip(tail, 1e-7, 1.0))
    return jnp.where(tail > 0, mean + jnp.sqrt(var) * z, -jnp.inf)


def statistical_threshold(x: Float[Array, "*S"], k: int, *, axis: int = -1) -> Float[Array, "*S"]:
    """θ = mean(x) + std(x)·Φ⁻¹(1 − k/n) along `axis` (kept, size 1), in float32."""
    _check_k(k)
    return _masked_threshold(x, k, None, axis)


def statistical_topk(
    x: Float[Array, "*S"], k: int, *, axis: int = -1, fill: float = 0.0
) -> tuple[Float[Array, "*S"], Float[Array, "*S"]]:
    """(where(x ≥ θ, x, fill), θ) with the statistical threshold θ: keeps ≈ k entries per row."""
    theta = statistical_threshold(x, k, axis=axis)
    return jnp.where(x >= theta, x, jnp.asarray(fill, x.dtype)), theta


def statistical_topk_reference(
    x: Float[Array, "*S"], k: int, *, axis: int = -1, fill: float = 0.0
) -> tuple[Float[Array, "*S"], Float[Array, "*S"]]:
    """Exact top-k by sort: θ = the k-th largest entry (k ≥ n: −∞); keeps exactly k without ties."""
    _check_k(k)
    n = x.shape[axis]
    if k >= n:
        theta = jnp.full_like(jnp.take(x, jnp.array([0]), axis=axis), -jnp.inf, dtype=jnp.float32)
    else:
        theta = jnp.take(jnp.sort(x.astype(jnp.float32), axis=axis), jnp.array([n - k]), axis=axis)
    return jnp.where(x >= theta, x, jnp.asarray(fill, x.dtype)), theta


def statistical_soft_threshold(x: Float[Array, "*S"], k: int, *, axis: int = -1) -> Float[Array, "*S"]:
    """Spark FFN activation max(x − θ, 0): ≈ k nonzeros per row, linear time."""
    theta = jax.lax.stop_gradient(statistical_threshold(x, k, axis=axis))
    return jnp.maximum(x - theta.astype(x.dtype), 0)


def spark_topk_attention(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"], *,
    k_keep: int, causal: bool = True, scale: float | None = None,
) -> Float[Array, "B T H V"]:
    """Softmax attention over the logits s_ts ≥ θ_t (statistical top-k of row t), fp32 inside.

    θ_t uses the mean/std of the visible logits of row t (s ≤ t when causal), is clipped to the
    row max, and the kept set is {s visible : s_ts ≥ θ_t}: o_t = Σ_kept softmax(s_t·) v_s.
    Memory O(T²): this is a plain-jnp op, not a kernel.
    """
    if q.ndim != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be [B, T, H, K] and v [B, T, H, V]; got {q.shape}, {k.shape}, {v.shape}")
    _check_k(k_keep, "k_keep")
    T = q.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s_BxHxTxT = scale * jnp.einsum("bthk,bshk->bhts", q.astype(jnp.float32), k.astype(jnp.float32),
                                   precision=_HI)
    visible_TxT: Bool[Array, "T T"] = (
        jnp.arange(T)[None, :] <= jnp.arange(T)[:, None] if causal else jnp.ones((T, T), bool)
    )
    s_const = jax.lax.stop_gradient(s_BxHxTxT)
    visible_11TT = visible_TxT[None, None]
    theta = _masked_threshold(s_const, k_keep, visible_11TT, axis=-1)
    row_max = jnp.max(jnp.where(visible_11TT, s_const, -jnp.inf), axis=-1, keepdims=True)
    keep = visible_11TT & (s_const >= jnp.minimum(theta, row_max))
    p_BxHxTxT = jax.nn.softmax(jnp.where(keep, s_BxHxTxT, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshv->bthv", p_BxHxTxT, v.astype(jnp.float32), precision=_HI).astype(q.dtype)
