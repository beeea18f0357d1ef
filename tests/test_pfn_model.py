"""PFN model: permutation invariance of the context, no leaks between queries or from their y."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.pfn import PFN, PFNConfig, init_params, predict

B, n, Q, d = 2, 5, 4, 3
T = n + Q


def _random_params(cfg, seed=0):
    """Parameters with `init_params`' tree and shapes (traced, not compiled), every leaf N(0, 0.3²)
    (LayerNorm scales 1 + N(0, 0.3²)), drawn with numpy: the read-out is zero at init (uniform bucket
    probabilities), so outputs would not depend on the inputs. (Jitting init + perturbation compiled
    for 3–10 s per config; eager init compiles one program per op.)"""
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        base = 1.0 if getattr(path[-1], "key", None) == "scale" else 0.0
        return jnp.asarray((base + 0.3 * rng.standard_normal(s.shape)).astype(np.float32))  # no convert op
    return jax.tree_util.tree_map_with_path(leaf, shapes)


def _inputs(rng, batch):
    return (rng.uniform(size=(batch, T, d)).astype(np.float32), rng.standard_normal((batch, T)).astype(np.float32))


@pytest.fixture(scope="module")
def setup():
    cfg = PFNConfig(d_in=d, n_layers=2, n_heads=2, width=16, num_buckets=7, max_tokens=16)
    params = _random_params(cfg)
    x, y = _inputs(np.random.default_rng(2), B)
    model = PFN(cfg)
    f = jax.jit(model.apply, static_argnums=3)   # n static: keys sliced to the context
    g = jax.jit(model.apply)                      # n traced: a mask over all T keys
    return cfg, model, params, x, y, f, g


def test_context_permutation_invariance(setup):
    cfg, model, params, x, y, f, g = setup
    out = np.asarray(f(params, x, y, n))
    perm = np.array([3, 0, 4, 2, 1] + list(range(n, T)))
    out_p = f(params, x[:, perm], y[:, perm], n)
    np.testing.assert_allclose(out_p[:, n:], out[:, n:], atol=1e-5)       # queries unchanged
    np.testing.assert_allclose(out_p[:, :n], out[:, perm[:n]], atol=1e-5)  # context outputs permute along
    assert np.max(np.abs(out[:, n:] - out[:, n:n + 1])) > 1e-3            # outputs do depend on x_q


def test_no_query_sees_another_query_or_a_query_y(setup):
    cfg, model, params, x, y, f, g = setup
    out = np.asarray(f(params, x, y, n))
    y_bad = y.copy()
    y_bad[:, n:] = np.nan                                                   # query y: never read, even NaN
    np.testing.assert_array_equal(f(params, x, y_bad, n), out)
    x2 = x.copy()
    x2[:, n + 1] += 0.5                                                     # move query 1 only
    changed = np.max(np.abs(np.asarray(f(params, x2, y, n)) - out), axis=(0, 2))
    assert changed[n + 1] > 1e-3
    np.testing.assert_array_equal(changed[np.arange(T) != n + 1], 0.0)
    y3 = y.copy()
    y3[:, 0] += 1.0                                                         # a context y reaches the queries
    out3 = np.asarray(f(params, x, y3, n))
    assert np.min(np.max(np.abs(out3[:, n:] - out[:, n:]), axis=-1)) > 1e-4


def test_traced_context_size_and_predict_agree(setup):
    cfg, model, params, x, y, f, g = setup
    static = np.asarray(f(params, x, y, n))
    np.testing.assert_allclose(g(params, x, y, jnp.int32(n)), static, atol=1e-5)
    np.testing.assert_allclose(jax.jit(functools.partial(predict, model))(params, x[:, :n], y[:, :n], x[:, n:]),
                               static[:, n:], atol=1e-5)
    # n = 0: each query sees only itself, so its output is a function of its own x
    no_ctx = np.asarray(f(params, x, y, 0))
    alone = np.stack([f(params, x[:, i:i + 1], y[:, i:i + 1], 0)[:, 0] for i in range(T)], axis=1)
    np.testing.assert_allclose(no_ctx, alone, atol=1e-5)
    np.testing.assert_allclose(g(params, x, y, jnp.int32(0)), no_ctx, atol=1e-5)
    # one context size per dataset ([B] traced): dataset 0 with n, dataset 1 with none
    per_batch = np.asarray(g(params, x, y, jnp.array([n, 0], jnp.int32)))
    np.testing.assert_allclose(per_batch[0], static[0], atol=1e-5)
    np.testing.assert_allclose(per_batch[1], no_ctx[1], atol=1e-5)


def test_positional_ablation_breaks_invariance_and_heads():
    cfg = PFNConfig(d_in=d, n_layers=1, n_heads=2, width=16, num_buckets=7, positional=True, max_tokens=16)
    params = _random_params(cfg, seed=1)
    x, y = _inputs(np.random.default_rng(3), 1)
    perm = np.array([1, 0] + list(range(2, T)))
    f = jax.jit(PFN(cfg).apply, static_argnums=3)
    a, b = np.asarray(f(params, x, y, n)), np.asarray(f(params, x[:, perm], y[:, perm], n))
    assert np.max(np.abs(a[:, n:] - b[:, n:])) > 1e-3
    # the shapes and dtypes of the heads and parameters (traced only): the Gaussian head gives (mean, log-variance);
    # init_params is float32 even with x64 on (param_dtype explicit), positions included
    g = PFNConfig(d_in=d, n_layers=1, n_heads=2, width=16, head="gaussian")
    out = jax.eval_shape(lambda k: PFN(g).apply(init_params(g, k), x, y, n), jax.random.key(0))
    assert out.shape == (1, T, 2)
    with jax.enable_x64(True):
        leaves = jax.tree_util.tree_leaves(jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0)))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves) and any(leaf.shape == (16, 16) for leaf in leaves)


def test_bad_config():
    with pytest.raises(ValueError, match="head"):
        PFNConfig(d_in=1, head="student_t")
    with pytest.raises(ValueError, match="num_buckets"):
        PFNConfig(d_in=1, num_buckets=1)
    with pytest.raises(ValueError, match="width"):
        PFNConfig(d_in=1, width=10, n_heads=4)
