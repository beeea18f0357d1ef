"""The PFN experiments end to end at toy sizes: files, rows, the n = 0 check, bad configs."""
import json
import math

import pytest

from experiments import pfn_gp, pfn_gp_hyperprior
from ictl.config import ConfigError

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)


def _tiny(c):
    c.n_max, c.n_layers, c.n_heads, c.width, c.num_buckets, c.border_samples = 6, 1, 2, 16, 20, 5000
    c.batch, c.warmup, c.train_steps, c.early_steps, c.ablation_steps = 8, 0, 6, 3, 3
    c.eval_datasets, c.log_every, c.ckpt_every, c.panel_context, c.steps_per_call = 64, 3, 6, 3, 3
    return c


@pytest.mark.slow
def test_pfn_gp_end_to_end(tmp_path):
    c = _tiny(pfn_gp.get_config("quick"))
    # no ablations: their models (Gaussian head, positions) are covered by test_pfn_model and
    # test_pfn_training, and each costs one more train-step compile here
    c.d, c.ablations = 2, ()
    rows = pfn_gp.run(c, tmp_path)
    for stem in ("pfn_gp.png", "pfn_gp.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["curves"]) == {"bar, 3 steps", "bar, 6 steps"} and len(rows) == 5
    # the exact GP at n = 0 is the prior predictive N(0, 1 + 1e-4): ½ ln(2π·1.0001) + ½ = 1.4190
    assert rows[0]["expected"] == pytest.approx(0.5 * math.log(2 * math.pi * 1.000101) + 0.5, abs=1e-6)
    assert rows[0]["verdict"] == "reproduced"
    # the exact GP improves with context (d = 2, ℓ = 0.6: NLL(n = 6) ≈ 0.3 < 1.42)
    ex = res["curves"]["bar, 6 steps"]["exact"]
    assert ex[6] < ex[0] - 0.5


def _prior_draws_for_nuts(calls):
    """A stand-in for `gp.nuts_samples` in the end-to-end run: draws from the hyperprior (numpy Gamma,
    scale = 1/rate) in the shapes NUTS returns. NUTS itself is tested in test_gp_theory; compiling it
    here again cost ≈ 11 CPU-s (tracing 6 + XLA 5). The call is checked against the real signature."""
    import inspect

    import numpy as np

    from ictl.theory import gp

    def fake(key, x, y, *, prior, mask=None, num_warmup=200, num_samples=100):
        inspect.signature(gp.nuts_samples).bind(key, x, y, prior=prior, mask=mask, num_warmup=num_warmup,
                                                num_samples=num_samples)
        S, N, d = x.shape
        assert y.shape == (S, N) and mask.shape == (S, N) and isinstance(prior, gp.HyperPrior)
        calls.append(int(mask[0].sum()))
        rng = np.random.default_rng(len(calls))
        g = lambda ab, shape: rng.gamma(ab[0], 1 / ab[1], shape)
        return gp.Hypers(g(prior.lengthscale, (S, num_samples, d)), g(prior.outputscale, (S, num_samples)),
                         prior.noise_floor + g(prior.noise, (S, num_samples)))
    return fake


@pytest.mark.slow
def test_pfn_gp_hyperprior_end_to_end(tmp_path, monkeypatch):
    from ictl.theory import gp

    c = _tiny(pfn_gp_hyperprior.get_config("quick"))
    # 16 datasets for the PFN, ML-II (16) and the NUTS mixture (4 datasets × 4 draws): one compiled exact
    # predictive (`gp._predict_batch`) for all three instead of three; n_max = 6 (was 11) still holds the
    # ML-II (1, 2, 3), NUTS (2, 3) and timing (3) context sizes and compiles smaller programs
    c.n_max, c.eval_datasets, c.nuts_datasets, c.nuts_warmup, c.nuts_samples = 6, 16, 4, 5, 4
    c.nuts_n, c.timing_n, c.ml2_restarts, c.ml2_steps, c.ml2_datasets, c.ml2_n = (2, 3), 3, 2, 10, 16, (1, 2, 3)
    calls = []
    monkeypatch.setattr(gp, "nuts_samples", _prior_draws_for_nuts(calls))
    rows = pfn_gp_hyperprior.run(c, tmp_path)
    assert calls == [2, 3]                      # NUTS sees the first n points of each dataset, n ∈ nuts_n
    assert (tmp_path / "pfn_gp_hyperprior.png").exists()
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["seconds_per_dataset"]) == {"PFN", "ML-II", "NUTS"}
    assert len(res["nll"]["PFN"]) == 6 and len(res["nll_ml2"]) == 3 and len(rows) == 6
    assert len(res["nll_nuts"]) == 2 and all(math.isfinite(v) for v in res["nll_nuts"] + res["nll_ml2"])


def test_bad_configs():
    c = pfn_gp.get_config("quick")
    c.kernel = "periodic"
    with pytest.raises(ConfigError, match="config.kernel"):
        pfn_gp.validate(c)
    c = pfn_gp.get_config("quick")
    c.lengthscale = 0.0
    with pytest.raises(ConfigError, match="config.lengthscale"):
        pfn_gp.validate(c)
    c = pfn_gp.get_config("quick")
    c.num_buckets = 1
    with pytest.raises(ConfigError, match="config.num_buckets"):
        pfn_gp.validate(c)
    c = pfn_gp.get_config("quick")
    c.noise = -1e-4
    with pytest.raises(ConfigError, match="config.noise"):
        pfn_gp.validate(c)
    c = pfn_gp_hyperprior.get_config("quick")
    c.nuts_n = (5, 40)
    with pytest.raises(ConfigError, match="config.nuts_n"):
        pfn_gp_hyperprior.validate(c)
    c = pfn_gp_hyperprior.get_config("quick")
    c.noise_prior = (1e-4, 0.0)
    with pytest.raises(ConfigError, match="config.noise_prior"):
        pfn_gp_hyperprior.validate(c)
    with pytest.raises(ConfigError, match="config.scale"):
        pfn_gp.get_config("huge")
