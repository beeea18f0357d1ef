"""Exact Gaussian-process references for the PFN experiments, float64.

Model: f ~ GP(0, k), y_i = f(x_i) + ε_i, ε_i ~ N(0, noise). Kernels (r² = Σ_j (x_j − x'_j)²/ℓ_j²,
``outputscale`` s is a variance, ``noise`` a variance, as in GPyTorch's ScaleKernel/GaussianLikelihood):

    rbf       k(x, x') = s · exp(−r²/2)
    matern52  k(x, x') = s · (1 + √5 r + 5r²/3) · exp(−√5 r)

Posterior predictive at x_q given n points (K = k(X, X) + noise·I = LLᵀ, w = L⁻¹y, v = L⁻¹k_q):

    mean = vᵀw,   var = s + noise − ‖v‖²          (var includes the observation noise)

log marginal likelihood  log p(y | X) = −½ ‖w‖² − Σ log L_ii − (n/2) log 2π.

`mask` (optional, [n] of 0/1) keeps only the masked-in rows: K_m = (mmᵀ) ⊙ K + diag(1 − m) + noise·diag(m)
and y ⊙ m give exactly the n' = Σm-point posterior and likelihood with static shapes (so prefix
curves over n compile once).

Type-II maximum likelihood (`fit_ml2`): Adam (optax) on −log p(y | X) over (log ℓ, log s,
log(noise − noise_floor)) from several starts, the best final value wins. Fully Bayesian (`nuts_samples`):
blackjax NUTS with window adaptation on the Gamma hyperprior `HyperPrior` (concentration α,
**rate** β — GPyTorch's ``GammaPrior(concentration, rate)``, which the PFN code uses), the
predictive being the equal-weight mixture over posterior samples (`mixture_log_prob`).

Gamma(α < 1) hyperparameters (the noise prior Γ(1e-4, 1) puts 99.9% of its mass below 1e-4) are
sampled in the exact "boost" parametrisation θ = G · U^{1/α}, G ~ Γ(α + 1, β), U = Φ(z), z ~ N(0, 1):
in (log G, z) the prior is smooth, where log θ itself has a near-flat density over thousands of
nats that NUTS cannot explore. The public functions enter ``jax.enable_x64(True)`` themselves.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import log_ndtr, ndtr
from jaxtyping import Array, Float

KERNELS = ("rbf", "matern52")
_SQRT5 = math.sqrt(5.0)


class HyperPrior(NamedTuple):
    """Independent Gamma(concentration, rate) priors; noise = noise_floor + Γ-draw; one ℓ per input dim (ARD)."""

    kernel: str = "matern52"
    lengthscale: tuple[float, float] = (3.0, 6.0)
    outputscale: tuple[float, float] = (2.0, 0.15)
    noise: tuple[float, float] = (1e-4, 1.0)
    noise_floor: float = 1e-4


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel: got {kernel!r}; allowed {KERNELS}")


def _concrete(value):
    """value as a numpy array, or None when it is traced (inside jit/vmap: not checkable)."""
    try:
        return np.asarray(value, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_positive(name: str, value) -> None:
    """ValueError for a concrete non-positive or NaN value (traced values are not checked)."""
    v = _concrete(value)
    if v is not None and not np.all(v > 0):
        got = repr(value) if v.ndim == 0 else f"an array with minimum {np.nanmin(v) if np.any(~np.isnan(v)) else 'NaN'}"
        raise ValueError(f"{name}: got {got}; allowed values > 0")


def check_hyperprior(prior: HyperPrior) -> None:
    check_kernel(prior.kernel)
    for name in ("lengthscale", "outputscale", "noise"):
        a, b = getattr(prior, name)
        if not (a > 0 and b > 0):
            raise ValueError(f"hyperprior.{name}: got {(a, b)!r}; allowed (concentration > 0, rate > 0)")
    if not prior.noise_floor >= 0:
        raise ValueError(f"hyperprior.noise_floor: got {prior.noise_floor!r}; allowed >= 0")


# ----------------------------------------------------------------------------- kernels
def kernel_matrix(x1: Float[Array, "n d"], x2: Float[Array, "m d"], *, kernel: str, lengthscale,
                  outputscale) -> Float[Array, "n m"]:
    """k(x1_i, x2_j); ``lengthscale`` scalar or [d] (ARD), ``outputscale`` scalar (a variance)."""
    check_kernel(kernel)
    ls = jnp.broadcast_to(jnp.asarray(lengthscale, x1.dtype), (x1.shape[-1],))
    a, b = x1 / ls[None, :], x2 / ls[None, :]
    # squared distances from explicit differences: the a² + b² − 2ab form loses PSD-ness in float32
    r2 = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
    if kernel == "rbf":
        return outputscale * jnp.exp(-0.5 * r2)
    r = jnp.sqrt(r2 + 1e-30)  # finite gradient at r = 0
    return outputscale * (1 + _SQRT5 * r + (5.0 / 3.0) * r2) * jnp.exp(-_SQRT5 * r)


def _chol_parts(x, y, mask, *, kernel, lengthscale, outputscale, noise, rhs=None):
    """(L, L⁻¹ y_m, L⁻¹ rhs, m): one Cholesky and one triangular solve with the right-hand sides
    stacked, a strictly sequential chain (two independent batched LAPACK calls running at once
    deadlocked jaxlib 0.10.2's 2-thread CPU pool; see ictl/tasks/gp_prior.py)."""
    n = x.shape[0]
    m = jnp.ones(n, x.dtype) if mask is None else jnp.asarray(mask, x.dtype)
    k = kernel_matrix(x, x, kernel=kernel, lengthscale=lengthscale, outputscale=outputscale)
    k = k * (m[:, None] * m[None, :]) + jnp.diag(1 - m + noise * m)
    chol = jnp.linalg.cholesky(k)
    b = (y * m)[:, None] if rhs is None else jnp.concatenate([(y * m)[:, None], rhs], axis=1)
    sol = jax.scipy.linalg.solve_triangular(chol, b, lower=True)
    return chol, sol[:, 0], sol[:, 1:], m


def _predict_one(x, y, xq, mask, kernel, lengthscale, outputscale, noise):
    m = jnp.ones(x.shape[0], x.dtype) if mask is None else jnp.asarray(mask, x.dtype)
    kq = kernel_matrix(x, xq, kernel=kernel, lengthscale=lengthscale, outputscale=outputscale) * m[:, None]
    _, w, v, _ = _chol_parts(x, y, m, kernel=kernel, lengthscale=lengthscale, outputscale=outputscale, noise=noise,
                             rhs=kq)
    mean = v.T @ w                                     # k_qᵀ K⁻¹ y = (L⁻¹k_q)ᵀ (L⁻¹y)
    var = outputscale + noise - jnp.sum(v * v, axis=0)
    return mean, jnp.maximum(var, noise)


def _lml_one(x, y, mask, kernel, lengthscale, outputscale, noise):
    chol, w, _, m = _chol_parts(x, y, mask, kernel=kernel, lengthscale=lengthscale, outputscale=outputscale,
                                noise=noise)
    return (-0.5 * jnp.dot(w, w) - jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * jnp.sum(m) * math.log(2 * math.pi))


def _f64(*arrays):
    return tuple(jnp.asarray(np.asarray(a) if not isinstance(a, jax.Array) else a, jnp.float64) for a in arrays)


def _flat_batch(x, y, mask, hypers=None):
    """x [*B, n, d] → [nb, n, d]; y, mask → [nb, n] (mask of ones when None); hypers → [nb, d], [nb], [nb]."""
    batch, (n, d) = x.shape[:-2], x.shape[-2:]
    nb = int(np.prod(batch, dtype=np.int64))
    if y.shape != batch + (n,):
        raise ValueError(f"y: got shape {y.shape}; allowed {batch + (n,)} (x is {x.shape})")
    yc = _concrete(y)
    if yc is not None and not np.all(np.isfinite(yc)):
        raise ValueError("y: got NaN or infinite values; allowed finite observations")
    m = jnp.ones(batch + (n,), jnp.float64) if mask is None else jnp.broadcast_to(jnp.asarray(mask, jnp.float64),
                                                                                   batch + (n,))
    out = [batch, x.reshape(nb, n, d), y.reshape(nb, n), m.reshape(nb, n)]
    if hypers is not None:
        ls, s, nz = hypers
        out.append(jnp.broadcast_to(jnp.asarray(ls, jnp.float64), batch + (d,)).reshape(nb, d))
        out += [jnp.broadcast_to(jnp.asarray(v, jnp.float64), batch).reshape(nb) for v in (s, nz)]
    return out


@functools.partial(jax.jit, static_argnames=("kernel",))
def _predict_batch(x, y, xq, m, ls, s, nz, *, kernel):
    return jax.vmap(lambda *a: _predict_one(*a[:4], kernel, *a[4:]))(x, y, xq, m, ls, s, nz)


@functools.partial(jax.jit, static_argnames=("kernel",))
def _lml_batch(x, y, m, ls, s, nz, *, kernel):
    return jax.vmap(lambda *a: _lml_one(*a[:3], kernel, *a[3:]))(x, y, m, ls, s, nz)


def _check_hypers(lengthscale, outputscale, noise):
    for name, v in (("lengthscale", lengthscale), ("outputscale", outputscale), ("noise", noise)):
        _check_positive(name, v)


def posterior_predictive(x_ctx: Float[Array, "*B n d"], y_ctx: Float[Array, "*B n"], x_q: Float[Array, "*B q d"], *,
                         kernel: str, lengthscale, outputscale, noise, mask=None):
    """(mean, var) [*B, q] of y at x_q given (x_ctx, y_ctx), float64; var includes ``noise``.

    Leading batch dims *B are vmapped; ``lengthscale`` broadcasts to [*B, d] (a scalar, a shared
    ARD vector [d], or per dataset [*B, 1] / [*B, d]), ``outputscale`` and ``noise`` to [*B].
    ``mask`` [*B, n] (0/1) keeps a subset of the context (static shapes). n = 0 gives the prior.
    """
    check_kernel(kernel)
    _check_hypers(lengthscale, outputscale, noise)
    with jax.enable_x64(True):
        x_ctx, y_ctx, x_q = _f64(x_ctx, y_ctx, x_q)
        if x_ctx.ndim < 2 or x_q.shape[:-2] != x_ctx.shape[:-2] or x_q.shape[-1] != x_ctx.shape[-1]:
            raise ValueError(f"x_ctx/x_q: got shapes {x_ctx.shape}/{x_q.shape}; allowed [*B, n, d] / [*B, q, d]")
        batch, x, y, m, ls, s, nz = _flat_batch(x_ctx, y_ctx, mask, (lengthscale, outputscale, noise))
        xq = x_q.reshape((x.shape[0],) + x_q.shape[-2:])
        if x.shape[1] == 0:  # no context: the prior predictive N(0, s + noise)
            mean, var = jnp.zeros(xq.shape[:2]), jnp.broadcast_to((s + nz)[:, None], xq.shape[:2])
        else:
            mean, var = _predict_batch(x, y, xq, m, ls, s, nz, kernel=kernel)
        return mean.reshape(batch + mean.shape[1:]), var.reshape(batch + var.shape[1:])


def log_marginal_likelihood(x: Float[Array, "*B n d"], y: Float[Array, "*B n"], *, kernel: str, lengthscale,
                            outputscale, noise, mask=None) -> Float[Array, "*B"]:
    """log p(y | X, θ) [*B], float64 (same broadcasting and ``mask`` as `posterior_predictive`)."""
    check_kernel(kernel)
    _check_hypers(lengthscale, outputscale, noise)
    with jax.enable_x64(True):
        (x, y) = _f64(x, y)
        batch, xf, yf, m, ls, s, nz = _flat_batch(x, y, mask, (lengthscale, outputscale, noise))
        return _lml_batch(xf, yf, m, ls, s, nz, kernel=kernel).reshape(batch)


def gaussian_nll(mean, var, y):
    """−log N(y; mean, var), elementwise."""
    return 0.5 * (jnp.log(2 * jnp.pi * var) + jnp.square(y - mean) / var)


def expected_improvement(mean, var, best):
    """E[(Y − best)⁺] for Y ~ N(mean, var) (maximisation): σ (t Φ(t) + φ(t)), t = (μ − best)/σ."""
    sd = jnp.sqrt(var)
    t = (mean - best) / sd
    return sd * (t * ndtr(t) + jnp.exp(-0.5 * t * t) / math.sqrt(2 * math.pi))


def probability_of_improvement(mean, var, best):
    """P(Y > best) for Y ~ N(mean, var)."""
    return ndtr((mean - best) / jnp.sqrt(var))


# ----------------------------------------------------------------------------- type-II ML
class Hypers(NamedTuple):
    lengthscale: Float[Array, "*B d"]
    outputscale: Float[Array, "*B"]
    noise: Float[Array, "*B"]


@functools.partial(jax.jit, static_argnames=("kernel", "restarts", "steps", "lr", "noise_floor", "log_bounds"))
def _ml2_batch(keys, x, y, m, *, kernel, restarts, steps, lr, noise_floor, log_bounds):
    d = x.shape[-1]
    lo = jnp.array([math.log(0.05)] * d + [math.log(0.1), math.log(1e-6)])
    hi = jnp.array([math.log(10.0)] * d + [math.log(30.0), math.log(1.0)])
    # box in log space: ℓ, s within log_bounds; noise − floor within [e^−25, e^3] (down to ≈ the floor)
    box_lo = jnp.array([log_bounds[0]] * (d + 1) + [-25.0])
    box_hi = jnp.array([log_bounds[1]] * (d + 1) + [3.0])
    tx = optax.adam(lr)

    def unpack(th):
        return jnp.exp(th[:d]), jnp.exp(th[d]), noise_floor + jnp.exp(th[d + 1])

    def one(key, xx, yy, mm):
        def loss(th):
            return -_lml_one(xx, yy, mm, kernel, *unpack(th))

        def run(th):
            def body(carry, _):
                th, opt = carry
                upd, opt = tx.update(jax.grad(loss)(th), opt, th)
                return (jnp.clip(optax.apply_updates(th, upd), box_lo, box_hi), opt), None
            (th, _), _ = jax.lax.scan(body, (th, tx.init(th)), None, length=steps)
            return th, loss(th)

        theta0 = lo[None, :] + (hi - lo)[None, :] * jax.random.uniform(key, (restarts, d + 2), jnp.float64)
        thetas, losses = jax.vmap(run)(theta0)
        return unpack(thetas[jnp.argmin(jnp.where(jnp.isfinite(losses), losses, jnp.inf))])

    return jax.vmap(one)(keys, x, y, m)


def fit_ml2(key: jax.Array, x: Float[Array, "*B n d"], y: Float[Array, "*B n"], *, kernel: str, mask=None,
            restarts: int = 8, steps: int = 200, lr: float = 0.1, noise_floor: float = 1e-4,
            log_bounds: tuple[float, float] = (-7.0, 7.0)) -> Hypers:
    """Type-II maximum likelihood of (ℓ [d], s, noise) per dataset, float64, vmapped over *B.

    Adam on −log p(y|X) in θ = (log ℓ, log s, log(noise − noise_floor)), log ℓ and log s clipped to
    ``log_bounds`` and log(noise − floor) to [−25, 3] after every step; starts: log ℓ ~ U(log 0.05,
    log 10), log s ~ U(log 0.1, log 30), log(noise − floor) ~ U(log 1e-6, log 1); the start with the highest final likelihood wins.
    Returns Hypers with lengthscale [*B, d], outputscale [*B], noise [*B].
    """
    check_kernel(kernel)
    for name, v in (("restarts", restarts), ("steps", steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")
    with jax.enable_x64(True):
        (x, y) = _f64(x, y)
        batch, xf, yf, m = _flat_batch(x, y, mask)
        keys = jax.random.split(key, xf.shape[0])
        ls, s, nz = _ml2_batch(keys, xf, yf, m, kernel=kernel, restarts=restarts, steps=steps, lr=float(lr),
                               noise_floor=float(noise_floor), log_bounds=tuple(map(float, log_bounds)))
        return Hypers(ls.reshape(batch + ls.shape[1:]), s.reshape(batch), nz.reshape(batch))


# ----------------------------------------------------------------------------- NUTS (blackjax)
def _gamma_dims(alpha: float) -> int:
    return 1 if alpha >= 1 else 2


def _gamma_from_coords(c, alpha: float, rate: float):
    """(log θ, log prior density of the coordinates) for θ ~ Γ(alpha, rate) (module docstring)."""
    if alpha >= 1:
        u = c[0]
        return u, alpha * u - rate * jnp.exp(u)
    v, z = c[0], c[1]  # G = e^v ~ Γ(α + 1, rate), U = Φ(z)
    return v + log_ndtr(z) / alpha, (alpha + 1) * v - rate * jnp.exp(v) - 0.5 * z * z


def _unpack_prior(theta, prior: HyperPrior, d: int):
    i, logp, ls = 0, 0.0, []
    k = _gamma_dims(prior.lengthscale[0])
    for _ in range(d):
        lt, lp = _gamma_from_coords(theta[i:i + k], *prior.lengthscale)
        ls.append(lt)
        logp, i = logp + lp, i + k
    k = _gamma_dims(prior.outputscale[0])
    log_s, lp = _gamma_from_coords(theta[i:i + k], *prior.outputscale)
    logp, i = logp + lp, i + k
    k = _gamma_dims(prior.noise[0])
    log_g, lp = _gamma_from_coords(theta[i:i + k], *prior.noise)
    logp = logp + lp
    return jnp.exp(jnp.stack(ls)), jnp.exp(log_s), prior.noise_floor + jnp.exp(log_g), logp


def num_nuts_coords(prior: HyperPrior, d: int) -> int:
    return d * _gamma_dims(prior.lengthscale[0]) + _gamma_dims(prior.outputscale[0]) + _gamma_dims(prior.noise[0])


def _nuts_init(prior: HyperPrior, d: int):
    """Start: log ℓ = log s = log(mean) for α ≥ 1 coordinates, 0 elsewhere."""
    init = np.zeros(num_nuts_coords(prior, d))
    kl = _gamma_dims(prior.lengthscale[0])
    if kl == 1:
        init[:d] = math.log(prior.lengthscale[0] / prior.lengthscale[1])
    if _gamma_dims(prior.outputscale[0]) == 1:
        init[d * kl] = math.log(prior.outputscale[0] / prior.outputscale[1])
    return jnp.asarray(init, jnp.float64)


@functools.partial(jax.jit, static_argnames=("prior", "num_warmup", "num_samples"))
def _nuts_batch(keys, x, y, m, *, prior, num_warmup, num_samples):
    import blackjax

    d = x.shape[-1]

    def one(key, xx, yy, mm):
        def logdensity(theta):
            ls, s, nz, logp = _unpack_prior(theta, prior, d)
            return logp + _lml_one(xx, yy, mm, prior.kernel, ls, s, nz)

        k_warm, k_run = jax.random.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, params), _ = warmup.run(k_warm, _nuts_init(prior, d), num_steps=num_warmup)
        step = blackjax.nuts(logdensity, **params).step

        def body(st, k):
            st, _ = step(k, st)
            return st, st.position

        _, thetas = jax.lax.scan(body, state, jax.random.split(k_run, num_samples))
        ls, s, nz, _ = jax.vmap(lambda t: _unpack_prior(t, prior, d))(thetas)
        return ls, s, nz

    return jax.vmap(one)(keys, x, y, m)


def nuts_samples(key: jax.Array, x: Float[Array, "*B n d"], y: Float[Array, "*B n"], *, prior: HyperPrior,
                 mask=None, num_warmup: int = 200, num_samples: int = 100) -> Hypers:
    """``num_samples`` posterior draws per dataset of (ℓ [*B, S, d], s [*B, S], noise [*B, S]) by
    blackjax NUTS after a window adaptation of ``num_warmup`` steps (step size + diagonal mass
    matrix), float64, vmapped over *B."""
    check_hyperprior(prior)
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}; allowed an integer >= 1")
    with jax.enable_x64(True):
        (x, y) = _f64(x, y)
        batch, xf, yf, m = _flat_batch(x, y, mask)
        keys = jax.random.split(key, xf.shape[0])
        prior = HyperPrior(prior.kernel, *(tuple(map(float, getattr(prior, f))) for f in
                                           ("lengthscale", "outputscale", "noise")), float(prior.noise_floor))
        ls, s, nz = _nuts_batch(keys, xf, yf, m, prior=prior, num_warmup=num_warmup, num_samples=num_samples)
        return Hypers(ls.reshape(batch + ls.shape[1:]), s.reshape(batch + s.shape[1:]), nz.reshape(batch + nz.shape[1:]))


def mixture_predictive(samples: Hypers, x_ctx: Float[Array, "*B n d"], y_ctx: Float[Array, "*B n"],
                       x_q: Float[Array, "*B q d"], *, kernel: str, mask=None):
    """Per-sample predictive (mean, var) [*B, S, q] for hyperparameter samples [*B, S, ...], float64."""
    S = samples.outputscale.shape[-1]
    with jax.enable_x64(True):
        x_ctx, y_ctx, x_q = _f64(x_ctx, y_ctx, x_q)
        batch = x_ctx.shape[:-2]

        def rep(a, k):  # [*B, …k trailing dims] → [*B, S, …]
            return jnp.broadcast_to(jnp.expand_dims(a, a.ndim - k), batch + (S,) + a.shape[a.ndim - k:])

        m = None if mask is None else rep(jnp.broadcast_to(jnp.asarray(mask, jnp.float64), y_ctx.shape), 1)
        return posterior_predictive(rep(x_ctx, 2), rep(y_ctx, 1), rep(x_q, 2), kernel=kernel,
                                    lengthscale=samples.lengthscale, outputscale=samples.outputscale,
                                    noise=samples.noise, mask=m)


def mixture_log_prob(means: Float[Array, "*B S q"], vars_: Float[Array, "*B S q"], y: Float[Array, "*B q"]) -> Float[Array, "*B q"]:
    """log (1/S) Σ_s N(y; mean_s, var_s): the equal-weight mixture over posterior samples (axis −2)."""
    return jax.nn.logsumexp(-gaussian_nll(means, vars_, y[..., None, :]), axis=-2) - jnp.log(means.shape[-2])
