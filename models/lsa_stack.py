"""A K-layer linear-self-attention-only transformer (von Oswald et al. 2022).

Tokens (T = N + Q rows of width D = d + 1): the N context rows e_i = (x_i, y_i), then Q query
rows e_q = (x_q, 0). Each layer l updates every row i with the context rows j ≤ N only:

    e_i ← e_i + P_l · (1/N) Σ_{j≤N} (W_V,l e_j) (W_K,l e_j)ᵀ (W_Q,l e_i)

Convention (the paper's code, `include_query=False`): keys and values come from the context
rows, queries from all rows, so a query never attends to itself nor to another query (Q queries
in one prompt are Q independent predictions) while the context rows are updated too — that is
what lets K layers run K steps of GD. Read-out: ŷ = −(y-slot of the query row).

In effective form, A_l = W_Kᵀ W_Q and B_l = P W_V, a layer is e_i ← e_i + B_l Ĉ A_l e_i with
Ĉ = (1/N) Σ_j e_j e_jᵀ (how it is computed: no T×N attention matrix is formed);
(A, B) ↦ (cA, B/c) leaves it unchanged (`effective_matrices`).

`gd_construction_params` gives weights of this module that run K steps of gradient descent,
from w₀ = 0, with rate η on the mean loss L(w) = 1/(2N) Σ_i (wᵀx_i − y_i)² (rate η/N on the
summed loss ½Σ(wᵀx_i − y_i)²): W_Q = W_K = [[I_d, 0], [0, 0]], W_V = [[−γ I_d, 0], [0, −η]],
P = I. The y-slot of context row i then holds the residual y_i − w_kᵀx_i and that of the query
−w_kᵀx_q. With γ ≠ 0 (GD++) each layer also maps every x ← (I − γ Ĉ_x) x, Ĉ_x = (1/N) Σ x_j x_jᵀ
(the issue's γ' in (I − γ' Σ_j x_j x_jᵀ) is γ/N).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

_NAMES = ("W_Q", "W_K", "W_V", "P")


def build_tokens(
    x_ctx: Float[Array, "B N d"], y_ctx: Float[Array, "B N"], x_q: Float[Array, "B Q d"]
) -> Float[Array, "B T D"]:
    """[e_1 … e_N, e_q1 … e_qQ] with e_i = (x_i, y_i) and e_q = (x_q, 0); T = N + Q, D = d + 1."""
    ctx_BxNxD = jnp.concatenate([x_ctx, y_ctx[..., None]], axis=-1)
    q_BxQxD = jnp.concatenate([x_q, jnp.zeros_like(x_q[..., :1])], axis=-1)
    return jnp.concatenate([ctx_BxNxD, q_BxQxD], axis=1)


class LSALayer(nn.Module):
    """One LSA layer on tokens [B, T, D] whose first ``n_ctx`` rows are the context."""

    width: int
    init_scale: float = 0.1
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, e_BxTxD: Float[Array, "B T D"], n_ctx: int) -> Float[Array, "B T D"]:
        init = nn.initializers.normal(self.init_scale, dtype=self.param_dtype)
        shape = (self.width, self.width)
        w_q, w_k, w_v, p = (self.param(name, init, shape, self.param_dtype) for name in _NAMES)
        ctx_BxNxD = e_BxTxD[:, :n_ctx]
        # Σ_j (W_V e_j)(W_K e_j)ᵀ(W_Q e_i) = W_V C W_Kᵀ W_Q e_i with C = Σ_j e_j e_jᵀ: the D×D
        # form costs O(B(N + T) D²) instead of the T×N attention matrix's O(B T N D)·4.
        c_BxDxD = jnp.einsum("bni,bnj->bij", ctx_BxNxD, ctx_BxNxD) / n_ctx
        m_BxDxD = jnp.einsum("ij,bjk,kl->bil", p @ w_v, c_BxDxD, w_k.T @ w_q)
        return e_BxTxD + jnp.einsum("bij,btj->bti", m_BxDxD, e_BxTxD)


class LSAStack(nn.Module):
    """K LSA layers (weights shared across layers when ``shared``) and ŷ = −(query y-slot).

    Inputs x_ctx [B, N, d], y_ctx [B, N], x_q [B, Q, d]; output ŷ [B, Q] (or, with
    ``all_layers=True``, [K, B, Q]: the read-out after every layer). ``init_scale`` is the
    standard deviation of the i.i.d. normal initialisation of every W_Q, W_K, W_V, P entry.
    """

    d: int
    num_layers: int = 1
    shared: bool = False
    init_scale: float = 0.1
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.num_layers < 1:
            raise ValueError(f"num_layers: got {self.num_layers!r}; allowed an integer ≥ 1")
        n_mods = 1 if self.shared else self.num_layers
        self.layers = [LSALayer(self.d + 1, self.init_scale, self.param_dtype, name=f"layer_{l}")
                       for l in range(n_mods)]

    def __call__(
        self,
        x_ctx: Float[Array, "B N d"],
        y_ctx: Float[Array, "B N"],
        x_q: Float[Array, "B Q d"],
        all_layers: bool = False,
    ) -> Float[Array, "B Q"] | Float[Array, "K B Q"]:
        if x_ctx.shape[-1] != self.d or x_q.shape[-1] != self.d:
            raise ValueError(f"x_ctx, x_q: last dimension {x_ctx.shape[-1]}, {x_q.shape[-1]}; allowed d={self.d}")
        n_ctx = x_ctx.shape[1]
        e_BxTxD = build_tokens(x_ctx, y_ctx, x_q)
        reads = []
        for l in range(self.num_layers):
            e_BxTxD = self.layers[0 if self.shared else l](e_BxTxD, n_ctx)
            reads.append(-e_BxTxD[:, n_ctx:, -1])
        return jnp.stack(reads) if all_layers else reads[-1]


def _per_layer(name: str, value, num_layers: int, shared: bool) -> list[float]:
    vals = list(np.atleast_1d(np.asarray(value, np.float64)))
    if len(vals) == 1:
        return vals * (1 if shared else num_layers)
    if shared or len(vals) != num_layers:
        raise ValueError(f"{name}: got {len(vals)} values; allowed a scalar, or num_layers={num_layers} "
                         "values when shared=False")
    return vals


def gd_construction_params(
    d: int,
    *,
    eta: float | Sequence[float],
    num_layers: int,
    gamma: float | Sequence[float] | None = None,
    shared: bool = False,
    dtype: Any = jnp.float32,
) -> dict:
    """Params of `LSAStack(d, num_layers, shared)` that run K = num_layers steps of GD (GD++).

    Layer l: W_Q = W_K = [[I_d, 0], [0, 0]], W_V = [[−γ_l I_d, 0], [0, −η_l]], P = I_{d+1}, so
    with w₀ = 0: w_{l+1} = w_l − η_l ∇L(w_l), L(w) = 1/(2N) Σ_i (wᵀx_i − y_i)², and (GD++) every
    x ← (I − γ_l (1/N) Σ_j x_j x_jᵀ) x after the step. ŷ after K layers = w_Kᵀ x_q (plain GD).
    ``eta``/``gamma``: scalars, or one value per layer when not shared.
    """
    if d < 1:
        raise ValueError(f"d: got {d!r}; allowed an integer ≥ 1")
    if num_layers < 1:
        raise ValueError(f"num_layers: got {num_layers!r}; allowed an integer ≥ 1")
    etas = _per_layer("eta", eta, num_layers, shared)
    gammas = _per_layer("gamma", 0.0 if gamma is None else gamma, num_layers, shared)
    proj = np.zeros((d + 1, d + 1))
    proj[:d, :d] = np.eye(d)
    params = {}
    for l, (eta_l, gamma_l) in enumerate(zip(etas, gammas)):
        w_v = np.diag(np.r_[np.full(d, -gamma_l), -eta_l])
        params[f"layer_{l}"] = {"W_Q": proj, "W_K": proj, "W_V": w_v, "P": np.eye(d + 1)}
    return {"params": _cast(params, dtype)}


def _cast(tree, dtype):
    return {k: _cast(v, dtype) if isinstance(v, dict) else jnp.asarray(v, dtype) for k, v in tree.items()}


def effective_matrices(params) -> list[tuple[Float[Array, "D D"], Float[Array, "D D"]]]:
    """[(A_l, B_l)] with A_l = W_Kᵀ W_Q (attention bilinear form) and B_l = P W_V, layer order."""
    p = params["params"] if "params" in params else params
    names = sorted(p, key=lambda s: int(s.split("_")[-1]))
    return [(p[n]["W_K"].T @ p[n]["W_Q"], p[n]["P"] @ p[n]["W_V"]) for n in names]


def params_from_effective(mats: Sequence[tuple[Array, Array]]) -> dict:
    """Params realising the effective pairs: W_Q = A, W_K = I, W_V = B, P = I (same function)."""
    out = {}
    for l, (a, b) in enumerate(mats):
        eye = jnp.eye(a.shape[0], dtype=a.dtype)
        out[f"layer_{l}"] = {"W_Q": a, "W_K": eye, "W_V": b, "P": eye}
    return {"params": out}


def align_gauge(params_tf, params_gd) -> list[tuple[Array, Array]]:
    """The trained effective pairs (cA, B/c), one c per layer, scaled to match the construction.

    (A, B) ↦ (cA, B/c) leaves an LSA layer unchanged; c = ±√(‖A_gd‖‖B_tf‖ / (‖A_tf‖‖B_gd‖))
    makes ‖cA_tf‖/‖A_gd‖ = ‖B_tf/c‖/‖B_gd‖, with the sign of ⟨A_tf, A_gd⟩ (Frobenius norms).
    """
    out = []
    for (a_t, b_t), (a_g, b_g) in zip(effective_matrices(params_tf), effective_matrices(params_gd), strict=True):
        c = jnp.sqrt(jnp.linalg.norm(a_g) * jnp.linalg.norm(b_t) / (jnp.linalg.norm(a_t) * jnp.linalg.norm(b_g)))
        c = jnp.where(jnp.sum(a_t * a_g) < 0, -c, c)
        out.append((c * a_t, b_t / c))
    return out


def interpolated_params(params_tf, params_gd, t: float) -> dict:
    """Params with effective pairs (1 − t)·(gauge-aligned trained) + t·(construction), per layer."""
    mats = [((1 - t) * a_t + t * a_g, (1 - t) * b_t + t * b_g)
            for (a_t, b_t), (a_g, b_g) in zip(align_gauge(params_tf, params_gd), effective_matrices(params_gd))]
    return params_from_effective(mats)


def interpolation_losses(loss_of_params: Callable[[dict], float], params_tf, params_gd,
                         ts: Sequence[float]) -> np.ndarray:
    """[loss_of_params(interpolated_params(θ_TF, θ_GD, t)) for t in ts]."""
    return np.array([float(loss_of_params(interpolated_params(params_tf, params_gd, t))) for t in ts])
