"""The training loop: jitted pure steps, metrics, checkpoints, exact resume, SIGTERM, divergence.

``fit`` runs ``step_fn(state, fold_in(key, step))`` from the state's step to ``num_steps``:
- metrics every ``log_every`` steps to ``workdir/metrics.jsonl`` and TensorBoard event files
  (``workdir/tb``), a progress bar on stderr (off with ICTL_NO_PROGRESS=1);
- orbax checkpoints every ``ckpt_every`` steps and at the end (``workdir/ckpt``); on start it
  restores the newest readable one, so a killed and resumed run ends bitwise where an
  uninterrupted one does (the per-step key depends only on the step);
- a non-finite loss raises `Diverged` naming the step, after the last good checkpoint is kept
  (the state is checked before every save, so a NaN state is never written);
- SIGTERM: finishes the current step, checkpoints, exits with status 143.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import sys
from collections.abc import Callable

import jax
import numpy as np

from ictl.train import checkpoint
from ictl.train.mesh import make_mesh, replicated
from ictl.train.tensorboard import EventWriter


class Diverged(RuntimeError):
    """A non-finite loss; ``step`` is the first step seen to produce it."""

    def __init__(self, step: int, metrics: dict, ckpt_step):
        self.step = step
        super().__init__(f"loss became non-finite at step {step} (metrics {metrics}); "
                         f"last good checkpoint: step {ckpt_step}")


def _scalars(metrics) -> dict:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def _finite(m: dict) -> bool:
    return all(math.isfinite(v) for v in m.values())


def read_history(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_history(path: pathlib.Path, last_step: int) -> None:
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in keep))


def _progress(total: int, initial: int, desc: str):
    if os.environ.get("ICTL_NO_PROGRESS") == "1" or jax.process_index() != 0:
        return None
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 15.0  # a log file gets a line every 15 s, not a flood
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr,
                mininterval=interval)


def fit(
    state,
    step_fn: Callable,
    *,
    key: jax.Array,
    num_steps: int,
    workdir: pathlib.Path | str,
    log_every: int = 100,
    ckpt_every: int = 1000,
    eval_fn: Callable | None = None,
    eval_every: int | None = None,
    desc: str = "train",
    mesh=None,
    keep: int = 2,
):
    """Trains to ``num_steps`` (resuming from ``workdir`` if it holds checkpoints).

    Returns (state, history): history is every logged record {step, loss, ...} of this run,
    earlier sessions' included. ``eval_fn(state) -> dict`` adds scalars every ``eval_every``
    steps (and at step 0 and the end).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh if mesh is not None else make_mesh()
    rep = replicated(mesh)
    state = jax.device_put(state, rep, may_alias=False)  # the caller keeps its arrays (the step donates)
    mngr = checkpoint.manager(workdir / "ckpt", keep=keep)
    restored, ckpt_step = checkpoint.restore_latest(mngr, state, sharding=rep)
    if restored is not None:
        state = restored
    start = int(jax.device_get(state.step))
    hist_path = workdir / "metrics.jsonl"
    _truncate_history(hist_path, start)  # records past the checkpoint are redone exactly
    main = jax.process_index() == 0
    tb = EventWriter(workdir / "tb") if main else None
    hist_f = open(hist_path, "a") if main else None

    with jax.set_mesh(mesh):
        jstep = jax.jit(step_fn, in_shardings=(rep, rep), out_shardings=(rep, rep), donate_argnums=0)
    eval_every = eval_every or log_every

    def log(step: int, record: dict) -> None:
        if main:
            hist_f.write(json.dumps({"step": step, **record}) + "\n")
            hist_f.flush()
            tb.scalars(step, record)

    def do_eval(step: int) -> dict:
        return _scalars(eval_fn(state)) if eval_fn is not None else {}

    stop = {"sigterm": False}
    old_handler = None
    if jax.process_index() == 0 and _can_handle_signals():
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("sigterm", True))
    bar = _progress(num_steps, start, desc)
    last_saved = ckpt_step
    try:
        if start == 0 and eval_fn is not None:
            log(0, do_eval(0))
        for step in range(start, num_steps):
            with jax.set_mesh(mesh):
                new_state, metrics = jstep(state, jax.random.fold_in(key, step))
            done = step + 1
            need_log = done % log_every == 0 or done == num_steps
            need_ckpt = done % ckpt_every == 0 or done == num_steps or stop["sigterm"]
            if need_log or need_ckpt:
                m = _scalars(metrics)
                if not _finite(m):
                    raise Diverged(done, m, last_saved)
            state = new_state
            if need_log:
                if eval_fn is not None and (done % eval_every == 0 or done == num_steps):
                    m.update(do_eval(done))
                log(done, m)
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.4g}")
            if bar is not None:
                bar.update(1)
            if need_ckpt:
                checkpoint.save(mngr, done, state)
                last_saved = done
            if stop["sigterm"]:
                mngr.wait_until_finished()
                print(f"ictl: SIGTERM — checkpointed step {done} in {workdir}; `ictl resume` continues",
                      file=sys.stderr)
                raise SystemExit(143)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if bar is not None:
            bar.close()
        if main:
            hist_f.close()
            tb.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    return state, read_history(workdir)


def _can_handle_signals() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
