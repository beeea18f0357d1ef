"""The optimal one-layer linear self-attention (Mahankali, Hashimoto, Ma 2023), in float64.

A 1-layer LSA predicts (after its nuisance terms vanish, see ``docs/mahankali.md``)

    ŷ = hᵀ A x_q,   h = Σ_{i≤N} y_i x_i,

i.e. one step of preconditioned GD from w = 0 on ½ Σ_i (wᵀx_i − y_i)² with preconditioner A.

Linear task: x_i, x_q ~ N(0, Σ_x), w ~ N(0, Σ_w), y = wᵀx + ε, ε ~ N(0, σ²) (query too).
Given w, E[h] = N Σ_x w and, by the Gaussian fourth moment E[(wᵀx)² xxᵀ] = (wᵀΣ_x w) Σ_x +
2 Σ_x w wᵀ Σ_x,

    G := E[h hᵀ] = N (tr(Σ_x Σ_w) + σ²) Σ_x + N(N+1) Σ_x Σ_w Σ_x,
    C := E[y_q x_q hᵀ] = N Σ_x Σ_w Σ_x,
    L(A) = ½ E(ŷ − y_q)² = ½ [tr(Aᵀ G A Σ_x) − 2 tr(A C) + tr(Σ_x Σ_w) + σ²].

L is a strictly convex quadratic in A; ∇L = G A Σ_x − C = 0 is the linear system
(Σ_x ⊗ G) vec A = vec C, solved by A* = N G⁻¹ Σ_x Σ_w, with L* = ½[tr(Σ_x Σ_w) + σ² − tr(A* C)].
Isotropic (Σ_x = Σ_w = I): A* = I/(N + d + 1 + σ²), L* = ½ d(d+1+σ²)/(N+d+1+σ²) + ½σ².
ZFB's predictor x_qᵀ Γ⁻¹ (1/N) Σ y_i x_i is A = Γ⁻¹/N (σ = 0, Σ_w = I, Σ_x = Λ).

Nonlinear task: x ~ N(0, I_d), w ~ N(0, τ² I_d), y = f(wᵀx) + ε. With s = ‖w‖, g ~ N(0, 1):

    m1(s) = E[g f(sg)]/s   (so E[y x | w] = m1(s) w),  a0(s) = E[f(sg)²],  a2(s) = E[g² f(sg)²],
    β = E_s[m1² s²]/d,   γ = σ² + E_s a0 + (E_s a2 − E_s a0)/d + (N−1) β,
    G = N γ I,   C = N β I,   L(A) = ½ [N γ ‖A‖_F² − 2 N β tr A + σ² + E_s a0].

Rotation invariance makes the optimum A* = η* I (one plain GD step) with η* = β/γ and
L* = ½[σ² + E_s a0 − N d β²/γ]; only the step size depends on f. The g-integrals use composite
Gauss–Legendre on [−12, 12] (panels graded towards the kink of relu at 0) and the s-integral
generalized Gauss–Laguerre in u = s²/(2τ²) (s² ~ τ² χ²_d), all float64.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy import special

from ictl.tasks.nonlinear_response import response_fn

# ----------------------------------------------------------------------------- linear task


def _check_cov(name: str, S, d: int | None, *, semidefinite: bool = False) -> np.ndarray:
    S = np.asarray(S, np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or (d is not None and S.shape[0] != d):
        raise ValueError(f"{name}: must be a square d×d matrix{'' if d is None else f' with d={d}'}, got shape {S.shape}")
    if not np.allclose(S, S.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name}: must be symmetric")
    lo = np.linalg.eigvalsh(S).min()
    if (lo < -1e-12 * np.abs(S).max()) if semidefinite else (lo <= 0):
        raise ValueError(f"{name}: must be positive {'semi-' if semidefinite else ''}definite")
    return S


def _check_scalars(N, noise_var):
    if int(N) != N or N < 1:
        raise ValueError(f"N={N}: must be a positive integer")
    if noise_var < 0:
        raise ValueError(f"noise_var={noise_var}: must be >= 0")


def linear_moments(*, N: int, Sigma_x, Sigma_w, noise_var: float = 0.0):
    """(G, C, E y_q²) of the module docstring: G = E[hhᵀ], C = E[y_q x_q hᵀ], both d×d, float64."""
    _check_scalars(N, noise_var)
    Sx = _check_cov("Sigma_x", Sigma_x, None)
    Sw = _check_cov("Sigma_w", Sigma_w, Sx.shape[0], semidefinite=True)
    SxSwSx = Sx @ Sw @ Sx
    signal = np.trace(Sx @ Sw)
    if signal + noise_var <= 0:
        raise ValueError("Sigma_w, noise_var: the labels are identically 0 (Σ_w = 0 and σ² = 0); allowed: E y² > 0")
    G_dxd = N * (signal + noise_var) * Sx + N * (N + 1) * SxSwSx
    C_dxd = N * SxSwSx
    return G_dxd, C_dxd, signal + noise_var


def preconditioner_loss(
    A: Float[Array, "d d"], *, N: int, Sigma_x: Float[Array, "d d"], Sigma_w: Float[Array, "d d"], noise_var: float = 0.0
) -> float:
    """Exact L(A) = ½ E(hᵀ A x_q − y_q)² = ½[tr(AᵀGAΣ_x) − 2 tr(AC) + tr(Σ_xΣ_w) + σ²] (float64)."""
    G_dxd, C_dxd, ey2 = linear_moments(N=N, Sigma_x=Sigma_x, Sigma_w=Sigma_w, noise_var=noise_var)
    A_dxd = np.asarray(A, np.float64)
    if A_dxd.shape != G_dxd.shape:
        raise ValueError(f"A: must have shape {G_dxd.shape}, got {A_dxd.shape}")
    Sx = np.asarray(Sigma_x, np.float64)
    return float(0.5 * (np.trace(A_dxd.T @ G_dxd @ A_dxd @ Sx) - 2 * np.trace(A_dxd @ C_dxd) + ey2))


def optimal_preconditioner(
    *, N: int, Sigma_x: Float[Array, "d d"], Sigma_w: Float[Array, "d d"], noise_var: float = 0.0
) -> np.ndarray:
    """A* = argmin_A L(A) = N G⁻¹ Σ_x Σ_w, d×d float64 (the solution of (Σ_x ⊗ G) vec A = vec C)."""
    G_dxd, _, _ = linear_moments(N=N, Sigma_x=Sigma_x, Sigma_w=Sigma_w, noise_var=noise_var)
    Sx, Sw = np.asarray(Sigma_x, np.float64), np.asarray(Sigma_w, np.float64)
    return N * np.linalg.solve(G_dxd, Sx @ Sw)


def optimal_loss(*, N: int, Sigma_x, Sigma_w, noise_var: float = 0.0) -> float:
    """L* = L(A*) = ½[tr(Σ_xΣ_w) + σ² − tr(A* C)]."""
    A = optimal_preconditioner(N=N, Sigma_x=Sigma_x, Sigma_w=Sigma_w, noise_var=noise_var)
    _, C_dxd, ey2 = linear_moments(N=N, Sigma_x=Sigma_x, Sigma_w=Sigma_w, noise_var=noise_var)
    return float(0.5 * (ey2 - np.trace(A @ C_dxd)))


def isotropic_optimum(N: int, d: int, noise_var: float = 0.0) -> tuple[float, float]:
    """(η*, L*) for Σ_x = Σ_w = I: A* = η* I, η* = 1/(N+d+1+σ²), L* = ½ d(d+1+σ²)/(N+d+1+σ²) + ½σ²."""
    _check_scalars(N, noise_var)
    if int(d) != d or d < 1:
        raise ValueError(f"d={d}: must be a positive integer")
    denom = N + d + 1 + noise_var
    return 1.0 / denom, 0.5 * d * (d + 1 + noise_var) / denom + 0.5 * noise_var


# -------------------------------------------------------------------------- nonlinear task


def _gauss_rule(n_per_panel: int = 16, g_max: float = 12.0):
    """Nodes/weights for E[φ(g)], g ~ N(0,1), exact up to e^{−g_max²/2}; panels graded at 0."""
    edges = np.concatenate([[0.0], np.geomspace(1 / 256, 0.5, 8), np.arange(1.0, g_max + 1e-9, 0.5)])
    t, wt = np.polynomial.legendre.leggauss(n_per_panel)
    lo, hi = edges[:-1, None], edges[1:, None]
    pos = (0.5 * (hi - lo) * t + 0.5 * (hi + lo)).ravel()
    wpos = (0.5 * (hi - lo) * wt).ravel()
    g = np.concatenate([-pos[::-1], pos])
    wg = np.concatenate([wpos[::-1], wpos]) * np.exp(-0.5 * g**2) / np.sqrt(2 * np.pi)
    return g, wg


def _chi_rule(d: int, w_var: float, n: int = 80):
    """Nodes s and weights for E[φ(s)], s² ~ τ² χ²_d (generalized Gauss–Laguerre in u = s²/2τ²)."""
    u, wu = special.roots_genlaguerre(n, d / 2 - 1)
    return np.sqrt(2 * w_var * u), wu / special.gamma(d / 2)


class NonlinearMoments(NamedTuple):
    beta: float  # E_s[m1(s)² s²]/d, so C = N β I
    gamma: float  # G = N γ I
    ey2: float  # E y_q² = σ² + E_s a0
    mean_a0: float
    mean_a2: float


def nonlinear_moments(
    response: str | Callable, *, N: int, d: int, w_var: float = 1.0, noise_var: float = 0.0
) -> NonlinearMoments:
    """β, γ, E y² of the module docstring for y = f(wᵀx) + ε, x ~ N(0, I_d), w ~ N(0, τ² I_d).

    ``response``: a name in ``ictl.tasks.nonlinear_response.RESPONSES`` or an elementwise jnp
    function (evaluated in float64 on the quadrature grid).
    """
    _check_scalars(N, noise_var)
    if int(d) != d or d < 1:
        raise ValueError(f"d={d}: must be a positive integer")
    if w_var <= 0:
        raise ValueError(f"w_var={w_var}: must be > 0")
    f = response_fn(response) if isinstance(response, str) else response
    g_G, wg_G = _gauss_rule()
    s_S, ws_S = _chi_rule(d, w_var)
    with jax.enable_x64(True):
        f_SxG = np.asarray(f(jnp.asarray(s_S[:, None] * g_G[None, :], jnp.float64)), np.float64)
    m1_S = (f_SxG * g_G) @ wg_G / s_S
    a0_S = (f_SxG**2) @ wg_G
    a2_S = (f_SxG**2 * g_G**2) @ wg_G
    beta = float(ws_S @ (m1_S**2 * s_S**2)) / d
    mean_a0, mean_a2 = float(ws_S @ a0_S), float(ws_S @ a2_S)
    gamma = noise_var + mean_a0 + (mean_a2 - mean_a0) / d + (N - 1) * beta
    return NonlinearMoments(beta, gamma, noise_var + mean_a0, mean_a0, mean_a2)


def nonlinear_preconditioner_loss(
    A: Float[Array, "d d"], response: str | Callable, *, N: int, w_var: float = 1.0, noise_var: float = 0.0,
    moments: NonlinearMoments | None = None,
) -> float:
    """Exact L(A) = ½[N γ ‖A‖_F² − 2 N β tr A + E y²] for the nonlinear task (float64).

    ``moments``: the ``nonlinear_moments`` of the same arguments, to skip the quadrature.
    """
    A_dxd = np.asarray(A, np.float64)
    if A_dxd.ndim != 2 or A_dxd.shape[0] != A_dxd.shape[1]:
        raise ValueError(f"A: must be square d×d, got shape {A_dxd.shape}")
    mo = moments or nonlinear_moments(response, N=N, d=A_dxd.shape[0], w_var=w_var, noise_var=noise_var)
    return float(0.5 * (N * mo.gamma * np.sum(A_dxd**2) - 2 * N * mo.beta * np.trace(A_dxd) + mo.ey2))


def nonlinear_optimum(
    response: str | Callable, *, N: int, d: int, w_var: float = 1.0, noise_var: float = 0.0
) -> tuple[float, float]:
    """(η*, L*): the optimal one-step GD size A* = η* I, η* = β/γ, and L* = ½[E y² − N d β²/γ]."""
    mo = nonlinear_moments(response, N=N, d=d, w_var=w_var, noise_var=noise_var)
    eta = mo.beta / mo.gamma
    return eta, float(0.5 * (mo.ey2 - N * d * mo.beta**2 / mo.gamma))
