"""Benchmark problems for Bayesian optimisation: test functions and constrained engineering designs.

Every problem is a *minimisation* of f(x) over a box [lower, upper] ⊂ ℝ^d, optionally subject to
g_j(x) ≤ 0 (j = 1..m). Pure jnp functions of x [..., d] in the problem's own units; the BO loop works
in the unit cube and maps with `from_unit`. Definitions (facts, no code taken from elsewhere):

Test functions (Surjanovic & Bingham, Virtual Library of Simulation Experiments,
https://www.sfu.ca/~ssurjano/optimization.html; the same constants in BoTorch's
``botorch.test_functions.synthetic``):

- ``branin`` on [−5, 10] × [0, 15]: (x₂ − b x₁² + c x₁ − r)² + s(1 − t) cos x₁ + s with
  b = 5.1/(4π²), c = 5/π, r = 6, s = 10, t = 1/(8π); f* = 0.397887 at (−π, 12.275), (π, 2.275),
  (9.42478, 2.475).
- ``hartmann6`` on [0, 1]⁶: −Σ_i α_i exp(−Σ_j A_ij (x_j − P_ij)²); f* = −3.32237 at
  (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573).
- ``ackley`` (any d) on [−32.768, 32.768]^d: −a exp(−b √(mean x²)) − exp(mean cos(c x)) + a + e,
  a = 20, b = 0.2, c = 2π; f* = 0 at 0.
- ``gramacy`` (Gramacy et al. 2016, "Modeling an augmented Lagrangian for blackbox constrained
  optimization", Technometrics) on [0, 1]²: x₁ + x₂ s.t. 1.5 − x₁ − 2x₂ − ½ sin(2π(x₁² − 2x₂)) ≤ 0
  and x₁² + x₂² − 1.5 ≤ 0; f* ≈ 0.5998 at (0.1954, 0.4044) (BoTorch's ``ConstrainedGramacy``).

Constrained engineering problems (as collected in Coello Coello & Mezura Montes 2002, "Constraint-
handling in genetic algorithms through the use of dominance-based tournament selection", Adv.
Eng. Informatics 16(3), and Lemonge et al. 2010, Mecánica Computacional XXIX; bounds as in
BoTorch's ``PressureVessel`` / ``WeldedBeamSO`` / ``SpeedReducer`` unless said otherwise):

- ``pressure_vessel`` (Kannan & Kramer 1994), x = (T_s, T_h, R, L) ∈ [0, 10]² × [10, 50] × [150, 200]:
  f = 0.6224 T_s R L + 1.7781 T_h R² + 3.1661 T_s² L + 19.84 T_s² R;
  g = (−T_s + 0.0193 R, −T_h + 0.00954 R, −πR²L − (4/3)πR³ + 1 296 000, L − 240).
  Thicknesses are continuous here (the original asks for multiples of 0.0625; BoTorch rounds them in
  f only). Best known continuous design: f* = 5885.3328 at (0.778169, 0.384649, 40.319619, 200).
- ``welded_beam`` (Ragsdell & Phillips 1976; Coello 2000), x = (h, l, t, b) ∈ [0.125, 2] × [0.1, 10]²
  × [0.1, 2] (Coello's box, g₅: h ≥ 0.125 folded into it): f = 1.10471 h² l + 0.04811 t b (14 + l);
  P = 6000, L = 14, E = 30e6, G = 12e6, τ_max = 13600, σ_max = 30000, δ_max = 0.25;
  τ' = P/(√2 h l), M = P(L + l/2), R = √(l²/4 + ((h + t)/2)²), J = 2√2 h l (l²/12 + ((h + t)/2)²),
  τ'' = M R / J, τ = √(τ'² + τ' τ'' l / R + τ''²), σ = 6PL/(b t²), δ = 4PL³/(E t³ b),
  P_c = 4.013 E (t b³/6)/L² · (1 − t/(2L) √(E/(4G)));
  g = (τ − τ_max, σ − σ_max, h − b, 0.10471 h² + 0.04811 t b (14 + l) − 5, δ − δ_max, P − P_c).
  Best known: f* = 1.724852 at (0.205730, 3.470489, 9.036624, 0.205730). (BoTorch's P_c multiplies
  by 6 where √(t² b⁶/36) = t b³/6 divides; we keep the published form, where g₆ is active at x*.)
- ``speed_reducer`` (Golinski 1970), x ∈ [2.6, 3.6] × [0.7, 0.8] × [17, 28] × [7.3, 8.3] × [7.8, 8.3]
  × [2.9, 3.9] × [5.0, 5.5] (x₃ is an integer in the original; continuous here):
  f = 0.7854 x₁x₂²(3.3333x₃² + 14.9334x₃ − 43.0934) − 1.508 x₁(x₆² + x₇²) + 7.4777(x₆³ + x₇³)
      + 0.7854(x₄x₆² + x₅x₇²);  11 constraints in the normalised form g ≤ 0:
  27/(x₁x₂²x₃) − 1, 397.5/(x₁x₂²x₃²) − 1, 1.93x₄³/(x₂x₃x₆⁴) − 1, 1.93x₅³/(x₂x₃x₇⁴) − 1,
  √((745x₄/(x₂x₃))² + 16.9e6)/(110x₆³) − 1, √((745x₅/(x₂x₃))² + 157.5e6)/(85x₇³) − 1,
  x₂x₃/40 − 1, 5x₂/x₁ − 1, x₁/(12x₂) − 1, (1.5x₆ + 1.9)/x₄ − 1, (1.1x₇ + 1.9)/x₅ − 1.
  Best known with x₅ ≥ 7.8: f* = 2996.3482 at (3.5, 0.7, 17, 7.3, 7.8, 3.350215, 5.286683).

`x_opt` holds the published designs to 7 digits (Gramacy's polished by SLSQP: f* = 0.599788 at
(0.1951227, 0.4046654)); their active constraints hold to ≤ 1e-6 of each constraint's scale
(checked in tests/test_bo.py: e.g. welded beam τ − τ_max = +2.6e-3 psi on 13600).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float


class Problem(NamedTuple):
    """minimise ``objective(x)`` s.t. ``constraints(x) <= 0`` over [lower, upper] (x in its own units)."""

    name: str
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    objective: Callable          # x [..., d] -> f [...]
    constraints: Callable | None  # x [..., d] -> g [..., m] (feasible iff every g_j <= 0), None if m = 0
    num_constraints: int
    f_opt: float                 # best known minimum
    x_opt: tuple[float, ...]     # a best-known minimiser (own units)

    @property
    def d(self) -> int:
        return len(self.lower)


def _row(v, like):
    """A per-dimension constant as [1, …, 1, d] matching ``like``'s rank (strict rank promotion)."""
    return jnp.asarray(v, like.dtype).reshape((1,) * (like.ndim - 1) + (-1,))


