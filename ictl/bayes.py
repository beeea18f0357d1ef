"""Exact Bayes posterior means (and predictive variances) for the prism task priors.

Per-prompt functions share the baseline signature of `ictl.baselines`,

    f(x_Nxd, y_N, mask_N, xq_d, *, <prior>) -> ŷ          (mask_N = 1 on the k usable examples)

with the masked rows of X and y set to zero (they then add a constant to every log-likelihood,
which cancels in the normalised posteriors). With X the k×d design, noise y = Xw + σε:

    Gaussian prior w ~ N(μ, Σ):   Σ_post = (Σ⁻¹ + XᵀX/σ²)⁻¹,  μ_post = Σ_post (Σ⁻¹μ + Xᵀy/σ²)
                                  predictive  y_q | D ~ N(x_qᵀμ_post, σ² + x_qᵀ Σ_post x_q)
                                  (μ = 0, Σ = τ² I: ridge with λ = σ²/τ²)
    GMM prior Σ_c π_c N(μ_c, Σ):  E[w | D] = Σ_c r_c μ_post,c,   r_c ∝ π_c N(y; Xμ_c, XΣXᵀ + σ²I)
    Gaussian families Σ_c π_c N(μ_c, Σ_c)  (covariances may differ and be singular; kernel form):
                                  μ_post,c = μ_c + Σ_c Xᵀ K_c⁻¹ (y − Xμ_c),   K_c = XΣ_cXᵀ + σ²I
                                  E[w | D] = Σ_c r_c μ_post,c,   r_c ∝ π_c N(y; Xμ_c, K_c)  (log det kept)
    finite pool {w_m} (uniform):  E[w | D] = Σ_m r_m w_m,       r_m = softmax_m(−‖y − X w_m‖² / 2σ²)
                                  (the discrete MMSE, "dMMSE")

`prefix_bayes(f, x, y, xq, **prior)` evaluates any of them in float64 for every prompt b and
every prefix length k = 0..N−1 (jitted, vmapped over prompts and k), exactly like
`ictl.baselines.prefix_predictions` but with the prior's arrays as traced arguments.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def _masked(x_Nxd, y_N, mask_N):
    return x_Nxd * mask_N[:, None], y_N * mask_N


def gaussian_posterior(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"], *,
                       noise_var, prior_mean_d=None, prior_cov_dxd=None):
    """(μ_post [d], Σ_post [d, d]) for w ~ N(μ, Σ) (default N(0, I)) and y = Xw + σε, σ² = noise_var > 0."""
    xm_Nxd, ym_N = _masked(x_Nxd, y_N, mask_N)
    d = x_Nxd.shape[1]
    eye = jnp.eye(d, dtype=x_Nxd.dtype)
    prec_dxd = eye if prior_cov_dxd is None else jnp.linalg.inv(prior_cov_dxd)
    mu_d = jnp.zeros(d, x_Nxd.dtype) if prior_mean_d is None else prior_mean_d
    a_dxd = prec_dxd + xm_Nxd.T @ xm_Nxd / noise_var
    cov_dxd = jnp.linalg.inv(a_dxd)
    cov_dxd = 0.5 * (cov_dxd + cov_dxd.T)
    mean_d = cov_dxd @ (prec_dxd @ mu_d + xm_Nxd.T @ ym_N / noise_var)
    return mean_d, cov_dxd


def gaussian_predictive(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"],
                        xq_d: Float[Array, "d"], *, noise_var, prior_mean_d=None, prior_cov_dxd=None):
    """Posterior predictive (mean x_qᵀμ_post, variance σ² + x_qᵀ Σ_post x_q) of y_q."""
    mean_d, cov_dxd = gaussian_posterior(x_Nxd, y_N, mask_N, noise_var=noise_var, prior_mean_d=prior_mean_d,
                                         prior_cov_dxd=prior_cov_dxd)
    return xq_d @ mean_d, noise_var + xq_d @ cov_dxd @ xq_d


def gaussian_posterior_mean(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"],
                            xq_d: Float[Array, "d"], *, noise_var, prior_mean_d=None,
                            prior_cov_dxd=None) -> Float[Array, ""]:
    """ŷ = x_qᵀ E[w | D] under the Gaussian prior (= ridge with λ = σ² for N(0, I))."""
    return gaussian_predictive(x_Nxd, y_N, mask_N, xq_d, noise_var=noise_var, prior_mean_d=prior_mean_d,
                               prior_cov_dxd=prior_cov_dxd)[0]


def gmm_responsibilities(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"], *,
                         means_Cxd: Float[Array, "C d"], noise_var, prior_cov_dxd=None,
                         log_weights_C=None) -> Float[Array, "C"]:
    """r_c = P(component c | D) ∝ π_c N(y; Xμ_c, XΣXᵀ + σ²I) (masked rows: a common constant)."""
    xm_Nxd, ym_N = _masked(x_Nxd, y_N, mask_N)
    N, d = x_Nxd.shape
    cov = jnp.eye(d, dtype=x_Nxd.dtype) if prior_cov_dxd is None else prior_cov_dxd
    k_NxN = xm_Nxd @ cov @ xm_Nxd.T + noise_var * jnp.eye(N, dtype=x_Nxd.dtype)
    chol_NxN = jnp.linalg.cholesky(k_NxN)
    res_CxN = ym_N[None, :] - means_Cxd @ xm_Nxd.T
    z_NxC = jax.scipy.linalg.solve_triangular(chol_NxN, res_CxN.T, lower=True)
    loglik_C = -0.5 * jnp.sum(jnp.square(z_NxC), axis=0)        # log det and 2π: equal for all c
    C = means_Cxd.shape[0]
    logw_C = jnp.full((C,), -jnp.log(C), x_Nxd.dtype) if log_weights_C is None else log_weights_C
    return jax.nn.softmax(logw_C + loglik_C)


def gmm_posterior_mean(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"],
                       xq_d: Float[Array, "d"], *, means_Cxd: Float[Array, "C d"], noise_var, prior_cov_dxd=None,
                       log_weights_C=None) -> Float[Array, ""]:
    """ŷ = x_qᵀ Σ_c r_c μ_post,c for the prior Σ_c π_c N(μ_c, Σ) (Panwar: ½N(±3e₁, I))."""
    r_C = gmm_responsibilities(x_Nxd, y_N, mask_N, means_Cxd=means_Cxd, noise_var=noise_var,
                               prior_cov_dxd=prior_cov_dxd, log_weights_C=log_weights_C)
    post = jax.vmap(lambda mu_d: gaussian_posterior(x_Nxd, y_N, mask_N, noise_var=noise_var, prior_mean_d=mu_d,
                                                    prior_cov_dxd=prior_cov_dxd)[0])
    return xq_d @ (r_C @ post(means_Cxd))


def family_log_evidence(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"], *,
                        means_Cxd: Float[Array, "C d"], covs_CxDxD: Float[Array, "C d d"],
                        noise_var) -> Float[Array, "C"]:
    """log N(y; Xμ_c, XΣ_cXᵀ + σ²I) per Gaussian family c, up to one constant common to all c.

    The masked rows (X and y zero there) contribute the block σ²I and a zero residual: the same
    −½(N − k) log(2πσ²) for every c, which is dropped together with −(k/2) log 2π.
    """
    xm_Nxd, ym_N = _masked(x_Nxd, y_N, mask_N)
    N = x_Nxd.shape[0]

    def one(mu_d, cov_dxd):
        k_NxN = xm_Nxd @ cov_dxd @ xm_Nxd.T + noise_var * jnp.eye(N, dtype=x_Nxd.dtype)
        chol_NxN = jnp.linalg.cholesky(k_NxN)
        z_N = jax.scipy.linalg.solve_triangular(chol_NxN, ym_N - xm_Nxd @ mu_d, lower=True)
        return -0.5 * jnp.sum(jnp.square(z_N)) - jnp.sum(jnp.log(jnp.diagonal(chol_NxN)))

    return jax.vmap(one)(means_Cxd, covs_CxDxD)


def family_responsibilities(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"], *,
                            means_Cxd: Float[Array, "C d"], covs_CxDxD: Float[Array, "C d d"], noise_var,
                            log_weights_C=None) -> Float[Array, "C"]:
    """r_c = P(family c | D) ∝ π_c N(y; Xμ_c, XΣ_cXᵀ + σ²I) (π uniform by default)."""
    C = means_Cxd.shape[0]
    logw_C = jnp.full((C,), -jnp.log(C), x_Nxd.dtype) if log_weights_C is None else log_weights_C
    return jax.nn.softmax(logw_C + family_log_evidence(x_Nxd, y_N, mask_N, means_Cxd=means_Cxd,
                                                       covs_CxDxD=covs_CxDxD, noise_var=noise_var))


def family_posterior_mean(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"],
                          xq_d: Float[Array, "d"], *, means_Cxd: Float[Array, "C d"],
                          covs_CxDxD: Float[Array, "C d d"], noise_var, log_weights_C=None) -> Float[Array, ""]:
    """ŷ = x_qᵀ Σ_c r_c μ_post,c for a mixture of Gaussian task families Σ_c π_c N(μ_c, Σ_c).

    μ_post,c = μ_c + Σ_c Xᵀ(XΣ_cXᵀ + σ²I)⁻¹(y − Xμ_c) (the N×N form: Σ_c may be singular, e.g. a
    family supported on a subspace). C = 1 is one family's posterior mean; equal Σ_c give
    `gmm_posterior_mean`.
    """
    xm_Nxd, ym_N = _masked(x_Nxd, y_N, mask_N)
    N = x_Nxd.shape[0]
    r_C = family_responsibilities(x_Nxd, y_N, mask_N, means_Cxd=means_Cxd, covs_CxDxD=covs_CxDxD,
                                  noise_var=noise_var, log_weights_C=log_weights_C)

    def post(mu_d, cov_dxd):
        # Cholesky solves (a vmapped LU `jnp.linalg.solve` stalled on CPU beyond ≈ 40k systems)
        k_NxN = xm_Nxd @ cov_dxd @ xm_Nxd.T + noise_var * jnp.eye(N, dtype=x_Nxd.dtype)
        chol_NxN = jnp.linalg.cholesky(k_NxN)
        z_N = jax.scipy.linalg.solve_triangular(chol_NxN, ym_N - xm_Nxd @ mu_d, lower=True)
        a_N = jax.scipy.linalg.solve_triangular(chol_NxN.T, z_N, lower=False)
        return mu_d + cov_dxd @ xm_Nxd.T @ a_N

    return xq_d @ (r_C @ jax.vmap(post)(means_Cxd, covs_CxDxD))


def dmmse_weights(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"], *,
                  pool_Mxd: Float[Array, "M d"], noise_var) -> Float[Array, "M"]:
    """r_m = softmax_m(−‖m ⊙ (y − X w_m)‖² / 2σ²): the posterior over a uniform finite pool."""
    xm_Nxd, ym_N = _masked(x_Nxd, y_N, mask_N)
    res_MxN = ym_N[None, :] - pool_Mxd @ xm_Nxd.T
    return jax.nn.softmax(-0.5 * jnp.sum(jnp.square(res_MxN), axis=1) / noise_var)


def dmmse_posterior_mean(x_Nxd: Float[Array, "N d"], y_N: Float[Array, "N"], mask_N: Float[Array, "N"],
                         xq_d: Float[Array, "d"], *, pool_Mxd: Float[Array, "M d"], noise_var) -> Float[Array, ""]:
    """ŷ = x_qᵀ Σ_m r_m w_m (discrete MMSE over the pool)."""
    return xq_d @ (dmmse_weights(x_Nxd, y_N, mask_N, pool_Mxd=pool_Mxd, noise_var=noise_var) @ pool_Mxd)


@functools.partial(jax.jit, static_argnums=0)
def _prefix(f, x_BxNxd, y_BxN, xq_BxNxd, prior):
    N = x_BxNxd.shape[1]
    mask_NxN = (jnp.arange(N)[None, :] < jnp.arange(N)[:, None]).astype(y_BxN.dtype)  # row k: n < k

    def one(x_Nxd, y_N, mask_N, xq_d):
        return f(x_Nxd, y_N, mask_N, xq_d, **prior)

    per_prompt = jax.vmap(one, in_axes=(None, None, 0, 0))
    return jax.vmap(per_prompt, in_axes=(0, 0, None, 0))(x_BxNxd, y_BxN, mask_NxN, xq_BxNxd)


def prefix_bayes(
    f: Callable,
    x_BxNxd: Float[Array, "B N d"],
    y_BxN: Float[Array, "B N"],
    xq_BxNxd: Float[Array, "B N d"] | None = None,
    **prior,
):
    """ŷ[b, k] = f(x_b, y_b, 1[n < k], xq_b,k, **prior) for all b and k = 0..N−1, in float64.

    ``prior`` holds arrays (pool, means, covariances) and floats (noise_var); they are traced,
    so a new pool does not recompile. Returns a float64 numpy array [B, N] (one output per k; a
    function returning a tuple, like `gaussian_predictive`, gives a tuple of arrays).
    """
    with jax.enable_x64(True):
        cast = lambda a: jnp.asarray(np.asarray(a), jnp.float64)  # noqa: E731
        x = cast(x_BxNxd)
        xq = x if xq_BxNxd is None else cast(xq_BxNxd)
        out = _prefix(f, x, cast(y_BxN), xq, {k: cast(v) for k, v in prior.items() if v is not None})
        return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)
