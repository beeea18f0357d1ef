"""Mahankali-Hashimoto-Ma closed forms against algebra, the ZFB theory and Monte Carlo (float64).

Every Monte Carlo comparison states its standard error (sample std / √M over M independent
prompts) and asserts agreement within 4 SE (fixed seeds, so the outcome is deterministic).
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ictl.tasks.linear import sample_linear_prompts
from ictl.tasks.nonlinear_response import sample_nonlinear_prompts
from ictl.theory import mahankali as mh
from ictl.theory import zfb

N, D = 10, 4
M = 200_000  # prompts per Monte Carlo estimate
Z = 4.0  # tolerance in standard errors


def _rotation(seed: int, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def _aniso():
    q1, q2 = _rotation(1, D), _rotation(2, D)
    sx = q1 @ np.diag([0.3, 0.7, 1.2, 2.0]) @ q1.T
    sw = q2 @ np.diag([1.5, 1.0, 0.5, 0.25]) @ q2.T
    return sx, sw


def _mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std(ddof=1) / np.sqrt(v.size)


@partial(jax.jit, static_argnames=("m",))
def _linear_features(key, sx, sw, noise_std, *, m):
    p = sample_linear_prompts(key, batch=m, n_ctx=N, d=D, cov=sx, w_cov=sw, noise_std=noise_std,
                              dtype=jnp.float64)
    h_Mxd = jnp.einsum("bn,bnd->bd", p.y_ctx, p.x_ctx)
    return h_Mxd, p.x_q[:, 0], p.y_q[:, 0]


def _linear_mc(sx, sw, noise_var, seed=0):
    with jax.enable_x64(True):
        out = _linear_features(jax.random.key(seed), jnp.asarray(sx), jnp.asarray(sw),
                               jnp.sqrt(noise_var), m=M)
        return tuple(np.asarray(a) for a in out)


def test_isotropic_closed_form_equals_general_solution():
    for n, d, s2 in [(20, 5, 0.0), (20, 5, 0.5), (3, 7, 2.0)]:
        eta, loss = mh.isotropic_optimum(n, d, s2)
        eye = np.eye(d)
        np.testing.assert_allclose(mh.optimal_preconditioner(N=n, Sigma_x=eye, Sigma_w=eye, noise_var=s2),
                                   eta * eye, rtol=1e-12, atol=1e-15)
        assert mh.optimal_loss(N=n, Sigma_x=eye, Sigma_w=eye, noise_var=s2) == pytest.approx(loss, rel=1e-12)
        assert mh.preconditioner_loss(eta * eye, N=n, Sigma_x=eye, Sigma_w=eye, noise_var=s2) == pytest.approx(loss, rel=1e-12)
    # A task on a subspace (Σ_w = diag(1, 1, 0), Σ_x = I, σ = 0): G = N[2 I + (N+1) Σ_w], so
    # A* = N G⁻¹ Σ_w = diag(1, 1, 0)/(N + 3) and L* = ½·2·(1 − N/(N+3)).
    sw = np.diag([1.0, 1.0, 0.0])
    np.testing.assert_allclose(mh.optimal_preconditioner(N=7, Sigma_x=np.eye(3), Sigma_w=sw), sw / 10, atol=1e-15)
    assert mh.optimal_loss(N=7, Sigma_x=np.eye(3), Sigma_w=sw) == pytest.approx(1 - 7 / 10, rel=1e-12)
    # Hand values: d=5, N=20, σ²=0: η = 1/26, L* = ½·5·6/26 = 15/26.
    assert mh.isotropic_optimum(20, 5, 0.0) == pytest.approx((1 / 26, 15 / 26), rel=1e-14)


def test_optimum_solves_the_vec_linear_system_and_is_a_minimum():
    sx, sw = _aniso()
    s2 = 0.5
    a_star = mh.optimal_preconditioner(N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2)
    G, C, _ = mh.linear_moments(N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2)
    # ∇L = G A Σ_x − C = 0  ⇔  (Σ_x ⊗ G) vec A = vec C  (column-major vec).
    vec_a = np.linalg.solve(np.kron(sx, G), C.reshape(-1, order="F"))
    np.testing.assert_allclose(a_star, vec_a.reshape(D, D, order="F"), rtol=1e-10, atol=1e-14)
    # L(A* + εB) − L* = ½ ε² tr(BᵀGBΣ_x) exactly (no linear term): stationarity and convexity.
    l_star = mh.optimal_loss(N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2)
    b = np.random.default_rng(3).normal(size=(D, D)) * 0.01
    excess = mh.preconditioner_loss(a_star + b, N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2) - l_star
    assert excess == pytest.approx(0.5 * np.trace(b.T @ G @ b @ sx), rel=1e-7)
    assert excess > 0


def test_zfb_crosscheck_noiseless():
    """σ = 0, Σ_w = I, Σ_x = Λ: Mahankali's A* (h = Σ y x) is ZFB's Γ⁻¹ with h = (1/N) Σ y x, so A* = Γ⁻¹/N."""
    sx, _ = _aniso()
    a_star = mh.optimal_preconditioner(N=N, Sigma_x=sx, Sigma_w=np.eye(D), noise_var=0.0)
    gamma = (1 + 1 / N) * sx + np.trace(sx) / N * np.eye(D)  # ZFB's Γ, written out here
    np.testing.assert_allclose(a_star, np.linalg.inv(gamma) / N, rtol=1e-10)
    np.testing.assert_allclose(a_star, zfb.optimal_V(sx, N) / N, rtol=1e-10)
    l_star = mh.optimal_loss(N=N, Sigma_x=sx, Sigma_w=np.eye(D), noise_var=0.0)
    assert l_star == pytest.approx(0.5 * (np.trace(sx) - np.trace(np.linalg.inv(gamma) @ sx @ sx)), rel=1e-10)
    assert l_star == pytest.approx(zfb.min_loss(sx, N), rel=1e-10)
    # Isotropic d=5, N=20: L* = d(d+1)/(2(N+d+1)) = 15/26 = 0.576923… (REFERENCES.md).
    assert mh.isotropic_optimum(20, 5)[1] == pytest.approx(0.5769230769, rel=1e-9)


def test_linear_moments_and_loss_vs_monte_carlo():
    sx, sw = _aniso()
    s2 = 0.5
    h, xq, yq = _linear_mc(sx, sw, s2)
    G, C, ey2 = mh.linear_moments(N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2)
    # Fourth-moment identity E[hhᵀ] = G, entry by entry.
    hh = h[:, :, None] * h[:, None, :]
    mean, se = hh.mean(0), hh.std(0, ddof=1) / np.sqrt(M)
    assert np.all(np.abs(mean - G) < Z * se), (mean, G, se)
    cyx = (yq[:, None, None] * xq[:, :, None] * h[:, None, :])
    assert np.all(np.abs(cyx.mean(0) - C) < Z * cyx.std(0, ddof=1) / np.sqrt(M))
    # The loss at a random A, at A* and at 0 (L(0) = ½ E y² = ½(tr Σ_xΣ_w + σ²)).
    a_star = mh.optimal_preconditioner(N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2)
    a_rand = a_star + 0.03 * np.random.default_rng(4).normal(size=(D, D))
    for a in (a_rand, a_star, np.zeros((D, D))):
        mc, se = _mean_se(0.5 * (np.einsum("bd,de,be->b", h, a, xq) - yq) ** 2)
        exact = mh.preconditioner_loss(a, N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2)
        assert abs(mc - exact) < Z * se, (mc, exact, se)
    assert mh.preconditioner_loss(np.zeros((D, D)), N=N, Sigma_x=sx, Sigma_w=sw, noise_var=s2) == pytest.approx(0.5 * ey2)


def test_nonlinear_quadrature_matches_closed_forms():
    """Responses with exact moments (z = sg, g ~ N(0,1), s² ~ τ²χ²_d, E s^{2k} = τ^{2k} d(d+2)…(d+2k−2))."""
    d, tau2, s2 = 5, 0.7, 0.3
    # linear: m1 = 1, a0 = s², a2 = 3s²  ⇒ the isotropic optimum with Σ_w = τ² I.
    eta, loss = mh.nonlinear_optimum("linear", N=N, d=d, w_var=tau2, noise_var=s2)
    a_star = mh.optimal_preconditioner(N=N, Sigma_x=np.eye(d), Sigma_w=tau2 * np.eye(d), noise_var=s2)
    assert eta == pytest.approx(a_star[0, 0], rel=1e-12)
    assert loss == pytest.approx(mh.optimal_loss(N=N, Sigma_x=np.eye(d), Sigma_w=tau2 * np.eye(d), noise_var=s2), rel=1e-12)
    # relu: m1 = E[g relu(g)] = ½, a0 = s²/2, a2 = s² E[g⁴; g>0] = 3s²/2.
    mo = mh.nonlinear_moments("relu", N=N, d=d, w_var=tau2, noise_var=s2)
    np.testing.assert_allclose([mo.beta, mo.mean_a0, mo.mean_a2], [tau2 / 4, d * tau2 / 2, 3 * d * tau2 / 2], rtol=1e-10)
    # cubic: m1 = E[g⁴] s² = 3s², a0 = 15 s⁶, a2 = 105 s⁶; E s⁶ = τ⁶ d(d+2)(d+4).
    mo = mh.nonlinear_moments("cubic", N=N, d=d, w_var=tau2, noise_var=s2)
    es6 = tau2**3 * d * (d + 2) * (d + 4)
    np.testing.assert_allclose([mo.beta, mo.mean_a0, mo.mean_a2], [9 * es6 / d, 15 * es6, 105 * es6], rtol=1e-10)
    gamma = s2 + 15 * es6 + 90 * es6 / d + (N - 1) * 9 * es6 / d
    assert mo.gamma == pytest.approx(gamma, rel=1e-10)


@pytest.mark.parametrize("response,w_var,noise_var", [("tanh", 1.0, 0.25), ("relu", 0.5, 0.0)])
def test_nonlinear_step_size_and_loss_vs_monte_carlo(response, w_var, noise_var):
    @jax.jit
    def features(key):
        p = sample_nonlinear_prompts(key, batch=M, n_ctx=N, d=D, response=response, w_std=float(np.sqrt(w_var)),
                                     noise_std=float(np.sqrt(noise_var)), dtype=jnp.float64)
        return jnp.einsum("bn,bnd,bd->b", p.y_ctx, p.x_ctx, p.x_q[:, 0]), p.y_q[:, 0]  # hᵀx_q, y_q

    with jax.enable_x64(True):
        gd_M, y_M = (np.asarray(v) for v in features(jax.random.key(7)))
    mo = mh.nonlinear_moments(response, N=N, d=D, w_var=w_var, noise_var=noise_var)
    # E[hᵀx_q y_q] = tr C = N d β and E[(hᵀx_q)²] = tr G = N d γ.
    for v, exact in [(gd_M * y_M, N * D * mo.beta), (gd_M**2, N * D * mo.gamma), (y_M**2, mo.ey2)]:
        mc, se = _mean_se(v)
        assert abs(mc - exact) < Z * se, (mc, exact, se)
    # The MC least-squares step η̂ = mean(p y)/mean(p²), delta-method SE.
    eta, l_star = mh.nonlinear_optimum(response, N=N, d=D, w_var=w_var, noise_var=noise_var)
    a, b = np.mean(gd_M * y_M), np.mean(gd_M**2)
    cov = np.cov(np.stack([gd_M * y_M, gd_M**2]))
    grad = np.array([1 / b, -a / b**2])
    eta_hat, eta_se = a / b, np.sqrt(grad @ cov @ grad / M)
    assert abs(eta_hat - eta) < Z * eta_se, (eta_hat, eta, eta_se)
    assert eta_se < 0.02 * eta  # the check is sharp: the SE is under 2% of η*
    for scale in (0.5, 1.0, 2.0):
        mc, se = _mean_se(0.5 * (scale * eta * gd_M - y_M) ** 2)
        exact = mh.nonlinear_preconditioner_loss(scale * eta * np.eye(D), response, N=N, w_var=w_var, noise_var=noise_var)
        assert abs(mc - exact) < Z * se, (scale, mc, exact, se)
    assert mh.nonlinear_preconditioner_loss(eta * np.eye(D), response, N=N, w_var=w_var, noise_var=noise_var) == pytest.approx(l_star, rel=1e-12)


def test_bad_arguments_raise():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="Sigma_x"):
        mh.optimal_preconditioner(N=5, Sigma_x=-eye, Sigma_w=eye)
    with pytest.raises(ValueError, match="Sigma_w"):
        mh.optimal_preconditioner(N=5, Sigma_x=eye, Sigma_w=np.eye(2))
    with pytest.raises(ValueError, match="noise_var"):
        mh.isotropic_optimum(5, 3, -1.0)
    with pytest.raises(ValueError, match="N="):
        mh.preconditioner_loss(eye, N=0, Sigma_x=eye, Sigma_w=eye)
    with pytest.raises(ValueError, match="response"):
        mh.nonlinear_optimum("sine", N=5, d=3)
    with pytest.raises(ValueError, match="A:"):
        mh.preconditioner_loss(np.eye(2), N=5, Sigma_x=eye, Sigma_w=eye)
