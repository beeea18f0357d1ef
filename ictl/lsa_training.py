"""Training ZFB's one-layer LSA (`models.lsa.LSA`): on fresh prompts or on the exact population loss.

Both losses are pure ``loss_fn(params, key) -> (loss, metrics)`` for `ictl.train.make_train_step`.
``population_loss_fn`` is exact on the paper's invariant subspace: it evaluates
`ictl.theory.zfb.population_loss` at the reduced coordinates (u, U) = (W^PV[d,d], W^KQ[:d,:d]),
so gradient descent on it is gradient descent on L(u, U), which gradient flow from the paper's
initialisation never leaves (ZFB); the other weights get zero gradient and stay at zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ictl.tasks.linear import sample_linear_prompts
from ictl.theory import zfb
from ictl.train.mesh import shard_batch
from models.lsa import LSA, effective_V, off_subspace_norm, reduced_params
from objectives import half_mse


def init_params(key: jax.Array, *, d: int, init_scheme: str = "paper", sigma: float = 0.1):
    """(LSA module, its parameters): the initialisers alone (`LSA.weights`), the numbers of `init`.
    Eagerly each op is a compile of its own, and with `lazy_init` the forward pass's parameter-only
    ops ran too (10 more compiles): `ictl run zfb_dynamics`' init took 1.05 → 0.66 CPU-s
    (tests/test_lsa.py checks the bits against `lazy_init`)."""
    model = LSA(d=d, init_scheme=init_scheme, sigma=sigma)
    return model, model.init(key, method=LSA.weights)


def prompt_loss_fn(model: LSA, *, d: int, N: int, batch: int, Lam=None, random_cov=None, noise_std: float = 0.0):
    """½ mean (ŷ − y_q)² over ``batch`` fresh prompts drawn from ``key``."""
    cov = None if Lam is None else jnp.asarray(Lam, jnp.float32)

    def loss_fn(params, key):
        p = shard_batch(sample_linear_prompts(key, batch=batch, n_ctx=N, d=d, cov=cov,
                                              random_cov=random_cov, noise_std=noise_std))
        return half_mse(model.apply(params, p.x_ctx, p.y_ctx, p.x_q), p.y_q), {}

    return loss_fn


def population_loss_fn(*, Lam, N: int):
    lam = jnp.asarray(np.asarray(Lam), jnp.float32)

    def loss_fn(params, key):
        del key
        u, U = reduced_params(params)
        return zfb.population_loss(u, U, lam, N), {}

    return loss_fn


def eval_fn(*, Lam, N: int):
    """Jitted state → {pop_loss, V_err, off_subspace}: the exact population loss at (u, U),
    ‖uU − Γ⁻¹‖_F/‖Γ⁻¹‖_F and the weight outside the paper's subspace."""
    lam = jnp.asarray(np.asarray(Lam), jnp.float32)
    vinv = jnp.asarray(zfb.optimal_V(np.asarray(Lam), N), jnp.float32)

    @jax.jit
    def f(state):
        u, U = reduced_params(state.params)
        v_err = jnp.linalg.norm(effective_V(state.params) - vinv) / jnp.linalg.norm(vinv)
        return {"pop_loss": zfb.population_loss(u, U, lam, N), "V_err": v_err,
                "off_subspace": off_subspace_norm(state.params)}

    return f


def lam_from_config(lam, d: int) -> np.ndarray:
    """Config `lam`: () = I_d, d numbers = diag, or a d×d nested tuple."""
    a = np.asarray(lam, np.float64)
    if a.size == 0:
        return np.eye(d)
    if a.ndim == 1:
        if a.shape[0] != d:
            raise ValueError(f"lam: {a.shape[0]} diagonal entries; allowed: d = {d} entries, a d×d matrix or ()")
        return np.diag(a)
    return a
