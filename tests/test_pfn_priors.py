"""PFN priors: GP datasets have the GP's covariance, Gamma hyperpriors use rates, the BNN prior."""
import math

import jax
import numpy as np
import pytest

from ictl.tasks import bnn_prior, gp_prior
from ictl.theory import gp


def test_gp_datasets_have_the_kernel_covariance(x64):
    """Whitening each dataset by the float64 Cholesky of its own k(X, X) + noise·I must give i.i.d.
    N(0, 1): mean of z² = 1 within 4 SE (SE = √(2/M)), and the mean ⟨z_i z_{i+1}⟩ = 0."""
    B, N = 400, 12
    ds = jax.jit(lambda k: gp_prior.sample_gp(k, batch=B, n_points=N, d=2, kernel="matern52", lengthscale=0.3,
                                              outputscale=2.0, noise=0.05))(jax.random.key(0))
    assert ds.x.dtype == np.float32 and ds.x.shape == (B, N, 2)
    assert np.all((np.asarray(ds.x) >= 0) & (np.asarray(ds.x) <= 1))
    x, y = np.asarray(ds.x, np.float64), np.asarray(ds.y, np.float64)
    z = []
    for b in range(B):
        k = np.asarray(gp.kernel_matrix(x[b], x[b], kernel="matern52", lengthscale=0.3, outputscale=2.0))
        z.append(np.linalg.solve(np.linalg.cholesky(k + float(ds.noise[b]) * np.eye(N)), y[b]))
    z = np.stack(z)
    M = z.size
    assert np.mean(z**2) == pytest.approx(1.0, abs=4 * math.sqrt(2 / M))
    assert np.mean(z[:, 1:] * z[:, :-1]) == pytest.approx(0.0, abs=4 / math.sqrt(B * (N - 1)))
    np.testing.assert_allclose(np.asarray(ds.noise), 0.05 + 2e-6, rtol=1e-5)   # noise + 1e-6·s jitter


def test_hyperprior_gammas_use_rates():
    """Γ(α, β) with rate β: E ℓ = 3/6 = 0.5, E s = 2/0.15 = 13.3 (a scale β would give 18 and 0.3);
    noise = 1e-4 + Γ(1e-4, 1): ≥ 1e-4, and P(noise > 2e-4) = P(Γ > 1e-4) ≈ 1 − (1e-4)^1e-4 ≈ 9e-4."""
    M = 20000
    ls, s, nz = jax.jit(lambda k: gp_prior.sample_hyperparameters(k, gp.HyperPrior(), batch=M, d=2))(jax.random.key(0))
    ls, s, nz = (np.asarray(a, np.float64) for a in (ls, s, nz))
    assert ls.mean() == pytest.approx(0.5, abs=4 * math.sqrt(3) / 6 / math.sqrt(2 * M))
    assert s.mean() == pytest.approx(2 / 0.15, abs=4 * math.sqrt(2) / 0.15 / math.sqrt(M))
    assert nz.min() >= 1e-4 * (1 - 1e-6)
    assert (nz > 2e-4).mean() < 3e-3
    ds = jax.jit(lambda k: gp_prior.sample_gp_hyperprior(k, batch=256, n_points=50, d=1))(jax.random.key(1))
    assert np.all(np.isfinite(np.asarray(ds.y)))


