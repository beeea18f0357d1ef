"""MoBA: "xla" (sparse), "xla_union" and "pallas" paths against the dense masked reference, outputs and gradients.

Pallas runs interpreted on CPU; with ICTL_KERNELS_COMPILED=1 (accelerator) it runs compiled.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl import rng
from kernels import moba
from kernels.moba import moba_attention, moba_attention_reference, moba_selection_reference

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)

INTERPRET = os.environ.get("ICTL_KERNELS_COMPILED") != "1"
IMPLS = ("xla", "xla_union", "pallas")
B, H, K, V = 1, 2, 16, 32  # V ≠ K catches layout mix-ups
# Triton's dot needs tiles ≥ 16: compiled runs use blocks of 16 (and twice the T of the
# block-structured cases); interpreted runs keep blocks of 8.
BS = 16 if not INTERPRET else 8

# (T, block_size, top_k, threshold): sparse, padded (65 = 8·8 + 1), long, VMoBA threshold. Long is
# T = 500 (62·8 + 4: 63 blocks, 4 kept, ragged); 1000 doubled the run time for the same programs.
CASES = [(8 * BS, BS, 3, None), (8 * BS + 1, BS, 3, None), (500, BS, 4, None), (8 * BS, BS, 6, 0.4)]


def _qkv(seed, T, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = rng.eager_normal(kq, (B, T, H, K), jnp.float32)
    k = rng.eager_normal(kk, (B, T, H, K), jnp.float32)
    v = rng.eager_normal(kv, (B, T, H, V), jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@functools.cache
def _fn(impl, **kw):
    """One jitted function per (implementation, options), kept for the module: a fresh
    jax.jit(partial(...)) per call retraced and recompiled the same program in every test
    (the reference once per implementation compared against it)."""
    if impl == "reference":
        return jax.jit(functools.partial(moba_attention_reference, **kw))
    return jax.jit(functools.partial(moba_attention, implementation=impl, interpret=INTERPRET, **kw))


@functools.cache
def _vjp_fn(impl, **kw):
    f = _fn(impl, **kw)
    return jax.jit(lambda q, k, v, ct: jax.vjp(f, q, k, v)[1](ct))


def _run(impl, q, k, v, *, threshold=None, **kw):
    """Jitted call (one compile instead of hundreds of eager op dispatches). threshold=None is
    spelled out so that calls with and without it share the program."""
    return _fn(impl, threshold=threshold, **kw)(q, k, v)


def _vjp(impl, q, k, v, ct, *, threshold=None, **kw):
    """(dq, dk, dv) = vjp of the implementation at (q, k, v) against the cotangent ct."""
    return _vjp_fn(impl, threshold=threshold, **kw)(q, k, v, ct)


def _maxdiff(a, b):
    """max|a − b| in numpy (eager jnp ops would compile a small program per shape)."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _dense_causal(q, k, v):
    T = q.shape[1]
    s = jnp.einsum("bthk,bshk->bhts", q, k, precision="highest") / np.sqrt(K)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool))[None, None], s, -jnp.inf)
    return jnp.einsum("bhts,bshv->bthv", jax.nn.softmax(s, axis=-1), v, precision="highest")


# CASES[0] (T = 8 blocks, no threshold) is left out here: the unpadded T = 8 blocks is CASES[3] (with a
# threshold), CASES[0]'s configuration is compared with the reference in bf16 (test_bf16_relative_rmse) and
# T = 8 blocks at top_k = #blocks and 2 with dense attention (test_all_blocks_is_dense_causal_...).
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T,bs,top_k,tau", CASES[1:])
def test_forward_matches_reference_f32(impl, T, bs, top_k, tau):
    q, k, v = _qkv(0, T)
    kw = dict(block_size=bs, top_k=top_k, threshold=tau)
    out = _run(impl, q, k, v, **kw)
    ref = _run("reference", q, k, v, **kw)
    assert out.shape == (B, T, H, V) and out.dtype == jnp.float32
    assert _maxdiff(out, ref) <= 1e-5


# The pallas backward is the xla vjp by construction (custom_vjp), so it gets one case.
@pytest.mark.parametrize("impl,T,bs,top_k,tau", [("xla", *CASES[1]), ("xla", *CASES[2]), ("xla", *CASES[3]),
                                                  ("xla_union", *CASES[1]), ("pallas", *CASES[1])])
