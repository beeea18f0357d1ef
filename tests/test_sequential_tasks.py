"""Sequential function classes (ictl.tasks.sequential): structure and moments (MC, 4 SE)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.tasks import sequential as sq


def test_linear_dynamics_contracts_and_follows_W():
    p = sq.sample_linear_dynamics(jax.random.key(0), batch=500, n_points=6, d=4, max_radius=0.8)
    x, y, W = (np.asarray(a, np.float64) for a in (p.x, p.y, p.params["W"]))
    assert np.max(np.linalg.norm(W, ord=2, axis=(1, 2))) <= 0.8 * (1 + 1e-5)
    assert np.max(np.abs(np.linalg.eigvals(W))) <= 0.8 * (1 + 1e-5)   # spectral radius ≤ spectral norm
    np.testing.assert_allclose(y, np.einsum("bij,bnj->bni", W, x), atol=1e-5)   # y_t = x_{t+1} = W x_t
    np.testing.assert_allclose(x[:, 1:], y[:, :-1])
    assert np.all(np.linalg.norm(y, axis=-1) <= 0.8 * np.linalg.norm(x, axis=-1) + 1e-5)
    # x_1 ~ N(0, I_4): E‖x_1‖² = 4, Var = 8
    sq1 = np.sum(x[:, 0] ** 2, axis=-1)
    assert abs(sq1.mean() - 4) < 4 * np.sqrt(8 / 500)
    # G_ij ~ N(0, 1/d) has ‖G‖₂ ≈ 2 > 0.8 for d = 4, so W is rescaled: ‖W‖₂ = 0.8 for almost all
    assert np.mean(np.isclose(np.linalg.norm(W, ord=2, axis=(1, 2)), 0.8, rtol=1e-4)) > 0.95
    with pytest.raises(ValueError, match="max_radius"):
        sq.sample_linear_dynamics(jax.random.key(0), batch=2, n_points=2, d=2, max_radius=1.5)


def test_linear_dynamics_noise_moments():
    """With noise s: x_{t+1} − W x_t = s ε_t, E‖·‖² = d s² (Var 2 d s⁴)."""
    B, d, s = 2000, 3, 0.3
    p = sq.sample_linear_dynamics(jax.random.key(1), batch=B, n_points=3, d=d, noise_std=s)
    x, y, W = (np.asarray(a, np.float64) for a in (p.x, p.y, p.params["W"]))
    r2 = np.sum((y - np.einsum("bij,bnj->bni", W, x)) ** 2, axis=-1).ravel()
    assert abs(r2.mean() - d * s**2) < 4 * np.sqrt(2 * d * s**4 / r2.size)


def test_window_relu_depends_on_the_window_only_and_moments():
    B, N, d, w = 4000, 5, 2, 3
    p = sq.sample_window_relu(jax.random.key(2), batch=B, n_points=N, d=d, window=w)
    y = np.asarray(p.y, np.float64)
    # E y_t² = d · min(t, w) for t = 1..N; SE from the sample
    for t in range(1, N + 1):
        y2 = y[:, t - 1] ** 2
        assert abs(y2.mean() - d * min(t, w)) < 4 * y2.std() / np.sqrt(B), (t, y2.mean())
    # changing x_1 changes y_1..y_w and not y_{w+1}, …
    x2 = p.x.at[:, 0].add(1.0)
    y_new = np.asarray(sq.apply_window_relu(p.params, x2), np.float64)
    np.testing.assert_array_equal(y_new[:, w:], y[:, w:])
    assert np.mean(np.abs(y_new[:, :w] - y[:, :w]) > 0) > 0.5


def test_randomize_labels_fraction_and_moments():
    y = jnp.full((200, 50), 7.0)
    for frac in (0.0, 0.25, 1.0):
        y_new, mask = sq.randomize_labels(jax.random.key(3), y, fraction=frac, label_std=2.0)
        m = np.asarray(mask)
        assert abs(m.mean() - frac) < 4 * np.sqrt(max(frac * (1 - frac), 1e-12) / m.size) + 1e-12
        yn = np.asarray(y_new, np.float64)
        np.testing.assert_array_equal(yn[~m], 7.0)
        if frac > 0:  # replaced labels ~ N(0, 4): E y² = 4, Var y² = 32
            assert abs(np.mean(yn[m] ** 2) - 4) < 4 * np.sqrt(32 / m.sum())
    with pytest.raises(ValueError, match="fraction"):
        sq.randomize_labels(jax.random.key(3), y, fraction=1.5)
