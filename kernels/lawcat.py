"""LAWCAT: causal depthwise conv1d on q and k, then normalised gated linear attention.

Per batch row and head, with conv weights w_q, w_k ∈ R^{W×K} (one filter of width W per
channel) and log-decays g_t ≤ 0:

    q̃_t = Σ_{j=0}^{W−1} w_q[j] ⊙ q_{t−W+1+j}        (q_s = 0 for s < 0: causal, left zero-padded;
    k̃_t = Σ_{j=0}^{W−1} w_k[j] ⊙ k_{t−W+1+j}         w[W−1] multiplies the current token)
    φ(x) = elu(x) + 1 > 0                               (element-wise)
    S_t = Diag(e^{g_t}) S_{t−1} + φ(k̃_t)ᵀ v_t          S_{−1} = 0, S ∈ R^{K×V}
    z_t = e^{g_t} ⊙ z_{t−1} + φ(k̃_t)                   z_{−1} = 0, z ∈ R^K
    o_t = φ(q̃_t) S_t / (φ(q̃_t)·z_t + eps)

φ > 0 makes z_t ≥ φ(k̃_t) > 0 entry-wise (the own token is in the sum), so the denominator is
> eps > 0 for every t; o_t is then a convex combination of v_0..v_t when eps → 0 (weights
Σ_k φ(q̃_t)_k φ(k̃_s)_k e^{b_tk − b_sk} ≥ 0 with b the cumulative g). No logit scale: it would
cancel between numerator and denominator. W = 1 with w = 1 is normalised GLA on φ(q), φ(k).

Implementations: "reference" (`lawcat_reference`: one `lax.scan` over tokens carrying the last
W−1 raw q/k rows, S and z); "xla" and "pallas" do the conv as W shifted multiply-adds and run
`kernels.gla` (its chunked path of the same name) once on v' = [v, 1] ∈ R^{V+1}: the last column
of GLA's output is the denominator φ(q̃_t)·z_t, the others the numerator. Gradients: autodiff
(the Pallas GLA forward carries its own custom_vjp).
Layout: q, k, g [B, T, H, K], v [B, T, H, V], conv_q, conv_k [W, H, K] → o [B, T, H, V] in the
inputs' dtype (computed in float32, float64 under x64).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from kernels import _common as cm
from kernels.gla import gla

_HI = lax.Precision.HIGHEST


def _phi(x):
    return jax.nn.elu(x) + 1.0


def _validate(q, k, v, g, conv_q, conv_k, eps):
    _, _, h, kd, _ = cm.check_tokens(q, k, v, g)
    if g is None:
        raise ValueError("g must be a [B, T, H, K] array of log-decays (zeros for no decay), got None")
    for name, w in (("conv_q", conv_q), ("conv_k", conv_k)):
        if jnp.ndim(w) != 3 or jnp.shape(w)[1:] != (h, kd) or jnp.shape(w)[0] < 1:
            raise ValueError(f"{name} must have shape [W, H, K] with W ≥ 1 and (H, K)={(h, kd)}, "
                             f"got {jnp.shape(w)}")
        cm._check_float(name, w)
    if jnp.shape(conv_q)[0] != jnp.shape(conv_k)[0]:
        raise ValueError(f"conv_k must have the width of conv_q ({jnp.shape(conv_q)[0]}), got "
                         f"{jnp.shape(conv_k)[0]}")
    cm.check_nonpositive("g", g)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")


def causal_depthwise_conv(x: Float[Array, "B T H K"], w: Float[Array, "W H K"]) -> Float[Array, "B T H K"]:
    """y_t = Σ_j w[j] ⊙ x_{t−W+1+j} with x_s = 0 for s < 0, as W shifted multiply-adds."""
    width, t_ = w.shape[0], x.shape[1]
    x_pad = jnp.pad(x, ((0, 0), (width - 1, 0), (0, 0), (0, 0)))
    return sum(w[j][None, None] * x_pad[:, j:j + t_] for j in range(width))


def lawcat(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"],
    g: Float[Array, "B T H K"], conv_q: Float[Array, "W H K"], conv_k: Float[Array, "W H K"], *,
    eps: float = 1e-6, implementation: str = "xla", block_sizes: cm.BlockSizes | None = None,
) -> Float[Array, "B T H V"]:
    """LAWCAT attention (module docstring for the equations): conv on q, k, then normalised GLA.

    Args:
      g: log-decays, ≤ 0 (checked when concrete); zeros give plain normalised linear attention.
      conv_q, conv_k: depthwise causal filters [W, H, K]; conv[W−1] weighs the current token.
      eps: added to the (positive) denominator.
      implementation: "reference" (token scan), "xla" or "pallas" (`kernels.gla`'s paths).
      block_sizes: GLA block sizes of the chunked paths (`kernels.LinearBlockSizes`).
    """
    cm.check_implementation(implementation)
    _validate(q, k, v, g, conv_q, conv_k, eps)
    if implementation == "reference":
        return lawcat_reference(q, k, v, g, conv_q, conv_k, eps=eps)
    if block_sizes is not None:
        cm.resolve_block_sizes(block_sizes, v.shape[-1] + 1)
    return _lawcat_chunked(q, k, v, g, conv_q, conv_k, eps=float(eps), implementation=implementation,
                           block_sizes=block_sizes)


def _lawcat_chunked(q, k, v, g, conv_q, conv_k, *, eps, implementation, block_sizes):
    cdt = cm.compute_dtype(q, k, v, g, conv_q, conv_k)
    q_, k_, v_, g_, wq, wk = (x.astype(cdt) for x in (q, k, v, g, conv_q, conv_k))
    fq_BxTxHxK = _phi(causal_depthwise_conv(q_, wq))
    fk_BxTxHxK = _phi(causal_depthwise_conv(k_, wk))
    v1_BxTxHxV1 = jnp.concatenate([v_, jnp.ones(v_.shape[:3] + (1,), cdt)], axis=-1)
    o1, _ = gla(fq_BxTxHxK, fk_BxTxHxK, v1_BxTxHxV1, g_, scale=1.0, implementation=implementation,
                block_sizes=block_sizes)
    o_BxTxHxV = o1[..., :-1] / (o1[..., -1:] + eps)
    return o_BxTxHxV.astype(jnp.result_type(q, k, v))


def lawcat_reference(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"],
    g: Float[Array, "B T H K"], conv_q: Float[Array, "W H K"], conv_k: Float[Array, "W H K"], *,
    eps: float = 1e-6,
) -> Float[Array, "B T H V"]:
    """The recurrence one token at a time (`lax.scan` carrying the conv windows, S and z)."""
    _validate(q, k, v, g, conv_q, conv_k, eps)
    cdt = cm.compute_dtype(q, k, v, g, conv_q, conv_k)
    q_, k_, v_, g_, wq, wk = (x.astype(cdt) for x in (q, k, v, g, conv_q, conv_k))
    b_, _, h_, kd = q.shape
    vd, width = v.shape[-1], conv_q.shape[0]

    def step(carry, xs):
        win_q, win_k, s_BxHxKxV, z_BxHxK = carry  # windows [W, B, H, K]: oldest first
        q_t, k_t, v_t, g_t = xs
        win_q = jnp.concatenate([win_q[1:], q_t[None]])
        win_k = jnp.concatenate([win_k[1:], k_t[None]])
        fq = _phi(jnp.einsum("wbhk,whk->bhk", win_q, wq, precision=_HI))
        fk = _phi(jnp.einsum("wbhk,whk->bhk", win_k, wk, precision=_HI))
        decay = jnp.exp(g_t)
        s_BxHxKxV = decay[..., None] * s_BxHxKxV + fk[..., :, None] * v_t[..., None, :]
        z_BxHxK = decay * z_BxHxK + fk
        num = jnp.einsum("bhk,bhkv->bhv", fq, s_BxHxKxV, precision=_HI)
        den = jnp.sum(fq * z_BxHxK, axis=-1, keepdims=True)
        return (win_q, win_k, s_BxHxKxV, z_BxHxK), num / (den + eps)

    zeros_win = jnp.zeros((width, b_, h_, kd), cdt)
    init = (zeros_win, zeros_win, jnp.zeros((b_, h_, kd, vd), cdt), jnp.zeros((b_, h_, kd), cdt))
    _, o_TxBxHxV = lax.scan(step, init, tuple(jnp.moveaxis(x, 1, 0) for x in (q_, k_, v_, g_)))
    return jnp.moveaxis(o_TxBxHxV, 0, 1).astype(jnp.result_type(q, k, v))
