"""The training loop: jitted pure steps, metrics, checkpoints, exact resume, SIGTERM, divergence.

``fit`` runs ``step_fn(state, fold_in(key, step))`` from the state's step to ``num_steps`` (``key`` may
be a stack of per-seed keys [S] for a `ictl.train.seeds.vmap_seeds` step; each is folded):
- metrics every ``log_every`` steps to ``workdir/metrics.jsonl`` and TensorBoard event files
  (``workdir/tb``), a progress bar on stderr (off with ICTL_NO_PROGRESS=1);
- orbax checkpoints every ``ckpt_every`` steps and at the end (``workdir/ckpt``); on start it
  restores the newest readable one, so a killed and resumed run ends bitwise where an
  uninterrupted one does (the per-step key depends only on the step);
- a non-finite loss raises `Diverged` naming the step, after the last good checkpoint is kept
  (the state is checked before every save, so a NaN state is never written);
- SIGTERM: finishes the current step (or chunk), checkpoints, exits with status 143; in a job of
  N processes every process handles it and they agree (`ictl.multihost.StopVote`) on the one step
  all of them checkpoint, so the signal may reach one process or all; a process blocked in a
  collective or checkpoint wait exits 143 ICTL_SIGTERM_GRACE seconds (default 60) after the signal;
- multi-process: checkpoints are written collectively into the one shared ``workdir/ckpt``;
  metrics.jsonl, TensorBoard, sessions.jsonl and the progress bar by process 0 only; every process
  returns the same history (earlier sessions' records from the file, this session's from memory);
- ``steps_per_call=K`` runs K steps per dispatch inside one jitted loop (`multi_step`) with the same
  per-step keys ``fold_in(key, step)``; the loop's trip count is a runtime value, so one executable
  serves K-step calls, single calls and resumes alike: the parameters are bitwise those of K single
  calls. Logging, evaluation and checkpoints happen at multiples of K (which must divide their
  intervals). Tiny models spend much of a step in dispatch; K = 10–50 removes it;
- every call appends one line to ``workdir/sessions.jsonl``: the step it restored (None: fresh),
  the steps it ran, its wall seconds and K — what a resumed run did is on record.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ictl.multihost import StopVote, barrier, is_primary, process_count, same_on_all, sigterm_watchdog
from ictl.train import checkpoint
from ictl.train.mesh import make_mesh, replicated
from ictl.train.seeds import fold_keys
from ictl.train.tensorboard import EventWriter


class Diverged(RuntimeError):
    """A non-finite loss; ``step`` is the first step seen to produce it."""

    def __init__(self, step: int, metrics: dict, ckpt_step):
        self.step = step
        super().__init__(f"loss became non-finite at step {step} (metrics {metrics}); "
                         f"last good checkpoint: step {ckpt_step}")


def _scalars(metrics) -> dict:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


SESSIONS_FILE = "sessions.jsonl"


def read_sessions(workdir) -> list[dict]:
    """One record per `fit` call on ``workdir``: restored_step, start, end, steps_run, seconds, steps_per_call."""
    path = pathlib.Path(workdir) / SESSIONS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_history(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _history_upto(path: pathlib.Path, last_step: int) -> list[str]:
    """The lines of records with step <= last_step (a half-written last line, being appended by
    process 0 while another process reads, is skipped: its step is past last_step anyway)."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            if line.strip() and json.loads(line)["step"] <= last_step:
                keep.append(line)
        except ValueError:
            continue
    return keep


def _truncate_history(path: pathlib.Path, keep: list[str]) -> None:
    if path.exists():  # atomic: another process may be reading it
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)


def _progress(total: int, initial: int, desc: str):
    if os.environ.get("ICTL_NO_PROGRESS") == "1" or not is_primary():
        return None
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 15.0  # a log file gets a line every 15 s, not a flood
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr,
                mininterval=interval)


