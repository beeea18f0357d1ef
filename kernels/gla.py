"""Gated linear attention (GLA, Yang et al. 2023): reference, chunked XLA path, Pallas kernel.

Per batch row and head, with a state S ∈ R^{K×V} (float32) and log-decays g_t ≤ 0:

    S_t = Diag(exp(g_t)) S_{t−1} + k_tᵀ v_t,        o_t = scale · q_t S_t,   scale = K^−½.

Chunked form (chunk of C rows starting after state S, b_i = Σ_{j≤i} g_j inclusive):

    o_i   = (q_i ⊙ e^{b_i}) S + Σ_{j≤i} (Σ_k q_ik k_jk e^{b_ik − b_jk}) v_j
    S_new = Diag(e^{b_C}) S + Σ_j (k_j ⊙ e^{b_C − b_j})ᵀ v_j

The intra-chunk sum splits into sub-chunks of c rows. For a sub-chunk I and rows j before it,
e^{b_i − b_j} = e^{b_i − r_I} · e^{r_I − b_j} with r_I = b at I's first row (inclusive cumsum),
so both factors have exponents ≤ 0 and the pair is one matmul; the diagonal c×c sub-blocks
are element-wise. Every exponent is ≤ 0: nothing overflows for any g ≤ 0 (g = −20 and
T = 65,536 are tested). ``g = None`` is the no-decay case (plain causal linear attention).

Packed sequences: ``segment_ids`` [B, T]; where the id changes (t > 0) the state is reset to 0
before the step (S_{t−1} := 0). ``initial_state`` feeds the row's first segment only; the
final state is the state after the row's last token (i.e. of its last segment).

Implementations: "reference" (a ``lax.scan`` of the recurrence); "xla" (chunk-parallel
local terms, on CPU looped over groups of chunks, + a scan over chunk states); "pallas" (one
program per (b, h, V-block), a ``fori_loop`` over chunks carrying the state;
``interpret=True`` on CPU; compiled on TPU, where the kernel passes the Mosaic TPU lowering
but has not been run; no GPU kernel yet: NotImplementedError, see docs/kernels_linear.md).
The Pallas forward is wrapped in ``custom_vjp``; its backward is the ``jax.vjp`` of the
"xla" path (recomputed, not a kernel).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, Int

from kernels import _common as cm
from kernels._common import BlockSizes

_HI = lax.Precision.HIGHEST  # f32 matmuls stay f32 on GPU (no TF32)


def _chunk_local(q, k, v, g, reset, sub):
    """The state-independent terms of L chunks. q, k, g: [L, C, K] (q already scaled),
    v: [L, C, V], g None (no decay), reset None or [L, C] (1.0 where a segment starts).

    Returns o_intra [L, C, V]; q_in [L, C, K] (q ⊙ e^{b}, the weights of the carried state);
    ds [L, K, V] (what the chunk adds to the state); decay [L, K] (e^{b_C}).
    """
    l_, c_, kd = q.shape
    vd = v.shape[-1]
    idx = jnp.arange(c_)
    # inclusive cumsums as matmuls with tril(1): XLA:CPU's cumsum is several times slower,
    # Mosaic TPU has no cumsum; 0/1 reset counts stay exact integers
    tril_CxC = (idx[:, None] >= idx[None, :]).astype(q.dtype)
    if reset is not None:
        cnt_LxC = jnp.einsum("ij,lj->li", tril_CxC, reset, precision=_HI)  # resets in [start, i]
        same_LxCxC = cnt_LxC[:, :, None] == cnt_LxC[:, None, :]  # no reset in (j, i]
    if g is None:
        causal_1xCxC = (idx[:, None] >= idx[None, :])[None]
        mask = causal_1xCxC if reset is None else causal_1xCxC & same_LxCxC
        a_LxCxC = jnp.where(mask, jnp.einsum("lik,ljk->lij", q, k, precision=_HI), 0.0)
        o_intra = jnp.einsum("lij,ljv->liv", a_LxCxC, v, precision=_HI)
        q_in, k_st, decay = q, k, jnp.ones((l_, kd), q.dtype)
    else:
        n = c_ // sub
        b_LxCxK = jnp.einsum("ij,ljk->lik", tril_CxC, g, precision=_HI)
        q_in = q * jnp.exp(b_LxCxK)
        k_st = k * jnp.exp(b_LxCxK[:, -1:, :] - b_LxCxK)
        decay = jnp.exp(b_LxCxK[:, -1, :])
        b_s = b_LxCxK.reshape(l_, n, sub, kd)
        q_s, k_s = q.reshape(l_, n, sub, kd), k.reshape(l_, n, sub, kd)
        ref_LxNx1xK = b_s[:, :, :1, :]  # reference point: b at each sub-chunk's first row
        # Off-diagonal sub-blocks: rows j before sub-chunk I, both exponents <= 0.
        before_NxC = idx[None, :] < (jnp.arange(n) * sub)[:, None]
        expo = ref_LxNx1xK - b_LxCxK[:, None, :, :]  # [L, n, C, K]
        k_off = k[:, None, :, :] * jnp.exp(jnp.where(before_NxC[None, :, :, None], expo, 0.0))
        q_off = q_s * jnp.exp(b_s - ref_LxNx1xK)
        # (einsums keep one batch dim: Mosaic TPU's matmul supports no more)
        a_off = jnp.einsum("mik,mjk->mij", q_off.reshape(l_ * n, sub, kd),
                           k_off.reshape(l_ * n, c_, kd), precision=_HI).reshape(l_, n, sub, c_)
        m_off = before_NxC[None, :, None, :]
        if reset is not None:
            m_off = m_off & same_LxCxC.reshape(l_, n, sub, c_)
        a_off = jnp.where(m_off, a_off, 0.0).reshape(l_, c_, c_)
        o_intra = jnp.einsum("lij,ljv->liv", a_off, v, precision=_HI)
        # Diagonal sub-blocks, element-wise in the compute dtype.
        tri = idx[:sub, None] >= idx[None, :sub]
        tri_5 = tri[None, None, :, :, None]
        expo_d = jnp.where(tri_5, b_s[:, :, :, None, :] - b_s[:, :, None, :, :], 0.0)
        a_d = jnp.sum(q_s[:, :, :, None, :] * k_s[:, :, None, :, :] * jnp.exp(expo_d), axis=-1)
        m_d = tri[None, None]
        if reset is not None:
            cnt_s = cnt_LxC.reshape(l_, n, sub)
            m_d = m_d & (cnt_s[:, :, :, None] == cnt_s[:, :, None, :])
        a_d = jnp.where(m_d, a_d, 0.0)
        o_d = jnp.einsum("mij,mjv->miv", a_d.reshape(l_ * n, sub, sub),
                         v.reshape(l_ * n, sub, vd), precision=_HI)
        o_intra = o_intra + o_d.reshape(l_, c_, vd)
    if reset is not None:
        q_in = jnp.where((cnt_LxC == 0)[:, :, None], q_in, 0.0)
        k_st = jnp.where((cnt_LxC == cnt_LxC[:, -1:])[:, :, None], k_st, 0.0)
        decay = jnp.where((cnt_LxC[:, -1] == 0)[:, None], decay, 0.0)
    ds = jnp.einsum("lck,lcv->lkv", k_st, v, precision=_HI)
    return o_intra, q_in, ds, decay


def _xla_forward(q, k, v, g, reset, s0, bs: BlockSizes):
    """q, k, g [B, T, H, K] (T a multiple of the chunk, q scaled), v [B, T, H, V], s0 [B, H, K, V]."""
    b_, t_, h_, kd = q.shape
    vd, c_ = v.shape[-1], bs.chunk
    n = t_ // c_

    def to_chunks(x):  # [B, T, H, D] -> [B*H*n, C, D]
        return x.reshape(b_, n, c_, h_, -1).transpose(0, 3, 1, 2, 4).reshape(b_ * h_ * n, c_, -1)

    g_c = None if g is None else to_chunks(g)
    r_c = None
    if reset is not None:
        r_c = jnp.broadcast_to(reset.reshape(b_, 1, n, c_), (b_, h_, n, c_)).reshape(-1, c_)
    local = jax.checkpoint(functools.partial(_chunk_local, sub=bs.sub_chunk))
    xs = (to_chunks(q), to_chunks(k), to_chunks(v), g_c, r_c)
    n_all = b_ * h_ * n
    group = bs.group or (32 if cm.on_cpu() else n_all)
    if group >= n_all:
        o_intra, q_in, ds, decay = local(*xs)
    else:  # a loop over groups of chunks keeps the working set in cache (2-3x on CPU)
        n_grp = -(-n_all // group)
        grouped = lambda x: jnp.pad(x, [(0, n_grp * group - n_all)] + [(0, 0)] * (x.ndim - 1)
                                    ).reshape((n_grp, group) + x.shape[1:])
        outs = lax.map(lambda x: local(*x), jax.tree.map(grouped, xs))
        o_intra, q_in, ds, decay = jax.tree.map(
            lambda y: y.reshape((n_grp * group,) + y.shape[2:])[:n_all], outs)
    ds_N = ds.reshape(b_, h_, n, kd, vd).transpose(2, 0, 1, 3, 4)
    decay_N = decay.reshape(b_, h_, n, kd).transpose(2, 0, 1, 3)

    def step(s_BxHxKxV, xs):
        d_BxHxK, ds_BxHxKxV = xs
        return d_BxHxK[..., None] * s_BxHxKxV + ds_BxHxKxV, s_BxHxKxV

    s_final, s_prev_NxBxHxKxV = lax.scan(step, s0, (decay_N, ds_N))
    o_inter = jnp.einsum("bhnck,nbhkv->bhncv", q_in.reshape(b_, h_, n, c_, kd),
                         s_prev_NxBxHxKxV, precision=_HI)
    o_BxHxNxCxV = o_intra.reshape(b_, h_, n, c_, vd) + o_inter
    return o_BxHxNxCxV.transpose(0, 2, 3, 1, 4).reshape(b_, t_, h_, vd), s_final


def _pallas_forward(q, k, v, g, reset, s0, bs: BlockSizes, interpret: bool):
    b_, t_, h_, kd = q.shape
    vd, c_ = v.shape[-1], bs.chunk
    bv = bs.block_v or vd
    has_g, has_r = g is not None, reset is not None

    def kernel(*refs):
        it = iter(refs)
        q_ref, k_ref, v_ref = next(it), next(it), next(it)
        g_ref = next(it) if has_g else None
        r_ref = next(it) if has_r else None
        s0_ref, o_ref, st_ref = next(it), next(it), next(it)

        def body(i, s_KxV):
            rows = pl.ds(i * c_, c_)
            g_c = g_ref[rows, :][None] if has_g else None
            r_c = r_ref[:, rows] if has_r else None  # [1, C]
            o_in, q_in, ds, dec = _chunk_local(q_ref[rows, :][None], k_ref[rows, :][None],
                                               v_ref[rows, :][None], g_c, r_c, bs.sub_chunk)
            o_CxV = o_in[0] + jnp.dot(q_in[0], s_KxV, precision=_HI)
            o_ref[rows, :] = o_CxV.astype(o_ref.dtype)
            return dec[0][:, None] * s_KxV + ds[0]

        s_final = lax.fori_loop(0, t_ // c_, body, s0_ref[...])
        st_ref[...] = s_final.astype(st_ref.dtype)

    sq = pl.squeezed  # a squeezed block dim (None in older spellings)
    head = lambda d: pl.BlockSpec((sq, sq, t_, d), lambda i, j, m: (i, j, 0, 0))
    vcol = pl.BlockSpec((sq, sq, t_, bv), lambda i, j, m: (i, j, 0, m))
    state = pl.BlockSpec((sq, sq, kd, bv), lambda i, j, m: (i, j, 0, m))
    hm = lambda x: x.transpose(0, 2, 1, 3)  # [B, T, H, D] -> [B, H, T, D]
    args, specs = [hm(q), hm(k), hm(v)], [head(kd), head(kd), vcol]
    if has_g:
        args.append(hm(g))
        specs.append(head(kd))
    if has_r:
        args.append(reset.reshape(b_, 1, t_))  # [B, 1, T]: the last two block dims are whole
        specs.append(pl.BlockSpec((sq, 1, t_), lambda i, j, m: (i, 0, 0)))
    args.append(s0)
    specs.append(state)
    o_BxHxTxV, s_final = pl.pallas_call(
        kernel,
        grid=(b_, h_, vd // bv),
        in_specs=specs,
        out_specs=[vcol, state],
        out_shape=[jax.ShapeDtypeStruct((b_, h_, t_, vd), q.dtype),
                   jax.ShapeDtypeStruct((b_, h_, kd, vd), s0.dtype)],
        interpret=interpret,
    )(*args)
    return hm(o_BxHxTxV), s_final


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _pallas_core(bs, interpret, q, k, v, g, reset, s0):
    return _pallas_forward(q, k, v, g, reset, s0, bs, interpret)


def _pallas_core_fwd(bs, interpret, q, k, v, g, reset, s0):
    return _pallas_forward(q, k, v, g, reset, s0, bs, interpret), (q, k, v, g, reset, s0)


def _pallas_core_bwd(bs, interpret, res, ct):
    q, k, v, g, reset, s0 = res
    fwd = lambda q_, k_, v_, g_, s0_: _xla_forward(q_, k_, v_, g_, reset, s0_, bs)
    _, vjp = jax.vjp(fwd, q, k, v, g, s0)
    dq, dk, dv, dg, ds0 = vjp(ct)
    return dq, dk, dv, dg, (None if reset is None else jnp.zeros_like(reset)), ds0


_pallas_core.defvjp(_pallas_core_fwd, _pallas_core_bwd)


def chunked_core(q, k, v, g, reset, s0, *, block_sizes: BlockSizes, implementation: str):
    """The shared engine (also linear attention's, with g = None). Inputs in the compute
    dtype, q already scaled, any T ≥ 1: pads T to a multiple of the chunk (zero k, v, g rows
    add nothing and do not decay; padded resets are 0), runs "xla" or "pallas", crops."""
    t_ = q.shape[1]
    pad = -t_ % block_sizes.chunk
    if pad:
        pad4 = lambda x: None if x is None else jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        q, k, v, g = pad4(q), pad4(k), pad4(v), pad4(g)
        reset = None if reset is None else jnp.pad(reset, ((0, 0), (0, pad)))
    if implementation == "xla":
        o, s_final = _xla_forward(q, k, v, g, reset, s0, block_sizes)
    elif jax.default_backend() == "gpu":
        raise NotImplementedError(
            "implementation='pallas' has no GPU kernel yet: Mosaic GPU does not lower jnp.dot on "
            "register values (it needs plgpu.wgmma on SMEM refs); use implementation='xla'")
    else:
        o, s_final = _pallas_core(block_sizes, cm.on_cpu(), q, k, v, g, reset, s0)
    return o[:, :t_], s_final


def _reference_scan(q, k, v, g, reset, s0):
    def step(s_BxHxKxV, xs):
        q_t, k_t, v_t, g_t, r_t = xs
        s_BxHxKxV = jnp.where(r_t[:, None, None, None] > 0, 0.0, s_BxHxKxV)
        s_BxHxKxV = jnp.exp(g_t)[..., None] * s_BxHxKxV + k_t[..., :, None] * v_t[..., None, :]
        return s_BxHxKxV, jnp.einsum("bhk,bhkv->bhv", q_t, s_BxHxKxV, precision=_HI)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, reset))
    s_final, o_TxBxHxV = lax.scan(step, s0, xs)
    return jnp.moveaxis(o_TxBxHxV, 0, 1), s_final


def _validate(q, k, v, g, scale, initial_state, segment_ids, state_name="initial_state"):
    b_, t_, h_, kd, vd = cm.check_tokens(q, k, v, g)
    scale = cm.check_scale(scale, kd)
    cm.check_state(state_name, initial_state, b_, h_, kd, vd)
    cm.check_segment_ids(segment_ids, b_, t_)
    cm.check_nonpositive("g", g)
    return scale


@functools.partial(jax.jit, static_argnames=("block_sizes", "implementation"))
def _gla_jit(q, k, v, g, scale, initial_state, segment_ids, *, block_sizes, implementation):
    """Casts to the compute dtype (float32, float64 under x64), scales q, builds the resets
    and the zero state, dispatches, casts o back to the inputs' dtype."""
    b_, t_, h_, kd = q.shape
    vd = v.shape[-1]
    cdt = cm.compute_dtype(q, k, v, g, initial_state)
    q_, k_, v_, g_ = (x.astype(cdt) for x in (q, k, v, g))
    q_ = q_ * jnp.asarray(scale, cdt)
    s0 = jnp.zeros((b_, h_, kd, vd), cdt) if initial_state is None else initial_state.astype(cdt)
    out_dtype = jnp.result_type(q, k, v)
    if t_ == 0:
        return jnp.zeros(v.shape, out_dtype), s0
    if implementation == "reference":
        reset = (jnp.zeros((b_, t_), cdt) if segment_ids is None
                 else cm.resets_from_segment_ids(segment_ids, cdt))
        o, s_final = _reference_scan(q_, k_, v_, g_, reset, s0)
    else:
        reset = None if segment_ids is None else cm.resets_from_segment_ids(segment_ids, cdt)
        o, s_final = chunked_core(q_, k_, v_, g_, reset, s0, block_sizes=block_sizes,
                                  implementation=implementation)
    return o.astype(out_dtype), s_final


def gla_reference(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"],
    g: Float[Array, "B T H K"], *, scale: float | None = None,
    initial_state: Float[Array, "B H K V"] | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
) -> tuple[Float[Array, "B T H V"], Float[Array, "B H K V"]]:
    """The plain recurrence S_t = Diag(e^{g_t}) S_{t−1} + k_tᵀ v_t, o_t = scale·q_t S_t, one
    token at a time (``lax.scan``), in float32 (float64 for float64 inputs). Same API as ``gla``."""
    scale = _validate(q, k, v, g, scale, initial_state, segment_ids)
    return _gla_jit(q, k, v, g, scale, initial_state, segment_ids, block_sizes=BlockSizes(),
                    implementation="reference")


def gla(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"],
    g: Float[Array, "B T H K"], *, scale: float | None = None,
    initial_state: Float[Array, "B H K V"] | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
    implementation: str = "xla", block_sizes: BlockSizes | None = None,
) -> tuple[Float[Array, "B T H V"], Float[Array, "B H K V"]]:
    """Gated linear attention; returns (o [B, T, H, V] in the inputs' dtype, final state
    [B, H, K, V] in float32). g are log-decays (≤ 0; checked when g is concrete); scale
    defaults to K^−½; see the module docstring for the recurrence and ``segment_ids``."""
    cm.check_implementation(implementation)
    scale = _validate(q, k, v, g, scale, initial_state, segment_ids)
    bs = cm.resolve_block_sizes(block_sizes, v.shape[-1])
    return _gla_jit(q, k, v, g, scale, initial_state, segment_ids, block_sizes=bs,
                    implementation=implementation)


def gla_decode_step(
    q: Float[Array, "B 1 H K"], k: Float[Array, "B 1 H K"], v: Float[Array, "B 1 H V"],
    g: Float[Array, "B 1 H K"], state: Float[Array, "B H K V"], *, scale: float | None = None,
) -> tuple[Float[Array, "B 1 H V"], Float[Array, "B H K V"]]:
    """One recurrent step (T = 1): S' = Diag(e^{g}) S + kᵀ v, o = scale·q S'. Returns (o, S')."""
    if jnp.ndim(q) == 4 and q.shape[1] != 1:
        raise ValueError(f"q must have T = 1 for a decode step ([B, 1, H, K]), got {q.shape}")
    if state is None:
        raise ValueError("state must be a [B, H, K, V] array (e.g. gla's final state), got None")
    scale = _validate(q, k, v, g, scale, state, None, "state")
    return _decode_jit(q, k, v, g, state, scale)


@jax.jit
def _decode_jit(q, k, v, g, state, scale):
    cdt = cm.compute_dtype(q, k, v, g, state)
    q_, k_, v_, g_, s0 = (x.astype(cdt) for x in (q, k, v, g, state))
    s_new = jnp.exp(g_[:, 0])[..., None] * s0 + k_[:, 0, :, :, None] * v_[:, 0, :, None, :]
    o = jnp.einsum("bhk,bhkv->bhv", q_[:, 0] * jnp.asarray(scale, cdt), s_new, precision=_HI)
    return o[:, None].astype(jnp.result_type(q, k, v)), s_new
