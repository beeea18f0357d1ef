"""Exact GP references (float64): scikit-learn as the oracle, closed forms, ML-II, NUTS on the prior."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import digamma
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

from ictl.theory import gp

RNG = np.random.default_rng(0)
X = RNG.uniform(size=(12, 2))
Y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2
XQ = RNG.uniform(size=(5, 2))
LS = np.array([0.5, 0.8])


@pytest.mark.parametrize("kernel,sk", [("rbf", RBF(LS)), ("matern52", Matern(LS, nu=2.5))])
def test_posterior_predictive_matches_sklearn(kernel, sk):
    """sklearn with s·k + WhiteKernel(noise) and no optimiser: predictive variance includes the noise."""
    ref = GaussianProcessRegressor(ConstantKernel(1.7) * sk + WhiteKernel(0.01), optimizer=None, alpha=1e-12).fit(X, Y)
    m_ref, sd_ref = ref.predict(XQ, return_std=True)
    mean, var = gp.posterior_predictive(X, Y, XQ, kernel=kernel, lengthscale=LS, outputscale=1.7, noise=0.01)
    np.testing.assert_allclose(np.asarray(mean), m_ref, atol=1e-9)
    np.testing.assert_allclose(np.asarray(var), sd_ref**2, atol=1e-9)
    lml = gp.log_marginal_likelihood(X, Y, kernel=kernel, lengthscale=LS, outputscale=1.7, noise=0.01)
    assert float(lml) == pytest.approx(ref.log_marginal_likelihood_value_, abs=1e-8)


def test_one_point_closed_form_mask_prior_and_batching():
    """n = 1: mean = k y₁/(s + σ²), var = s + σ² − k²/(s + σ²); a mask equals dropping the rows."""
    s, nz = 2.0, 0.1
    k = s * np.exp(-0.5 * np.sum(((X[0] - XQ) / LS) ** 2, axis=1))
    mean, var = gp.posterior_predictive(X[:1], Y[:1], XQ, kernel="rbf", lengthscale=LS, outputscale=s, noise=nz)
    np.testing.assert_allclose(np.asarray(mean), k * Y[0] / (s + nz), atol=1e-12)
    np.testing.assert_allclose(np.asarray(var), s + nz - k**2 / (s + nz), atol=1e-12)
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1.0])
    keep = mask > 0
    a = gp.posterior_predictive(X, Y, XQ, kernel="matern52", lengthscale=LS, outputscale=s, noise=nz, mask=mask)
    b = gp.posterior_predictive(X[keep], Y[keep], XQ, kernel="matern52", lengthscale=LS, outputscale=s, noise=nz)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12)
    la = gp.log_marginal_likelihood(X, Y, kernel="rbf", lengthscale=LS, outputscale=s, noise=nz, mask=mask)
    lb = gp.log_marginal_likelihood(X[keep], Y[keep], kernel="rbf", lengthscale=LS, outputscale=s, noise=nz)
    assert float(la) == pytest.approx(float(lb), abs=1e-12)
    m0, v0 = gp.posterior_predictive(X[:0], Y[:0], XQ, kernel="rbf", lengthscale=LS, outputscale=s, noise=nz)
    np.testing.assert_array_equal(np.asarray(m0), 0.0)
    np.testing.assert_allclose(np.asarray(v0), s + nz)
    # per-dataset hyperparameters over a batch [2, 3]: lengthscale [2, 3, 1], outputscale [2, 3]
    xb = np.broadcast_to(X, (2, 3) + X.shape)
    yb = np.broadcast_to(Y, (2, 3) + Y.shape)
    qb = np.broadcast_to(XQ, (2, 3) + XQ.shape)
    ss = np.arange(1.0, 7.0).reshape(2, 3)
    mb, vb = gp.posterior_predictive(xb, yb, qb, kernel="rbf", lengthscale=np.full((2, 3, 1), 0.5),
                                     outputscale=ss, noise=nz)
    m1, v1 = gp.posterior_predictive(X, Y, XQ, kernel="rbf", lengthscale=0.5, outputscale=ss[1, 2], noise=nz)
    assert mb.shape == (2, 3, 5)
    np.testing.assert_allclose(np.asarray(vb[1, 2]), np.asarray(v1), atol=1e-12)


def test_gaussian_ei_and_pi_match_monte_carlo():
    z = np.random.default_rng(1).standard_normal(1_000_000)
    mu, var, best = 0.3, 0.49, 0.8
    imp = np.maximum(mu + 0.7 * z - best, 0)
    assert float(gp.expected_improvement(mu, var, best)) == pytest.approx(imp.mean(), abs=4 * imp.std() / 1000)
    assert float(gp.probability_of_improvement(mu, var, best)) == pytest.approx((imp > 0).mean(), abs=2e-3)


def test_ml2_reaches_the_sklearn_optimum(x64):
    """Matérn ARD on two prior draws: our Adam restarts reach sklearn's L-BFGS optimum (same bounds)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(2, 15, 2))
    kern = ConstantKernel(2.0) * Matern(0.4, nu=2.5) + WhiteKernel(1e-3)
    y = np.stack([np.linalg.cholesky(kern(xb)) @ rng.standard_normal(15) for xb in x])
    h = gp.fit_ml2(jax.random.key(0), x, y, kernel="matern52")
    ours = np.asarray(gp.log_marginal_likelihood(x, y, kernel="matern52", lengthscale=h.lengthscale,
                                                 outputscale=h.outputscale, noise=h.noise))
    for b in range(2):
        ref = GaussianProcessRegressor(
            ConstantKernel(1.0, (1e-3, 1e3)) * Matern([0.5, 0.5], (1e-3, 1e3), nu=2.5)
            + WhiteKernel(1e-2, (1.0001e-4, 1e1)), alpha=1e-12, n_restarts_optimizer=5, random_state=0).fit(x[b], y[b])
        assert ours[b] >= ref.log_marginal_likelihood_value_ - 0.05
    assert np.all(np.asarray(h.noise) >= 1e-4)