def _own_copy(x):
    """A fresh buffer for every shard of a jax.Array, on its own devices, committed as it was (the copy of
    an uncommitted array then joins a multi-process mesh like the array would), nothing compiled; other
    leaves are returned as they are. An array not fully addressable (a multi-process global array) gets a
    jitted copy: device_put would hand back its buffers."""
    if not isinstance(x, jax.Array):
        return x
    if not x.is_fully_addressable:
        return x.copy()
    return jax.device_put(x, may_alias=False)


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
    steps_per_call: int = 1,
):
    """Trains to ``num_steps`` (resuming from ``workdir`` if it holds checkpoints).

    Returns (state, history): history is every logged record {step, loss, ...} of this run,
    earlier sessions' included. ``eval_fn(state) -> dict`` adds scalars every ``eval_every``
    steps (and at step 0 and the end). ``steps_per_call`` (K ≥ 1, dividing ``log_every``,
    ``ckpt_every`` and ``eval_every``) steps run per dispatch; the last call may run fewer.
    """
    eval_every = eval_every or log_every
    check_steps_per_call(steps_per_call, log_every=log_every, ckpt_every=ckpt_every, eval_every=eval_every)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh if mesh is not None else make_mesh()
    rep = replicated(mesh)
    # the caller keeps its arrays (the step donates): device_put(may_alias=False) onto a mesh of more than
    # one device still hands device 0 the caller's buffer (jax 0.10.2), so copy first, where the array lies,
    # which copies every shard and compiles nothing (x.copy() compiled one program per leaf shape)
    state = jax.device_put(jax.tree.map(_own_copy, state), rep)
    mngr = checkpoint.manager(workdir / "ckpt", keep=keep)
    restored, ckpt_step = checkpoint.restore_latest(mngr, state, sharding=rep)
    same_on_all(-1 if ckpt_step is None else ckpt_step, "restored checkpoint step")
    if restored is not None:
        state = restored
    start = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])  # a seed stack has one step per seed, all equal
    hist_path = workdir / "metrics.jsonl"
    earlier = _history_upto(hist_path, start)  # records past the checkpoint are redone exactly
    history = [json.loads(line) for line in earlier]
    main, multi = is_primary(), process_count() > 1
    if main:
        _truncate_history(hist_path, earlier)
    tb = EventWriter(workdir / "tb") if main else None
    hist_f = open(hist_path, "a") if main else None

    # ONE executable runs any number of steps (a dynamic trip count), so K-step calls, single calls, the
    # shorter last call and resumed runs all execute the same compiled step: bitwise equal by construction
    with jax.set_mesh(mesh):
        run_steps = jax.jit(_multi_step_of(step_fn), in_shardings=(rep, rep), out_shardings=(rep, rep),
                            donate_argnums=0)
        if multi:  # every process compiled before any enters the step's first collective
            run_steps = run_steps.lower(state, (key, np.int32(start), np.int32(1))).compile()
            barrier(f"{desc} step compiled")

    def log(step: int, record: dict) -> None:
        history.append({"step": step, **record})
        if main:
            hist_f.write(json.dumps(history[-1]) + "\n")
            hist_f.flush()
            tb.scalars(step, record)

    def do_eval(step: int) -> dict:
        return _scalars(eval_fn(state)) if eval_fn is not None else {}

    stop = {"sigterm": False}
    vote = StopVote(mesh)  # one process or N: the same stop decision at the same step everywhere
    handling = _can_handle_signals()
    if handling:
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("sigterm", True))
        old_wakeup = signal.set_wakeup_fd(sigterm_watchdog())
    bar = _progress(num_steps, start, desc)
    last_saved = ckpt_step
    t_start = time.time()
    step = start
    try:
        if start == 0 and eval_fn is not None:
            log(0, do_eval(0))
        while step < num_steps:
            n = min(steps_per_call - step % steps_per_call, num_steps - step)  # realigns a resume at step % K != 0
            # numpy scalars: jnp.int32(...) is an eager jax op, ≈ 0.17 ms CPU each, twice per call (measured)
            with jax.set_mesh(mesh):
                new_state, (metrics, bad, bad_metrics) = run_steps(state, (key, np.int32(step), np.int32(n)))
            done = step + n
            stopping = vote.cast(stop["sigterm"])
            if done == num_steps and not stopping:
                stopping = vote.final(stop["sigterm"])
            need_log = done % log_every == 0 or done == num_steps
            need_ckpt = done % ckpt_every == 0 or done == num_steps or stopping
            if need_log or need_ckpt:
                bad = int(bad)  # the first step of the call with a non-finite metric (−1: none) is named
                if bad >= 0:
                    raise Diverged(step + bad + 1, _scalars(bad_metrics), last_saved)
                m = _scalars(metrics)
            state, step = new_state, done
            if need_log:
                if eval_fn is not None and (done % eval_every == 0 or done == num_steps):
                    m.update(do_eval(done))
                log(done, m)
                if bar is not None:
                    bar.set_postfix(loss=f"{m['loss']:.4g}")
            if bar is not None:
                bar.update(n)
            if need_ckpt:
                checkpoint.save(mngr, done, state)
                last_saved = done
            if stopping:
                mngr.wait_until_finished()
                print(f"ictl: SIGTERM — checkpointed step {done} in {workdir}; `ictl resume` continues",
                      file=sys.stderr)
                raise SystemExit(143)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if main:
            with open(workdir / SESSIONS_FILE, "a") as f:
                f.write(json.dumps({"restored_step": ckpt_step, "start": start, "end": step, "steps_run": step - start,
                                    "seconds": round(time.time() - t_start, 3), "steps_per_call": steps_per_call})
                        + "\n")
        if bar is not None:
            bar.close()
        if main:
            hist_f.close()
            tb.close()
        if handling:  # None: the old handler was not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_handler is None else old_handler)
            signal.set_wakeup_fd(old_wakeup)
    return state, history


