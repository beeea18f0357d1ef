"""kernels.linear_attention against its quadratic reference: outputs, gradients, state.

The Pallas implementation runs interpreted on CPU; ICTL_KERNELS_COMPILED=1 demands an
accelerator backend so that it runs compiled (TPU; no GPU kernel yet, see test_gla.py).

Float32 criterion: max|x − ref| ≤ 1e-5 · max(1, max|ref|): the issue's absolute 1e-5 for
O(1) outputs, relative to the largest entry beyond. Without decay, causal linear attention's
outputs grow like √t (|o| ≈ 130 at T = 1000 with unit-variance inputs); there the chunked
and quadratic float32 sums differ by ≈ 5e-5 absolute = 4e-7 relative, and both are that far
from a float64 evaluation (measured: chunked 3.1e-5, quadratic 4.6e-5).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import rng
from kernels._common import BlockSizes
from kernels.gla import gla_decode_step, gla_reference
from kernels.linear_attention import linear_attention, linear_attention_reference

COMPILED = os.environ.get("ICTL_KERNELS_COMPILED") == "1"
IMPLS = ["xla", "pallas"]


def elu1(x):
    """A positive feature map (Katharopoulos et al.): φ(x) = elu(x) + 1 > 0."""
    return jax.nn.elu(x) + 1.0


@pytest.fixture(autouse=True, scope="module")
def _backend():
    if COMPILED:
        assert jax.default_backend() != "cpu", "ICTL_KERNELS_COMPILED=1 needs a GPU/TPU backend"


@functools.partial(jax.jit, static_argnames="dtype")
def _scaled(x, c, *, dtype):
    """(x·c).astype(dtype) as one program per shape (eagerly, each op compiled its own)."""
    return (x * c).astype(dtype)


def _numpy(arrays):
    """Host copies: the tests slice and concatenate them in numpy (eager jnp slicing compiles
    a small program for every distinct slice)."""
    return tuple(np.asarray(x) for x in arrays)


def _inputs(seed, b, t, h, kd, vd, *, dtype=jnp.float32, state_cols=None):
    """Unit-normal q·K^−½, k, v and initial state [B, H, K, state_cols or V]."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = _scaled(rng.eager_normal(ks[0], (b, t, h, kd)), kd ** -0.5, dtype=dtype)
    k = rng.eager_normal(ks[1], (b, t, h, kd), dtype)
    v = rng.eager_normal(ks[2], (b, t, h, vd), dtype)
    s0 = rng.eager_normal(ks[3], (b, h, kd, state_cols or vd))
    return q, k, v, s0


def assert_close_f32(x, ref, tol=1e-5):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert x.shape == ref.shape
    err, bound = np.abs(x - ref).max(initial=0.0), tol * max(1.0, np.abs(ref).max(initial=0.0))
    assert err <= bound, f"max|diff| {err:.3g} > {bound:.3g}"


def _norm_state(s0):
    """A valid normalised-mode state: z (last column) = |·| + 1 keeps φ(q)·z > 0."""
    s0 = np.array(s0)   # in numpy: eager .at[].set compiles a program per shape
    s0[..., -1] = np.abs(s0[..., -1]) + 1.0
    return s0


# (B, T, H, K, V): T over {1, 3, 63, 64, 65, 1000}, K ≠ V, head dims 16…256.
SHAPES = [(1, 1, 1, 16, 32), (2, 3, 2, 32, 16), (1, 63, 3, 16, 24), (2, 64, 1, 64, 48),
          (1, 65, 2, 256, 16), (1, 1000, 1, 32, 64), (1, 130, 1, 16, 256)]
MODES = [dict(causal=True), dict(causal=False),
         dict(causal=True, normalize=True, feature_map=elu1),
         dict(causal=False, normalize=True, feature_map=elu1)]


def test_reference_matches_numpy_loop():
    """The quadratic reference against a float64 loop of S_t = S_{t−1} + k_tᵀv_t, o_t = q_t S_t."""
    q, k, v, s0 = _inputs(0, 1, 5, 2, 3, 4)
    o, s = linear_attention_reference(q, k, v, initial_state=s0)
    qn, kn, vn, sn = (np.asarray(x, np.float64) for x in (q, k, v, s0))
    o_np = np.zeros((1, 5, 2, 4))
    for t in range(5):
        sn = sn + kn[:, t, :, :, None] * vn[:, t, :, None, :]
        o_np[:, t] = np.einsum("bhk,bhkv->bhv", qn[:, t], sn)
    assert_close_f32(o, o_np, 1e-6)
    assert_close_f32(s, sn, 1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_normalised_modes_match_numpy_loop(causal):
    """Normalised linear attention (φ = elu + 1) against a float64 numpy computation written from the
    definition: S = S_0 + Σ_s φ(k_s)ᵀ v_s and z = z_0 + Σ_s φ(k_s) over s ≤ t (causal) or all s,
    o_t = φ(q_t) S / φ(q_t)·z; the state's last column is z. Checks the reference and the xla path."""
    q, k, v, s0 = _inputs(8, 1, 7, 2, 3, 4, state_cols=5)
    s0 = _norm_state(s0)
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0)))  # elu(x) + 1
    qn, kn, vn, sn = (np.asarray(x, np.float64) for x in (q, k, v, s0))
    fq, fk = phi(qn), phi(kn)
    o_np = np.zeros((1, 7, 2, 4))
    for t in range(7):
        upto = t + 1 if causal else 7
        S = sn[..., :4] + np.einsum("bshk,bshv->bhkv", fk[:, :upto], vn[:, :upto])
        z = sn[..., 4] + fk[:, :upto].sum(axis=1)
        o_np[:, t] = np.einsum("bhk,bhkv->bhv", fq[:, t], S) / np.einsum("bhk,bhk->bh", fq[:, t], z)[..., None]
    s_np = np.concatenate([sn[..., :4] + np.einsum("bshk,bshv->bhkv", fk, vn),
                           (sn[..., 4] + fk.sum(axis=1))[..., None]], axis=-1)
    for impl in ("reference", "xla"):
        o, s = linear_attention(q, k, v, causal=causal, normalize=True, feature_map=elu1, initial_state=s0,
                                implementation=impl)
        assert_close_f32(o, o_np, 1e-5)
        assert_close_f32(s, s_np, 1e-5)


