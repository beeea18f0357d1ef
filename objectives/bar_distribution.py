"""The Riemann ("bar") distribution of prior-data fitted networks, with half-normal tails.

K buckets with borders b_0 < b_1 < … < b_K (``borders`` [K+1]) and probabilities p = softmax(logits)
([..., K]). Inner bucket k ∈ {1, …, K−2} spreads p_k uniformly over [b_k, b_{k+1}]. The two edge
buckets get full support (Müller et al. 2022): the left one is a half-normal hanging down from
the inner border b_1, the right one a half-normal rising from b_{K−1},

    Y | left  = b_1 − σ_L |Z|,   σ_L = (b_1 − b_0) / z_¾,        z_¾ = Φ⁻¹(¾) = 0.67449
    Y | right = b_{K−1} + σ_R |Z|, σ_R = (b_K − b_{K−1}) / z_¾,

so half of each edge bucket's mass stays inside the edge bucket. Closed forms (Φ, φ standard
normal cdf/pdf; f* the incumbent; maximisation):

    density   inner p_k / w_k;  left  p_0 · 2φ((b_1 − y)/σ_L)/σ_L  (y < b_1); right likewise
    mean      Σ_inner p_k m_k + p_0 (b_1 − σ_L√(2/π)) + p_{K−1}(b_{K−1} + σ_R√(2/π))
    E[Y²]     inner (a² + ab + b²)/3;  tail c² ∓ 2cσ√(2/π) + σ²
    EI        E[(Y − f*)⁺]: inner [a, b]: (a+b)/2 − f* if f* ≤ a, (b − f*)²/(2(b − a)) inside, 0 above;
              right tail (c = b_{K−1}, t = (f* − c)/σ_R): c − f* + σ_R√(2/π) if t ≤ 0, else
                 2σ_R (φ(t) − t Φ(−t));
              left tail (a = b_1, u = (a − f*)/σ_L): 0 if u ≤ 0, else σ_L (u (2Φ(u) − 1) − 2(φ(0) − φ(u)))
    PI        P(Y > f*): inner clip((b − f*)/(b − a), 0, 1); right 1 (t ≤ 0) or 2Φ(−t);
              left 2Φ(u) − 1 (u > 0) or 0
    UCB       the Φ(κ)-quantile (= μ + κσ for a Gaussian predictive)

The tail terms are derived here (the derivation is in docs/pfn.md) and tested against Monte Carlo
draws; nothing is taken from another implementation. ``sample`` draws the bucket, then a uniform
point inside it or a half-normal in the tails, so sampling covers the tails.

Every function broadcasts y / best / q against ``logits.shape[:-1]`` and is pure and jittable.
`log_prob` is the PFN training loss (its negative mean); `gaussian_*` are the Gaussian head of
the ablation (mean, log-variance).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr, ndtri
from jaxtyping import Array, Float

Z_THREE_QUARTERS = 0.6744897501960817  # Φ⁻¹(3/4): the half-normal's median in units of σ
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def check_borders(borders) -> None:
    """ValueError unless ``borders`` is a concrete 1-D array of ≥ 3 finite, strictly increasing values."""
    b = np.asarray(borders)
    if b.ndim != 1 or b.shape[0] < 3:
        raise ValueError(f"borders: got shape {b.shape}; allowed a 1-D array [K+1] with K >= 2 buckets")
    if not np.all(np.isfinite(b)) or not np.all(np.diff(b) > 0):
        raise ValueError("borders: got values that are not finite and strictly increasing; allowed b_0 < b_1 < … < b_K")


def borders_from_samples(ys: Float[Array, "*S"], num_buckets: int) -> Float[Array, "K+1"]:
    """Equal-mass borders: the empirical quantiles of ``ys`` at i/K, i = 0..K (b_0 = min, b_K = max).

    Every bucket then holds 1/K of the prior samples. Host-side (numpy), float64 sort.
    """
    if not isinstance(num_buckets, (int, np.integer)) or isinstance(num_buckets, bool) or num_buckets < 2:
        raise ValueError(f"num_buckets: got {num_buckets!r}; allowed an integer >= 2")
    y = np.sort(np.asarray(ys, np.float64).ravel())
    if not np.all(np.isfinite(y)):
        raise ValueError("ys: got NaN or infinite values; allowed finite prior samples")
    if y.size < num_buckets + 1:
        raise ValueError(f"ys: got {y.size} samples; allowed at least num_buckets + 1 = {num_buckets + 1}")
    idx = np.round(np.linspace(0, y.size - 1, num_buckets + 1)).astype(np.int64)
    borders = y[idx]
    check_borders(borders)  # ties (a discrete prior) would give empty buckets
    return jnp.asarray(borders)


def _parts(borders):
    b = jnp.asarray(borders)
    w = b[1:] - b[:-1]
    sig_l = w[0] / Z_THREE_QUARTERS
    sig_r = w[-1] / Z_THREE_QUARTERS
    return b, w, sig_l, sig_r


def _probs(logits):
    return jax.nn.softmax(logits, axis=-1)


def _bcast(logits, v):
    """(logits, v) for a common batch shape S: logits gets leading 1-axes only (never copied to
    [S, K], which would be B·K floats for one bar distribution and B draws), v becomes [S]."""
    logits = jnp.asarray(logits)
    v = jnp.asarray(v, logits.dtype)
    shape = jnp.broadcast_shapes(logits.shape[:-1], v.shape)
    logits = logits.reshape((1,) * (len(shape) + 1 - logits.ndim) + logits.shape)
    return logits, jnp.broadcast_to(v, shape)


def _lift(v, ndim: int):
    """A [K] vector of per-bucket values reshaped to [1, …, 1, K] (ndim axes), for strict rank rules."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _bucket(borders, y):
    K = borders.shape[0] - 1
    return jnp.clip(jnp.searchsorted(borders, y, side="right") - 1, 0, K - 1)


