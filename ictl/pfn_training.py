"""Training a PFN on a prior: the loss, the context-size sampler, borders, evaluation over n.

The PFN objective (Müller et al. 2022) is the prior-data negative log-likelihood

    ℓ(θ) = E_{D ~ p(D)} [ −log q_θ(y_q | x_q, D_n) ]  = E_{D_n, x_q} KL(p(·|x_q, D_n) ‖ q_θ) + const,

so its minimiser is the posterior predictive. Each step draws fresh datasets of N points from
the prior (inside the jitted step, from the step key), one context size n per batch with
P(n) ∝ 1/(N − n), n ∈ {0, …, N − 1} (each n then contributes about equally many query targets),
uses the first n points as the context and the other N − n as queries, and averages −log q over
the queries.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from models.pfn import PFN
from objectives import bar_distribution as bd


def context_size_weights(n_points: int) -> np.ndarray:
    """P(n) ∝ 1/(N − n) for n = 0..N−1 (normalised)."""
    if not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points: got {n_points!r}; allowed an integer >= 2")
    w = 1.0 / (n_points - np.arange(n_points))
    return w / w.sum()


def sample_context_size(key: jax.Array, n_points: int) -> Int[Array, ""]:
    """One n ~ P(n) ∝ 1/(N − n) (traced int32 scalar)."""
    logits = jnp.log(jnp.asarray(context_size_weights(n_points), jnp.float32))
    return jax.random.categorical(key, logits).astype(jnp.int32)


def head_log_prob(out: Float[Array, "*S o"], y: Float[Array, "*S"], *, head: str, borders=None) -> Float[Array, "*S"]:
    """log q(y) of a PFN output: bar logits with ``borders``, or (mean, log-variance)."""
    if head == "bar":
        return bd.log_prob(out, borders, y)
    return bd.gaussian_log_prob(out[..., 0], out[..., 1], y)


def make_loss_fn(model: PFN, sample_datasets: Callable, *, n_points: int, borders=None) -> Callable:
    """loss_fn(params, key) -> (loss, metrics) for `ictl.train.make_train_step`.

    ``sample_datasets(key) -> (x [B, N, d], y [B, N], ...)`` draws a fresh batch of prior datasets.
    """
    if model.cfg.head == "bar":
        bd.check_borders(borders)
        if np.asarray(borders).shape[0] != model.cfg.num_buckets + 1:
            raise ValueError(f"borders: got {np.asarray(borders).shape[0]} values; allowed num_buckets + 1 = "
                             f"{model.cfg.num_buckets + 1}")
        borders = jnp.asarray(borders, jnp.float32)

    def loss_fn(params, key):
        k_data, k_n = jax.random.split(key)
        ds = sample_datasets(k_data)
        x_BxNxd, y_BxN = ds[0], ds[1]
        n = sample_context_size(k_n, n_points)
        out = model.apply(params, x_BxNxd, y_BxN, n)
        q_N = (jnp.arange(n_points) >= n).astype(jnp.float32)
        lp_BxN = head_log_prob(out, y_BxN, head=model.cfg.head, borders=borders)
        loss = -jnp.sum(lp_BxN * q_N[None, :]) / (x_BxNxd.shape[0] * jnp.sum(q_N))
        return loss, {"nll": loss, "n_ctx": n.astype(jnp.float32)}

    return loss_fn


@functools.lru_cache(maxsize=16)
def _nll_given_context(model: PFN, T: int, borders: bytes | None):
    """The jitted ``one(params, x, y, n)`` -> NLL [B, T] given the first n points as context (NaN at the
    context's own positions), one per (model, T, borders), so that repeated calls hit its compile cache.
    The borders stay a constant of the program, as in a closure: passed as an argument, the bar head's
    numbers differ in the last bits (XLA folds the constant borders)."""
    b = None if borders is None else jnp.asarray(np.frombuffer(borders, np.float32))

    @jax.jit
    def one(params, x, y, n):
        out = model.apply(params, x, y, n)
        nll = -head_log_prob(out, y, head=model.cfg.head, borders=b)
        return jnp.where(jnp.arange(T)[None, :] >= n, nll, jnp.nan)

    return one


def nll_over_context_sizes(model: PFN, params, x_BxTxd, y_BxT, n_list, *, borders=None,
                           chunk: int = 256) -> np.ndarray:
    """NLL [len(n_list), B, T] at every position given the first n points as context (n ∈ n_list);
    entries at positions < n (the context itself) are NaN. One compile for every n (n traced) and
    every later call with the same model, shapes and borders; float64 host array."""
    T = x_BxTxd.shape[1]
    if any(not 0 <= n < T for n in n_list):
        raise ValueError(f"n_list: got {list(n_list)}; allowed 0 <= n < T = {T}")
    one = _nll_given_context(model, T, None if borders is None else np.asarray(borders, np.float32).tobytes())
    rows = []
    for n in n_list:
        # np.int32: the same int32 argument as jnp.int32(n), without an eager jax op per call
        parts = [one(params, x_BxTxd[s:s + chunk], y_BxT[s:s + chunk], np.int32(n))
                 for s in range(0, x_BxTxd.shape[0], chunk)]
        rows.append(np.concatenate([np.asarray(p, np.float64) for p in parts]))
    return np.stack(rows)


def exact_nll_over_context_sizes(x_BxTxd, y_BxT, n_list, *, kernel: str, lengthscale, outputscale,
                                 noise) -> np.ndarray:
    """The exact GP's NLL [len(n_list), B, T] in the same layout (float64; hyperparameters broadcast
    per dataset as in `ictl.theory.gp.posterior_predictive`)."""
    from ictl.theory import gp

    T = x_BxTxd.shape[1]
    y64 = np.asarray(y_BxT, np.float64)
    rows = []
    for n in n_list:
        mask = np.broadcast_to((np.arange(T) < n).astype(np.float64), y64.shape)
        mean, var = gp.posterior_predictive(x_BxTxd, y_BxT, x_BxTxd, kernel=kernel, lengthscale=lengthscale,
                                            outputscale=outputscale, noise=noise, mask=mask)
        mean, var = np.asarray(mean), np.asarray(var)
        nll = 0.5 * (np.log(2 * np.pi * var) + (y64 - mean) ** 2 / var)
        rows.append(np.where(np.arange(T)[None, :] >= n, nll, np.nan))
    return np.stack(rows)
