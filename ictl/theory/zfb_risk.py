"""Zhang, Frei & Bartlett (2023): the risk of a trained LSA on shifted prompts, OLS, random Λ.

``icl_risk`` is the exact risk of any ŷ = hᵀ V x_q (h = (1/M) Σ y_i x_i) on a test prompt of length
M under task / query / covariate / prompt-length shift, ``icl_risk_mc`` its Monte Carlo from
`ictl.tasks.linear.sample_linear_prompts`, ``ols_risk*`` the least-squares baseline, and
``random_cov_*`` the generalized setting (a random Λ = diag(U(lo, hi)^d) per prompt) with its
fixed point. The training-side theory (Γ, L*, gradient flow) is `ictl.theory.zfb`; derivations
in docs/theory_zfb.md. Conventions as there: float64 inside, Python floats / NumPy float64 out,
risks are E(ŷ − y_q)² WITHOUT the ½.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ictl.tasks.linear import sample_linear_prompts
from ictl.theory.zfb import ArrayLike, _check_len, _check_pos, validate_cov


# ----------------------------------------------------------------------------- risk under shifts
def _risk_inputs(V, Lam_ctx, Lam_query, w_cov, w):
    V = np.asarray(V, np.float64)
    if V.ndim != 2 or V.shape[0] != V.shape[1]:
        raise ValueError(f"V: must be a square d×d matrix, got shape {V.shape}")
    d = V.shape[0]
    C = np.eye(d) if Lam_ctx is None else validate_cov(Lam_ctx, name="Lam_ctx")
    Q = C if Lam_query is None else validate_cov(Lam_query, name="Lam_query")
    if w is not None and w_cov is not None:
        raise ValueError("w: give either a fixed task w or its covariance w_cov, not both")
    if w is not None:
        w = np.asarray(w, np.float64)
        if w.shape != (d,):
            raise ValueError(f"w: must have shape ({d},), got {w.shape}")
        W = np.outer(w, w)
    else:
        W = np.eye(d) if w_cov is None else validate_cov(w_cov, name="w_cov", allow_singular=True)
    for name, m in (("Lam_ctx", C), ("Lam_query", Q), ("w_cov", W)):
        if m.shape != (d, d):
            raise ValueError(f"{name}: must be {d}×{d} like V, got {m.shape}")
    return V, C, Q, W, w


def icl_risk(V: ArrayLike, *, M: int | float, Lam_ctx: ArrayLike | None = None, Lam_query: ArrayLike | None = None,
             w_cov: ArrayLike | None = None, w: ArrayLike | None = None, noise_std: float = 0.0) -> float:
    """Exact E[(ŷ − y_q)²] (NO ½) of ŷ = hᵀ V x_q, h = (1/M) Σ_{i≤M} y_i x_i, on a test prompt.

    x_i ~ N(0, C = Λ_ctx) (default I), x_q ~ N(0, Q = Λ_query) (default C), w ~ N(0, W) with
    W = w_cov (default I) or W = w wᵀ for a fixed task w, y = wᵀx + ε with ε ~ N(0, σ²) on
    context and query labels. With B = V Q Vᵀ and E[S B S] = (1 + 1/M) CBC + tr(BC) C / M for
    S = (1/M) Σ x_i x_iᵀ (Isserlis),

        R = (1 + 1/M) tr(CBCW) + tr(BC) tr(CW)/M − 2 tr(CVQW) + tr(QW) + σ² tr(BC)/M + σ².

    ``M = math.inf`` gives the limit R∞ = tr((CV − I) Q (VᵀC − I) W) + σ²: with V = Γ⁻¹ and
    C ≠ Λ this is the covariate-shift bias E wᵀ(I − CΓ⁻¹) Q (I − Γ⁻¹C) w that does not vanish.
    With C = Q = Λ, W = I, σ = 0, M = N and V = uU: R = 2 L(u, U).
    """
    V, C, Q, W, _ = _risk_inputs(V, Lam_ctx, Lam_query, w_cov, w)
    M = _check_len("M", M, allow_inf=True)
    s2 = _check_pos("noise_std", noise_std, strict=False) ** 2
    inv_m = 0.0 if M == math.inf else 1.0 / M
    B = V @ Q @ V.T
    tr_bc = np.trace(B @ C)
    r = ((1 + inv_m) * np.trace(C @ B @ C @ W) + inv_m * tr_bc * np.trace(C @ W)
         - 2 * np.trace(C @ V @ Q @ W) + np.trace(Q @ W) + s2 * inv_m * tr_bc + s2)
    return float(r)


def icl_risk_limit(V: ArrayLike, **kwargs) -> float:
    """``icl_risk`` as M → ∞: tr((CV − I) Q (VᵀC − I) W) + σ² (same keywords, no M)."""
    return icl_risk(V, M=math.inf, **kwargs)


@partial(jax.jit, static_argnames=("M", "d", "chunk", "random_cov", "ols"))
def _sq_err_chunk(key, V, C, Q, W, w, noise_std, *, M, d, chunk, random_cov, ols):
    p = sample_linear_prompts(key, batch=chunk, n_ctx=M, d=d, cov=C, query_cov=Q, random_cov=random_cov,
                              w_cov=W, w=w, noise_std=noise_std, dtype=jnp.float64)
    xq_Bxd = p.x_q[:, 0, :]
    if ols:  # min-norm least squares ŵ = X⁺ y on the context, ŷ = ŵᵀ x_q
        w_hat_Bxd = jnp.einsum("bdn,bn->bd", jnp.linalg.pinv(p.x_ctx), p.y_ctx)
        y_hat = jnp.einsum("bd,bd->b", w_hat_Bxd, xq_Bxd)
    else:
        h_Bxd = jnp.einsum("bn,bnd->bd", p.y_ctx, p.x_ctx) / M
        y_hat = jnp.einsum("bd,de,be->b", h_Bxd, V, xq_Bxd)
    err = (y_hat - p.y_q[:, 0]) ** 2
    return jnp.sum(err), jnp.sum(err**2)


def _mc(key, V, *, M, d, Lam_ctx, Lam_query, w_cov, w, noise_std, random_cov, num_prompts, chunk, ols):
    M = _check_len("M", M)
    num_prompts = _check_len("num_prompts", num_prompts)
    if num_prompts < 2:
        raise ValueError(f"num_prompts: must be ≥ 2 for a standard error, got {num_prompts}")
    chunk = min(_check_len("chunk", chunk), num_prompts)
    if random_cov is not None:
        lo, hi = _check_uniform(random_cov[0], random_cov[1])
        random_cov = (lo, hi)
    noise_std = _check_pos("noise_std", noise_std, strict=False)
    n_chunks = -(-num_prompts // chunk)
    s1 = s2 = 0.0
    # Explicit covariances (I / C by default) keep one compiled sampler per (M, d, chunk) shape.
    C = np.eye(d) if Lam_ctx is None else np.asarray(Lam_ctx, np.float64)
    Q = C if Lam_query is None else np.asarray(Lam_query, np.float64)
    W = np.eye(d) if w_cov is None else np.asarray(w_cov, np.float64)
    with jax.enable_x64(True):
        args = [None if a is None else jnp.asarray(a, jnp.float64) for a in (V, C, Q, W, w)]
        if w is not None:
            args[3] = None
        for i in range(n_chunks):
            a, b = _sq_err_chunk(jax.random.fold_in(key, i), *args, jnp.float64(noise_std), M=M, d=d,
                                 chunk=chunk, random_cov=random_cov, ols=ols)
            s1, s2 = s1 + float(a), s2 + float(b)
    n = n_chunks * chunk
    mean = s1 / n
    var = max(s2 / n - mean**2, 0.0) * n / (n - 1)
    return mean, math.sqrt(var / n)


def icl_risk_mc(key: jax.Array, V: ArrayLike, *, M: int, Lam_ctx: ArrayLike | None = None,
                Lam_query: ArrayLike | None = None, w_cov: ArrayLike | None = None, w: ArrayLike | None = None,
                noise_std: float = 0.0, random_cov: tuple[float, float] | None = None, num_prompts: int,
                chunk: int = 20_000) -> tuple[float, float]:
    """Monte Carlo of E[(ŷ − y_q)²] (no ½) with ``sample_linear_prompts`` (float64, 1 query).

    Returns (mean, standard error = sample std / √n), n = num_prompts rounded up to whole
    chunks. ``random_cov=(lo, hi)`` draws Λ = diag(U(lo, hi)^d) per prompt (then the covs
    are ignored). Deterministic in ``key``.
    """
    V = np.asarray(V, np.float64)
    if random_cov is None:
        V, *_ = _risk_inputs(V, Lam_ctx, Lam_query, w_cov, w)
    return _mc(key, V, M=M, d=V.shape[0], Lam_ctx=Lam_ctx, Lam_query=Lam_query, w_cov=w_cov, w=w,
               noise_std=noise_std, random_cov=random_cov, num_prompts=num_prompts, chunk=chunk, ols=False)


# ----------------------------------------------------------------------------- OLS baseline
def ols_risk(*, M: int, d: int, Lam_ctx: ArrayLike | None = None, Lam_query: ArrayLike | None = None,
             noise_std: float = 0.0) -> float:
    """Exact E[(ŵᵀx_q − y_q)²] (no ½) of min-norm least squares ŵ = X⁺y on M context examples.

    w ~ N(0, I_d), x_i ~ N(0, C), x_q ~ N(0, Q), label noise σ² on context and query:
      * M ≥ d, σ = 0: 0 (w is recovered exactly).
      * M > d + 1: σ² (1 + tr(Q C⁻¹) / (M − d − 1))   (E[(XᵀX)⁻¹] = C⁻¹/(M − d − 1));
        Q = C gives σ² (1 + d/(M − d − 1)).
      * M < d − 1 (C = cI only): tr(Q)(1 − M/d) + σ² tr(Q) M / (d(d − M − 1)) + σ², from
        E[X⁺X] = (M/d) I and E[X⁺X⁺ᵀ] = M / (d(d − M − 1)) I (rotation invariance); σ = 0 also
        allows M = d − 1.
      * otherwise (noisy, d − 1 ≤ M ≤ d + 1): math.inf.
    """
    d, M = _check_len("d", d), _check_len("M", M)
    s2 = _check_pos("noise_std", noise_std, strict=False) ** 2
    C = np.eye(d) if Lam_ctx is None else validate_cov(Lam_ctx, name="Lam_ctx")
    Q = C if Lam_query is None else validate_cov(Lam_query, name="Lam_query")
    if C.shape != (d, d) or Q.shape != (d, d):
        raise ValueError(f"Lam_ctx, Lam_query: must be {d}×{d}, got {C.shape}, {Q.shape}")
    if M >= d and s2 == 0:
        return 0.0
    if M > d + 1:
        return s2 * (1 + float(np.trace(np.linalg.solve(C, Q))) / (M - d - 1))
    if M < d:
        if not np.allclose(C, C[0, 0] * np.eye(d), rtol=1e-12, atol=0):
            raise ValueError("Lam_ctx: the M < d closed form needs isotropic contexts (a multiple of I)")
        trq = float(np.trace(Q))
        if s2 == 0:
            return trq * (1 - M / d)
        if M < d - 1:
            return trq * (1 - M / d) + s2 * trq * M / (d * (d - M - 1)) + s2
    return math.inf


def ols_risk_mc(key: jax.Array, *, M: int, d: int, Lam_ctx: ArrayLike | None = None,
                Lam_query: ArrayLike | None = None, noise_std: float = 0.0, num_prompts: int,
                chunk: int = 20_000) -> tuple[float, float]:
    """Monte Carlo (mean, standard error) of the min-norm OLS risk, same setting as ``ols_risk``."""
    d = _check_len("d", d)
    return _mc(key, np.zeros((d, d)), M=M, d=d, Lam_ctx=Lam_ctx, Lam_query=Lam_query, w_cov=None, w=None,
               noise_std=noise_std, random_cov=None, num_prompts=num_prompts, chunk=chunk, ols=True)


# ----------------------------------------------------------------------------- random covariance
def _check_uniform(lo, hi) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi and hi > 0):
        raise ValueError(f"lo, hi: must satisfy 0 ≤ lo ≤ hi, hi > 0, got ({lo}, {hi})")
    return lo, hi


def uniform_moments(lo: float, hi: float) -> tuple[float, float, float]:
    """(m1, m2, m3), m_k = E λ^k = (hi^{k+1} − lo^{k+1}) / ((k + 1)(hi − lo)) for λ ~ U(lo, hi)."""
    lo, hi = _check_uniform(lo, hi)
    if hi == lo:
        return lo, lo**2, lo**3
    return tuple((hi ** (k + 1) - lo ** (k + 1)) / ((k + 1) * (hi - lo)) for k in (1, 2, 3))


class RandomCovFixedPoint(NamedTuple):
    V: Float[np.ndarray, "d d"]  # the minimiser V* = v* I of E_Λ L_Λ(V)
    loss: float  # E_Λ L_Λ(V*), with the ½ (= ½ random_cov_risk(V*, M=N))
    floor: float  # random_cov_risk(V*, M=∞) > 0: the error left with infinitely long prompts


def random_cov_risk(V: ArrayLike, *, M: int | float, d: int, lo: float, hi: float, noise_std: float = 0.0) -> float:
    """Exact E_Λ E[(ŷ − y_q)²] (no ½) for ŷ = hᵀ V x_q when each prompt has Λ = diag(λ),
    λ_j ~ U(lo, hi) i.i.d. (contexts and query), w ~ N(0, I), noise σ², prompt length M.

    Averaging ``icl_risk`` over λ (Λ diagonal makes every term a sum over entries V_jk):
        R = Σ_jk V_jk² [(1 + 1/M) E1_jk + E2_jk/M + σ² E3_jk/M] − 2 m2 tr V + d m1 + σ²,
    E1 = E[λ_j² λ_k] (m3 on, m2 m1 off the diagonal), E2 = E[λ_j λ_k Σ_l λ_l]
    (m3 + (d−1) m2 m1 on, 2 m2 m1 + (d−2) m1³ off), E3 = E[λ_j λ_k] (m2 on, m1² off).
    ``M = math.inf`` gives the floor Σ V_jk² E1_jk − 2 m2 tr V + d m1 + σ².
    """
    d = _check_len("d", d)
    V = np.asarray(V, np.float64)
    if V.shape != (d, d):
        raise ValueError(f"V: must be {d}×{d}, got shape {V.shape}")
    M = _check_len("M", M, allow_inf=True)
    s2 = _check_pos("noise_std", noise_std, strict=False) ** 2
    m1, m2, m3 = uniform_moments(lo, hi)
    eye, off = np.eye(d), 1 - np.eye(d)
    e1 = m3 * eye + m2 * m1 * off
    e2 = (m3 + (d - 1) * m2 * m1) * eye + (2 * m2 * m1 + (d - 2) * m1**3) * off
    e3 = m2 * eye + m1**2 * off
    inv_m = 0.0 if M == math.inf else 1.0 / M
    quad = np.sum(V**2 * ((1 + inv_m) * e1 + inv_m * e2 + s2 * inv_m * e3))
    return float(quad - 2 * m2 * np.trace(V) + d * m1 + s2)


def random_cov_fixed_point(d: int, N: int, lo: float, hi: float) -> RandomCovFixedPoint:
    """V* = argmin_V E_Λ L_Λ(V) for Λ = diag(λ), λ_j ~ U(lo, hi), training prompt length N.

    E_Λ L_Λ(V) = ½ [Σ_jk V_jk² E(a_j λ_k) − 2 m2 tr V + d m1], a_j = (ΓΛ)_jj, is diagonal in
    vec V (the d²×d² normal equations decouple), so off-diagonal V*_jk = 0 and
        V* = v* I,   v* = m2 / E(a_j λ_j) = m2 / ((1 + 2/N) m3 + (d − 1) m1 m2 / N),
        E L(V*) = ½ d (m1 − m2 v*).
    (lo = hi = 1 gives back Γ⁻¹ = N/(N + d + 1) I.) As N, M → ∞ the floor tends to
    d(m1 − m2²/m3) > 0 unless lo = hi: one fixed preconditioner cannot invert every Λ.
    """
    d, N = _check_len("d", d), _check_len("N", N)
    m1, m2, m3 = uniform_moments(lo, hi)
    v = m2 / ((1 + 2 / N) * m3 + (d - 1) * m1 * m2 / N)
    V = v * np.eye(d)
    return RandomCovFixedPoint(V=V, loss=0.5 * d * (m1 - m2 * v), floor=random_cov_risk(V, M=math.inf, d=d, lo=lo, hi=hi))
