"""Classical in-context learners, jitted and vmapped over prompts and prefix lengths.

A baseline is a pure per-prompt function

    f(x_Nxd, y_N, mask_N, xq_d) -> ŷ            (mask_N = 1 on the k usable examples)

and `prefix_predictions(f, x, y, xq)` returns ŷ[b, k] = f(x_b, y_b, 1[n < k], xq_b,k) for every
prompt b and every k = 0..N−1 (xq defaults to x, Garg's "predict the next point"). So a
baseline sees exactly what the transformer's k-th prediction sees. Options are keyword-only;
bind them with `functools.partial`. With k = |mask| and X the masked rows:

    least_squares  ŵ = X⁺ y  (minimum-norm, stable when k < d)
    ridge          ŵ = (XᵀX + λI)⁻¹ Xᵀ y     (the posterior mean for w ~ N(0, I), noise var λ)
    lasso          ŵ = argmin (1/2k)‖y − Xw‖² + α‖w‖₁   (FISTA, fixed iterations; sklearn's scaling)
    knn            mean of y over the (up to) n_neighbors nearest usable x (Euclidean)
    averaging      ŵ = (1/k) Σ y_i x_i
    greedy_tree    depth-limited greedy regression tree with splits x_c > 0 (the tree prior's
                   thresholds); each split maximises the SSE reduction; leaf = mean of y
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

Baseline = Callable[..., Float[Array, ""]]


def least_squares(x_Nxd, y_N, mask_N, xq_d) -> Float[Array, ""]:
    """Minimum-norm least squares, ŷ = xqᵀ X⁺ y (0 when k = 0)."""
    xm_Nxd = x_Nxd * mask_N[:, None]
    w_d = jnp.linalg.pinv(xm_Nxd) @ (y_N * mask_N)
    return xq_d @ w_d


def ridge(x_Nxd, y_N, mask_N, xq_d, *, lam: float = 1.0) -> Float[Array, ""]:
    """ŷ = xqᵀ (XᵀX + λI)⁻¹ Xᵀ y."""
    xm_Nxd = x_Nxd * mask_N[:, None]
    d = x_Nxd.shape[1]
    a_dxd = xm_Nxd.T @ xm_Nxd + lam * jnp.eye(d, dtype=x_Nxd.dtype)
    w_d = jnp.linalg.solve(a_dxd, xm_Nxd.T @ (y_N * mask_N))
    return xq_d @ w_d


def _soft(v, t):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0)


def lasso_weights(x_Nxd, y_N, mask_N, *, alpha: float = 0.1, n_iter: int = 300) -> Float[Array, "d"]:
    """argmin_w (1/2k)‖m ⊙ (y − Xw)‖² + α‖w‖₁ by FISTA with step 1/L, L = λ_max(XᵀX)/k."""
    xm_Nxd = x_Nxd * mask_N[:, None]
    ym_N = y_N * mask_N
    k = jnp.maximum(jnp.sum(mask_N), 1.0)
    g_dxd = xm_Nxd.T @ xm_Nxd / k
    b_d = xm_Nxd.T @ ym_N / k
    lip = jnp.maximum(jnp.linalg.eigvalsh(g_dxd)[-1], 1e-12)

    def body(_, carry):
        w, v, t = carry
        w_new = _soft(v - (g_dxd @ v - b_d) / lip, alpha / lip)
        t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        v_new = w_new + ((t - 1) / t_new) * (w_new - w)
        return w_new, v_new, t_new

    w0 = jnp.zeros_like(b_d)
    w, _, _ = jax.lax.fori_loop(0, n_iter, body, (w0, w0, jnp.ones((), b_d.dtype)))
    return w


def lasso(x_Nxd, y_N, mask_N, xq_d, *, alpha: float = 0.1, n_iter: int = 300) -> Float[Array, ""]:
    return xq_d @ lasso_weights(x_Nxd, y_N, mask_N, alpha=alpha, n_iter=n_iter)


def knn(x_Nxd, y_N, mask_N, xq_d, *, n_neighbors: int = 3) -> Float[Array, ""]:
    """Uniform average of y over the min(k, n_neighbors) nearest usable points (0 when k = 0)."""
    dist_N = jnp.sum(jnp.square(x_Nxd - xq_d[None, :]), axis=-1)
    dist_N = jnp.where(mask_N > 0, dist_N, jnp.inf)
    m = min(n_neighbors, x_Nxd.shape[0])
    neg_m, idx_m = jax.lax.top_k(-dist_N, m)
    valid_m = jnp.isfinite(neg_m).astype(y_N.dtype)
    return jnp.sum(y_N[idx_m] * valid_m) / jnp.maximum(jnp.sum(valid_m), 1.0)


def averaging(x_Nxd, y_N, mask_N, xq_d) -> Float[Array, ""]:
    """ŷ = xqᵀ (1/k) Σ_i y_i x_i."""
    k = jnp.maximum(jnp.sum(mask_N), 1.0)
    w_d = jnp.einsum("n,n,nd->d", mask_N, y_N, x_Nxd) / k
    return xq_d @ w_d


def greedy_tree(x_Nxd, y_N, mask_N, xq_d, *, depth: int = 4) -> Float[Array, ""]:
    """Greedy depth-``depth`` tree on the sign features x_c > 0, evaluated at xq.

    Level by level, every node splits on the coordinate that maximises S_L²/n_L + S_R²/n_R
    (sums S and counts n of y in the children), i.e. minimises the children's SSE. The
    prediction is the mean of y in the query's deepest non-empty node (0 when k = 0).
    """
    N, d = x_Nxd.shape
    b_Nxd = (x_Nxd > 0).astype(y_N.dtype)
    bq_d = (xq_d > 0).astype(jnp.int32)
    node_N = jnp.zeros(N, jnp.int32)        # node index within the current level
    node_q = jnp.zeros((), jnp.int32)
    k = jnp.sum(mask_N)
    pred = jnp.sum(mask_N * y_N) / jnp.maximum(k, 1.0)
    for level in range(depth):
        M = 2**level
        oh_NxM = jax.nn.one_hot(node_N, M, dtype=y_N.dtype) * mask_N[:, None]
        s1_Mxd = oh_NxM.T @ (b_Nxd * y_N[:, None])
        n1_Mxd = oh_NxM.T @ b_Nxd
        s_M, n_M = oh_NxM.T @ y_N, jnp.sum(oh_NxM, axis=0)
        s0_Mxd, n0_Mxd = s_M[:, None] - s1_Mxd, n_M[:, None] - n1_Mxd
        gain_Mxd = s1_Mxd**2 / jnp.maximum(n1_Mxd, 1.0) + s0_Mxd**2 / jnp.maximum(n0_Mxd, 1.0)
        c_M = jnp.argmax(gain_Mxd, axis=1)
        node_N = 2 * node_N + b_Nxd[jnp.arange(N), c_M[node_N]].astype(jnp.int32)
        side = bq_d[c_M[node_q]]
        s_child = jnp.where(side == 1, s1_Mxd[node_q, c_M[node_q]], s0_Mxd[node_q, c_M[node_q]])
        n_child = jnp.where(side == 1, n1_Mxd[node_q, c_M[node_q]], n0_Mxd[node_q, c_M[node_q]])
        node_q = 2 * node_q + side
        pred = jnp.where(n_child > 0, s_child / jnp.maximum(n_child, 1.0), pred)
    return pred


def zero(x_Nxd, y_N, mask_N, xq_d) -> Float[Array, ""]:
    """ŷ = 0 (error = E y², the normaliser's reference)."""
    return jnp.zeros((), y_N.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _prefix(f, x_BxNxd, y_BxN, xq_BxNxd):
    N = x_BxNxd.shape[1]
    mask_NxN = (jnp.arange(N)[None, :] < jnp.arange(N)[:, None]).astype(y_BxN.dtype)  # row k: n < k
    per_prompt = jax.vmap(f, in_axes=(None, None, 0, 0))          # over k
    return jax.vmap(per_prompt, in_axes=(0, 0, None, 0))(x_BxNxd, y_BxN, mask_NxN, xq_BxNxd)


def prefix_predictions(
    f: Baseline,
    x_BxNxd: Float[Array, "B N d"],
    y_BxN: Float[Array, "B N"],
    xq_BxNxd: Float[Array, "B N d"] | None = None,
) -> Float[Array, "B N"]:
    """ŷ[b, k] = f(x_b, y_b, 1[n < k], xq_b,k) for all b and k = 0..N−1 (jitted; f is static,
    so reuse one `functools.partial` object to avoid re-tracing)."""
    return _prefix(f, x_BxNxd, y_BxN, x_BxNxd if xq_BxNxd is None else xq_BxNxd)


# ----------------------------------------------------------------------------- sequential classes
def dynamics_least_squares(x_BxNxd: Float[Array, "B N d"], y_BxNxd: Float[Array, "B N d"]) -> Float[Array, "B N d"]:
    """Next-state prediction for x_{t+1} = W x_t (+ noise): ŷ_t = Ŵ_t x_t, Ŵ_t the min-norm least-squares
    fit of the transitions (x_i, x_{i+1}), i < t, one output coordinate at a time (0 at t = 0).
    Noiseless, Ŵ_t x_t = W x_t once the t transitions span R^d (t ≥ d almost surely)."""
    per_coord = jax.vmap(lambda y_BxN: prefix_predictions(least_squares, x_BxNxd, y_BxN), in_axes=2, out_axes=2)
    return per_coord(y_BxNxd)


def window_least_squares(x_BxNxd: Float[Array, "B N d"], y_BxN: Float[Array, "B N"], window: int) -> Float[Array, "B N"]:
    """Least squares on the sliding-window features u_t = (x_{t−w+1}, …, x_t) (zeros before t = 1):
    the best linear learner for the sliding-window tasks."""
    from ictl.tasks.sequential import window_features

    return prefix_predictions(least_squares, window_features(x_BxNxd, window), y_BxN)
