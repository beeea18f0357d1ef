"""The task-diversity sweep: a two-pool end-to-end run, its Bayes baselines, the ΔPMSE metric, configs."""
import json

import numpy as np
import pytest

from experiments import prism_task_diversity as ptd
from ictl.config import ConfigError
from ictl.tasks import prism

B = 256  # evaluation prompts in the end-to-end run: one chunk of `ev.transformer_predictions` (one shape)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    # the M = 2 pool trains and evaluates exactly as tests/test_prism_experiment.py's run (same model,
    # pool, optimiser, steps and prompt shapes), so in the suite its programs come from the compile cache
    c = ptd.get_config("quick")
    c.d, c.n_points, c.width, c.n_layers, c.n_heads = 3, 6, 16, 1, 2
    c.log2_pools = "1,0"  # unsorted on purpose: the sweep runs M = 1 then M = 2
    c.train_steps, c.warmup, c.log_every, c.ckpt_every, c.batch, c.steps_per_call = 20, 0, 10, 20, 16, 10
    c.eval_prompts, c.n_boot = B, 50
    workdir = tmp_path_factory.mktemp("diversity")
    rows = ptd.run(c, workdir)
    return c, workdir, rows, json.loads((workdir / "results.json").read_text())


def test_outputs(sweep):
    c, workdir, rows, res = sweep
    for stem in ("prism_task_diversity", "prism_task_diversity_curves"):
        assert (workdir / f"{stem}.png").exists() and (workdir / f"{stem}.pdf").exists()
    for m in (0, 1):  # one fit workdir per pool, so `ictl resume` restores each pool separately
        assert (workdir / f"pool_{m:02d}" / "train" / "metrics.jsonl").exists()
    assert [s["log2_M"] for s in res["sweep"]] == [0, 1]
    assert len(rows) == 6 and all(r["source"] == "baseline" for r in rows)
    assert rows[0]["expected"] == 0.0 and rows[1]["expected"] == 1.0
    # verdicts: f on the right side of ½ at each end; fidelity 5% of (d + σ²)/d; the fresh-vs-pool
    # row's tolerance is 4 MC SE from the sweep's own standard errors
    assert (rows[0]["claim"], rows[0]["tol"], rows[1]["claim"], rows[1]["tol"]) == ("at_most", 0.5, "at_least", 0.5)
    assert all(r["tol"] == pytest.approx(0.05 * (c.d + c.noise_std**2) / c.d) for r in rows[2:5])
    hi = res["sweep"][-1]
    assert rows[5]["tol"] == pytest.approx(4 * np.hypot(hi["fresh"]["sem"]["transformer"], hi["pool"]["sem"]["transformer"]))
    assert all(r["why"] and r["verdict"] in ("reproduced", "not reproduced") for r in rows)
    for s in res["sweep"]:
        for part in ("pool", "fresh"):
            f = s[part]["ridge_fraction"]
            dist = s[part]["dist"]
            assert 0 <= f <= 1 and f == pytest.approx(ptd.ridge_fraction(dist[ptd.DMMSE], dist[ptd.RIDGE]))
    # the fresh prompts are shared by all pools (a paired comparison): ridge's curve is the same
    ridge_fresh = [res["curves"][m]["fresh"][ptd.RIDGE] for m in ("0", "1")]
    np.testing.assert_array_equal(ridge_fresh[0], ridge_fresh[1])