def test_gradients_match_reference_vjp(impl, T, bs, top_k, tau):
    q, k, v = _qkv(1, T)
    ct = rng.eager_normal(jax.random.key(2), (B, T, H, V))
    kw = dict(block_size=bs, top_k=top_k, threshold=tau)
    for got, want in zip(_vjp(impl, q, k, v, ct, **kw), _vjp("reference", q, k, v, ct, **kw)):
        # rtol 1e-4 elementwise, plus an atol of 1e-5·max|grad| for entries that cancel to ≈ 0.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(np.asarray(want)).max())


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_relative_rmse(impl):
    q, k, v = _qkv(3, 8 * BS, jnp.bfloat16)
    out = _run(impl, q, k, v, block_size=BS, top_k=3)
    ref = _run("reference", q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
               block_size=BS, top_k=3)
    assert out.dtype == jnp.bfloat16
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)   # numpy: no eager programs to compile
    err = np.sqrt(np.mean(np.square(out - ref)) / np.mean(np.square(ref)))
    assert err <= 5e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_all_blocks_is_dense_causal_and_few_blocks_is_not(impl):
    q, k, v = _qkv(4, 8 * BS)
    dense = jax.jit(_dense_causal)(q, k, v)
    full = _run(impl, q, k, v, block_size=2 * BS, top_k=4)  # 4 blocks, top_k = #blocks
    assert _maxdiff(full, dense) <= 1e-5
    sparse = _run(impl, q, k, v, block_size=BS, top_k=2)  # 8 blocks, 2 kept
    assert _maxdiff(sparse, dense) > 0.1
    # The first two blocks see at most own + one past block: identical to dense there.
    assert _maxdiff(np.asarray(sparse)[:, :2 * BS], np.asarray(dense)[:, :2 * BS]) <= 1e-5


def _mask_from_selection(idx, valid, n):
    return jnp.any((idx[..., None] == jnp.arange(n).reshape(1, 1, 1, 1, n)) & valid[..., None], axis=3)


