"""kernels.lawcat against its token-scan reference: outputs, gradients (conv weights included),
causality of the conv, the W = 1 reduction to normalised GLA, bad inputs.

Float32 criterion as in test_gla: max|x − ref| ≤ 1e-5 · max(1, max|ref|) (chunked vs
recurrent sums in different orders; LAWCAT outputs are convex combinations of v, so O(1)).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import rng
from kernels import LinearBlockSizes, lawcat, lawcat_reference

IMPLS = ["xla", "pallas"]
B, H, K, V, W = 2, 2, 8, 6, 4  # V ≠ K catches layout mix-ups
SMALL = LinearBlockSizes(chunk=16, sub_chunk=4)  # several chunks at T = 37 (and padding)


def _inputs(seed, t, *, width=W):
    ks = jax.random.split(jax.random.key(seed), 6)
    q = rng.eager_normal(ks[0], (B, t, H, K))
    k = rng.eager_normal(ks[1], (B, t, H, K))
    v = rng.eager_normal(ks[2], (B, t, H, V))
    g = jax.nn.log_sigmoid(rng.eager_normal(ks[3], (B, t, H, K))) / 4  # ≤ 0, decays noticeably
    wq = 0.5 * rng.eager_normal(ks[4], (width, H, K))
    wk = 0.5 * rng.eager_normal(ks[5], (width, H, K))
    return q, k, v, g, wq, wk


def _fn(impl):
    if impl == "reference":
        return jax.jit(lawcat_reference)
    return jax.jit(functools.partial(lawcat, implementation=impl, block_sizes=SMALL))


def assert_close_f32(x, ref, tol=1e-5):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert x.shape == ref.shape
    err, bound = np.abs(x - ref).max(), tol * max(1.0, np.abs(ref).max())
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("t", [1, 37])
def test_forward_matches_reference(impl, t):
    args = _inputs(0, t)
    out = _fn(impl)(*args)
    assert out.shape == (B, t, H, V) and out.dtype == jnp.float32
    assert_close_f32(out, _fn("reference")(*args))


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_reference_including_conv_weights(impl):
    args = _inputs(1, 37)
    ct = rng.eager_normal(jax.random.key(2), (B, 37, H, V))
    loss = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=tuple(range(6))))
    got, want = loss(_fn(impl))(*args), loss(_fn("reference"))(*args)
    for name, a, b in zip(("q", "k", "v", "g", "conv_q", "conv_k"), got, want):
        assert float(jnp.max(jnp.abs(b))) > 1e-3, name  # a live gradient, not trivially zero
        # rtol 1e-4 elementwise, plus an atol of 1e-5·max|grad| for entries that cancel to ≈ 0.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))), err_msg=name)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_conv_is_causal(impl):
    # ∂o_t/∂q_s and ∂o_t/∂k_s vanish for s > t; the window reaches back exactly W − 1 tokens
    # in q (o_t depends on q only through q̃_t = Σ_j w[j] q_{t−W+1+j}).
    t = 10
    q, k, v, g, wq, wk = _inputs(3, t)
    f = _fn(impl)
    for argnum in (0, 1):
        jac = jax.jit(jax.jacrev(lambda *a: f(*a)[0], argnums=argnum))(q, k, v, g, wq, wk)[:, :, :, 0]
        dep_TxT = np.abs(np.asarray(jac)).sum(axis=(1, 2, 4, 5))  # [t_out, s_in]
        assert np.all(np.triu(dep_TxT, k=1) == 0.0)
        # o_0 = v_0·a/(a + eps) hardly depends on q_0, k_0 (∝ eps): rows t ≥ 1 must be live.
        lower = np.tril(np.ones((t, t), bool))[1:]
        if argnum == 0:
            band = (np.tril(np.ones((t, t), bool)) & ~np.tril(np.ones((t, t), bool), k=-W))[1:]
            assert np.all(dep_TxT[1:][~band] == 0.0) and np.all(dep_TxT[1:][band] > 1e-4)
        else:  # k_s reaches every later o_t through the state
            assert np.all(dep_TxT[1:][lower] > 1e-4)


@pytest.mark.parametrize("impl", ["reference", *IMPLS])
def test_width_one_unit_filter_is_normalised_gla(impl, x64):
    # W = 1, w = 1: o_t = Σ_{s≤t} a_ts v_s / (Σ_{s≤t} a_ts + eps),
    # a_ts = Σ_k φ(q_t)_k φ(k_s)_k e^{b_tk − b_sk},
    # b = cumsum g, φ = elu + 1: written out as a quadratic form here (float64).
    t = 20
    q, k, v, g, _, _ = (x.astype(jnp.float64) for x in _inputs(4, t))
    one = jnp.ones((1, H, K), jnp.float64)
    out = _fn(impl)(q, k, v, g, one, one)
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    fq, fk, b = phi(np.asarray(q)), phi(np.asarray(k)), np.cumsum(np.asarray(g), axis=1)
    decay = np.exp(b[:, :, None] - b[:, None, :])  # [B, t, s, H, K]
    a = np.einsum("bthk,bshk,btshk->bhts", fq, fk, decay) * np.tril(np.ones((t, t)))
    want = np.einsum("bhts,bshv->bthv", a, np.asarray(v)) / (a.sum(-1).transpose(0, 2, 1)[..., None] + 1e-6)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-9, atol=1e-12)


def test_outputs_are_convex_combinations_of_values():
    # Positive weights, denominator = their sum (+ eps): each o_t lies in [min_s≤t v_s, max_s≤t v_s].
    q, k, v, g, wq, wk = _inputs(5, 37)
    out = np.asarray(_fn("xla")(q, k, v, g, wq, wk))
    v = np.asarray(v)
    lo, hi = np.minimum.accumulate(v, axis=1), np.maximum.accumulate(v, axis=1)
    assert np.all(out >= lo - 1e-5) and np.all(out <= hi + 1e-5)


@pytest.mark.parametrize(
    "change,name",
    [(lambda a: {**a, "conv_q": a["conv_q"][:, :1]}, "conv_q"),
     (lambda a: {**a, "conv_k": a["conv_k"][:2]}, "conv_k"),
     (lambda a: {**a, "conv_k": a["conv_k"].astype(jnp.int32)}, "conv_k"),
     (lambda a: {**a, "g": jnp.abs(a["g"]) + 0.1}, "g"),
     (lambda a: {**a, "v": a["v"][:, :3]}, "v"),
     (lambda a: {**a, "eps": 0.0}, "eps"),
     (lambda a: {**a, "implementation": "cuda"}, "implementation")],
)
def test_bad_inputs_raise_naming_the_argument(change, name):
    q, k, v, g, wq, wk = _inputs(6, 8)
    kw = change(dict(q=q, k=k, v=v, g=g, conv_q=wq, conv_k=wk))
    with pytest.raises(ValueError, match=f"^{name}"):
        lawcat(**kw)
