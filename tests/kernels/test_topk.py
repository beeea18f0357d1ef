"""Spark statistical top-k: threshold formula, kept counts, exact-sort comparison, attention."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtri

from ictl import rng
from kernels.topk import (
    spark_topk_attention,
    statistical_soft_threshold,
    statistical_threshold,
    statistical_topk,
    statistical_topk_reference,
)


def _gauss(seed, shape):
    return rng.eager_normal(jax.random.key(seed), shape, jnp.float32)


def test_threshold_formula_against_numpy_float64():
    x = _gauss(0, (8, 300))
    xn = np.asarray(x, np.float64)
    want = xn.mean(1, keepdims=True) + xn.std(1, keepdims=True) * ndtri(1 - 20 / 300)  # std: ddof = 0
    got = jax.jit(functools.partial(statistical_threshold, k=20))(x)
    assert got.shape == (8, 1)
    assert float(np.max(np.abs(np.asarray(got) - want))) <= 1e-5
    # axis=0 on the transpose is the same threshold.
    got0 = jax.jit(functools.partial(statistical_threshold, k=20, axis=0))(x.T)
    np.testing.assert_allclose(np.asarray(got0).T, np.asarray(got), rtol=0, atol=1e-6)


def test_gaussian_rows_keep_about_k():
    # x ~ N(0, 1), n = 1024, k = 64. E[count] = k to first order; a 100k-row numpy Monte Carlo
    # gave mean 64.05 and per-row std 5.13, below the binomial sd √(k(1 − k/n)) = 7.75 because
    # θ adapts to each row. Over R = 256 rows the mean count is within 4 binomial SEs
    # (4 · 7.75/16 = 1.94) of k, and the per-row spread stays below the binomial one.
    n, k, R = 1024, 64, 256
    masked, theta = jax.jit(functools.partial(statistical_topk, k=k, fill=-jnp.inf))(_gauss(1, (R, n)))
    counts = np.asarray(jnp.sum(jnp.isfinite(masked), axis=-1))
    binom_sd = np.sqrt(k * (1 - k / n))
    assert abs(counts.mean() - k) <= 4 * binom_sd / np.sqrt(R)
    assert counts.std() < binom_sd
    assert theta.shape == (R, 1)


def test_statistical_and_exact_kept_sets_are_nested():
    # Both keep {x ≥ θ} of the same row, so one kept set contains the other; exact keeps k.
    x = _gauss(2, (64, 512))
    stat, _ = jax.jit(functools.partial(statistical_topk, k=32, fill=-jnp.inf))(x)
    exact, theta = jax.jit(functools.partial(statistical_topk_reference, k=32, fill=-jnp.inf))(x)
    s, e = np.isfinite(np.asarray(stat)), np.isfinite(np.asarray(exact))
    assert np.all(e.sum(1) == 32)
    assert np.all(np.all(s <= e, axis=1) | np.all(e <= s, axis=1))
    # each kept set is {x ≥ θ} for its own θ, and the statistical θ is the Spark formula computed
    # here in float64: θ = mean + std · Φ⁻¹(1 − k/n) per row (scipy's Φ⁻¹; std with ddof 0)
    from scipy.stats import norm as gauss

    xn = np.asarray(x, np.float64)
    theta_stat = xn.mean(1) + xn.std(1) * gauss.ppf(1 - 32 / 512)
    margin = np.abs(xn - theta_stat[:, None]) > 1e-4     # entries not within float32 rounding of θ
    np.testing.assert_array_equal(s[margin], (xn >= theta_stat[:, None])[margin])
    np.testing.assert_array_equal(e, xn >= np.sort(xn, axis=1)[:, -32:-31])
    np.testing.assert_array_equal(np.asarray(theta)[:, 0], np.sort(np.asarray(x), axis=1)[:, -32])


@pytest.mark.parametrize("fn", [statistical_topk, statistical_topk_reference])
def test_k_equal_n_keeps_everything(fn):
    x = _gauss(3, (4, 50))
    masked, theta = jax.jit(functools.partial(fn, k=50))(x)
    assert np.array_equal(np.asarray(masked), np.asarray(x))
    assert bool(jnp.all(theta == -jnp.inf))


def test_soft_threshold_is_shifted_relu():
    x = _gauss(4, (16, 256))
    theta = jax.jit(functools.partial(statistical_threshold, k=16))(x)
    got = jax.jit(functools.partial(statistical_soft_threshold, k=16))(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.maximum(x - theta, 0)))
    assert 8 <= float(jnp.mean(jnp.sum(got > 0, axis=-1))) <= 24  # ≈ k = 16 nonzeros per row
    # No gradient through θ: d/dx max(x − θ, 0) = 1[x > θ].
    g = jax.jit(jax.grad(lambda z: jnp.sum(statistical_soft_threshold(z, 16))))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray((x > theta).astype(jnp.float32)))


def _qkv(seed, B=1, T=24, H=2, K=8, V=4):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (rng.eager_normal(ks[0], (B, T, H, K)), rng.eager_normal(ks[1], (B, T, H, K)),
            rng.eager_normal(ks[2], (B, T, H, V)))


def _numpy_keep_mask(q, k, k_keep, causal):
    """Kept entries, independently in float64 numpy: visible row stats, Φ⁻¹ from scipy, ≤ row max."""
    qn, kn = np.asarray(q, np.float64), np.asarray(k, np.float64)
    T = qn.shape[1]
    s = np.einsum("bthk,bshk->bhts", qn, kn) / np.sqrt(qn.shape[-1])
    keep = np.zeros(s.shape, bool)
    for t in range(T):
        n = t + 1 if causal else T
        row = s[:, :, t, :n]
        if k_keep >= n:
            keep[:, :, t, :n] = True
            continue
        th = row.mean(-1, keepdims=True) + row.std(-1, keepdims=True) * ndtri(1 - k_keep / n)
        keep[:, :, t, :n] = row >= np.minimum(th, row.max(-1, keepdims=True))
    return keep


def _masked_attention(q, k, v, keep):
    s = jnp.einsum("bthk,bshk->bhts", q, k, precision="highest") / np.sqrt(q.shape[-1])
    p = jax.nn.softmax(jnp.where(jnp.asarray(keep), s, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshv->bthv", p, v, precision="highest")


@pytest.mark.parametrize("causal", [True, False])
def test_spark_attention_matches_numpy_mask_and_gradients(causal):
    q, k, v = _qkv(5)
    keep = _numpy_keep_mask(q, k, 4, causal)
    assert 0 < keep[:, :, -1].sum(-1).mean() < 12  # sparse: far fewer than the 24 visible keys
    spark = jax.jit(functools.partial(spark_topk_attention, k_keep=4, causal=causal))
    want = jax.jit(_masked_attention)(q, k, v, keep)
    assert float(jnp.max(jnp.abs(spark(q, k, v) - want))) <= 1e-5
    ct = rng.eager_normal(jax.random.key(6), want.shape)
    got_g = jax.jit(lambda *a: jax.vjp(spark, *a[:3])[1](a[3]))(q, k, v, ct)
    want_g = jax.jit(lambda *a: jax.vjp(lambda *x: _masked_attention(*x, keep), *a[:3])[1](a[3]))(q, k, v, ct)
    for a, b in zip(got_g, want_g):
        # rtol 1e-4 elementwise, plus an atol of 1e-5·max|grad| for entries that cancel to ≈ 0.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_spark_attention_bf16_relative_rmse():
    # bf16 inputs, fp32 inside: against the fp32 masked softmax of the same (rounded) inputs.
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(10))
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    want = jax.jit(_masked_attention)(q32, k32, v32, _numpy_keep_mask(q32, k32, 4, True))
    got = jax.jit(functools.partial(spark_topk_attention, k_keep=4))(q, k, v)
    assert got.dtype == jnp.bfloat16
    err = jnp.sqrt(jnp.mean(jnp.square(got.astype(jnp.float32) - want)) / jnp.mean(jnp.square(want)))
    assert float(err) <= 5e-3


def test_spark_attention_k_keep_ge_T_is_dense_causal():
    q, k, v = _qkv(7)
    T = q.shape[1]
    dense = jax.jit(_masked_attention)(q, k, v, np.tril(np.ones((T, T), bool))[None, None])
    got = jax.jit(functools.partial(spark_topk_attention, k_keep=T))(q, k, v)
    assert float(jnp.max(jnp.abs(got - dense))) <= 1e-6


def test_bad_arguments_raise():
    x = _gauss(8, (4, 10))
    with pytest.raises(ValueError, match="k must"):
        statistical_topk(x, 0)
    with pytest.raises(ValueError, match="k must"):
        statistical_topk_reference(x, 2.5)
    q, k, v = _qkv(9)
    with pytest.raises(ValueError, match="k_keep"):
        spark_topk_attention(q, k, v, k_keep=0)
    with pytest.raises(ValueError, match="q, k"):
        spark_topk_attention(q, k[:, :5], v, k_keep=3)
