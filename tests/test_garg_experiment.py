"""End-to-end: the Garg linear-regression experiment with a few training steps."""
import json

import pytest

from experiments import garg_linear
from ictl.config import ConfigError


def test_run_end_to_end(tmp_path):
    c = garg_linear.get_config("quick")
    c.train_steps, c.warmup, c.log_every, c.ckpt_every = 40, 0, 10, 40
    c.lr, c.eval_prompts, c.n_boot, c.d, c.n_points, c.batch = 3e-3, 64, 50, 3, 6, 16
    rows = garg_linear.run(c, tmp_path)
    for stem in ("garg_linear.png", "garg_linear.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    # rows: k = 1..d against 1 − k/d, k = d+2..N−1 against 0, least squares at k = ⌊d/2⌋, the 3-NN ratio
    assert len(rows) == 3 + 1 + 2 and rows[0]["expected"] == pytest.approx(2 / 3)
    # least squares after k = 1 of d = 3 examples: 1 − 1/3 (64 prompts: MC SE ≈ 0.1)
    ls = rows[4]
    assert ls["quantity"].startswith("least squares") and abs(ls["measured"] - 2 / 3) < 0.35
    # the logged loss at the start is ≈ E y² = d = 3 (outputs ≈ 0; one batch of 16 prompts is noisy)
    assert 1.0 < res["first_loss"] < 6.0 and all(v is not None for v in res["curves"]["transformer"]["mean"])
    # with k = 0 examples nothing beats ŷ = 0, whose error/d is E y²/d = 1 (SE ≈ √2/8 ≈ 0.18)
    assert abs(res["curves"]["least squares"]["mean"][0] - 1) < 0.6
    assert res["curves"]["transformer"]["mean"][0] > 0.4


@pytest.mark.parametrize("key, value, match", [
    ("size", "giant", "config.size"),
    ("task", "quadratic", "config.task"),
    ("d", 5, "config.d"),          # curriculum=True needs d >= 20
    ("dtype", "float16", "config.dtype"),
])
def test_bad_configs_one_line(key, value, match):
    c = garg_linear.get_config("quick")
    if key == "d":
        c.curriculum = True
    c[key] = value
    with pytest.raises(ConfigError, match=match) as e:
        garg_linear.validate(c)
    assert "\n" not in str(e.value)
