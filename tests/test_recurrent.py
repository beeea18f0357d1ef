"""models.recurrent: causality, shapes, state sizes, the matrix cell against a NumPy loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import recurrent as R


@pytest.mark.parametrize("kind", R.KINDS)
def test_causal_and_shapes(kind):
    cfg = R.RecurrentConfig(d_in=6, kind=kind, width=8, n_layers=2, n_heads=2, out_dim=3)
    params = jax.jit(R.init_params, static_argnums=0)(cfg, jax.random.key(0))   # one compile, not op by op
    apply = jax.jit(R.RecurrentClassifier(cfg).apply)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 6)), jnp.float32)
    out = apply(params, x)
    assert out.shape == (2, 7, 3) and out.dtype == jnp.float32
    out2 = apply(params, x.at[:, 4:].set(9.0))           # the future does not change the past
    np.testing.assert_allclose(out[:, :4], out2[:, :4], atol=1e-6)
    assert not np.allclose(out[:, 4:], out2[:, 4:])
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))


def test_state_floats():
    assert R.RecurrentConfig(d_in=3, kind="lstm", width=64, n_layers=2).state_floats() == 2 * 2 * 64
    # matrix: H·K² + D per layer = 4·16² + 64 = 1088
    assert R.RecurrentConfig(d_in=3, kind="matrix", width=64, n_heads=4).state_floats() == 1088
    with pytest.raises(ValueError, match="kind"):
        R.RecurrentConfig(d_in=3, kind="gru")


def test_matrix_cell_by_hand():
    """One MatrixCell step from a given state against the recurrence written out in NumPy."""
    H, K, B = 2, 3, 1
    cell = R.MatrixCell(width=H * K, n_heads=H)
    rng = np.random.default_rng(2)
    carry = tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((B, H, K, K), (B, H, K)))
    u = jnp.asarray(rng.normal(size=(B, H * K)), jnp.float32)
    params = jax.jit(cell.init)(jax.random.key(5), carry, u)
    (c1, n1), y = jax.jit(cell.apply)(params, carry, u)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    un = np.asarray(u)[0]
    q = np.einsum("d,dhk->hk", un, p["q"]["kernel"]) + p["q"]["bias"]
    k = (np.einsum("d,dhk->hk", un, p["k"]["kernel"]) + p["k"]["bias"]) / np.sqrt(K)
    v = np.einsum("d,dhk->hk", un, p["v"]["kernel"]) + p["v"]["bias"]
    g = 1 / (1 + np.exp(-(un @ p["gates"]["kernel"] + p["gates"]["bias"])))
    f, i = g[:H], g[H:]
    c = f[:, None, None] * np.asarray(carry[0])[0] + i[:, None, None] * np.einsum("hv,hk->hvk", v, k)
    n = f[:, None] * np.asarray(carry[1])[0] + i[:, None] * k
    o = 1 / (1 + np.exp(-(un @ p["o_gate"]["kernel"] + p["o_gate"]["bias"])))
    want = o * (np.einsum("hvk,hk->hv", c, q) / np.maximum(np.abs(np.einsum("hk,hk->h", n, q)), 1.0)[:, None]).reshape(-1)
    np.testing.assert_allclose(np.asarray(c1)[0], c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y)[0], want, rtol=1e-4, atol=1e-5)
    assert np.allclose(p["gates"]["bias"], np.r_[3.0 * np.ones(H), np.zeros(H)])   # forget bias 3