def test_single_task_pool_dmmse_is_the_noise_floor(sweep):
    c, _, _, res = sweep
    d, sig2 = c.d, c.noise_std**2
    # M = 1: the pool posterior is r_1 = 1 for any data, so dMMSE predicts ŷ = w_1ᵀx exactly and on
    # pool prompts y − ŷ = σε: error/d = σ²ε²/d with mean σ²/d at every k (k = 0 included) and
    # SE = (σ²/d)·√(2/B) (Var ε² = 2) ≈ 0.0074 for σ = 0.5, d = 3, B = 256; 5 SE allowed per k.
    dm_pool = np.array(res["curves"]["0"]["pool"][ptd.DMMSE])
    np.testing.assert_allclose(dm_pool, sig2 / d, atol=5 * sig2 / d * np.sqrt(2 / B))
    # on fresh tasks w ~ N(0, I): y − ŷ = (w − w_1)ᵀx + σε, so E error/d = (d + ‖w_1‖² + σ²)/d.
    # s² = ‖w − w_1‖² + σ² is σ² + noncentral χ²_d(λ = ‖w_1‖²) (variance 2(d + 2λ)); the error is s²z²
    # (z ~ N(0, 1)), with variance 3·E s⁴ − (E s²)², E s⁴ = 2(d + 2λ) + (E s²)².
    lam = float(np.sum(np.square(prism.make_task_pool(c.pool_seed, log2_size=0, d=d))))
    m1 = d + lam + sig2
    se = np.sqrt(3 * (2 * (d + 2 * lam) + m1**2) - m1**2) / np.sqrt(B) / d
    dm_fresh = np.array(res["curves"]["0"]["fresh"][ptd.DMMSE])
    np.testing.assert_allclose(dm_fresh, m1 / d, atol=4 * se)
    # ridge predicts 0 at k = 0: error/d = E y²/d = (d + σ²)/d, SE (d + σ²)/d·√(2/B)
    rd_fresh = np.array(res["curves"]["0"]["fresh"][ptd.RIDGE])
    assert abs(rd_fresh[0] - (d + sig2) / d) < 4 * (d + sig2) / d * np.sqrt(2 / B)
    # ridge (Bayes for N(0, I)) beats the single-task dMMSE on fresh tasks once it has data
    assert np.all(rd_fresh[1:] < dm_fresh[1:])
    # the sweep's k = N−1 summaries are the curves' last points
    s0 = res["sweep"][0]
    assert s0["pool"]["err"][ptd.DMMSE] == pytest.approx(dm_pool[-1])


def test_pred_distance_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[0.0, 0.0], [1.0, 1.0]])
    # squared gaps 1, 4, 4, 9 → mean 18/4 = 4.5, divided by norm 3 → 1.5
    assert ptd.pred_distance(a, b, norm=3.0) == pytest.approx(1.5)
    assert ptd.pred_distance(a, a, norm=3.0) == 0.0
    # Δ_dMMSE = 1, Δ_ridge = 3 → f = 1/4 (closer to dMMSE); symmetric swap → 3/4
    assert ptd.ridge_fraction(1.0, 3.0) == pytest.approx(0.25)
    assert ptd.ridge_fraction(3.0, 1.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shapes"):
        ptd.pred_distance(a, b[:1], norm=1.0)


def test_parse_pools():
    assert ptd.parse_pools("5, 1,3") == (1, 3, 5)
    assert ptd.parse_pools("0") == (0,)


@pytest.mark.parametrize("value", ["", "1,x", "1,,3", "1.5", "-1", "21", "3,3", 7])
def test_bad_log2_pools(value):
    c = ptd.get_config("quick")
    c.log2_pools = value if isinstance(value, str) else "1"
    if not isinstance(value, str):   # a non-string (e.g. set from Python) is refused too
        with pytest.raises(ConfigError, match="config.log2_pools"):
            ptd.parse_pools(value)
        return
    with pytest.raises(ConfigError, match="config.log2_pools"):
        ptd.validate(c)


@pytest.mark.parametrize("key, value", [("noise_std", 0.0), ("width", 31), ("n_points", 1)])
def test_other_bad_configs(key, value):
    c = ptd.get_config("quick")
    c[key] = value
    with pytest.raises(ConfigError, match=f"config.{key}"):
        ptd.validate(c)


def test_paper_scale_config():
    c = ptd.get_config("paper")
    ptd.validate(c)
    assert (c.d, c.n_points) == (8, 16) and ptd.parse_pools(c.log2_pools)[-1] == 15
    # the dMMSE residuals at M = 2^15, N = 16 are evaluated in chunks of ≤ 2^26 / (16·16·2^15) = 8 prompts
    assert ptd._bayes_chunk(16, 2**15) == 8
