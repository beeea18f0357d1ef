"""Exact Bayes posterior means (ictl.bayes) against closed forms and Monte Carlo, in float64."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import baselines as bl
from ictl import bayes
from ictl.tasks import prism


def _linear_prompts(key, *, batch, n, d, noise_std, w_Bxd):
    kx, ke = jax.random.split(key)
    x = np.asarray(jax.random.normal(kx, (batch, n, d)), np.float64)
    y = np.einsum("bnd,bd->bn", x, w_Bxd) + noise_std * np.asarray(jax.random.normal(ke, (batch, n)), np.float64)
    return x, y


def test_gaussian_posterior_mean_is_ridge_and_matches_kernel_form(x64):
    d, n, sig2, tau2 = 3, 7, 0.3, 2.0
    rng = np.random.default_rng(0)
    x, y = _linear_prompts(jax.random.key(0), batch=4, n=n, d=d, noise_std=0.5, w_Bxd=rng.normal(size=(4, d)))
    exact = bayes.prefix_bayes(bayes.gaussian_posterior_mean, x, y, noise_var=sig2, prior_cov_dxd=tau2 * np.eye(d))
    ridge = np.asarray(bl.prefix_predictions(functools.partial(bl.ridge, lam=sig2 / tau2), jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(exact, ridge, atol=1e-10)
    # general prior N(μ, Σ) vs the N×N ("kernel") form μ_post = μ + ΣXᵀ(XΣXᵀ + σ²I)⁻¹(y − Xμ)
    mu = rng.normal(size=d)
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.5 * np.eye(d)
    k = 5
    xk, yk, xq = x[0, :k], y[0, :k], x[0, k]
    mean, var = bayes.gaussian_predictive(jnp.asarray(x[0]), jnp.asarray(y[0]), jnp.asarray((np.arange(n) < k) * 1.0),
                                          jnp.asarray(xq), noise_var=sig2, prior_mean_d=jnp.asarray(mu),
                                          prior_cov_dxd=jnp.asarray(cov))
    g = xk @ cov @ xk.T + sig2 * np.eye(k)
    mu_post = mu + cov @ xk.T @ np.linalg.solve(g, yk - xk @ mu)
    cov_post = cov - cov @ xk.T @ np.linalg.solve(g, xk @ cov)
    np.testing.assert_allclose(float(mean), xq @ mu_post, rtol=1e-10)
    np.testing.assert_allclose(float(var), sig2 + xq @ cov_post @ xq, rtol=1e-10)


def _snis(f_S, logw_S):
    """Self-normalised importance sampling estimate of E[f] and its delta-method standard error."""
    w = np.exp(logw_S - logw_S.max())
    w = w / w.sum()
    est = np.sum(w * f_S)
    return est, np.sqrt(np.sum(w**2 * (f_S - est) ** 2))


def test_gmm_posterior_mean_vs_importance_sampling(x64):
    """Prior samples w_s ~ ½N(±3e₁, I) weighted by the likelihood estimate E[x_qᵀw | D]."""
    d, n, sig2, S = 2, 4, 0.5, 400_000
    p = prism.sample_gmm_linear(jax.random.key(1), batch=3, n_points=n + 1, d=d, noise_std=sig2**0.5)
    x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
    means = np.asarray(prism.gmm_means(d), np.float64)
    exact = bayes.prefix_bayes(bayes.gmm_posterior_mean, x, y, means_Cxd=means, noise_var=sig2)[:, n]
    ws = prism.sample_gmm_linear(jax.random.key(2), batch=S, n_points=1, d=d).params["w"]
    w_Sxd = np.asarray(ws, np.float64)
    for b in range(3):
        res_SxN = y[b, :n][None] - w_Sxd @ x[b, :n].T
        est, se = _snis(w_Sxd @ x[b, n], -0.5 * np.sum(res_SxN**2, axis=1) / sig2)
        assert se < 0.05, se  # the comparison is informative
        assert abs(exact[b] - est) < 4 * se, (b, exact[b], est, se)


def test_dmmse_of_a_large_gaussian_pool_is_the_gaussian_posterior_mean(x64):
    """A pool of M draws from N(0, I) with uniform weights is importance sampling from the prior:
    dMMSE → the ridge posterior mean with the SNIS standard error."""
    d, n, sig2 = 2, 3, 1.0
    pool = np.asarray(prism.make_task_pool(7, log2_size=17, d=d), np.float64)
    x, y = _linear_prompts(jax.random.key(3), batch=3, n=n + 1, d=d, noise_std=1.0, w_Bxd=np.ones((3, d)))
    dm = bayes.prefix_bayes(bayes.dmmse_posterior_mean, x, y, pool_Mxd=pool, noise_var=sig2)[:, n]
    gp = bayes.prefix_bayes(bayes.gaussian_posterior_mean, x, y, noise_var=sig2)[:, n]
    for b in range(3):
        res = y[b, :n][None] - pool @ x[b, :n].T
        est, se = _snis(pool @ x[b, n], -0.5 * np.sum(res**2, axis=1) / sig2)
        np.testing.assert_allclose(dm[b], est, rtol=1e-9)  # same estimator written twice
        assert se < 0.02, se
        assert abs(dm[b] - gp[b]) < 4 * se, (b, dm[b], gp[b], se)


def test_dmmse_identifies_the_true_task_as_k_grows(x64):
    pool = np.asarray(prism.make_task_pool(0, log2_size=2, d=3), np.float64)
    p = prism.sample_pool_prompts(jax.random.key(4), jnp.asarray(pool, jnp.float32), batch=200, n_points=16,
                                  noise_std=0.5)
    x, y, idx = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64), np.asarray(p.params["index"])
    w_true = pool[idx]

    def weight_on_truth(k):
        mask = jnp.asarray((np.arange(16) < k) * 1.0)
        r = jax.vmap(lambda a, b: bayes.dmmse_weights(a, b, mask, pool_Mxd=jnp.asarray(pool), noise_var=0.25))(
            jnp.asarray(x), jnp.asarray(y))
        return np.asarray(r)[np.arange(200), idx]

    w0, w4, w15 = (weight_on_truth(k).mean() for k in (0, 4, 15))
    assert w0 == pytest.approx(0.25, abs=1e-12)  # k = 0: the uniform prior over M = 4 tasks
    assert w0 < w4 < w15
    assert w15 > 0.999
    # the prediction at k = 0 is the pool mean; at k = 15 it is the true task's x_qᵀw
    pred = bayes.prefix_bayes(bayes.dmmse_posterior_mean, x, y, pool_Mxd=pool, noise_var=0.25)
    np.testing.assert_allclose(pred[:, 0], x[:, 0] @ pool.mean(0), atol=1e-12)
    np.testing.assert_allclose(pred[:, 15], np.einsum("bd,bd->b", x[:, 15], w_true), atol=1e-3)


def test_gmm_with_one_repeated_mean_is_the_gaussian_posterior(x64):
    d = 3
    x, y = _linear_prompts(jax.random.key(5), batch=4, n=6, d=d, noise_std=0.7, w_Bxd=np.ones((4, d)))
    g = bayes.prefix_bayes(bayes.gmm_posterior_mean, x, y, means_Cxd=np.zeros((2, d)), noise_var=0.49)
    r = bayes.prefix_bayes(bayes.gaussian_posterior_mean, x, y, noise_var=0.49)
    np.testing.assert_allclose(g, r, atol=1e-12)
    # and with ±3e₁ the k = 0 prediction is the prior mean 0 (symmetric components)
    g3 = bayes.prefix_bayes(bayes.gmm_posterior_mean, x, y, means_Cxd=np.asarray(prism.gmm_means(d)), noise_var=0.49)
    np.testing.assert_allclose(g3[:, 0], 0.0, atol=1e-12)


def test_gaussian_predictive_is_calibrated(x64):
    """z = (y_q − mean)/sd over draws from the generative model: E z² = 1 (SE √(2/B)) and
    P(|z| ≤ 1.96) = 0.95 (SE √(0.95·0.05/B))."""
    B, n, d, sig = 20_000, 4, 3, 0.5
    w = np.asarray(jax.random.normal(jax.random.key(6), (B, d)), np.float64)
    x, y = _linear_prompts(jax.random.key(7), batch=B, n=n + 1, d=d, noise_std=sig, w_Bxd=w)
    mean, var = bayes.prefix_bayes(bayes.gaussian_predictive, x, y, noise_var=sig**2)
    z = (y[:, n] - mean[:, n]) / np.sqrt(var[:, n])
    assert abs(np.mean(z**2) - 1) < 4 * np.sqrt(2 / B)
    assert abs(np.mean(np.abs(z) <= 1.96) - 0.95) < 4 * np.sqrt(0.95 * 0.05 / B)


def test_family_posterior_mean_vs_quadrature_in_one_dimension(x64):
    """d = 1, two Gaussian families N(μ_c, v_c) with different variances: the posterior of the
    scalar w is ∝ Σ_c π_c N(w; μ_c, v_c) Π_i N(y_i; w x_i, σ²); E[w | D] and P(c | D) by the
    trapezoid rule on a fine grid (the integrand is smooth and negligible beyond ±15)."""
    means, var, logpi, sig2 = np.array([[0.0], [1.5]]), np.array([4.0, 0.25]), np.log([0.3, 0.7]), 0.5
    covs = var[:, None, None]
    rng = np.random.default_rng(11)
    n = 5
    x = rng.normal(size=(3, n + 1, 1))
    y = 1.2 * x[..., 0] + np.sqrt(sig2) * rng.normal(size=(3, n + 1))
    exact = bayes.prefix_bayes(bayes.family_posterior_mean, x, y, means_Cxd=means, covs_CxDxD=covs,
                               noise_var=sig2, log_weights_C=logpi)
    grid = np.linspace(-15, 15, 300_001)
    for b in range(3):
        for k in range(n + 1):
            loglik = -0.5 * np.sum((y[b, :k, None] - x[b, :k, 0, None] * grid[None]) ** 2, axis=0) / sig2
            prior_cG = np.exp(logpi[:, None] - 0.5 * (grid[None] - means[:, 0, None]) ** 2 / var[:, None]) \
                / np.sqrt(2 * np.pi * var[:, None])
            post_cG = prior_cG * np.exp(loglik - loglik.max())[None]
            z_c = np.trapezoid(post_cG, grid, axis=1)
            w_mean = np.trapezoid(grid * post_cG.sum(0), grid) / z_c.sum()
            np.testing.assert_allclose(exact[b, k], x[b, k, 0] * w_mean, rtol=1e-8, atol=1e-10)
            mask = jnp.asarray((np.arange(n + 1) < k) * 1.0)
            r = bayes.family_responsibilities(jnp.asarray(x[b]), jnp.asarray(y[b]), mask, means_Cxd=jnp.asarray(means),
                                              covs_CxDxD=jnp.asarray(covs), noise_var=sig2,
                                              log_weights_C=jnp.asarray(logpi))
            np.testing.assert_allclose(np.asarray(r), z_c / z_c.sum(), rtol=1e-8)


def test_family_posterior_mean_vs_monte_carlo_with_a_singular_family(x64):
    """Dense N(0, I_3) and a family on the first coordinate, N(0, 3·diag(1, 0, 0)) (singular Σ):
    prior draws from the ½/½ mixture weighted by the likelihood (SNIS) estimate E[x_qᵀw | D]."""
    d, n, sig2, S = 3, 3, 0.25, 400_000
    covs = np.stack([np.eye(d), np.diag(np.asarray(prism.support_prior_var(d, 1), np.float64))])
    means = np.zeros((2, d))
    rng = np.random.default_rng(12)
    x = rng.normal(size=(4, n + 1, d))
    w_true = np.array([[1.7, 0, 0], [0.3, -0.8, 1.1], [-2.0, 0, 0], [0.5, 0.5, 0.5]])
    y = np.einsum("bnd,bd->bn", x, w_true) + np.sqrt(sig2) * rng.normal(size=(4, n + 1))
    exact = bayes.prefix_bayes(bayes.family_posterior_mean, x, y, means_Cxd=means, covs_CxDxD=covs,
                               noise_var=sig2)[:, n]
    fam_S = rng.integers(0, 2, S)
    z_Sxd = rng.normal(size=(S, d))
    w_Sxd = np.where(fam_S[:, None] == 0, z_Sxd, z_Sxd * np.sqrt(np.diag(covs[1]))[None])
    for b in range(4):
        res_SxN = y[b, :n][None] - w_Sxd @ x[b, :n].T
        est, se = _snis(w_Sxd @ x[b, n], -0.5 * np.sum(res_SxN**2, axis=1) / sig2)
        assert se < 0.05, se
        assert abs(exact[b] - est) < 4 * se, (b, exact[b], est, se)
    # the support family's own posterior (C = 1) keeps w₂ = w₃ = 0: its prediction only uses x_q1
    one = bayes.prefix_bayes(bayes.family_posterior_mean, x, y, means_Cxd=means[1:], covs_CxDxD=covs[1:],
                             noise_var=sig2)
    x0 = x.copy()
    x0[:, :, 1:] = 0.0  # zeroing coordinates 2, 3 of the queries only changes nothing under that family
    one_q0 = bayes.prefix_bayes(bayes.family_posterior_mean, x, y, x0, means_Cxd=means[1:], covs_CxDxD=covs[1:],
                                noise_var=sig2)
    np.testing.assert_allclose(one, one_q0, atol=1e-12)


def test_family_posterior_mean_reduces_to_gmm_and_gaussian(x64):
    d = 3
    x, y = _linear_prompts(jax.random.key(13), batch=4, n=6, d=d, noise_std=0.7, w_Bxd=np.ones((4, d)))
    rng = np.random.default_rng(13)
    a = rng.normal(size=(d, d))
    cov = a @ a.T + 0.3 * np.eye(d)
    means = np.asarray(prism.gmm_means(d), np.float64)
    fam = bayes.prefix_bayes(bayes.family_posterior_mean, x, y, means_Cxd=means, covs_CxDxD=np.stack([cov, cov]),
                             noise_var=0.49)
    gmm = bayes.prefix_bayes(bayes.gmm_posterior_mean, x, y, means_Cxd=means, noise_var=0.49, prior_cov_dxd=cov)
    np.testing.assert_allclose(fam, gmm, atol=1e-10)
    one = bayes.prefix_bayes(bayes.family_posterior_mean, x, y, means_Cxd=means[:1], covs_CxDxD=cov[None],
                             noise_var=0.49)
    gauss = bayes.prefix_bayes(bayes.gaussian_posterior_mean, x, y, noise_var=0.49, prior_mean_d=means[0],
                               prior_cov_dxd=cov)
    np.testing.assert_allclose(one, gauss, atol=1e-10)
