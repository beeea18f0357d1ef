"""GPT-2-style decoder for function-class in-context learning (Garg et al. 2022).

Tokens are the interleaved prompt (x_1, ỹ_1, x_2, ỹ_2, …) with ỹ_i = (y_i, 0, …, 0) ∈ R^d,
T = 2N tokens of width d. The model is

    h⁰ = W_in e_t + b_in + p_t                       read-in Linear(d→D), learned positions p_t
    hˡ = hˡ⁻¹ + Attn(LN(hˡ⁻¹));  hˡ = hˡ + MLP(LN(hˡ))  pre-LN blocks, causal attention, GELU MLP
    out_t = W_outᵀ LN(h^L_t) + b_out                   read-out Linear(D→o), o = ``out_dim``

and Garg et al. read the prediction of y_i at the x_i token (even positions), so prediction i
sees x_1..x_i and y_1..y_{i-1}: i in-context examples. Named sizes (layers, heads, D):
standard (12, 8, 256), small (6, 4, 128), tiny (3, 2, 64).

``out_dim`` = 1 (default, Garg's scalar read-out) returns [B, T]; ``out_dim`` = o > 1 returns
[B, T, o] (vector targets, e.g. next states x_{t+1} ∈ R^d of the sequential classes). The
parameter tree is the same for both up to the read-out kernel's shape [D, o] and bias [o].

Shapes: B batch, T tokens, D width, H heads, K head dim, F MLP width, d token width.
``attention_backend`` "softmax" (default) is the plain-jnp `CausalAttn` below; "linear", "gla",
"moba", "spark_topk" use `models.attention.Attention` (same qkv/out parameter layout).
Parameters are float32 (``param_dtype``) whatever the compute ``dtype`` (float32 | bfloat16);
``param_partition_specs`` shards heads and MLP width over the ``model`` mesh axis
(Megatron-style) and everything else is replicated; the batch goes over ``data``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxtyping import Array, Float

from models import attention, initializers

SIZES = {"standard": (12, 8, 256), "small": (6, 4, 128), "tiny": (3, 2, 64)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_BACKENDS = attention.BACKENDS  # "softmax" here; the others via models.attention.Attention


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of `GPT`; `GPTConfig.named(size, ...)` for the three Garg sizes."""

    d_in: int                 # token width d (the x dimension)
    max_tokens: int           # T_max = 2 · max points (length of the position table)
    n_layers: int = 3
    n_heads: int = 2
    width: int = 64           # D
    mlp_ratio: int = 4        # F = mlp_ratio · D
    dtype: str = "float32"    # compute dtype
    attention_backend: str = "softmax"
    out_dim: int = 1          # o: 1 → output [B, T]; o > 1 → output [B, T, o]

    def __post_init__(self):
        for name in ("d_in", "max_tokens", "n_layers", "n_heads", "width", "mlp_ratio", "out_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: got {v!r}; allowed a positive integer")
        if self.width % self.n_heads:
            raise ValueError(f"width: got {self.width} with n_heads={self.n_heads}; allowed a multiple of n_heads")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: got {self.dtype!r}; allowed {tuple(DTYPES)}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend: got {self.attention_backend!r}; allowed {ATTENTION_BACKENDS}")

    @classmethod
    def named(cls, size: str, *, d_in: int, max_points: int, **kw) -> "GPTConfig":
        if size not in SIZES:
            raise ValueError(f"size: got {size!r}; allowed {tuple(SIZES)}")
        n_layers, n_heads, width = SIZES[size]
        return cls(d_in=d_in, max_tokens=2 * max_points, n_layers=n_layers, n_heads=n_heads, width=width, **kw)


def _dense_init(std: float = 0.02):
    return initializers.normal_init(std)          # = nn.initializers.normal(std), drawn flat (compiles faster)


def _torch_linear_init():
    return initializers.fan_in_uniform_init(1 / 3)   # = nn.initializers.variance_scaling(1/3, "fan_in", "uniform")


