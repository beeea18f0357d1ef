"""Linear-regression in-context prompts (Zhang-Frei-Bartlett, Garg et al. noiseless/noisy linear).

Shapes: B prompts, N context examples, Q queries, d input dimension.

    x_i ~ N(0, Λ)          Λ fixed (d×d SPD) or random per prompt (``random_cov``)
    w   ~ N(0, Σ_w)        Σ_w = I unless ``w_cov`` is given (or ``w`` fixed for all prompts)
    y_i = wᵀ x_i + ε_i     ε_i ~ N(0, σ²)

Queries may come from another covariance (query shift, ``query_cov``); all other shifts are
expressed by sampling with other arguments (another ``cov`` = covariate shift, another
``n_ctx`` = prompt-length shift, a fixed ``w`` = task shift).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl import rng


class Prompts(NamedTuple):
    x_ctx: Float[Array, "B N d"]
    y_ctx: Float[Array, "B N"]
    x_q: Float[Array, "B Q d"]
    y_q: Float[Array, "B Q"]
    w: Float[Array, "B d"]
    cov: Float[Array, "B d d"] | None  # the per-prompt Λ when it is random, else None


def _gauss(key, shape, cov, dtype):
    z = rng.normal(key, shape, dtype)
    if cov is None:
        return z
    chol = jnp.linalg.cholesky(jnp.asarray(cov, dtype))
    return z @ chol.T if chol.ndim == 2 else jnp.einsum("b...d,bed->b...e", z, chol)


def random_diag_cov(key, *, batch: int, d: int, lo: float, hi: float, dtype=jnp.float32):
    """Per-prompt Λ = diag(λ), λ_j ~ U(lo, hi) i.i.d. (the generalized setting's prior)."""
    lam_Bxd = rng.uniform(key, (batch, d), dtype, lo, hi)
    return jax.vmap(jnp.diag)(lam_Bxd)


def sample_linear_prompts(
    key: jax.Array,
    *,
    batch: int,
    n_ctx: int,
    d: int,
    n_query: int = 1,
    cov: Float[Array, "d d"] | None = None,
    query_cov: Float[Array, "d d"] | None = None,
    random_cov: tuple[float, float] | None = None,
    w_cov: Float[Array, "d d"] | None = None,
    w: Float[Array, "d"] | None = None,
    noise_std: float = 0.0,
    dtype=jnp.float32,
) -> Prompts:
    """Draws B prompts of N context examples and Q queries. Pure in ``key``.

    ``cov``: Λ of the context inputs (None = I). ``query_cov``: Λ_q of the queries (None = the
    context's Λ). ``random_cov=(lo, hi)``: a fresh Λ = diag(U(lo, hi)^d) per prompt, used for
    context and queries (overrides ``cov``). ``w``: one fixed task for every prompt.
    The query labels carry the same noise as the context labels.
    """
    k_cov, k_x, k_q, k_w, k_e = jax.random.split(key, 5)
    per_prompt = None
    if random_cov is not None:
        per_prompt = random_diag_cov(k_cov, batch=batch, d=d, lo=random_cov[0], hi=random_cov[1], dtype=dtype)
        cov = query_cov = per_prompt
    elif query_cov is None:
        query_cov = cov
    x_ctx = _gauss(k_x, (batch, n_ctx, d), cov, dtype)
    x_q = _gauss(k_q, (batch, n_query, d), query_cov, dtype)
    if w is None:
        w_Bxd = _gauss(k_w, (batch, d), w_cov, dtype)
    else:
        w_Bxd = jnp.broadcast_to(jnp.asarray(w, dtype), (batch, d))
    y_ctx = jnp.einsum("bnd,bd->bn", x_ctx, w_Bxd)
    y_q = jnp.einsum("bqd,bd->bq", x_q, w_Bxd)
    # noiseless (a concrete 0): no draw. The labels keep their bits (tests/test_sampler.py: x·w + 0·ε) and a
    # normal draw per sample and its compile are saved; inside a larger jitted program XLA may fuse the
    # einsum differently without the add, so a model trained through it can move at float rounding
    # (order_sensitivity's LSA spread 6.49e-8 → 6.01e-8; the other quick experiments' rows kept every bit)
    if not (isinstance(noise_std, (int, float)) and noise_std == 0):
        eps = noise_std * rng.normal(k_e, (batch, n_ctx + n_query), dtype)
        y_ctx, y_q = y_ctx + eps[:, :n_ctx], y_q + eps[:, n_ctx:]
    return Prompts(x_ctx, y_ctx, x_q, y_q, w_Bxd, per_prompt)
