"""Step-by-step decoding of `models.gpt.GPT` with a key/value cache (same parameters, same outputs).

`decode_step(cfg, params, cache, token_Bxd, pos)` feeds one token at position ``pos`` (traced) to
every layer, appends its keys and values to the cache, and returns the read-out at that
position; feeding tokens 0..t one by one gives the outputs of `GPT.apply` on the prefix (float
round-off aside), at O(t) cost per token instead of a full forward pass. Used by online bandit
evaluation (`ictl.bandits.policy`), where each action depends on the model's previous ones.
Backends: "softmax" (`gpt.CausalAttn`: softmax(q·k/√K)) and "relu" (`attention._relu`:
ReLU(q·k)/(pos + 1)); LayerNorm, the MLP and the projections are the GPT's own Flax modules
applied to the stored parameters.

Shapes: B batch, S cache length (cfg.max_tokens), L layers, H heads, K head dim, D width.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from models.gpt import DTYPES, GPTConfig, Mlp

DECODE_BACKENDS = ("softmax", "relu")


class Cache(NamedTuple):
    k: Float[Array, "L B S H K"]
    v: Float[Array, "L B S H K"]


def init_cache(cfg: GPTConfig, batch: int) -> Cache:
    if cfg.attention_backend not in DECODE_BACKENDS:
        raise ValueError(f"attention_backend: got {cfg.attention_backend!r}; allowed {DECODE_BACKENDS} for decoding")
    H, K = cfg.n_heads, cfg.width // cfg.n_heads
    z = jnp.zeros((cfg.n_layers, batch, cfg.max_tokens, H, K), DTYPES[cfg.dtype])
    return Cache(z, z)


def _apply(module: nn.Module, p, x):
    return module.apply({"params": p}, x)


def decode_step(cfg: GPTConfig, params: Any, cache: Cache, token_Bxd: Float[Array, "B d"],
                pos: Int[Array, ""]) -> tuple[Float[Array, "B *o"], Cache]:
    """Output at position ``pos`` given the cached positions < pos and this token."""
    p = params["params"]
    dt = DTYPES[cfg.dtype]
    H, K, S = cfg.n_heads, cfg.width // cfg.n_heads, cfg.max_tokens
    ln = nn.LayerNorm(dtype=dt, param_dtype=jnp.float32)
    h_BxD = _apply(nn.Dense(cfg.width, dtype=dt, param_dtype=jnp.float32), p["read_in"], token_Bxd.astype(dt))
    h_BxD = h_BxD + jax.lax.dynamic_index_in_dim(p["wpe"], pos, keepdims=False).astype(dt)[None]
    seen_S = jnp.arange(S) <= pos
    k_all, v_all = cache
    zero = jnp.zeros((), jnp.int32)
    for i in range(cfg.n_layers):
        b = p[f"block_{i}"]
        x_BxD = _apply(ln, b["ln1"], h_BxD)
        qkv_Bx3xHxK = _apply(nn.DenseGeneral((3, H, K), dtype=dt, param_dtype=jnp.float32), b["attn"]["qkv"], x_BxD)
        q_BxHxK, k_BxHxK, v_BxHxK = (qkv_Bx3xHxK[:, j] for j in range(3))
        at = (jnp.asarray(i, jnp.int32), zero, jnp.asarray(pos, jnp.int32), zero, zero)
        k_all = jax.lax.dynamic_update_slice(k_all, k_BxHxK[None, :, None].astype(k_all.dtype), at)
        v_all = jax.lax.dynamic_update_slice(v_all, v_BxHxK[None, :, None].astype(v_all.dtype), at)
        k_BxSxHxK, v_BxSxHxK = k_all[i], v_all[i]
        s_BxHxS = jnp.einsum("bhk,bshk->bhs", q_BxHxK.astype(jnp.float32), k_BxSxHxK.astype(jnp.float32))
        if cfg.attention_backend == "softmax":
            s_BxHxS = jnp.where(seen_S[None, None], s_BxHxS / jnp.sqrt(jnp.float32(K)), -jnp.inf)
            w_BxHxS = jax.nn.softmax(s_BxHxS, axis=-1)
        else:
            w_BxHxS = jax.nn.relu(s_BxHxS) * seen_S[None, None] / (pos + 1).astype(jnp.float32)
        o_BxHxK = jnp.einsum("bhs,bshk->bhk", w_BxHxS, v_BxSxHxK.astype(jnp.float32)).astype(dt)
        h_BxD = h_BxD + _apply(nn.DenseGeneral(cfg.width, axis=(-2, -1), dtype=dt, param_dtype=jnp.float32),
                               b["attn"]["out"], o_BxHxK)
        h_BxD = h_BxD + _apply(Mlp(cfg), b["mlp"], _apply(ln, b["ln2"], h_BxD))
    h_BxD = _apply(ln, p["ln_f"], h_BxD)
    out_Bxo = _apply(nn.Dense(cfg.out_dim, dtype=dt, param_dtype=jnp.float32), p["read_out"], h_BxD)
    out_Bxo = out_Bxo.astype(jnp.float32)
    return (out_Bxo[:, 0] if cfg.out_dim == 1 else out_Bxo), Cache(k_all, v_all)
