"""models.attention: every backend is causal, deterministic, correctly wired and typed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import BACKENDS, GLA_GATE_TEMPERATURE, Attention, attend

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)

B, T, D, H = 1, 12, 8, 2
OPTS = dict(block_size=4, top_k=2, k_keep=3)  # MoBA: 3 blocks, 2 kept; Spark: ≈ 3 keys per row


def _x(seed=0, shape=(B, T, D)):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _model(backend, **kw):
    return Attention(num_heads=H, backend=backend, **{**OPTS, **kw})


def _init(model):
    """``model.init`` as one jitted program: flax's init runs the forward pass, and eagerly each of its ops
    compiled on its own (MoBA's init alone took 3.4 CPU-s that way)."""
    return jax.jit(model.init)(jax.random.key(1), _x())


def _init_apply(backend, **kw):
    model = _model(backend, **kw)
    params = _init(model)
    # Larger weights than the 0.02 init so attention patterns are far from uniform.
    params = jax.tree.map(lambda p: p * 25.0, params)
    return model, params, jax.jit(model.apply)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_jacobian_and_future_perturbation(backend):
    _, params, apply = _init_apply(backend)
    x = _x()
    # forward mode: the same Jacobian, its program compiles faster than reverse mode's (3.9 vs 5.7 CPU-s
    # for the seven backends); a future input's tangent meets the same exact zeros (masks) either way
    jac = jax.jit(jax.jacfwd(lambda z: apply(params, z)[0]))(x)[:, :, 0]  # [T, D, T, D]
    jac_tt = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [t_out, s_in]
    assert np.all(np.triu(jac_tt, k=1) == 0.0), "output t depends on an input s > t"
    assert np.all(np.diag(jac_tt) > 0) and jac_tt[-1, 0] > 0  # not trivially zero
    # Values too (selection is piecewise constant, so gradients alone cannot see leaks).
    t0 = 7
    x2 = x.at[:, t0:].add(3.0 * _x(5, (B, T - t0, D)))
    y1, y2 = apply(params, x), apply(params, x2)
    assert float(jnp.max(jnp.abs(y1[:, :t0] - y2[:, :t0]))) <= 1e-6
    assert float(jnp.max(jnp.abs(y1[:, t0:] - y2[:, t0:]))) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_dtypes_and_bitwise_determinism(backend):
    model, params, apply = _init_apply(backend)
    x = _x(2)
    y = apply(params, x)
    assert y.shape == (B, T, D) and y.dtype == jnp.float32
    assert np.array_equal(np.asarray(y), np.asarray(apply(params, x)))
    params_again = _init(model)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a * 25.0, b), params_again, params))
    names = set(params["params"])
    extra = {"gla": {"gate"}, "lawcat": {"gate", "conv_q", "conv_k"}}.get(backend, set())
    assert names == {"qkv", "out"} | extra


def test_bf16_compute_keeps_float32_params(x64):
    model = Attention(num_heads=H, backend="moba", dtype=jnp.bfloat16, **OPTS)
    # dtypes by abstract evaluation (what tracing gives is what running gives; compiling the
    # initialisers once more under x64 cost ≈ 1 CPU-s), then N(0, 0.5²) weights of those dtypes
    shapes = jax.eval_shape(model.init, jax.random.key(0), _x())
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))  # x64 is on here
    draw = np.random.default_rng(0).normal
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * draw(size=s.shape), s.dtype), shapes)
    y = jax.jit(model.apply)(params, _x().astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


@pytest.mark.parametrize("backend,kw", [("moba", dict(top_k=3)), ("spark_topk", dict(k_keep=T))])
def test_full_budget_equals_softmax_backend(backend, kw):
    # MoBA with top_k = #blocks and Spark with k_keep ≥ T are dense causal attention.
    # the softmax parameters serve all three ({qkv, out}: test_shapes_dtypes_and_bitwise_determinism), so
    # the sparse models are only applied, not initialised (each init is a compile of its own)
    _, params, apply_soft = _init_apply("softmax")
    apply = jax.jit(_model(backend, **kw).apply)
    x = _x(3)
    assert float(jnp.max(jnp.abs(apply(params, x) - apply_soft(params, x)))) <= 1e-5
    apply_sparse = jax.jit(_model(backend).apply)  # the sparse default budget differs from dense
    assert float(jnp.max(jnp.abs(apply_sparse(params, x) - apply_soft(params, x)))) > 1e-3


def _numpy_qkv(params, x):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    qkv = np.einsum("btd,dihk->btihk", np.asarray(x, np.float64), p["qkv"]["kernel"]) + p["qkv"]["bias"]
    return p, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def _numpy_out(p, o_BxTxHxK):
    return np.einsum("bthk,hkd->btd", o_BxTxHxK, p["out"]["kernel"]) + p["out"]["bias"]


def test_linear_backend_matches_numpy_recurrence():
    # o_t = φ(q_t) Σ_{s≤t} φ(k_s)ᵀ v_s / φ(q_t) Σ_{s≤t} φ(k_s), φ = elu + 1, in float64.
    _, params, apply = _init_apply("linear")
    x = _x(4)
    p, q, k, v = _numpy_qkv(params, x)
    phi = lambda z: np.where(z > 0, z + 1.0, np.exp(z))
    S = np.cumsum(np.einsum("bthk,bthv->bthkv", phi(k), v), axis=1)
    z = np.cumsum(phi(k), axis=1)
    o = np.einsum("bthk,bthkv->bthv", phi(q), S) / np.einsum("bthk,bthk->bth", phi(q), z)[..., None]
    np.testing.assert_allclose(np.asarray(apply(params, x)), _numpy_out(p, o), rtol=1e-4, atol=1e-5)


def test_gla_backend_matches_numpy_recurrence():
    # S_t = Diag(α_t) S_{t−1} + k_tᵀ v_t, o_t = q_t S_t/√K, log α_t = logsigmoid(x W_g + b_g)/16.
    _, params, apply = _init_apply("gla")
    x = _x(5)
    p, q, k, v = _numpy_qkv(params, x)
    gate = np.einsum("btd,dhk->bthk", np.asarray(x, np.float64), p["gate"]["kernel"]) + p["gate"]["bias"]
    alpha = np.exp(-np.logaddexp(0.0, -gate) / GLA_GATE_TEMPERATURE)
    K = q.shape[-1]
    S = np.zeros((B, H, K, K))
    o = np.zeros_like(v)
    for t in range(T):
        S = alpha[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], S) / np.sqrt(K)
    np.testing.assert_allclose(np.asarray(apply(params, x)), _numpy_out(p, o), rtol=1e-4, atol=1e-5)


