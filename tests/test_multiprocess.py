"""A pod job on one machine: `ictl run` / `ictl resume` as 2 processes × 4 fake CPU devices (gloo
collectives, one shared workdir) against 1 process × 8 devices; the workdir lock under two runs
started together; the SIGTERM watchdog of a process blocked in XLA.

Every job here is real subprocesses of the `ictl` CLI (jax.distributed needs its own processes).
zfb_dynamics at t1 = 1.0 is 100 SGD steps on sampled prompts (the batch is split over the 8
devices: the gradient is an all-reduce across the two processes) and 100 GD steps on the exact
population loss (replicated: no cross-device reduction). `--config.theory=false` leaves out the
experiment's theory part (ODE, Monte Carlo, figure; tested in tests/test_zfb_experiments.py), which
is process-local float64 work: about 17 → 8 CPU-s per full run, three of them here (77 → 52 CPU-s
for the file).
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

from ictl import lsa_training as lt
from ictl.train import TrainState
from ictl.train import checkpoint

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = ["run", "zfb_dynamics", "--config.t1=1.0", "--config.batch=64", "--config.theory=false"]
FITS = ("sgd", "population_gd")
TIMEOUT = 420
DIST_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "ICTL_DISTRIBUTED")


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    # keeps the suite's XLA flags (tests/conftest.py: the emitter flag cut a subprocess's CPU time 44 → 32 s)
    # and, as the suite, compiles without XLA's optimisations: every run compared here is compiled alike
    if os.environ.get("ICTL_TEST_XLA_OPT", "0") != "1":
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    env.update(PYTHONPATH=str(ROOT), ICTL_NO_PROGRESS="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", **extra)
    return env


def _ictl(args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ictl.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _job(args) -> list[subprocess.Popen]:
    """The same command on 2 processes × 4 devices, coordinated on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [_ictl(args, _env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                             JAX_PROCESS_ID=str(i))) for i in range(2)]


def _finish(procs) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        out.append((p.returncode, err))
    return out


def _logged_steps(path: pathlib.Path) -> list[int]:
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # the line process 0 is writing
            pass
    return steps


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ictl")]


@jax.jit
def _lsa_params(key):
    """zfb_dynamics' LSA parameters (the restore target's structure) as one program: eagerly each op of
    flax's init compiles on its own (this process's compiling 1.0 → 0.5 s, measured side by side)."""
    return lt.init_params(key, d=5, init_scheme="paper", sigma=0.1)[1]


