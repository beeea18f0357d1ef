"""Zhang, Frei & Bartlett (2023), *Trained Transformers Learn Linear Models In-Context*: the LSA theory.

Setting (derivations and numerical checks in docs/theory_zfb.md). Contexts x_i ~ N(0, Λ),
i ≤ N, query x_q ~ N(0, Λ), task w ~ N(0, I_d), labels y = wᵀx (noiseless). Under the paper's
initialisation a 1-layer linear self-attention (LSA) predicts

    ŷ = u · hᵀ U x_q = hᵀ V x_q,      h = (1/N) Σ_{i≤N} y_i x_i,      V = u U  (d×d),

and is trained on the population loss with the ½ (Λ SPD, Γ a polynomial in Λ, so ΓΛ = ΛΓ):

    Γ = (1 + 1/N) Λ + (tr Λ / N) I,          E[h hᵀ] = ΓΛ,       E[h wᵀ] = Λ,
    L(u, U) = ½ E(ŷ − y_q)² = ½ [u² tr(Uᵀ ΓΛ U Λ) − 2u tr(Uᵀ Λ²) + tr Λ],
    argmin_V = Γ⁻¹,     L* = ½ [tr Λ − tr(Γ⁻¹ Λ²)]     (Λ = I: d(d+1) / (2(N + d + 1))).

Gradient flow u' = −∂L/∂u, U' = −∂L/∂U conserves u² − ‖U‖_F², which fixes the limit
(u∞, U∞) with u∞ U∞ = Γ⁻¹ (``converged_params``). The risk of any V under task / query /
covariate / prompt-length shift and the random-covariance setting are in `ictl.theory.zfb_risk`.

Conventions: theory functions compute in float64 (``jax.enable_x64(True)`` inside) and return
Python floats / NumPy float64 arrays; ``population_loss`` alone is plain jnp in the caller's
dtype (differentiable, for training). ``*_risk`` functions return E(ŷ − y_q)² WITHOUT the ½.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

ArrayLike = Float[Array, "..."] | np.ndarray


# ----------------------------------------------------------------------------- validation
def validate_cov(Lam, *, name: str = "Lam", allow_singular: bool = False) -> np.ndarray:
    """Checks that ``Lam`` is a finite, square, symmetric, positive definite matrix (pure NumPy).

    ``allow_singular=True`` accepts positive semi-definite matrices (e.g. a task covariance).
    Returns it as a float64 NumPy array; raises ``ValueError`` naming ``name`` otherwise.
    """
    try:
        a = np.asarray(Lam, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a real d×d matrix ({e})") from None
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{name}: must be a square d×d matrix with d ≥ 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: must be finite, got non-finite entries")
    scale = max(float(np.max(np.abs(a))), np.finfo(np.float64).tiny)
    asym = float(np.max(np.abs(a - a.T)))
    if asym > 1e-6 * scale:
        raise ValueError(f"{name}: must be symmetric positive definite, got max|A − Aᵀ| = {asym:.3g}")
    a = (a + a.T) / 2
    kind = "positive semi-definite" if allow_singular else "positive definite"
    lo = float(np.linalg.eigvalsh(a)[0])
    if (lo < -1e-12 * scale) if allow_singular else (lo <= 1e-12 * scale):
        raise ValueError(f"{name}: must be symmetric {kind}, got smallest eigenvalue {lo:.3g}")
    return a


def _check_len(name: str, n, *, allow_inf: bool = False):
    if allow_inf and n == math.inf:
        return math.inf
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        allowed = "a positive int or math.inf" if allow_inf else "a positive int"
        raise ValueError(f"{name}: must be {allowed}, got {n!r}")
    return int(n)


def _check_pos(name: str, x, *, strict: bool = True) -> float:
    x = float(x)
    if not (math.isfinite(x) and (x > 0 if strict else x >= 0)):
        raise ValueError(f"{name}: must be a finite number {'>' if strict else '>='} 0, got {x!r}")
    return x


# ----------------------------------------------------------------------------- closed forms
def gamma(Lam: ArrayLike, N: int) -> Float[np.ndarray, "d d"]:
    """Γ = (1 + 1/N) Λ + (tr Λ / N) I_d, the matrix with E[h hᵀ] = ΓΛ (d×d, float64)."""
    lam = validate_cov(Lam)
    N = _check_len("N", N)
    return (1 + 1 / N) * lam + (np.trace(lam) / N) * np.eye(lam.shape[0])


def optimal_V(Lam: ArrayLike, N: int) -> Float[np.ndarray, "d d"]:
    """The minimiser of L over V = uU: ∇_V = ΓΛVΛ − Λ² = 0 ⇒ V* = Γ⁻¹ (d×d, float64)."""
    return np.linalg.inv(gamma(Lam, N))


def min_loss(Lam: ArrayLike, N: int) -> float:
    """L* = ½ [tr Λ − tr(Γ⁻¹ Λ²)]; for Λ = I_d it equals d(d + 1) / (2(N + d + 1))."""
    lam = validate_cov(Lam)
    return 0.5 * float(np.trace(lam) - np.trace(np.linalg.solve(gamma(lam, N), lam @ lam)))


def population_loss(u: Float[Array, ""], U: Float[Array, "d d"], Lam: Float[Array, "d d"], N: int) -> Float[Array, ""]:
    """L(u, U) = ½ [u² tr(Uᵀ ΓΛ U Λ) − 2u tr(Uᵀ Λ²) + tr Λ], in the dtype of (u, U).

    Plain jnp (jit/grad/vmap-able); Λ is cast to that dtype and not validated here (call
    ``validate_cov`` once outside).
    """
    dtype = jnp.result_type(u, U)
    lam = jnp.asarray(Lam, dtype)
    tr = jnp.trace(lam)
    gl = (1 + 1 / N) * (lam @ lam) + (tr / N) * lam  # ΓΛ
    V = u * U
    quad = jnp.sum(V * (gl @ V @ lam))  # tr(Vᵀ ΓΛ V Λ)
    lin = jnp.sum(V * (lam @ lam))  # tr(Vᵀ Λ²)
    return 0.5 * (quad - 2 * lin + tr)


def _flow_field(lam, N):
    """(u', U') = −∇L: U' = uΛ² − u² ΓΛUΛ, u' = tr(UᵀΛ²) − u tr(UᵀΓΛUΛ)."""
    lam2 = lam @ lam
    gl = (1 + 1 / N) * lam2 + (jnp.trace(lam) / N) * lam

    def f(t, y):
        u, U = y
        glUl = gl @ U @ lam
        return (jnp.sum(U * lam2) - u * jnp.sum(U * glUl), u * lam2 - u * u * glUl)

    return f


# ----------------------------------------------------------------------------- initialisation
def paper_init(Lam_or_d, *, sigma: float, key_or_Theta) -> tuple[float, Float[np.ndarray, "d d"]]:
    """The paper's init W^PV(0) = σ[[0,0],[0,1]], W^KQ(0) = σ[[ΘΘᵀ,0],[0,0]], ‖ΘΘᵀ‖_F = 1.

    Returns (u0, U0) = (σ, σ ΘΘᵀ / ‖ΘΘᵀ‖_F). ``Lam_or_d``: d or a d×d Λ (only its size is
    used). ``key_or_Theta``: a PRNG key (then Θ has i.i.d. N(0, 1) entries) or a d×d Θ.
    Note u0² − ‖U0‖_F² = 0, so u stays > 0 and ‖U‖_F = u along the flow.
    """
    d = int(Lam_or_d) if np.ndim(Lam_or_d) == 0 else validate_cov(Lam_or_d).shape[0]
    if d < 1:
        raise ValueError(f"Lam_or_d: must be d ≥ 1 or a d×d matrix, got {Lam_or_d!r}")
    sigma = _check_pos("sigma", sigma)
    k = key_or_Theta
    is_key = isinstance(k, jax.Array) and (jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
                                           or (k.dtype == jnp.uint32 and k.shape == (2,)))
    if is_key:
        with jax.enable_x64(True):
            theta = np.asarray(jax.random.normal(k, (d, d), jnp.float64))
    else:
        theta = np.asarray(k, np.float64)
        if theta.shape != (d, d):
            raise ValueError(f"key_or_Theta: must be a PRNG key or a {d}×{d} Θ, got shape {theta.shape}")
    tt = theta @ theta.T
    nrm = np.linalg.norm(tt)
    if not nrm > 0:
        raise ValueError("key_or_Theta: Θ must be nonzero")
    return sigma, sigma * tt / nrm


# ----------------------------------------------------------------------------- gradient flow
class FlowProblem(NamedTuple):
    """The initial-value problem behind a ``gradient_flow`` trajectory (for ``time_to_eps``)."""

    u0: float
    U0: Float[np.ndarray, "d d"]
    lam: Float[np.ndarray, "d d"]
    N: int
    rtol: float
    atol: float
    max_steps: int


class Trajectory(NamedTuple):
    """A training trajectory at S save times (NumPy float64)."""

    t: Float[np.ndarray, "S"]
    loss: Float[np.ndarray, "S"]  # L(u(t), U(t)), with the ½
    u: Float[np.ndarray, "S"]
    U: Float[np.ndarray, "S d d"]
    conserved: Float[np.ndarray, "S"]  # u² − ‖U‖_F²
    V_err: Float[np.ndarray, "S"]  # ‖uU − Γ⁻¹‖_F / ‖Γ⁻¹‖_F
    loss_star: float  # L*
    flow: FlowProblem | None = None  # set by gradient_flow (None for GD trajectories)


@partial(jax.jit, static_argnames="N")
def _losses(u_T, U_Txdxd, lam, *, N):
    """L along a trajectory as one program: eagerly, each op of the vmapped loss compiled on its own
    for every new trajectory length (0.47–0.58 → 0.13–0.18 CPU-s per length at d = 5); the values
    move by float64 rounding (≤ 4e-16 relative, measured)."""
    return jax.vmap(population_loss, in_axes=(0, 0, None, None))(u_T, U_Txdxd, lam, N)


def _trajectory(t, u, U, lam, N, flow=None) -> Trajectory:
    vinv = np.linalg.inv(gamma(lam, N))
    with jax.enable_x64(True):
        loss = _losses(jnp.asarray(u), jnp.asarray(U), jnp.asarray(lam), N=N)
    u, U = np.asarray(u), np.asarray(U)
    V = u[:, None, None] * U
    return Trajectory(
        t=np.asarray(t), loss=np.asarray(loss), u=u, U=U,
        conserved=u**2 - np.sum(U**2, axis=(1, 2)),
        V_err=np.linalg.norm(V - vinv, axis=(1, 2)) / np.linalg.norm(vinv),
        loss_star=min_loss(lam, N), flow=flow)


@partial(jax.jit, static_argnames=("N", "num_saves", "method", "rtol", "atol", "num_steps", "max_steps"))
def _flow_solve(u0, U0, lam, t1, *, N, num_saves, method, rtol, atol, num_steps, max_steps):
    # diffrax (and optimistix, equinox) is imported where an ODE is solved, at trace time, not with this
    # module: ≈ 0.8 CPU-s of every `ictl` process that never solves one (a refused run, config.theory=false)
    from ictl.theory.ode import solve_ode

    # t1 is traced: one compilation serves every horizon.
    return solve_ode(_flow_field(lam, N), (u0, U0), t1=t1, num_saves=num_saves, method=method, rtol=rtol,
                     atol=atol, num_steps=num_steps, max_steps=max_steps)


def gradient_flow(u0: float, U0: ArrayLike, Lam: ArrayLike, N: int, *, t1: float, num_saves: int = 201,
                  method: str = "dopri5", rtol: float = 1e-10, atol: float = 1e-12,
                  num_steps: int | None = None, max_steps: int = 200_000) -> Trajectory:
    """Solves the gradient flow of L from (u0, U0) on [0, t1] in float64 (see ``_flow_field``).

    ``method="dopri5"`` (adaptive, rtol/atol) or ``"rk4"`` (``num_steps`` fixed steps).
    Raises RuntimeError if dopri5 exhausts ``max_steps``.
    """
    lam = validate_cov(Lam)
    N = _check_len("N", N)
    U0 = np.asarray(U0, np.float64)
    if U0.shape != lam.shape:
        raise ValueError(f"U0: must have Λ's shape {lam.shape}, got {U0.shape}")
    with jax.enable_x64(True):
        sol = _flow_solve(jnp.float64(u0), jnp.asarray(U0), jnp.asarray(lam), jnp.float64(_check_pos("t1", t1)),
                          N=N, num_saves=int(num_saves), method=method, rtol=float(rtol), atol=float(atol),
                          num_steps=num_steps, max_steps=int(max_steps))
        if not bool(sol.success):
            raise RuntimeError(f"gradient_flow: dopri5 used max_steps={max_steps} before t1={t1}")
        u, U = sol.ys
    flow = FlowProblem(float(u0), U0, lam, N, float(rtol), float(atol), int(max_steps)) if method == "dopri5" else None
    return _trajectory(sol.ts, u, U, lam, N, flow)


def converged_params(u0: float, U0: ArrayLike, Lam: ArrayLike, N: int) -> tuple[float, Float[np.ndarray, "d d"]]:
    """The limit of the gradient flow from (u0, U0): u∞ U∞ = Γ⁻¹ with u∞² − ‖U∞‖_F² = c.

    c = u0² − ‖U0‖_F² is conserved, so u∞² − ‖Γ⁻¹‖_F² / u∞² = c, i.e.
        u∞² = (c + sqrt(c² + 4 ‖Γ⁻¹‖_F²)) / 2,       U∞ = Γ⁻¹ / u∞.
    If c ≥ 0 and u0 ≠ 0, u never crosses 0 (u² ≥ c, and (0, 0) is a fixed point), so
    sign u∞ = sign u0. For c < 0 u may change sign: the sign is read off a gradient-flow solve
    run until uU is within 50% of Γ⁻¹ (then |u| ≈ |u∞| > 0 and the sign no longer changes).
    """
    lam = validate_cov(Lam)
    vstar = optimal_V(lam, N)
    U0 = np.asarray(U0, np.float64)
    c = float(u0) ** 2 - float(np.sum(U0**2))
    s2 = float(np.sum(vstar**2))
    u_inf = math.sqrt((c + math.sqrt(c * c + 4 * s2)) / 2)
    scale = float(u0) ** 2 + float(np.sum(U0**2))
    if scale == 0 or (float(u0) == 0 and not np.any(U0)):
        raise ValueError("u0, U0: (0, 0) is a fixed point of the flow; it does not converge")
    if c >= -1e-12 * scale and u0 != 0:
        sign = math.copysign(1.0, float(u0))
    else:
        t1 = 10.0
        for _ in range(12):
            traj = gradient_flow(u0, U0, lam, N, t1=t1, num_saves=2)
            if traj.V_err[-1] < 0.5:
                break
            t1 *= 2
        else:
            raise ValueError("u0, U0: the flow did not approach Γ⁻¹ by t = 2e4 (a saddle?)")
        sign = math.copysign(1.0, float(traj.u[-1]))
    return sign * u_inf, vstar / (sign * u_inf)


@partial(jax.jit, static_argnames=("N", "rtol", "atol", "max_steps"))
def _flow_until(u0, U0, lam, t_max, level, *, N, rtol, atol, max_steps):
    """Solves the flow until L(u, U) = level (a diffrax Event; its time by Newton on the dense
    output) or t_max: (stop time, whether the event fired, diffrax result)."""
    import diffrax  # here, not with the module (see `_flow_solve`)
    import optimistix as optx

    from ictl.theory.ode import dopri5_controller

    def gap(t, y, args, **kwargs):
        return population_loss(y[0], y[1], lam, N) - level

    f = _flow_field(lam, N)
    event = diffrax.Event(gap, root_finder=optx.Newton(rtol=1e-13, atol=1e-13 * t_max))
    sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, args: f(t, y)), diffrax.Dopri5(), 0.0, t_max, t_max / 100,
                              (u0, U0), saveat=diffrax.SaveAt(t1=True), stepsize_controller=dopri5_controller(rtol, atol),
                              event=event, max_steps=max_steps, throw=False)
    return sol.ts[-1], sol.event_mask, diffrax.is_okay(sol.result)


def _time_to_eps_between_saves(traj: Trajectory, eps: float) -> float:
    gap = np.asarray(traj.loss) - traj.loss_star
    hit = np.nonzero(gap <= eps)[0]
    if hit.size == 0:
        return math.inf
    i = int(hit[0])  # ≥ 1: the caller handled gap[0] ≤ eps
    g0, g1, t0, t1 = gap[i - 1], gap[i], traj.t[i - 1], traj.t[i]
    frac = (math.log(g0) - math.log(eps)) / (math.log(g0) - math.log(g1)) if g1 > 0 else (g0 - eps) / (g0 - g1)
    return float(t0 + frac * (t1 - t0))


def time_to_eps(traj: Trajectory, eps: float) -> float:
    """The first t ≤ traj.t[-1] with L(t) − L* ≤ eps along the gradient flow (math.inf if none).

    For a gradient-flow trajectory (``traj.flow`` set): a fresh solve of its initial-value problem
    (same tolerances) that a diffrax ``Event`` stops where L − L* − eps changes sign; the root is
    located on the solver's dense output. For a trajectory without a flow (discrete GD on the
    population loss, ``gd_on_population``; t = step · lr): interpolated between the saves, linearly
    in log(gap) (the gap decays exponentially), or linearly in the gap if it is ≤ 0 at the right end.
    Returns traj.t[0] if the gap is already ≤ eps there.
    """
    eps = _check_pos("eps", eps)
    if traj.loss[0] - traj.loss_star <= eps:
        return float(traj.t[0])
    p = traj.flow
    if p is None:
        return _time_to_eps_between_saves(traj, eps)
    with jax.enable_x64(True):
        t, hit, ok = _flow_until(jnp.float64(p.u0), jnp.asarray(p.U0), jnp.asarray(p.lam), jnp.float64(traj.t[-1]),
                                 jnp.float64(traj.loss_star + eps), N=p.N, rtol=p.rtol, atol=p.atol,
                                 max_steps=p.max_steps)
        if not bool(ok):
            raise RuntimeError(f"time_to_eps: dopri5 used max_steps={p.max_steps} before t={traj.t[-1]}")
        return float(t) if bool(hit) else math.inf


@partial(jax.jit, static_argnames=("N", "num_saves", "save_every"))
def _gd_scan(u0, U0, lam, lr, *, N, num_saves, save_every):
    grad = jax.grad(population_loss, argnums=(0, 1))

    def step(_, p):
        gu, gU = grad(p[0], p[1], lam, N)
        return p[0] - lr * gu, p[1] - lr * gU

    def save(p, _):
        p = jax.lax.fori_loop(0, save_every, step, p)
        return p, p

    _, (u, U) = jax.lax.scan(save, (u0, U0), None, length=num_saves - 1)
    return jnp.concatenate([u0[None], u]), jnp.concatenate([U0[None], U])


def gd_on_population(u0: float, U0: ArrayLike, Lam: ArrayLike, N: int, *, lr: float, num_steps: int,
                     save_every: int = 1) -> Trajectory:
    """Gradient descent (u, U) ← (u, U) − lr ∇L(u, U) in float64, saved every ``save_every``
    steps at t = lr·k (Euler's method on the gradient flow: O(lr) from it at fixed t)."""
    lam = validate_cov(Lam)
    N = _check_len("N", N)
    lr = _check_pos("lr", lr)
    num_steps, save_every = _check_len("num_steps", num_steps), _check_len("save_every", save_every)
    if num_steps % save_every:
        raise ValueError(f"save_every: must divide num_steps={num_steps}, got {save_every}")
    num_saves = num_steps // save_every + 1
    with jax.enable_x64(True):
        u, U = _gd_scan(jnp.float64(u0), jnp.asarray(U0, jnp.float64), jnp.asarray(lam), jnp.float64(lr),
                        N=N, num_saves=num_saves, save_every=save_every)
    return _trajectory(lr * save_every * np.arange(num_saves), u, U, lam, N)
