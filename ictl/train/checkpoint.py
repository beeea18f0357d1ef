"""Orbax checkpoints of the train state: save, and restore the newest readable step.

Restores use an abstract target (shapes, dtypes, shardings) so optax state types come back
exactly; a damaged newest step (truncated data, broken metadata) is reported and skipped in
favour of the one before.
"""
from __future__ import annotations

import pathlib
import sys

import jax
import orbax.checkpoint as ocp


def manager(directory: pathlib.Path, *, keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    mngr.save(int(step), args=ocp.args.StandardSave(state))


def _abstract(state, sharding):
    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding)

    return jax.tree.map(leaf, state)


def restore_latest(mngr: ocp.CheckpointManager, like, *, sharding=None):
    """Returns (state, step) from the newest readable checkpoint, or (None, None) if none."""
    target = _abstract(like, sharding)
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            state = mngr.restore(step, args=ocp.args.StandardRestore(target))
            return state, step
        except Exception as e:  # orbax raises bare Exception / JSONDecodeError on damaged files
            print(f"ictl: checkpoint step {step} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                  "falling back to the one before", file=sys.stderr)
    return None, None