@pytest.mark.parametrize("tau", [None, 0.4])
def test_block_selection_matches_rank_reference(tau):
    # The kernels' top_k/cumsum selection equals the reference's rank-counting definition.
    T, bs, top_k = 500, 8, 5
    q, k, _ = _qkv(5, T)

    @jax.jit
    def kernel_mask(q, k):
        qp, kp, _ = moba._prepare(q, k, k, bs)
        idx, valid = moba._select_blocks(moba._block_gate(qp, kp, T, bs), top_k, tau, bs)
        return _mask_from_selection(idx, valid, -(-T // bs))[:, :, :T]

    got = np.asarray(kernel_mask(q, k))
    select = functools.partial(moba_selection_reference, block_size=bs, top_k=top_k, threshold=tau)
    want = np.asarray(jax.jit(select)(q, k))
    assert np.all(got == want)
    counts = want.sum(-1)[:, :, 8 * bs:]  # queries with ≥ 8 past blocks
    if tau is None:
        assert np.all(counts == top_k)
    else:  # the threshold prunes below the cap for some queries, never above it
        assert int(counts.min()) < top_k and int(counts.max()) <= top_k and int(counts.min()) >= 2


@pytest.mark.parametrize("impl", IMPLS)
def test_tiny_threshold_keeps_best_past_block_only(impl):
    # τ → 0: the best past block (normalised score 1) already reaches τ·Σn (Σn ≤ #blocks < 1/τ),
    # so exactly own + best block remain: the same as top_k = 2 without a threshold.
    q, k, v = _qkv(6, 8 * BS)
    a = _run(impl, q, k, v, block_size=BS, top_k=8, threshold=0.01)
    b = _run(impl, q, k, v, block_size=BS, top_k=2)
    assert _maxdiff(a, b) <= 1e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_deterministic_bitwise(impl):
    q, k, v = _qkv(7, 8 * BS + 1)
    a = _run(impl, q, k, v, block_size=BS, top_k=3)
    b = _run(impl, q, k, v, block_size=BS, top_k=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("impl", ("xla", "xla_union"))
def test_xla_memory_is_subquadratic(impl):
    # Compiled temp memory at T = 4096 (64 blocks of 64, 3 kept) vs the T² fp32 logits of dense.
    T = 4096
    x = jax.ShapeDtypeStruct((1, T, 1, K), jnp.float32)
    fn = functools.partial(moba_attention, block_size=64, top_k=3, implementation=impl)
    mem = jax.jit(fn).lower(x, x, x).compile().memory_analysis()
    if mem is None:
        pytest.fail("memory_analysis() unavailable on this backend")
    assert mem.temp_size_in_bytes < 0.5 * 4 * T * T


@pytest.mark.parametrize("tau", [None, 0.4])
def test_sparse_layout_holds_each_pair_once_with_bounded_work(tau):
    # The "xla" path's tiles: every valid (query, block) pair sits in exactly one slot, every
    # tile holds queries of its own key block only, and the used tiles cover
    # ≤ #pairs + #blocks·(tile − 1) slots (each block's group padded by < one tile):
    # work O(T·top_k·block_size), not O(T²).
    T, bs, top_k, tile = 500, 8, 4, 4
    q, k, _ = _qkv(12, T)

    @jax.jit
    def layout(q, k):
        qp, kp, _ = moba._prepare(q, k, k, bs)
        idx, valid = moba._select_blocks(moba._block_gate(qp, kp, T, bs), top_k, tau, bs)
        G, n = B * H, qp.shape[2] // bs
        S = idx.shape[-1]
        return (idx.reshape(G, -1, S), valid.reshape(G, -1, S),
                *moba._sparse_layout(idx.reshape(G, -1, S), valid.reshape(G, -1, S), n, tile))

    idx, valid, qid_L, tile_bid, used, pos_P = map(np.asarray, layout(q, k))
    G, Tp, S = idx.shape
    n, n_slots = Tp // bs, qid_L.shape[0]
    pos = pos_P.reshape(G, Tp, S)
    assert np.all(pos[~valid] == n_slots)  # unused (threshold) slots are dropped
    assert len(np.unique(pos[valid])) == valid.sum()  # one slot per pair
    for gi, ti, s in zip(*np.nonzero(valid)):
        p = pos[gi, ti, s]
        assert qid_L[p] == gi * Tp + ti and tile_bid[p // tile] == gi * n + idx[gi, ti, s]
    assert (qid_L >= 0).sum() == valid.sum()
    assert int(used) * tile <= valid.sum() + G * n * (tile - 1)
    assert np.all(qid_L[int(used) * tile:] == -1)  # tiles past `used` are empty (skipped)


def test_pallas_sub_tiles_match_reference():
    # The compiled kernel splits blocks into 64-wide tiles; check that tiling interpreted on
    # CPU: blocks of 32 in tiles of 8 (4 query tiles per block, 4 key tiles per union block).
    q, k, v = _qkv(11, 130)
    out = jax.jit(lambda *a: moba._moba_pallas_forward(*a, 32, 2, None, 0.25, True, tile=8))(q, k, v)
    ref = _run("reference", q, k, v, block_size=32, top_k=2)
    assert _maxdiff(out, ref) <= 1e-5


def test_compiled_pallas_lowers_to_triton_for_cuda():
    # Cross-platform lowering (no GPU needed): catches primitives the Triton lowering lacks
    # (jnp.any → reduce_or did) before a GPU run. Running it is left to bench/gpu.sh.
    x = jax.ShapeDtypeStruct((1, 1000, 2, 16), jnp.bfloat16)
    xv = jax.ShapeDtypeStruct((1, 1000, 2, 32), jnp.bfloat16)
    fn = jax.jit(functools.partial(moba_attention, block_size=16, top_k=3, implementation="pallas", interpret=False))
    triton = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    exported = jax.export.export(fn, platforms=["cuda"], disabled_checks=[triton])(x, x, xv)
    assert exported.mlir_module().count("xla.gpu.triton") == 1


def test_compiled_pallas_needs_power_of_two_tiles():
    q = k = v = np.zeros((B, 64, H, K), np.float32)
    with pytest.raises(ValueError, match="block_size"):
        moba_attention(q, k, v, block_size=8, top_k=2, implementation="pallas", interpret=False)


@pytest.mark.parametrize(
    "kw,name",
    [(dict(block_size=0, top_k=2), "block_size"), (dict(block_size=8, top_k=0), "top_k"),
     (dict(block_size=8, top_k=2, threshold=1.5), "threshold"),
     (dict(block_size=8, top_k=2, implementation="cuda"), "implementation")],
)
def test_bad_arguments_raise(kw, name):
    q = k = v = np.zeros((B, 16, H, K), np.float32)  # arguments are checked before any compute
    with pytest.raises(ValueError, match=name):
        moba_attention(q, k, v, **kw)


def test_bad_shapes_raise():
    q = k = v = np.zeros((B, 16, H, K), np.float32)
    with pytest.raises(ValueError, match="q, k"):
        moba_attention(q, k[:, :8], v, block_size=8, top_k=2)
    with pytest.raises(ValueError, match="q, k, v"):
        moba_attention(q[0], k[0], v[0], block_size=8, top_k=2)
