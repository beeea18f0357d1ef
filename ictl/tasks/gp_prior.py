"""Gaussian-process prior datasets for prior-data fitted networks (Müller et al. 2022), batched and pure.

A dataset is N points x_i ~ U[0, 1]^d with y = f(x) + ε, f ~ GP(0, k), ε ~ N(0, noise), drawn as
y = L z, L = chol(K + (noise + jitter) I), z ~ N(0, I) (float32 inside the jitted train step):

- fixed hyperparameters (`sample_gp`): the paper's RBF, lengthscale 0.6, outputscale 1, noise 1e-4, d = 5;
- hyperpriors (`sample_gp_hyperprior`): per dataset ℓ_j ~ Γ(3, 6) for each input dim (ARD),
  s ~ Γ(2, 0.15), noise = 1e-4 + Γ(1e-4, 1), Matérn-5/2 (`ictl.theory.gp.HyperPrior`). Γ(α, β) has
  **rate** β, as GPyTorch's GammaPrior(concentration, rate) in the PFN code: E ℓ = 0.5, E s = 13.3.
  Γ(1e-4, 1) puts 99.9% of its mass below 1e-4 and underflows to 0 in float32, hence the noise
  floor 1e-4 (the fixed setting's noise, and BoTorch's minimum inferred noise): this repo's
  hyperprior noise is floor + Γ-draw, in the sampler and in the exact references alike.

A jitter of 1e-6·s (a float32 Cholesky safety margin, 1% of the noise at s = 1) is added to the
diagonal; where that float32 Cholesky still fails (a safety net: no NaN in 3 × 8192 Matérn
hyperprior datasets of N = 30, 50, 100 points in d = 1) the dataset is drawn with 1e-4·s instead. The exact references see the jitter as part of the noise: `GPDatasets.noise` is the
noise each dataset was actually drawn with.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl.theory.gp import HyperPrior, check_hyperprior, check_kernel, kernel_matrix

JITTER = 1e-6           # relative to the outputscale
JITTER_FALLBACK = 1e-4  # where the float32 Cholesky with JITTER fails


class GPDatasets(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N"]
    lengthscale: Float[Array, "B d"]
    outputscale: Float[Array, "B"]
    noise: Float[Array, "B"]        # the observation-noise variance the data were drawn with (jitter included)


def _check_counts(batch, n_points, d):
    for name, v in (("batch", batch), ("n_points", n_points), ("d", d)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")


def _draw(key, ls_Bxd, s_B, noise_B, *, batch, n_points, d, kernel, dtype):
    k_x, k_z = jax.random.split(key)
    x_BxNxd = jax.random.uniform(k_x, (batch, n_points, d), dtype)
    s_B, noise_B = s_B.astype(dtype), noise_B.astype(dtype)
    eye_NxN = jnp.eye(n_points, dtype=dtype)

    def one(x_Nxd, ls_d, s, nz):
        k_NxN = kernel_matrix(x_Nxd, x_Nxd, kernel=kernel, lengthscale=ls_d, outputscale=s)
        chol = jnp.linalg.cholesky(k_NxN + (nz + JITTER * s) * eye_NxN)
        ok = jnp.all(jnp.isfinite(chol))
        # the fallback factorisation reads a (zero) function of the first one, so it cannot start
        # before it ends: jaxlib's batched CPU Cholesky blocks its thread-pool worker on sub-tasks
        # queued in the same pool, and two running at once on a 2-thread pool deadlocked (jaxlib
        # 0.10.2; an optimization_barrier did not order them: XLA's CPU thunks follow buffers)
        after = 0.0 * jnp.nan_to_num(chol[0, 0], nan=0.0, posinf=0.0, neginf=0.0)
        chol = jnp.where(ok, chol, jnp.linalg.cholesky(k_NxN + (nz + JITTER_FALLBACK * s + after) * eye_NxN))
        return chol, nz + jnp.where(ok, JITTER, JITTER_FALLBACK) * s

    chol_BxNxN, noise_B = jax.vmap(one)(x_BxNxd, ls_Bxd.astype(dtype), s_B, noise_B)
    z_BxN = jax.random.normal(k_z, (batch, n_points), dtype)
    y_BxN = jnp.einsum("bij,bj->bi", chol_BxNxN, z_BxN)
    return GPDatasets(x_BxNxd, y_BxN, ls_Bxd.astype(dtype), s_B.astype(dtype), noise_B)


def sample_gp(key: jax.Array, *, batch: int, n_points: int, d: int, kernel: str = "rbf", lengthscale: float = 0.6,
              outputscale: float = 1.0, noise: float = 1e-4, dtype=jnp.float32) -> GPDatasets:
    """``batch`` datasets of ``n_points`` from one GP prior with fixed hyperparameters."""
    _check_counts(batch, n_points, d)
    check_kernel(kernel)
    for name, v in (("lengthscale", lengthscale), ("outputscale", outputscale), ("noise", noise)):
        if not v > 0:
            raise ValueError(f"{name}: got {v!r}; allowed a number > 0")
    ls = jnp.full((batch, d), lengthscale, dtype)
    return _draw(key, ls, jnp.full((batch,), outputscale, dtype), jnp.full((batch,), noise, dtype), batch=batch,
                 n_points=n_points, d=d, kernel=kernel, dtype=dtype)


def _gamma(key, alpha: float, rate: float, shape, dtype):
    """Γ(alpha, rate) draws, through log-gamma so that alpha ≪ 1 does not lose the small values' scale."""
    return jnp.exp(jax.random.loggamma(key, alpha, shape, dtype) - jnp.log(rate).astype(dtype))


