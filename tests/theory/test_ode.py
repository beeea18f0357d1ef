"""ictl.theory.ode against closed forms in float64: y' = Ay (expm), y' = cos(t) y, logistic."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ictl.theory.ode import fitted_order, solve_ode

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
