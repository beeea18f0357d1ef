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

These are written in JAX because they run jitted and vmapped over all prompts and prefixes at
once (1280 × 41 fits in one call), which scikit-learn's one-fit-at-a-time estimators do not;
tests/test_baselines.py holds least squares, ridge, Lasso and k-NN to scikit-learn's answers.

`xgboost` is XGBoost itself (the library, on the host, not jitted) with the settings of Garg et
al.'s `xgb.XGBRegressor()` (see `GARG_XGBOOST`); it is a `HostBaseline`, which
`prefix_predictions` runs on NumPy arrays over the whole batch instead of vmapping.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
) -> Float[Array, ""]:
    """One greedy regression tree on sign features, fitted to the targets g of the masked rows.

    b_Nxd / bi_Nxd: 1[x_c > 0] as g's dtype / int32; bq_d: the query's bits (int32). Level by
    level, each node takes the split that maximises S_L²/n_L + S_R²/n_R (sums S and counts n of g
    in the children), i.e. minimises the children's SSE; scores within a relative √ε of the best
    are ties, won by the lowest coordinate (so float rounding never picks between mathematically
    equal splits: with y on the tree prior's 16 leaf values, small nodes tie often). A node's
    value is S/n; the query keeps the value of its deepest non-empty node. Denominators are
    max(n, 1) (n = 0 ⇒ S = 0). Returns the value at the query.
    """
    N, _ = b_Nxd.shape
    rtol = float(jnp.finfo(g_N.dtype).eps) ** 0.5
    node_N = jnp.zeros(N, jnp.int32)        # node index within the current level
    node_q = jnp.zeros((), jnp.int32)
    # mask_N @ g_N, not jnp.sum(mask_N * g_N): on XLA CPU (jaxlib 0.10.2) sum(m·y)/max(sum(m), 1)
    # double-vmapped over ≥ 32768 (prompt, k) pairs returned wrong values past that index.
    val_q = (mask_N @ g_N) / jnp.maximum(jnp.sum(mask_N), 1.0)
    for level in range(depth):
        M = 2**level
        oh_NxM = jax.nn.one_hot(node_N, M, dtype=g_N.dtype) * mask_N[:, None]
        s1_Mxd = oh_NxM.T @ (b_Nxd * g_N[:, None])
        n1_Mxd = oh_NxM.T @ b_Nxd
        s_M, n_M = oh_NxM.T @ g_N, jnp.sum(oh_NxM, axis=0)
        s0_Mxd, n0_Mxd = s_M[:, None] - s1_Mxd, n_M[:, None] - n1_Mxd
        score_Mxd = s1_Mxd**2 / jnp.maximum(n1_Mxd, 1.0) + s0_Mxd**2 / jnp.maximum(n0_Mxd, 1.0)
        best_M = jnp.max(score_Mxd, axis=1)
        c_M = jnp.argmax(score_Mxd >= best_M[:, None] * (1 - rtol), axis=1)   # lowest (near-)tie; scores ≥ 0

        def descend(node, bits_d):
            return 2 * node + bits_d[c_M[node]]

        node_N = jax.vmap(descend)(node_N, bi_Nxd)
        side = bq_d[c_M[node_q]]
        s_child = jnp.where(side == 1, s1_Mxd[node_q, c_M[node_q]], s0_Mxd[node_q, c_M[node_q]])
        n_child = jnp.where(side == 1, n1_Mxd[node_q, c_M[node_q]], n0_Mxd[node_q, c_M[node_q]])
        val_q = jnp.where(n_child > 0, s_child / jnp.maximum(n_child, 1.0), val_q)
        node_q = 2 * node_q + side
    return val_q


def greedy_tree(x_Nxd, y_N, mask_N, xq_d, *, depth: int = 4) -> Float[Array, ""]:
    """Greedy depth-``depth`` tree on the sign features x_c > 0, evaluated at xq.

    Level by level, every node splits on the coordinate that maximises S_L²/n_L + S_R²/n_R
    (sums S and counts n of y in the children), i.e. minimises the children's SSE. The
    prediction is the mean of y in the query's deepest non-empty node (0 when k = 0).
    """
    return _grow_tree((x_Nxd > 0).astype(y_N.dtype), (x_Nxd > 0).astype(jnp.int32), (xq_d > 0).astype(jnp.int32),
                      y_N, mask_N, depth=depth)