def _ess(chains):
    """Effective sample size of [C, S] draws: C·S/τ, τ = −1 + 2 Σ_k (ρ_2k + ρ_2k+1) over the pairs of
    autocorrelations (per chain by FFT, averaged) while the pair sums stay positive (Geyer's initial
    positive sequence); draws that are i.i.d. give ≈ C·S."""
    c, s = chains.shape
    z = chains - chains.mean(axis=1, keepdims=True)
    f = np.fft.rfft(z, n=2 * s, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :s].mean(axis=0)
    rho = acov / acov[0]
    pairs = rho[0:s - 1:2] + rho[1:s:2]                   # Γ_k = ρ_2k + ρ_2k+1; Γ_0 = 1 + ρ_1 > 0
    k = int(np.argmax(pairs <= 0)) if np.any(pairs <= 0) else len(pairs)
    return c * s / (-1 + 2 * np.sum(pairs[:k]))


def test_nuts_without_data_samples_the_gamma_hyperprior():
    """All points masked out: NUTS samples the hyperprior, so E[log θ] = ψ(α) − log β (β a rate):
    ℓ ~ Γ(3, 6): −0.869; s ~ Γ(2, 0.15): 2.320 (a scale β would give +2.71 and −0.77). Tolerance:
    4 SE = 4 sd/√ESS with sd of log Γ(α) = √ψ'(α) (0.62 and 0.80) and ESS ≥ 100 of the 4 chains × 100
    draws, which the test checks (Geyer's estimator); 100 warm-up steps (was 150 + 150 draws: the
    runtime, not the compile, shrinks)."""
    prior = gp.HyperPrior()
    xb, yb = np.broadcast_to(X[:, :1], (4, 12, 1)), np.broadcast_to(Y, (4, 12))
    s = gp.nuts_samples(jax.random.key(0), xb, yb, prior=prior, mask=np.zeros(12), num_warmup=100, num_samples=100)
    assert s.lengthscale.shape == (4, 100, 1) and s.outputscale.shape == (4, 100)
    log_ls, log_s = np.log(np.asarray(s.lengthscale))[..., 0], np.log(np.asarray(s.outputscale))
    assert _ess(log_ls) >= 100 and _ess(log_s) >= 100
    assert log_ls.mean() == pytest.approx(digamma(3) - math.log(6), abs=4 * 0.62 / math.sqrt(100))
    assert log_s.mean() == pytest.approx(digamma(2) - math.log(0.15), abs=4 * 0.80 / math.sqrt(100))
    assert np.all(np.asarray(s.noise) >= 1e-4)
    means, vars_ = gp.mixture_predictive(gp.Hypers(*(a[0] for a in s)), X[:, :1], Y, XQ[:, :1], kernel="matern52",
                                         mask=np.zeros(12))
    assert means.shape == (100, 5)
    lp = jax.jit(gp.mixture_log_prob)(means, vars_, np.zeros(5))  # prior predictive: a scale mixture at 0
    assert np.all(np.asarray(lp) > -gp.gaussian_nll(0.0, np.asarray(vars_).max(), 0.0))


def test_bad_input():
    with pytest.raises(ValueError, match="kernel"):
        gp.posterior_predictive(X, Y, XQ, kernel="matern32", lengthscale=1.0, outputscale=1.0, noise=0.1)
    with pytest.raises(ValueError, match="lengthscale"):
        gp.posterior_predictive(X, Y, XQ, kernel="rbf", lengthscale=-1.0, outputscale=1.0, noise=0.1)
    with pytest.raises(ValueError, match="noise"):
        gp.posterior_predictive(X, Y, XQ, kernel="rbf", lengthscale=1.0, outputscale=1.0, noise=0.0)
    with pytest.raises(ValueError, match="y"):
        gp.posterior_predictive(X, np.where(np.arange(12) == 3, np.nan, Y), XQ, kernel="rbf", lengthscale=1.0,
                                outputscale=1.0, noise=0.1)
    with pytest.raises(ValueError, match="hyperprior.noise"):
        gp.check_hyperprior(gp.HyperPrior(noise=(0.0, 1.0)))
