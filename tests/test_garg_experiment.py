"""End-to-end: the Garg linear-regression experiment with a few training steps."""
import json

import numpy as np
import pytest

from experiments import garg_linear
from ictl.config import ConfigError
from models import gpt


def test_run_end_to_end(tmp_path, monkeypatch):
    """Two seeds in one vmapped step, 10 steps per dispatch: files, rows, seed band, baselines."""
    # a size "test" = 1 layer, 2 heads, D = 16: compiling the (vmapped, scanned) train step of "tiny"
    # (3 layers, D = 64, layers unrolled) was most of this test's time; nothing below depends on depth
    monkeypatch.setitem(gpt.SIZES, "test", (1, 2, 16))
    c = garg_linear.get_config("quick")
    c.size = "test"
    c.train_steps, c.warmup, c.log_every, c.ckpt_every, c.steps_per_call, c.seeds = 40, 0, 10, 40, 10, 2
    c.lr, c.eval_prompts, c.n_boot, c.d, c.n_points, c.batch = 3e-3, 64, 50, 3, 6, 16
    rows = garg_linear.run(c, tmp_path)
    for stem in ("garg_linear.png", "garg_linear.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    # rows: k = 1..N−1 against least squares on the same prompts (max(0, 1 − k/d) in expectation, 0 from
    # k = d on: noiseless, d = 3 examples determine w), least squares at k = ⌊d/2⌋, the 3-NN ratio
    ls_mean = res["curves"]["least squares"]["mean"]
    assert len(rows) == 5 + 2 and [r["expected"] for r in rows[:5]] == pytest.approx(ls_mean[1:6])
    assert max(ls_mean[3:]) < 1e-6 and all(r["tol"] == 0.05 for r in rows[:5])
    assert all(r["verdict"] in ("reproduced", "not reproduced") for r in rows)
    # least squares after k = 1 of d = 3 examples: 1 − 1/3 (64 prompts: MC SE ≈ 0.1)
    ls = rows[5]
    assert ls["quantity"].startswith("least squares") and abs(ls["measured"] - 2 / 3) < 0.35
    # the logged loss at the start is ≈ E y² = d = 3 (outputs ≈ 0; one batch of 16 prompts is noisy)
    assert 1.0 < res["first_loss"] < 6.0 and all(v is not None for v in res["curves"]["transformer"]["mean"])
    # with k = 0 examples nothing beats ŷ = 0, whose error/d is E y²/d = 1 (SE ≈ √2/8 ≈ 0.18)
    assert abs(res["curves"]["least squares"]["mean"][0] - 1) < 0.6
    assert res["curves"]["transformer"]["mean"][0] > 0.4
    # the seed band: "transformer" is the mean of the two seeds' curves, lo/hi their min/max
    s0, s1 = (np.array(res["curves"][f"transformer seed {s}"]["mean"]) for s in (0, 1))
    tf = res["curves"]["transformer"]
    np.testing.assert_allclose(tf["mean"], (s0 + s1) / 2, rtol=1e-12)
    np.testing.assert_allclose(tf["lo"], np.minimum(s0, s1), rtol=1e-12)
    assert not np.allclose(s0, s1) and res["seeds"] == 2  # two different models
    hist = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [10, 20, 30, 40]
    assert hist[-1]["loss"] == pytest.approx((hist[-1]["loss_s0"] + hist[-1]["loss_s1"]) / 2, rel=1e-5)


@pytest.mark.parametrize("key, value, match", [
    ("size", "giant", "config.size"),
    ("task", "quadratic", "config.task"),
    ("d", 5, "config.d"),          # curriculum=True needs d >= 20
    ("dtype", "float16", "config.dtype"),
    ("steps_per_call", 0, "config.steps_per_call=0: allowed an integer >= 1"),
    ("steps_per_call", 7, "config.steps_per_call=7: allowed a divisor of log_every=250"),
    ("seeds", 0, "config.seeds=0: allowed an integer >= 1"),
])
def test_bad_configs_one_line(key, value, match):
    c = garg_linear.get_config("quick")
    if key == "d":
        c.curriculum = True
    c[key] = value
    with pytest.raises(ConfigError, match=match) as e:
        garg_linear.validate(c)
    assert "\n" not in str(e.value)