def log_prob(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"], y: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """log q(y) of the bar distribution with half-normal tails (full support on ℝ)."""
    logits, y = _bcast(logits, y)
    b, w, sig_l, sig_r = _parts(borders)
    K = w.shape[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    k = _bucket(b, y)
    logp_k = jnp.take_along_axis(logp, k[..., None], axis=-1)[..., 0]
    inner = logp_k - jnp.log(w[k])
    # half-normal log density: log 2 + log φ(t) − log σ
    t_l = (b[1] - y) / sig_l
    t_r = (y - b[K - 1]) / sig_r
    left = logp[..., 0] + _LOG_2 - 0.5 * t_l**2 - 0.5 * math.log(2 * math.pi) - jnp.log(sig_l)
    right = logp[..., K - 1] + _LOG_2 - 0.5 * t_r**2 - 0.5 * math.log(2 * math.pi) - jnp.log(sig_r)
    return jnp.where(k == 0, left, jnp.where(k == K - 1, right, inner))


def nll(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"], y: Float[Array, "*S"]) -> Float[Array, ""]:
    """Mean −log q(y): the PFN training loss."""
    return -jnp.mean(log_prob(logits, borders, y))


def mean(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"]) -> Float[Array, "*S"]:
    b, w, sig_l, sig_r = _parts(borders)
    p = _probs(logits)
    m = 0.5 * (b[1:] + b[:-1])
    m = m.at[0].set(b[1] - sig_l * _SQRT_2_OVER_PI).at[-1].set(b[-2] + sig_r * _SQRT_2_OVER_PI)
    return p @ m


def variance(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"]) -> Float[Array, "*S"]:
    b, w, sig_l, sig_r = _parts(borders)
    p = _probs(logits)
    lo, hi = b[:-1], b[1:]
    m2 = (lo**2 + lo * hi + hi**2) / 3.0
    cl, cr = b[1], b[-2]
    m2 = m2.at[0].set(cl**2 - 2 * cl * sig_l * _SQRT_2_OVER_PI + sig_l**2)
    m2 = m2.at[-1].set(cr**2 + 2 * cr * sig_r * _SQRT_2_OVER_PI + sig_r**2)
    mu = mean(logits, borders)
    return jnp.maximum(p @ m2 - mu**2, 0.0)


def _bucket_cdfs(borders, y):
    """P(Y_k ≤ y) for every bucket's own distribution: [..., K]."""
    b, w, sig_l, sig_r = _parts(borders)
    y = y[..., None]
    inner = jnp.clip((y - _lift(b[:-1], y.ndim)) / _lift(w, y.ndim), 0.0, 1.0)
    u = (b[1] - y[..., 0]) / sig_l     # left: P(b_1 − σ|Z| ≤ y) = 2Φ(−u) for u > 0
    left = jnp.where(u > 0, 2 * ndtr(-u), 1.0)
    t = (y[..., 0] - b[-2]) / sig_r    # right: P(b_{K−1} + σ|Z| ≤ y) = 2Φ(t) − 1 for t > 0
    right = jnp.where(t > 0, 1.0 - 2 * ndtr(-t), 0.0)
    return inner.at[..., 0].set(left).at[..., -1].set(right)


def _bucket_survivals(borders, y):
    """P(Y_k > y) per bucket, computed directly (no 1 − cdf cancellation in the tails)."""
    b, w, sig_l, sig_r = _parts(borders)
    y = y[..., None]
    inner = jnp.clip((_lift(b[1:], y.ndim) - y) / _lift(w, y.ndim), 0.0, 1.0)
    u = (b[1] - y[..., 0]) / sig_l
    left = jnp.where(u > 0, 1.0 - 2 * ndtr(-u), 0.0)
    t = (y[..., 0] - b[-2]) / sig_r
    right = jnp.where(t > 0, 2 * ndtr(-t), 1.0)
    return inner.at[..., 0].set(left).at[..., -1].set(right)


def cdf(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"], y: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """P(Y ≤ y)."""
    logits, y = _bcast(logits, y)
    return jnp.sum(_probs(logits) * _bucket_cdfs(jnp.asarray(borders), y), axis=-1)


def probability_of_improvement(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"],
                               best: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """P(Y > best) (maximisation), tails included."""
    logits, best = _bcast(logits, best)
    return jnp.sum(_probs(logits) * _bucket_survivals(jnp.asarray(borders), best), axis=-1)


def expected_improvement(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"],
                         best: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """E[(Y − best)⁺] (maximisation) in closed form, half-normal tails included (module docstring)."""
    logits, best = _bcast(logits, best)
    b, w, sig_l, sig_r = _parts(borders)
    f = best[..., None]
    lo, hi, wk = (_lift(v, f.ndim) for v in (b[:-1], b[1:], w))
    inner = jnp.where(f <= lo, 0.5 * (lo + hi) - f, jnp.where(f >= hi, 0.0, (hi - f) ** 2 / (2 * wk)))
    u = (b[1] - best) / sig_l
    left = jnp.where(u > 0, sig_l * (u * (1.0 - 2 * ndtr(-u)) - 2 * (_PHI0 - jax.scipy.stats.norm.pdf(u))), 0.0)
    t = (best - b[-2]) / sig_r
    right = jnp.where(t <= 0, b[-2] - best + sig_r * _SQRT_2_OVER_PI,
                      2 * sig_r * (jax.scipy.stats.norm.pdf(t) - t * ndtr(-t)))
    terms = inner.at[..., 0].set(left).at[..., -1].set(right)
    return jnp.sum(_probs(logits) * terms, axis=-1)


def quantile(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"], q: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """The q-quantile, q ∈ (0, 1): the inverse of `cdf` (uniform inside buckets, half-normal tails)."""
    logits, q = _bcast(logits, q)
    b, w, sig_l, sig_r = _parts(borders)
    K = w.shape[0]
    p = _probs(logits)
    c_hi = jnp.cumsum(p, axis=-1)              # P(Y ≤ b_{k+1}) for inner k; [..., K]
    k = jnp.clip(jnp.sum(c_hi < q[..., None], axis=-1), 0, K - 1)
    c_lo = jnp.take_along_axis(c_hi - p, k[..., None], axis=-1)[..., 0]
    p_k = jnp.take_along_axis(p, k[..., None], axis=-1)[..., 0]
    frac = jnp.clip((q - c_lo) / jnp.maximum(p_k, 1e-30), 0.0, 1.0)
    inner = b[k] + w[k] * frac
    # left: q = p_0 · 2Φ(−u)  ⇒  y = b_1 − σ_L u, u = −Φ⁻¹(q / 2p_0)
    left = b[1] + sig_l * ndtri(jnp.clip(q / (2 * jnp.maximum(p[..., 0], 1e-30)), 1e-30, 0.5))
    # right: (q − c_lo)/p_{K−1} = 2Φ(t) − 1  ⇒  t = Φ⁻¹((1 + frac)/2)
    right = b[K - 1] + sig_r * ndtri(jnp.clip(0.5 * (1 + frac), 0.5, 1 - 1e-16))
    return jnp.where(k == 0, left, jnp.where(k == K - 1, right, inner))


def ucb(logits: Float[Array, "*S K"], borders: Float[Array, "K+1"], *, kappa: float = 1.0) -> Float[Array, "*S"]:
    """Upper confidence bound = the Φ(κ)-quantile (κ = 1: the 84.1% quantile; μ + κσ if Gaussian)."""
    level = 0.5 * math.erfc(-float(kappa) / math.sqrt(2.0))  # Φ(κ)
    return quantile(logits, borders, jnp.full(logits.shape[:-1], level, logits.dtype))


def sample(key: jax.Array, logits: Float[Array, "*S K"], borders: Float[Array, "K+1"],
           shape: tuple[int, ...] = ()) -> Float[Array, "*shape *S"]:
    """Draws of shape ``shape + logits.shape[:-1]``: bucket ~ Categorical(p), then uniform inside
    an inner bucket or the half-normal of an edge bucket (the tails are sampled)."""
    b, w, sig_l, sig_r = _parts(borders)
    K = w.shape[0]
    out_shape = tuple(shape) + logits.shape[:-1]
    k_cat, k_u, k_z = jax.random.split(key, 3)
    k = jax.random.categorical(k_cat, logits, axis=-1, shape=out_shape)
    u = jax.random.uniform(k_u, out_shape, logits.dtype)
    z = jnp.abs(jax.random.normal(k_z, out_shape, logits.dtype))
    inner = b[k] + w[k] * u
    return jnp.where(k == 0, b[1] - sig_l * z, jnp.where(k == K - 1, b[K - 1] + sig_r * z, inner))


def bucket_log_probs_of_gaussian(borders: Float[Array, "K+1"], loc, scale) -> Float[Array, "*S K"]:
    """log P(bucket k) of a N(loc, scale²) predictive, the edge buckets taking the whole tails
    (P(Y < b_1), P(Y ≥ b_{K−1})): the logits that make a bar head imitate a Gaussian."""
    b = jnp.asarray(borders)
    loc, scale = jnp.broadcast_arrays(jnp.asarray(loc, b.dtype), jnp.asarray(scale, b.dtype))
    loc, scale = loc[..., None], scale[..., None]
    z = (_lift(b[1:-1], loc.ndim) - loc) / scale   # inner borders b_1..b_{K−1}
    log_c = log_ndtr(z)                        # log Φ(z_j)
    log_s = log_ndtr(-z)
    # P(b_j < Y < b_{j+1}) = Φ(z_{j+1}) − Φ(z_j), computed on the side with less cancellation
    mid_lo = log_c[..., 1:] + jnp.log1p(-jnp.exp(jnp.minimum(log_c[..., :-1] - log_c[..., 1:], -1e-30)))
    mid_hi = log_s[..., :-1] + jnp.log1p(-jnp.exp(jnp.minimum(log_s[..., 1:] - log_s[..., :-1], -1e-30)))
    mid = jnp.where(z[..., 1:] < 0, mid_lo, mid_hi)
    return jnp.concatenate([log_c[..., :1], mid, log_s[..., -1:]], axis=-1)


# ----------------------------------------------------------------------------- Gaussian head
def gaussian_log_prob(mean_: Float[Array, "*S"], log_var: Float[Array, "*S"], y: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """log N(y; mean, exp(log_var)): the Gaussian read-out of the head ablation."""
    return -0.5 * (math.log(2 * math.pi) + log_var + jnp.square(y - mean_) * jnp.exp(-log_var))