def test_lawcat_backend_matches_numpy_recurrence():
    # q̃_t = Σ_j w_q[j] q_{t−W+1+j} (same for k), φ = elu + 1, α_t as for "gla";
    # S_t = Diag(α_t) S_{t−1} + φ(k̃_t)ᵀ v_t, z_t = α_t z_{t−1} + φ(k̃_t),
    # o_t = φ(q̃_t) S_t / (φ(q̃_t)·z_t + 1e-6).
    _, params, apply = _init_apply("lawcat")
    # Undo the ×25 on the filters (identity tap 25 would give |q̃| ≈ 35, where φ = elu + 1 underflows
    # in float32 for negative entries and eps dominates the denominator: no test of the recurrence).
    params = {"params": {**params["params"], **{n: params["params"][n] / 25.0 for n in ("conv_q", "conv_k")}}}
    x = _x(6)
    p, q, k, v = _numpy_qkv(params, x)
    gate = np.einsum("btd,dhk->bthk", np.asarray(x, np.float64), p["gate"]["kernel"]) + p["gate"]["bias"]
    alpha = np.exp(-np.logaddexp(0.0, -gate) / GLA_GATE_TEMPERATURE)
    wq, wk = p["conv_q"], p["conv_k"]
    W = wq.shape[0]
    assert W == 4 and np.abs(wq[-1] - 1.0).max() < 0.1 and 0 < np.abs(wq[0]).max() < 0.1  # identity + noise
    phi = lambda z: np.where(z > 0, z + 1.0, np.exp(np.minimum(z, 0.0)))
    conv = lambda a, w, t: sum(w[j] * a[:, t - W + 1 + j] for j in range(W) if t - W + 1 + j >= 0)
    K = q.shape[-1]
    S, z = np.zeros((B, H, K, K)), np.zeros((B, H, K))
    o = np.zeros_like(v)
    for t in range(T):
        fq, fk = phi(conv(q, wq, t)), phi(conv(k, wk, t))
        S = alpha[:, t, :, :, None] * S + fk[..., None] * v[:, t, :, None, :]
        z = alpha[:, t] * z + fk
        o[:, t] = np.einsum("bhk,bhkv->bhv", fq, S) / (np.sum(fq * z, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(apply(params, x)), _numpy_out(p, o), rtol=1e-4, atol=1e-5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"backend must be one of \('softmax', 'linear', 'gla'"):
        Attention(num_heads=H, backend="flash").init(jax.random.key(0), _x())
    with pytest.raises(ValueError, match="num_heads"):
        Attention(num_heads=3).init(jax.random.key(0), _x())
    q = jnp.zeros((B, T, H, 4))
    with pytest.raises(ValueError, match="g must"):
        attend(q, q, q, backend="gla")
    with pytest.raises(ValueError, match="conv_q must"):
        attend(q, q, q, backend="lawcat", g=jnp.zeros_like(q))
    with pytest.raises(ValueError, match="conv_width"):
        Attention(num_heads=H, backend="lawcat", conv_width=0).init(jax.random.key(0), _x())
    with pytest.raises(ValueError, match="causal"):
        attend(q, q, q, backend="moba", causal=False)
    with pytest.raises(ValueError, match="backend"):
        attend(q, q, q, backend="Softmax")
