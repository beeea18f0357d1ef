"""Zheng et al. (2024): gradient flow of the autoregressive causal LSA on rotation sequences.

Setting (``ictl.tasks.rotation``, ``models.causal_lsa``): x_t = W^{t−1} x_1 with
W = diag(e^{iθ_j}), θ_j ~ U(0, 2π) i.i.d., x_1 with i.i.d. real coordinates of moments
m_k = E|x_{1j}|^k; one-layer causal LSA ŷ_{t+1} = W^{PV} E_t E_tᴴ W^{KQ} e_t / (t − 1) trained
on L = ½ mean_{t=2…T−1} E‖ŷ_{t+1} − x_{t+1}‖² (``models.causal_lsa.ar_loss``).

Along the one-step-GD family W^{KQ}[d:, :d] = aI, W^{PV}[:, :d] = bI (the rest 0), with c = ab
(derived here, checked by Monte Carlo in tests/theory/test_zheng.py):

    ŷ_{t+1,j} = c λ_j^t x_{1j} G_j,   G_j = |x_{1j}|² + Σ_{k≠j} |x_{1k}|² (1/(t−1)) Σ_{s=1}^{t−1} (λ_k λ̄_j)^s,

and averaging over the uniform phases (E (λ_k λ̄_j)^s = 0 for s ≠ 0, k ≠ j) gives per coordinate

    E|ŷ_{t+1,j} − x_{t+1,j}|² = c² (m6 + (d−1) m2 m4 / (t−1)) − 2c m4 + m2,
    L(c) = (d/2) (c² ᾱ − 2c m4 + m2),   ᾱ = m6 + (d−1) m2 m4 h̄,   h̄ = H_{T−2} / (T−2),

H_n the n-th harmonic number. Gradient flow on the matrix entries (the loss is symmetric in the
d coordinates, so ∂L/∂W^{KQ}_{d+j,j} = (1/d) ∂L(aI, bI)/∂a):

    da/dτ = −b (c ᾱ − m4),   db/dτ = −a (c ᾱ − m4),   a² − b² conserved,

whose limit from a0 b0 > 0 is the mesa-optimizer c* = m4 / ᾱ: ŷ_{t+1} = Ŵ_t x_t with
Ŵ_t = η_t Σ_{i=2}^{t} x_i x_{i−1}ᴴ one GD step on ½ Σ ‖x_i − Ŵ x_{i−1}‖² from 0, step size
η_t = c*/(t−1). For a0 = b0 the product solves a logistic equation exactly:
c(τ) = c* / (1 + (c*/c0 − 1) e^{−2 m4 τ}).

The family is invariant under the flow when x_{1j} is symmetric about 0 (every monomial that
survives the phase average then has an odd power of some coordinate, so the off-pattern
gradients vanish; checked by Monte Carlo), our reading of the paper's first condition; the
shifted x_1 ~ N(1, 1) gives non-zero off-pattern gradients (``symmetric_x1``).
As t → ∞ the prediction/label ratio ŷ_{t+1,j}/x_{t+1,j} = c G_j → c |x_{1j}|², so
the next token is recovered for every sequence (as T, t → ∞, c* → m4/m6) iff |x_{1j}|² = m6/m4
almost surely where x_{1j} ≠ 0, i.e. iff m4² = m2 m6 (``recovery_gap`` = 1 − m4²/(m2 m6) = the
limiting relative error; ≥ 0 by Cauchy–Schwarz), our reading of the paper's moment condition.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ictl.tasks.rotation import Moments
from ictl.theory.ode import solve_ode


def _check_len(length: int) -> None:
    if not (isinstance(length, (int, np.integer)) and length >= 3):
        raise ValueError(f"length: got {length!r}; allowed an int >= 3 (positions t = 2 … T−1)")


def mean_inv_lag(length: int) -> float:
    """h̄ = mean_{t=2…T−1} 1/(t−1) = H_{T−2}/(T−2)."""
    _check_len(length)
    n = length - 2
    return float(np.sum(1.0 / np.arange(1, n + 1, dtype=np.float64)) / n)


def alpha_bar(moments: Moments, *, d: int, length: int) -> float:
    """ᾱ = m6 + (d−1) m2 m4 h̄: the curvature of L(c) per coordinate."""
    return float(moments.m6 + (d - 1) * moments.m2 * moments.m4 * mean_inv_lag(length))


def position_error(c, t, *, moments: Moments, d: int) -> Float[Array, "*S"]:
    """E|ŷ_{t+1,j} − x_{t+1,j}|² = c²(m6 + (d−1) m2 m4/(t−1)) − 2c m4 + m2 (t ≥ 2; t = inf ok)."""
    with jax.enable_x64(True):
        c = jnp.asarray(c, jnp.float64)
        t = jnp.asarray(t, jnp.float64)
        m = moments
        return c**2 * (m.m6 + (d - 1) * m.m2 * m.m4 / (t - 1)) - 2 * c * m.m4 + m.m2


def population_loss(c, *, moments: Moments, d: int, length: int) -> Float[Array, "*S"]:
    """L(c) = (d/2)(c² ᾱ − 2c m4 + m2): the training loss ``ar_loss`` on the one-step-GD family."""
    with jax.enable_x64(True):
        c = jnp.asarray(c, jnp.float64)
        ab = alpha_bar(moments, d=d, length=length)
        return 0.5 * d * (c**2 * ab - 2 * c * moments.m4 + moments.m2)


def mesa_coefficient(moments: Moments, *, d: int, length: int | None) -> float:
    """c* = m4/ᾱ, the limit of ab (``length=None``: the T → ∞ limit m4/m6)."""
    if length is None:
        return float(moments.m4 / moments.m6)
    return float(moments.m4 / alpha_bar(moments, d=d, length=length))


def mesa_step_size(t, *, moments: Moments, d: int, length: int) -> Float[Array, "*S"]:
    """η_t = c*/(t−1): the step of the in-context GD step the trained LSA takes at position t."""
    with jax.enable_x64(True):
        return mesa_coefficient(moments, d=d, length=length) / (jnp.asarray(t, jnp.float64) - 1)


def expected_ratio(c, moments: Moments) -> float:
    """E[ŷ_{t+1,j} x̄_{t+1,j}] / E|x_{t+1,j}|² = c m4/m2, the same at every t ≥ 2."""
    return float(c * moments.m4 / moments.m2)


def recovery_gap(moments: Moments) -> float:
    """1 − m4²/(m2 m6) ≥ 0: the relative error lim_{T,t→∞} E‖ŷ_{t+1} − x_{t+1}‖² / E‖x_{t+1}‖².

    Zero iff the trained LSA recovers the next token, i.e. iff |x_{1j}| is constant where non-zero.
    """
    return float(1.0 - moments.m4**2 / (moments.m2 * moments.m6))


def symmetric_x1(moments: Moments) -> bool:
    """E x_{1j} = E x_{1j}³ = 0 (for the distributions of ``X1_DISTS``: x_{1j} symmetric about 0)."""
    return moments.m1 == 0.0 and moments.m3 == 0.0


class Flow(NamedTuple):
    tau: Float[Array, "S"]  # gradient-flow time (= learning rate × steps for GD)
    a: Float[Array, "S"]
    b: Float[Array, "S"]
    c: Float[Array, "S"]  # ab
    loss: Float[Array, "S"]  # L(ab)


def solve_flow(
    a0: float,
    b0: float,
    *,
    moments: Moments,
    d: int,
    length: int,
    t1: float,
    num_saves: int,
    method: str = "dopri5",
) -> Flow:
    """Integrates da/dτ = −b(abᾱ − m4), db/dτ = −a(abᾱ − m4) from (a0, b0) to τ = t1 (float64;
    dopri5 at rtol 1e-10, atol 1e-12 as ``zfb.gradient_flow``, or rk4 with 20 steps per save)."""
    ab = alpha_bar(moments, d=d, length=length)
    with jax.enable_x64(True):
        f64 = functools.partial(jnp.asarray, dtype=jnp.float64)
        a, b, ts = _flow_solve(f64(a0), f64(b0), f64(ab), f64(moments.m4), f64(t1), num_saves=num_saves, method=method)
        c = a * b
        return Flow(ts, a, b, c, population_loss(c, moments=moments, d=d, length=length))


@functools.partial(jax.jit, static_argnames=("num_saves", "method"))
def _flow_solve(a0, b0, ab, m4, t1, *, num_saves, method):
    # ᾱ, m4 and t1 traced: one compilation serves every distribution, length and horizon
    def field(tau, y):
        del tau
        a, b = y
        g = a * b * ab - m4
        return (-b * g, -a * g)

    kw = {"num_steps": 20 * (num_saves - 1)} if method == "rk4" else {"rtol": 1e-10, "atol": 1e-12}
    sol = solve_ode(field, (a0, b0), t1=t1, num_saves=num_saves, method=method, **kw)
    return sol.ys[0], sol.ys[1], sol.ts


def logistic_product(tau, *, c0: float, moments: Moments, d: int, length: int) -> Float[Array, "*S"]:
    """Exact c(τ) = c*/(1 + (c*/c0 − 1) e^{−2 m4 τ}) for a0 = b0 = √c0 (then a = b along the flow)."""
    cs = mesa_coefficient(moments, d=d, length=length)
    with jax.enable_x64(True):
        tau = jnp.asarray(tau, jnp.float64)
        return cs / (1 + (cs / c0 - 1) * jnp.exp(-2 * moments.m4 * tau))


def gd_on_population(a0: float, b0: float, *, lr: float, num_steps: int, moments: Moments, d: int,
                     length: int) -> Flow:
    """Discrete GD a ← a − lr b g, b ← b − lr a g (g = abᾱ − m4) on the matrix entries, float64.

    The full-batch limit of training ``CausalLSA`` with ``optax.sgd(lr)`` along the family;
    returns the num_steps + 1 iterates with τ = lr·k.
    """
    ab = alpha_bar(moments, d=d, length=length)
    with jax.enable_x64(True):
        def step(y, _):
            a, b = y
            g = a * b * ab - moments.m4
            y = (a - lr * b * g, b - lr * a * g)
            return y, y

        y0 = (jnp.asarray(a0, jnp.float64), jnp.asarray(b0, jnp.float64))
        _, (a, b) = jax.lax.scan(step, y0, None, length=num_steps)
        a = jnp.concatenate([y0[0][None], a])
        b = jnp.concatenate([y0[1][None], b])
        c = a * b
        tau = lr * jnp.arange(num_steps + 1, dtype=jnp.float64)
        return Flow(tau, a, b, c, population_loss(c, moments=moments, d=d, length=length))