@functools.lru_cache(maxsize=8)
def _cached_multi_step(step_fn: Callable) -> Callable:
    return multi_step(step_fn)


def _multi_step_of(step_fn: Callable) -> Callable:
    """``multi_step(step_fn)``, the same function object for the same ``step_fn``: a second ``fit`` with one
    step function (a resumed run, the next training segment) then finds jax's trace and compile caches
    instead of tracing and lowering the step again. The cache holds the last 8 step functions (it keeps
    them alive, with whatever they close over)."""
    try:
        return _cached_multi_step(step_fn)
    except TypeError:  # unhashable: a fresh closure, as before
        return multi_step(step_fn)


def multi_step(step_fn: Callable) -> Callable:
    """``(state, (key, step0, n)) -> (state, (metrics, bad, bad_metrics))``: n calls of ``step_fn`` in one
    ``lax.fori_loop`` whose trip count n is a runtime value, step i drawing ``fold_in(key, step0 + i)``
    exactly as single calls would. One compiled body serves every n, so any chunking of the steps gives
    the same bits. ``metrics`` are the last step's; ``bad`` the index of the first step with a
    non-finite floating metric (−1: none) and ``bad_metrics`` that step's metrics."""

    def run(state, args):
        key, step0, n = args
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                             jax.eval_shape(step_fn, state, fold_keys(key, step0))[1])

        def body(i, carry):
            st, _, bad, bad_m = carry
            st, m = step_fn(st, fold_keys(key, step0 + i))
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(m)
                                        if jnp.issubdtype(v.dtype, jnp.floating)] or [jnp.bool_(True)]))
            first = (bad < 0) & ~finite
            bad_m = jax.tree.map(lambda b, x: jnp.where(first, x, b), bad_m, m)
            return st, m, jnp.where(first, i, bad), bad_m

        st, m, bad, bad_m = jax.lax.fori_loop(0, n, body, (state, zeros, jnp.int32(-1), zeros))
        return st, (m, bad, bad_m)

    return run


def check_steps_per_call(k, *, log_every: int, ckpt_every: int, eval_every: int | None = None) -> None:
    """ValueError unless k is an integer >= 1 dividing the logging, evaluation and checkpoint intervals."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"steps_per_call={k!r}: allowed an integer >= 1")
    for name, every in (("log_every", log_every), ("ckpt_every", ckpt_every), ("eval_every", eval_every)):
        if every is not None and every % k:
            raise ValueError(f"steps_per_call={k}: must divide {name}={every}; allowed a divisor of {every}")


def _can_handle_signals() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