def zero(x_Nxd, y_N, mask_N, xq_d) -> Float[Array, ""]:
    """ŷ = 0 (error = E y², the normaliser's reference)."""
    return jnp.zeros((), y_N.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _prefix(f, x_BxNxd, y_BxN, xq_BxNxd):
    N = x_BxNxd.shape[1]
    mask_NxN = (jnp.arange(N)[None, :] < jnp.arange(N)[:, None]).astype(y_BxN.dtype)  # row k: n < k
    per_prompt = jax.vmap(f, in_axes=(None, None, 0, 0))          # over k
    return jax.vmap(per_prompt, in_axes=(0, 0, None, 0))(x_BxNxd, y_BxN, mask_NxN, xq_BxNxd)


class HostBaseline(NamedTuple):
    """A baseline run on the host over a whole batch: ``fn(x_BxNxd, y_BxN, xq_BxNxd) -> ŷ_BxN``
    (NumPy in and out, the prefix convention of `prefix_predictions`)."""

    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def prefix_predictions(
    f: Baseline | HostBaseline,
    x_BxNxd: Float[Array, "B N d"],
    y_BxN: Float[Array, "B N"],
    xq_BxNxd: Float[Array, "B N d"] | None = None,
) -> Float[Array, "B N"]:
    """ŷ[b, k] = f(x_b, y_b, 1[n < k], xq_b,k) for all b and k = 0..N−1 (jitted; f is static,
    so reuse one `functools.partial` object to avoid re-tracing). A `HostBaseline` runs its
    ``fn`` on the NumPy arrays instead."""
    xq_BxNxd = x_BxNxd if xq_BxNxd is None else xq_BxNxd
    if isinstance(f, HostBaseline):
        return jnp.asarray(f.fn(np.asarray(x_BxNxd), np.asarray(y_BxN), np.asarray(xq_BxNxd)))
    return _prefix(f, x_BxNxd, y_BxN, xq_BxNxd)


# ----------------------------------------------------------------------------- XGBoost
# Garg et al.'s tree baseline is `xgb.XGBRegressor()` with the defaults of the xgboost they pin
# (1.6.1, environment.yml of their code), fitted on the k raw examples and predicting at x_k (0 at
# k = 0). xgboost ≥ 2 changed two defaults (tree_method "auto" → "hist", base_score 0.5 → the
# label mean), so all of 1.6.1's are spelled out here.
GARG_XGBOOST = dict(n_estimators=100, learning_rate=0.3, max_depth=6, min_child_weight=1.0, reg_lambda=1.0,
                    reg_alpha=0.0, gamma=0.0, subsample=1.0, colsample_bytree=1.0, base_score=0.5,
                    tree_method="exact")


def _xgb_train_params(opts: dict) -> tuple[dict, int]:
    names = {"learning_rate": "eta", "reg_lambda": "lambda", "reg_alpha": "alpha"}
    params = {names.get(k, k): v for k, v in opts.items() if k != "n_estimators"}
    if params.get("tree_method") != "exact":
        raise ValueError(f"tree_method: allowed 'exact' (rows are dropped per target), got {params.get('tree_method')!r}")
    return params, int(opts["n_estimators"])


def xgboost_fit_predict(x_Nxd: np.ndarray, y_N: np.ndarray, keep_NxT: np.ndarray, xq_Txd: np.ndarray,
                        **opts) -> np.ndarray:
    """ŷ_t = XGBoost fitted on the rows {n : keep[n, t]} of (x, y), evaluated at xq_t, for every t.

    All T fits run in ONE multi-target booster (``multi_strategy="one_output_per_tree"``: target
    t grows its own trees) whose custom squared-loss objective gives target t the gradient
    F − y and hessian 1 on its rows and hessian −1 elsewhere. XGBoost's exact tree method marks
    rows with negative hessian as deleted (they enter no split, statistic or threshold), so
    target t is exactly the booster fitted on its own rows (tests/test_baselines.py checks
    equality with one `XGBRegressor` per target). ``opts`` override `GARG_XGBOOST`.
    """
    import xgboost as xgb  # host-only dependency, imported where used

    params, rounds = _xgb_train_params({**GARG_XGBOOST, **opts})
    n, t = keep_NxT.shape
    keep = np.asarray(keep_NxT, bool)
    y = np.asarray(y_N, np.float32)[:, None]
    params.update(objective="reg:squarederror", multi_strategy="one_output_per_tree", num_target=t, nthread=1)

    def squared_loss(pred, _):
        pred = pred.reshape(n, t)
        return np.where(keep, pred - y, 0.0).astype(np.float32), np.where(keep, 1.0, -1.0).astype(np.float32)

    dtrain = xgb.DMatrix(np.asarray(x_Nxd, np.float32), label=np.broadcast_to(y, (n, t)), nthread=1)
    booster = xgb.train(params, dtrain, rounds, obj=squared_loss)
    pred_TxT = booster.inplace_predict(np.asarray(xq_Txd, np.float32)).reshape(len(xq_Txd), t)
    return np.diagonal(pred_TxT).copy()


def xgboost_prefix_predictions(x_BxNxd: np.ndarray, y_BxN: np.ndarray, xq_BxNxd: np.ndarray | None = None, *,
                               num_threads: int | None = None, **opts) -> np.ndarray:
    """ŷ[b, k] = XGBoost (``GARG_XGBOOST`` unless ``opts``) fitted on (x_b,n, y_b,n), n < k, at xq_b,k
    (0 at k = 0). One multi-target booster per prompt (`xgboost_fit_predict`), prompts spread over
    ``num_threads`` threads (default: all CPUs; xgboost releases the GIL while it grows trees)."""
    x, y = np.asarray(x_BxNxd), np.asarray(y_BxN)
    xq = x if xq_BxNxd is None else np.asarray(xq_BxNxd)
    B, N = y.shape
    out = np.zeros((B, N), np.float32)
    if N < 2:
        return out
    keep_NxK = np.arange(N)[:, None] < np.arange(1, N)[None, :]    # target k − 1 uses rows n < k

    def one(b):
        out[b, 1:] = xgboost_fit_predict(x[b], y[b], keep_NxK, xq[b, 1:], **opts)

    with ThreadPoolExecutor(max_workers=num_threads or os.cpu_count() or 1) as pool:
        list(pool.map(one, range(B)))
    return out


xgboost = HostBaseline(xgboost_prefix_predictions)


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