def test_marginal_y_is_one_datasets_point():
    """`sample_marginal_y` (the bar borders' prior samples) has the law of one dataset point's y
    (k(x, x) = s: test_gp_datasets_have_the_kernel_covariance checks the datasets' covariance):
    fixed hyperparameters N(0, s + noise + 1e-6·s) = N(0, 2.500002) here (a draw missing the noise
    would have variance 2); the hyperprior's is the mixture of those normals over (s, noise), its cdf
    computed from scipy's Gamma quantiles (scale = 1/rate). KS p > 1e-3; E y² = s + noise
    within 4 SE (√(2·2.5²/M)); the mixture's kurtosis 3(1 + 1/α_s) = 4.5 > 3.5."""
    from scipy.stats import kstest, norm

    M = 4000
    ym = np.asarray(jax.jit(lambda k: gp_prior.sample_marginal_y(k, M, outputscale=2.0, noise=0.5))(jax.random.key(0)),
                    np.float64)
    assert np.mean(ym**2) == pytest.approx(2.5, abs=4 * math.sqrt(2 * 2.5**2 / M))
    assert kstest(ym, norm(scale=math.sqrt(2.5 + 2e-6)).cdf).pvalue > 1e-3
    hm = np.asarray(jax.jit(lambda k: gp_prior.sample_marginal_y_hyperprior(k, M))(jax.random.key(2)), np.float64)
    rng = np.random.default_rng(0)
    # the mixture cdf over s at 2000 midpoint quantiles of Γ(2, rate 0.15) (scipy, scale = 1/rate): Φ(y/sd(u))
    # is monotone in the quantile level u, so the rule's error is ≤ 1/2000, far below the KS statistic's
    # p = 1e-3 threshold at M = 4000 (1.95/√4000 = 0.031); 20 000 Monte Carlo draws made a [4000, 20 000]
    # float64 matrix (3 GB peak RSS, 10 CPU-s). The noise Γ(1e-4, 1) (≈ 0) stays a numpy draw.
    from scipy.stats import gamma

    s = gamma.ppf((np.arange(2000) + 0.5) / 2000, 2.0, scale=1 / 0.15)
    sd = np.sqrt(s + 1e-4 + rng.gamma(1e-4, 1.0, 2000) + 1e-6 * s)
    assert kstest(hm, lambda y: norm.cdf(np.asarray(y)[:, None] / sd[None, :]).mean(axis=1)).pvalue > 1e-3
    assert np.mean(hm**4) / np.mean(hm**2) ** 2 > 3.5


def test_bnn_prior():
    small = jax.jit(lambda k: bnn_prior.sample_bnn_classification(k, batch=2000, n_points=20, d=3, hidden=5))(
        jax.random.key(0))
    assert small.x.shape == (2000, 20, 3) and set(np.unique(np.asarray(small.y))) == {0, 1}
    # the classes are exchangeable under the prior (W₂, b₂ symmetric): P(y = 1) = 1/2 (SE ≤ 0.5/√B)
    assert np.asarray(small.y).mean() == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(2000))
    # labels follow p1: E[y − p1] = 0 (SE ≤ 0.5/√(B·N))
    assert np.mean(np.asarray(small.y) - np.asarray(small.p1)) == pytest.approx(0.0, abs=4 * 0.5 / math.sqrt(40000))
    # no activation (the authors' model): logit p1 is affine in x; exact least squares leaves no residual
    x, p1 = np.asarray(small.x[0], np.float64), np.clip(np.asarray(small.p1[0], np.float64), 1e-6, 1 - 1e-6)
    a = np.concatenate([x, np.ones((20, 1))], axis=1)
    logit = np.log(p1 / (1 - p1))
    res = logit - a @ np.linalg.lstsq(a, logit, rcond=None)[0]
    assert np.max(np.abs(res)) < 1e-3 * max(1.0, np.max(np.abs(logit)))
    big = jax.jit(lambda k: bnn_prior.sample_bnn_classification(k, batch=4, n_points=10, d=8, hidden=64,
                                                                activation="tanh"))(jax.random.key(1))
    assert big.x.shape == (4, 10, 8)


def test_bad_input():
    with pytest.raises(ValueError, match="kernel"):
        gp_prior.sample_gp(jax.random.key(0), batch=2, n_points=3, d=1, kernel="periodic")
    with pytest.raises(ValueError, match="lengthscale"):
        gp_prior.sample_gp(jax.random.key(0), batch=2, n_points=3, d=1, lengthscale=0.0)
    with pytest.raises(ValueError, match="n_points"):
        gp_prior.sample_gp(jax.random.key(0), batch=2, n_points=0, d=1)
    with pytest.raises(ValueError, match="num"):
        gp_prior.sample_marginal_y(jax.random.key(0), 0, outputscale=1.0, noise=1e-4)
    with pytest.raises(ValueError, match="activation"):
        bnn_prior.sample_bnn_classification(jax.random.key(0), batch=2, n_points=3, d=1, hidden=2, activation="elu")
