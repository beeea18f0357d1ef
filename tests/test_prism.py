"""Prism task samplers (ictl.tasks.prism): moments against their closed forms (MC, 4 SE)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.tasks import prism


def _close(samples, expected, se_of_one):
    """|mean − expected| < 4 SE with SE = se_of_one / √n."""
    samples = np.asarray(samples, np.float64).ravel()
    se = se_of_one / np.sqrt(samples.size)
    assert abs(samples.mean() - expected) < 4 * se, (samples.mean(), expected, se)


def test_fourier_moments():
    n_max, sig = 10, 0.3
    p = prism.sample_fourier(jax.random.key(0), batch=4000, n_points=8, n_max=n_max, noise_std=sig)
    assert p.x.shape == (4000, 8, 1) and p.params["c"].shape == (4000, 21)
    assert float(jnp.min(p.x)) >= -5.0 and float(jnp.max(p.x)) <= 5.0
    # E c² = s² = 1/(1 + n_max); Var(c²) = 2 s⁴
    s2 = 1 / (1 + n_max)
    _close(np.square(p.params["c"]), s2, np.sqrt(2) * s2)
    # E y² = s²(1 + n_max) + σ² = 1 + σ²; per-prompt means (points within a prompt are correlated)
    y2_B = np.mean(np.square(np.asarray(p.y, np.float64)), axis=1)
    _close(y2_B, 1 + sig**2, y2_B.std())
    # features: E φφᵀ = diag(1, ½, …, ½) under x ~ U[−L, L]
    phi = np.asarray(prism.fourier_features(p.x, n_max=n_max), np.float64).reshape(-1, 21)
    gram = phi.T @ phi / phi.shape[0]
    expected = np.diag([1.0] + [0.5] * 20)
    assert np.max(np.abs(gram - expected)) < 4 / np.sqrt(phi.shape[0])  # x iid and |φ_iφ_j| ≤ 1: SE ≤ 1/√n
    with pytest.raises(ValueError, match="n_max"):
        prism.fourier_features(p.x, n_max=11)


def test_gmm_prior_moments():
    B, d, shift = 20_000, 3, 3.0
    p = prism.sample_gmm_linear(jax.random.key(1), batch=B, n_points=2, d=d, shift=shift, noise_std=0.0)
    w = np.asarray(p.params["w"], np.float64)
    comp = np.asarray(p.params["component"])
    _close(comp, 0.5, 0.5)                               # P(component 1) = ½
    _close(w[:, 0], 0.0, np.sqrt(shift**2 + 1))          # E w₁ = 0, Var w₁ = shift² + 1
    # w₁² = shift² ± 2·shift·z + z²: Var = 4 shift² + 2
    _close(w[:, 0] ** 2, shift**2 + 1, np.sqrt(2 + 4 * shift**2))
    _close(w[:, 1] ** 2, 1.0, np.sqrt(2))                # other coordinates N(0, 1)
    # the component's sign: w₁ − (±shift) ~ N(0, 1)
    centred = w[:, 0] - np.where(comp == 0, shift, -shift)
    _close(centred**2, 1.0, np.sqrt(2))
    np.testing.assert_allclose(np.asarray(p.y), np.einsum("bnd,bd->bn", np.asarray(p.x), w), atol=1e-4)
    # a non-identity Σ: Var w₂ = Σ₂₂
    cov = jnp.diag(jnp.array([1.0, 4.0, 0.25]))
    w2 = np.asarray(prism.sample_gmm_linear(jax.random.key(2), batch=B, n_points=1, d=d, cov=cov).params["w"])
    _close(w2[:, 1] ** 2, 4.0, np.sqrt(2) * 4.0)
    with pytest.raises(ValueError, match="cov"):
        prism.sample_gmm_linear(jax.random.key(2), batch=2, n_points=1, d=d, cov=jnp.eye(2))


def test_task_pool_fixed_by_seed_and_uniform():
    pool = prism.make_task_pool(3, log2_size=12, d=4)
    assert pool.shape == (4096, 4)
    np.testing.assert_array_equal(np.asarray(pool), np.asarray(prism.make_task_pool(3, log2_size=12, d=4)))
    assert not np.allclose(np.asarray(pool), np.asarray(prism.make_task_pool(4, log2_size=12, d=4)))
    _close(pool, 0.0, 1.0)
    _close(np.square(pool), 1.0, np.sqrt(2))
    small = prism.make_task_pool(0, log2_size=2, d=4)
    p = prism.sample_pool_prompts(jax.random.key(5), small, batch=8000, n_points=5, noise_std=0.0)
    idx = np.asarray(p.params["index"])
    np.testing.assert_array_equal(np.asarray(p.params["w"]), np.asarray(small)[idx])
    counts = np.bincount(idx, minlength=4) / idx.size
    assert np.max(np.abs(counts - 0.25)) < 4 * np.sqrt(0.25 * 0.75 / idx.size)
    np.testing.assert_allclose(np.asarray(p.y), np.einsum("bnd,bd->bn", np.asarray(p.x), np.asarray(p.params["w"])),
                               atol=1e-5)
    with pytest.raises(ValueError, match="log2_size"):
        prism.make_task_pool(0, log2_size=-1, d=2)


def test_family_mixture_selects_families_with_their_probabilities():
    d, n, B = 3, 4, 6000
    pool = prism.make_task_pool(0, log2_size=1, d=d)
    samplers = {"pool": lambda key, batch: prism.sample_pool_prompts(key, pool, batch=batch, n_points=n),
                "gmm": functools.partial(prism.sample_gmm_linear, n_points=n, d=d)}
    p, fam = prism.sample_family_mixture(jax.random.key(6), samplers, [0.3, 0.7], batch=B)
    fam = np.asarray(fam)
    _close(fam, 0.7, np.sqrt(0.21))
    # each prompt's y is its own family's function of its x
    w = np.where(fam[:, None] == 0, np.asarray(p.params["pool"]["w"]), np.asarray(p.params["gmm"]["w"]))
    np.testing.assert_allclose(np.asarray(p.y), np.einsum("bnd,bd->bn", np.asarray(p.x), w), atol=1e-4)
    with pytest.raises(ValueError, match="probs"):
        prism.sample_family_mixture(jax.random.key(6), samplers, [0.5, 0.6], batch=4)


def test_gaussian_linear_family_and_support_prior():
    B, d = 20_000, 4
    v = prism.support_prior_var(d, 1)
    np.testing.assert_allclose(np.asarray(v), [4.0, 0, 0, 0])
    p = prism.sample_gaussian_linear(jax.random.key(7), batch=B, n_points=3, d=d, prior_var=v, noise_std=0.5)
    w = np.asarray(p.params["w"], np.float64)
    assert np.all(w[:, 1:] == 0)
    _close(w[:, 0] ** 2, 4.0, np.sqrt(2) * 4.0)          # w₁ ~ N(0, 4): E w₁² = 4, sd(w₁²) = 4√2
    # E y² = E‖w‖² + σ² = d + 0.25 (same as the dense family); per-prompt means
    y2_B = np.mean(np.square(np.asarray(p.y, np.float64)), axis=1)
    _close(y2_B, d + 0.25, y2_B.std())
    dense = prism.sample_gaussian_linear(jax.random.key(8), batch=B, n_points=1, d=d).params["w"]
    _close(np.square(np.asarray(dense)), 1.0, np.sqrt(2))
    with pytest.raises(ValueError, match="support"):
        prism.support_prior_var(3, 4)
    with pytest.raises(ValueError, match="prior_var"):
        prism.sample_gaussian_linear(jax.random.key(0), batch=2, n_points=1, d=d, prior_var=jnp.ones(3))


def test_family_mixture_runs_under_jit():
    d, n = 3, 4
    samplers = {"dense": functools.partial(prism.sample_gaussian_linear, n_points=n, d=d),
                "gmm": functools.partial(prism.sample_gmm_linear, n_points=n, d=d)}
    f = functools.partial(prism.sample_family_mixture, samplers=samplers, probs=[0.5, 0.5], batch=8)
    p_jit, fam_jit = jax.jit(f)(jax.random.key(9))
    p, fam = f(jax.random.key(9))
    np.testing.assert_array_equal(np.asarray(fam_jit), np.asarray(fam))
    np.testing.assert_allclose(np.asarray(p_jit.y), np.asarray(p.y), atol=1e-5)