class CausalAttn(nn.Module):
    """Multi-head causal softmax attention, plain jnp (backend "softmax", the default)."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: Float[Array, "B T D"], q_stride: int = 1) -> Float[Array, "B Q D"]:
        """Attention outputs at the query positions 0, q_stride, 2·q_stride, … (Q = ⌈T / q_stride⌉);
        keys and values are every position (causal: query t sees keys s ≤ t)."""
        cfg = self.cfg
        H, K = cfg.n_heads, cfg.width // cfg.n_heads
        dt = DTYPES[cfg.dtype]
        T = x_BxTxD.shape[1]
        qkv = nn.DenseGeneral((3, H, K), dtype=dt, param_dtype=jnp.float32, kernel_init=_dense_init(), name="qkv")
        qkv_BxTx3xHxK = qkv(x_BxTxD)
        q_BxQxHxK = qkv_BxTx3xHxK[:, ::q_stride, 0]
        k_BxTxHxK, v_BxTxHxK = qkv_BxTx3xHxK[:, :, 1], qkv_BxTx3xHxK[:, :, 2]
        att_BxHxQxT = jnp.einsum("bqhk,bshk->bhqs", q_BxQxHxK, k_BxTxHxK) / jnp.sqrt(K).astype(dt)
        causal_QxT = jnp.arange(T)[None, :] <= (q_stride * jnp.arange(q_BxQxHxK.shape[1]))[:, None]
        att_BxHxQxT = jnp.where(causal_QxT[None, None], att_BxHxQxT, jnp.finfo(dt).min)
        att_BxHxQxT = jax.nn.softmax(att_BxHxQxT.astype(jnp.float32), axis=-1).astype(dt)
        out_BxTxHxK = jnp.einsum("bhqs,bshk->bqhk", att_BxHxQxT, v_BxTxHxK)
        std = 0.02 / (2 * cfg.n_layers) ** 0.5  # GPT-2's scaled init of residual projections
        out = nn.DenseGeneral(cfg.width, axis=(-2, -1), dtype=dt, param_dtype=jnp.float32,
                              kernel_init=_dense_init(std), name="out")
        return out(out_BxTxHxK)


class Mlp(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        cfg = self.cfg
        dt = DTYPES[cfg.dtype]
        F = cfg.mlp_ratio * cfg.width
        h_BxTxF = nn.Dense(F, dtype=dt, param_dtype=jnp.float32, kernel_init=_dense_init(), name="fc")(x_BxTxD)
        h_BxTxF = nn.gelu(h_BxTxF, approximate=True)
        std = 0.02 / (2 * cfg.n_layers) ** 0.5
        return nn.Dense(cfg.width, dtype=dt, param_dtype=jnp.float32, kernel_init=_dense_init(std), name="proj")(h_BxTxF)


class TBlock(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: Float[Array, "B T D"], q_stride: int = 1) -> Float[Array, "B Q D"]:
        """The block's outputs at positions 0, q_stride, … (all of them for q_stride = 1)."""
        dt = DTYPES[self.cfg.dtype]
        cfg = self.cfg
        h = nn.LayerNorm(dtype=dt, param_dtype=jnp.float32, name="ln1")(x_BxTxD)
        if cfg.attention_backend == "softmax":
            a_BxQxD = CausalAttn(cfg, name="attn")(h, q_stride)
        else:  # same parameter layout (qkv [D,3,H,K], out [H,K,D]; + gate for "gla"); all queries, then strided
            a_BxQxD = attention.Attention(num_heads=cfg.n_heads, backend=cfg.attention_backend, dtype=dt,
                                          param_dtype=jnp.float32, out_init_std=0.02 / (2 * cfg.n_layers) ** 0.5,
                                          name="attn")(h)[:, ::q_stride]
        x_BxQxD = x_BxTxD[:, ::q_stride] + a_BxQxD
        h = nn.LayerNorm(dtype=dt, param_dtype=jnp.float32, name="ln2")(x_BxQxD)
        return x_BxQxD + Mlp(self.cfg, name="mlp")(h)


