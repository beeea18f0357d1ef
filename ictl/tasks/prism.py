"""Task priors of the "Bayesian prism" testbed (Panwar, Ahuja & Goyal 2024).

All samplers are pure, take an explicit key and return `PrismPrompts(x, y, params)` with a
leading batch axis B. Inputs and priors (documented here, used by `ictl.bayes`):

    fourier       1-D inputs x ~ U[−L, L] (L = 5). Features φ(x) = (1, cos(nπx/L), sin(nπx/L))
                  for n = 1..n_max (n_max ≤ 10, Panwar's maximum frequency), p = 2·n_max + 1;
                  coefficients c ~ N(0, s² I_p) with s² = 1/(1 + n_max), so that E f(x)² =
                  s²(1 + n_max) = 1 (E cos² = E sin² = ½ under U[−L, L]), y = cᵀφ(x) + σε.
                  The Bayes posterior mean is ridge on φ(x) (Gaussian prior, λ = σ²/s²).
    gmm_linear    x ~ N(0, I_d), w ~ ½ N(+μ e₁, Σ) + ½ N(−μ e₁, Σ) (μ = 3, Σ = I_d by default),
                  y = wᵀx + σε. Bayes: `ictl.bayes.gmm_posterior_mean`.
    task pool     a finite pool of M = 2^k weight vectors w_m ~ N(0, I_d), drawn once from a
                  fixed ``pool_seed`` (`make_task_pool`); each prompt picks m ~ U{0..M−1},
                  x ~ N(0, I_d), y = w_mᵀx + σε. Bayes: `ictl.bayes.dmmse_posterior_mean`.
    gaussian lin  x ~ N(0, I_d), w ~ N(0, diag(v)) with a given (possibly singular) prior variance
                  vector v, y = wᵀx + σε (`sample_gaussian_linear`); `support_prior_var(d, s)` puts
                  variance d/s on the first s coordinates and 0 elsewhere (E (wᵀx)² = d, like
                  N(0, I_d)). Bayes: `ictl.bayes.family_posterior_mean` with one family.
    family mix    each prompt draws its family with given probabilities from a dict of samplers
                  with equal shapes (`sample_family_mixture`), e.g. dense/sparse linear.

Shapes: B prompts, N points, d input dim, p Fourier features, M pool size.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ictl import rng

FOURIER_MAX_FREQ = 10
FOURIER_L = 5.0


class PrismPrompts(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N"]
    params: Any            # the sampled task per prompt (coefficients, weights, pool index)


def _check_pos(**kw) -> None:
    for name, v in kw.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed a positive integer")


# ----------------------------------------------------------------------------- Fourier series
def fourier_features(x_BxNx1: Float[Array, "B N 1"], *, n_max: int = FOURIER_MAX_FREQ,
                     L: float = FOURIER_L) -> Float[Array, "B N p"]:
    """φ(x) = (1, cos(πx/L), …, cos(n_max πx/L), sin(πx/L), …, sin(n_max πx/L)), p = 2 n_max + 1."""
    if not 1 <= n_max <= FOURIER_MAX_FREQ:
        raise ValueError(f"n_max: got {n_max!r}; allowed 1..{FOURIER_MAX_FREQ}")
    n_F = jnp.arange(1, n_max + 1, dtype=x_BxNx1.dtype)
    arg_BxNxF = jnp.pi * x_BxNx1 * n_F[None, None, :] / L
    ones = jnp.ones_like(x_BxNx1)
    return jnp.concatenate([ones, jnp.cos(arg_BxNxF), jnp.sin(arg_BxNxF)], axis=-1)


def fourier_coef_std(n_max: int) -> float:
    """s = 1/√(1 + n_max): the prior std of each coefficient, so E f(x)² = (1 + n_max) s² = 1."""
    return 1.0 / (1 + n_max) ** 0.5


def sample_fourier(key: jax.Array, *, batch: int, n_points: int, n_max: int = FOURIER_MAX_FREQ,
                   L: float = FOURIER_L, noise_std: float = 0.0, dtype=jnp.float32) -> PrismPrompts:
    """Fourier-series prompts; params = {"c": [B, p]} with c ~ N(0, s² I), x = [B, N, 1]."""
    _check_pos(batch=batch, n_points=n_points)
    k_x, k_c, k_e = jax.random.split(key, 3)
    x_BxNx1 = rng.uniform(k_x, (batch, n_points, 1), dtype, -L, L)
    p = 2 * n_max + 1
    c_Bxp = fourier_coef_std(n_max) * rng.normal(k_c, (batch, p), dtype)
    y_BxN = jnp.einsum("bnp,bp->bn", fourier_features(x_BxNx1, n_max=n_max, L=L), c_Bxp)
    y_BxN = y_BxN + noise_std * rng.normal(k_e, y_BxN.shape, dtype)
    return PrismPrompts(x_BxNx1, y_BxN, {"c": c_Bxp})


# ----------------------------------------------------------------------------- Gaussian mixture prior
def gmm_means(d: int, *, shift: float = 3.0, dtype=jnp.float32) -> Float[Array, "2 d"]:
    """The two component means ±shift·e₁."""
    return jnp.zeros((2, d), dtype).at[:, 0].set(jnp.array([shift, -shift], dtype))


def sample_gmm_linear(key: jax.Array, *, batch: int, n_points: int, d: int, shift: float = 3.0,
                      cov: Float[Array, "d d"] | None = None, noise_std: float = 0.0,
                      dtype=jnp.float32) -> PrismPrompts:
    """w ~ ½N(+shift e₁, Σ) + ½N(−shift e₁, Σ); params = {"w": [B, d], "component": [B] in {0, 1}}."""
    _check_pos(batch=batch, n_points=n_points, d=d)
    k_c, k_w, k_x, k_e = jax.random.split(key, 4)
    comp_B = rng.bernoulli(k_c, 0.5, (batch,)).astype(jnp.int32)
    z_Bxd = rng.normal(k_w, (batch, d), dtype)
    if cov is not None:
        cov = jnp.asarray(cov, dtype)
        if cov.shape != (d, d):
            raise ValueError(f"cov: got shape {cov.shape}; allowed ({d}, {d})")
        z_Bxd = z_Bxd @ jnp.linalg.cholesky(cov).T
    w_Bxd = gmm_means(d, shift=shift, dtype=dtype)[comp_B] + z_Bxd
    x_BxNxd = rng.normal(k_x, (batch, n_points, d), dtype)
    y_BxN = jnp.einsum("bnd,bd->bn", x_BxNxd, w_Bxd) + noise_std * rng.normal(k_e, (batch, n_points), dtype)
    return PrismPrompts(x_BxNxd, y_BxN, {"w": w_Bxd, "component": comp_B})


# ----------------------------------------------------------------------------- Gaussian linear families
def support_prior_var(d: int, support: int, *, dtype=jnp.float32) -> Float[Array, "d"]:
    """v = (d/s, …, d/s, 0, …, 0): w lives on the first s coordinates with E‖w‖² = d."""
    _check_pos(d=d, support=support)
    if support > d:
        raise ValueError(f"support: got {support!r}; allowed 1..d={d}")
    return jnp.where(jnp.arange(d) < support, d / support, 0.0).astype(dtype)


def sample_gaussian_linear(key: jax.Array, *, batch: int, n_points: int, d: int,
                           prior_var: Float[Array, "d"] | None = None, noise_std: float = 0.0,
                           dtype=jnp.float32) -> PrismPrompts:
    """x ~ N(0, I_d), w ~ N(0, diag(prior_var)) (default I_d), y = wᵀx + σε; params = {"w": [B, d]}."""
    _check_pos(batch=batch, n_points=n_points, d=d)
    v_d = jnp.ones((d,), dtype) if prior_var is None else jnp.asarray(prior_var, dtype)
    if v_d.shape != (d,):
        raise ValueError(f"prior_var: got shape {v_d.shape}; allowed ({d},)")
    k_w, k_x, k_e = jax.random.split(key, 3)
    w_Bxd = jnp.sqrt(v_d)[None, :] * rng.normal(k_w, (batch, d), dtype)
    x_BxNxd = rng.normal(k_x, (batch, n_points, d), dtype)
    y_BxN = jnp.einsum("bnd,bd->bn", x_BxNxd, w_Bxd) + noise_std * rng.normal(k_e, (batch, n_points), dtype)
    return PrismPrompts(x_BxNxd, y_BxN, {"w": w_Bxd})


# ----------------------------------------------------------------------------- finite task pools
def make_task_pool(pool_seed: int, *, log2_size: int, d: int, dtype=jnp.float32) -> Float[Array, "M d"]:
    """M = 2^log2_size weight vectors w_m ~ N(0, I_d), fixed by ``pool_seed`` (drawn once)."""
    if not isinstance(log2_size, int) or not 0 <= log2_size <= 24:
        raise ValueError(f"log2_size: got {log2_size!r}; allowed an integer in 0..24")
    _check_pos(d=d)
    return rng.normal(jax.random.key(pool_seed), (2**log2_size, d), dtype)


def sample_pool_prompts(key: jax.Array, pool_Mxd: Float[Array, "M d"], *, batch: int, n_points: int,
                        noise_std: float = 0.0) -> PrismPrompts:
    """Each prompt uses w = pool[m], m ~ U{0..M−1}; params = {"w": [B, d], "index": [B]}."""
    _check_pos(batch=batch, n_points=n_points)
    M, d = pool_Mxd.shape
    k_m, k_x, k_e = jax.random.split(key, 3)
    idx_B = rng.randint(k_m, (batch,), 0, M)
    w_Bxd = pool_Mxd[idx_B]
    x_BxNxd = rng.normal(k_x, (batch, n_points, d), pool_Mxd.dtype)
    y_BxN = jnp.einsum("bnd,bd->bn", x_BxNxd, w_Bxd)
    y_BxN = y_BxN + noise_std * rng.normal(k_e, y_BxN.shape, y_BxN.dtype)
    return PrismPrompts(x_BxNxd, y_BxN, {"w": w_Bxd, "index": idx_B})


# ----------------------------------------------------------------------------- mixtures of families
def sample_family_mixture(key: jax.Array, samplers: dict[str, Callable[..., PrismPrompts]],
                          probs: Sequence[float], *, batch: int) -> tuple[PrismPrompts, Any]:
    """Each prompt comes from family f ~ Categorical(probs) among ``samplers`` (same x/y shapes).

    ``samplers[name](key, batch=B) -> PrismPrompts`` (bind the other options with partial). All
    families are sampled for the whole batch and selected per prompt, so shapes stay static.
    Returns (prompts with params = {name: params}, family index [B] in the dict's order).
    """
    names = list(samplers)
    probs_F = np.asarray(probs, np.float64)          # numpy: the checks also run under jit
    if probs_F.shape != (len(names),) or bool(np.any(probs_F < 0)) or abs(float(probs_F.sum()) - 1) > 1e-6:
        raise ValueError(f"probs: got {probs!r}; allowed {len(names)} non-negative numbers summing to 1")
    _check_pos(batch=batch)
    k_f, *ks = jax.random.split(key, len(names) + 1)
    outs = [samplers[n](k, batch=batch) for n, k in zip(names, ks)]
    fam_B = jax.random.choice(k_f, len(names), (batch,), p=jnp.asarray(probs_F, jnp.float32))
    x = jnp.stack([o.x for o in outs])
    y = jnp.stack([o.y for o in outs])
    if x.ndim != 4:
        raise ValueError(f"samplers: got x shapes {[o.x.shape for o in outs]}; allowed equal [B, N, d]")
    b_B = jnp.arange(batch)
    return PrismPrompts(x[fam_B, b_B], y[fam_B, b_B], {n: o.params for n, o in zip(names, outs)}), fam_B
