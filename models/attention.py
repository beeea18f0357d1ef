"""Multi-head self-attention with a pluggable backend: `attend` (pure) and `Attention` (Flax).

Backends (`BACKENDS`), all on q, k [B, T, H, K], v [B, T, H, V] → [B, T, H, V]:
- "softmax": o_t = Σ_{s≤t} softmax_s(q_t·k_s/√K) v_s, plain jnp, logits in fp32.
- "linear": Katharopoulos linear attention, φ = elu + 1, normalised:
  o_t = φ(q_t) Σ_{s≤t} φ(k_s)ᵀ v_s / φ(q_t) Σ_{s≤t} φ(k_s)  (`kernels.linear_attention`).
- "gla": gated linear attention S_t = Diag(α_t) S_{t−1} + k_tᵀ v_t, o_t = q_t S_t/√K with
  log α_t = logsigmoid(x_t W_g + b_g)/16 (Yang et al.; `kernels.gla`). Needs the gate `g`.
- "lawcat": LAWCAT (`kernels.lawcat`): causal depthwise conv1d of width `conv_width` on q and k,
  then normalised GLA with φ = elu + 1: S_t = Diag(α_t) S_{t−1} + φ(k̃_t)ᵀ v_t, z_t = α_t ⊙
  z_{t−1} + φ(k̃_t), o_t = φ(q̃_t) S_t / (φ(q̃_t)·z_t + 1e-6); α_t as for "gla".
- "moba": MoBA block-sparse attention (`kernels.moba`), block `block_size`, `top_k` blocks
  (own block included), optional VMoBA `threshold`.
- "spark_topk": softmax over the logits above the Spark statistical top-k threshold, `k_keep`
  per row (`kernels.topk`).
- "relu": ReLU attention without softmax or √K, o_t = Σ_{s≤t} ReLU(q_t·k_s) v_s / (t + 1) (t from 0;
  non-causal: / T), the variant of Bai et al. / Lin, Bai, Mei's in-context RL transformer.

`Attention` maps x [B, T, D] → [B, T, D] with a fused "qkv" projection [D, 3, H, K] and an "out"
projection [H, K, D] (the parameter layout of `models.gpt.CausalAttn`), plus "gate" [D, H, K]
for "gla" and "lawcat", and "conv_q", "conv_k" [conv_width, H, K] for "lawcat" (initialised to
the identity filter, weight 1 on the current token, plus N(0, init_std) noise). Every backend is
causal inside the module.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from models import initializers

from kernels.gla import gla
from kernels.lawcat import lawcat
from kernels.linear_attention import linear_attention
from kernels.moba import moba_attention
from kernels.topk import spark_topk_attention

BACKENDS = ("softmax", "linear", "gla", "lawcat", "moba", "spark_topk", "relu")
GLA_GATE_TEMPERATURE = 16.0  # log α = logsigmoid(·)/16 (GLA paper)
_HI = jax.lax.Precision.HIGHEST  # fp32 matmuls stay fp32 on GPU (no TF32)


def _elu1(x):
    return jax.nn.elu(x) + 1.0


def _softmax(q_BxTxHxK, k_BxTxHxK, v_BxTxHxV, causal: bool):
    T, K = q_BxTxHxK.shape[1], q_BxTxHxK.shape[-1]
    s_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK.astype(jnp.float32), k_BxTxHxK.astype(jnp.float32),
                           precision=_HI) / jnp.sqrt(jnp.float32(K))
    if causal:
        causal_11TT = jnp.tril(jnp.ones((T, T), bool))[None, None]
        s_BxHxTxT = jnp.where(causal_11TT, s_BxHxTxT, -jnp.inf)
    p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1)
    o = jnp.einsum("bhts,bshv->bthv", p_BxHxTxT, v_BxTxHxV.astype(jnp.float32), precision=_HI)
    return o.astype(q_BxTxHxK.dtype)


def _relu(q_BxTxHxK, k_BxTxHxK, v_BxTxHxV, causal: bool):
    T = q_BxTxHxK.shape[1]
    s_BxHxTxT = jax.nn.relu(jnp.einsum("bthk,bshk->bhts", q_BxTxHxK.astype(jnp.float32),
                                       k_BxTxHxK.astype(jnp.float32), precision=_HI))
    if causal:
        s_BxHxTxT = s_BxHxTxT * jnp.tril(jnp.ones((T, T), jnp.float32))[None, None]
        s_BxHxTxT = s_BxHxTxT / jnp.arange(1, T + 1, dtype=jnp.float32)[None, None, :, None]
    else:
        s_BxHxTxT = s_BxHxTxT / T
    o = jnp.einsum("bhts,bshv->bthv", s_BxHxTxT, v_BxTxHxV.astype(jnp.float32), precision=_HI)
    return o.astype(q_BxTxHxK.dtype)


def attend(
    q: Float[Array, "B T H K"], k: Float[Array, "B T H K"], v: Float[Array, "B T H V"], *,
    backend: str, causal: bool = True, g: Float[Array, "B T H K"] | None = None,
    implementation: str = "xla", block_size: int = 64, top_k: int = 3, threshold: float | None = None,
    k_keep: int = 32, conv_q: Float[Array, "W H K"] | None = None, conv_k: Float[Array, "W H K"] | None = None,
) -> Float[Array, "B T H V"]:
    """Attention of one backend (see the module docstring); output in q's dtype.

    `implementation` ("reference" | "xla" | "pallas") applies to "linear", "gla", "lawcat" and
    "moba"; `g` (log-decays ≤ 0) is required by "gla" and "lawcat", `conv_q`, `conv_k` by
    "lawcat"; "gla", "lawcat" and "moba" are causal only.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend in ("gla", "lawcat", "moba") and not causal:
        raise ValueError(f"causal must be True for backend {backend!r}; got causal={causal!r}")
    if backend == "softmax":
        return _softmax(q, k, v, causal)
    if backend == "relu":
        return _relu(q, k, v, causal)
    if backend == "linear":
        o, _ = linear_attention(q, k, v, causal=causal, normalize=True, feature_map=_elu1,
                                implementation=implementation)
        return o.astype(q.dtype)
    if backend == "gla":
        if g is None:
            raise ValueError("g must be given for backend 'gla' (log-decays [B, T, H, K]); got None")
        o, _ = gla(q, k, v, g, implementation=implementation)
        return o.astype(q.dtype)
    if backend == "lawcat":
        for name, val in (("g", g), ("conv_q", conv_q), ("conv_k", conv_k)):
            if val is None:
                raise ValueError(f"{name} must be given for backend 'lawcat'; got None")
        return lawcat(q, k, v, g, conv_q, conv_k, implementation=implementation).astype(q.dtype)
    if backend == "moba":
        return moba_attention(q, k, v, block_size=block_size, top_k=top_k, threshold=threshold,
                              implementation=implementation)
    return spark_topk_attention(q, k, v, k_keep=k_keep, causal=causal)


