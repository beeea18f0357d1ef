"""The single-layer linear self-attention (LSA) of Zhang, Frei & Bartlett (2023).

Prompt matrix (one per prompt and query), N context columns and the query column:

    E = [[x_1 … x_N  x_q],
         [y_1 … y_N  0  ]]                     ∈ R^{(d+1)×(N+1)}
    f(E) = E + W^{PV} E (Eᵀ W^{KQ} E) / N,      ŷ = f(E)[d+1, N+1]

so with b = W^{PV}[d, :] (last row), e_i = (x_i, y_i), e_q = (x_q, 0) and S = Σ_{i≤N} e_i e_iᵀ:

    ŷ = bᵀ (S + e_q e_qᵀ) W^{KQ} e_q / N.

Both W^{PV} and W^{KQ} are fully trainable. Under the paper's initialisation only
u = W^{PV}[d, d] and U = W^{KQ}[:d, :d] are non-zero and stay so along gradient flow, and then
ŷ = u · hᵀ U x_q with h = (1/N) Σ y_i x_i (`reduced_params`, `effective_V`).
Several queries per prompt are several prompts sharing their context (each its own E).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

INITS = ("paper", "random")


def paper_init(sigma: float):
    """Initialisers for (W^{PV}, W^{KQ}) of the paper: σ[[0,0],[0,1]] and σ[[ΘΘᵀ,0],[0,0]], ‖ΘΘᵀ‖_F = 1."""

    def pv(key, shape, dtype):
        del key
        return jnp.zeros(shape, dtype).at[-1, -1].set(sigma)

    def kq(key, shape, dtype):
        d = shape[0] - 1
        theta_dxd = jax.random.normal(key, (d, d), dtype)
        tt_dxd = theta_dxd @ theta_dxd.T
        tt_dxd = tt_dxd / jnp.linalg.norm(tt_dxd)
        return jnp.zeros(shape, dtype).at[:d, :d].set(sigma * tt_dxd)

    return pv, kq


class LSA(nn.Module):
    """ZFB's one-layer LSA. Inputs x_ctx [B, N, d], y_ctx [B, N], x_q [B, Q, d]; output ŷ [B, Q]."""

    d: int
    init_scheme: str = "paper"
    sigma: float = 0.1
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.init_scheme == "paper":
            pv_init, kq_init = paper_init(self.sigma)
        elif self.init_scheme == "random":
            pv_init = kq_init = nn.initializers.normal(self.sigma)
        else:
            raise ValueError(f"init_scheme: got {self.init_scheme!r}; allowed: {INITS}")
        e = self.d + 1
        self.w_pv = self.param("W_PV", pv_init, (e, e), self.param_dtype)
        self.w_kq = self.param("W_KQ", kq_init, (e, e), self.param_dtype)

    def weights(self):
        """(W^{PV}, W^{KQ}): ``model.init(key, method=LSA.weights)`` runs the initialisers alone."""
        return self.w_pv, self.w_kq

    def __call__(
        self,
        x_ctx: Float[Array, "B N d"],
        y_ctx: Float[Array, "B N"],
        x_q: Float[Array, "B Q d"],
    ) -> Float[Array, "B Q"]:
        w_pv, w_kq = self.w_pv, self.w_kq
        n = x_ctx.shape[1]
        e_BxNxE = jnp.concatenate([x_ctx, y_ctx[..., None]], axis=-1)
        eq_BxQxE = jnp.concatenate([x_q, jnp.zeros_like(x_q[..., :1])], axis=-1)
        s_BxExE = jnp.einsum("bni,bnj->bij", e_BxNxE, e_BxNxE)
        b_E = w_pv[-1]
        kq_BxQxE = jnp.einsum("ij,bqj->bqi", w_kq, eq_BxQxE)          # W^{KQ} e_q
        ctx_BxQ = jnp.einsum("i,bij,bqj->bq", b_E, s_BxExE, kq_BxQxE)  # bᵀ S W^{KQ} e_q
        self_BxQ = jnp.einsum("i,bqi->bq", b_E, eq_BxQxE) * jnp.einsum("bqi,bqi->bq", eq_BxQxE, kq_BxQxE)
        return (ctx_BxQ + self_BxQ) / n


def reduced_params(params) -> tuple[Float[Array, ""], Float[Array, "d d"]]:
    """(u, U) = (W^{PV}[d, d], W^{KQ}[:d, :d]), the coordinates ZFB's gradient flow lives in."""
    p = params["params"] if "params" in params else params
    return p["W_PV"][-1, -1], p["W_KQ"][:-1, :-1]


def off_subspace_norm(params) -> Float[Array, ""]:
    """‖θ − θ_reduced‖: the weight outside (u, U), zero along the paper's gradient flow."""
    p = params["params"] if "params" in params else params
    pv = p["W_PV"].at[-1, -1].set(0.0)
    kq = p["W_KQ"].at[:-1, :-1].set(0.0)
    return jnp.sqrt(jnp.sum(pv**2) + jnp.sum(kq**2))


def effective_V(params) -> Float[Array, "d d"]:
    """V = u·U, so that ŷ = hᵀ V x_q on the paper's subspace."""
    u, U = reduced_params(params)
    return u * U
