"""End-to-end: garg_tasks (the other Garg tasks and the OOD suites) with a few training steps."""
import json

import numpy as np
import pytest

from experiments import garg_tasks
from ictl.config import ConfigError
from ictl.tasks import ood
from models import gpt

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)


@pytest.fixture(autouse=True)
def _one_layer_gpt(monkeypatch):
    """A size "test" = 1 layer, 2 heads, D = 16 for these smoke runs: compiling the train step (its
    layers unrolled) was most of each test's time with "tiny" (3 layers, D = 64). What is checked
    here — rows, baselines, OOD suites, files — does not depend on depth (tests/test_gpt.py covers
    the named sizes)."""
    monkeypatch.setitem(gpt.SIZES, "test", (1, 2, 16))


def _tiny(task):
    c = garg_tasks.get_config("quick")
    c.task, c.size = task, "test"
    c.train_steps, c.warmup, c.log_every, c.ckpt_every, c.steps_per_call = 20, 0, 10, 20, 10
    # 16 prompts everywhere = the training batch: one shape for every evaluation of every task, so the
    # baselines shared between tasks (least squares, 3-NN, averaging: one jitted program per function
    # and shape) compile once per file, and XGBoost (on the host) fits 16 prompts × 5 prefixes × 100
    # trees. Least squares is exact (error ≲ 1e-10) at k = 5 ≥ d = 3 on any number of prompts.
    c.eval_prompts, c.ood_prompts, c.n_boot, c.d, c.n_points, c.batch = 16, 16, 20, 3, 6, 16
    return c


def test_sparse_linear_rows_compare_every_baseline(tmp_path):
    c = _tiny("sparse_linear")
    rows = garg_tasks.run(c, tmp_path)
    assert (tmp_path / "garg_sparse_linear.png").exists()
    names = [r["quantity"] for r in rows]
    assert len(rows) == len(garg_tasks.BASELINES["sparse_linear"])
    assert all(n.startswith("transformer / ") and n.endswith(f"k={c.n_points - 1}") for n in names)
    assert all(np.isfinite(r["measured"]) and r["measured"] > 0 for r in rows)
    assert all(r["verdict"] == "informational" for r in rows)  # quick tier: a smoke run, no claims
    # noiseless sparse linear with k = 5 ≥ d = 3 examples: least squares recovers w exactly (float32
    # round-off, error ≲ 1e-10), while the 20-step transformer's error is O(0.1–1); a least squares that
    # is wrong (or fed the wrong prefix) leaves the ratio O(1)
    by = {r["quantity"]: r["measured"] for r in rows}
    assert by[f"transformer / least squares error at k={c.n_points - 1}"] > 1e4


def test_paper_claims_name_existing_baselines_and_give_reasons():
    # a claim keyed by a misspelt baseline would silently never be checked
    for (task, name), (claim, tol, why) in garg_tasks.PAPER_CLAIMS.items():
        assert name in garg_tasks.BASELINES[task], (task, name)
        assert claim in ("at_most", "equal") and tol >= 0 and why
    assert {t for t, _ in garg_tasks.PAPER_CLAIMS} == set(garg_tasks.BASELINES) - {"linear"}


def test_linear_with_ood_suites(tmp_path):
    c = _tiny("linear")
    rows = garg_tasks.run(c, tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "garg_ood.png").exists()
    n_suites = len([s for s in ood.SUITES if s not in ("scale_x", "scale_y")]) + 2 * len(ood.SCALES)
    ood_rows = [r for r in rows if r["quantity"].startswith("OOD ")]
    assert len(ood_rows) == n_suites == len(res["ood"])
    # noiseless suites: least squares with k = 5 ≥ d = 3 examples recovers w, error ≈ 0 (float32 pinv)
    assert res["ood"]["standard"]["least squares"][c.n_points - 1] < 1e-6
    assert res["ood"]["skewed"]["least squares"][c.n_points - 1] < 1e-6
    # the row is the difference of the two curves at the last k
    std = next(r for r in ood_rows if r["quantity"].startswith("OOD standard:"))
    t, ls = res["ood"]["standard"]["transformer"][-1], res["ood"]["standard"]["least squares"][-1]
    assert std["measured"] == pytest.approx(t - ls, rel=1e-6)


def test_unknown_task_is_one_line_config_error():
    c = garg_tasks.get_config("quick")
    c.task = "quadratic"
    with pytest.raises(ConfigError, match="config.task"):
        garg_tasks.validate(c)


def test_decision_tree_compares_greedy_tree_and_xgboost(tmp_path):
    c = _tiny("decision_tree")
    rows = garg_tasks.run(c, tmp_path)
    names = [r["quantity"] for r in rows]
    assert len(rows) == len(garg_tasks.BASELINES["decision_tree"]) == 4
    assert any("XGBoost" in n for n in names) and any("greedy tree" in n for n in names)
    assert all(np.isfinite(r["measured"]) and r["measured"] > 0 for r in rows)
    table = json.loads((tmp_path / "results.json").read_text())["table"]
    assert "XGBoost" in table and "greedy tree" in table
