"""GP-prior training datasets for a BO surrogate PFN: the GP prior of `ictl.tasks.gp_prior` with inputs laid
out the way a BO loop lays them out.

The GP posterior predictive p(y | x, D) does not depend on how the inputs of D were chosen, so any
input distribution with full support trains a PFN towards the same Bayes-optimal predictor. A BO
loop, however, queries mostly next to its own data (it refines its incumbent), where uniform inputs
rarely put a query: a PFN trained only on uniform designs keeps its predictive wide next to its
context, EI stays high beside the incumbent, and the loop stalls there (seen in this repo's quick
runs: PFN-EI no better than random search after 2000 steps). Here a fraction ``cluster_frac`` of
the points of each dataset (point 0 never) is x_i = clip(u_j + σ_i ε_i, 0, 1), a jitter of a uniform
anchor u_j of an earlier position j < i (j uniform), ε ~ N(0, I_d), log σ_i ~ U(log σ_min, log σ_max);
the rest are uniform. With the first n points as context and the others as queries, this yields
clustered contexts and queries next to context points, at every n.

y = L z with L = chol(K + (noise + 1e-6·s) I), z ~ N(0, I) (the jitter of `ictl.tasks.gp_prior`, with
its 1e-4·s fallback where the float32 Cholesky fails), float32, pure and jittable; fixed hyperparameters
(`sample_gp_bo`) or per-dataset ones from the Gamma hyperprior (`sample_gp_bo_hyperprior`, the
sampler of `ictl.tasks.gp_prior`). The Cholesky is repeated here (not imported) because that
module draws its inputs uniformly inside its private sampler.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl.tasks.gp_prior import JITTER, JITTER_FALLBACK, sample_hyperparameters
from ictl.theory.gp import HyperPrior, check_kernel, kernel_matrix


class Datasets(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N"]


def bo_design(key: jax.Array, *, batch: int, n_points: int, d: int, cluster_frac: float = 0.5,
              sigma_min: float = 0.003, sigma_max: float = 0.1) -> Float[Array, "B N d"]:
    """Inputs in [0, 1]^d: uniform, or (prob. ``cluster_frac``) a Gaussian jitter of an earlier uniform anchor."""
    if not 0 <= cluster_frac <= 1:
        raise ValueError(f"cluster_frac: got {cluster_frac!r}; allowed a number in [0, 1]")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"sigma_min/sigma_max: got {sigma_min!r}/{sigma_max!r}; allowed 0 < sigma_min <= sigma_max")
    k_u, k_c, k_j, k_s, k_e = jax.random.split(key, 5)
    u_BxNxd = jax.random.uniform(k_u, (batch, n_points, d))
    i_N = jnp.arange(n_points)
    j_BxN = jnp.floor(jax.random.uniform(k_j, (batch, n_points)) * i_N[None, :]).astype(jnp.int32)   # j < i
    anchor_BxNxd = jnp.take_along_axis(u_BxNxd, j_BxN[..., None], axis=1)
    log_s = jax.random.uniform(k_s, (batch, n_points, 1), minval=jnp.log(sigma_min), maxval=jnp.log(sigma_max))
    near_BxNxd = jnp.clip(anchor_BxNxd + jnp.exp(log_s) * jax.random.normal(k_e, (batch, n_points, d)), 0.0, 1.0)
    clustered_BxN = (jax.random.uniform(k_c, (batch, n_points)) < cluster_frac) & (i_N[None, :] > 0)
    return jnp.where(clustered_BxN[..., None], near_BxNxd, u_BxNxd)


def _draw_y(key, x_BxNxd, ls_Bxd, s_B, nz_B, kernel: str):
    n = x_BxNxd.shape[1]
    eye = jnp.eye(n, dtype=jnp.float32)

    def chol(x_Nxd, ls_d, s, nz):
        k = kernel_matrix(x_Nxd, x_Nxd, kernel=kernel, lengthscale=ls_d, outputscale=s)
        c = jnp.linalg.cholesky(k + (nz + JITTER * s) * eye)
        return jnp.where(jnp.all(jnp.isfinite(c)), c, jnp.linalg.cholesky(k + (nz + JITTER_FALLBACK * s) * eye))

    chol_BxNxN = jax.vmap(chol)(x_BxNxd, ls_Bxd, s_B, nz_B)
    return jnp.einsum("bij,bj->bi", chol_BxNxN, jax.random.normal(key, x_BxNxd.shape[:2]))


def _check_counts(batch, n_points, d):
    for name, v in (("batch", batch), ("n_points", n_points), ("d", d)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")


def sample_gp_bo(key: jax.Array, *, batch: int, n_points: int, d: int, kernel: str = "rbf", lengthscale: float = 0.25,
                 outputscale: float = 1.0, noise: float = 1e-4, cluster_frac: float = 0.5) -> Datasets:
    """``batch`` GP-prior datasets (fixed hyperparameters) on BO-like designs (`bo_design`)."""
    check_kernel(kernel)
    _check_counts(batch, n_points, d)
    for name, v in (("lengthscale", lengthscale), ("outputscale", outputscale), ("noise", noise)):
        if not v > 0:
            raise ValueError(f"{name}: got {v!r}; allowed a number > 0")
    k_x, k_z = jax.random.split(key)
    x = bo_design(k_x, batch=batch, n_points=n_points, d=d, cluster_frac=cluster_frac)
    full = lambda v, shape: jnp.full(shape, v, jnp.float32)
    return Datasets(x, _draw_y(k_z, x, full(lengthscale, (batch, d)), full(outputscale, (batch,)),
                               full(noise, (batch,)), kernel))


def sample_gp_bo_hyperprior(key: jax.Array, *, batch: int, n_points: int, d: int, prior: HyperPrior = HyperPrior(),
                            cluster_frac: float = 0.5) -> Datasets:
    """Datasets whose GP hyperparameters are drawn per dataset from ``prior`` (`ictl.tasks.gp_prior`), BO-like designs."""
    _check_counts(batch, n_points, d)
    k_h, k_x, k_z = jax.random.split(key, 3)
    ls, s, nz = sample_hyperparameters(k_h, prior, batch=batch, d=d)
    x = bo_design(k_x, batch=batch, n_points=n_points, d=d, cluster_frac=cluster_frac)
    return Datasets(x, _draw_y(k_z, x, ls, s, nz, prior.kernel))
