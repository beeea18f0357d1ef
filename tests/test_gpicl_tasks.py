"""The GPICL task generator: projections, permutations, pools from k-bit seeds, tokens."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.tasks import gpicl as G

P, F, C, V = 300, 12, 4, 6


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(P, F)) * np.arange(1, F + 1) + 3.0
    x[:, 0] = 7.0                                        # a constant feature (like digits' blank pixels)
    y = rng.integers(0, C, size=P)
    xz, = G.znormalise(x)
    return jnp.asarray(xz), jnp.asarray(y, jnp.int32), x


def test_znormalise(dataset):
    xz, _, x = dataset
    xz = np.asarray(xz)
    assert np.all(xz[:, 0] == 0)                         # constant column → 0, not NaN
    np.testing.assert_allclose(xz[:, 1:].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xz[:, 1:].std(0), 1, atol=1e-5)
    _, other = G.znormalise(x, x[:5] + 1.0)              # other splits use the train statistics
    np.testing.assert_allclose(other[:, 1:], xz[:5, 1:] + 1.0 / x[:, 1:].std(0), atol=1e-5)
    g, = G.znormalise(x, per_feature=False)              # images: one mean and std over all entries
    np.testing.assert_allclose([g.mean(), g.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(g, (x - x.mean()) / x.std(), rtol=1e-5, atol=1e-5)


def test_projection_variance_and_permutation():
    keys = jax.random.split(jax.random.key(0), 64)
    a, perm = jax.jit(jax.vmap(lambda k: G.task_from_key(k, n_in=F, d_proj=8, n_classes=C, n_labels=V)))(keys)
    a = np.asarray(a)
    # A_ij ~ N(0, 1/N_x): sample variance of 64·8·12 = 6144 entries has relative SE √(2/6144) ≈ 1.8%
    assert a.shape == (64, 8, F) and abs(a.var() * F - 1) < 4 * np.sqrt(2 / a.size)
    perm = np.asarray(perm)
    assert perm.shape == (64, C) and all(len(set(p)) == C for p in perm) and perm.max() < V
    assert len({tuple(p) for p in perm}) > 30            # 6·5·4·3 = 360 injections: draws differ


def test_pool_and_fresh_tasks(dataset):
    pool_key = jax.random.key(42)
    tasks = jax.jit(jax.vmap(lambda t: G.task_from_key(t, n_in=F, d_proj=4, n_classes=C, n_labels=V)))
    for k in (0, 2):
        tk = G.task_keys(jax.random.key(1), pool_key, batch=64, log2_tasks=k)
        a, _ = tasks(tk)
        distinct = {m.tobytes() for m in np.asarray(a)}
        assert len(distinct) == 2**k                     # 64 draws from 2^k tasks hit all of them (k ≤ 2)
    same = G.pool_task_keys(pool_key, jnp.array([3, 3]))
    np.testing.assert_array_equal(jax.random.key_data(same[0]), jax.random.key_data(same[1]))
    fresh = G.task_keys(jax.random.key(1), pool_key, batch=64, log2_tasks=None)
    assert len({t.tobytes() for t in np.asarray(jax.random.key_data(fresh))}) == 64
    with pytest.raises(ValueError, match="log2_tasks"):
        G.task_keys(jax.random.key(1), pool_key, batch=4, log2_tasks=-1)


def test_tokens_labels_rows(dataset):
    xz, y, _ = dataset
    L, Dp = 20, 5
    sample = jax.jit(lambda k, pk: G.sample_sequences(k, pk, xz, y, batch=8, seq_len=L, d_proj=Dp, n_classes=C,
                                                      n_labels=V, log2_tasks=None, fixed_perm_frac=0.25))
    s = sample(jax.random.key(3), jax.random.key(4))
    assert s.tokens.shape == (8, L, Dp + V) and s.labels.shape == (8, L)
    rows, tokens, labels = np.asarray(s.rows), np.asarray(s.tokens), np.asarray(s.labels)
    assert all(len(set(r)) == L for r in rows)           # without replacement
    np.testing.assert_array_equal(tokens[:, 0, Dp:], 0)  # no label before the first example
    np.testing.assert_array_equal(tokens[:, 1:, Dp:], np.eye(V)[labels[:, :-1]])
    np.testing.assert_array_equal(tokens[:, :, :Dp], np.asarray(s.x))
    # the first round(0.25·8) = 2 prompts keep the identity permutation; the others relabel
    np.testing.assert_array_equal(labels[:2], np.asarray(y)[rows[:2]])
    assert not np.array_equal(labels[2:], np.asarray(y)[rows[2:]])
    # one task per prompt: x̃ = A x_row with the same A for all positions → x̃ is linear in x_row
    a_hat, *_ = np.linalg.lstsq(np.asarray(xz)[rows[5]][:, 1:], tokens[5, :, :Dp], rcond=None)
    np.testing.assert_allclose(np.asarray(xz)[rows[5]][:, 1:] @ a_hat, tokens[5, :, :Dp], atol=1e-4)
    # the label map is a function of the class: same class → same permuted label within a prompt
    for b in range(8):
        cls = np.asarray(y)[rows[b]]
        assert all(len(set(labels[b][cls == c])) <= 1 for c in range(C))
    with pytest.raises(ValueError, match="seq_len"):
        G.sample_sequences(jax.random.key(3), jax.random.key(4), xz, y, batch=2, seq_len=1, d_proj=Dp, n_classes=C,
                           n_labels=V, log2_tasks=None)


def test_loss_and_accuracy_by_hand():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]]]))
    labels = jnp.array([[0, 1]])
    np.testing.assert_allclose(G.cross_entropy(logits, labels), [[-np.log(0.7), -np.log(0.2)]], rtol=1e-6)
    np.testing.assert_array_equal(G.accuracy(logits, labels), [[1.0, 0.0]])
