"""In-sequence classifiers: logistic regression by GD vs scikit-learn, k-NN vs brute force, batch vs chunks."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ictl import class_baselines as cb


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(0)
    B, L, D, V = 3, 40, 5, 4
    x = rng.normal(size=(B, L, D)).astype(np.float32)
    y = rng.integers(0, V, size=(B, L)).astype(np.int32)
    return x, y, V


def test_logistic_gd_matches_sklearn(seqs):
    """Many GD steps on (1/k)ΣCE + (l2/2)‖W‖² reach the unique optimum, which is scikit-learn's
    multinomial LogisticRegression on [x, 1] without intercept and C = 1/(l2·k) (its objective is
    ½‖W‖² + C·ΣCE). Logits agree up to a constant shift (softmax invariance)."""
    x, y, V = seqs
    l2, pos = 0.1, np.array([0, 12, 39])
    s = np.asarray(cb.logistic_gd(jnp.asarray(x), jnp.asarray(y), jnp.asarray(pos), n_labels=V, steps=3000, lr=1.0,
                                  l2=l2))
    np.testing.assert_array_equal(s[:, 0], 0.0)          # no examples: W = 0, uniform
    for b in range(x.shape[0]):
        for qi, t in ((1, 12), (2, 39)):
            if len(np.unique(y[b, :t])) < V:
                continue                                 # sklearn drops absent classes: not comparable
            X = np.concatenate([x[b, :t], np.ones((t, 1))], 1)
            m = LogisticRegression(C=1 / (l2 * t), fit_intercept=False, tol=1e-10, max_iter=10_000).fit(X, y[b, :t])
            ref = np.concatenate([x[b, t], [1.0]]) @ m.coef_.T
            np.testing.assert_allclose(s[b, qi] - s[b, qi].mean(), ref - ref.mean(), atol=2e-3)


def test_knn_matches_brute_force(seqs):
    x, y, V = seqs
    pos = np.array([0, 1, 5, 39])
    for k in (1, 3):
        votes = np.asarray(cb.knn(jnp.asarray(x), jnp.asarray(y), jnp.asarray(pos), n_labels=V, n_neighbors=k))
        for b in range(x.shape[0]):
            for qi, t in enumerate(pos):
                want = np.zeros(V)
                if t:
                    d = np.sum((x[b, :t] - x[b, t]) ** 2, axis=1)
                    for j in np.argsort(d, kind="stable")[:k]:
                        want[y[b, j]] += 1
                np.testing.assert_allclose(votes[b, qi], want, atol=2e-3)   # + ≤ 1e-3 tie-break weights
                if want.sum():
                    assert np.argmax(votes[b, qi]) in np.flatnonzero(want == want.max())


def test_large_batch_equals_chunks():
    """B·Q = 840·41 = 34440 (prompt, position) outputs at once vs four chunks of 210 prompts:
    guards the XLA CPU fused masked-reduce miscompile past ≈ 32759 outputs (docs/architecture.md)."""
    B, L, D, V, CH = 840, 41, 3, 3, 210
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
    y = jnp.asarray(rng.integers(0, V, size=(B, L)), jnp.int32)
    pos = jnp.arange(L)
    for f in (lambda a, b: cb.knn(a, b, pos, n_labels=V, n_neighbors=3),
              lambda a, b: cb.logistic_gd(a, b, pos, n_labels=V, steps=5)):
        full = np.asarray(f(x, y))
        parts = np.concatenate([np.asarray(f(x[i:i + CH], y[i:i + CH])) for i in range(0, B, CH)])
        assert full.shape == (B, L, V)
        np.testing.assert_allclose(full, parts, rtol=1e-5, atol=1e-5)


def test_accuracy_and_ce_by_hand():
    s = jnp.array([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_array_equal(cb.accuracy(s, jnp.array([[0, 1]])), [[1.0, 0.0]])   # tie → label 0
    np.testing.assert_allclose(cb.cross_entropy(s, jnp.array([[0, 2]]))[0, 1], np.log(3.0), rtol=1e-6)
