"""The device mesh: data parallel over the prompt batch, the same code on 1 CPU, fake CPU
devices, one GPU or a TPU/GPU pod slice (multi-host through `jax.distributed`).

Axes: ('data', 'model'). Parameters and optimizer state are replicated (the LSA models are
tiny); inside a loss, `shard_batch` constrains the freshly sampled prompts to the data axis.
With `jax_threefry_partitionable` (the default) the sampled bits do not depend on the mesh.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "model")
_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "ICTL_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when a multi-host environment is set.

    Set JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID on every
    host (or run under a cluster jax auto-detects: Cloud TPU, SLURM with ICTL_DISTRIBUTED=1).
    Must run before any other JAX call. Returns True when it initialised. jax's preemption service
    is switched off: ictl handles SIGTERM itself (`ictl.multihost`).
    """
    addr = next((os.environ[k] for k in _DIST_ENV if os.environ.get(k)), None)
    if addr is None and os.environ.get("ICTL_DISTRIBUTED") != "1":
        return False
    kwargs = {}
    if addr is not None:
        kwargs = dict(coordinator_address=addr,
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    try:
        jax.config.update("jax_enable_preemption_service", False)
    except AttributeError:  # a jax without the option installs no handler of its own
        pass
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(data: int | None = None, model: int | None = None) -> Mesh:
    """A (data, model) mesh over all devices; data=-1 takes what `model` leaves.

    Defaults come from ICTL_MESH="DATA,MODEL" (set by `ictl run --mesh`), else (-1, 1).
    """
    env = os.environ.get("ICTL_MESH", "-1,1").split(",")
    data = int(env[0]) if data is None else data
    model = int(env[1]) if model is None else model
    n = jax.device_count()
    if data == -1:
        if n % model:
            raise ValueError(f"mesh.model={model}: must divide the device count {n}")
        data = n // model
    if data * model != n:
        raise ValueError(f"mesh.data*mesh.model={data * model}: must equal the device count {n}")
    devices = np.asarray(jax.devices()).reshape(data, model)
    return Mesh(devices, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(tree):
    """Constrains the leading (batch) axis of every leaf to the 'data' axis of the mesh in use.

    A no-op outside `jax.set_mesh` (plain jit on one device). The batch size must be divisible
    by the data-axis size.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get("data", 1) == 1:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P("data")), tree)
