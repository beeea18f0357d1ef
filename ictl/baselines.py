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
    boosted_trees  XGBoost-style boosting of such trees on the residuals (squared loss):
                   F ← F + η·tree, leaf = Σ residual/(n + λ), split score Σ S²/(n + λ)
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

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


def _grow_tree(
    b_Nxd: Float[Array, "N d"],
    bi_Nxd: Int[Array, "N d"],
    bq_d: Int[Array, "d"],
    g_N: Float[Array, "N"],
    mask_N: Float[Array, "N"],
    *,
    depth: int,
    reg_lambda: float,
    min_child_weight: float,
) -> tuple[Float[Array, "N"], Float[Array, ""]]:
    """One greedy regression tree on sign features, fitted to the targets g of the masked rows.

    b_Nxd / bi_Nxd: 1[x_c > 0] as g's dtype / int32; bq_d: the query's bits (int32). Level by
    level, each node takes the admissible split (both children with count ≥ min_child_weight)
    that maximises S_L²/(n_L + λ) + S_R²/(n_R + λ), i.e. the regularised loss reduction; scores
    within a relative √ε of the best are ties, won by the lowest coordinate (so float rounding
    never picks between mathematically equal splits: with y on the tree prior's 16 leaf values,
    small nodes tie often). A node with no admissible split stops growing. A node's value is
    S/(n + λ); a point keeps the value of its deepest growing, non-empty node. Returns (value at
    each of the N rows, value at the query). Denominators are max(n + λ, 1): n + λ ≥ 1 whenever
    n ≥ 1, and n = 0 ⇒ S = 0.
    """
    N, _ = b_Nxd.shape
    lam = reg_lambda
    rtol = float(jnp.finfo(g_N.dtype).eps) ** 0.5
    node_N = jnp.zeros(N, jnp.int32)        # node index within the current level
    node_q = jnp.zeros((), jnp.int32)
    live_N = jnp.ones(N, bool)              # still descending (every node above split)
    live_q = jnp.ones((), bool)
    # mask_N @ g_N, not jnp.sum(mask_N * g_N): on XLA CPU (jaxlib 0.10.2) sum(m·y)/max(sum(m), 1)
    # double-vmapped over ≥ 32768 (prompt, k) pairs returned wrong values past that index.
    root = (mask_N @ g_N) / jnp.maximum(jnp.sum(mask_N) + lam, 1.0)
    val_N = jnp.broadcast_to(root, (N,))
    val_q = root
    for level in range(depth):
        M = 2**level
        oh_NxM = jax.nn.one_hot(node_N, M, dtype=g_N.dtype) * mask_N[:, None]
        s1_Mxd = oh_NxM.T @ (b_Nxd * g_N[:, None])
        n1_Mxd = oh_NxM.T @ b_Nxd
        s_M, n_M = oh_NxM.T @ g_N, jnp.sum(oh_NxM, axis=0)
        s0_Mxd, n0_Mxd = s_M[:, None] - s1_Mxd, n_M[:, None] - n1_Mxd
        score_Mxd = s1_Mxd**2 / jnp.maximum(n1_Mxd + lam, 1.0) + s0_Mxd**2 / jnp.maximum(n0_Mxd + lam, 1.0)
        ok_Mxd = (n1_Mxd >= min_child_weight) & (n0_Mxd >= min_child_weight)
        best_M = jnp.max(jnp.where(ok_Mxd, score_Mxd, -jnp.inf), axis=1)
        tie_Mxd = ok_Mxd & (score_Mxd >= best_M[:, None] * (1 - rtol))   # scores are ≥ 0
        c_M = jnp.argmax(tie_Mxd, axis=1)       # the lowest coordinate among (near-)ties
        split_M = jnp.any(ok_Mxd, axis=1)

        def descend(node, bits_d, live, val):
            c = c_M[node]
            side = bits_d[c]
            s_child = jnp.where(side == 1, s1_Mxd[node, c], s0_Mxd[node, c])
            n_child = jnp.where(side == 1, n1_Mxd[node, c], n0_Mxd[node, c])
            live = live & split_M[node]
            val = jnp.where(live & (n_child > 0), s_child / jnp.maximum(n_child + lam, 1.0), val)
            return 2 * node + side, live, val

        node_N, live_N, val_N = jax.vmap(descend)(node_N, bi_Nxd, live_N, val_N)
        node_q, live_q, val_q = descend(node_q, bq_d, live_q, val_q)
    return val_N, val_q


