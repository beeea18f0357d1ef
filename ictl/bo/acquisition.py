"""Acquisition functions from a surrogate: PFN (bar distribution), exact GP, GP with ML-II hyperparameters.

All acquisitions are for *maximisation* of output 0 given a fixed-size buffer of observations
(x [T, d], y [T, O], mask [T]: the first n rows are observed) and candidates x_q [Q, d]; static
shapes, so one compile serves every n. With constraints (O > 1, g_j ≤ 0 feasible) the acquisition
is the constrained EI / PI of Gardner et al. 2014 / Gelbart et al. 2014, as in PFN4sBO:

    α(x) = EI(x; f*) · Π_j P(g_j(x) ≤ 0)       f* = best observed value among feasible points,
    α(x) = Π_j P(g_j(x) ≤ 0)                    while no observed point is feasible,

every factor from the same surrogate (one PFN forward pass for all O outputs). Per surrogate:

- PFN: the bar distribution (`objectives.bar_distribution`) gives EI, PI (closed forms with the
  half-normal tails), UCB = the Φ(κ)-quantile, and P(g ≤ 0) = its cdf at 0.
- GP: Gaussian predictive (mean, var incl. noise) from `ictl.theory.gp.posterior_predictive` with the
  true hyperparameters (``gp_true``) or per-step type-II ML ones (`ictl.theory.gp.fit_ml2`, ``gp_ml2``);
  EI / PI from `ictl.theory.gp`, UCB = μ + κσ, P(g ≤ 0) = Φ(−μ_g/σ_g).

Standardisation (analytic problems): each output is shifted/scaled by the mean/std of its observed
values (dots, not masked sums: the XLA CPU miscompile in docs/architecture.md), incumbent and
the constraint threshold 0 are mapped the same way. GP-prior tasks keep raw y (the prior's scale).

`pfn_apply_masked` runs `models.pfn.PFN`'s parameters with an arbitrary context mask over a buffer of
T static key positions (the model's own `predict` slices keys to a static n, one compile per n;
its traced-n path attends over all T + Q keys). It reuses the model's `Block` and parameter names,
and tests/test_bo.py checks it against `models.pfn.predict`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr
from jaxtyping import Array, Bool, Float

from ictl.theory import gp
from models.pfn import Block, PFNConfig
from objectives import bar_distribution as bd

ACQUISITIONS = ("ei", "pi", "ucb")
METHODS = ("pfn", "gp_true", "gp_ml2", "random")


# ----------------------------------------------------------------------------- observations
def standardize(y_TxO: Float[Array, "T O"], mask_T: Float[Array, "T"], on: bool):
    """(y_std, mean_O, sd_O): per-output standardisation over the masked rows (identity if not ``on``)."""
    O = y_TxO.shape[-1]
    if not on:
        return y_TxO, jnp.zeros(O, y_TxO.dtype), jnp.ones(O, y_TxO.dtype)
    n = jnp.sum(mask_T)
    mean = (mask_T @ y_TxO) / jnp.maximum(n, 1.0)
    var = (mask_T @ jnp.square(y_TxO - mean[None, :])) / jnp.maximum(n - 1.0, 1.0)
    sd = jnp.where(var > 1e-20, jnp.sqrt(jnp.maximum(var, 1e-20)), 1.0)
    return (y_TxO - mean[None, :]) / sd[None, :], mean, sd


def incumbent(y_TxO: Float[Array, "T O"], mask_T: Float[Array, "T"]):
    """(best observed y_0 among observed feasible rows, whether one exists)."""
    ok = mask_T > 0
    if y_TxO.shape[-1] > 1:
        ok = ok & jnp.all(y_TxO[:, 1:] <= 0, axis=-1)
    best = jnp.max(jnp.where(ok, y_TxO[:, 0], -jnp.inf))
    return jnp.where(jnp.any(ok), best, 0.0), jnp.any(ok)


def _combine(base_Q, pof_Q, has_feasible, constrained: bool):
    if not constrained:
        return base_Q
    return jnp.where(has_feasible, base_Q * pof_Q, pof_Q)


# ----------------------------------------------------------------------------- PFN
class _MaskedPFN(nn.Module):
    """`models.pfn.PFN` (positional=False) with a [B, T] context mask and a static number of key slots."""

    cfg: PFNConfig

    @nn.compact
    def __call__(self, x_BxTxd, y_BxT, ctx_BxT, n_keys: int):
        cfg = self.cfg
        y_BxT = jnp.where(ctx_BxT, y_BxT.astype(jnp.float32), 0.0)
        h = nn.Dense(cfg.width, param_dtype=jnp.float32, name="x_enc")(x_BxTxd.astype(jnp.float32))
        hy = nn.Dense(cfg.width, param_dtype=jnp.float32, name="y_enc")(y_BxT[..., None])
        h = h + jnp.where(ctx_BxT[..., None], hy, 0.0)
        for i in range(cfg.n_layers):
            h = Block(cfg, name=f"block_{i}")(h, ctx_BxT, n_keys)
        h = nn.LayerNorm(param_dtype=jnp.float32, name="ln_f")(h)
        return nn.Dense(cfg.out_dim, param_dtype=jnp.float32, name="head")(h)


def pfn_apply_masked(cfg: PFNConfig, params, x_ctx_BxTxd: Float[Array, "B T d"], y_ctx_BxT: Float[Array, "B T"],
                     mask_BxT: Bool[Array, "B T"], x_q_BxQxd: Float[Array, "B Q d"]) -> Float[Array, "B Q o"]:
    """PFN head outputs at the queries given the masked-in rows of a static context buffer (cost ∝ (T+Q)·T)."""
    if cfg.positional:
        raise ValueError("cfg.positional: got True; allowed False (a PFN without positional encodings)")
    B, T, _ = x_ctx_BxTxd.shape
    Q = x_q_BxQxd.shape[1]
    x = jnp.concatenate([x_ctx_BxTxd.astype(jnp.float32), x_q_BxQxd.astype(jnp.float32)], axis=1)
    y = jnp.concatenate([y_ctx_BxT.astype(jnp.float32), jnp.zeros((B, Q), jnp.float32)], axis=1)
    ctx = jnp.concatenate([mask_BxT.astype(bool), jnp.zeros((B, Q), bool)], axis=1)
    return _MaskedPFN(cfg).apply(params, x, y, ctx, T)[:, T:]


def pfn_acquisition(cfg: PFNConfig, params, borders, *, kind: str, standardize_y: bool, kappa: float = 1.0):
    """acq(x [T, d], y [T, O], mask [T], x_q [Q, d], key) -> [Q] from one PFN pass for all O outputs."""
    borders = jnp.asarray(borders, jnp.float32)

    def acq(x_Txd, y_TxO, mask_T, xq_Qxd, key):
        O = y_TxO.shape[-1]
        m = mask_T.astype(jnp.float32)
        y32 = y_TxO.astype(jnp.float32)
        ys, mean, sd = standardize(y32, m, standardize_y)
        best, has_feas = incumbent(y32, m)
        logits_OxQxK = pfn_apply_masked(cfg, params, jnp.broadcast_to(x_Txd, (O,) + x_Txd.shape), ys.T,
                                        jnp.broadcast_to(mask_T > 0, (O,) + mask_T.shape),
                                        jnp.broadcast_to(xq_Qxd, (O,) + xq_Qxd.shape))
        f_best = (best - mean[0]) / sd[0]
        lg = logits_OxQxK[0]
        if kind == "ei":
            base = bd.expected_improvement(lg, borders, f_best)
        elif kind == "pi":
            base = bd.probability_of_improvement(lg, borders, f_best)
        else:
            base = bd.ucb(lg, borders, kappa=kappa)
        pof = jnp.ones_like(base)
        for j in range(1, O):
            pof = pof * bd.cdf(logits_OxQxK[j], borders, -mean[j] / sd[j])
        return _combine(base, pof, has_feas, O > 1)

    return acq


# ----------------------------------------------------------------------------- GP
def _gaussian_acq(mean_OxQ, var_OxQ, f_best, has_feas, kind: str, kappa: float):
    O = mean_OxQ.shape[0]
    m0, v0 = mean_OxQ[0], var_OxQ[0]
    if kind == "ei":
        base = gp.expected_improvement(m0, v0, f_best)
    elif kind == "pi":
        base = gp.probability_of_improvement(m0, v0, f_best)
    else:
        base = m0 + kappa * jnp.sqrt(v0)
    pof = jnp.prod(ndtr(-mean_OxQ[1:] / jnp.sqrt(var_OxQ[1:])), axis=0) if O > 1 else jnp.ones_like(base)
    return _combine(base, pof, has_feas, O > 1)


def gp_acquisition(*, kind: str, kernel: str, standardize_y: bool, lengthscale=None, outputscale=None, noise=None,
                   ml2: dict | None = None, kappa: float = 1.0):
    """acq(x, y, mask, x_q, key) -> [Q]: fixed hyperparameters, or ``ml2`` = fit_ml2 options (per-step ML-II).

    Float64 inside: call (and jit) it under ``jax.enable_x64(True)``.
    """
    def acq(x_Txd, y_TxO, mask_T, xq_Qxd, key):
        O = y_TxO.shape[-1]
        m = mask_T.astype(jnp.float64)
        y64 = y_TxO.astype(jnp.float64)
        ys, mean, sd = standardize(y64, m, standardize_y)
        best, has_feas = incumbent(y64, m)
        x_b = jnp.broadcast_to(x_Txd, (O,) + x_Txd.shape)
        xq_b = jnp.broadcast_to(xq_Qxd, (O,) + xq_Qxd.shape)
        mask_b = jnp.broadcast_to(m, (O,) + m.shape)
        if ml2 is None:
            ls, s, nz = lengthscale, outputscale, noise
        else:
            ls, s, nz = gp.fit_ml2(key, x_b, ys.T, kernel=kernel, mask=mask_b, **ml2)
        mu, var = gp.posterior_predictive(x_b, ys.T, xq_b, kernel=kernel, lengthscale=ls, outputscale=s, noise=nz,
                                          mask=mask_b)
        # constraint thresholds 0 ↦ −mean/sd: shift the constraint means instead
        shift = jnp.concatenate([jnp.zeros(1), mean[1:] / sd[1:]])
        return _gaussian_acq(mu + shift[:, None], var, (best - mean[0]) / sd[0], has_feas, kind, kappa)

    return acq


def random_acquisition():
    """Random search: every candidate scores 0, the loop takes the first (the candidates are random)."""
    def acq(x_Txd, y_TxO, mask_T, xq_Qxd, key):
        return jnp.zeros(xq_Qxd.shape[0])

    return acq


def check_acquisition(kind: str, *, constrained: bool = False) -> None:
    if kind not in ACQUISITIONS:
        raise ValueError(f"acquisition: got {kind!r}; allowed {ACQUISITIONS}")
    if constrained and kind == "ucb":
        raise ValueError("acquisition: got 'ucb' with constraints; allowed 'ei' or 'pi' (constrained EI/PI)")

