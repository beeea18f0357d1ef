"""Prefix predictors give the same numbers on 1280 × 41 (prompt, k) pairs at once as in chunks.

Why: on XLA CPU (jaxlib 0.10.2) a reduction over a broadcast product fused with an elementwise
consumer, e.g. ``jnp.sum(m_N * y_N) / jnp.maximum(jnp.sum(m_N), 1)`` vmapped over prompts and k,
returns wrong values for output elements past index ≈ 32759 (measured: 0 bad of 32759 outputs,
41 bad of 32800, 19720 of 52480). Quick experiments stay below that size; paper-scale evaluations
(1280 prompts × 41 or 101 points) do not. Every prefix predictor used for an error curve is run
here once on all B·N = 52480 pairs and once in four chunks of 320 prompts (13120 pairs, below
the threshold), so a predictor written in the miscompiled form fails this test.

The two posterior means that build an N × N Cholesky factor per (prompt, k) pair (Gaussian mixture,
family mixture) run on 4800 prompts × 11 points instead: as many outputs (52800), so the same
threshold is crossed (measured: the miscompiled average above gives 18218 wrong outputs at 4800 × 11,
0 at 2900 × 11), at 0.7 GB peak RSS instead of 4.5 GB for 1280 × 41 × 41² float64 factors.
"""
import functools

import numpy as np
import pytest

from ictl import baselines as bl
from ictl import bayes

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)

B, N, D = 1280, 41, 5
B_SHORT, N_SHORT = 4800, 11   # the same number of outputs with short prompts (N × N factors)


def _prompts(b, n, seed=7):
    """float32 linear-regression prompts from numpy: any data serve a full-vs-chunks comparison, and
    jax.random.normal compiled one threefry program per shape (≈ 3.5 CPU-s each under the bayes test's
    `xla_optimized` mark, 11 of its 17 CPU-s)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, D)).astype(np.float32)
    w = rng.standard_normal((b, D)).astype(np.float32)
    y = (np.einsum("bnd,bd->bn", x, w) + 0.5 * rng.standard_normal((b, n))).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def prompts():
    return _prompts(B, N)


def _full_vs_chunks(run, x, y):
    full = np.asarray(run(x, y))
    b, chunk = x.shape[0], x.shape[0] // 4     # chunks of 13120 or 13200 outputs: below the threshold
    parts = np.concatenate([np.asarray(run(x[i:i + chunk], y[i:i + chunk])) for i in range(0, b, chunk)])
    assert full.shape == y.shape and b * y.shape[1] > 52000
    return np.max(np.abs(full - parts) / np.maximum(1.0, np.abs(parts)))


@pytest.mark.parametrize("name, f", [
    ("least_squares", bl.least_squares), ("ridge", bl.ridge), ("averaging", bl.averaging),
    ("knn", bl.knn), ("lasso", functools.partial(bl.lasso, n_iter=20)),
    ("greedy_tree", bl.greedy_tree),
])
def test_baselines_same_at_scale(prompts, name, f):
    x, y = prompts
    # float32 programs of different batch size may differ in the last bits (different vectorisation);
    # the miscompile shows as O(1) differences
    assert _full_vs_chunks(lambda a, b: bl.prefix_predictions(f, a, b), x, y) < 1e-4, name


@pytest.mark.xla_optimized  # runs more than it compiles
def test_bayes_same_at_scale(prompts):
    short = _prompts(B_SHORT, N_SHORT)
    pool = np.random.default_rng(1).standard_normal((8, D)).astype(np.float32)
    means = np.stack([3 * np.eye(D)[0], -3 * np.eye(D)[0]])
    covs = np.stack([np.eye(D), np.diag([float(D)] + [0.0] * (D - 1))])   # dense and 1-coordinate families
    for f, prior in ((bayes.gaussian_posterior_mean, {}), (bayes.dmmse_posterior_mean, {"pool_Mxd": pool}),
                     (bayes.gmm_posterior_mean, {"means_Cxd": means}),
                     (bayes.family_posterior_mean, {"means_Cxd": np.zeros((2, D)), "covs_CxDxD": covs})):
        run = lambda a, b: bayes.prefix_bayes(f, a, b, noise_var=0.25, **prior)  # noqa: E731
        x, y = short if "means_Cxd" in prior else prompts
        assert _full_vs_chunks(run, x, y) < 1e-9, f.__name__   # float64
