"""End-to-end tiny run of experiments/vonoswald_gd.py: rows, figures, and a short training that
moves the 1-layer LSA from the zero predictor towards the best 1-step GD."""
import json

import matplotlib.image
import numpy as np
import pytest

from experiments import vonoswald_gd as vo
from ictl.config import ConfigError

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)


def _tiny():
    # Compiling dominates (one training program per model: 1-layer, 2-layer, two sine models); the step
    # counts are what runs: 150 steps at lr 2e-2 instead of 300 at 1e-2 (≈ 2 CPU-s), 2 steps of the
    # K-layer and sine models instead of 20 (≈ 3 CPU-s; nothing here asserts on their trained losses,
    # only that the rows and figures exist)
    c = vo.get_config("quick")
    c.steps, c.batch, c.lr, c.eval_every = 150, 512, 2e-2, 50
    c.eval_batch, c.metric_batch, c.search_batch = 2048, 512, 2048
    c.layers, c.layer_steps, c.layer_lr = (2,), 2, 1e-2
    c.sine_steps, c.sine_batch, c.sine_n_ctx = 2, 64, 10
    c.ood_input_scales, c.ood_weight_scales = (1.0, 2.0), (1.0, 5.0)
    return c


def test_tiny_run(tmp_path):
    c = _tiny()
    vo.validate(c)
    rows = vo.run(c, tmp_path)
    by = {r["quantity"]: r for r in rows}
    for r in rows:
        assert set(r) >= {"quantity", "expected", "measured", "rel_err", "source", "note", "verdict"}
        assert r["source"] in ("theory", "paper", "baseline")
    # closed form (test_gd_construction.py): η* = 200/33, L* = 490/2376, zero predictor 10/24
    lsa = by["1-layer LSA ½MSE vs best 1-step GD (closed form)"]
    assert lsa["expected"] == pytest.approx(490 / 2376, rel=1e-9)
    assert by["1-layer LSA ½MSE vs paper"]["expected"] == 0.205
    assert by["best 1-step GD η (MC line search) vs closed form"]["expected"] == pytest.approx(200 / 33, rel=1e-9)
    # 150 Adam steps (batch 512, lr 2e-2) take the loss from the zero predictor's 10/24 = 0.4167 to
    # L* = 0.2062: measured 0.2076 (+0.65%; paired estimate, its MC SE on 2048 prompts ≈ 5e-4) and model
    # cos 0.9971 (300 steps at lr 1e-2: 0.2058 and 0.9989). Tolerance 3% of L*: a few SE plus the excess
    # loss of 150 noisy Adam steps; the initial model (≈ the zero predictor, 0.4167) fails it by a factor of ~30.
    assert abs(lsa["measured"] - 490 / 2376) < 0.03 * 490 / 2376
    assert 0.99 < by["model cos (trained vs GD, ∂ŷ/∂x_q)"]["measured"] <= 1.0 + 1e-9
    assert by["2-layer LSA ½MSE vs 2-step GD++"]["expected"] < by["1-layer LSA ½MSE vs best 1-step GD (closed form)"]["expected"]
    assert any(q.startswith("OOD input scale α=2") for q in by)
    assert any(q.startswith("OOD weight scale α=5") for q in by)
    assert "sine: MLP + LSA ½MSE vs MLP + GD" in by
    # verdicts: claims carry a tolerance and its reason; the paper's MC number and the preds diff inform
    info = {"1-layer LSA ½MSE vs paper", "preds diff mean|ŷ_TF − ŷ_GD|"}
    for q, r in by.items():
        assert (r["verdict"] == "informational") == (q in info), q
        assert r["verdict"] == "informational" or (r["tol"] > 0 and r["why"]), q
    # the closed form against Monte Carlo on independent prompts (4 SE): exact theory, reproduced
    assert by["best 1-step GD ½MSE (MC) vs closed form"]["verdict"] == "reproduced"
    # fidelity tolerances: 5% of the zero predictor's ½MSE 10/24 (K layers), of the sine zero predictor
    assert by["2-layer LSA ½MSE vs 2-step GD++"]["tol"] == pytest.approx(0.05 * 10 / 24)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    for stem in ("loss_vs_gd", "alignment", "layers", "ood", "sine"):
        # drawn curves, not empty axes: coloured pixels (a blank figure has only grays)
        img = matplotlib.image.imread(tmp_path / f"{stem}.png")[..., :3]
        assert np.ptp(img, axis=-1).max() > 0.3 and (tmp_path / f"{stem}.pdf").exists()


