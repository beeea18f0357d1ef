"""End-to-end: the two ZFB experiments through the CLI at tiny scale, resume, and the report."""
import json

import pytest

from ictl.cli import main
from ictl.train.loop import read_sessions

pytestmark = pytest.mark.heavy   # scheduled first (tests/conftest.py)

# N = 1 and eps_frac = 0.2: L* = d(d+1)/(2(N+d+1)) = 2.143 is within 16% of the initial loss 2.484, so the
# time to L*·(1 + eps_frac) is t = 0 and the diffrax event solve behind it (tested in tests/theory/test_zfb.py)
# is neither traced nor compiled: 4 of this file's 30 CPU-s
DYN = ["--config.t1=1.0", "--config.lr=0.02", "--config.batch=256", "--config.eval_every=10", "--config.N=1",
       "--config.eps_frac=0.2"]
SHIFTS = ["--config.steps=60", "--config.batch=256", "--config.M=2,20", "--config.num_prompts=500"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", "zfb_dynamics", "--workdir", str(root / "dyn"), *DYN]) == 0
    assert main(["run", "zfb_shifts", "--workdir", str(root / "shifts"), *SHIFTS]) == 0
    return root


def _rows(workdir):
    return {r["quantity"]: r for r in json.loads((workdir / "results.json").read_text())["rows"]}


def test_dynamics_outputs(runs):
    wd = runs / "dyn"
    for f in ("dynamics.png", "dynamics.pdf", "config.json", "sgd/metrics.jsonl", "population_gd/metrics.jsonl"):
        assert (wd / f).exists(), f
    rows = _rows(wd)
    assert set(next(iter(rows.values()))) >= {"quantity", "expected", "measured", "rel_err", "source", "note", "verdict"}
    closed = rows["L* closed form vs d(d+1)/(2(N+d+1)) (Λ = I)"]
    assert closed["expected"] == pytest.approx(5 * 6 / (2 * 7)) and closed["rel_err"] < 1e-12   # d = 5, N = 1
    # GD on the exact population loss tracks the ODE within the Euler error (lr = 0.02)
    assert rows["GD on population loss: max_k |L_GD(k·lr) − L_ODE(k·lr)|"]["measured"] < 0.1
    # verdicts: the exact-theory rows are reproduced (closed form vs closed form; the ODE's invariant;
    # GD vs the ODE within twice the Richardson estimate of Euler's error, lr vs lr/2 in float64)
    for q in ("L* closed form vs d(d+1)/(2(N+d+1)) (Λ = I)",
              "ODE: drift of the conserved u² − ‖U‖_F² over [0, t1], relative to u(t1)²",
              "GD on population loss: max_k |L_GD(k·lr) − L_ODE(k·lr)|", "GD on population loss: L at t1 vs ODE"):
        assert rows[q]["verdict"] == "reproduced", rows[q]
    gd_max = rows["GD on population loss: max_k |L_GD(k·lr) − L_ODE(k·lr)|"]
    assert 0.5 * gd_max["tol"] > 1e-3  # a real first-order error at lr = 0.02 (measured 0.0044), not the float32 floor
    assert rows["SGD-trained LSA: weight off the (u, U) subspace at t1"]["verdict"] == "informational"
    assert all(r["verdict"] == "informational" or (r["tol"] is not None and r["why"]) for r in rows.values())
    assert json.loads((wd / "run.json").read_text())["status"] == "done"


def test_shifts_outputs(runs):
    rows = _rows(runs / "shifts")
    assert (runs / "shifts" / "shifts.png").exists()
    bias = rows["covariate shift: M → ∞ risk vs the bias tr((Λ′Γ⁻¹ − I)Λ′(Γ⁻¹Λ′ − I))"]
    assert bias["rel_err"] < 1e-9  # icl_risk_limit and the REFERENCES bias formula agree exactly
    assert bias["measured"] > 1.0  # covariate shift leaves an O(1) risk ...
    assert rows["none: trained LSA risk at M = 20"]["expected"] < bias["measured"]  # ... above the in-distribution one
    # verdicts: the two closed forms of the bias agree (reproduced); each risk row's tolerance is 4 of
    # the run's own MC standard errors at that M (results.json curves)
    assert bias["verdict"] == "reproduced" and bias["tol"] == 1e-9
    curves = json.loads((runs / "shifts" / "results.json").read_text())["curves"]
    for j, m in enumerate((2, 20)):
        r = rows.get(f"task: trained LSA risk at M = {m}")
        if r is not None:
            assert r["tol"] == pytest.approx(4 * curves["task"]["se"][j]) and r["claim"] == "equal"
    assert all(r["tol"] is not None and r["why"] and r["verdict"] != "informational" for r in rows.values())


def test_resume_of_finished_run_reproduces_rows(runs, capsys):
    before = _rows(runs / "dyn")
    assert main(["resume", str(runs / "dyn")]) == 0
    after = _rows(runs / "dyn")
    assert before == after  # training restored from the final checkpoints, same evaluation keys
    # ... and not retrained: deterministic retraining from step 0 would give the same rows, so the
    # session records must show the final checkpoint restored and 0 steps run in every fit
    for name in ("sgd", "population_gd"):
        last = read_sessions(runs / "dyn" / name)[-1]
        assert last["steps_run"] == 0 and last["restored_step"] == last["end"] > 0, (name, last)


def test_report_has_every_figure_and_row(runs, capsys):
    out = runs / "report.html"
    assert main(["report", str(runs / "dyn"), str(runs / "shifts"), "--out", str(out)]) == 0
    page = out.read_text()
    # each run's figure in its section, and again as the headline thumbnail of the summary table
    assert page.count("data:image/png;base64,") == 4 and page.count("class=thumb") == 2
    assert "L* closed form" in page and "covariate shift" in page