class GPT(nn.Module):
    """Tokens [B, T, d] → one scalar per token [B, T] (out_dim = 1) or a vector per token
    [B, T, out_dim] (out_dim > 1), float32.

    ``x_only=True`` returns the outputs at the x tokens only (even positions, [B, T/2, …]) — the
    same numbers as ``GPT(tokens)[:, ::2]`` up to float rounding — and computes the last block's
    queries, MLP and read-out there alone (the train steps read only those): 1/(2L) of the
    block FLOPs fewer, 17% for the tiny model."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens_BxTxd: Float[Array, "B T d"], x_only: bool = False) -> Float[Array, "B T *o"]:
        cfg = self.cfg
        dt = DTYPES[cfg.dtype]
        B, T, d = tokens_BxTxd.shape
        if d != cfg.d_in:
            raise ValueError(f"tokens: got width {d}; allowed d_in={cfg.d_in}")
        if T > cfg.max_tokens:
            raise ValueError(f"tokens: got T={T}; allowed T <= max_tokens={cfg.max_tokens}")
        # read-in/out: PyTorch's nn.Linear default scale, Var = 1/(3·fan_in), as in Garg's model (the
        # read-in is not re-initialised by GPT-2); a 0.02 read-in leaves the tokens' content buried
        # under the blocks' outputs and stretches the loss plateau.
        h_BxTxD = nn.Dense(cfg.width, dtype=dt, param_dtype=jnp.float32, kernel_init=_torch_linear_init(),
                           name="read_in")(tokens_BxTxd.astype(dt))
        wpe_TxD = self.param("wpe", _dense_init(0.02), (cfg.max_tokens, cfg.width), jnp.float32)
        h_BxTxD = h_BxTxD + wpe_TxD[:T].astype(dt)[None]
        for i in range(cfg.n_layers):
            last = i == cfg.n_layers - 1
            h_BxTxD = TBlock(cfg, name=f"block_{i}")(h_BxTxD, 2 if (x_only and last) else 1)
        h_BxTxD = nn.LayerNorm(dtype=dt, param_dtype=jnp.float32, name="ln_f")(h_BxTxD)
        out_BxTxo = nn.Dense(cfg.out_dim, dtype=dt, param_dtype=jnp.float32, kernel_init=_torch_linear_init(),
                             name="read_out")(h_BxTxD).astype(jnp.float32)
        return out_BxTxo[..., 0] if cfg.out_dim == 1 else out_BxTxo


def param_specs(cfg: GPTConfig) -> tuple:
    """`GPT(cfg)`'s parameters as `initializers.Declare` specs, in the order its modules make them."""
    D, H, F = cfg.width, cfg.n_heads, cfg.mlp_ratio * cfg.width
    zeros, ones = initializers.constant_init(0.0), initializers.constant_init(1.0)
    resid_std = 0.02 / (2 * cfg.n_layers) ** 0.5

    def dense(name, kernel_shape, bias_shape, init):
        return name, (("kernel", init, kernel_shape), ("bias", zeros, bias_shape))

    def layer_norm(name):
        return name, (("scale", ones, (D,)), ("bias", zeros, (D,)))

    if cfg.attention_backend == "softmax":   # CausalAttn
        attn = (dense("qkv", (D, 3, H, D // H), (3, H, D // H), _dense_init()),
                dense("out", (H, D // H, D), (D,), _dense_init(resid_std)))
    else:
        attn = attention.param_specs(D, num_heads=H, backend=cfg.attention_backend, out_init_std=resid_std)
    block = (layer_norm("ln1"), ("attn", attn), layer_norm("ln2"),
             ("mlp", (dense("fc", (D, F), (F,), _dense_init()), dense("proj", (F, D), (D,), _dense_init(resid_std)))))
    return (dense("read_in", (cfg.d_in, D), (D,), _torch_linear_init()),
            ("wpe", _dense_init(0.02), (cfg.max_tokens, D)),
            *((f"block_{i}", block) for i in range(cfg.n_layers)),
            layer_norm("ln_f"),
            dense("read_out", (D, cfg.out_dim), (cfg.out_dim,), _torch_linear_init()))


def init_params(cfg: GPTConfig, key: jax.Array) -> Any:
    """Float32 parameters of `GPT(cfg)` (independent of x64 mode): those of ``GPT(cfg).init``, bit for bit.

    The initialisers run alone (eagerly) on `param_specs`, with no forward pass: `lazy_init` ran the
    forward's parameter- and shape-only ops eagerly, each compiling a program of its own (3 layers,
    width 64, after `jax.clear_caches()`: 59 → 11 compiles, 1.9 → 0.84 CPU-s; tests/test_model_init.py
    checks the bits against ``GPT(cfg).init``)."""
    return initializers.Declare(param_specs(cfg)).init(key)


def num_params(params) -> int:
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def _spec_for(path, leaf) -> P:
    names = [getattr(k, "key", str(k)) for k in path]
    last2 = tuple(names[-2:])
    if last2 == ("qkv", "kernel"):     # [D, 3, H, K]: heads over model
        return P(None, None, "model", None)
    if last2 == ("qkv", "bias"):       # [3, H, K]
        return P(None, "model", None)
    if last2 == ("out", "kernel"):     # [H, K, D]
        return P("model", None, None)
    if last2 == ("fc", "kernel"):      # [D, F]
        return P(None, "model")
    if last2 == ("fc", "bias"):        # [F]
        return P("model")
    if last2 == ("proj", "kernel"):    # [F, D]
        return P("model", None)
    return P(*([None] * leaf.ndim))


def param_partition_specs(params) -> Any:
    """PartitionSpecs over a ("data", "model") mesh: heads and MLP width split over ``model``."""
    return jax.tree_util.tree_map_with_path(_spec_for, params)


def param_shardings(params, mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings for `param_partition_specs` on ``mesh`` (axes must include ``model``)."""
    if "model" not in mesh.axis_names:
        raise ValueError(f"mesh: got axes {mesh.axis_names}; allowed a mesh with a 'model' axis")
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_partition_specs(params))
