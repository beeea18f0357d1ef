"""results.row: tolerances, claims and verdicts."""
import math

import pytest

from ictl.results import count_verdicts, row, verdict


@pytest.mark.parametrize("expected, measured, tol, kind, claim, want", [
    (1.0, 1.04, 0.05, "abs", "equal", "reproduced"),
    (1.0, 1.06, 0.05, "abs", "equal", "not reproduced"),
    (2.0, 2.09, 0.05, "rel", "equal", "reproduced"),       # t = 0.05 · 2 = 0.1
    (2.0, 2.11, 0.05, "rel", "equal", "not reproduced"),
    (0.0, -5.0, 0.01, "abs", "at_most", "reproduced"),     # one-sided: anything below e + t
    (0.0, 0.02, 0.01, "abs", "at_most", "not reproduced"),
    (1.0, 9.0, 0.0, "abs", "at_least", "reproduced"),
    (1.0, 0.98, 0.01, "abs", "at_least", "not reproduced"),
    (1.0, math.nan, 10.0, "abs", "equal", "not reproduced"),
    (1.0, 5.0, None, "abs", "equal", "informational"),
])
def test_verdicts(expected, measured, tol, kind, claim, want):
    assert verdict(expected, measured, tol=tol, tol_kind=kind, claim=claim) == want


def test_row_fields_and_bad_arguments():
    r = row("q", 0.5, 0.52, "theory", tol=0.05, tol_kind="rel", why="MC error")
    assert r["verdict"] == "reproduced" and r["rel_err"] == pytest.approx(0.04) and r["tol"] == 0.05
    assert row("q", 0.5, 0.9, "theory")["verdict"] == "informational"
    with pytest.raises(ValueError, match="why"):
        row("q", 1, 1, "theory", tol=0.1)                  # a tolerance needs its reason
    with pytest.raises(ValueError, match="claim"):
        row("q", 1, 1, "theory", tol=0.1, why="x", claim="about")
    rows = [r, row("q", 1, 3, "paper", tol=0.1, why="x"), {"quantity": "old row"}]
    assert count_verdicts(rows) == {"reproduced": 1, "not reproduced": 1, "informational": 1}
