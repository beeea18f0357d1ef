"""The training loop: exact resume, divergence, SIGTERM, damaged checkpoints, metrics files, jit."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ictl import lsa_training as lt
from ictl.train import Diverged, TrainState, fit, make_train_step
from ictl.train.tensorboard import read_events

D, N = 3, 8


def _setup(lr=0.05, batch=64):
    model, params = lt.init_params(jax.random.key(0), d=D, sigma=0.2)
    tx = optax.adam(lr)
    step = make_train_step(lt.prompt_loss_fn(model, d=D, N=N, batch=batch), tx)
    return TrainState.create(params=params, tx=tx), step


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_is_bitwise_exact(tmp_path):
    state, step = _setup()
    key = jax.random.key(1)
    full, hist_full = fit(state, step, key=key, num_steps=60, workdir=tmp_path / "a", log_every=10, ckpt_every=25)
    part, _ = fit(state, step, key=key, num_steps=35, workdir=tmp_path / "b", log_every=10, ckpt_every=25)
    # the run "died" after step 35: the checkpoint at 35 (end) exists; drop it to resume from 25
    shutil.rmtree(tmp_path / "b" / "ckpt" / "35")
    resumed, hist = fit(state, step, key=key, num_steps=60, workdir=tmp_path / "b", log_every=10, ckpt_every=25)
    assert int(resumed.step) == 60 and _same(full, resumed)
    assert [h["step"] for h in hist] == [10, 20, 30, 40, 50, 60]  # 30 was redone, not duplicated
    assert hist == hist_full


def test_jit_matches_no_jit():
    state, step = _setup()
    key = jax.random.key(3)
    s_jit, m_jit = jax.jit(step)(state, key)
    with jax.disable_jit():
        s_eager, m_eager = step(state, key)
    for a, b in zip(jax.tree.leaves(s_jit), jax.tree.leaves(s_eager)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)  # float32 op-order differences only
    np.testing.assert_allclose(m_jit["loss"], m_eager["loss"], rtol=1e-5)


def test_divergence_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    state, _ = _setup()
    tx = optax.sgd(1.0)

    def loss_fn(params, key):  # finite until the step count passes 30, then NaN
        loss = sum(jnp.sum(p**2) for p in jax.tree.leaves(params)) * 0 + 1.0
        return loss, {}

    def step(st, key):
        new, m = make_train_step(loss_fn, tx)(st, key)
        bad = st.step >= 30
        return new, {**m, "loss": jnp.where(bad, jnp.nan, m["loss"])}

    with pytest.raises(Diverged) as e:
        fit(TrainState.create(params=state.params, tx=tx), step, key=jax.random.key(0), num_steps=100,
            workdir=tmp_path, log_every=5, ckpt_every=10)
    assert e.value.step == 35 and "step 35" in str(e.value) and "last good checkpoint: step 30" in str(e.value)
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [20, 30]


def test_damaged_checkpoint_falls_back(tmp_path, capsys):
    state, step = _setup()
    key = jax.random.key(4)
    ref, _ = fit(state, step, key=key, num_steps=40, workdir=tmp_path / "ref", log_every=10, ckpt_every=20)
    fit(state, step, key=key, num_steps=40, workdir=tmp_path / "x", log_every=10, ckpt_every=20)
    # damage every file of the newest step (40): the loop must fall back to step 20 and redo 20..40
    for f in (tmp_path / "x" / "ckpt" / "40").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0" * 7)
    again, _ = fit(state, step, key=key, num_steps=40, workdir=tmp_path / "x", log_every=10, ckpt_every=20)
    assert "checkpoint step 40 is unreadable" in capsys.readouterr().err
    assert _same(ref, again)


def test_metrics_jsonl_and_tensorboard(tmp_path):
    state, step = _setup()
    _, hist = fit(state, step, key=jax.random.key(5), num_steps=20, workdir=tmp_path, log_every=5, ckpt_every=20)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20] and lines == hist
    assert lines[-1]["loss"] < lines[0]["loss"]  # Adam on this tiny LSA lowers the loss in 20 steps
    (ev,) = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = read_events(ev)  # tensorboardX's protobufs; CRCs checked inside
    assert len(events) == 1 + 4 and events[0].file_version == "brain.Event:2"
    logged = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[1:]]
    assert [s for s, _ in logged] == [5, 10, 15, 20]
    for (_, got), want in zip(logged, lines):  # every scalar of metrics.jsonl, to float32 precision
        assert got.keys() == {k for k in want if k != "step"}
        assert all(got[k] == pytest.approx(want[k], rel=1e-6) for k in got)


SIGTERM_SCRIPT = textwrap.dedent("""
    import os, sys, jax, optax
    sys.path.insert(0, {root!r})
    from ictl import lsa_training as lt
    from ictl.train import TrainState, fit, make_train_step
    model, params = lt.init_params(jax.random.key(0), d=3, sigma=0.2)
    tx = optax.adam(0.05)
    base = make_train_step(lt.prompt_loss_fn(model, d=3, N=8, batch=64), tx)
    def step(state, key):
        new, m = base(state, key)
        # the test's signal arrives while step 7 runs (host callback), like a real preemption
        jax.debug.callback(lambda s: os.kill(os.getpid(), 15) if int(s) == 7 else None, state.step)
        return new, m
    fit(TrainState.create(params=params, tx=tx), step, key=jax.random.key(1), num_steps=1000,
        workdir={wd!r}, log_every=100, ckpt_every=500)
""")


def test_sigterm_checkpoints_then_exits(tmp_path):
    script = SIGTERM_SCRIPT.format(root=str(pathlib.Path(__file__).parents[1]), wd=str(tmp_path))
    env = dict(os.environ, ICTL_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 143, r.stderr[-2000:]
    assert "SIGTERM" in r.stderr
    steps = sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit())
    assert steps and 8 <= steps[-1] <= 10, steps  # saved right after the step the signal interrupted


def test_step_compiles_once(tmp_path):
    """The jitted step is traced once for the whole run (no silent recompiles per step)."""
    state, step = _setup()
    traces = []

    def counted(st, key):
        traces.append(1)  # runs at trace time only
        return step(st, key)

    fit(state, counted, key=jax.random.key(6), num_steps=25, workdir=tmp_path, log_every=5, ckpt_every=10)
    assert len(traces) == 1


def test_warmup_cosine_schedule():
    from ictl.train import warmup_cosine_schedule
    f = warmup_cosine_schedule(lr=2e-3, warmup=100, total_steps=1100, lr_end=0.1)
    # linear warmup: lr·t/warmup; cosine: lr·(lr_end + (1 − lr_end)(1 + cos(π s/1000))/2) at s = t − 100;
    # optax computes in float32, hence rel 1e-6
    expected = {0: 0.0, 50: 1e-3, 100: 2e-3, 600: 2e-3 * (0.1 + 0.9 * 0.5), 1100: 2e-4}
    for t, v in expected.items():
        assert float(f(t)) == pytest.approx(v, rel=1e-6, abs=1e-12), t
