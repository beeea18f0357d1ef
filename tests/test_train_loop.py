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
from ictl.train.loop import read_sessions
from ictl.train.tensorboard import read_events

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)

D, N = 3, 8


def _setup(lr=0.05, batch=64):
    model, params = lt.init_params(jax.random.key(0), d=D, sigma=0.2)
    tx = optax.adam(lr)
    step = make_train_step(lt.prompt_loss_fn(model, d=D, N=N, batch=batch), tx)
    return TrainState.create(params=params, tx=tx), step


@pytest.fixture(scope="module")
def lsa():
    """`_setup()` once per file, set up before any test's `xla_optimized` mark applies: its eager
    initialisers compile once, unoptimised (the state is copied by `fit`, never donated)."""
    return _setup()


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.xla_optimized
def test_resume_is_bitwise_exact(tmp_path, lsa):
    state, step = lsa
    key = jax.random.key(1)
    full, hist_full = fit(state, step, key=key, num_steps=60, workdir=tmp_path / "a", log_every=10, ckpt_every=25)
    part, _ = fit(state, step, key=key, num_steps=35, workdir=tmp_path / "b", log_every=10, ckpt_every=25)
    # the run "died" after step 35: the checkpoint at 35 (end) exists; drop it to resume from 25
    shutil.rmtree(tmp_path / "b" / "ckpt" / "35")
    resumed, hist = fit(state, step, key=key, num_steps=60, workdir=tmp_path / "b", log_every=10, ckpt_every=25)
    # a restore that silently did nothing would also end bitwise equal (training is deterministic):
    # the session record says it restored step 25 and ran the 35 steps left
    last = read_sessions(tmp_path / "b")[-1]
    assert (last["restored_step"], last["start"], last["steps_run"]) == (25, 25, 35)
    assert int(resumed.step) == 60 and _same(full, resumed)
    assert [h["step"] for h in hist] == [10, 20, 30, 40, 50, 60]  # 30 was redone, not duplicated
    assert hist == hist_full


def test_jit_matches_no_jit(lsa):
    state, step = lsa
    key = jax.random.key(3)
    s_jit, m_jit = jax.jit(step)(state, key)
    with jax.disable_jit():
        s_eager, m_eager = step(state, key)
    for a, b in zip(jax.tree.leaves(s_jit), jax.tree.leaves(s_eager)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)  # float32 op-order differences only
    np.testing.assert_allclose(m_jit["loss"], m_eager["loss"], rtol=1e-5)


def test_divergence_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, lsa):
    state, _ = lsa
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


def test_damaged_checkpoint_falls_back(tmp_path, capsys, lsa):
    state, step = lsa
    key = jax.random.key(4)
    ref, _ = fit(state, step, key=key, num_steps=40, workdir=tmp_path / "ref", log_every=10, ckpt_every=20)
    fit(state, step, key=key, num_steps=40, workdir=tmp_path / "x", log_every=10, ckpt_every=20)
    # damage every file of the newest step (40): the loop must fall back to step 20 and redo 20..40
    for f in (tmp_path / "x" / "ckpt" / "40").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0" * 7)
    again, _ = fit(state, step, key=key, num_steps=40, workdir=tmp_path / "x", log_every=10, ckpt_every=20)
    assert "checkpoint step 40 is unreadable" in capsys.readouterr().err
    last = read_sessions(tmp_path / "x")[-1]
    assert (last["restored_step"], last["steps_run"]) == (20, 20)  # fell back to 20 and redid 20..40
    assert _same(ref, again)


def test_metrics_jsonl_and_tensorboard(tmp_path, lsa):
    state, step = lsa
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


