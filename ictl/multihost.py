"""One job across N processes (a pod slice, SLURM tasks, or local processes): who writes, who decides,
and how every process agrees to stop on SIGTERM.

- `is_primary()`: process 0 alone writes metrics, TensorBoard, results, figures, run.json, config.json.
- `primary_decides(fn)`: process 0 runs ``fn`` (take the workdir lock, check it, write config.json)
  and hands its JSON result — or its `ConfigError` line — to every process through jax.distributed's
  key-value store, so a refused workdir makes every process exit 2 with the same line.
- `StopVote`: SIGTERM may reach one process, all of them, or all at different moments. Each call
  of `fit` casts this process's flag into a tiny all-reduce (one jitted `max` over every device) and
  reads the reduced vote one call later: every process reads the same number at the same step, so
  all of them checkpoint the same step and exit 143. The vote is read one call late so the host never
  waits on the step it has just dispatched (no stall of the training pipeline).
- `barrier(name)`: every process waits for the others (key-value store barrier); `fit` meets there
  after compiling a step, before its first collective.
- `sigterm_watchdog()`: a thread woken by the C-level signal handler (`signal.set_wakeup_fd`), not by
  the Python one, so a process blocked in a collective or a checkpoint wait — where Python handlers
  do not run — still exits with 143 after ICTL_SIGTERM_GRACE seconds (default 60).

jax.distributed's own preemption service (`jax_enable_preemption_service`) is switched off by
`ictl.train.mesh.maybe_initialize_distributed`: it installs a C++ SIGTERM handler that swallows the
signal and expects a sync call at every step; ictl handles SIGTERM itself as described above.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ictl.config import ConfigError

_SEQ = itertools.count()  # every process calls primary_decides in the same order: same key names


def _state():
    """jax.distributed's state (its key-value client, process id): private, the one place ictl reads it."""
    from jax._src import distributed

    return distributed.global_state


def _client():
    return _state().client


def process_count() -> int:
    """The number of processes of this job (1 unless jax.distributed is initialised)."""
    return jax.process_count() if _client() is not None else 1


def is_primary() -> bool:
    """True on process 0 (and in every single-process run); reads no device."""
    state = _state()
    return state.client is None or state.process_id == 0


def _timeout_ms() -> int:
    return int(float(os.environ.get("ICTL_DIST_TIMEOUT", "600")) * 1000)


def primary_decides(fn):
    """``fn()`` on process 0; every process returns its (JSON round-tripped) result.

    A `ConfigError` on process 0 is raised on every process with the same message. Other processes
    wait at most ICTL_DIST_TIMEOUT seconds (default 600) for process 0's answer.
    """
    if process_count() == 1:
        return fn()
    client, key = _client(), f"ictl/decide/{next(_SEQ)}"
    if is_primary():
        try:
            out = json.loads(json.dumps(fn()))
        except ConfigError as e:
            client.key_value_set(key, json.dumps({"error": str(e)}))
            raise
        except BaseException as e:
            client.key_value_set(key, json.dumps({"crash": f"{type(e).__name__}: {e}"}))
            raise
        client.key_value_set(key, json.dumps({"ok": out}))
        return out
    try:
        answer = json.loads(client.blocking_key_value_get(key, _timeout_ms()))
    except Exception as e:  # DEADLINE_EXCEEDED, or the coordinator (process 0) is gone
        raise RuntimeError(f"no answer from process 0 on {key} within ICTL_DIST_TIMEOUT="
                           f"{_timeout_ms() / 1000:g} s ({type(e).__name__}: {str(e)[:200]})") from None
    if "error" in answer:
        raise ConfigError(answer["error"])
    if "crash" in answer:
        raise RuntimeError(f"process 0 failed: {answer['crash']}")
    return answer["ok"]


def barrier(name: str) -> None:
    """Waits until every process reaches this point (ICTL_DIST_TIMEOUT, default 600 s); no-op alone.

    `fit` meets here after compiling a step and before running it: gloo (CPU collectives) gives
    processes only 30 s to meet at a collective over a new device set, less than one slow compile.
    """
    if process_count() > 1:
        _client().wait_at_barrier(f"ictl/barrier/{name}/{next(_SEQ)}", _timeout_ms())


def same_on_all(value: int, what: str) -> None:
    """RuntimeError unless every process holds the same integer (e.g. the checkpoint step it restored)."""
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    values = np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)
    if np.any(values != value):
        raise RuntimeError(f"{what}: the processes disagree ({values.tolist()}); a job's processes must "
                           "see one shared workdir")


class StopVote:
    """Agrees across processes whether to stop: `cast(flag)` each call, returns the vote of the call before.

    Single process: returns ``flag`` itself (no collective). Multi-process: the all-reduce is
    dispatched with the call's flag and read at the next call, so every process gets the same
    answer at the same call (collectives run in the same order everywhere); `final(flag)` reads a
    last vote at once (end of `fit`).
    """

    _reducers: dict = {}  # mesh -> the compiled all-reduce (one compile per mesh, not per fit)

    def __init__(self, mesh):
        self.multi = process_count() > 1
        self.pending = None
        if self.multi:
            self.sharding = NamedSharding(mesh, P(*mesh.axis_names))
            self.shape = tuple(mesh.devices.shape)
            if mesh not in StopVote._reducers:
                with jax.set_mesh(mesh):
                    reduce = jax.jit(lambda f: f.max(), out_shardings=NamedSharding(mesh, P()))
                    reduce.lower(jax.ShapeDtypeStruct(self.shape, np.int32, sharding=self.sharding)).compile()
                barrier("stop-vote compiled")
                StopVote._reducers[mesh] = reduce
            self.reduce = StopVote._reducers[mesh]

    def _dispatch(self, flag: bool):
        local = np.full(self.shape, int(flag), np.int32)
        arr = jax.make_array_from_callback(self.shape, self.sharding, lambda idx: local[idx])
        return self.reduce(arr)

    def cast(self, flag: bool) -> bool:
        if not self.multi:
            return flag
        previous, self.pending = self.pending, self._dispatch(flag)
        return previous is not None and bool(np.asarray(previous))

    def final(self, flag: bool) -> bool:
        if not self.multi:
            return flag
        self.pending = None
        return bool(np.asarray(self._dispatch(flag)))


_WATCHDOG = {"thread": None, "fd": None}


def sigterm_watchdog() -> int:
    """Starts (once per process) the thread that exits 143 ICTL_SIGTERM_GRACE s after a SIGTERM.

    Returns the write end of its pipe, for `signal.set_wakeup_fd` while a Python SIGTERM handler is
    installed: the C-level handler writes the signal number there even while the main thread is
    blocked in XLA or orbax, where the Python handler cannot run.
    """
    if _WATCHDOG["thread"] is None:
        r, w = os.pipe()
        os.set_blocking(w, False)

        def watch():
            while True:
                data = os.read(r, 64)
                if signal.SIGTERM in data:
                    break
            grace = float(os.environ.get("ICTL_SIGTERM_GRACE", "60"))
            time.sleep(grace)
            print(f"ictl: SIGTERM — still running {grace:g} s later (blocked in a collective or checkpoint "
                  "wait?); exiting 143 without a new checkpoint", file=sys.stderr, flush=True)
            os._exit(143)

        _WATCHDOG["thread"] = threading.Thread(target=watch, name="ictl-sigterm-watchdog", daemon=True)
        _WATCHDOG["thread"].start()
        _WATCHDOG["fd"] = w
    return _WATCHDOG["fd"]