def greedy_tree(x_Nxd, y_N, mask_N, xq_d, *, depth: int = 4) -> Float[Array, ""]:
    """Greedy depth-``depth`` tree on the sign features x_c > 0, evaluated at xq.

    Level by level, every node splits on the coordinate that maximises S_L²/n_L + S_R²/n_R
    (sums S and counts n of y in the children), i.e. minimises the children's SSE. The
    prediction is the mean of y in the query's deepest non-empty node (0 when k = 0).
    (`_grow_tree` with λ = 0 and min_child_weight = 0: every split is admissible.)
    """
    b_Nxd = (x_Nxd > 0).astype(y_N.dtype)
    _, pred = _grow_tree(b_Nxd, (x_Nxd > 0).astype(jnp.int32), (xq_d > 0).astype(jnp.int32), y_N, mask_N,
                         depth=depth, reg_lambda=0.0, min_child_weight=0.0)
    return pred


def boosted_trees_path(
    x_Nxd: Float[Array, "N d"],
    y_N: Float[Array, "N"],
    mask_N: Float[Array, "N"],
    xq_d: Float[Array, "d"],
    *,
    n_trees: int = 100,
    depth: int = 4,
    learning_rate: float = 0.3,
    reg_lambda: float = 1.0,
    min_child_weight: float = 1.0,
) -> tuple[Float[Array, "n_trees"], Float[Array, "n_trees"]]:
    """Gradient boosting with squared loss, round by round: (ŷ(xq), training MSE) after each tree.

    F₀ = 0 (the tasks' y have prior mean 0); round t fits a greedy depth-``depth`` tree on the
    sign features x_c > 0 (`_grow_tree`) to the residuals r = y − F_{t−1} of the k masked rows
    and sets F_t = F_{t−1} + η·tree. XGBoost's second-order leaf weight −G/(H + λ) and split gain
    G_L²/(H_L + λ) + G_R²/(H_R + λ) − G²/(H + λ) are, for ½(y − F)² (gradient −r, hessian 1),
    leaf = Σr/(n + λ) and the score Σ_children S²/(n + λ) used here; its min_child_weight (minimum
    hessian sum) is a minimum child count. Per leaf the training SSE changes by
    η S²/(n + λ)·(η n/(n + λ) − 2) ≤ 0, so the training MSE is non-increasing for η ≤ 2.
    """
    b_Nxd = (x_Nxd > 0).astype(y_N.dtype)
    bi_Nxd = (x_Nxd > 0).astype(jnp.int32)
    bq_d = (xq_d > 0).astype(jnp.int32)
    ym_N = jnp.where(mask_N > 0, y_N, 0)       # masked-out labels never enter (not even as NaN)
    k = jnp.maximum(jnp.sum(mask_N), 1.0)

    def one_round(carry, _):
        f_N, f_q = carry
        t_N, t_q = _grow_tree(b_Nxd, bi_Nxd, bq_d, ym_N - f_N, mask_N, depth=depth, reg_lambda=reg_lambda,
                              min_child_weight=min_child_weight)
        f_N, f_q = f_N + learning_rate * t_N, f_q + learning_rate * t_q
        mse = (mask_N @ jnp.square(ym_N - f_N)) / k          # a dot: see _grow_tree's root
        return (f_N, f_q), (f_q, mse)

    init = (jnp.zeros_like(ym_N), jnp.zeros((), ym_N.dtype))
    _, (pred_T, mse_T) = jax.lax.scan(one_round, init, None, length=n_trees)
    return pred_T, mse_T


def boosted_trees(
    x_Nxd: Float[Array, "N d"],
    y_N: Float[Array, "N"],
    mask_N: Float[Array, "N"],
    xq_d: Float[Array, "d"],
    *,
    n_trees: int = 100,
    depth: int = 4,
    learning_rate: float = 0.3,
    reg_lambda: float = 1.0,
    min_child_weight: float = 1.0,
) -> Float[Array, ""]:
    """XGBoost-style gradient-boosted regression trees (squared loss), evaluated at xq.

    F = η Σ_t tree_t, each tree a greedy depth-``depth`` tree on the splits x_c > 0 fitted to
    the current residuals, with XGBoost's L2-regularised leaves Σr/(n + λ) (λ = reg_lambda,
    default 1.0 as in XGBoost) and split score Σ_children S²/(n + λ); splits need both children
    to hold ≥ min_child_weight rows (XGBoost's default 1). With n_trees = 1, learning_rate = 1,
    reg_lambda = 0 and min_child_weight = 0 it is `greedy_tree`. Differences from XGBoost: only
    the prior's thresholds x_c > 0 are tried, F₀ = 0 (no base_score), no γ / post-pruning,
    no subsampling. Defaults: XGBRegressor's n_estimators = 100, learning_rate = 0.3, λ = 1,
    min_child_weight = 1, but depth 4 (the task's depth) instead of max_depth 6.
    """
    pred_T, _ = boosted_trees_path(x_Nxd, y_N, mask_N, xq_d, n_trees=n_trees, depth=depth,
                                   learning_rate=learning_rate, reg_lambda=reg_lambda,
                                   min_child_weight=min_child_weight)
    return pred_T[-1]


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
