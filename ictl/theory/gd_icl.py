"""Gradient descent as in-context learning (von Oswald et al. 2022): explicit GD / GD++, the
best step size, and the metrics comparing a trained LSA with its GD construction.

Conventions (shared with `models.lsa_stack`, which holds the construction's weights and the
gauge alignment / weight interpolation between a trained stack and it; theory does not import
models): prompt (X, y) with X ∈ R^{N×d}, query x_q; GD from
w₀ = 0 on the mean loss L(w) = 1/(2N) Σ_i (wᵀx_i − y_i)² with rate η, i.e.

    w_{k+1} = w_k + (η/N) Σ_i (y_i − w_kᵀx_i) x_i,     ŷ_K = w_Kᵀ x_q,

which is rate η/N on the summed loss ½Σ(wᵀx_i − y_i)². GD++ (the construction with a curvature
correction) also maps every input, context and query, after each step:
x ← (I − γ Ĉ_x) x with Ĉ_x = (1/N) Σ_j x_j x_jᵀ of the current inputs.

Public functions that compute theory enter `jax.enable_x64(True)` and return float64.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array, Float

from ictl.tasks.uniform_linear import sample_uniform_linear_prompts

PredFn = Callable[[Array, Array, Array], Array]  # (x_ctx [B,N,d], y_ctx [B,N], x_q [B,Q,d]) -> ŷ [B,Q]


def _steps(name, value, num_steps):
    arr = jnp.atleast_1d(jnp.asarray(value))
    if arr.shape[0] == 1:
        return jnp.broadcast_to(arr, (num_steps,))
    if arr.shape != (num_steps,):
        raise ValueError(f"{name}: got shape {arr.shape}; allowed a scalar or num_steps={num_steps} values")
    return arr


def gd_plus_plus_forward(
    x_ctx: Float[Array, "B N d"],
    y_ctx: Float[Array, "B N"],
    x_q: Float[Array, "B Q d"],
    eta_K: Float[Array, "K"],
    gamma_K: Float[Array, "K"],
) -> Float[Array, "B Q"]:
    """GD++ in residual form, any dtype, differentiable (used by models that meta-learn η, γ).

    r_i ← r_i − (η_k/N) Σ_j r_j x_jᵀx_i,  s ← s − (η_k/N) Σ_j r_j x_jᵀx_q  (r = y, s = 0 at start),
    then X ← X (I − γ_k Ĉ_x), x_q ← (I − γ_k Ĉ_x) x_q; returns ŷ = −s. With γ = 0 this is GD.
    """
    n = x_ctx.shape[1]
    r_BxN, s_BxQ = y_ctx, jnp.zeros(x_q.shape[:2], y_ctx.dtype)
    for k in range(eta_K.shape[0]):
        g_Bxd = jnp.einsum("bn,bnd->bd", r_BxN, x_ctx) / n          # (1/N) Σ_j r_j x_j
        r_BxN = r_BxN - eta_K[k] * jnp.einsum("bd,bnd->bn", g_Bxd, x_ctx)
        s_BxQ = s_BxQ - eta_K[k] * jnp.einsum("bd,bqd->bq", g_Bxd, x_q)
        c_Bxdxd = jnp.einsum("bni,bnj->bij", x_ctx, x_ctx) / n
        x_ctx = x_ctx - gamma_K[k] * jnp.einsum("bij,bnj->bni", c_Bxdxd, x_ctx)
        x_q = x_q - gamma_K[k] * jnp.einsum("bij,bqj->bqi", c_Bxdxd, x_q)
    return -s_BxQ


_gdpp_jit = jax.jit(gd_plus_plus_forward)


def _gd_w_recursion(x_ctx, y_ctx, x_q, eta_K):
    n = x_ctx.shape[1]
    w_Bxd = jnp.zeros((x_ctx.shape[0], x_ctx.shape[2]), x_ctx.dtype)
    for k in range(eta_K.shape[0]):
        res_BxN = jnp.einsum("bnd,bd->bn", x_ctx, w_Bxd) - y_ctx
        w_Bxd = w_Bxd - eta_K[k] * jnp.einsum("bnd,bn->bd", x_ctx, res_BxN) / n
    return jnp.einsum("bqd,bd->bq", x_q, w_Bxd)


_gd_w_jit = jax.jit(_gd_w_recursion)


def gd_predictions(
    x_ctx: Float[Array, "B N d"], y_ctx: Float[Array, "B N"], x_q: Float[Array, "B Q d"],
    *, eta: float | Sequence[float], num_steps: int,
) -> Float[Array, "B Q"]:
    """ŷ = w_Kᵀx_q after K = num_steps GD steps w ← w − η (1/N) Xᵀ(Xw − y) from w₀ = 0 (float64)."""
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (x_ctx, y_ctx, x_q)]
        return _gd_w_jit(*args, _steps("eta", jnp.asarray(eta, jnp.float64), num_steps))


def gdpp_predictions(
    x_ctx: Float[Array, "B N d"], y_ctx: Float[Array, "B N"], x_q: Float[Array, "B Q d"],
    *, eta: float | Sequence[float], gamma: float | Sequence[float], num_steps: int,
) -> Float[Array, "B Q"]:
    """GD++ predictions (see `gd_plus_plus_forward`) in float64; gamma = 0 gives plain GD."""
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (x_ctx, y_ctx, x_q)]
        eta_K = _steps("eta", jnp.asarray(eta, jnp.float64), num_steps)
        gamma_K = _steps("gamma", jnp.asarray(gamma, jnp.float64), num_steps)
        return _gdpp_jit(*args, eta_K, gamma_K)


def _uniform_moments(d, n_ctx, x_range):
    """(σ², E tr S, E tr S²) for S = Σ_{i≤N} x_i x_iᵀ, x ~ U(−a, a)^d (σ² = a²/3, m₄ = a⁴/5)."""
    s2, m4 = x_range**2 / 3.0, x_range**4 / 5.0
    tr_s = n_ctx * d * s2
    tr_s2 = n_ctx * (d * m4 + d * (d - 1) * s2**2) + n_ctx * (n_ctx - 1) * d * s2**2
    return s2, tr_s, tr_s2


def one_step_gd_loss(eta: float, *, d: int, n_ctx: int, x_range: float = 0.5, w_scale: float = 1.0) -> float:
    """Population ½E(ŷ − y_q)² of one GD step (rate η, mean loss) for x ~ U(−a, a)^d, w ~ N(0, s²I).

    With c = η/N, S = Σ_i x_i x_iᵀ, σ² = a²/3, m₄ = a⁴/5: ŷ − y_q = wᵀ(cS − I)x_q, so
        L(η) = ½ s² σ² (c² E tr S² − 2c E tr S + d),
        E tr S = N d σ²,  E tr S² = N (d m₄ + d(d−1)σ⁴) + N(N−1) d σ⁴.
    """
    s2, tr_s, tr_s2 = _uniform_moments(d, n_ctx, x_range)
    c = eta / n_ctx
    return 0.5 * w_scale**2 * s2 * (c**2 * tr_s2 - 2 * c * tr_s + d)


def best_one_step_gd(*, d: int, n_ctx: int, x_range: float = 0.5, w_scale: float = 1.0) -> tuple[float, float]:
    """(η*, L*) minimising `one_step_gd_loss`: η* = N E tr S / E tr S², L* = L(η*).

    d = N = 10, a = 0.5: η* = 10·(25/3)/13.75 = 200/33 ≈ 6.0606 (η*/N ≈ 0.606), L* = 490/2376 ≈ 0.20623.
    """
    _, tr_s, tr_s2 = _uniform_moments(d, n_ctx, x_range)
    eta = n_ctx * tr_s / tr_s2
    return eta, one_step_gd_loss(eta, d=d, n_ctx=n_ctx, x_range=x_range, w_scale=w_scale)


class GDFit(NamedTuple):
    eta: float
    gamma: float      # 0.0 for plain GD
    loss: float       # ½MSE on an independent sample (not the one searched on)
    loss_se: float    # its Monte Carlo standard error


_sample_jit = jax.jit(sample_uniform_linear_prompts, static_argnames=("batch", "n_ctx", "d", "n_query", "dtype"))


def _prompts64(key, batch, d, n_ctx, x_range, w_scale):
    with jax.enable_x64(True):
        return _sample_jit(key, batch=batch, n_ctx=n_ctx, d=d, x_range=jnp.float64(x_range),
                           w_scale=jnp.float64(w_scale), dtype=jnp.float64)


def _loss_terms(p, eta, gamma, num_steps):
    y_hat = np.asarray(gdpp_predictions(p.x_ctx, p.y_ctx, p.x_q, eta=eta, gamma=gamma, num_steps=num_steps))
    return 0.5 * np.mean(np.square(y_hat - np.asarray(p.y_q)), axis=1)


def gd_loss_mc(key: jax.Array, *, eta, num_steps: int, gamma=0.0, d: int, n_ctx: int, batch: int,
               x_range: float = 0.5, w_scale: float = 1.0) -> tuple[float, float]:
    """(mean, standard error) of the K-step GD(++) ½MSE over ``batch`` fresh uniform prompts."""
    terms = _loss_terms(_prompts64(key, batch, d, n_ctx, x_range, w_scale), eta, gamma, num_steps)
    return float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(batch))


def best_gd_step(key: jax.Array, *, num_steps: int = 1, gd_plus: bool = False, d: int, n_ctx: int,
                 batch: int = 16384, x_range: float = 0.5, w_scale: float = 1.0) -> GDFit:
    """Line search for η (and γ with ``gd_plus``) minimising the K-step GD(++) ½MSE.

    The objective is the mean over one fixed sample of ``batch`` prompts (common random numbers,
    so it is smooth in η): a log grid, then bounded Brent on η; GD++ then runs Nelder–Mead on
    (η, γ) from (η_GD, 0). The returned loss is measured on a second, independent sample.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: got {num_steps!r}; allowed an integer ≥ 1")
    k_fit, k_eval = jax.random.split(key)
    p = _prompts64(k_fit, batch, d, n_ctx, x_range, w_scale)
    loss = lambda eta, gamma=0.0: float(_loss_terms(p, eta, gamma, num_steps).mean())  # noqa: E731
    # Stability scale: a GD step contracts only for η < 2/λ_max(Ĉ_x), λ ~ σ²(1 + √(d/N))².
    lam = x_range**2 / 3.0 * (1 + np.sqrt(d / n_ctx)) ** 2
    grid = np.geomspace(0.02, 4.0, 40) / lam
    vals = [loss(e) for e in grid]
    i = int(np.nanargmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    eta = float(scipy.optimize.minimize_scalar(loss, bounds=(lo, hi), method="bounded",
                                               options={"xatol": 1e-6 * hi}).x)
    gamma = 0.0
    if gd_plus:
        res = scipy.optimize.minimize(lambda v: loss(v[0], v[1]), x0=np.array([eta, 0.0]),
                                      method="Nelder-Mead",
                                      options={"xatol": 1e-5, "fatol": 1e-9, "maxiter": 600,
                                               "initial_simplex": [[eta, 0.0], [1.2 * eta, 0.0], [eta, 0.1 / lam]]})
        eta, gamma = float(res.x[0]), float(res.x[1])
    mean, se = gd_loss_mc(k_eval, eta=eta, gamma=gamma, num_steps=num_steps, d=d, n_ctx=n_ctx,
                          batch=batch, x_range=x_range, w_scale=w_scale)
    return GDFit(eta, gamma, mean, se)


def input_gradients(pred_fn: PredFn, x_ctx: Float[Array, "B N d"], y_ctx: Float[Array, "B N"],
                    x_q: Float[Array, "B Q d"]) -> Float[Array, "B Q d"]:
    """∂ŷ_bq/∂x_q,bq for every prompt and query (each ŷ depends on its own x_q only)."""
    return jax.grad(lambda xq: jnp.sum(pred_fn(x_ctx, y_ctx, xq)))(x_q)


def alignment_metrics(pred_a: PredFn, pred_b: PredFn, x_ctx: Float[Array, "B N d"],
                      y_ctx: Float[Array, "B N"], x_q: Float[Array, "B Q d"]) -> dict[str, Array]:
    """von Oswald et al.'s alignment metrics between two in-context predictors (traceable, any dtype):

    preds_diff = mean |ŷ_a − ŷ_b|;  model_cos = mean cos(∂ŷ_a/∂x_q, ∂ŷ_b/∂x_q);
    model_diff = mean ‖∂ŷ_a/∂x_q − ∂ŷ_b/∂x_q‖₂ (means over prompts and queries).
    """
    diff = jnp.mean(jnp.abs(pred_a(x_ctx, y_ctx, x_q) - pred_b(x_ctx, y_ctx, x_q)))
    g_a, g_b = input_gradients(pred_a, x_ctx, y_ctx, x_q), input_gradients(pred_b, x_ctx, y_ctx, x_q)
    na, nb = jnp.linalg.norm(g_a, axis=-1), jnp.linalg.norm(g_b, axis=-1)
    tiny = jnp.finfo(g_a.dtype).tiny
    cos = jnp.mean(jnp.sum(g_a * g_b, axis=-1) / jnp.maximum(na * nb, tiny))
    return {"preds_diff": diff, "model_cos": cos, "model_diff": jnp.mean(jnp.linalg.norm(g_a - g_b, axis=-1))}


def compare_predictors(pred_a: PredFn, pred_b: PredFn, x_ctx: Float[Array, "B N d"],
                       y_ctx: Float[Array, "B N"], x_q: Float[Array, "B Q d"]) -> dict[str, float]:
    """`alignment_metrics` in float64 (inputs cast; float32 params promote), as Python floats."""
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (x_ctx, y_ctx, x_q)]
        metrics = jax.jit(lambda *a: alignment_metrics(pred_a, pred_b, *a))(*args)  # one compile, not one per op
        return {k: float(v) for k, v in metrics.items()}
