"""Zheng et al. (2024) theory: closed forms vs Monte Carlo, the flow vs exact solutions and GD."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.tasks.rotation import X1_DISTS, sample_rotation_sequences, sample_x1, x1_moments
from ictl.theory import zheng
from models.causal_lsa import CausalLSA, ar_loss, one_step_gd_reference


def _seqs(seed, *, batch, length, d, dist):
    return sample_rotation_sequences(jax.random.key(seed), batch=batch, length=length, d=d, dist=dist,
                                     dtype=jnp.complex128)


def test_moment_table_matches_mc(x64):
    # 200k draws; each moment within 5 MC standard errors of the table.
    for dist in X1_DISTS:
        x = np.asarray(sample_x1(jax.random.key(3), batch=200_000, d=1, dist=dist, dtype=jnp.float64))[:, 0]
        m = x1_moments(dist)
        for k, want in ((1, m.m1), (3, m.m3), (2, m.m2), (4, m.m4), (6, m.m6)):
            s = x**k
            se = s.std() / np.sqrt(s.size)
            assert abs(s.mean() - want) <= 5 * se + 1e-12, (dist, k, s.mean(), want, se)


def test_sequences_follow_the_rotation(x64):
    s = _seqs(0, batch=4, length=50, d=3, dist="gaussian")
    lam = jnp.exp(1j * s.theta)
    np.testing.assert_allclose(s.x[:, 1:], lam[:, None, :] * s.x[:, :-1], atol=1e-12)
    np.testing.assert_allclose(s.x[:, 0], s.x1, atol=0)


def test_paper_init_is_one_gd_step_on_ols(x64):
    """ŷ_{t+1} at the paper init = (Ŵ_0 − η ∇_Ŵ ½Σ_{i≤t}‖x_i − Ŵx_{i−1}‖²) x_t, Ŵ_0 = 0, η = ab/(t−1)."""
    d, T, a, b = 3, 9, 0.5, 0.75  # exact in float32, so c = ab = 0.375 exactly
    x = _seqs(1, batch=2, length=T, d=d, dist="gaussian").x
    model = CausalLSA(d=d, a0=a, b0=b)

    @jax.jit  # one program: eagerly, every op of init, apply and the reference compiles on its own
    def init_apply(x):
        params = model.init(jax.random.key(0), x)
        return params, model.apply(params, x), one_step_gd_reference(x, a * b)

    params, yhat, reference = init_apply(x)
    assert params["params"]["w_kq"].dtype == jnp.float32  # x64 does not change the param dtype

    def ols(uv, xb, t):
        """½ Σ_{i=2}^{t} ‖x_i − Ŵ x_{i−1}‖², Ŵ = U + iV; steepest descent on the real pair (U, V)."""
        w = uv[0] + 1j * uv[1]
        r_Pxd = xb[1:] - jnp.einsum("fe,pe->pf", w, xb[:-1])  # pair p ↔ i = p + 2
        keep_P = jnp.arange(2, T + 1) <= t
        return 0.5 * jnp.sum(jnp.where(keep_P[:, None], jnp.abs(r_Pxd) ** 2, 0.0))

    ts = jnp.arange(2, T + 1)
    g = jax.jit(jax.vmap(jax.vmap(jax.grad(ols), (None, None, 0)), (None, 0, None)))(jnp.zeros((2, d, d)), x, ts)
    w1_BxTxdxd = -(a * b / (ts - 1.0))[None, :, None, None] * (g[:, :, 0] + 1j * g[:, :, 1])
    want = jnp.einsum("btfe,bte->btf", w1_BxTxdxd, x[:, 1:])  # Ŵ_1 x_t at t = 2 … T
    np.testing.assert_allclose(yhat[:, 1:], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(yhat, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(yhat[:, 0], 0.0, atol=0)


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_position_error_matches_mc(x64, dist):
    """E|ŷ_{t+1,j} − x_{t+1,j}|² = c²(m6 + (d−1)m2m4/(t−1)) − 2cm4 + m2, within 4 MC SE at each t."""
    d, T, c, n = 3, 12, 0.4, 20_000
    m = x1_moments(dist)

    @jax.jit  # one program (eagerly, each op of the sampler and the reference compiles on its own)
    def sq_err():
        x = _seqs(2, batch=n, length=T, d=d, dist=dist).x
        return jnp.mean(jnp.abs(one_step_gd_reference(x, c)[:, 1:-1] - x[:, 2:]) ** 2, axis=-1)

    err_BxS = np.asarray(sq_err())
    mean, se = err_BxS.mean(0), err_BxS.std(0) / np.sqrt(n)
    want = np.asarray(zheng.position_error(c, np.arange(2, T), moments=m, d=d))
    assert np.all(np.abs(mean - want) <= 4 * se), (mean, want, se)
    # the training loss is the mean over positions of d/2 times it
    loss = 0.5 * d * mean.mean()
    np.testing.assert_allclose(float(zheng.population_loss(c, moments=m, d=d, length=T)), 0.5 * d * want.mean(),
                               rtol=1e-12)
    assert abs(loss - 0.5 * d * want.mean()) <= 4 * 0.5 * d * err_BxS.mean(1).std() / np.sqrt(n)


def _grad_batches(dist, *, d, T, a, b, k, batch):
    model = CausalLSA(d=d, a0=a, b0=b)
    params = model.init(jax.random.key(0), jnp.zeros((1, T, d), jnp.complex64))

    @jax.jit
    def grad(key):
        x = sample_rotation_sequences(key, batch=batch, length=T, d=d, dist=dist).x
        return jax.grad(lambda p: ar_loss(model.apply(p, x), x))(params)["params"]

    gs = [grad(jax.random.key(100 + i)) for i in range(k)]
    return {n: np.stack([np.asarray(g[n], np.float64) for g in gs]) for n in ("w_kq", "w_pv")}


def test_gradient_along_family_matches_flow_field():
    """MC gradient of the full LSA at W^{KQ}[d:,:d] = aI, W^{PV}[:,:d] = bI (Rademacher x_1).

    On-pattern entries: ∂L/∂a_j = b(abᾱ − m4), ∂L/∂b_j = a(abᾱ − m4); off-pattern entries 0,
    each within 5 SE of 16 independent batch gradients. Shifted x_1 ~ N(1,1): an off-pattern
    entry is non-zero at > 8 SE.
    """
    d, T, a, b = 2, 8, 0.6, 0.5
    m = x1_moments("rademacher")
    g_val = a * b * zheng.alpha_bar(m, d=d, length=T) - m.m4
    g = _grad_batches("rademacher", d=d, T=T, a=a, b=b, k=16, batch=2048)
    for name, want_diag, block in (("w_kq", b * g_val, np.s_[d:, :d]), ("w_pv", a * g_val, np.s_[:, :d])):
        mean, se = g[name].mean(0), g[name].std(0, ddof=1) / 4.0
        want = np.zeros_like(mean)
        want[block] = want_diag * np.eye(d)
        assert np.all(np.abs(mean - want) <= 5 * se + 1e-6), (name, mean, want, se)

    gs = _grad_batches("shifted", d=d, T=T, a=a, b=b, k=16, batch=2048)
    mean, se = gs["w_kq"].mean(0), gs["w_kq"].std(0, ddof=1) / 4.0
    mean[d:, :d] -= np.diag(np.diag(mean[d:, :d]))  # keep off-pattern entries only
    assert np.max(np.abs(mean) / se) > 8.0


def test_flow_solver_matches_logistic_and_conserves(x64):
    m, d, T = x1_moments("gaussian"), 3, 20
    c0 = 0.01
    for method in ("dopri5", "rk4"):
        f = zheng.solve_flow(np.sqrt(c0), np.sqrt(c0), moments=m, d=d, length=T, t1=3.0, num_saves=31, method=method)
        exact = zheng.logistic_product(f.tau, c0=c0, moments=m, d=d, length=T)
        np.testing.assert_allclose(f.c, exact, rtol=1e-7)
    # 31 saves as above: num_saves is static in zheng's compiled solve (ᾱ, m4 and t1 are traced), so this is
    # the same program as the dopri5 solve above, not a third one (≈ 2 CPU-s)
    f = zheng.solve_flow(0.3, 0.05, moments=m, d=d, length=T, t1=5.0, num_saves=31)
    np.testing.assert_allclose(f.a**2 - f.b**2, 0.3**2 - 0.05**2, rtol=1e-8)
    # limit = c* = m4/ᾱ, the minimiser of L(c)
    cs = zheng.mesa_coefficient(m, d=d, length=T)
    np.testing.assert_allclose(f.c[-1], cs, rtol=1e-6)
    dl = jax.grad(lambda c: zheng.population_loss(c, moments=m, d=d, length=T))(jnp.float64(cs))
    assert abs(float(dl)) < 1e-12
    h = sum(1.0 / k for k in range(1, T - 1)) / (T - 2)  # H_{T−2}/(T−2)
    np.testing.assert_allclose(cs, 3.0 / (15.0 + 2 * 1.0 * 3.0 * h), rtol=1e-14)
    np.testing.assert_allclose(zheng.mesa_step_size(5, moments=m, d=d, length=T), cs / 4, rtol=1e-14)


def test_flow_is_the_small_step_limit_of_gd(x64):
    """Discrete GD on the population loss → the flow, error O(lr) (halving lr halves it)."""
    m, d, T = x1_moments("rademacher"), 3, 16
    # 31 saves, τ = 0.1 k: the compiled dopri5 solve of the test above (num_saves is static, t1 traced).
    # Measured max errors 2.53e-3 / 1.26e-3, ratio 2.003 (on 401 saves up to τ = 4: 2.54e-3 / 1.27e-3, 2.004)
    fl = zheng.solve_flow(0.2, 0.1, moments=m, d=d, length=T, t1=3.0, num_saves=31)
    errs = []
    for lr, every in ((0.02, 5), (0.01, 10)):
        gd = zheng.gd_on_population(0.2, 0.1, lr=lr, num_steps=30 * every, moments=m, d=d, length=T)
        errs.append(float(jnp.max(jnp.abs(gd.c[::every] - fl.c))))
    assert errs[1] < 0.02
    np.testing.assert_allclose(errs[0] / errs[1], 2.0, rtol=0.1)


def test_recovery_condition():
    # m4² = m2 m6 ⇔ recovery: Rademacher 1·1 = 1; Gaussian 9 vs 15 → gap 1 − 9/15 = 0.4.
    assert zheng.recovery_gap(x1_moments("rademacher")) == 0.0
    np.testing.assert_allclose(zheng.recovery_gap(x1_moments("gaussian")), 0.4, rtol=1e-15)
    for dist in ("rademacher", "gaussian", "shifted"):
        m = x1_moments(dist)
        lim = float(zheng.position_error(m.m4 / m.m6, np.inf, moments=m, d=4)) / m.m2
        np.testing.assert_allclose(lim, zheng.recovery_gap(m), atol=1e-14)
    assert zheng.symmetric_x1(x1_moments("gaussian")) and not zheng.symmetric_x1(x1_moments("shifted"))
    with pytest.raises(ValueError, match="length"):
        zheng.mean_inv_lag(2)
    with pytest.raises(ValueError, match="dist"):
        x1_moments("cauchy")
