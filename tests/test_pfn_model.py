"""PFN model: permutation invariance of the context, no leaks between queries or from their y."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.pfn import PFN, PFNConfig, init_params, predict

B, n, Q, d = 2, 5, 4, 3
T = n + Q


def _perturbed(cfg):
    """Init, then every leaf + 0.3·N(0, 1): the read-out is zero at init (uniform bucket probabilities),
    so outputs would not depend on the inputs. Jitted (eager x64-free ops compile one by one)."""
    @jax.jit
    def make(key):
        params = init_params(cfg, key)
        leaves, tree = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return jax.tree_util.tree_unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return make(jax.random.key(0))


@pytest.fixture(scope="module")
def setup():
    cfg = PFNConfig(d_in=d, n_layers=2, n_heads=2, width=16, num_buckets=7, max_tokens=16)
    params = _perturbed(cfg)
    x = jax.random.uniform(jax.random.key(2), (B, T, d))
    y = jax.random.normal(jax.random.key(3), (B, T))
    model = PFN(cfg)
    f = jax.jit(model.apply, static_argnums=3)
    return cfg, model, params, x, y, f


def test_context_permutation_invariance(setup):
    cfg, model, params, x, y, f = setup
    out = f(params, x, y, n)
    perm = np.array([3, 0, 4, 2, 1] + list(range(n, T)))
    out_p = f(params, x[:, perm], y[:, perm], n)
    np.testing.assert_allclose(out_p[:, n:], out[:, n:], atol=1e-5)       # queries unchanged
    np.testing.assert_allclose(out_p[:, :n], out[:, perm[:n]], atol=1e-5)  # context outputs permute along
    assert float(jnp.max(jnp.abs(out[:, n:] - out[:, n:n + 1]))) > 1e-3    # outputs do depend on x_q


def test_no_query_sees_another_query_or_a_query_y(setup):
    cfg, model, params, x, y, f = setup
    out = f(params, x, y, n)
    y_bad = y.at[:, n:].set(jnp.nan)                                        # query y: never read, even NaN
    np.testing.assert_array_equal(f(params, x, y_bad, n), out)
    x2 = x.at[:, n + 1].add(0.5)                                            # move query 1 only
    out2 = f(params, x2, y, n)
    changed = np.max(np.abs(np.asarray(out2 - out)), axis=(0, 2))
    assert changed[n + 1] > 1e-3
    np.testing.assert_array_equal(changed[np.arange(T) != n + 1], 0.0)
    out3 = f(params, x, y.at[:, 0].add(1.0), n)                             # a context y reaches the queries
    assert float(jnp.min(jnp.max(jnp.abs(out3[:, n:] - out[:, n:]), axis=-1))) > 1e-4


def test_traced_context_size_and_predict_agree(setup):
    cfg, model, params, x, y, f = setup
    static = f(params, x, y, n)
    traced = jax.jit(model.apply)(params, x, y, jnp.int32(n))
    np.testing.assert_allclose(traced, static, atol=1e-5)
    per_batch = jax.jit(model.apply)(params, x, y, jnp.array([n, n], jnp.int32))
    np.testing.assert_allclose(per_batch, static, atol=1e-5)
    np.testing.assert_allclose(predict(model, params, x[:, :n], y[:, :n], x[:, n:]), static[:, n:], atol=1e-5)
    # n = 0: each query sees only itself, so its output is a function of its own x
    no_ctx = f(params, x, y, 0)
    alone = jnp.stack([f(params, x[:, i:i + 1], y[:, i:i + 1], 0)[:, 0] for i in range(T)], axis=1)
    np.testing.assert_allclose(no_ctx, alone, atol=1e-5)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x, y, jnp.int32(0)), no_ctx, atol=1e-5)


def test_positional_ablation_breaks_invariance_and_heads():
    cfg = PFNConfig(d_in=d, n_layers=1, n_heads=2, width=16, num_buckets=7, positional=True, max_tokens=16)
    params = _perturbed(cfg)
    x = jax.random.uniform(jax.random.key(2), (1, T, d))
    y = jax.random.normal(jax.random.key(3), (1, T))
    model = PFN(cfg)
    perm = np.array([1, 0] + list(range(2, T)))
    a, b = model.apply(params, x, y, n), model.apply(params, x[:, perm], y[:, perm], n)
    assert float(jnp.max(jnp.abs(a[:, n:] - b[:, n:]))) > 1e-3
    g = PFNConfig(d_in=d, n_layers=1, n_heads=2, width=16, head="gaussian")
    assert PFN(g).apply(init_params(g, jax.random.key(0)), x, y, n).shape == (1, T, 2)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_bad_config():
    with pytest.raises(ValueError, match="head"):
        PFNConfig(d_in=1, head="student_t")
    with pytest.raises(ValueError, match="num_buckets"):
        PFNConfig(d_in=1, num_buckets=1)
    with pytest.raises(ValueError, match="width"):
        PFNConfig(d_in=1, width=10, n_heads=4)