def test_zero_gate_gla_reference_equals_reference():
    """Two independent references agree: the GLA recurrence with g = 0, scale 1 vs the quadratic form."""
    q, k, v, s0 = _inputs(1, 2, 65, 2, 16, 24)
    o_g, s_g = gla_reference(q, k, v, np.zeros(k.shape, np.float32), scale=1.0, initial_state=s0)
    o, s = linear_attention_reference(q, k, v, initial_state=s0)
    assert_close_f32(o_g, o)
    assert_close_f32(s_g, s)


# Interpreted Pallas (CPU) runs the shapes whose grid differs: T = 3 and 63 pad into one chunk
# as T = 1 does; compiled (ICTL_KERNELS_COMPILED=1) runs all.
PALLAS_SHAPES = SHAPES if COMPILED else [s for s in SHAPES if s[1] not in (3, 63)]


@pytest.mark.parametrize("impl,shape", [("xla", s) for s in SHAPES] + [("pallas", s) for s in PALLAS_SHAPES],
                         ids=lambda x: x if isinstance(x, str) else "x".join(map(str, x)))
def test_forward_f32(impl, shape):
    q, k, v, s0 = _inputs(2, *shape)
    o, s = linear_attention(q, k, v, initial_state=s0, implementation=impl)
    o_r, s_r = linear_attention_reference(q, k, v, initial_state=s0)
    assert o.dtype == jnp.float32 and s.dtype == jnp.float32
    assert_close_f32(o, o_r)
    assert_close_f32(s, s_r)


