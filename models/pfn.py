"""Prior-data fitted network (Müller et al. 2022): a transformer encoder over a set of (x, y) pairs.

Tokens (T = n + Q positions, the first n are the context, the rest the queries):

    context  e_i = W_x x_i + b_x + W_y y_i + b_y          (Linear(x) + Linear(y))
    query    e_i = W_x x_i + b_x                           (Linear(x); its y is never read)

no positional encodings by default (``positional=True`` adds a learned table p_i, the ablation).
Attention mask: a context token attends to every context token; a query attends to every
context token and to itself, never to another query. So each query's output is a function of
(context, its own x) only, and the outputs are invariant to permuting the context. Pre-LN
blocks h += Attn(LN h); h += MLP(LN h) (GELU), a final LN, then the read-out:
``head="bar"`` logits over ``num_buckets`` buckets (`objectives.bar_distribution`) or
``head="gaussian"`` (mean, log-variance), the ablation.

``n_ctx`` a Python int: keys are sliced to the first n positions (cost T·n per head and layer,
used for prediction: `predict`); ``n_ctx`` a traced scalar or [B] array (training, one n per
batch drawn inside the jitted step): the same attention with a mask over all T keys. The query
self-term is kept apart from the context keys and merged by a shared max, so n = 0 (no context)
is well defined: every query then sees only itself.

Shapes: B batch, T tokens, n context size, Q queries, D width, H heads, K head dim, d inputs.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from models import initializers

HEADS = ("bar", "gaussian")
_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PFNConfig:
    d_in: int                 # d: input dimension
    n_layers: int = 4
    n_heads: int = 4
    width: int = 128          # D
    mlp_ratio: int = 2        # MLP width = mlp_ratio · D (the paper: 1024 for D = 512)
    head: str = "bar"         # "bar" | "gaussian"
    num_buckets: int = 1000   # K of the bar head
    positional: bool = False  # learned positional encodings (ablation)
    max_tokens: int = 1024    # length of the position table (positional only)

    def __post_init__(self):
        for name in ("d_in", "n_layers", "n_heads", "width", "mlp_ratio", "max_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: got {v!r}; allowed a positive integer")
        if self.width % self.n_heads:
            raise ValueError(f"width: got {self.width} with n_heads={self.n_heads}; allowed a multiple of n_heads")
        if self.head not in HEADS:
            raise ValueError(f"head: got {self.head!r}; allowed {HEADS}")
        if not isinstance(self.num_buckets, int) or self.num_buckets < 2:
            raise ValueError(f"num_buckets: got {self.num_buckets!r}; allowed an integer >= 2")

    @property
    def out_dim(self) -> int:
        return self.num_buckets if self.head == "bar" else 2


def _init(std=0.02):
    return initializers.normal_init(std, dtype=jnp.float32)    # = nn.initializers.normal, bitwise (models.initializers)


def _torch_linear_init():
    return initializers.fan_in_uniform_init(1 / 3, dtype=jnp.float32)   # = variance_scaling(1/3, "fan_in", "uniform")


def pfn_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, ctx_BxT, n_keys: int):
    """o_i = Σ_j softmax over {j < n_keys : ctx_j, j ≠ i} ∪ {i} of q_i·k_j/√K, applied to v_j."""
    T, K = q_BxTxHxK.shape[1], q_BxTxHxK.shape[-1]
    if n_keys == 0:  # no context: every token sees only itself
        return v_BxTxHxK
    scale = 1.0 / jnp.sqrt(jnp.float32(K))
    kc, vc = k_BxTxHxK[:, :n_keys], v_BxTxHxK[:, :n_keys]
    s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, kc, precision=_HI) * scale
    not_self_TxS = jnp.arange(T)[:, None] != jnp.arange(n_keys)[None, :]
    allowed = ctx_BxT[:, None, None, :n_keys] & not_self_TxS[None, None]
    s_BxHxTxS = jnp.where(allowed, s_BxHxTxS, -jnp.inf)
    self_BxHxT = jnp.einsum("bthk,bthk->bht", q_BxTxHxK, k_BxTxHxK, precision=_HI) * scale
    m_BxHxT = jnp.maximum(jnp.max(s_BxHxTxS, axis=-1), self_BxHxT)   # finite: the self term always is
    p_BxHxTxS = jnp.exp(s_BxHxTxS - m_BxHxT[..., None])
    p_self_BxHxT = jnp.exp(self_BxHxT - m_BxHxT)
    num_BxTxHxK = (jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, vc, precision=_HI)
                   + jnp.einsum("bht,bthk->bthk", p_self_BxHxT, v_BxTxHxK))
    den_BxTxH = jnp.einsum("bhts->bth", p_BxHxTxS) + jnp.einsum("bht->bth", p_self_BxHxT)
    return num_BxTxHxK / den_BxTxH[..., None]


class Block(nn.Module):
    cfg: PFNConfig

    @nn.compact
    def __call__(self, h_BxTxD, ctx_BxT, n_keys: int):
        cfg = self.cfg
        H, K = cfg.n_heads, cfg.width // cfg.n_heads
        res_std = 0.02 / (2 * cfg.n_layers) ** 0.5
        x = nn.LayerNorm(param_dtype=jnp.float32, name="ln1")(h_BxTxD)
        qkv = nn.DenseGeneral((3, H, K), param_dtype=jnp.float32, kernel_init=_init(), name="qkv")(x)
        o_BxTxHxK = pfn_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], ctx_BxT, n_keys)
        h_BxTxD = h_BxTxD + nn.DenseGeneral(cfg.width, axis=(-2, -1), param_dtype=jnp.float32,
                                            kernel_init=_init(res_std), name="out")(o_BxTxHxK)
        x = nn.LayerNorm(param_dtype=jnp.float32, name="ln2")(h_BxTxD)
        x = nn.gelu(nn.Dense(cfg.mlp_ratio * cfg.width, param_dtype=jnp.float32, kernel_init=_init(), name="fc")(x))
        return h_BxTxD + nn.Dense(cfg.width, param_dtype=jnp.float32, kernel_init=_init(res_std), name="proj")(x)


class PFN(nn.Module):
    """(x [B, T, d], y [B, T], n_ctx) → [B, T, out_dim] (bar logits, or (mean, log-variance))."""

    cfg: PFNConfig

    @nn.compact
    def __call__(self, x_BxTxd: Float[Array, "B T d"], y_BxT: Float[Array, "B T"], n_ctx) -> Float[Array, "B T o"]:
        cfg = self.cfg
        B, T, d = x_BxTxd.shape
        if d != cfg.d_in:
            raise ValueError(f"x: got input dim {d}; allowed d_in={cfg.d_in}")
        if y_BxT.shape != (B, T):
            raise ValueError(f"y: got shape {y_BxT.shape}; allowed {(B, T)}")
        if cfg.positional and T > cfg.max_tokens:
            raise ValueError(f"x: got T={T} tokens; allowed T <= max_tokens={cfg.max_tokens}")
        if isinstance(n_ctx, int):
            if not 0 <= n_ctx <= T:
                raise ValueError(f"n_ctx: got {n_ctx}; allowed 0 <= n_ctx <= T={T}")
            n_keys = n_ctx
            ctx_BxT = jnp.broadcast_to(jnp.arange(T)[None, :] < n_ctx, (B, T))
        else:
            n_keys = T
            n_B = jnp.broadcast_to(jnp.asarray(n_ctx), (B,))
            ctx_BxT = jnp.arange(T)[None, :] < n_B[:, None]
        x_BxTxd = x_BxTxd.astype(jnp.float32)
        y_BxT = jnp.where(ctx_BxT, y_BxT.astype(jnp.float32), 0.0)  # a query's y (even NaN) never enters
        h = nn.Dense(cfg.width, param_dtype=jnp.float32, kernel_init=_torch_linear_init(), name="x_enc")(x_BxTxd)
        hy = nn.Dense(cfg.width, param_dtype=jnp.float32, kernel_init=_torch_linear_init(), name="y_enc")(y_BxT[..., None])
        h = h + jnp.where(ctx_BxT[..., None], hy, 0.0)
        if cfg.positional:
            h = h + self.param("wpe", _init(), (cfg.max_tokens, cfg.width), jnp.float32)[:T][None]
        for i in range(cfg.n_layers):
            h = Block(cfg, name=f"block_{i}")(h, ctx_BxT, n_keys)
        h = nn.LayerNorm(param_dtype=jnp.float32, name="ln_f")(h)
        return nn.Dense(cfg.out_dim, param_dtype=jnp.float32, kernel_init=nn.initializers.zeros_init(),
                        name="head")(h)


def init_params(cfg: PFNConfig, key: jax.Array) -> Any:
    """Float32 parameters of `PFN(cfg)` (independent of x64 mode); `lazy_init`: the initialisers
    alone, the same numbers as `PFN(cfg).init` without running the forward pass."""
    return PFN(cfg).lazy_init(key, jax.ShapeDtypeStruct((1, 2, cfg.d_in), jnp.float32),
                              jax.ShapeDtypeStruct((1, 2), jnp.float32), 1)


def predict(model: PFN, params, x_ctx: Float[Array, "B n d"], y_ctx: Float[Array, "B n"],
            x_q: Float[Array, "B Q d"]) -> Float[Array, "B Q o"]:
    """Head outputs at the queries given the context (n static: keys sliced to the context)."""
    n = x_ctx.shape[1]
    x = jnp.concatenate([x_ctx, x_q], axis=1)
    y = jnp.concatenate([y_ctx, jnp.zeros(x_q.shape[:2], y_ctx.dtype)], axis=1)
    return model.apply(params, x, y, n)[:, n:]


def num_params(params) -> int:
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
