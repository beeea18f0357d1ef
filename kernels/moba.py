"""MoBA: mixture-of-block attention (causal), with the VMoBA threshold selection.

Keys are cut into blocks of `block_size` along T. Query t (in block b(t)) scores every block j
with the gate s_tj = q_t · mean(K_j) in float32; future blocks (j > b(t)) get −∞, the own
block is always selected, and the remaining `top_k − 1` slots go to the highest-scoring past
blocks (`top_k` counts the own block, as in MoBA's reference code). Attention is one softmax
over the union of the selected keys, causal inside the own block:

    o_t = Σ_{s ∈ S(t), s ≤ t} softmax_s(scale · q_t·k_s) v_s,   S(t) = ∪_{j selected} block j,

which equals merging the per-block partial softmaxes by log-sum-exp. With top_k ≥ #blocks it
is dense causal attention. Threshold mode (VMoBA, per query): past scores are min–max
normalised to n_j ∈ [0, 1] (all 1 when max = min), ranked in decreasing order, and block j is
kept while the normalised mass ranked strictly before it is < τ·Σ n (the smallest prefix whose
cumulative mass reaches τ); `top_k` stays a cap. VMoBA selects globally over a head; the
per-query rule here is our choice. Selection is piecewise constant: no gradient flows through
the gate. T need not divide by block_size: q, k, v are zero-padded to a whole number of blocks
(padded keys are in the future of every real query; padded outputs are dropped).

Implementations: "reference" (dense T×T logits masked by a rank-counting selection, O(T²));
"xla" (sparse): every (query, selected block) pair — own block included, at most top_k per query
(static: threshold mode masks the unused slots) — is grouped by key block into tiles of ≤ 128
queries (`_sparse_layout`: a stable sort by block id, each block's group padded to whole
tiles); a `lax.map` over tiles computes one [tile, block_size] logits matmul against the tile's
block (causal mask, which only bites in the own block) and its partial (max, sum, acc); the
partials of a query are merged by log-sum-exp. Work O(T·top_k·block_size) whatever the data,
memory O(T·top_k·V) for the partials. "xla_union" and "pallas" share a block-union algorithm:
one program per (batch·head, query block) loops over the union of the key blocks that any of its
queries selected (dynamic slices of K/V) with a per-query-masked online softmax (`_online_step`);
work ∝ Σ union sizes · block_size², ≤ dense causal (random q/k: unions cover all past blocks).
A per-query gather of the selected blocks (no grouping) was 5× slower on CPU (bandwidth-bound).
"xla_union" is a `lax.map` over programs under `jax.checkpoint` (differentiable); "pallas" is the
same loop as a kernel, interpreted on CPU, in a `custom_vjp` whose backward is the vjp of "xla".
Compiled, it uses the Triton lowering with 64-wide tiles (block_size, K, V powers of 2 ≥ 16); it
lowers for CUDA (`jax.export`, tested) but has NOT yet been run on a GPU.
Layout: q, k [B, T, H, K], v [B, T, H, V] → o [B, T, H, V] in q's dtype.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:  # the Triton lowering (deprecated since jax 0.11 but present); None → Pallas' default
    from jax.experimental.pallas import triton as _pl_triton
except ImportError:  # pragma: no cover - a future jax without it
    _pl_triton = None
from jaxtyping import Array, Bool, Float

IMPLEMENTATIONS = ("reference", "xla", "xla_union", "pallas")
_HI = jax.lax.Precision.HIGHEST  # fp32 matmuls stay fp32 on GPU (no TF32)
_NEG = -1e30  # finite "−∞" for online-softmax running maxima


def _check(q, k, v, block_size, top_k, threshold, implementation):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [B, T, H, K/V]; got ranks {q.ndim}, {k.ndim}, {v.ndim}")
    if q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must match and v share [B, T, H]; got {q.shape}, {k.shape}, {v.shape}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int ≥ 1 (it counts the own block); got {top_k!r}")
    if threshold is not None and not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be None or in (0, 1]; got {threshold!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")


def _block_gate(q_BxHxTxK, k_BxHxTxK, seq_len: int, block_size: int) -> Float[Array, "B H T N"]:
    """s_tj = q_t · mean(K_j) in fp32 over the real keys of block j; −∞ unless j < b(t)."""
    B, H, T, K = q_BxHxTxK.shape
    n = T // block_size
    k_BxHxNxbxK = k_BxHxTxK.astype(jnp.float32).reshape(B, H, n, block_size, K)
    count_N = jnp.clip(seq_len - jnp.arange(n) * block_size, 1, block_size).astype(jnp.float32)
    kmean_BxHxNxK = k_BxHxNxbxK.sum(axis=3) / count_N[None, None, :, None]
    gate_BxHxTxN = jnp.einsum("bhtk,bhnk->bhtn", q_BxHxTxK.astype(jnp.float32), kmean_BxHxNxK, precision=_HI)
    past_11TN = (jnp.arange(n)[None, :] < (jnp.arange(T) // block_size)[:, None])[None, None]
    return jnp.where(past_11TN, gate_BxHxTxN, -jnp.inf)


def _select_blocks(gate_BxHxTxN, top_k: int, threshold, block_size: int):
    """Selected block ids [B, H, T, S] (slot 0 = own block) and their validity, S = min(top_k, N)."""
    B, H, T, n = gate_BxHxTxN.shape
    own_T = (jnp.arange(T) // block_size).astype(jnp.int32)
    own_BxHxTx1 = jnp.broadcast_to(own_T[:, None], (B, H, T, 1))
    n_past = min(top_k, n) - 1
    if n_past == 0:
        return own_BxHxTx1, jnp.ones((B, H, T, 1), bool)
    val_BxHxTxP, idx_BxHxTxP = jax.lax.top_k(gate_BxHxTxN, n_past)
    valid_BxHxTxP = jnp.isfinite(val_BxHxTxP)
    if threshold is not None:
        past = jnp.isfinite(gate_BxHxTxN)
        gmax = jnp.max(jnp.where(past, gate_BxHxTxN, -jnp.inf), axis=-1, keepdims=True)
        gmin = jnp.min(jnp.where(past, gate_BxHxTxN, jnp.inf), axis=-1, keepdims=True)
        spread = gmax > gmin
        denom = jnp.where(spread, gmax - gmin, 1.0)
        norm_all = jnp.where(past, jnp.where(spread, (gate_BxHxTxN - gmin) / denom, 1.0), 0.0)
        norm_top = jnp.where(valid_BxHxTxP, jnp.where(spread, (val_BxHxTxP - gmin) / denom, 1.0), 0.0)
        cum = jnp.cumsum(norm_top, axis=-1)
        before = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)  # ranked before
        valid_BxHxTxP &= before < threshold * norm_all.sum(axis=-1, keepdims=True)
    idx = jnp.concatenate([own_BxHxTx1, idx_BxHxTxP.astype(jnp.int32)], axis=-1)
    valid = jnp.concatenate([jnp.ones((B, H, T, 1), bool), valid_BxHxTxP], axis=-1)
    return idx, valid


def _prepare(q, k, v, block_size):
    """Pads T to a multiple of block_size and moves heads in front: [B, H, Tp, K]."""
    T = q.shape[1]
    pad = -T % block_size
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    return tuple(jnp.swapaxes(x, 1, 2) for x in (q, k, v))


def _plan(q, k, v, block_size, top_k, threshold):
    """Shared set-up of the blocked paths: padding, gate, selection and per-query-block unions.

    Returns q/k/v flattened to [B·H, Tp, K/V], the selected block ids per query [B·H, Tp, S]
    (−1 = unused slot), the union of the blocks selected by any query of each query block,
    listed first in increasing order and padded with −1 [B·H, n, n], and its size [B·H, n].
    """
    B, T, H, _ = q.shape
    q_BxHxTxK, k_BxHxTxK, v_BxHxTxV = _prepare(q, k, v, block_size)
    Tp = q_BxHxTxK.shape[2]
    n = Tp // block_size
    gate = jax.lax.stop_gradient(_block_gate(q_BxHxTxK, k_BxHxTxK, T, block_size))
    idx_BxHxTxS, valid_BxHxTxS = _select_blocks(gate, top_k, threshold, block_size)
    idx_BxHxTxS = jnp.where(valid_BxHxTxS, idx_BxHxTxS, -1)
    chosen_BxHxTxN = jnp.any(idx_BxHxTxS[..., None] == jnp.arange(n).reshape(1, 1, 1, 1, n), axis=3)
    union_BxHxQxN = chosen_BxHxTxN.reshape(B, H, n, block_size, n).any(axis=3)
    j_111N = jnp.arange(n).reshape(1, 1, 1, n)
    order = jnp.sort(jnp.where(union_BxHxQxN, j_111N, n + j_111N), axis=-1)
    union_BxHxQxN = jnp.where(order < n, order, -1).astype(jnp.int32)
    count_BxHxQ = jnp.sum(order < n, axis=-1, dtype=jnp.int32)
    flat = lambda x: x.reshape(B * H, *x.shape[2:])
    return tuple(map(flat, (q_BxHxTxK, k_BxHxTxK, v_BxHxTxV, idx_BxHxTxS, union_BxHxQxN, count_BxHxQ)))


def _online_step(carry, q_qxK, k_kxK, v_kxV, idx_qxS, j, qpos_q, kpos_k, scale):
    """Adds a key tile (of block j, positions kpos) to the online softmax (m, l, acc) of a query
    tile, masked per query: key s counts for query t iff t selected block j and s ≤ t."""
    m_q, l_q, acc_qxV = carry
    s_qxk = jax.lax.dot_general(q_qxK, k_kxK.astype(jnp.float32), (((1,), (1,)), ((), ())), precision=_HI)
    s_qxk = s_qxk * scale
    chosen_q = jnp.sum((idx_qxS == j).astype(jnp.int32), axis=1) > 0  # not jnp.any: Triton lacks reduce_or
    mask = chosen_q[:, None] & (kpos_k[None, :] <= qpos_q[:, None])
    m_new = jax.lax.stop_gradient(jnp.maximum(m_q, jnp.max(jnp.where(mask, s_qxk, _NEG), axis=1)))
    p_qxk = jnp.exp(jnp.where(mask, s_qxk - m_new[:, None], -jnp.inf))  # no exp of masked logits
    alpha = jnp.exp(m_q - m_new)
    acc_qxV = alpha[:, None] * acc_qxV + jnp.dot(p_qxk, v_kxV.astype(jnp.float32), precision=_HI)
    return m_new, alpha * l_q + p_qxk.sum(axis=1), acc_qxV


def _init_carry(rows, V):
    """(running max m, normaliser l, accumulator acc) of `rows` queries, all empty."""
    return (jnp.full((rows,), _NEG, jnp.float32), jnp.zeros((rows,), jnp.float32), jnp.zeros((rows, V), jnp.float32))


def _sparse_layout(idx_GxTxS, valid_GxTxS, n: int, tile: int):
    """Groups the (query, selected block) pairs by key block into query tiles of `tile` rows.

    Pair p = (query t of row g, slot s) needs key block g·n + idx[g, t, s]. Pairs are sorted by
    that block id (stable, so by query inside a block) and each block's group is padded to a
    multiple of `tile`; tile i then holds queries of one key block only. Σ_j ⌈c_j / tile⌉ ≤
    ⌊P / tile⌋ + G·n for P pairs, so the static tile count is that bound.

    Returns per tile slot the flat query index g·Tp + t (−1 = empty) [nt·tile], per tile its key
    block g·n + j [nt], the number of used tiles, and per pair its slot (nt·tile = dropped) [P].
    """
    G, Tp, S = idx_GxTxS.shape
    P, nb = G * Tp * S, G * n
    nt = P // tile + nb
    g_G11 = jnp.arange(G, dtype=jnp.int32).reshape(G, 1, 1)
    bid_P = jnp.where(valid_GxTxS, g_G11 * n + idx_GxTxS, nb).reshape(P)  # nb = unused slot
    qid_P = jnp.broadcast_to(g_G11 * Tp + jnp.arange(Tp, dtype=jnp.int32)[None, :, None], (G, Tp, S)).reshape(P)
    order_P = jnp.argsort(bid_P, stable=True)
    count = jnp.zeros((nb + 1,), jnp.int32).at[bid_P].add(1)[:nb]
    padded = -(-count // tile) * tile
    start_raw = jnp.cumsum(count) - count
    start_pad = jnp.cumsum(padded) - padded
    bid_sorted = bid_P[order_P]
    b_clip = jnp.minimum(bid_sorted, nb - 1)
    pos_sorted = start_pad[b_clip] + jnp.arange(P, dtype=jnp.int32) - start_raw[b_clip]
    pos_sorted = jnp.where(bid_sorted < nb, pos_sorted, nt * tile)
    pos_P = jnp.zeros((P,), jnp.int32).at[order_P].set(pos_sorted)
    qid_L = jnp.full((nt * tile,), -1, jnp.int32).at[pos_P].set(qid_P, mode="drop")
    bid_L = jnp.full((nt * tile,), -1, jnp.int32).at[pos_P].set(bid_P, mode="drop")
    tile_bid = jnp.maximum(bid_L.reshape(nt, tile).max(axis=1), 0)
    return qid_L, tile_bid, jnp.sum(padded) // tile, pos_P


def _query_tile(block_size: int) -> int:
    """Rows per tile of the sparse path: the largest divisor of block_size that is ≤ 128."""
    return max(d for d in range(1, min(block_size, 128) + 1) if block_size % d == 0)


def _moba_xla(q, k, v, block_size, top_k, threshold, scale, tile=None):
    """Sparse path in XLA: (query, selected block) pairs grouped by key block into query tiles
    (`_sparse_layout`); `lax.map` over tiles, each one [tile, block] logits matmul against its
    block (causal mask, which only bites in the own block) giving partial (max, sum, acc); the
    ≤ top_k partials of each query are merged by log-sum-exp. Work O(T·top_k·block_size)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    tile = _query_tile(block_size) if tile is None else tile
    q_BxHxTxK, k_BxHxTxK, v_BxHxTxV = _prepare(q, k, v, block_size)
    Tp = q_BxHxTxK.shape[2]
    n, G = Tp // block_size, B * H
    gate = jax.lax.stop_gradient(_block_gate(q_BxHxTxK, k_BxHxTxK, T, block_size))
    idx_BxHxTxS, valid_BxHxTxS = _select_blocks(gate, top_k, threshold, block_size)
    S = idx_BxHxTxS.shape[-1]
    qid_L, tile_bid, used, pos_P = _sparse_layout(idx_BxHxTxS.reshape(G, Tp, S), valid_BxHxTxS.reshape(G, Tp, S),
                                                  n, tile)
    nt = tile_bid.shape[0]
    q_LxK = q_BxHxTxK.astype(jnp.float32).reshape(G * Tp, K)[jnp.maximum(qid_L, 0)]
    qpos_L = jnp.where(qid_L >= 0, qid_L % Tp, -1)  # −1: empty slot, sees no key
    k_NxbxK = k_BxHxTxK.reshape(G * n, block_size, K)
    v_NxbxV = v_BxHxTxV.reshape(G * n, block_size, V)

    @jax.checkpoint
    def one_tile(args):
        i, gb, q_cxK, qpos_c, k_bxK, v_bxV = args

        def compute(_):
            kpos_b = (gb % n) * block_size + jnp.arange(block_size)
            return _online_step(_init_carry(tile, V), q_cxK, k_bxK, v_bxV, jnp.zeros((tile, 1), jnp.int32),
                                0, qpos_c, kpos_b, scale)

        return jax.lax.cond(i < used, compute, lambda _: _init_carry(tile, V), None)

    # K/V blocks are sliced inside the loop body (outside the checkpoint): gathering them for
    # all tiles up front was no faster (T = 8192, blocks of 256) and costs O(#tiles·block) memory.
    m_L, l_L, acc_LxV = jax.lax.map(lambda a: one_tile(a + (k_NxbxK[a[1]], v_NxbxV[a[1]])),
                                    (jnp.arange(nt), tile_bid, q_LxK.reshape(nt, tile, K), qpos_L.reshape(nt, tile)))
    # Back to pairs [G, Tp, S] (dropped slots: empty partials), then the log-sum-exp merge.
    take = lambda x, fill: jnp.concatenate([x.reshape(nt * tile, *x.shape[2:]),
                                            jnp.full((1, *x.shape[2:]), fill, x.dtype)])[pos_P]
    m_GxTxS = take(m_L, _NEG).reshape(G, Tp, S)
    l_GxTxS = take(l_L, 0.0).reshape(G, Tp, S)
    acc_GxTxSxV = take(acc_LxV, 0.0).reshape(G, Tp, S, V)
    m_GxT = jax.lax.stop_gradient(m_GxTxS.max(axis=-1))
    w_GxTxS = jnp.exp(m_GxTxS - m_GxT[..., None])
    o_GxTxV = jnp.einsum("gts,gtsv->gtv", w_GxTxS, acc_GxTxSxV, precision=_HI) / (w_GxTxS * l_GxTxS).sum(-1)[..., None]
    return o_GxTxV.reshape(B, H, Tp, V).swapaxes(1, 2)[:, :T].astype(q.dtype)


