"""Baselines against closed forms and scikit-learn / XGBoost as oracles, and the bootstrap curves."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xgboost as xgb
from sklearn.linear_model import Lasso, LinearRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor

from ictl import baselines as bl
from ictl import evaluation as ev
from ictl.tasks import function_classes as fc

D, N, B = 5, 9, 2000


@pytest.fixture(scope="module")
def linear_prompts():
    with jax.enable_x64(True):
        p = fc.sample_prompts(jax.random.key(0), "linear", batch=B, n_points=N, d=D)
        return jnp.asarray(p.x, jnp.float64), jnp.asarray(p.y, jnp.float64)


def test_least_squares_hits_the_noiseless_optimum(linear_prompts, x64):
    # Min-norm LS after k isotropic examples leaves w's component outside the k-dim span:
    # E (x_qᵀ(w − ŵ))² = E‖(I − P_k) w‖² = d − k, so error/d = 1 − k/d for k < d and 0 after.
    x, y = linear_prompts
    err = np.asarray(jnp.square(bl.prefix_predictions(bl.least_squares, x, y) - y)) / D
    for k in range(N):
        m, se = err[:, k].mean(), err[:, k].std(ddof=1) / np.sqrt(B)
        if k < D:
            assert abs(m - (1 - k / D)) < 4 * se, (k, m, se)
        else:
            assert m < 1e-12, (k, m)


def test_averaging_closed_form(linear_prompts, x64):
    # ŵ = S w with S = (1/k)Σ x_i x_iᵀ; E S² = (1 + (d+1)/k) I (Wishart) ⇒ E‖(I − S)w‖² = d(d+1)/k,
    # so error/d = (d + 1)/k for k ≥ 1 (and 1 at k = 0, the zero prediction).
    x, y = linear_prompts
    err = np.asarray(jnp.square(bl.prefix_predictions(bl.averaging, x, y) - y)) / D
    for k in (0, 2, 4, 8):
        m, se = err[:, k].mean(), err[:, k].std(ddof=1) / np.sqrt(B)
        want = 1.0 if k == 0 else (D + 1) / k
        assert abs(m - want) < 4 * se, (k, m, se, want)


def test_ridge_is_the_posterior_mean_and_attains_the_bayes_risk(x64):
    # w ~ N(0, I), y = Xw + ε, ε ~ N(0, σ²): E[x_qᵀw | X, y] = x_qᵀXᵀ(XXᵀ + σ²I)⁻¹y (Gaussian
    # conditioning, kernel form) and the posterior variance x_qᵀ(XᵀX/σ² + I)⁻¹x_q + σ² is the
    # Bayes risk of the noisy target, which ridge with λ = σ² must attain on average.
    sigma = 0.7
    p = fc.sample_prompts(jax.random.key(1), "noisy_linear", batch=B, n_points=N, d=D, noise_std=sigma)
    x, y = jnp.asarray(p.x, jnp.float64), jnp.asarray(p.y, jnp.float64)
    f = functools.partial(bl.ridge, lam=sigma**2)
    pred = bl.prefix_predictions(f, x, y)
    k = 4
    xk, yk, xq = x[:, :k], y[:, :k], x[:, k]
    gram = jnp.einsum("bnd,bmd->bnm", xk, xk) + sigma**2 * jnp.eye(k)[None]
    post = jnp.einsum("bd,bnd,bn->b", xq, xk, jnp.linalg.solve(gram, yk[..., None])[..., 0])
    np.testing.assert_allclose(pred[:, k], post, rtol=1e-9, atol=1e-9)
    prec = jnp.einsum("bnd,bne->bde", xk, xk) / sigma**2 + jnp.eye(D)[None]
    risk = jnp.einsum("bd,bd->b", xq, jnp.linalg.solve(prec, xq[..., None])[..., 0]) + sigma**2
    err = np.asarray(jnp.square(pred[:, k] - y[:, k]))
    se = err.std(ddof=1) / np.sqrt(B)
    assert abs(err.mean() - float(risk.mean())) < 4 * se


def test_lasso_orthogonal_design_is_soft_thresholding(x64):
    # If XᵀX = k I, the lasso (1/2k)‖y − Xw‖² + α‖w‖₁ is solved coordinate-wise by
    # ŵ = soft(Xᵀy/k, α).
    k, d, alpha = 8, 4, 0.3
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (k, d)))
    x = jnp.sqrt(k) * q                          # XᵀX = k I
    y = jax.random.normal(jax.random.key(3), (k,))
    w = bl.lasso_weights(x, y, jnp.ones(k), alpha=alpha, n_iter=500)
    z = x.T @ y / k
    np.testing.assert_allclose(w, jnp.sign(z) * jnp.maximum(jnp.abs(z) - alpha, 0), atol=1e-10)


def test_greedy_tree_recovers_a_one_split_function():
    # y = 2·1[x_2 > 0] − 1: the first greedy split must pick coordinate 2 and predict exactly.
    x = jax.random.normal(jax.random.key(7), (16, 40, 4))
    y = jnp.where(x[..., 2] > 0, 1.0, -1.0)
    pred = bl.prefix_predictions(functools.partial(bl.greedy_tree, depth=2), x, y)
    np.testing.assert_allclose(pred[:, 30:], y[:, 30:], atol=1e-6)
    # and on depth-4 tree prompts it beats the zero predictor (E y² = 1) with 40 examples
    t = fc.sample_prompts(jax.random.key(8), "decision_tree", batch=128, n_points=41, d=D)
    pt = bl.prefix_predictions(bl.greedy_tree, t.x, t.y)
    assert float(jnp.mean((pt[:, -5:] - t.y[:, -5:]) ** 2)) < 0.6


def test_bootstrap_band_covers_the_mean_and_shrinks():
    # Errors ~ χ²₁: mean 1; the 90% band of the mean over B prompts has half-width ≈ 1.645·√(2/B).
    z = jax.random.normal(jax.random.key(9), (4000, 3))
    c = ev.error_curve(z, jnp.zeros_like(z), norm=1.0, key=jax.random.key(10), n_boot=400)
    assert np.all(c.lo <= c.mean) and np.all(c.mean <= c.hi)
    half = (c.hi - c.lo) / 2
    np.testing.assert_allclose(half, 1.645 * np.sqrt(2 / 4000), rtol=0.2)  # bootstrap noise at R = 400
    np.testing.assert_allclose(c.sem, np.sqrt(2 / 4000), rtol=0.1)
    assert np.all(np.abs(c.mean - 1) < 4 * c.sem)
    with pytest.raises(ValueError, match="level"):
        ev.error_curve(z, z, norm=1.0, key=jax.random.key(0), level=1.5)


# ----------------------------------------------------------------------------- scikit-learn as the oracle
def _sklearn_prefix(make, x_BxNxd, y_BxN):
    """ŷ[b, k] from a scikit-learn estimator fitted on the k examples before x_b,k (0 at k = 0)."""
    B, N = y_BxN.shape
    out = np.zeros((B, N))
    for b in range(B):
        for k in range(1, N):
            out[b, k] = make(k).fit(x_BxNxd[b, :k], y_BxN[b, :k]).predict(x_BxNxd[b, k:k + 1])[0]
    return out


# (our baseline, the scikit-learn estimator for k examples, task, tolerance on |ŷ_ours − ŷ_sklearn|), float64,
# 8 prompts × k = 1..11, d = 5. Measured max differences: least squares 1.3e-14, ridge 9.3e-15, 3-NN 0.
SKLEARN = {
    # closed forms on both sides (pinv vs lstsq's min-norm solution; Cholesky): float64 rounding only
    "least_squares": (bl.least_squares, lambda k: LinearRegression(fit_intercept=False), "linear", 1e-12),
    "ridge": (functools.partial(bl.ridge, lam=0.5), lambda k: Ridge(alpha=0.5, fit_intercept=False), "noisy_linear",
              1e-12),
    "knn": (bl.knn, lambda k: KNeighborsRegressor(n_neighbors=min(3, k)), "linear", 1e-12),
    # the same objective (1/2k)‖y − Xw‖² + α‖w‖₁; ours stops after FISTA's fixed 300 iterations, sklearn's
    # coordinate descent at tol 1e-12. Measured max difference 2.6e-4, at k = 4 = d − 1 where XᵀX is nearly
    # singular and FISTA converges slowest (1000 iterations: 1.1e-6; 3000: 1.2e-10); |ŷ| is O(1).
    "lasso": (functools.partial(bl.lasso, alpha=0.1), lambda k: Lasso(alpha=0.1, fit_intercept=False, tol=1e-12,
                                                                       max_iter=100_000), "sparse_linear", 1e-3),
}


@pytest.mark.parametrize("name", list(SKLEARN))
def test_baselines_agree_with_sklearn(name, x64):
    ours, make, task, tol = SKLEARN[name]
    p = fc.sample_prompts(jax.random.key(30), task, batch=8, n_points=12, d=D)
    x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
    got = np.asarray(bl.prefix_predictions(ours, jnp.asarray(x), jnp.asarray(y)))
    want = _sklearn_prefix(make, x, y)
    assert np.all(got[:, 0] == 0.0)
    assert np.max(np.abs(got - want)) <= tol, (name, np.max(np.abs(got - want)))


# ----------------------------------------------------------------------------- XGBoost
def test_xgboost_equals_one_xgbregressor_per_prefix():
    # One multi-target booster per prompt with the other rows deleted (hessian < 0) must be exactly the
    # Garg et al. baseline: a fresh XGBRegressor with GARG_XGBOOST per (prompt, k). Measured: equal to
    # the last bit; a row leaking into a fit would move a prediction by O(0.1).
    t = fc.sample_prompts(jax.random.key(31), "decision_tree", batch=3, n_points=9, d=D)
    x, y = np.asarray(t.x), np.asarray(t.y)
    got = np.asarray(bl.prefix_predictions(bl.xgboost, t.x, t.y))
    want = _sklearn_prefix(lambda k: xgb.XGBRegressor(**bl.GARG_XGBOOST, n_jobs=1), x, y)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.max(np.abs(want[:, 2:])) > 0.1  # the fits do move away from base_score / 0
    with pytest.raises(ValueError, match="tree_method"):
        bl.xgboost_prefix_predictions(x, y, tree_method="hist")
