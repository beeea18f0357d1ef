"""The train state and the pure train step."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params and opt_state: pytrees. The optimizer itself is not state."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, *, params, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
    """Returns ``step(state, key) -> (state, metrics)``, pure, to be jitted by `fit` or the caller.

    ``loss_fn(params, key) -> (loss, metrics)`` draws its own batch from ``key`` (fresh prompts
    each step; `fit` passes ``fold_in(key, step)``). metrics gets 'loss' and 'grad_norm'.
    """

    def step(state: TrainState, key: jax.Array):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step
