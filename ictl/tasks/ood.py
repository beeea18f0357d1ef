"""Out-of-distribution prompt suites for linear regression (Garg et al. 2022, Sec. 4 / Fig. 4).

Each suite returns `OODPrompts(x, y, xq, yq)`: the context inputs x [B, N, d] with labels
y = c_y · wᵀx (+ noise), and the query used after k examples, xq[:, k] with label yq[:, k]
(the same w). The error after k examples is (ŷ(x_<k, y_<k, xq_k) − yq_k)². With
w ~ N(0, I_d), z ~ N(0, I_d):

    standard          x = z,  xq = x
    skewed            x = Σ^{1/2} z, Σ = U diag(λ) Uᵀ, λ_i ∝ 1/i², Σλ = d, U Haar; xq = x
    half_subspace     x = Σ^{1/2} z, Σ = (d/⌊d/2⌋) · projector on a random ⌊d/2⌋-dim subspace; xq = x
    orthogonal        x = z; xq_k = (I − P_k) z'_k rescaled to ‖z'_k‖, P_k the projector on
                      span(x_1..x_k) (xq_k = 0 once k ≥ d: the complement is {0})
    overlapping       x = z; xq_k = x_j, j ~ U{1..k} (xq_0 = x_0)
    random_quadrants  x = |z| ⊙ s, s ∈ {±1}^d one random sign pattern per prompt; xq = z' (any quadrant)
    scale_x           x = c z (c ∈ {1/3, 1/2, 2, 3}); xq = x
    scale_y           y = c wᵀx; xq = x
    noisy             y = wᵀx + ε, ε ~ N(0, σ²) on context and query labels (σ = 1); xq = x

Garg's noisy suite further renormalises y to standard deviation √d; here it is not.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl import rng

SUITES = ("standard", "skewed", "half_subspace", "orthogonal", "overlapping", "random_quadrants",
          "scale_x", "scale_y", "noisy")
SCALES = (1 / 3, 1 / 2, 2.0, 3.0)


class OODPrompts(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N"]
    xq: Float[Array, "B N d"]
    yq: Float[Array, "B N"]
    w: Float[Array, "B d"]


def haar_orthogonal(key, d: int) -> Float[Array, "d d"]:
    """A Haar-random orthogonal d×d matrix (QR of a Gaussian with the sign fix)."""
    q, r = jnp.linalg.qr(rng.normal(key, (d, d)))
    return q * jnp.sign(jnp.diag(r))[None, :]


def skewed_eigenvalues(d: int) -> Float[Array, "d"]:
    """λ_i = c / i² with Σλ_i = d."""
    lam = 1.0 / jnp.arange(1, d + 1) ** 2
    return lam * d / jnp.sum(lam)


def half_subspace_eigenvalues(d: int) -> Float[Array, "d"]:
    """d/⌊d/2⌋ on ⌊d/2⌋ directions, 0 elsewhere (trace d)."""
    h = d // 2
    return jnp.where(jnp.arange(d) < h, d / h, 0.0)


def _orth_query(x_Nxd, z_Nxd):
    """xq_k = (I − P_k) z_k rescaled to ‖z_k‖, P_k = projector on span(x_<k)."""
    N, d = x_Nxd.shape

    def one(k, z_d):
        xm_Nxd = x_Nxd * (jnp.arange(N) < k)[:, None]
        p_dxd = jnp.linalg.pinv(xm_Nxd) @ xm_Nxd
        r_d = z_d - p_dxd @ z_d
        rn = jnp.linalg.norm(r_d)
        scale = jnp.where(rn > 1e-3 * jnp.linalg.norm(z_d), jnp.linalg.norm(z_d) / jnp.maximum(rn, 1e-30), 0.0)
        return jnp.where(k < d, r_d * scale, 0.0)

    return jax.vmap(one)(jnp.arange(N), z_Nxd)


def sample_ood(
    key: jax.Array,
    suite: str,
    *,
    batch: int,
    n_points: int,
    d: int,
    scale: float = 2.0,
    noise_std: float = 1.0,
) -> OODPrompts:
    """One OOD suite for noiseless linear regression (see the module docstring). Pure in ``key``."""
    if suite not in SUITES:
        raise ValueError(f"suite: got {suite!r}; allowed {SUITES}")
    if suite in ("scale_x", "scale_y") and not scale > 0:
        raise ValueError(f"scale: got {scale!r}; allowed a positive number, e.g. {SCALES}")
    if suite == "half_subspace" and d < 2:
        raise ValueError(f"d: got {d}; allowed d >= 2 for half_subspace")
    k_w, k_x, k_q, k_u, k_e, k_s = jax.random.split(key, 6)
    w_Bxd = rng.normal(k_w, (batch, d))
    z_BxNxd = rng.normal(k_x, (batch, n_points, d))
    zq_BxNxd = rng.normal(k_q, (batch, n_points, d))
    x = z_BxNxd
    xq = None
    c_y = 1.0
    if suite in ("skewed", "half_subspace"):
        lam_d = skewed_eigenvalues(d) if suite == "skewed" else half_subspace_eigenvalues(d)
        u_dxd = haar_orthogonal(k_u, d)           # one Σ for the whole evaluation, as in Garg
        root_dxd = (u_dxd * jnp.sqrt(lam_d)[None, :]) @ u_dxd.T
        x = z_BxNxd @ root_dxd
    elif suite == "orthogonal":
        xq = jax.vmap(_orth_query)(x, zq_BxNxd)
    elif suite == "overlapping":
        k_Nx1 = jnp.arange(n_points)[:, None]
        j_BxN = jnp.floor(rng.uniform(k_s, (batch, n_points)) * jnp.maximum(k_Nx1.T, 1)).astype(jnp.int32)
        xq = jnp.take_along_axis(x, j_BxN[..., None], axis=1)
    elif suite == "random_quadrants":
        s_Bx1xd = jnp.where(rng.bernoulli(k_s, 0.5, (batch, 1, d)), 1.0, -1.0)
        x = jnp.abs(z_BxNxd) * s_Bx1xd
        xq = zq_BxNxd
    elif suite == "scale_x":
        x = scale * z_BxNxd
    elif suite == "scale_y":
        c_y = scale
    xq = x if xq is None else xq
    y = c_y * jnp.einsum("bnd,bd->bn", x, w_Bxd)
    yq = c_y * jnp.einsum("bnd,bd->bn", xq, w_Bxd)
    if suite == "noisy":
        e_Bx2xN = noise_std * rng.normal(k_e, (batch, 2, n_points))
        same = xq is x
        y = y + e_Bx2xN[:, 0]
        yq = y if same else yq + e_Bx2xN[:, 1]
    return OODPrompts(x, y, xq, yq, w_Bxd)