def _final_state(workdir: pathlib.Path, fit: str):
    """(step, params leaves) of the newest checkpoint, restored on this process's one CPU device."""
    like = TrainState.create(params=_lsa_params(jax.random.key(0)), tx=optax.sgd(0.01))
    mngr = checkpoint.manager(workdir / fit / "ckpt")
    state, step = checkpoint.restore_latest(mngr, like, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    mngr.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two single-process 8-device `ictl run` started together on one new workdir."""
    wd = tmp_path_factory.mktemp("mp") / "single"
    procs = [_ictl(RUN + ["--workdir", str(wd)], _env(8)) for _ in range(2)]
    return wd, _finish(procs)


@pytest.mark.slow
def test_two_runs_started_together_on_one_new_workdir_one_runs(reference):
    wd, results = reference
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], [(rc, err[-2000:]) for rc, err in results]
    loser = next(err for rc, err in results if rc == 2)
    lines = loser.strip().splitlines()
    assert len(lines) == 1 and (f"workdir {wd}: in use by another run (pid " in lines[0]
                                or f"workdir {wd}: exists and is not empty" in lines[0]), lines
    assert json.loads((wd / "run.json").read_text())["status"] == "done" and not (wd / ".lock").exists()


@pytest.mark.slow
def test_two_process_job_equals_one_process_and_resumes_after_sigterm(reference, tmp_path):
    ref, _ = reference
    # process 0 refuses a workdir that is not empty: both processes exit 2 with the same one line
    refused = _finish(_job(RUN + ["--workdir", str(ref)]))
    assert [rc for rc, _ in refused] == [2, 2], [err[-2000:] for _, err in refused]
    lines = [_errors(err) for _, err in refused]
    assert lines[0] == lines[1] and len(lines[0]) == 1 and "exists and is not empty" in lines[0][0], lines

    # SIGTERM to process 1 only, once SGD has logged step 10: the two agree on one step, both checkpoint it, exit 143
    wd = tmp_path / "job"
    procs = _job(RUN + ["--workdir", str(wd)])
    metrics, t0 = wd / "sgd" / "metrics.jsonl", time.time()
    while max(_logged_steps(metrics), default=0) < 10:
        if time.time() - t0 > TIMEOUT or any(p.poll() is not None for p in procs):
            pytest.fail(f"the job ended before SGD step 10: {[err[-2000:] for _, err in _finish(procs)]}")
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)
    killed = _finish(procs)
    assert [rc for rc, _ in killed] == [143, 143], [err[-2000:] for _, err in killed]
    # "ictl: SIGTERM — checkpointed step S in WORKDIR/FIT": the same S and FIT on both processes
    stopped = {tuple(err.split("checkpointed step ")[1].split(";")[0].split(" in ")) for _, err in killed}
    assert len(stopped) == 1, stopped
    ((s, fit_dir),) = stopped
    s, fit_dir = int(s), pathlib.Path(fit_dir)  # SGD, unless the machine ran its last 90 steps before the signal landed
    assert fit_dir.parent == wd and fit_dir.name in FITS and 0 < s < 100, stopped
    assert json.loads((wd / "run.json").read_text())["status"] == "running"

    resumed = _finish(_job(["resume", str(wd)]))
    assert [rc for rc, _ in resumed] == [0, 0], [err[-2000:] for _, err in resumed]
    sessions = [json.loads(x) for x in (fit_dir / "sessions.jsonl").read_text().splitlines()]
    assert [(x["start"], x["end"]) for x in sessions] == [(0, s), (s, 100)] and sessions[1]["restored_step"] == s
    # each record written once (process 0 alone), the records past the checkpoint redone
    assert _logged_steps(fit_dir / "metrics.jsonl") == list(range(0, 101, 10))

    for fit in FITS:
        (step_1, one), (step_2, two) = _final_state(ref, fit), _final_state(wd, fit)
        assert step_1 == step_2 == 100
        for a, b in zip(one, two):
            # the SGD gradient is reduced over 8 devices in a different order (gloo ring vs in-process):
            # float32 rounding, measured 1e-7 of max|param| after 100 steps. A resume off by a step or a key
            # moves the parameters by about lr·‖grad‖ = 0.01 · 1.0 (grad_norm in metrics.jsonl) = 1e-2
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(a))))
            if fit == "population_gd":  # replicated full-batch GD: no reduction across devices, bitwise
                np.testing.assert_array_equal(b, a)
    rows_1, rows_2 = (json.loads((w / "results.json").read_text())["rows"] for w in (ref, wd))
    assert [r["quantity"] for r in rows_1] == [r["quantity"] for r in rows_2]
    np.testing.assert_allclose([r["measured"] for r in rows_2], [r["measured"] for r in rows_1], rtol=1e-4)
    assert sorted(p.name for p in wd.iterdir()) == sorted(p.name for p in ref.iterdir())  # one writer, no strays


WATCHDOG = textwrap.dedent("""
    import time, jax, jax.numpy as jnp, optax
    from ictl.train import TrainState, fit

    def stuck(x):  # stands in for a collective whose peer is gone: the main thread waits inside XLA
        print("blocked", flush=True)
        time.sleep(120)
        return x

    def step(state, key):
        loss = jax.pure_callback(stuck, jax.ShapeDtypeStruct((), jnp.float32), jnp.float32(0))
        return state, {"loss": loss}

    state = TrainState.create(params={"w": jnp.zeros(2)}, tx=optax.sgd(0.1))
    fit(state, step, key=jax.random.key(0), num_steps=5, workdir=WORKDIR, log_every=1, ckpt_every=5)
""")


@pytest.mark.slow
def test_sigterm_exits_a_process_blocked_in_xla_after_the_grace_period(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", WATCHDOG.replace("WORKDIR", repr(str(tmp_path)))], cwd=ROOT, text=True,
                         env=_env(1, ICTL_SIGTERM_GRACE="2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().strip() == "blocked"
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    elapsed = time.time() - t0
    assert p.returncode == 143, err[-2000:]
    assert 2.0 <= elapsed < 30, elapsed  # the grace period, then out (the step itself would take 120 s)
    assert "still running 2 s later" in err and not any(c.isdigit() for c in os.listdir(tmp_path / "ckpt"))
