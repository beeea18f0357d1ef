"""Rotation sequences x_{t+1} = W x_t of Zheng et al. (2024), complex form.

Shapes: B sequences, T tokens, d dimension.

    W = diag(λ_1 … λ_d),  λ_j = e^{iθ_j},  θ_j ~ U(0, 2π) i.i.d. per sequence,
    x_1 ~ D_{x1} (i.i.d. real coordinates, see ``X1_DISTS``),  x_t = W^{t−1} x_1.

We use the complex form (``jnp.complex64``). The real block-rotation form is the same data:
z ∈ C^d ↔ (Re z, Im z) ∈ R^{2d} and W ↔ blockdiag(R(θ_j)) with R(θ) the 2×2 rotation; the
complex attention score x_{i−1}ᴴ x_t equals the real inner product plus i times the
symplectic form ⟨x_{i−1}, J x_t⟩, so the complex one-layer LSA corresponds to a real LSA on
R^{2d} whose value map also carries a J-rotated copy — not to the plain real LSA.

Initial-token distributions (all with i.i.d. real coordinates, moments of |x_{1j}|²):

* ``"rademacher"``: x_{1j} = ±1. Symmetric (odd moments vanish: the reduced, one-step-GD
  dynamics is exact) and |x_{1j}| constant, so m4² = m2·m6: the learnt mesa-optimizer
  recovers the next token as T, t → ∞ (the capability condition).
* ``"gaussian"``: x_{1j} ~ N(0, 1). Symmetric, but m4² = 9 < m2·m6 = 15: converges to the
  one-step-GD mesa-optimizer, which does not recover the next token.
* ``"shifted"``: x_{1j} ~ N(1, 1). Not symmetric (E x = 1, E x³ = 4): the gradient leaves the
  one-step-GD family (off-pattern entries of W^{KQ}, W^{PV} are driven away from 0).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from ictl import rng

X1_DISTS = ("rademacher", "gaussian", "shifted")

# Exact moments of one coordinate x = x_{1j}: (E x, E x³, E x², E x⁴, E x⁶). N(μ, 1):
# E x² = μ²+1, E x³ = μ³+3μ, E x⁴ = μ⁴+6μ²+3, E x⁶ = μ⁶+15μ⁴+45μ²+15 (μ = 1 for "shifted").
_MOMENTS = {
    "rademacher": (0.0, 0.0, 1.0, 1.0, 1.0),
    "gaussian": (0.0, 0.0, 1.0, 3.0, 15.0),
    "shifted": (1.0, 4.0, 2.0, 10.0, 76.0),
}


class Moments(NamedTuple):
    """Moments of one real initial coordinate x = x_{1j}: m1 = E x, m3 = E x³, m2k = E x^{2k}."""

    m1: float
    m3: float
    m2: float
    m4: float
    m6: float


class Sequences(NamedTuple):
    x: Complex[Array, "B T d"]  # x[:, t−1] = x_t, t = 1 … T
    theta: Float[Array, "B d"]  # the phases of W = diag(e^{iθ})
    x1: Float[Array, "B d"]  # the real initial token


def x1_moments(dist: str) -> Moments:
    """The exact moments of x_{1j} under ``dist`` (one of ``X1_DISTS``)."""
    if dist not in _MOMENTS:
        raise ValueError(f"dist: got {dist!r}; allowed {X1_DISTS}")
    return Moments(*_MOMENTS[dist])


def sample_x1(key: jax.Array, *, batch: int, d: int, dist: str, dtype=jnp.float32) -> Float[Array, "B d"]:
    """B initial tokens with i.i.d. coordinates from ``dist``."""
    if dist == "rademacher":
        return rng.rademacher(key, (batch, d), dtype)
    if dist == "gaussian":
        return rng.normal(key, (batch, d), dtype)
    if dist == "shifted":
        return 1.0 + rng.normal(key, (batch, d), dtype)
    raise ValueError(f"dist: got {dist!r}; allowed {X1_DISTS}")


def sample_rotation_sequences(
    key: jax.Array,
    *,
    batch: int,
    length: int,
    d: int,
    dist: str = "rademacher",
    dtype=jnp.complex64,
) -> Sequences:
    """Draws B sequences x_1 … x_T, x_t = diag(e^{iθ})^{t−1} x_1. Pure in ``key``.

    x_t is computed as e^{i(t−1)θ} ⊙ x_1 directly (no accumulated rounding along t).
    """
    if dist not in X1_DISTS:
        raise ValueError(f"dist: got {dist!r}; allowed {X1_DISTS}")
    for name, v in (("batch", batch), ("length", length), ("d", d)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name}: got {v!r}; allowed an int >= 1")
    real = jnp.finfo(dtype).dtype  # float32 for complex64, float64 for complex128
    k_theta, k_x = jax.random.split(key)
    theta_Bxd = rng.uniform(k_theta, (batch, d), real, 0.0, 2 * jnp.pi)
    x1_Bxd = sample_x1(k_x, batch=batch, d=d, dist=dist, dtype=real)
    lag_T = jnp.arange(length, dtype=real)
    phase_BxTxd = lag_T[None, :, None] * theta_Bxd[:, None, :]
    x_BxTxd = jnp.exp(1j * phase_BxTxd).astype(dtype) * x1_Bxd[:, None, :].astype(dtype)
    return Sequences(x_BxTxd, theta_Bxd, x1_Bxd)