@pytest.mark.parametrize("impl", IMPLS)
class TestLinearAttention:
    @pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}" for k, v in m.items() if v))
    def test_modes(self, impl, mode):
        norm = mode.get("normalize", False)
        q, k, v, s0 = _inputs(3, 2, 65, 2, 16, 24, state_cols=25 if norm else None)
        s0 = _norm_state(s0) if norm else s0
        o, s = linear_attention(q, k, v, initial_state=s0, implementation=impl, **mode)
        o_r, s_r = linear_attention_reference(q, k, v, initial_state=s0, **mode)
        assert s.shape == (2, 2, 16, 25 if norm else 24)
        assert_close_f32(o, o_r)
        assert_close_f32(s, s_r)

    def test_forward_bf16(self, impl):
        q, k, v, s0 = _inputs(4, 2, 65, 2, 32, 48, dtype=jnp.bfloat16)
        o, s = linear_attention(q, k, v, initial_state=s0, implementation=impl)
        o_r, s_r = linear_attention_reference(*(x.astype(jnp.float32) for x in (q, k, v)),
                                              initial_state=s0)
        assert o.dtype == jnp.bfloat16
        for x, ref in [(o, o_r), (s, s_r)]:
            x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
            assert np.sqrt(np.mean((x - ref) ** 2) / np.mean(ref ** 2)) <= 5e-3

    @pytest.mark.parametrize("normalize", [False, True])
    def test_grads_all_inputs(self, impl, normalize):
        """vjp w.r.t. q, k, v, initial_state vs the reference's: max|diff| ≤ 1e-4 · max|ref|."""
        mode = dict(normalize=True, feature_map=elu1) if normalize else {}
        q, k, v, s0 = _inputs(5, 2, 65, 2, 16, 24, state_cols=25 if normalize else None)
        s0 = _norm_state(s0) if normalize else s0
        ct_o, ct_s = _inputs(6, 2, 65, 2, 16, 24)[2], _inputs(7, 2, 65, 2, 16, s0.shape[-1])[3]
        f = lambda fn: (lambda q_, k_, v_, s_: fn(q_, k_, v_, initial_state=s_, **mode))

        @jax.jit   # both vjps in one program
        def vjps(*args):
            _, vjp = jax.vjp(f(lambda *a, **kw: linear_attention(*a, implementation=impl, **kw)), *args)
            _, vjp_r = jax.vjp(f(linear_attention_reference), *args)
            return vjp((ct_o, ct_s)), vjp_r((ct_o, ct_s))

        for name, d, d_r in zip("q k v initial_state".split(), *vjps(q, k, v, s0)):
            d, d_r = np.asarray(d, np.float64), np.asarray(d_r, np.float64)   # numpy: no eager programs
            err, scale = np.abs(d - d_r).max(), np.abs(d_r).max()
            assert scale > 0 and err <= 1e-4 * scale, (name, err, scale)

    @pytest.mark.parametrize("normalize", [False, True])
    def test_split_run_carries_state(self, impl, normalize):
        mode = dict(normalize=True, feature_map=elu1) if normalize else {}
        q, k, v, _ = _numpy(_inputs(8, 2, 130, 2, 16, 24))
        o, s = linear_attention(q, k, v, implementation=impl, **mode)
        o1, s1 = linear_attention(q[:, :65], k[:, :65], v[:, :65], implementation=impl, **mode)
        o2, s2 = linear_attention(q[:, 65:], k[:, 65:], v[:, 65:], initial_state=s1,
                                  implementation=impl, **mode)
        assert_close_f32(np.concatenate([o1, o2], axis=1), o)
        assert_close_f32(s2, s)

    def test_decode_steps_match_full_run(self, impl):
        """Prefill 65 tokens, then 65 GLA decode steps with g = 0, scale = 1: the shapes of
        test_split_run_carries_state[False] (no initial state), so no new linear-attention program."""
        q, k, v, _ = _numpy(_inputs(9, 2, 130, 2, 16, 24))
        o, s = linear_attention(q, k, v, implementation=impl)
        o_p, state = linear_attention(q[:, :65], k[:, :65], v[:, :65], implementation=impl)
        outs = [o_p]
        step = jax.jit(lambda q_, k_, v_, s_: gla_decode_step(q_, k_, v_, jnp.zeros_like(k_), s_,
                                                              scale=1.0))
        for t in range(65, 130):
            o_t, state = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], state)
            outs.append(o_t)
        assert_close_f32(np.concatenate(outs, axis=1), o)
        assert_close_f32(state, s)

    def test_block_sizes_do_not_change_result(self, impl):
        q, k, v, s0 = _inputs(10, 1, 100, 2, 16, 32)
        o_r, s_r = linear_attention_reference(q, k, v, initial_state=s0)
        # group=3: the xla path loops over 3-chunk groups, the last one zero-padded
        for bs in [BlockSizes(chunk=16, sub_chunk=16, group=3),
                   BlockSizes(chunk=128, sub_chunk=32, block_v=8)]:
            o, s = linear_attention(q, k, v, initial_state=s0, implementation=impl, block_sizes=bs)
            assert_close_f32(o, o_r)
            assert_close_f32(s, s_r)

    def test_float64_agrees_to_rounding(self, impl, x64):
        """In float64 the chunked and quadratic forms agree to ~1e-15 relative."""
        q, k, v, s0 = (x.astype(jnp.float64) for x in _inputs(13, 2, 100, 2, 16, 24))
        o, s = linear_attention(q, k, v, initial_state=s0, implementation=impl)
        o_r, s_r = linear_attention_reference(q, k, v, initial_state=s0)
        assert o.dtype == jnp.float64 and s.dtype == jnp.float64
        assert_close_f32(o, o_r, 1e-12)
        assert_close_f32(s, s_r, 1e-12)

    def test_bitwise_deterministic(self, impl):
        q, k, v, s0 = _inputs(11, 2, 65, 2, 16, 24)
        a = linear_attention(q, k, v, initial_state=s0, implementation=impl)
        b = linear_attention(q, k, v, initial_state=s0, implementation=impl)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_inputs_name_the_argument():
    q, k, v, s0 = _numpy(_inputs(12, 1, 8, 2, 16, 24))   # numpy: no eager programs per bad shape
    la = linear_attention
    cases = [
        ("^q ", lambda: la(q[0], k, v)),
        ("^k ", lambda: la(q, k[..., :8], v)),
        ("^v ", lambda: la(q, k, v[:, :, :1])),
        ("^v ", lambda: la(q, k, v.astype(jnp.int32))),
        ("^initial_state ", lambda: la(q, k, v, initial_state=s0[..., :5])),
        ("^initial_state ", lambda: la(q, k, v, normalize=True, initial_state=s0)),  # needs V+1
        ("^feature_map ", lambda: la(q, k, v, feature_map="elu")),
        ("^feature_map ", lambda: la(q, k, v, feature_map=lambda x: x[..., 0])),
        ("^normalize ", lambda: la(q, k, v, normalize=1)),
        ("^causal ", lambda: la(q, k, v, causal="yes")),
        ("^implementation ", lambda: la(q, k, v, implementation="cuda")),
        ("^block_sizes.block_v", lambda: la(q, k, v, block_sizes=BlockSizes(block_v=7))),
        ("^block_sizes ", lambda: la(q, k, v, block_sizes=(64, 16))),
    ]
    for pattern, call in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
