"""kernels.kdgqa: the largest-remainder allocation, the gathered-head attention, jit, gradients."""
import functools
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import rng
from kernels import kdgqa_allocation, kdgqa_attention, kdgqa_reference, kv_index_from_counts

B, T, K, V = 2, 9, 8, 5  # V ≠ K catches layout mix-ups


def _qkv(seed, hq, hkv, head_scale=None):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = rng.eager_normal(ks[0], (B, T, hq, K))
    k = rng.eager_normal(ks[1], (B, T, hkv, K))
    if head_scale is not None:
        k = k * jnp.asarray(head_scale, jnp.float32)[None, None, :, None]
    v = rng.eager_normal(ks[2], (B, T, hkv, V))
    return q, k, v


def _hamilton(norms, hq):
    """Exact largest-remainder allocation in rationals (norms given as exact rationals)."""
    J, free = len(norms), hq - len(norms)
    total = sum(norms)
    quota = [Fraction(free, J)] * J if total == 0 else [free * n / total for n in norms]
    base = [int(x) for x in quota]  # floor (quotas ≥ 0)
    left = free - sum(base)
    order = sorted(range(J), key=lambda j: (-(quota[j] - base[j]), j))  # ties: lower j first
    return [1 + base[j] + (j in order[:left]) for j in range(J)]


def _k_with_head_norms(norms, t=4):
    # Head j = norms[j]/√(t·K) in every entry, so ‖k[b, :, j, :]‖_F = norms[j] exactly in the rationals.
    per = np.asarray(norms, np.float64) / np.sqrt(t * K)
    return jnp.asarray(np.broadcast_to(per[None, None, :, None], (1, t, len(norms), K)), jnp.float32)


@pytest.mark.parametrize("norms,hq", [([3, 1], 8), ([1, 1, 1, 1], 8), ([5, 0, 0], 6), ([1, 2, 4], 6),
                                      ([0, 0], 4), ([7, 3, 3, 1], 12), ([100, 1, 1, 1], 16), ([1, 1, 1], 3)])
def test_allocation_is_exact_largest_remainder(norms, hq):
    # e.g. [3, 1], H_q = 8: R = 6, quotas 4.5 | 1.5 → floors 4 | 1, one left, tie → head 0: 6 | 2.
    got = np.asarray(kdgqa_allocation(_k_with_head_norms(norms), hq))[0]
    want = _hamilton([Fraction(n) for n in norms], hq)
    assert got.tolist() == want
    assert got.sum() == hq and got.min() >= 1


def test_allocation_sums_and_lower_bound_on_random_norms():
    # 200 rows of log-normal head scales (ratios up to ~e^6): Σ c = H_q, c ≥ 1, and c agrees
    # with the exact rational allocation of the float64 norms on every row where the 2^−12
    # rounding of the quotas cannot matter (no two remainders, and no remainder and 0 or 1,
    # closer than 2^−10).
    hq, hkv = 16, 5
    scales = np.exp(2.0 * np.random.default_rng(0).normal(size=(200, hkv)))
    k = rng.eager_normal(jax.random.key(1), (200, 3, hkv, K)) * jnp.asarray(scales, jnp.float32)[:, None, :, None]
    counts = np.asarray(jax.jit(kdgqa_allocation, static_argnums=1)(k, hq))
    assert np.all(counts.sum(1) == hq) and counts.min() >= 1
    norms = np.sqrt(np.sum(np.asarray(k, np.float64) ** 2, axis=(1, 3)))
    want = np.array([_hamilton([Fraction(float(n)) for n in row], hq) for row in norms])
    rem = (hq - hkv) * norms / norms.sum(1, keepdims=True) % 1.0
    gaps = np.concatenate([np.abs(rem[:, :, None] - rem[:, None, :])[:, ~np.eye(hkv, dtype=bool)],
                           rem, 1.0 - rem], axis=1)
    clear = gaps.min(1) > 2.0 ** -10
    assert clear.sum() >= 150
    assert np.array_equal(counts[clear], want[clear])
    assert counts.max() > 6  # the allocation is far from uniform (16/5) for these scales


def test_equal_norms_give_standard_gqa_grouping():
    hq, hkv = 12, 4
    k = jnp.ones((B, T, hkv, K))
    counts = kdgqa_allocation(k, hq)
    assert np.asarray(counts).tolist() == [[3] * 4] * B
    assert np.asarray(kv_index_from_counts(counts, hq)).tolist() == [[h // 3 for h in range(hq)]] * B


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_attention_equals_softmax_over_gathered_heads(impl):
    hq, hkv = 6, 3
    q, k, v = _qkv(0, hq, hkv, head_scale=[1.0, 2.0, 4.0])
    out = jax.jit(functools.partial(kdgqa_attention, implementation=impl))(q, k, v)
    counts = np.asarray(kdgqa_allocation(k, hq))
    assert counts.tolist() == [[1, 2, 3]] * B  # norms ≈ 1:2:4: quotas 3/7, 6/7, 12/7 (see docstring)
    kv = [0, 1, 1, 2, 2, 2]
    want = jax.nn.dot_product_attention(q, k[:, :, kv], jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, K - V)))[:, :, kv],
                                        is_causal=True)[..., :V]  # V padded to K: jax's op needs V = K
    np.testing.assert_allclose(out, want, atol=1e-5)
    assert out.shape == (B, T, hq, V)


def test_jit_does_not_retrace_when_the_allocation_changes():
    hq, hkv = 8, 2
    fn = chex.assert_max_traces(n=1)(lambda q, k, v: kdgqa_attention(q, k, v))
    jfn = jax.jit(fn)
    allocations = set()
    for seed, scale in enumerate(([1.0, 1.0], [5.0, 1.0], [1.0, 9.0])):
        q, k, v = _qkv(seed, hq, hkv, head_scale=scale)
        jax.block_until_ready(jfn(q, k, v))
        allocations.add(tuple(np.asarray(kdgqa_allocation(k, hq))[0]))
    assert len(allocations) == 3  # three different allocations, one trace


def test_gradients_match_reference():
    hq, hkv = 6, 3
    q, k, v = _qkv(3, hq, hkv, head_scale=[1.0, 3.0, 2.0])
    ct = rng.eager_normal(jax.random.key(4), (B, T, hq, V))
    grads = lambda impl: jax.jit(jax.grad(lambda *a: jnp.sum(kdgqa_attention(*a, implementation=impl) * ct),
                                          argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(grads("xla"), grads("reference")):
        assert float(jnp.max(jnp.abs(want))) > 1e-2
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize(
    "shapes,kw,name",
    [(((B, T, 4, K), (B, T, 6, K), (B, T, 6, V)), {}, "k"),  # H_kv > H_q
     (((B, T, 4, K), (B, T, 2, K + 1), (B, T, 2, V)), {}, "k"),
     (((B, T, 4, K), (B, T, 2, K), (B, T, 3, V)), {}, "v"),
     (((T, 4, K), (B, T, 2, K), (B, T, 2, V)), {}, "q"),
     (((B, T, 4, K), (B, T, 2, K), (B, T, 2, V)), {"scale": -1.0}, "scale"),
     (((B, T, 4, K), (B, T, 2, K), (B, T, 2, V)), {"implementation": "pallas"}, "implementation")],
)
def test_bad_inputs_raise(shapes, kw, name):
    q, k, v = (np.zeros(s, np.float32) for s in shapes)
    with pytest.raises(ValueError, match=f"^{name}"):
        kdgqa_attention(q, k, v, **kw)
