"""Many seeds per step: S independent models trained in one vmapped step.

The Garg et al. code trains one seed per process; here the parameters and optimizer state of S
models are stacked on a leading axis [S, ...] and one jitted step updates all of them:

    keys_S = seed_keys(seed, S)                       # the keys of seeds seed, seed+1, …, seed+S−1
    state_S = jax.vmap(init)(keys_S)                  # any per-seed init(key) -> TrainState
    state_S, hist = fit(state_S, vmap_seeds(step_fn), key=train_keys(keys_S), ...)

`fit` folds the step into every seed's key (``fold_in(key_s, step)``), so seed s draws its own
prompts; checkpoints, resume and ``steps_per_call`` work unchanged on the stacked state. The
logged metrics are the mean over seeds of every metric, plus ``loss_min`` / ``loss_max`` and
one ``loss_s{i}`` per seed (a NaN in any seed makes the mean NaN, so divergence still stops the
run). `unstack(tree, s)` takes seed s's slice for evaluation.

Seed s of a stack uses the same keys as a one-seed run with ``seed + s``; its numbers agree
with that run to float32 rounding, not bit for bit (vmap batches the matmuls differently).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def seed_keys(seed: int, seeds: int) -> jax.Array:
    """[S] keys: ``jax.random.key(seed + s)`` for s < S."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r}: allowed an integer >= 1")
    return jnp.stack([jax.random.key(seed + s) for s in range(seeds)])


def fold_keys(keys: jax.Array, data) -> jax.Array:
    """``fold_in`` for one key (shape ()) or a stack of keys (shape [S])."""
    if keys.ndim == 0:
        return jax.random.fold_in(keys, data)
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def vmap_seeds(step_fn: Callable) -> Callable:
    """``step(state_S, key_S) -> (state_S, metrics)``: ``step_fn`` on every seed, metrics summarised."""

    def step(state, keys):
        state, metrics = jax.vmap(step_fn)(state, keys)
        return state, summarize(metrics)

    return step


def summarize(metrics: dict) -> dict:
    """Per-seed scalars [S] → their means, plus loss min/max and each seed's loss."""
    out = {k: jnp.mean(v) for k, v in metrics.items()}
    if "loss" in metrics:
        loss_S = metrics["loss"]
        out["loss_min"], out["loss_max"] = jnp.min(loss_S), jnp.max(loss_S)
        out.update({f"loss_s{i}": loss_S[i] for i in range(loss_S.shape[0])})
    return out


def unstack(tree, s: int):
    """Seed s's slice of a stacked pytree."""
    return jax.tree.map(lambda x: x[s], tree)
