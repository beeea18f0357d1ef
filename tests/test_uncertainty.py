"""In-context UQ: the second read-out on the GPT trunk, the calibration metrics, the experiment."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import icl_uncertainty as uq
from ictl.config import ConfigError
from models.gpt import GPT, GPTConfig
from models.gpt_uq import apply_uq, init_uq_params


def test_uq_head_shares_the_gpt_trunk_and_trains():
    cfg = GPTConfig(d_in=3, max_tokens=8, n_layers=1, n_heads=2, width=16)
    model = GPT(cfg)
    params = init_uq_params(cfg, jax.random.key(0))
    tokens = jax.random.normal(jax.random.key(1), (2, 8, 3))
    # compiled as single programs (eager flax compiles op by op: tens of CPU seconds)
    mean, log_var = jax.jit(lambda p: apply_uq(model, p, tokens))(params)
    # the same trunk and read-out: equal up to float32 rounding of two separately compiled programs
    np.testing.assert_allclose(mean, jax.jit(model.apply)(params["gpt"], tokens), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(log_var), 0.0)  # zero head at init: σ̂² = 1
    # log σ² = vᵀh + c is linear in the head: d(Σ log σ²)/dc = B·T
    g = jax.jit(jax.grad(lambda p: jnp.sum(apply_uq(model, p, tokens)[1])))(params)
    assert float(g["var_head"]["bias"]) == pytest.approx(16.0)
    assert float(jnp.sum(jnp.abs(g["var_head"]["kernel"]))) > 0
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


def test_coverage_and_nll_of_a_known_gaussian():
    """Samples from N(μ, σ²): coverage 0.95 (SE √(.95·.05/B)) and NLL = ½ log 2πeσ² (SE √(½/B))."""
    B = 40_000
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(B, 2))
    var = np.exp(rng.normal(size=(B, 2)))
    y = mean + np.sqrt(var) * rng.normal(size=(B, 2))
    np.testing.assert_allclose(uq.coverage(mean, var, y), 0.95, atol=4 * np.sqrt(0.95 * 0.05 / B))
    expected = np.mean(0.5 * np.log(2 * np.pi * np.e * var), axis=0)
    np.testing.assert_allclose(uq.nll(mean, var, y), expected, atol=4 * np.sqrt(0.5 / B))


def test_run_end_to_end(tmp_path):
    c = uq.get_config("quick")
    c.d, c.n_points, c.width, c.n_layers, c.train_steps, c.warmup = 2, 5, 16, 1, 20, 0
    c.batch, c.eval_prompts, c.log_every, c.ckpt_every, c.steps_per_call = 16, 2000, 10, 20, 10
    rows = uq.run(c, tmp_path)
    for stem in ("icl_uncertainty.png", "icl_uncertainty.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    # the exact predictive is calibrated at every k (2000 prompts: SE 0.0049)
    assert np.all(np.abs(np.array(res["coverage_exact"]) - 0.95) < 4 * np.sqrt(0.95 * 0.05 / 2000))
    # k = 0: the exact predictive is N(0, σ² + ‖x‖²), E NLL = ½ E log 2π(σ² + ‖x‖²) + ½; the
    # transformer cannot beat it beyond MC error (SE of a mean of 2000 NLLs ≲ 0.02)
    assert res["nll_transformer"][0] > res["nll_exact"][0] - 0.08
    # ... and the exact NLL itself equals that closed form: with d = 2, ‖x‖² ~ χ²₂ = Exp(mean 2), so
    # E NLL = ½ ∫ log 2π(σ² + u) e^{−u/2}/2 du + ½ (quadrature; σ = 0.5). A wrong predictive variance
    # (e.g. σ² alone: 0.30 lower; a missing ‖x‖² term) misses it. NLL's std ≈ 0.6 → 4 SE ≈ 0.055
    from scipy.integrate import quad

    e_log = quad(lambda u: np.log(2 * np.pi * (0.25 + u)) * np.exp(-u / 2) / 2, 0, np.inf)[0]
    assert res["nll_exact"][0] == pytest.approx(0.5 * e_log + 0.5, abs=0.055)
    assert rows[-1]["quantity"].startswith("exact predictive coverage")


def test_bad_config():
    c = uq.get_config("quick")
    c.noise_std = 0.0
    with pytest.raises(ConfigError, match="config.noise_std"):
        uq.validate(c)