def identity_conv_init(init):
    """LAWCAT's conv filters [W, H, K]: ``init``'s draw plus 1 on the current token (the last tap)."""
    def conv_init(key, shape, dtype):
        return init(key, shape, dtype).at[-1].add(1.0)
    return conv_init


def param_specs(D: int, *, num_heads: int, backend: str = "softmax", head_dim: int | None = None,
                conv_width: int = 4, init_std: float = 0.02, out_init_std: float = 0.02) -> tuple:
    """`Attention`'s parameters as `initializers.Declare` specs, in the order its ``__call__`` makes them
    (the same flax RNG streams): a parameters-only init without the forward pass."""
    H = num_heads
    K = head_dim or D // H
    init, zeros = initializers.normal_init(init_std), initializers.constant_init(0.0)
    specs = [("qkv", (("kernel", init, (D, 3, H, K)), ("bias", zeros, (3, H, K))))]
    if backend in ("gla", "lawcat"):
        specs.append(("gate", (("kernel", init, (D, H, K)), ("bias", zeros, (H, K)))))
    if backend == "lawcat":
        specs += [(name, identity_conv_init(init), (conv_width, H, K)) for name in ("conv_q", "conv_k")]
    specs.append(("out", (("kernel", initializers.normal_init(out_init_std), (H, K, D)), ("bias", zeros, (D,)))))
    return tuple(specs)


class Attention(nn.Module):
    """Causal multi-head self-attention x [B, T, D] → [B, T, D] with a backend named by a string.

    Attributes:
      num_heads: H; head_dim K defaults to D // H.
      backend: one of `BACKENDS`.
      implementation: kernel implementation for "linear" | "gla" | "lawcat" | "moba".
      conv_width: LAWCAT's conv width W.
      block_size, top_k, threshold: MoBA options; k_keep: Spark top-k entries per row.
      dtype: compute dtype of the projections; param_dtype: parameter dtype (explicit, so x64
        mode does not turn parameters into float64).
      init_std, out_init_std: normal initialiser stds of qkv/gate and of the output projection.
    """

    num_heads: int
    head_dim: int | None = None
    backend: str = "softmax"
    implementation: str = "xla"
    block_size: int = 64
    top_k: int = 3
    threshold: float | None = None
    k_keep: int = 32
    conv_width: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    init_std: float = 0.02
    out_init_std: float = 0.02

    @nn.compact
    def __call__(self, x_BxTxD: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        if x_BxTxD.ndim != 3:
            raise ValueError(f"x must be [B, T, D]; got shape {x_BxTxD.shape}")
        D = x_BxTxD.shape[-1]
        H = self.num_heads
        if not isinstance(H, int) or H < 1 or (self.head_dim is None and D % H):
            raise ValueError(f"num_heads must be a positive int dividing D={D} (or set head_dim); got {H!r}")
        K = self.head_dim or D // H
        init = initializers.normal_init(self.init_std, dtype=self.param_dtype)   # = nn.initializers.normal, bitwise
        qkv = nn.DenseGeneral((3, H, K), dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
                              name="qkv")(x_BxTxD)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv[:, :, i] for i in range(3))
        g_BxTxHxK = conv_q = conv_k = None
        if self.backend in ("gla", "lawcat"):
            gate = nn.DenseGeneral((H, K), dtype=jnp.float32, param_dtype=self.param_dtype, kernel_init=init,
                                   name="gate")(x_BxTxD)
            g_BxTxHxK = jax.nn.log_sigmoid(gate) / GLA_GATE_TEMPERATURE
        if self.backend == "lawcat":
            W = self.conv_width
            if not isinstance(W, int) or W < 1:
                raise ValueError(f"conv_width must be a positive int; got {W!r}")

            conv_init = identity_conv_init(init)
            conv_q = self.param("conv_q", conv_init, (W, H, K), self.param_dtype)
            conv_k = self.param("conv_k", conv_init, (W, H, K), self.param_dtype)
        o_BxTxHxK = attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, backend=self.backend, causal=True, g=g_BxTxHxK,
                           implementation=self.implementation, block_size=self.block_size, top_k=self.top_k,
                           threshold=self.threshold, k_keep=self.k_keep, conv_q=conv_q, conv_k=conv_k)
        out_init = initializers.normal_init(self.out_init_std, dtype=self.param_dtype)
        return nn.DenseGeneral(D, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
                               kernel_init=out_init, name="out")(o_BxTxHxK.astype(self.dtype))
