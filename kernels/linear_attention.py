"""Linear attention (Katharopoulos et al. 2020): reference, chunked XLA path, Pallas kernel.

With a feature map φ (identity by default) applied to q and k, per batch row and head:

    causal:      S_t = S_0 + Σ_{s≤t} φ(k_s)ᵀ v_s,   o_t = φ(q_t) S_t
    non-causal:  S   = S_0 + Σ_{s≤T} φ(k_s)ᵀ v_s,   o_t = φ(q_t) S
    normalize:   o_t = φ(q_t) S_t / φ(q_t) z_t,      z_t = z_0 + Σ_{s≤t} φ(k_s)

There is no 1/√K scale (scale q, or choose φ, yourself). The normaliser is the same recurrence
with a column of ones appended to v, so with ``normalize=True`` the state has V + 1 columns,
the last one holding z: ``initial_state`` / final state are [B, H, K', V + 1] (K' = φ's output
dim). φ must keep φ(q)·z > 0 (e.g. ``lambda x: jax.nn.elu(x) + 1``); nothing guards a zero.

Always returns ``(o [B, T, H, V], final_state)``, like ``kernels.gla``; decode one token with
``kernels.gla_decode_step(φ(q), φ(k), v, zeros, state, scale=1.0)`` (linear attention is GLA
with g = 0 and scale 1).

Causal chunked form (chunk of C rows after state S): O = Q S + tril(Q Kᵀ) V, S' = S + Kᵀ V;
it is ``kernels.gla.chunked_core`` with ``g=None`` ("xla": chunk-parallel, scan over chunk
states; "pallas": one program per (b, h, V-block) looping over chunks; ``interpret=True`` on
CPU, compiled on TPU, none on GPU yet; ``custom_vjp`` whose backward is the ``jax.vjp`` of
the "xla" path). The non-causal case is two einsums for every implementation except
"reference" (quadratic in both cases).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kernels import _common as cm
from kernels._common import BlockSizes
from kernels.gla import _HI, chunked_core


def _validate(q, k, v, normalize, feature_map, initial_state):
    b_, t_, h_, kd, vd = cm.check_tokens(q, k, v)
    if feature_map is not None and not callable(feature_map):
        raise ValueError(f"feature_map must be None or a callable, got {feature_map!r}")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    kf = kd
    if feature_map is not None:
        cdt = cm.compute_dtype(q, k, v, initial_state)
        phi = jax.eval_shape(feature_map, jax.ShapeDtypeStruct(q.shape, cdt))
        if getattr(phi, "shape", (None,))[:3] != (b_, t_, h_) or len(phi.shape) != 4:
            raise ValueError(f"feature_map must map [B, T, H, K] to [B, T, H, K'], got {phi}")
        kf = phi.shape[3]
    cm.check_state("initial_state", initial_state, b_, h_, kf, vd + int(normalize))
    return vd + int(normalize)


@functools.partial(jax.jit, static_argnames=("causal", "normalize", "feature_map",
                                             "block_sizes", "implementation"))
def _la_jit(q, k, v, initial_state, *, causal, normalize, feature_map, block_sizes,
            implementation):
    b_, t_, h_, _ = q.shape
    cdt = cm.compute_dtype(q, k, v, initial_state)
    q_, k_, v_ = (x.astype(cdt) for x in (q, k, v))
    if feature_map is not None:
        q_, k_ = feature_map(q_).astype(cdt), feature_map(k_).astype(cdt)
    if normalize:
        v_ = jnp.concatenate([v_, jnp.ones((b_, t_, h_, 1), cdt)], axis=-1)
    kf, vf = q_.shape[-1], v_.shape[-1]
    s0 = jnp.zeros((b_, h_, kf, vf), cdt) if initial_state is None else initial_state.astype(cdt)
    if implementation == "reference":
        a_BxHxTxT = jnp.einsum("bihk,bjhk->bhij", q_, k_, precision=_HI)
        if causal:
            a_BxHxTxT = jnp.where(jnp.tril(jnp.ones((t_, t_), bool))[None, None], a_BxHxTxT, 0.0)
        o = (jnp.einsum("bhij,bjhv->bihv", a_BxHxTxT, v_, precision=_HI)
             + jnp.einsum("bihk,bhkv->bihv", q_, s0, precision=_HI))
        s_final = s0 + jnp.einsum("bjhk,bjhv->bhkv", k_, v_, precision=_HI)
    elif not causal:
        s_final = s0 + jnp.einsum("bjhk,bjhv->bhkv", k_, v_, precision=_HI)
        o = jnp.einsum("bihk,bhkv->bihv", q_, s_final, precision=_HI)
    elif t_ == 0:
        o, s_final = jnp.zeros(v_.shape, cdt), s0
    else:
        o, s_final = chunked_core(q_, k_, v_, None, None, s0, block_sizes=block_sizes,
                                  implementation=implementation)
    if normalize:
        o = o[..., :-1] / o[..., -1:]
    return o.astype(jnp.result_type(q, k, v)), s_final


def linear_attention_reference(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"], *,
    causal: bool = True, normalize: bool = False,
    feature_map: Callable[[Array], Array] | None = None,
    initial_state: Float[Array, "B H K V"] | None = None,
) -> tuple[Float[Array, "B T H V"], Float[Array, "B H K V"]]:
    """Quadratic form o = (mask ⊙ φ(Q) φ(K)ᵀ) V + φ(Q) S_0 (mask = tril if causal, else all
    ones), in float32 (float64 for float64 inputs). Same API and outputs as ``linear_attention``."""
    return linear_attention(q, k, v, causal=causal, normalize=normalize, feature_map=feature_map,
                            initial_state=initial_state, implementation="reference")


def linear_attention(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"], *,
    causal: bool = True, normalize: bool = False,
    feature_map: Callable[[Array], Array] | None = None,
    initial_state: Float[Array, "B H K V"] | None = None,
    implementation: str = "xla", block_sizes: BlockSizes | None = None,
) -> tuple[Float[Array, "B T H V"], Float[Array, "B H K V"]]:
    """Linear attention; returns (o [B, T, H, V] in the inputs' dtype, final state
    [B, H, K', V] float32, V + 1 columns when ``normalize``). See the module docstring."""
    cm.check_implementation(implementation)
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    vf = _validate(q, k, v, normalize, feature_map, initial_state)
    bs = cm.resolve_block_sizes(block_sizes, vf)
    return _la_jit(q, k, v, initial_state, causal=causal, normalize=normalize,
                   feature_map=feature_map, block_sizes=bs, implementation=implementation)