def test_eta_se_matches_the_closed_form_curvature():
    """_eta_se = std(dℓ/dη)/√search_batch/L″ with L″ = s²σ² E tr S²/N² = 13.75/1200 for d = N = 10,
    a = ½, s = 1 (σ² = 1/12, E tr S² = 10·(10/80 + 90/144) + 90·10/144 = 13.75)."""
    import jax
    import numpy as np

    from ictl.theory import gd_icl

    c = vo.get_config("quick")
    c.search_batch = 4096
    pr = vo._linear_sampler(c, 4096)(jax.random.key(3, impl="rbg"))
    eta = 200 / 33
    y = np.asarray(gd_icl.gd_predictions(pr.x_ctx, pr.y_ctx, pr.x_q, eta=eta, num_steps=1))
    dl = np.mean((y - np.asarray(pr.y_q, np.float64)) * y / eta, axis=1)
    expected = dl.std(ddof=1) / np.sqrt(4096) / (13.75 / 1200)
    assert vo._eta_se(c, pr, eta) == pytest.approx(expected, rel=1e-9)
    assert 0 < expected < 0.05 * eta   # the line search pins η* to a few per cent at this size


@pytest.mark.parametrize("key,value", [("layers", (1, 2)), ("metric_batch", 10**7), ("x_range", 0.0),
                                       ("steps", 0), ("b2", 1.0), ("ood_weight_scales", ())])
def test_bad_config_is_one_line_error(key, value):
    c = vo.get_config("quick")
    c[key] = value
    with pytest.raises(ConfigError, match=f"config.{key}="):
        vo.validate(c)


def test_paper_config_validates():
    c = vo.get_config("paper")
    vo.validate(c)
    assert c.steps > vo.get_config("quick").steps and max(c.layers) == 5


def test_sine_prompts_match_their_law():
    import jax
    import numpy as np

    from ictl.tasks.sine import sample_sine_prompts

    # one jitted sampler, then numpy (eagerly every op of the sampler and of each check compiles on its own)
    sample = jax.jit(lambda key: sample_sine_prompts(key, batch=20000, n_ctx=5, n_query=2))
    p = jax.tree.map(np.asarray, sample(jax.random.key(0)))
    assert p.x_ctx.shape == (20000, 5, 1) and p.y_q.shape == (20000, 2)
    assert float(p.x_ctx.min()) >= -5 and float(p.x_ctx.max()) <= 5
    assert 0.1 <= float(p.amp.min()) and float(p.amp.max()) <= 0.5
    np.testing.assert_allclose(p.y_ctx, p.amp[:, None] * np.sin(p.x_ctx[..., 0] + p.phase[:, None]), atol=1e-6)
    # zero predictor: ½E[y²] = ½E[A²]E[sin²(x + φ)]; E[A²] = (0.5³ − 0.1³)/(3·0.4) = 0.10333 and
    # E[sin²(x + φ)] = ½ − ½E[cos(2x + 2φ)] = ½ exactly (2φ is uniform over a full period), so
    # ½E[y²] = 0.10333/4 = 0.0258333.
    per_prompt = (0.5 * np.asarray(p.y_ctx, np.float64) ** 2).mean(axis=1)  # points of a prompt share A, φ
    se = per_prompt.std(ddof=1) / np.sqrt(per_prompt.size)
    assert abs(per_prompt.mean() - 0.124 / 1.2 / 4) < 4 * se
    assert se < 0.02 * 0.124 / 1.2 / 4
