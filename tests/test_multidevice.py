"""The same train step on 8 fake CPU devices (data-parallel mesh) vs 1 device.

Runs in its own process: the fake device count must be set before JAX starts, and it changes
the bits of results (reductions split across devices), so the comparison is within float32
tolerance, not bitwise.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax

from ictl import lsa_training as lt
from ictl.train import TrainState, fit, make_train_step

SCRIPT = textwrap.dedent("""
    import json, sys, jax, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    from ictl import lsa_training as lt
    from ictl.tasks.linear import sample_linear_prompts
    from ictl.train import TrainState, fit, make_train_step, make_mesh, shard_batch
    assert jax.device_count() == 8, jax.devices()
    out = {}
    for data, model_ax in [(8, 1), (4, 2)]:
        mesh = make_mesh(data, model_ax)
        with jax.set_mesh(mesh):
            x = jax.jit(lambda k: shard_batch(sample_linear_prompts(k, batch=64, n_ctx=8, d=3)).x_ctx)(jax.random.key(0))
        out[f"spec_{data}x{model_ax}"] = list(x.sharding.spec)
        out[f"shards_{data}x{model_ax}"] = len({s.device for s in x.addressable_shards})
        model, params = lt.init_params(jax.random.key(0), d=3, sigma=0.2)
        tx = optax.adam(0.05)
        step = make_train_step(lt.prompt_loss_fn(model, d=3, N=8, batch=256), tx)
        state, hist = fit(TrainState.create(params=params, tx=tx), step, key=jax.random.key(1), num_steps=30,
                          workdir=sys.argv[1] + f"/{data}x{model_ax}", log_every=10, ckpt_every=30, mesh=mesh)
        out[f"params_{data}x{model_ax}"] = [np.asarray(a).tolist() for a in jax.tree.leaves(state.params)]
        out[f"loss_{data}x{model_ax}"] = hist[-1]["loss"]
    print("RESULT " + json.dumps(out))
""")


def test_eight_fake_devices_match_one(tmp_path):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()  # keeps conftest's
    env = dict(os.environ, XLA_FLAGS=flags, ICTL_NO_PROGRESS="1", JAX_PLATFORMS="cpu")
    if os.environ.get("ICTL_TEST_XLA_OPT", "0") != "1":   # compiled as the suite compiles (both sides alike)
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "multi")], capture_output=True, text=True,
                       env=env, timeout=600, cwd=pathlib.Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["spec_8x1"] == ["data"] and out["shards_8x1"] == 8
    assert out["spec_4x2"] == ["data"] and out["shards_4x2"] == 8

    model, params = lt.init_params(jax.random.key(0), d=3, sigma=0.2)
    tx = optax.adam(0.05)
    step = make_train_step(lt.prompt_loss_fn(model, d=3, N=8, batch=256), tx)
    state, hist = fit(TrainState.create(params=params, tx=tx), step, key=jax.random.key(1), num_steps=30,
                      workdir=tmp_path / "single", log_every=10, ckpt_every=30)
    single = [np.asarray(a) for a in jax.tree.leaves(state.params)]
    for mesh in ("8x1", "4x2"):
        # same prompts (partitionable threefry), different reduction order: float32 tolerance after 30 Adam steps
        for a, b in zip(single, out[f"params_{mesh}"]):
            np.testing.assert_allclose(np.asarray(b), a, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[f"loss_{mesh}"], hist[-1]["loss"], rtol=1e-4)
