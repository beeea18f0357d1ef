"""ictl.theory.ode against closed forms in float64 (y' = Ay vs expm, y' = cos(t) y, logistic) and against
the hand-written Dormand–Prince solver it replaced."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from experiments import zfb_dynamics
from ictl import lsa_training as lt
from ictl.theory import zfb
from ictl.theory.ode import fitted_order, solve_ode
from models.lsa import reduced_params

# A 4×4 system with a rotation (eigenvalues −0.3 ± 2i) and decay: non-normal, non-trivial.
_A = np.array([[-0.3, 2.0, 0.5, 0.0],
               [-2.0, -0.3, 0.0, 0.1],
               [0.0, 0.0, -1.0, 1.0],
               [0.0, 0.0, 0.0, -0.5]])
_Y0 = np.array([1.0, -0.5, 0.3, 2.0])


def _linear(t, y):  # the state is a pytree: {"a": y[:2], "b": y[2:]}
    z = _A @ jnp.concatenate([y["a"], y["b"]])
    return {"a": z[:2], "b": z[2:]}


def test_dopri5_linear_vs_expm(x64):
    y0 = {"a": jnp.asarray(_Y0[:2]), "b": jnp.asarray(_Y0[2:])}
    sol = solve_ode(_linear, y0, t1=5.0, num_saves=6, rtol=1e-12, atol=1e-14)
    assert bool(sol.success) and sol.ys["a"].dtype == jnp.float64
    ys = np.concatenate([np.asarray(sol.ys["a"]), np.asarray(sol.ys["b"])], axis=1)
    exact = np.stack([scipy.linalg.expm(_A * t) @ _Y0 for t in np.asarray(sol.ts)])
    np.testing.assert_allclose(np.asarray(sol.ts), np.linspace(0, 5, 6), atol=1e-15)
    assert np.max(np.abs(ys - exact)) <= 1e-9
    # Looser tolerance: fewer steps, error still controlled at roughly rtol's scale.
    loose = solve_ode(_linear, y0, t1=5.0, num_saves=6, rtol=1e-6, atol=1e-8)
    err = np.max(np.abs(np.concatenate([np.asarray(loose.ys["a"]), np.asarray(loose.ys["b"])], 1) - exact))
    assert int(loose.num_steps) < int(sol.num_steps) and 1e-12 < err < 1e-4


def test_rk4_order_four_time_dependent(x64):
    # y' = cos(t) y, y(0) = 1  ⇒  y(t) = exp(sin t); exercises the stage times t + c h.
    f = lambda t, y: jnp.cos(t) * y
    dts, errs = [], []
    for n in (20, 40, 80, 160):  # errors ≈ 9e-7 … 2e-10, well above float64 rounding
        sol = solve_ode(f, jnp.float64(1.0), t1=3.0, num_saves=2, method="rk4", num_steps=n)
        dts.append(3.0 / n)
        errs.append(abs(float(sol.ys[-1]) - math.exp(math.sin(3.0))))
    order = fitted_order(np.array(errs), np.array(dts))
    assert abs(order - 4.0) <= 0.3, (order, errs)


def test_rk4_linear_vs_expm_with_dt0(x64):
    y0 = {"a": jnp.asarray(_Y0[:2]), "b": jnp.asarray(_Y0[2:])}
    sol = solve_ode(_linear, y0, t1=2.0, num_saves=3, method="rk4", dt0=0.01)
    ys = np.concatenate([np.asarray(sol.ys["a"]), np.asarray(sol.ys["b"])], axis=1)
    exact = np.stack([scipy.linalg.expm(_A * t) @ _Y0 for t in (0.0, 1.0, 2.0)])
    assert int(sol.num_steps) == 200
    # rk4 local error ~ h⁵‖A‖⁵/120 per step; at h = 0.01 the global error is ~1e-9 here.
    assert np.max(np.abs(ys - exact)) < 1e-8


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_logistic_closed_form(x64, method):
    # y' = r y (1 − y/K)  ⇒  y(t) = K / (1 + (K/y0 − 1) e^{−rt}).
    r, K, y0 = 1.5, 3.0, 0.1
    sol = solve_ode(lambda t, y: r * y * (1 - y / K), jnp.float64(y0), t1=8.0, num_saves=9,
                    method=method, rtol=1e-11, atol=1e-13, num_steps=None if method == "dopri5" else 800)
    ts = np.asarray(sol.ts)
    exact = K / (1 + (K / y0 - 1) * np.exp(-r * ts))
    assert np.max(np.abs(np.asarray(sol.ys) - exact)) <= (1e-9 if method == "dopri5" else 1e-7)


def test_jit_and_max_steps(x64):
    f = lambda t, y: -y
    sol = jax.jit(lambda y0: solve_ode(f, y0, t1=1.0, num_saves=3, rtol=1e-10, atol=1e-12))(jnp.float64(2.0))
    np.testing.assert_allclose(np.asarray(sol.ys), 2.0 * np.exp(-np.array([0.0, 0.5, 1.0])), rtol=1e-9)
    short = solve_ode(f, jnp.float64(2.0), t1=1.0, num_saves=3, rtol=1e-12, atol=1e-14, max_steps=3)
    assert not bool(short.success)


def test_bad_arguments():
    f = lambda t, y: -y
    with pytest.raises(ValueError, match="method"):
        solve_ode(f, jnp.ones(2), t1=1.0, num_saves=2, method="euler")
    with pytest.raises(ValueError, match="num_saves"):
        solve_ode(f, jnp.ones(2), t1=1.0, num_saves=1)
    with pytest.raises(ValueError, match="t1"):
        solve_ode(f, jnp.ones(2), t1=0.0, num_saves=2)
    with pytest.raises(ValueError, match="num_steps/dt0"):
        solve_ode(f, jnp.ones(2), t1=1.0, num_saves=2, method="rk4")
    with pytest.raises(ValueError, match="y0"):
        solve_ode(f, jnp.ones(2, jnp.int32), t1=1.0, num_saves=2)


# ----------------------------------------------------------------------------- the hand-written solver
# ictl.theory.ode was a hand-written Dormand–Prince 5(4) until it moved onto diffrax. This is that
# solver's algorithm (same tableau, error norm, step controller and clipping of steps onto the save
# times), transcribed to NumPy on a flat state, kept only as the reference for the test below.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_AS = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_ERR = tuple(b - bh for b, bh in zip(_B, (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200,
                                            187 / 2100, 1 / 40)))


def _axpy(y, h, ks, coeffs):
    acc = np.zeros_like(y)
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            acc = acc + c * k
    return y + h * acc


def _handwritten_dopri5(f, y0, *, num_saves, rtol, atol):
    """y(s) at linspace(0, 1, S) for the autonomous y' = f(y): the former solve_ode(method="dopri5")."""
    saves, y, t, h = np.linspace(0.0, 1.0, num_saves), y0.copy(), 0.0, 1.0 / (100 * (num_saves - 1))
    out = [y0]
    for t_end in saves[1:]:
        while t < t_end:
            clipped = h >= t_end - t
            hh = t_end - t if clipped else h
            ks = []
            for a in _AS:
                ks.append(f(_axpy(y, hh, ks, a) if a else y))
            y_new, err = _axpy(y, hh, ks, _B), _axpy(np.zeros_like(y), hh, ks, _B_ERR)
            norm = np.sqrt(np.mean((err / (atol + rtol * np.maximum(np.abs(y), np.abs(y_new)))) ** 2))
            factor = np.clip(0.9 * (norm if norm > 0 else 1e-10) ** -0.2, 0.2, 10.0)
            h_next = max(h, hh * factor) if (norm <= 1.0 and clipped) else hh * factor
            if norm <= 1.0:
                t, y = (t_end if clipped else t + hh), y_new
            h = h_next
        out.append(y)
    return np.stack(out)


