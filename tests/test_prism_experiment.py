"""End-to-end: the task-pool experiment with a few training steps, and its config checks."""
import json

import numpy as np
import pytest

from experiments import prism_task_pool as ptp
from ictl.config import ConfigError


def test_run_end_to_end(tmp_path):
    c = ptp.get_config("quick")
    c.d, c.n_points, c.log2_pool, c.width, c.n_layers = 3, 6, 1, 16, 1
    c.train_steps, c.warmup, c.log_every, c.ckpt_every, c.batch, c.steps_per_call = 20, 0, 10, 20, 16, 10
    # 256 prompts: one chunk of `ev.transformer_predictions` (400 compiled the forward pass twice). The
    # run is the M = 2 pool of tests/test_prism_task_diversity.py (same programs, shared compile cache).
    c.eval_prompts, c.n_boot = 256, 50
    rows = ptp.run(c, tmp_path)
    for stem in ("prism_task_pool.png", "prism_task_pool.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["pool_size"] == 2
    claims = [r for r in rows if r["verdict"] != "informational"]
    assert len(claims) == len(rows) - 2 and all("dMMSE" in r["quantity"] for r in claims)  # ridge rows: context only
    dm = np.array(res["curves"]["pool"]["dMMSE (pool posterior mean)"])
    rd = np.array(res["curves"]["pool"]["ridge λ=σ² (Gaussian posterior mean)"])
    # with M = 2 pool tasks and σ = 0.5 the posterior identifies the task within a few examples: the
    # dMMSE error/d at k = 5 is the noise floor σ²/d = 0.25/3 (+ a small posterior-mixing term;
    # SE of a mean of 256 σ²χ²₁/d draws ≈ 0.083·√2/16 ≈ 0.0074: the bound is 4 SE)
    assert abs(dm[5] - 0.25 / 3) < 0.03
    # the dMMSE (Bayes for the pool) beats ridge (Bayes for N(0, I)) on pool prompts for 1 ≤ k < d
    assert np.all(dm[1:3] < rd[1:3])
    fresh_rd = np.array(res["curves"]["fresh"]["ridge λ=σ² (Gaussian posterior mean)"])
    fresh_dm = np.array(res["curves"]["fresh"]["dMMSE (pool posterior mean)"])
    assert fresh_rd[5] < fresh_dm[5]          # …and ridge wins on tasks outside the pool
    assert 0.2 < res["first_loss"] < 10 and np.isfinite(res["last_loss"])


@pytest.mark.parametrize("key, value", [("noise_std", 0.0), ("log2_pool", 30), ("width", 31), ("warmup", 10**6)])
def test_bad_configs(key, value):
    c = ptp.get_config("quick")
    c[key] = value
    with pytest.raises(ConfigError, match=f"config.{key}"):
        ptp.validate(c)
