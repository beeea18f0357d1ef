"""Baselines for the sequential function classes."""
import jax
import jax.numpy as jnp
import numpy as np

from ictl import baselines as bl
from ictl.tasks import sequential as sq


def test_dynamics_least_squares_recovers_w_after_d_transitions(x64):
    d, n = 3, 10
    p = sq.sample_linear_dynamics(jax.random.key(0), batch=64, n_points=n, d=d, dtype=jnp.float64)
    pred = np.asarray(bl.dynamics_least_squares(p.x, p.y))
    assert np.all(pred[:, 0] == 0)  # no transitions seen yet
    rel = np.sum((pred - np.asarray(p.y)) ** 2, axis=-1) / np.sum(np.asarray(p.y) ** 2, axis=-1)  # [B, N]
    # noiseless: d transitions in general position determine W exactly (float64 pinv; measured 6e-28)
    assert rel[:, d:].max() < 1e-20
    # with t = 1 < d the fit cannot know W off the one seen direction: a large relative error (measured 0.80)
    assert rel[:, 1].mean() > 0.3


def test_window_least_squares_is_exact_on_a_linear_window_target(x64):
    d, w, n = 2, 3, 12
    x = jax.random.normal(jax.random.key(1), (32, n, d), jnp.float64)
    theta = jax.random.normal(jax.random.key(2), (32, w * d), jnp.float64)
    y = jnp.einsum("bnu,bu->bn", sq.window_features(x, w), theta)
    pred = bl.window_least_squares(x, y, w)
    # w·d = 6 features: exact from k = 6 examples on (features in general position)
    np.testing.assert_allclose(pred[:, w * d:], y[:, w * d:], atol=1e-9)


def test_window_least_squares_beats_zero_on_relu_windows():
    d, w, n = 2, 2, 40
    p = sq.sample_window_relu(jax.random.key(3), batch=512, n_points=n, d=d, window=w, hidden=100)
    pred = bl.window_least_squares(p.x, p.y, w)
    ls_err = float(jnp.mean((pred[:, -5:] - p.y[:, -5:]) ** 2))
    zero_err = float(jnp.mean(p.y[:, -5:] ** 2))  # = E y_t² = d·min(t, w) = 4 in expectation
    # relu(g) = g/2 + |g|/2 and E[g relu(g)] = E g²/2, so the best linear predictor of each unit carries
    # (E g²/4) / (E relu(g)²) = (E g²/4) / (E g²/2) = ½ of its energy: least squares on the window tends
    # to ≈ 0.5 of E y², times an estimation factor ≈ 1 + p/(k − p) ≈ 1.12 here (p = w·d = 4, k ≈ 37);
    # measured 0.60. The bound 0.8 leaves room for Monte Carlo error over 512 prompts.
    assert ls_err < 0.8 * zero_err, (ls_err, zero_err)