def sample_hyperparameters(key: jax.Array, prior: HyperPrior, *, batch: int, d: int, dtype=jnp.float32):
    """(lengthscale [B, d], outputscale [B], noise [B]) from the Gamma hyperprior (rates, noise floor)."""
    check_hyperprior(prior)
    k1, k2, k3 = jax.random.split(key, 3)
    ls = _gamma(k1, *prior.lengthscale, (batch, d), dtype)
    s = _gamma(k2, *prior.outputscale, (batch,), dtype)
    nz = prior.noise_floor + _gamma(k3, *prior.noise, (batch,), dtype)
    return ls, s, nz


def sample_gp_hyperprior(key: jax.Array, *, batch: int, n_points: int, d: int, prior: HyperPrior = HyperPrior(),
                         dtype=jnp.float32) -> GPDatasets:
    """``batch`` datasets, each from a GP whose hyperparameters are drawn from ``prior``."""
    _check_counts(batch, n_points, d)
    k_h, k_d = jax.random.split(key)
    ls, s, nz = sample_hyperparameters(k_h, prior, batch=batch, d=d, dtype=dtype)
    return _draw(k_d, ls, s, nz, batch=batch, n_points=n_points, d=d, kernel=prior.kernel, dtype=dtype)


def sample_marginal_y(key: jax.Array, num: int, *, outputscale, noise, dtype=jnp.float32) -> Float[Array, "M"]:
    """``num`` draws of one point's y from the prior: for a stationary kernel k(x, x) = s, so
    y ~ N(0, s + noise + jitter·s) whatever x and the lengthscales are (``outputscale`` / ``noise``
    scalars, or [num] arrays of per-draw hyperparameters for a hyperprior). This is the marginal
    of `sample_gp` / `sample_gp_hyperprior`'s y (the rare 1e-4·s fallback jitter aside), without
    a Cholesky per dataset: border samples for the bar distribution cost nothing."""
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"num: got {num!r}; allowed an integer >= 1")
    s = jnp.broadcast_to(jnp.asarray(outputscale, dtype), (num,))
    nz = jnp.broadcast_to(jnp.asarray(noise, dtype), (num,))
    return jax.random.normal(key, (num,), dtype) * jnp.sqrt(s + nz + JITTER * s)


def sample_marginal_y_hyperprior(key: jax.Array, num: int, *, prior: HyperPrior = HyperPrior(),
                                 dtype=jnp.float32) -> Float[Array, "M"]:
    """`sample_marginal_y` with (s, noise) drawn per point from ``prior`` (one dataset's y_i)."""
    k_h, k_y = jax.random.split(key)
    _, s, nz = sample_hyperparameters(k_h, prior, batch=num, d=1, dtype=dtype)
    return sample_marginal_y(k_y, num, outputscale=s, noise=nz, dtype=dtype)
