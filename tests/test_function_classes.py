"""The Garg function-class samplers, the curriculum, the tokens and the OOD suites."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.tasks import function_classes as fc
from ictl.tasks import ood

B, N, D = 2000, 16, 5


def _mc(per_prompt):
    """Mean and standard error over prompts (points within a prompt share the function)."""
    v = np.asarray(per_prompt, np.float64)
    return v.mean(), v.std(ddof=1) / np.sqrt(len(v))


@pytest.mark.parametrize("task, expected", [
    ("linear", D),          # E (wᵀx)² = E‖w‖²·1 = d
    ("sparse_linear", 3),   # three N(0,1) coordinates: E y² = s = 3
    ("relu_2nn", D),        # E[y²|x] = (2/h)·h·E relu(z)², z ~ N(0,‖x‖²) → ‖x‖², E = d
    ("decision_tree", 1),   # y is a leaf value ~ N(0, 1)
    ("noisy_linear", D + 1),  # d + σ², σ = 1
])
def test_second_moment(task, expected):
    p = fc.sample_prompts(jax.random.key(0), task, batch=B, n_points=N, d=D)
    assert p.x.shape == (B, N, D) and p.y.shape == (B, N)
    m, se = _mc(jnp.mean(p.y**2, axis=1))
    assert abs(m - expected) < 4 * se, (m, se)
    assert fc.NORMALIZERS[task](D) == (3.0 if task == "sparse_linear" else 1.0 if task == "decision_tree" else D)


def test_inputs_are_standard_gaussian():
    x = np.asarray(fc.sample_prompts(jax.random.key(1), "linear", batch=B, n_points=N, d=D).x).reshape(-1, D)
    cov = x.T @ x / len(x)
    # entries of the sample covariance have SE ≈ sqrt(2/n) on the diagonal, sqrt(1/n) off it
    assert np.max(np.abs(cov - np.eye(D))) < 5 * np.sqrt(2 / len(x))


def test_sparse_has_exactly_s_nonzeros_and_noise_variance():
    p = fc.sample_prompts(jax.random.key(2), "sparse_linear", batch=64, n_points=4, d=10)
    assert np.all(np.sum(np.asarray(p.params["w"]) != 0, axis=1) == 3)
    q = fc.sample_prompts(jax.random.key(3), "noisy_linear", batch=B, n_points=N, d=D, noise_std=0.5)
    resid = q.y - fc.apply_linear(q.params, q.x)
    m, se = _mc(jnp.mean(resid**2, axis=1))
    assert abs(m - 0.25) < 4 * se


def test_tree_matches_naive_traversal():
    p = fc.sample_prompts(jax.random.key(4), "decision_tree", batch=8, n_points=32, d=D)
    coord, leaf = np.asarray(p.params["coord"]), np.asarray(p.params["leaf"])
    x = np.asarray(p.x)
    for b in range(8):
        for n in range(32):
            node = 0
            for _ in range(4):
                node = 2 * node + (2 if x[b, n, coord[b, node]] > 0 else 1)
            assert np.isclose(p.y[b, n], leaf[b, node - 15])
        assert len(np.unique(np.asarray(p.y[b]))) <= 16


def test_curriculum_schedule_and_masks():
    # Garg: dims 5 + ⌊t/2000⌋ capped at 20, points 11 + 2⌊t/2000⌋ capped at 41
    for step, (dd, nn) in {0: (5, 11), 1999: (5, 11), 2000: (6, 13), 9999: (9, 19), 30000: (20, 41),
                           10**6: (20, 41)}.items():
        d_act, n_act, dmask, pmask = jax.jit(lambda s: fc.curriculum_masks(s, d=20, n_points=41))(step)
        assert (int(d_act), int(n_act)) == (dd, nn)
        assert float(dmask.sum()) == dd and float(pmask.sum()) == nn
        assert float(dmask[dd - 1]) == 1 and (dd == 20 or float(dmask[dd]) == 0)
    p = fc.sample_prompts(jax.random.key(5), "sparse_linear", batch=64, n_points=4, d=20, d_active=7)
    assert np.all(np.asarray(p.x[..., 7:]) == 0) and np.all(np.asarray(p.params["w"][:, 7:]) == 0)
    t = fc.sample_prompts(jax.random.key(6), "decision_tree", batch=64, n_points=4, d=20, d_active=7)
    assert int(t.params["coord"].max()) < 7
    with pytest.raises(ValueError, match="curriculum"):
        fc.curriculum_masks(0, d=10, n_points=41)


def test_interleave_layout():
    x = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    y = -jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3)
    t = fc.interleave(x, y)
    assert t.shape == (2, 6, 2)
    np.testing.assert_array_equal(t[:, ::2], x)
    np.testing.assert_array_equal(t[:, 1::2, 0], y)
    np.testing.assert_array_equal(t[:, 1::2, 1], 0)
    np.testing.assert_array_equal(fc.predictions_at_x(t[..., 0]), x[..., 0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        fc.sample_prompts(jax.random.key(0), "quadratic", batch=2, n_points=2, d=2)
    with pytest.raises(ValueError, match="sparsity"):
        fc.sample_prompts(jax.random.key(0), "sparse_linear", batch=2, n_points=2, d=2)
    with pytest.raises(ValueError, match="suite"):
        ood.sample_ood(jax.random.key(0), "rotated", batch=2, n_points=2, d=2)
    with pytest.raises(ValueError, match="scale"):
        ood.sample_ood(jax.random.key(0), "scale_x", batch=2, n_points=2, d=2, scale=-1.0)


# ----------------------------------------------------------------------------- OOD suites
def _cov(x):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.T @ x / len(x)


@pytest.mark.parametrize("suite, eig", [("skewed", ood.skewed_eigenvalues), ("half_subspace", ood.half_subspace_eigenvalues)])
def test_covariance_suites(suite, eig):
    p = ood.sample_ood(jax.random.key(7), suite, batch=B, n_points=N, d=D)
    lam = np.sort(np.linalg.eigvalsh(_cov(p.x)))[::-1]
    want = np.asarray(eig(D))
    assert np.isclose(want.sum(), D)
    # n = 32000 samples: the eigenvalue SE is ≈ λ√(2/n) ≈ 0.008λ; 5% relative + 0.01 absolute
    np.testing.assert_allclose(lam, want, rtol=0.05, atol=0.01)
    np.testing.assert_array_equal(p.xq, p.x)


def test_orthogonal_and_overlapping():
    p = ood.sample_ood(jax.random.key(8), "orthogonal", batch=64, n_points=8, d=D)
    x, xq = np.asarray(p.x, np.float64), np.asarray(p.xq, np.float64)
    for k in range(1, D):
        dots = np.einsum("bnd,bd->bn", x[:, :k], xq[:, k])
        assert np.max(np.abs(dots)) < 1e-3 * np.max(np.linalg.norm(xq[:, k], axis=-1))
    assert np.all(xq[:, D:] == 0)  # no orthogonal complement once k ≥ d
    np.testing.assert_allclose(np.asarray(p.yq), np.einsum("bnd,bd->bn", xq, np.asarray(p.w)), atol=1e-4)
    q = ood.sample_ood(jax.random.key(9), "overlapping", batch=64, n_points=8, d=D)
    xo, xqo = np.asarray(q.x), np.asarray(q.xq)
    for k in range(1, 8):
        hit = np.all(np.isclose(xo[:, :k], xqo[:, k:k + 1]), axis=-1)   # [B, k]
        assert np.all(hit.sum(axis=1) >= 1)


def test_quadrants_scales_and_noise():
    p = ood.sample_ood(jax.random.key(10), "random_quadrants", batch=64, n_points=N, d=D)
    s = np.sign(np.asarray(p.x))
    assert np.all(s == s[:, :1])                     # one sign pattern per prompt
    assert np.mean(np.sign(np.asarray(p.xq)) != s[:, :1]) > 0.3  # queries from any quadrant (½ expected)
    for c in ood.SCALES:
        px = ood.sample_ood(jax.random.key(11), "scale_x", batch=B, n_points=N, d=D, scale=c)
        m, se = _mc(jnp.mean(jnp.sum(px.x**2, -1), 1))
        assert abs(m - c**2 * D) < 4 * se           # E‖c z‖² = c² d
        py = ood.sample_ood(jax.random.key(12), "scale_y", batch=B, n_points=N, d=D, scale=c)
        m, se = _mc(jnp.mean(py.y**2, 1))
        assert abs(m - c**2 * D) < 4 * se           # E (c wᵀz)² = c² d
    pn = ood.sample_ood(jax.random.key(13), "noisy", batch=B, n_points=N, d=D)
    m, se = _mc(jnp.mean((pn.y - jnp.einsum("bnd,bd->bn", pn.x, pn.w))**2, 1))
    assert abs(m - 1.0) < 4 * se                    # σ² = 1
    np.testing.assert_array_equal(pn.yq, pn.y)
