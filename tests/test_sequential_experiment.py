"""The sequential-classes experiment: a tiny end-to-end run, its baselines and targets against closed
forms, and its config checks."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import sequential_icl as si
from ictl.config import ConfigError
from ictl.tasks import sequential as sq

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)


def _tiny():
    c = si.get_config("quick")
    c.n_layers, c.width, c.batch, c.warmup, c.log_every, c.ckpt_every = 1, 16, 16, 0, 10, 20
    c.dyn_d, c.dyn_points, c.dyn_steps = 2, 5, 20
    c.win_d, c.win_window, c.win_points, c.win_steps = 2, 2, 6, 20
    c.eval_prompts, c.n_boot, c.norm_prompts = 256, 50, 2048
    c.label_fractions = (0.0, 1.0)
    return c


def test_run_end_to_end(tmp_path):
    c = _tiny()
    rows = si.run(c, tmp_path)
    for stem in ("sequential_icl.png", "sequential_icl.pdf", "results.json"):
        assert (tmp_path / stem).exists()
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["source"] for r in rows} == {"baseline", "theory"}
    assert all(np.isfinite(r["measured"]) for r in rows)
    rel = {m: np.array(v) for m, v in res["curves"]["dynamics_relative"].items()}
    # noiseless dynamics: 2 transitions determine W (d = 2), float64 least squares is exact from k = d
    assert rel["transition least squares"][c.dyn_d:].max() < 1e-10
    # before any transition the least-squares fit is 0, i.e. the zero predictor
    assert rel["transition least squares"][0] == rel["zero"][0]
    # zero predictor / ν_k: ν from 2048 other trajectories; the ratio's spread over 256 prompts is a few
    # tens of percent at late k (‖x_k‖² is heavy-tailed under random contractions), so a wide window
    assert np.all(np.abs(rel["zero"] - 1) < 0.5)
    # copy-last is worse than zero: relative error 1 + ν_(k−1)/ν_k > 1 (see the module docstring)
    assert np.all(rel["copy last state x̂ = x_t"] > 1.2)
    lab = {p: {m: np.array(v) for m, v in cs.items()} for p, cs in res["curves"]["labels"].items()}
    assert set(lab) == {"0", "1"}
    # k = 0 (no example): every learner predicts 0, error E y_1²/(d·w) = d/(d·w) = 1/w in expectation
    assert abs(lab["0"]["zero"][0] - 1 / c.win_window) < 0.15   # SE ≈ √(Var y²)/(dw·√256) ≈ 0.04
    for m in lab["0"]:
        if m != "transformer":
            assert lab["0"][m][0] == lab["0"]["zero"][0], m
    assert res["params"]["dynamics"] > 0 and np.isfinite(res["last_loss"]["dynamics"])
    assert 0.2 < res["first_loss"]["window"] < 5   # E y² / (d·w) ≤ 1 plus the initial read-out variance
    # verdicts. dynamics k = 1 < d: informational (least squares underdetermined); the least-squares
    # exactness row is a float64 round-off claim (measured < 1e-10 above): reproduced
    by = {r["quantity"]: r for r in rows}
    assert by["dynamics: transformer error / E‖x_(k+1)‖² at k=1 vs transition least squares"]["verdict"] == "informational"
    k2 = by["dynamics: transformer error / E‖x_(k+1)‖² at k=2 vs transition least squares"]
    assert k2["claim"] == "at_most" and k2["tol"] == pytest.approx(0.05 * rel["zero"][2], rel=1e-6)
    exact = by[f"dynamics: least squares error / E‖x_(k+1)‖², k = {c.dyn_d}..{c.dyn_points - 1} (max)"]
    assert exact["verdict"] == "reproduced" and exact["tol"] == 1e-9
    # copy-last vs ν_k + ν_(k−1): a closed form checked by MC at 4 SE (reproduced at this seed)
    assert by["dynamics: copy-last error E‖x_(k+1) − x_k‖² at k=2 vs ν_k + ν_(k−1)"]["verdict"] == "reproduced"
    # labels: p = 0 is the informational reference; p = 1 compares with the zero predictor (at_least)
    k = c.win_points - 1
    assert by[f"labels p=0: transformer error/(d·w) at k={k} (clean level)"]["verdict"] == "informational"
    p1 = by[f"labels p=1: transformer error/(d·w) at k={k} vs the zero predictor"]
    assert p1["claim"] == "at_least" and p1["expected"] == pytest.approx(lab["1"]["zero"][k], rel=1e-6)
    assert all(r["verdict"] == "informational" or (r["tol"] is not None and r["why"]) for r in rows)


def test_dynamics_baselines_and_targets_closed_forms():
    # d = 2, 5 points, 256 prompts: test_run_end_to_end's evaluation shapes (and n_boot below), so the
    # eager sampler, least squares and bootstrap programs are already compiled (2.15 → 0.1 CPU-s)
    d, n, B = 2, 5, 256
    p = sq.sample_linear_dynamics(jax.random.key(0), batch=B, n_points=n, d=d)
    pr = si.dynamics_predictions(None, p.x, p.y)
    x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
    nu_BxN = np.sum(y**2, axis=-1)
    err = {m: np.sum((v - y) ** 2, axis=-1) for m, v in pr.items()}
    # least squares on the k transitions seen: exact from k = d. Per prompt the float64 round-off is
    # ≈ eps·cond² of the transition matrix (the states align with W's top eigenvector): measured max 1.3e-13
    # over these 256 prompts (1.3e-12 over 4000 at d = 3); an error in the prefix mask would give O(1)
    assert np.max(err["transition least squares"][:, d:] / nu_BxN[:, d:]) < 1e-8
    # k = 1 < d: not exact (a leak of later transitions would make it ≈ 0). Measured 0.43 ± 0.044 (bootstrap
    # SE) here; the bound was 0.3 at d = 3, 4000 prompts (measured 0.58): 0.25 keeps 4 SE
    assert np.mean(err["transition least squares"][:, 1]) > 0.25 * np.mean(nu_BxN[:, 1])
    # copy-last: E‖x_{k+1} − x_k‖² = E‖x_{k+1}‖² + E‖x_k‖² − 2 E x_kᵀ W x_k, and the last term is 0 (the law of
    # W is symmetric under W → −W and x_kᵀ W x_k has odd degree in W). With a target shifted by one step
    # (y_k = x_k) the copy error would be 0; with y_k = x_{k+2} the cross term E x_kᵀ W² x_k would not vanish.
    prev_BxN = np.sum(x**2, axis=-1)                      # ‖x_k‖², k = 0 is ‖x_1‖² (mean d)
    cross_BxN = 2 * np.sum(x * y, axis=-1)
    diff_N = err["copy last state x̂ = x_t"].mean(0) - (nu_BxN.mean(0) + prev_BxN.mean(0))
    np.testing.assert_allclose(diff_N, -cross_BxN.mean(0), rtol=1e-6, atol=1e-9)   # algebra of the sample
    assert np.all(np.abs(cross_BxN.mean(0)) < 4 * cross_BxN.std(0) / np.sqrt(B))   # E x_kᵀ W x_k = 0
    assert abs(prev_BxN[:, 0].mean() - d) < 4 * np.sqrt(2 * d / B)                # E‖x_1‖² = d, Var 2d
    # the curve helper returns the mean of the per-prompt errors / ν_k
    nu_N = nu_BxN.mean(0)
    cur = si.vector_curve(pr["copy last state x̂ = x_t"], p.y, norm_N=nu_N, key=jax.random.key(1), n_boot=50)
    np.testing.assert_allclose(cur.mean, err["copy last state x̂ = x_t"].mean(0) / nu_N, rtol=1e-5)
    assert np.all(cur.lo <= cur.mean) and np.all(cur.mean <= cur.hi)


@pytest.fixture(scope="module")
def window_prompts():
    """The prompts of the test below, sampled before its `xla_optimized` mark takes effect (a module
    fixture is set up first): compiled optimised, the eager samplers of [300, 150, ·] arrays took ≈ 4 of
    the test's 12 CPU-s; the samples differ from the optimised ones by float rounding (≤ 2.4e-6, measured),
    immaterial to the test's Monte Carlo checks."""
    d, w, N, B = 2, 2, 150, 300
    q = sq.sample_window_relu(jax.random.key(3), batch=B, n_points=N, d=d, window=w)
    y_ctx = {frac: sq.randomize_labels(jax.random.key(4), q.y, fraction=frac, label_std=float(np.sqrt(d * w)))[0]
             for frac in (0.5, 1.0)}
    return q, jax.block_until_ready(y_ctx)