def test_diffrax_flow_equals_the_handwritten_solver_on_zfb_dynamics(x64):
    # zfb_dynamics' quick setting: d = 5, N = 20, Λ = I, its paper init (σ = 0.1), t1 = 6, 401 saves,
    # gradient_flow's tolerances rtol = 1e-10, atol = 1e-12. The former solver ran in s = t/t1 with the
    # field t1·f; both are within ≈ 1e-10 of the exact flow, so they agree to ≲ 1e-9.
    c = zfb_dynamics.get_config("quick")
    lam = np.eye(c.d)
    _, params = lt.init_params(jax.random.split(jax.random.key(c.seed), 3)[0], d=c.d, init_scheme=c.init_scheme,
                               sigma=c.sigma)
    u0, U0 = (np.asarray(a, np.float64) for a in reduced_params(params))
    traj = zfb.gradient_flow(float(u0), U0, lam, c.N, t1=c.t1, num_saves=401)
    lam2 = lam @ lam
    gl = (1 + 1 / c.N) * lam2 + (np.trace(lam) / c.N) * lam  # ΓΛ

    def field(y):  # t1 · (u', U'), the closed-form −∇L of zfb._flow_field
        u, U = y[0], y[1:].reshape(c.d, c.d)
        glUl = gl @ U @ lam
        return c.t1 * np.concatenate([[np.sum(U * lam2) - u * np.sum(U * glUl)], (u * lam2 - u * u * glUl).ravel()])

    ref = _handwritten_dopri5(field, np.concatenate([[float(u0)], U0.ravel()]), num_saves=401, rtol=1e-10, atol=1e-12)
    ours = np.concatenate([traj.u[:, None], traj.U.reshape(401, -1)], axis=1)
    assert traj.loss[0] - traj.loss[-1] > 1.0  # the flow moves far over [0, 6]: the comparison means something
    assert np.max(np.abs(ours - ref)) <= 1e-9, np.max(np.abs(ours - ref))
