"""The one-layer causal linear self-attention (LSA) of Zheng et al. (2024), autoregressive.

Tokens e_t = (x_t; x_{t−1}) ∈ C^{2d} (x_0 = 0), E_t = [e_1 … e_t]. The prediction of x_{t+1}:

    ŷ_{t+1} = W^{PV} E_t E_tᴴ W^{KQ} e_t / (t − 1)
            = Σ_{i≤t} (W^{PV} e_i) (e_iᴴ W^{KQ} e_t) / (t − 1),      t = 2 … T,

with real parameters W^{KQ} ∈ R^{2d×2d}, W^{PV} ∈ R^{d×2d} (the output is the first d rows of
the paper's 2d×2d W^{PV}; its other rows never reach the prediction). ŷ at t = 1 is 0 (the
sum only holds e_1 = (x_1; 0)); it is excluded from the loss.

The paper's initialisation W^{KQ} = [[0, 0], [a I, 0]] (block W^{KQ}[d:, :d] = aI) and
W^{PV} = [b I, 0] gives e_iᴴ W^{KQ} e_t = a x_{i−1}ᴴ x_t and W^{PV} e_i = b x_i, so

    ŷ_{t+1} = (ab / (t − 1)) Σ_{i=2}^{t} x_i x_{i−1}ᴴ x_t = Ŵ_t x_t,

where Ŵ_t = η Σ_i x_i x_{i−1}ᴴ is one gradient step of size η = ab/(t − 1) from Ŵ = 0 on the
in-context OLS loss ½ Σ_{i=2}^{t} ‖x_i − Ŵ x_{i−1}‖² (``one_step_gd_reference``).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

INITS = ("paper", "random")


def tokens(x_BxTxd: Complex[Array, "B T d"]) -> Complex[Array, "B T 2d"]:
    """e_t = (x_t; x_{t−1}) with x_0 = 0."""
    prev_BxTxd = jnp.pad(x_BxTxd[:, :-1], ((0, 0), (1, 0), (0, 0)))
    return jnp.concatenate([x_BxTxd, prev_BxTxd], axis=-1)


def _kq_init(scheme: str, a: float, sigma: float):
    def init(key, shape, dtype):
        d = shape[0] // 2
        if scheme == "paper":
            return jnp.zeros(shape, dtype).at[d:, :d].set(a * jnp.eye(d, dtype=dtype))
        return sigma * jax.random.normal(key, shape, dtype)
    return init


def _pv_init(scheme: str, b: float, sigma: float):
    def init(key, shape, dtype):
        d = shape[0]
        if scheme == "paper":
            return jnp.zeros(shape, dtype).at[:, :d].set(b * jnp.eye(d, dtype=dtype))
        return sigma * jax.random.normal(key, shape, dtype)
    return init


class CausalLSA(nn.Module):
    """Input x [B, T, d] complex; output ŷ [B, T, d], ŷ[:, t−1] = the prediction of x_{t+1}."""

    d: int
    init_scheme: str = "paper"
    a0: float = 0.1  # paper init: W^{KQ}[d:, :d] = a0·I
    b0: float = 0.1  # paper init: W^{PV}[:, :d] = b0·I
    sigma: float = 0.01  # "random" init: N(0, σ²) entries
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxd: Complex[Array, "B T d"]) -> Complex[Array, "B T d"]:
        if self.init_scheme not in INITS:
            raise ValueError(f"init_scheme: got {self.init_scheme!r}; allowed {INITS}")
        d = self.d
        if x_BxTxd.shape[-1] != d:
            raise ValueError(f"x: got last dim {x_BxTxd.shape[-1]}; allowed d = {d}")
        w_kq = self.param("w_kq", _kq_init(self.init_scheme, self.a0, self.sigma), (2 * d, 2 * d), self.param_dtype)
        w_pv = self.param("w_pv", _pv_init(self.init_scheme, self.b0, self.sigma), (d, 2 * d), self.param_dtype)
        cdt = x_BxTxd.dtype
        e_BxTxE = tokens(x_BxTxd)
        q_BxTxE = jnp.einsum("fe,bte->btf", w_kq.astype(cdt), e_BxTxE)  # W^{KQ} e_t
        v_BxTxd = jnp.einsum("fe,bte->btf", w_pv.astype(cdt), e_BxTxE)  # W^{PV} e_i
        s_BxTxT = jnp.einsum("bie,bte->bti", jnp.conj(e_BxTxE), q_BxTxE)  # [t, i] = e_iᴴ W^{KQ} e_t
        T = x_BxTxd.shape[1]
        causal_TxT = jnp.tril(jnp.ones((T, T), bool))
        s_BxTxT = jnp.where(causal_TxT[None], s_BxTxT, jnp.zeros((), cdt))
        norm_T = jnp.maximum(jnp.arange(T), 1).astype(s_BxTxT.real.dtype)  # t − 1 for t = 1 … T
        return jnp.einsum("bti,bif->btf", s_BxTxT, v_BxTxd) / norm_T[None, :, None]


def reduced_params(params) -> dict[str, Float[Array, ""]]:
    """a, b = the mean diagonals of W^{KQ}[d:, :d] and W^{PV}[:, :d]; ab; off-pattern sizes.

    ``off_kq`` / ``off_pv``: Frobenius norms of everything outside those two diagonals,
    relative to ‖aI‖_F, ‖bI‖_F (0 along the one-step-GD family).
    """
    p = params["params"] if "params" in params else params
    w_kq, w_pv = p["w_kq"], p["w_pv"]
    d = w_pv.shape[0]
    diag_kq = jnp.diagonal(w_kq[d:, :d])
    diag_pv = jnp.diagonal(w_pv[:, :d])
    a, b = jnp.mean(diag_kq), jnp.mean(diag_pv)
    off_kq = jnp.sqrt(jnp.sum(jnp.square(w_kq)) - jnp.sum(jnp.square(diag_kq)))
    off_pv = jnp.sqrt(jnp.sum(jnp.square(w_pv)) - jnp.sum(jnp.square(diag_pv)))
    return {"a": a, "b": b, "ab": a * b,
            "off_kq": off_kq / (jnp.linalg.norm(diag_kq) + 1e-30),
            "off_pv": off_pv / (jnp.linalg.norm(diag_pv) + 1e-30)}


def one_step_gd_reference(x_BxTxd: Complex[Array, "B T d"], c) -> Complex[Array, "B T d"]:
    """ŷ_{t+1} = (c/(t−1)) Σ_{i=2}^{t} x_i x_{i−1}ᴴ x_t (0 at t = 1), plain jnp, O(T²d)."""
    T = x_BxTxd.shape[1]
    gram_BxTxT = jnp.einsum("bie,bte->bti", jnp.conj(x_BxTxd), x_BxTxd)  # [t, i] = x_iᴴ x_t
    # term i uses x_{i−1}ᴴ x_t: shift the key index by one; valid for 2 ≤ i ≤ t.
    gram_prev_BxTxT = jnp.pad(gram_BxTxT[:, :, :-1], ((0, 0), (0, 0), (1, 0)))
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    w_BxTxT = jnp.where(causal_TxT[None], gram_prev_BxTxT, 0)
    norm_T = jnp.maximum(jnp.arange(T), 1).astype(x_BxTxd.real.dtype)
    return c * jnp.einsum("bti,bif->btf", w_BxTxT, x_BxTxd) / norm_T[None, :, None]


def ar_loss(yhat_BxTxd: Complex[Array, "B T d"], x_BxTxd: Complex[Array, "B T d"]) -> Float[Array, ""]:
    """½ mean_{b, t=2…T−1} ‖ŷ_{t+1} − x_{t+1}‖² (sum over the d coordinates).

    ŷ[:, t−1] predicts x[:, t]; positions t = 2 … T−1 are those with a target and t − 1 ≥ 1.
    """
    err_BxSxd = yhat_BxTxd[:, 1:-1] - x_BxTxd[:, 2:]
    return 0.5 * jnp.mean(jnp.sum(jnp.square(jnp.abs(err_BxSxd)), axis=-1))