# the signal handling is under test, not a model: a least-squares fit of one vector (a tiny program to
# compile in the fresh process, which starts with no compile cache)
SIGTERM_SCRIPT = textwrap.dedent("""
    import os, sys, jax, jax.numpy as jnp, optax
    sys.path.insert(0, {root!r})
    from ictl.train import TrainState, fit, make_train_step
    params = {{"w": jnp.zeros(3)}}
    tx = optax.adam(0.05)
    def loss_fn(p, key):
        x = jax.random.normal(key, (64, 3))
        return jnp.mean(jnp.square(x @ (p["w"] - 1.0))), {{}}
    base = make_train_step(loss_fn, tx)
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


def test_step_compiles_once(tmp_path, lsa):
    """The step is traced a fixed number of times per run — once for the loop body, once for the shape of
    its metrics — however many steps and calls (25 steps in calls of 1 and of 5, no silent retraces)."""
    state, step = lsa
    for k in (1, 5):
        traces = []

        def counted(st, key):
            traces.append(1)  # runs at trace time only
            return step(st, key)

        fit(state, counted, key=jax.random.key(6), num_steps=25, workdir=tmp_path / f"k{k}", log_every=5,
            ckpt_every=10, steps_per_call=k)
        assert len(traces) == 2, k


def test_warmup_cosine_schedule():
    from ictl.train import warmup_cosine_schedule
    f = warmup_cosine_schedule(lr=2e-3, warmup=100, total_steps=1100, lr_end=0.1)
    # linear warmup: lr·t/warmup; cosine: lr·(lr_end + (1 − lr_end)(1 + cos(π s/1000))/2) at s = t − 100;
    # optax computes in float32, hence rel 1e-6
    expected = {0: 0.0, 50: 1e-3, 100: 2e-3, 600: 2e-3 * (0.1 + 0.9 * 0.5), 1100: 2e-4}
    for t, v in expected.items():
        assert float(f(t)) == pytest.approx(v, rel=1e-6, abs=1e-12), t


@pytest.mark.xla_optimized
def test_steps_per_call_is_bitwise_k_single_steps_and_resumes(tmp_path, lsa):
    """K = 5 steps per dispatch (lax.scan, keys fold_in(key, step)) = 23 single steps, bit for bit,
    including the shorter last call (23 = 4·5 + 3) and a resume from the checkpoint at 10."""
    state, step = lsa
    key = jax.random.key(7)
    ref, h_ref = fit(state, step, key=key, num_steps=23, workdir=tmp_path / "k1", log_every=5, ckpt_every=10)
    fit(state, step, key=key, num_steps=12, workdir=tmp_path / "k5", log_every=5, ckpt_every=10, steps_per_call=5)
    shutil.rmtree(tmp_path / "k5" / "ckpt" / "12")  # "killed" after 12: resume from 10
    out, h = fit(state, step, key=key, num_steps=23, workdir=tmp_path / "k5", log_every=5, ckpt_every=10,
                 steps_per_call=5)
    assert _same(ref, out) and h == h_ref and [r["step"] for r in h] == [5, 10, 15, 20, 23]
    s = read_sessions(tmp_path / "k5")
    assert [(x["restored_step"], x["steps_run"], x["steps_per_call"]) for x in s] == [(None, 12, 5), (10, 13, 5)]


@pytest.mark.parametrize("k, needle", [(0, "allowed an integer >= 1"), (2.5, "allowed an integer >= 1"),
                                       (3, "must divide log_every=10")])
def test_steps_per_call_bad_values(tmp_path, k, needle, lsa):
    state, step = lsa
    with pytest.raises(ValueError, match=needle):
        fit(state, step, key=jax.random.key(0), num_steps=10, workdir=tmp_path, log_every=10, ckpt_every=10,
            steps_per_call=k)
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written


def test_seed_stack_trains_each_seed_like_its_own_run(tmp_path):
    """S = 3 seeds in one vmapped step: seed s follows the one-seed run with the same keys (to float32
    rounding: vmap batches the matmuls), the logged loss is their mean, and the stack resumes bitwise."""
    from ictl.train import seed_keys, unstack, vmap_seeds
    from ictl.train.seeds import fold_keys

    model, _ = lt.init_params(jax.random.key(0), d=D, sigma=0.2)
    tx = optax.adam(0.05)
    step = make_train_step(lt.prompt_loss_fn(model, d=D, N=N, batch=64), tx)

    def init(k):
        return TrainState.create(params=lt.init_params(k, d=D, sigma=0.2)[1], tx=tx)

    keys_S = seed_keys(10, 3)
    state_S = jax.vmap(init)(keys_S)
    kw = dict(num_steps=20, log_every=10, ckpt_every=10)
    out_S, hist = fit(state_S, vmap_seeds(step), key=fold_keys(keys_S, 1), workdir=tmp_path / "S", **kw)
    losses = []
    for s in range(3):
        k = jax.random.key(10 + s)
        one, h1 = fit(init(k), step, key=jax.random.fold_in(k, 1), workdir=tmp_path / f"one{s}", **kw)
        for a, b in zip(jax.tree.leaves(unstack(out_S, s)), jax.tree.leaves(one)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert hist[-1][f"loss_s{s}"] == pytest.approx(h1[-1]["loss"], rel=1e-4)
        losses.append(h1[-1]["loss"])
    assert hist[-1]["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert hist[-1]["loss_min"] <= hist[-1]["loss"] <= hist[-1]["loss_max"] and len(set(losses)) == 3
    shutil.rmtree(tmp_path / "S" / "ckpt" / "20")  # resume the stack from 10
    again, _ = fit(state_S, vmap_seeds(step), key=fold_keys(keys_S, 1), workdir=tmp_path / "S", **kw)
    assert read_sessions(tmp_path / "S")[-1]["restored_step"] == 10 and _same(out_S, again)


@pytest.mark.xla_optimized
def test_steps_per_call_is_bitwise_for_the_gpt_step(tmp_path):
    """The Garg GPT train step (fresh prompts inside, Adam, x_only read-out) scanned 4 at a time ends
    bit for bit where 8 single calls do."""
    import ml_collections

    from experiments.garg_linear import make_icl_step
    from models.gpt import GPT, GPTConfig, init_params

    c = ml_collections.ConfigDict(dict(task="linear", d=3, n_points=5, batch=8, curriculum=False))
    model = GPT(GPTConfig(d_in=3, max_tokens=10, n_layers=1, n_heads=2, width=16))
    tx = optax.adam(1e-3)
    # the two fits start from the same state, whatever its values: N(0, 0.02²) from NumPy in the
    # parameters' shapes (the initialisers run eagerly would each compile, optimised under this mark)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype),
                          jax.eval_shape(lambda key: init_params(model.cfg, key), jax.random.key(0)))
    state = TrainState.create(params=params, tx=tx)
    kw = dict(key=jax.random.key(1), num_steps=8, log_every=4, ckpt_every=8)
    one, h1 = fit(state, make_icl_step(model, tx, c), workdir=tmp_path / "k1", **kw)
    four, h4 = fit(state, make_icl_step(model, tx, c), workdir=tmp_path / "k4", steps_per_call=4, **kw)
    assert _same(one, four) and h1 == h4


def test_fit_copies_the_callers_state_without_compiling():
    """fit copies the caller's state (its step donates it) leaf by leaf with `_own_copy`, which compiles
    nothing (a jitted copy compiled one program per leaf shape the process had not seen): fresh buffers,
    equal values, the same sharding and commitment; leaves that are not jax arrays pass through."""
    import jax.monitoring

    from ictl.train.loop import _own_copy

    # shapes no other test uses (made without a jax op, which would compile), one array committed to a
    # device, one NumPy leaf
    state = {"w": jax.device_put(np.full((7, 13), 2.0, np.float32)),
             "b": jax.device_put(np.full(11, 2.0, np.float32), jax.devices()[0]), "n": np.int32(3)}
    compiles = []

    def count(name, secs, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        out = jax.block_until_ready(jax.tree.map(_own_copy, state))
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []
    assert out["n"] is state["n"]
    for k in ("w", "b"):
        a, c = state[k], out[k]
        assert c.unsafe_buffer_pointer() != a.unsafe_buffer_pointer() and np.array_equal(c, a)
        assert (c.sharding, c.committed) == (a.sharding, a.committed)