@pytest.mark.xla_optimized  # runs more than it compiles
def test_randomized_labels_against_the_affine_least_squares_limit(window_prompts):
    # B prompts of N points, d = w = 2: affine least squares on windows tends to (½ − 1/π) + p²(½ + 1/π) of
    # E y² = d·w (`affine_ls_limit`); at k examples the Gaussian-design OLS estimation term adds
    # r·q/(k − q − 1), q = w·d + 1 = 5 coefficients, r = 1 − (1 − p)²(½ + 1/π) the residual variance of the
    # corrupted labels around (1 − p)(C + L) (approximate: the residual is not independent of u and
    # consecutive windows overlap). Measured over 3 seeds × 3 fractions: 2–7% above this prediction (the
    # heteroscedastic residual inflates the OLS term); 12% leaves room for the Monte Carlo spread.
    d, w, N, B = 2, 2, 150, 300
    q, y_ctx_by_frac = window_prompts
    ks = np.arange(120, N)
    for frac in (0.5, 1.0):   # p = 0 (limit ½ − 1/π) measured 2–7% above too; left out for time
        pred = si.window_predictions(None, q.x, y_ctx_by_frac[frac], w)
        y = np.asarray(q.y, np.float64)
        ls = np.mean((pred[si.AFFINE_LS][:, ks] - y[:, ks]) ** 2) / (d * w)
        r = 1 - (1 - frac) ** 2 * (0.5 + 1 / np.pi)
        expect = si.affine_ls_limit(frac) + r * np.mean(5 / (ks - 6))
        assert abs(ls - expect) < 0.12 * expect, (frac, ls, expect)
        if frac == 1.0:
            # every label is noise: no learner can use the context, E[y ŷ] = 0 (4 SE), so error ≥ zero's
            for m, v in pred.items():
                yv_BxK = y[:, ks] * v[:, ks]
                assert abs(yv_BxK.mean()) <= 4 * yv_BxK.mean(1).std() / np.sqrt(B), m   # 0 <= 0 for zero
    assert si.affine_ls_limit(0.0) == pytest.approx(0.5 - 1 / np.pi) and si.affine_ls_limit(1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("key, value", [
    ("dyn_max_radius", 1.0), ("dyn_points", 3), ("dyn_noise_std", -0.1), ("win_points", 4), ("width", 31),
    ("label_fractions", (0.0, 1.5)), ("label_fractions", (0.5,)), ("warmup", 5000), ("lr", 0.0), ("win_window", 0), ("eval_prompts", 1),
])
def test_bad_configs(key, value):
    c = si.get_config("quick")
    c[key] = value
    with pytest.raises(ConfigError, match=f"config.{key}"):
        si.validate(c)


def test_paper_config_is_valid():
    si.validate(si.get_config("paper"))
