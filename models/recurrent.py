"""Recurrent sequence classifiers for the state-size comparison (Kirsch et al. 2022, Sec. 4.3).

Both map tokens [B, T, d] to logits [B, T, o] causally, through ``n_layers`` pre-LN residual
recurrent layers between a read-in Linear(d→D) and a read-out LN + Linear(D→o):

    lstm     the standard LSTM cell (flax `OptimizedLSTMCell`, hidden = D) with a residual; the
             state it carries between tokens is (c_t, h_t): 2D floats per layer.
    matrix   a matrix-memory ("outer-product") LSTM with H heads of size K = D / H:
                 q_t, k_t, v_t = W_q u_t, W_k u_t / √K, W_v u_t          (per head, u_t = LN(h))
                 f_t, i_t = σ(w_f·u_t + b_f), σ(w_i·u_t + b_i)           (one scalar gate per head)
                 C_t = f_t C_{t−1} + i_t v_t k_tᵀ    n_t = f_t n_{t−1} + i_t k_t
                 y_t = σ(W_o u_t) ⊙ C_t q_t / max(|n_tᵀ q_t|, 1)          (output gate, normaliser)
             the state is (C_t, n_t): H·K² + H·K floats per layer, K× more than the LSTM's at the
             same width, with about the same number of parameters (4D² + D² vs 4·2D² + ... below).

Parameters are float32 whatever the x64 mode (``param_dtype``); the scan runs over T in
`jax.lax.scan` (flax `nn.scan` / `nn.RNN`). Hand-written (the matrix cell) because flax ships
no outer-product LSTM; the LSTM is flax's cell.

Shapes: B batch, T tokens, d token width, D width, H heads, K head size, o outputs.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

KINDS = ("lstm", "matrix")


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
    d_in: int
    kind: str = "lstm"
    width: int = 64          # D
    n_layers: int = 1
    n_heads: int = 4         # matrix only: H, K = D / H
    out_dim: int = 10

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: got {self.kind!r}; allowed {KINDS}")
        for name in ("d_in", "width", "n_layers", "n_heads", "out_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: got {v!r}; allowed a positive integer")
        if self.kind == "matrix" and self.width % self.n_heads:
            raise ValueError(f"width: got {self.width} with n_heads={self.n_heads}; allowed a multiple of n_heads")

    def state_floats(self) -> int:
        """Floats carried from one token to the next (all layers)."""
        D, H = self.width, self.n_heads
        per_layer = 2 * D if self.kind == "lstm" else H * (D // H) ** 2 + D
        return self.n_layers * per_layer


class MatrixCell(nn.Module):
    """One step of the matrix-memory LSTM; carry = (C [B, H, K, K], n [B, H, K])."""

    width: int
    n_heads: int

    @nn.compact
    def __call__(self, carry, u_BxD):
        H, K = self.n_heads, self.width // self.n_heads
        c_BxHxKxK, n_BxHxK = carry
        dense = lambda feats, name, **kw: nn.DenseGeneral(feats, param_dtype=jnp.float32, name=name, **kw)
        q_BxHxK = dense((H, K), "q")(u_BxD)
        k_BxHxK = dense((H, K), "k")(u_BxD) / jnp.sqrt(K)
        v_BxHxK = dense((H, K), "v")(u_BxD)
        gates_Bx2H = dense(2 * H, "gates", bias_init=lambda k, s, d: jnp.concatenate(
            [3.0 * jnp.ones(s[0] // 2, d), jnp.zeros(s[0] // 2, d)]))(u_BxD)  # forget bias 3: remember
        f_BxH, i_BxH = jax.nn.sigmoid(gates_Bx2H[:, :H]), jax.nn.sigmoid(gates_Bx2H[:, H:])
        c_BxHxKxK = f_BxH[..., None, None] * c_BxHxKxK + i_BxH[..., None, None] * jnp.einsum(
            "bhv,bhk->bhvk", v_BxHxK, k_BxHxK)
        n_BxHxK = f_BxH[..., None] * n_BxHxK + i_BxH[..., None] * k_BxHxK
        num_BxHxK = jnp.einsum("bhvk,bhk->bhv", c_BxHxKxK, q_BxHxK)
        den_BxH = jnp.maximum(jnp.abs(jnp.einsum("bhk,bhk->bh", n_BxHxK, q_BxHxK)), 1.0)
        o_BxD = jax.nn.sigmoid(dense(self.width, "o_gate")(u_BxD))
        y_BxD = o_BxD * (num_BxHxK / den_BxH[..., None]).reshape(u_BxD.shape[0], self.width)
        return (c_BxHxKxK, n_BxHxK), y_BxD


class MatrixLayer(nn.Module):
    width: int
    n_heads: int

    @nn.compact
    def __call__(self, u_BxTxD):
        B = u_BxTxD.shape[0]
        H, K = self.n_heads, self.width // self.n_heads
        carry = (jnp.zeros((B, H, K, K), jnp.float32), jnp.zeros((B, H, K), jnp.float32))
        scan = nn.scan(MatrixCell, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
        _, y_BxTxD = scan(self.width, self.n_heads, name="cell")(carry, u_BxTxD)
        return nn.Dense(self.width, param_dtype=jnp.float32, name="proj")(y_BxTxD)


class RecurrentClassifier(nn.Module):
    """Tokens [B, T, d] → logits [B, T, out_dim] (float32), causal by construction."""

    cfg: RecurrentConfig

    @nn.compact
    def __call__(self, tokens_BxTxd: Float[Array, "B T d"]) -> Float[Array, "B T o"]:
        cfg = self.cfg
        if tokens_BxTxd.shape[-1] != cfg.d_in:
            raise ValueError(f"tokens: got width {tokens_BxTxd.shape[-1]}; allowed d_in={cfg.d_in}")
        h_BxTxD = nn.Dense(cfg.width, param_dtype=jnp.float32, name="read_in")(tokens_BxTxd.astype(jnp.float32))
        for i in range(cfg.n_layers):
            u_BxTxD = nn.LayerNorm(param_dtype=jnp.float32, name=f"ln_{i}")(h_BxTxD)
            if cfg.kind == "lstm":
                y_BxTxD = nn.RNN(nn.OptimizedLSTMCell(cfg.width, param_dtype=jnp.float32), name=f"lstm_{i}")(u_BxTxD)
            else:
                y_BxTxD = MatrixLayer(cfg.width, cfg.n_heads, name=f"matrix_{i}")(u_BxTxD)
            h_BxTxD = h_BxTxD + y_BxTxD
        h_BxTxD = nn.LayerNorm(param_dtype=jnp.float32, name="ln_f")(h_BxTxD)
        return nn.Dense(cfg.out_dim, param_dtype=jnp.float32, name="read_out")(h_BxTxD).astype(jnp.float32)


def init_params(cfg: RecurrentConfig, key: jax.Array, *, seq_len: int = 2):
    return RecurrentClassifier(cfg).init(key, jnp.zeros((1, seq_len, cfg.d_in), jnp.float32))
