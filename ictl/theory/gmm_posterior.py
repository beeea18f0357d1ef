"""Exact Bayes for a Gaussian-mixture prior and a linear-Gaussian likelihood, in float64.

Prior p(θ) = Σ_k π_k N(θ; μ_k, Σ_k), θ ∈ R^d; n i.i.d. observations y_i = Hθ + ε_i, ε_i ~ N(0, R),
y_i ∈ R^m. With ȳ = (1/n) Σ_i y_i the likelihood factorises (expand Σ_i ‖y_i − Hθ‖²_{R⁻¹} around ȳ):

    Π_i N(y_i; Hθ, R) = N(ȳ; Hθ, R/n) · c(y),
    log c(y) = −½ Σ_i (y_i − ȳ)ᵀR⁻¹(y_i − ȳ) − (n−1)m/2 log 2π − (n−1)/2 log|R| − m/2 log n,

c(y) being the within-sample term: it does not depend on θ or k. Each component then meets one
Gaussian observation ȳ with noise R/n, so (Kalman form, S_k = HΣ_kHᵀ + R/n, K_k = Σ_kHᵀS_k⁻¹)

    μ'_k = μ_k + K_k(ȳ − Hμ_k),   Σ'_k = Σ_k − K_k S_k K_kᵀ = (Σ_k⁻¹ + n HᵀR⁻¹H)⁻¹,
    log π'_k = log π_k + log N(ȳ; Hμ_k, S_k) − log Σ_j π_j N(ȳ; Hμ_j, S_j),
    log p(y_1..y_n) = log c(y) + log Σ_k π_k N(ȳ; Hμ_k, S_k).

The posterior of a GMM prior is again a GMM with the same K, so updating with n observations at
once equals n one-observation updates in sequence (evidences add: the chain rule).
Linear-Gaussian dynamics θ_t = Fθ_{t−1} + w, w ~ N(0, Q) map a GMM to a GMM component-wise
(predict: μ ↦ Fμ, Σ ↦ FΣFᵀ + Q, weights kept), so the exact filter for a GMM initial state is a
bank of K Kalman filters whose weights are re-weighted by their predictive likelihoods
N(y_t; Hμ_k⁻, HΣ_k⁻Hᵀ + R) (`gmm_filter`). KL(q‖p) between mixtures has no closed form:
`kl_mc` averages log q(θ) − log p(θ) over θ ~ q and returns the MC standard error too.

Functions take one GMM (weights [K], means [K, d], covs [K, d, d]) or a batch of B of them
(weights [B, K], ...; y [B, n, m]), compute in jitted float64 and return NumPy float64 arrays;
concrete inputs are checked (ValueError naming the argument), traced ones are not. Hand-written because no library in the stack (scipy, tfp is not installed)
has a mixture-of-Gaussians Bayes update; the algebra is the textbook Kalman update.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

LOG2PI = math.log(2 * math.pi)


class FilterResult(NamedTuple):
    """Filtered GMMs after each step t = 1..T and log p(y_t | y_{1:t−1}) per step."""

    weights_TxK: Array
    means_TxKxd: Array
    covs_TxKxdxd: Array
    log_pred_T: Array


# ----------------------------------------------------------------------------- checks


def _concrete(x):
    """NumPy float64 copy of a concrete array, None for a tracer (checks are skipped under jit)."""
    try:
        return np.asarray(x, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_spd(name: str, S, *, size: int | None = None) -> None:
    """ValueError unless S (…, s, s) is symmetric positive definite (every matrix of a stack)."""
    a = _concrete(S)
    if a is None:
        return
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or (size is not None and a.shape[-1] != size):
        want = "a square matrix" if size is None else f"{size}×{size} matrices"
        raise ValueError(f"{name}: allowed {want}; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: allowed finite values")
    scale = max(float(np.abs(a).max()), 1e-300)
    if not np.allclose(a, np.swapaxes(a, -1, -2), rtol=0, atol=1e-6 * scale):
        raise ValueError(f"{name}: allowed symmetric matrices; got an asymmetric one")
    if np.min(np.linalg.eigvalsh(0.5 * (a + np.swapaxes(a, -1, -2)))) <= 0:
        raise ValueError(f"{name}: allowed positive definite matrices; got an eigenvalue <= 0")


def check_gmm(weights, means, covs) -> tuple[int, int]:
    """Checks a GMM (or a batch of them); returns (K, d). ValueError names the argument."""
    w, mu = _concrete(weights), _concrete(means)
    cv = np.shape(covs)
    if np.ndim(weights) not in (1, 2):
        raise ValueError(f"weights: allowed shape [K] or [B, K]; got {np.shape(weights)}")
    K = np.shape(weights)[-1]
    if K < 1:
        raise ValueError(f"weights: allowed K >= 1 components; got K={K}")
    lead = np.shape(weights)[:-1]
    if np.ndim(means) != len(lead) + 2 or np.shape(means)[:-1] != (*lead, K):
        raise ValueError(f"means: allowed shape {(*lead, K, 'd')} matching weights {np.shape(weights)}; "
                         f"got {np.shape(means)}")
    d = np.shape(means)[-1]
    if d < 1:
        raise ValueError(f"means: allowed d >= 1; got shape {np.shape(means)}")
    if tuple(cv) != (*lead, K, d, d):
        raise ValueError(f"covs: allowed shape {(*lead, K, d, d)}; got {tuple(cv)}")
    if w is not None:
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights: allowed non-negative finite numbers; got a negative or non-finite weight")
        s = w.sum(-1)
        if np.any(np.abs(s - 1) > 1e-5):
            raise ValueError(f"weights: allowed weights summing to 1 (±1e-5); got sums {np.unique(np.round(s, 6))[:4]}")
    if mu is not None and not np.all(np.isfinite(mu)):
        raise ValueError("means: allowed finite numbers")
    check_spd("covs", covs)
    return K, d


def check_linear_gaussian(d: int, *, H, R) -> int:
    """Checks H [m, d] and R [m, m] SPD; returns m."""
    if np.ndim(H) != 2 or np.shape(H)[1] != d:
        raise ValueError(f"H: allowed shape [m, d] with d={d} (the state width of means); got {np.shape(H)}")
    m = np.shape(H)[0]
    if m < 1:
        raise ValueError(f"H: allowed m >= 1 rows; got shape {np.shape(H)}")
    if np.shape(R) != (m, m):
        raise ValueError(f"R: allowed shape [m, m] = {(m, m)} matching H {np.shape(H)}; got {np.shape(R)}")
    check_spd("R", R)
    return m


def _check_y(y, m: int, lead: tuple) -> None:
    if np.ndim(y) != len(lead) + 2 or np.shape(y)[:-2] != lead or np.shape(y)[-1] != m:
        raise ValueError(f"y: allowed shape {(*lead, 'n', m)} (n observations of width m={m} from H); "
                         f"got {np.shape(y)}")
    a = _concrete(y)
    if a is not None and not np.all(np.isfinite(a)):
        raise ValueError("y: allowed finite numbers")


def _np(tree):
    """Outputs as NumPy float64: a jax float64 array used outside enable_x64 would silently drop to float32."""
    return jax.tree.map(lambda a: np.asarray(a), tree)


def _f64(*xs):
    return tuple(jnp.asarray(x, jnp.float64) for x in xs)


def _jitted(fn, n_batched: int, n_args: int):
    """(jit(fn), jit(vmap(fn))) with the vmap over the leading axis of the first ``n_batched`` arguments."""
    return jax.jit(fn), jax.jit(jax.vmap(fn, in_axes=(0,) * n_batched + (None,) * (n_args - n_batched)))


# ----------------------------------------------------------------------------- single-GMM kernels


def _mvn_logpdf_chol(x_m, mean_m, chol_mxm):
    z = jax.scipy.linalg.solve_triangular(chol_mxm, x_m - mean_m, lower=True)
    return -0.5 * z @ z - jnp.sum(jnp.log(jnp.diag(chol_mxm))) - 0.5 * x_m.shape[0] * LOG2PI


def _update_component(mu_d, cov_dxd, ybar_m, H_mxd, Rn_mxm):
    S_mxm = H_mxd @ cov_dxd @ H_mxd.T + Rn_mxm
    S_mxm = 0.5 * (S_mxm + S_mxm.T)
    chol = jnp.linalg.cholesky(S_mxm)
    HS_mxd = H_mxd @ cov_dxd                                   # (ΣHᵀ)ᵀ
    Kt_mxd = jax.scipy.linalg.cho_solve((chol, True), HS_mxd)  # K_kᵀ = S⁻¹HΣ
    mu_new = mu_d + Kt_mxd.T @ (ybar_m - H_mxd @ mu_d)
    cov_new = cov_dxd - Kt_mxd.T @ HS_mxd
    cov_new = 0.5 * (cov_new + cov_new.T)
    return mu_new, cov_new, _mvn_logpdf_chol(ybar_m, H_mxd @ mu_d, chol)


def _posterior_one(w_K, mu_Kxd, cov_Kxdxd, y_nxm, H_mxd, R_mxm):
    n, m = y_nxm.shape
    ybar_m = jnp.mean(y_nxm, axis=0)
    mu, cov, loglik_K = jax.vmap(_update_component, (0, 0, None, None, None))(mu_Kxd, cov_Kxdxd, ybar_m, H_mxd,
                                                                              R_mxm / n)
    logw_K = jnp.log(w_K) + loglik_K
    lse = jax.scipy.special.logsumexp(logw_K)
    r_nxm = y_nxm - ybar_m[None, :]
    cR = jnp.linalg.cholesky(R_mxm)
    z = jax.scipy.linalg.solve_triangular(cR, r_nxm.T, lower=True)
    log_c = (-0.5 * jnp.sum(z * z) - 0.5 * (n - 1) * m * LOG2PI - (n - 1) * jnp.sum(jnp.log(jnp.diag(cR)))
             - 0.5 * m * jnp.log(n))
    return jnp.exp(logw_K - lse), mu, cov, lse + log_c


def _predict_one(w_K, mu_Kxd, cov_Kxdxd, F_dxd, Q_dxd):
    cov = jnp.einsum("ij,kjl,ml->kim", F_dxd, cov_Kxdxd, F_dxd) + Q_dxd[None]
    return w_K, mu_Kxd @ F_dxd.T, 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


def _logpdf_one(w_K, mu_Kxd, cov_Kxdxd, x_Sxd):
    chol = jnp.linalg.cholesky(cov_Kxdxd)
    lp_SxK = jax.vmap(jax.vmap(_mvn_logpdf_chol, (None, 0, 0)), (0, None, None))(x_Sxd, mu_Kxd, chol)
    return jax.scipy.special.logsumexp(lp_SxK + jnp.log(w_K)[None, :], axis=-1)


def _sample_one(key, w_K, mu_Kxd, cov_Kxdxd, n):
    kc, kz = jax.random.split(key)
    comp_S = jax.random.categorical(kc, jnp.log(w_K), shape=(n,))
    z_Sxd = jax.random.normal(kz, (n, mu_Kxd.shape[-1]), jnp.float64)
    chol = jnp.linalg.cholesky(cov_Kxdxd)
    return mu_Kxd[comp_S] + jnp.einsum("sij,sj->si", chol[comp_S], z_Sxd)


_POSTERIOR = _jitted(_posterior_one, 4, 6)
_PREDICT = _jitted(_predict_one, 3, 5)
_LOGPDF = _jitted(_logpdf_one, 4, 4)
def _filter_one(w_K, mu_Kxd, cov_Kxdxd, ys_Txnxm, F_dxd, Q_dxd, H_mxd, R_mxm):
    def step(carry, y_nxm):
        pw, pmu, pcov = _predict_one(*carry, F_dxd, Q_dxd)
        nw, nmu, ncov, lp = _posterior_one(pw, pmu, pcov, y_nxm, H_mxd, R_mxm)
        return (nw, nmu, ncov), (nw, nmu, ncov, lp)

    return jax.lax.scan(step, (w_K, mu_Kxd, cov_Kxdxd), ys_Txnxm)[1]


_FILTER = jax.jit(_filter_one), jax.jit(jax.vmap(_filter_one, (None, None, None, 0, None, None, None, None)))
_SAMPLE = jax.jit(_sample_one, static_argnums=4), jax.jit(jax.vmap(_sample_one, (0, 0, 0, 0, None)), static_argnums=4)


# ----------------------------------------------------------------------------- public functions


def gmm_posterior(weights: Float[Array, "*B K"], means: Float[Array, "*B K d"], covs: Float[Array, "*B K d d"],
                  y: Float[Array, "*B n m"], *, H: Float[Array, "m d"], R: Float[Array, "m m"]):
    """(weights', means', covs', log p(y_1..y_n)) of the module docstring, float64.

    n = 0 observations returns the prior and log evidence 0.
    """
    K, d = check_gmm(weights, means, covs)
    m = check_linear_gaussian(d, H=H, R=R)
    lead = np.shape(weights)[:-1]
    _check_y(y, m, lead)
    with jax.enable_x64(True):
        w, mu, cov, yy, H_, R_ = _f64(weights, means, covs, y, H, R)
        if np.shape(y)[-2] == 0:
            return _np((w, mu, cov, jnp.zeros(lead, jnp.float64)))
        return _np(_POSTERIOR[bool(lead)](w, mu, cov, yy, H_, R_))


def gmm_predict(weights: Float[Array, "*B K"], means: Float[Array, "*B K d"], covs: Float[Array, "*B K d d"], *,
                F: Float[Array, "d d"], Q: Float[Array, "d d"]):
    """Linear-Gaussian predict step: (weights, Fμ_k, FΣ_kFᵀ + Q), float64."""
    K, d = check_gmm(weights, means, covs)
    if np.shape(F) != (d, d):
        raise ValueError(f"F: allowed shape {(d, d)} (d from means); got {np.shape(F)}")
    check_spd("Q", Q, size=d)
    with jax.enable_x64(True):
        w, mu, cov, F_, Q_ = _f64(weights, means, covs, F, Q)
        return _np(_PREDICT[bool(np.shape(weights)[:-1])](w, mu, cov, F_, Q_))


def gmm_filter(weights: Float[Array, "K"], means: Float[Array, "K d"], covs: Float[Array, "K d d"],
               ys: Float[Array, "*B T n m"], *, F: Float[Array, "d d"], Q: Float[Array, "d d"],
               H: Float[Array, "m d"], R: Float[Array, "m m"]) -> FilterResult:
    """Exact filter for θ_0 ~ GMM, θ_t = Fθ_{t−1} + N(0, Q), y_t,i = Hθ_t + N(0, R) (i = 1..n), t = 1..T:
    a bank of K Kalman filters (predict, then `gmm_posterior` with y_t) whose weights follow the
    predictive likelihoods. log_pred_T[t] = log p(y_t | y_{1:t−1}); their sum is log p(y_{1:T}).
    ys [B, T, n, m]: B trajectories filtered from the same prior (every output gets a leading B)."""
    K, d = check_gmm(weights, means, covs)
    if np.ndim(weights) != 1:
        raise ValueError(f"weights: allowed shape [K] (one GMM; vmap for a batch); got {np.shape(weights)}")
    m = check_linear_gaussian(d, H=H, R=R)
    if np.shape(F) != (d, d):
        raise ValueError(f"F: allowed shape {(d, d)} (d from means); got {np.shape(F)}")
    check_spd("Q", Q, size=d)
    if np.ndim(ys) not in (3, 4) or np.shape(ys)[-1] != m or np.shape(ys)[-2] < 1:
        raise ValueError(f"ys: allowed shape [T, n >= 1, m={m}] or [B, T, n, m]; got {np.shape(ys)}")
    with jax.enable_x64(True):
        args = _f64(weights, means, covs, ys, F, Q, H, R)
        return FilterResult(*_np(_FILTER[np.ndim(ys) == 4](*args)))


def gmm_logpdf(weights: Float[Array, "*B K"], means: Float[Array, "*B K d"], covs: Float[Array, "*B K d d"],
               x: Float[Array, "*B S d"]) -> Float[Array, "*B S"]:
    """log Σ_k π_k N(x_s; μ_k, Σ_k) for each of S points, float64."""
    K, d = check_gmm(weights, means, covs)
    lead = np.shape(weights)[:-1]
    if np.ndim(x) != len(lead) + 2 or np.shape(x)[:-2] != lead or np.shape(x)[-1] != d:
        raise ValueError(f"x: allowed shape {(*lead, 'S', d)}; got {np.shape(x)}")
    with jax.enable_x64(True):
        return _np(_LOGPDF[bool(lead)](*_f64(weights, means, covs, x)))


def gmm_sample(key: jax.Array, weights: Float[Array, "*B K"], means: Float[Array, "*B K d"],
               covs: Float[Array, "*B K d d"], *, n: int) -> Float[Array, "*B n d"]:
    """n draws from the GMM (a component by its weight, then its Gaussian), float64."""
    check_gmm(weights, means, covs)
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n: allowed an integer >= 1; got {n!r}")
    lead = np.shape(weights)[:-1]
    with jax.enable_x64(True):
        w, mu, cov = _f64(weights, means, covs)
        if not lead:
            return _np(_SAMPLE[0](key, w, mu, cov, n))
        return _np(_SAMPLE[1](jax.random.split(key, lead[0]), w, mu, cov, n))


def kl_mc(key: jax.Array, q: tuple, p: tuple, *, n_samples: int = 1000):
    """Monte Carlo KL(q‖p) = E_{θ~q}[log q(θ) − log p(θ)] between GMMs q = (weights, means, covs) and p
    (one or a batch of B pairs); returns (kl, standard error), each [] or [B]."""
    if not (isinstance(n_samples, int) and n_samples >= 2):
        raise ValueError(f"n_samples: allowed an integer >= 2; got {n_samples!r}")
    if np.shape(q[0]) != np.shape(p[0]) or np.shape(q[1])[-1] != np.shape(p[1])[-1]:
        raise ValueError(f"p: allowed the same batch and state width as q; got weights {np.shape(p[0])} vs "
                         f"{np.shape(q[0])}, means {np.shape(p[1])} vs {np.shape(q[1])}")
    x = gmm_sample(key, *q, n=n_samples)
    diff = gmm_logpdf(*q, x) - gmm_logpdf(*p, x)
    return diff.mean(-1), diff.std(-1, ddof=1) / math.sqrt(n_samples)