def _moba_union(q, k, v, block_size, top_k, threshold, scale):
    """Block-union path in XLA: `lax.map` over (B·H, query block) programs, each looping over
    its union of selected key blocks (dynamic slices) with the shared online-softmax step."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    q_GxTxK, k_GxTxK, v_GxTxV, idx_GxTxS, union_GxQxN, count_GxQ = _plan(q, k, v, block_size, top_k, threshold)
    G, Tp, S = idx_GxTxS.shape
    n = Tp // block_size
    u_max = min(n, block_size * (S - 1) + 1)  # static bound on a union's size
    k_GxNxbxK = k_GxTxK.reshape(G, n, block_size, K)
    v_GxNxbxV = v_GxTxV.reshape(G, n, block_size, V)

    @jax.checkpoint
    def program(args):
        g, i, q_bxK, idx_bxS, union_N, count = args
        qpos_b = i * block_size + jnp.arange(block_size)
        q_bxK = q_bxK.astype(jnp.float32)

        def body(s, carry):
            def add(c):
                j = union_N[s]
                return _online_step(c, q_bxK, k_GxNxbxK[g, j], v_GxNxbxV[g, j], idx_bxS, j, qpos_b,
                                    j * block_size + jnp.arange(block_size), scale)
            return jax.lax.cond(s < count, add, lambda c: c, carry)

        _, l_b, acc_bxV = jax.lax.fori_loop(0, u_max, body, _init_carry(block_size, V))
        return acc_bxV / l_b[:, None]

    g_ids, i_ids = jnp.divmod(jnp.arange(G * n), n)
    o_PxbxV = jax.lax.map(program, (g_ids, i_ids, q_GxTxK.reshape(G * n, block_size, K),
                                    idx_GxTxS.reshape(G * n, block_size, S), union_GxQxN.reshape(G * n, n),
                                    count_GxQ.reshape(G * n)))
    o_BxTxHxV = o_PxbxV.reshape(B, H, Tp, V).swapaxes(1, 2)
    return o_BxTxHxV[:, :T].astype(q.dtype)


def _moba_kernel(union_ref, count_ref, q_ref, k_ref, v_ref, idx_ref, o_ref, *, block_size, tile, scale):
    """One (batch·head, query tile) program; loops over (union block, key tile) pairs."""
    it = pl.program_id(1)
    q_qxK = q_ref[...].astype(jnp.float32)
    idx_qxS = idx_ref[...]
    qpos_q = it * tile + jnp.arange(tile)
    n_sub = block_size // tile

    def body(u, carry):
        # lax.div/rem, not // and %: u ≥ 0, and jnp's floor-division select does not lower to Triton.
        j = union_ref[jax.lax.div(u, n_sub)] if n_sub > 1 else union_ref[u]
        start = j * block_size + (jax.lax.rem(u, n_sub) * tile if n_sub > 1 else 0)
        k_kxK = k_ref[pl.ds(start, tile), :]
        v_kxV = v_ref[pl.ds(start, tile), :]
        return _online_step(carry, q_qxK, k_kxK, v_kxV, idx_qxS, j, qpos_q, start + jnp.arange(tile), scale)

    _, l_q, acc_qxV = jax.lax.fori_loop(0, count_ref[0] * n_sub, body, _init_carry(tile, o_ref.shape[-1]))
    o_ref[...] = (acc_qxV / l_q[:, None]).astype(o_ref.dtype)


_GPU_TILE = 64  # compiled tiles: [64, 64] fp32 logits fit Triton's registers; interpret: whole blocks


def _moba_pallas_forward(q, k, v, block_size, top_k, threshold, scale, interpret, tile=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    if not interpret:
        for name, val in (("block_size", block_size), ("K", K), ("V", V)):
            if val < 16 or val & (val - 1):
                raise ValueError(f"{name} must be a power of 2 ≥ 16 for the compiled Pallas kernel; got {val}")
    if tile is None:  # query/key tile; < block_size splits each block into block_size/tile tiles
        tile = block_size if interpret else min(block_size, _GPU_TILE)
    if block_size % tile:
        raise ValueError(f"tile must divide block_size={block_size}; got {tile}")
    q_GxTxK, k_GxTxK, v_GxTxV, idx_GxTxS, union_GxQxN, count_GxQ = _plan(q, k, v, block_size, top_k, threshold)
    G, Tp, S = idx_GxTxS.shape
    n = Tp // block_size
    r = block_size // tile  # query tiles per block
    Sp, n_p = pl.next_power_of_2(S), pl.next_power_of_2(n)  # power-of-two blocks for Triton
    idx_GxTxSp = jnp.pad(idx_GxTxS, ((0, 0), (0, 0), (0, Sp - S)), constant_values=-1)
    union_GxQxNp = jnp.pad(union_GxQxN, ((0, 0), (0, 0), (0, n_p - n)), constant_values=-1)
    kernel = functools.partial(_moba_kernel, block_size=block_size, tile=tile, scale=scale)
    o = pl.pallas_call(
        kernel,
        grid=(G, Tp // tile),
        in_specs=[
            pl.BlockSpec((None, None, n_p), lambda g, i: (g, jax.lax.div(i, r), 0)),
            pl.BlockSpec((None, None, 1), lambda g, i: (g, jax.lax.div(i, r), 0)),
            pl.BlockSpec((None, tile, K), lambda g, i: (g, i, 0)),
            pl.BlockSpec((None, Tp, K), lambda g, i: (g, 0, 0)),
            pl.BlockSpec((None, Tp, V), lambda g, i: (g, 0, 0)),
            pl.BlockSpec((None, tile, Sp), lambda g, i: (g, i, 0)),
        ],
        out_specs=pl.BlockSpec((None, tile, V), lambda g, i: (g, i, 0)),
        out_shape=jax.ShapeDtypeStruct((G, Tp, V), q.dtype),
        interpret=interpret,
        compiler_params=None if interpret or _pl_triton is None else _pl_triton.CompilerParams(num_warps=4,
                                                                                            num_stages=2),
    )(union_GxQxNp, count_GxQ[..., None], q_GxTxK, k_GxTxK, v_GxTxV, idx_GxTxSp)
    return o.reshape(B, H, Tp, V).swapaxes(1, 2)[:, :T]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _moba_pallas(q, k, v, block_size, top_k, threshold, scale, interpret):
    return _moba_pallas_forward(q, k, v, block_size, top_k, threshold, scale, interpret)


def _moba_pallas_fwd(q, k, v, block_size, top_k, threshold, scale, interpret):
    return _moba_pallas_forward(q, k, v, block_size, top_k, threshold, scale, interpret), (q, k, v)


def _moba_pallas_bwd(block_size, top_k, threshold, scale, interpret, res, g):
    q, k, v = res  # backward = vjp of the sparse XLA path (recomputes the forward)
    _, vjp = jax.vjp(lambda q_, k_, v_: _moba_xla(q_, k_, v_, block_size, top_k, threshold, scale), q, k, v)
    return vjp(g)


_moba_pallas.defvjp(_moba_pallas_fwd, _moba_pallas_bwd)


def moba_attention(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"], *,
    block_size: int, top_k: int, threshold: float | None = None, scale: float | None = None,
    implementation: str = "xla", interpret: bool | None = None,
) -> Float[Array, "B T H V"]:
    """Causal MoBA attention (see the module docstring for the equation and choices).

    Args:
      block_size: keys per block (T is zero-padded up to a multiple of it).
      top_k: blocks per query, the own block included (≥ #blocks: dense causal attention).
      threshold: None for plain top-k; τ ∈ (0, 1] for VMoBA-style cumulative selection,
        capped at top_k blocks.
      scale: logit scale, default 1/√K.
      implementation: "reference" (dense masked), "xla" (sparse: query tiles grouped by selected
        block), "xla_union" (block-union loop) or "pallas" (the block-union loop as a kernel;
        custom_vjp with the backward of "xla").
      interpret: Pallas interpret mode; default True exactly when running on CPU.
    """
    _check(q, k, v, block_size, top_k, threshold, implementation)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    threshold = None if threshold is None else float(threshold)
    if implementation == "reference":
        return moba_attention_reference(q, k, v, block_size=block_size, top_k=top_k, threshold=threshold,
                                        scale=scale)
    if implementation == "xla":
        return _moba_xla(q, k, v, block_size, top_k, threshold, scale)
    if implementation == "xla_union":
        return _moba_union(q, k, v, block_size, top_k, threshold, scale)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    return _moba_pallas(q, k, v, block_size, top_k, threshold, scale, bool(interpret))


def moba_selection_reference(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], *, block_size: int, top_k: int,
    threshold: float | None = None,
) -> Bool[Array, "B H T N"]:
    """Dense [B, H, T, #blocks] selection mask, by ranks (ties → lower block id first)."""
    B, T, H, K = q.shape
    n = -(-T // block_size)
    blk_T = jnp.arange(T) // block_size
    onehot_TxN = (blk_T[:, None] == jnp.arange(n)[None, :]).astype(jnp.float32)
    kmean_BxNxHxK = (jnp.einsum("tn,bthk->bnhk", onehot_TxN, k.astype(jnp.float32), precision=_HI)
                     / onehot_TxN.sum(0)[None, :, None, None])
    g_BxHxTxN = jnp.einsum("bthk,bnhk->bhtn", q.astype(jnp.float32), kmean_BxNxHxK, precision=_HI)
    past_11TN = (jnp.arange(n)[None, :] < blk_T[:, None])[None, None]
    g = jnp.where(past_11TN, g_BxHxTxN, -jnp.inf)
    j = jnp.arange(n)
    # beats[b, h, t, j, j']: past block j' ranks strictly before block j.
    gj, gjp = g[..., :, None], g[..., None, :]
    lower_11NN = (j[None, :] < j[:, None])[None, None, None]
    beats = past_11TN[..., None, :] & ((gjp > gj) | ((gjp == gj) & lower_11NN))
    sel = past_11TN & (beats.sum(-1) < top_k - 1)
    if threshold is not None:
        gmax = jnp.max(g, axis=-1, keepdims=True)
        gmin = jnp.min(jnp.where(past_11TN, g, jnp.inf), axis=-1, keepdims=True)
        spread = gmax > gmin
        nrm = jnp.where(spread, (g - gmin) / jnp.where(spread, gmax - gmin, 1.0), 1.0)
        nrm = jnp.where(past_11TN, nrm, 0.0)
        before = jnp.sum(jnp.where(beats, nrm[..., None, :], 0.0), axis=-1)
        sel &= before < threshold * nrm.sum(-1, keepdims=True)
    return sel | (j[None, :] == blk_T[:, None])[None, None]


def moba_attention_reference(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"], *,
    block_size: int, top_k: int, threshold: float | None = None, scale: float | None = None,
) -> Float[Array, "B T H V"]:
    """Plain-jnp dense form: one fp32 softmax over the T×T logits masked by selection & causality."""
    _check(q, k, v, block_size, top_k, threshold, "reference")
    T = q.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    sel_BxHxTxN = moba_selection_reference(q, k, block_size=block_size, top_k=top_k, threshold=threshold)
    key_sel_BxHxTxT = sel_BxHxTxN[..., jnp.arange(T) // block_size]
    mask = key_sel_BxHxTxT & (jnp.arange(T)[None, :] <= jnp.arange(T)[:, None])[None, None]
    s_BxHxTxT = scale * jnp.einsum("bthk,bshk->bhts", q.astype(jnp.float32), k.astype(jnp.float32),
                                   precision=_HI)
    p = jax.nn.softmax(jnp.where(mask, s_BxHxTxT, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshv->bthv", p, v.astype(jnp.float32), precision=_HI).astype(q.dtype)