def from_unit(problem: Problem, u: Float[Array, "*S d"]) -> Float[Array, "*S d"]:
    u = jnp.asarray(u)
    lo, hi = _row(problem.lower, u), _row(problem.upper, u)
    return lo + (hi - lo) * u


def to_unit(problem: Problem, x: Float[Array, "*S d"]) -> Float[Array, "*S d"]:
    x = jnp.asarray(x)
    lo, hi = _row(problem.lower, x), _row(problem.upper, x)
    return (x - lo) / (hi - lo)


def evaluate(problem: Problem, u: Float[Array, "*S d"]) -> Float[Array, "*S O"]:
    """Outputs at unit-cube points, O = 1 + m: [−f (to maximise), g_1, …, g_m]."""
    x = from_unit(problem, u)
    out = [-problem.objective(x)[..., None]]
    if problem.constraints is not None:
        out.append(problem.constraints(x))
    return jnp.concatenate(out, axis=-1)


# ----------------------------------------------------------------------------- test functions
def _branin(x):
    x1, x2 = x[..., 0], x[..., 1]
    b, c, r, s, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * jnp.cos(x1) + s


_H6_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H6_A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14), (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
_H6_P = ((1312, 1696, 5569, 124, 8283, 5886), (2329, 4135, 8307, 3736, 1004, 9991),
         (2348, 1451, 3522, 2883, 3047, 6650), (4047, 8828, 8732, 5743, 1091, 381))


def _hartmann6(x):
    xi = x[..., None, :]                                                 # [..., 1, 6]
    lead = (1,) * (xi.ndim - 2)
    a = jnp.asarray(_H6_A, x.dtype).reshape(lead + (4, 6))
    p = 1e-4 * jnp.asarray(_H6_P, x.dtype).reshape(lead + (4, 6))
    inner = jnp.sum(a * jnp.square(xi - p), axis=-1)                     # [..., 4]
    return -(jnp.exp(-inner) @ jnp.asarray(_H6_ALPHA, x.dtype))


def _ackley(x):
    a, b, c = 20.0, 0.2, 2 * math.pi
    return (-a * jnp.exp(-b * jnp.sqrt(jnp.mean(jnp.square(x), axis=-1))) - jnp.exp(jnp.mean(jnp.cos(c * x), axis=-1))
            + a + math.e)


def _gramacy_f(x):
    return x[..., 0] + x[..., 1]


def _gramacy_g(x):
    x1, x2 = x[..., 0], x[..., 1]
    c1 = 1.5 - x1 - 2 * x2 - 0.5 * jnp.sin(2 * math.pi * (x1**2 - 2 * x2))
    c2 = x1**2 + x2**2 - 1.5
    return jnp.stack([c1, c2], axis=-1)


# ----------------------------------------------------------------------------- engineering
def _pv_f(x):
    ts, th, r, l = (x[..., i] for i in range(4))
    return 0.6224 * ts * r * l + 1.7781 * th * r**2 + 3.1661 * ts**2 * l + 19.84 * ts**2 * r


def _pv_g(x):
    ts, th, r, l = (x[..., i] for i in range(4))
    return jnp.stack([-ts + 0.0193 * r, -th + 0.00954 * r,
                      -math.pi * r**2 * l - (4.0 / 3.0) * math.pi * r**3 + 1_296_000.0, l - 240.0], axis=-1)


def _wb_f(x):
    h, l, t, b = (x[..., i] for i in range(4))
    return 1.10471 * h**2 * l + 0.04811 * t * b * (14.0 + l)


def _wb_g(x):
    h, l, t, b = (x[..., i] for i in range(4))
    P, L, E, G = 6000.0, 14.0, 30e6, 12e6
    tau1 = P / (math.sqrt(2) * h * l)
    M = P * (L + l / 2)
    R = jnp.sqrt(l**2 / 4 + ((h + t) / 2) ** 2)
    J = 2 * math.sqrt(2) * h * l * (l**2 / 12 + ((h + t) / 2) ** 2)
    tau2 = M * R / J
    tau = jnp.sqrt(tau1**2 + tau1 * tau2 * l / R + tau2**2)
    sigma = 6 * P * L / (b * t**2)
    delta = 4 * P * L**3 / (E * t**3 * b)
    p_c = 4.013 * E * (t * b**3 / 6) / L**2 * (1 - t / (2 * L) * math.sqrt(E / (4 * G)))
    return jnp.stack([tau - 13600.0, sigma - 30000.0, h - b, 0.10471 * h**2 + 0.04811 * t * b * (14.0 + l) - 5.0,
                      delta - 0.25, P - p_c], axis=-1)


def _sr_f(x):
    x1, x2, x3, x4, x5, x6, x7 = (x[..., i] for i in range(7))
    return (0.7854 * x1 * x2**2 * (3.3333 * x3**2 + 14.9334 * x3 - 43.0934) - 1.508 * x1 * (x6**2 + x7**2)
            + 7.4777 * (x6**3 + x7**3) + 0.7854 * (x4 * x6**2 + x5 * x7**2))


def _sr_g(x):
    x1, x2, x3, x4, x5, x6, x7 = (x[..., i] for i in range(7))
    return jnp.stack([
        27.0 / (x1 * x2**2 * x3) - 1,
        397.5 / (x1 * x2**2 * x3**2) - 1,
        1.93 * x4**3 / (x2 * x3 * x6**4) - 1,
        1.93 * x5**3 / (x2 * x3 * x7**4) - 1,
        jnp.sqrt((745.0 * x4 / (x2 * x3)) ** 2 + 16.9e6) / (110.0 * x6**3) - 1,
        jnp.sqrt((745.0 * x5 / (x2 * x3)) ** 2 + 157.5e6) / (85.0 * x7**3) - 1,
        x2 * x3 / 40.0 - 1,
        5.0 * x2 / x1 - 1,
        x1 / (12.0 * x2) - 1,
        (1.5 * x6 + 1.9) / x4 - 1,
        (1.1 * x7 + 1.9) / x5 - 1,
    ], axis=-1)


def ackley(d: int = 2) -> Problem:
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d: got {d!r}; allowed an integer >= 1")
    return Problem("ackley", (-32.768,) * d, (32.768,) * d, _ackley, None, 0, 0.0, (0.0,) * d)


BRANIN = Problem("branin", (-5.0, 0.0), (10.0, 15.0), _branin, None, 0, 0.397887, (math.pi, 2.275))
HARTMANN6 = Problem("hartmann6", (0.0,) * 6, (1.0,) * 6, _hartmann6, None, 0, -3.32237,
                    (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573))
GRAMACY = Problem("gramacy", (0.0, 0.0), (1.0, 1.0), _gramacy_f, _gramacy_g, 2, 0.599788, (0.1951227, 0.4046654))
PRESSURE_VESSEL = Problem("pressure_vessel", (0.0, 0.0, 10.0, 150.0), (10.0, 10.0, 50.0, 200.0), _pv_f, _pv_g, 4,
                          5885.3328, (0.7781686, 0.3846492, 40.3196187, 200.0))
WELDED_BEAM = Problem("welded_beam", (0.125, 0.1, 0.1, 0.1), (2.0, 10.0, 10.0, 2.0), _wb_f, _wb_g, 6, 1.724852,
                      (0.2057296, 3.4704887, 9.0366239, 0.2057296))
SPEED_REDUCER = Problem("speed_reducer", (2.6, 0.7, 17.0, 7.3, 7.8, 2.9, 5.0), (3.6, 0.8, 28.0, 8.3, 8.3, 3.9, 5.5),
                        _sr_f, _sr_g, 11, 2996.3482, (3.5, 0.7, 17.0, 7.3, 7.8, 3.3502147, 5.2866832))

PROBLEMS = ("branin", "hartmann6", "ackley", "gramacy", "pressure_vessel", "welded_beam", "speed_reducer")


def get_problem(name: str, *, ackley_dim: int = 2) -> Problem:
    """The analytic problem ``name`` (one of PROBLEMS); ``ackley_dim`` sets Ackley's d."""
    table = {"branin": BRANIN, "hartmann6": HARTMANN6, "gramacy": GRAMACY, "pressure_vessel": PRESSURE_VESSEL,
             "welded_beam": WELDED_BEAM, "speed_reducer": SPEED_REDUCER}
    if name == "ackley":
        return ackley(ackley_dim)
    if name not in table:
        raise ValueError(f"problem: got {name!r}; allowed {PROBLEMS}")
    return table[name]
