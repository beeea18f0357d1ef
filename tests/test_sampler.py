"""Moments of the linear-regression prompt sampler (Monte Carlo, tolerances of a few SEs)."""
import jax
import jax.numpy as jnp
import numpy as np

from ictl.tasks.linear import sample_linear_prompts


def test_shapes_and_determinism():
    k = jax.random.key(0)
    p = sample_linear_prompts(k, batch=3, n_ctx=4, d=2, n_query=5)
    assert p.x_ctx.shape == (3, 4, 2) and p.y_ctx.shape == (3, 4)
    assert p.x_q.shape == (3, 5, 2) and p.y_q.shape == (3, 5) and p.w.shape == (3, 2) and p.cov is None
    q = sample_linear_prompts(k, batch=3, n_ctx=4, d=2, n_query=5)
    assert all(np.array_equal(a, b) for a, b in zip(p[:5], q[:5]))


def test_covariances_and_labels(x64):
    lam = np.array([[2.0, 0.6], [0.6, 1.0]])
    lam_q = np.diag([0.5, 3.0])
    p = sample_linear_prompts(jax.random.key(1), batch=40000, n_ctx=5, d=2, cov=lam, query_cov=lam_q,
                              noise_std=0.5, dtype=jnp.float64)
    x = np.asarray(p.x_ctx).reshape(-1, 2)
    emp = x.T @ x / len(x)
    # SE of an entry of a sample covariance ≈ sqrt((Λ_ii Λ_jj + Λ_ij²) / n); n = 2e5 → ≤ 0.007
    np.testing.assert_allclose(emp, lam, atol=0.03)
    xq = np.asarray(p.x_q).reshape(-1, 2)
    np.testing.assert_allclose(xq.T @ xq / len(xq), lam_q, atol=0.1)  # n = 4e4, SE ≤ 0.02 (entry 3.0)
    resid = np.asarray(p.y_ctx) - np.einsum("bnd,bd->bn", np.asarray(p.x_ctx), np.asarray(p.w))
    assert abs(resid.var() - 0.25) < 0.01  # noise variance σ² = 0.25, SE ≈ 0.25·sqrt(2/2e5) = 8e-4
    w = np.asarray(p.w)
    np.testing.assert_allclose(w.T @ w / len(w), np.eye(2), atol=0.04)  # w ~ N(0, I), SE ≈ 0.007


def test_random_cov_and_fixed_task(x64):
    p = sample_linear_prompts(jax.random.key(2), batch=20000, n_ctx=50, d=3, random_cov=(0.5, 2.0),
                              w=jnp.array([1.0, -2.0, 0.5]), dtype=jnp.float64)
    cov = np.asarray(p.cov)
    lam = np.einsum("bii->bi", cov)
    assert lam.min() >= 0.5 and lam.max() <= 2.0
    assert abs(lam.mean() - 1.25) < 0.01  # U(0.5, 2) mean 1.25, SE ≈ 0.43/sqrt(6e4) = 2e-3
    assert np.count_nonzero(cov - np.einsum("bi,ij->bij", lam, np.eye(3))) == 0  # diagonal
    # per-prompt variance of x_j matches its λ_j: mean over prompts of (emp var / λ) = 1
    ratio = np.asarray(p.x_ctx).var(axis=1, ddof=1) / lam  # unbiased per-prompt variance
    assert abs(ratio.mean() - 1.0) < 0.01
    np.testing.assert_array_equal(np.asarray(p.w), np.broadcast_to([1.0, -2.0, 0.5], (20000, 3)))


def test_noiseless_labels_are_bitwise_those_with_zero_noise_added():
    """noise_std = 0 skips the noise draw; the labels keep every bit of x·w + 0·ε (the former form)."""
    from ictl import rng

    def drawn(key, batch, n_ctx, d):   # the former sampler's noiseless labels: 0·ε drawn and added
        _, k_x, k_q, k_w, k_e = jax.random.split(key, 5)
        x, xq, w = rng.normal(k_x, (batch, n_ctx, d)), rng.normal(k_q, (batch, 1, d)), rng.normal(k_w, (batch, d))
        eps = 0.0 * rng.normal(k_e, (batch, n_ctx + 1))
        return jnp.einsum("bnd,bd->bn", x, w) + eps[:, :n_ctx], jnp.einsum("bqd,bd->bq", xq, w) + eps[:, n_ctx:]

    for seed in range(3):
        want = jax.jit(drawn, static_argnums=(1, 2, 3))(jax.random.key(seed), 500, 20, 5)
        p = jax.jit(lambda k: sample_linear_prompts(k, batch=500, n_ctx=20, d=5))(jax.random.key(seed))
        for a, b in zip(want, (p.y_ctx, p.y_q)):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
    noisy = sample_linear_prompts(jax.random.key(0), batch=500, n_ctx=20, d=5, noise_std=0.5)
    resid = np.asarray(noisy.y_ctx) - np.einsum("bnd,bd->bn", np.asarray(noisy.x_ctx), np.asarray(noisy.w))
    assert 0.45 < resid.std() < 0.55   # σ = 0.5 on 10⁴ residuals: SE of the std ≈ 0.0035
