"""KDGQA: key-driven grouped-query attention (query heads allocated by key-head norms).

Grouped-query attention shares each of the H_kv key/value heads among a group of the H_q query
heads; standard GQA uses fixed equal groups (query head h → KV head ⌊h·H_kv/H_q⌋). KDGQA
re-allocates the query heads every forward, in proportion to the key heads' norms. Per batch
row b (our choice: the paper's ViTs use one image per allocation, i.e. per row):

    n_j = ‖k[b, :, j, :]‖_F                    (over all T tokens and K dims; fp32, no gradient)
    p_j = n_j / Σ_i n_i                         (p_j = 1/H_kv when Σ n = 0)
    R   = H_q − H_kv                            (one query head per KV head is reserved)
    c_j = 1 + ⌊R·p_j⌋ + [j among the R − Σ_i ⌊R·p_i⌋ largest remainders R·p_j − ⌊R·p_j⌋]

(largest-remainder / Hamilton apportionment of the R free heads; remainder ties go to the lower
j). R·p_j is rounded to a multiple of 2^−12 first, so that float rounding of the norms does not
decide ties (norms 3:1 give quotas exactly 4.5 and 1.5, not 4.4999998); the rounding keeps
0 ≤ R − Σ⌊R·p_j⌋ < H_kv. Then Σ_j c_j = H_q and every c_j ≥ 1. Query heads are assigned contiguously in KV-head
order: kv_index[h] = j for C_{j−1} ≤ h < C_j, C_j = c_0 + … + c_j. Equal norms give c_j =
H_q/H_kv and kv_index[h] = ⌊h·H_kv/H_q⌋, standard GQA. Attention is then causal softmax with
query head h reading KV head kv_index[h] (a gather along the head axis, so shapes stay static
under jit and nothing retraces when the allocation changes):

    o[b, t, h] = Σ_{s≤t} softmax_s(scale · q[b,t,h]·k[b,s,kv_index[b,h]]) v[b,s,kv_index[b,h]]

Caveat (causal use): the norms see all T keys, so the allocation of row b depends on future
tokens; outputs at t change (piecewise constantly) with keys at s > t. Its gradient is zero
(an integer allocation), but a causal LM trained with it would see a one-bit-per-head leak of
the future; allocate from a prefix or per block if that matters.

Implementations: "reference" (allocation by a stable sort of the remainders; T×T logits with
an explicit per-head loop over gathers) and "xla" (allocation by rank counting; one gather of
K/V heads along the head axis, then batched fp32 causal softmax attention). No Pallas kernel:
after the gather this is plain attention (`jax.nn.dot_product_attention` would need V = K).
Layout: q [B, T, H_q, K], k [B, T, H_kv, K], v [B, T, H_kv, V] → o [B, T, H_q, V] in q's dtype.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

IMPLEMENTATIONS = ("reference", "xla")
_HI = jax.lax.Precision.HIGHEST
_GRID = 4096.0  # quotas are rounded to multiples of 1/_GRID


def _check(q, k, v, scale, implementation):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise ValueError(f"{name} must have rank 4 [B, T, H, dim], got shape {jnp.shape(x)}")
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {jnp.asarray(x).dtype}")
    b, t, hq, kd = q.shape
    if k.shape[:2] != (b, t) or k.shape[3] != kd:
        raise ValueError(f"k must be [B, T, H_kv, K] with (B, T)={(b, t)}, K={kd} as q, got {k.shape}")
    if not 1 <= k.shape[2] <= hq:
        raise ValueError(f"k must have 1 ≤ H_kv ≤ H_q={hq} heads, got H_kv={k.shape[2]}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be [B, T, H_kv, V] with [B, T, H_kv]={k.shape[:3]} as k, got {v.shape}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
        raise ValueError(f"scale must be None or a positive float, got {scale!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def _quotas(k_BxTxJxK, free: int) -> Float[Array, "B J"]:
    """R·p_j rounded to a multiple of 2^−12, fp32, without gradient (p uniform when all norms are 0)."""
    k32 = jax.lax.stop_gradient(k_BxTxJxK).astype(jnp.float32)
    n_BxJ = jnp.sqrt(jnp.sum(jnp.square(k32), axis=(1, 3)))
    total_Bx1 = n_BxJ.sum(axis=1, keepdims=True)
    uniform = jnp.full_like(n_BxJ, 1.0 / n_BxJ.shape[1])
    p_BxJ = jnp.where(total_Bx1 > 0, n_BxJ / jnp.where(total_Bx1 > 0, total_Bx1, 1.0), uniform)
    return jnp.round(free * p_BxJ * _GRID) / _GRID


def kdgqa_allocation(k: Float[Array, "B T J K"], num_query_heads: int) -> Int[Array, "B J"]:
    """Query heads per KV head, c [B, H_kv] (module docstring: 1 + largest-remainder share)."""
    J = k.shape[2]
    free = num_query_heads - J
    quota = _quotas(k, free)
    base = jnp.floor(quota)
    rem = quota - base
    left_Bx1 = free - base.sum(axis=1, keepdims=True)  # heads still to give, 0 ≤ · < J
    j = jnp.arange(J)
    # rank_j = #{i: rem_i > rem_j, or rem_i = rem_j and i < j}: 0 for the largest remainder
    r_i, r_j = rem[:, None, :], rem[:, :, None]  # [B, j, i]
    ahead = (r_i > r_j) | ((r_i == r_j) & (j[None, :] < j[:, None])[None])
    rank_BxJ = ahead.sum(axis=2)
    return (1 + base + (rank_BxJ < left_Bx1)).astype(jnp.int32)


def kv_index_from_counts(counts: Int[Array, "B J"], num_query_heads: int) -> Int[Array, "B H"]:
    """Contiguous assignment: kv_index[h] = j for C_{j−1} ≤ h < C_j, C = cumsum(counts)."""
    ends_BxJ = jnp.cumsum(counts, axis=1)
    h = jnp.arange(num_query_heads)
    return jnp.sum(ends_BxJ[:, None, :] <= h[None, :, None], axis=2).astype(jnp.int32)


def kdgqa_attention(
    q: Float[Array, "B T H K"], k: Float[Array, "B T J K"], v: Float[Array, "B T J V"], *,
    scale: float | None = None, implementation: str = "xla",
) -> Float[Array, "B T H V"]:
    """Causal KDGQA attention (module docstring for the allocation and the equation)."""
    _check(q, k, v, scale, implementation)
    if implementation == "reference":
        return kdgqa_reference(q, k, v, scale=scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    hq = q.shape[2]
    kv_BxH = kv_index_from_counts(kdgqa_allocation(k, hq), hq)
    take = lambda x: jnp.take_along_axis(x, kv_BxH[:, None, :, None], axis=2)  # [B, T, H_q, ·]
    T = q.shape[1]
    s_BxHxTxT = scale * jnp.einsum("bthk,bshk->bhts", q.astype(jnp.float32), take(k).astype(jnp.float32),
                                   precision=_HI)
    p = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((T, T), bool))[None, None], s_BxHxTxT, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshv->bthv", p, take(v).astype(jnp.float32), precision=_HI).astype(q.dtype)


def kdgqa_reference(
    q: Float[Array, "B T H K"], k: Float[Array, "B T J K"], v: Float[Array, "B T J V"], *,
    scale: float | None = None,
) -> Float[Array, "B T H V"]:
    """Plain jnp: allocation by a stable descending sort of the remainders; per query head, the
    T×T fp32 logits against its gathered KV head, causal mask, softmax."""
    _check(q, k, v, scale, "reference")
    B, T, hq, K = q.shape
    J = k.shape[2]
    scale = 1.0 / math.sqrt(K) if scale is None else float(scale)
    quota = _quotas(k, hq - J)
    base = jnp.floor(quota)
    order_BxJ = jnp.argsort(-(quota - base), axis=1, stable=True)  # largest remainder first
    left_Bx1 = (hq - J) - base.sum(axis=1, keepdims=True)
    bonus = jnp.zeros_like(base).at[jnp.arange(B)[:, None], order_BxJ].set(
        (jnp.arange(J)[None, :] < left_Bx1).astype(base.dtype))
    counts_BxJ = (1 + base + bonus).astype(jnp.int32)
    # kv_index[b, h]: the j whose block of counts holds h (explicit loop over heads)
    starts_BxJ = jnp.cumsum(counts_BxJ, axis=1) - counts_BxJ
    kv_BxH = jnp.stack([jnp.max(jnp.where(starts_BxJ <= h, jnp.arange(J)[None], 0), axis=1) for h in range(hq)], 1)
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    outs = []
    for h in range(hq):
        idx_B = kv_BxH[:, h]
        k_BxTxK = k[jnp.arange(B), :, idx_B].astype(jnp.float32)
        v_BxTxV = v[jnp.arange(B), :, idx_B].astype(jnp.float32)
        s_BxTxT = scale * jnp.einsum("btk,bsk->bts", q[:, :, h].astype(jnp.float32), k_BxTxK, precision=_HI)
        p = jax.nn.softmax(jnp.where(causal_TxT[None], s_BxTxT, -jnp.inf), axis=-1)
        outs.append(jnp.einsum("bts,bsv->btv", p, v_BxTxV, precision=_HI))
    return jnp.stack(outs, axis=2).astype(q.dtype)
