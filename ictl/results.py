"""results.json rows, figures (PNG + PDF) and their reading back for the report."""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

SOURCES = ("theory", "paper", "baseline")
TOL_KINDS = ("abs", "rel")
CLAIMS = ("equal", "at_most", "at_least")
VERDICTS = ("reproduced", "not reproduced", "informational")
RESULTS_FILE = "results.json"


def _num(x) -> float:
    return float(x)


def verdict(expected: float, measured: float, *, tol: float | None, tol_kind: str = "abs",
            claim: str = "equal") -> str:
    """'reproduced' when the claim holds within the tolerance, 'not reproduced' when it does not,
    'informational' when the row makes no claim (tol None).

    With t = tol (abs) or tol·|expected| (rel): equal ⇔ |m − e| ≤ t; at_most ⇔ m ≤ e + t;
    at_least ⇔ m ≥ e − t. A non-finite measured value never reproduces.
    """
    if tol is None:
        return "informational"
    t = tol if tol_kind == "abs" else tol * abs(expected)
    if not math.isfinite(measured):
        return "not reproduced"
    ok = {"equal": abs(measured - expected) <= t, "at_most": measured <= expected + t,
          "at_least": measured >= expected - t}[claim]
    return "reproduced" if ok else "not reproduced"


def row(quantity: str, expected: float, measured: float, source: str, *, note: str = "",
        tol: float | None = None, tol_kind: str = "abs", claim: str = "equal", why: str = "") -> dict:
    """One comparison of a measured number with what it should match.

    rel_err = |measured − expected| / |expected| (the absolute error when expected = 0).
    A claim: ``tol`` (≥ 0) with ``tol_kind`` "abs" | "rel" and ``claim`` "equal" (|m − e| ≤ t),
    "at_most" (m ≤ e + t) or "at_least" (m ≥ e − t), and ``why`` that tolerance (MC error,
    bootstrap band, paper precision, ...), required with a tolerance. Without ``tol`` the row
    is informational (shown, counted in no summary). The row's ``verdict`` follows (`verdict`).
    """
    if source not in SOURCES:
        raise ValueError(f"source: got {source!r}; allowed {SOURCES}")
    if tol_kind not in TOL_KINDS:
        raise ValueError(f"tol_kind: got {tol_kind!r}; allowed {TOL_KINDS}")
    if claim not in CLAIMS:
        raise ValueError(f"claim: got {claim!r}; allowed {CLAIMS}")
    if tol is not None and not (tol >= 0 and why):
        raise ValueError(f"tol: got {tol!r} with why={why!r}; allowed tol >= 0 together with a reason (why=...)")
    expected, measured = _num(expected), _num(measured)
    err = abs(measured - expected)
    rel_err = err / abs(expected) if expected != 0 else err
    return {"quantity": quantity, "expected": expected, "measured": measured,
            "rel_err": rel_err if math.isfinite(rel_err) else None, "source": source, "note": note,
            "tol": None if tol is None else float(tol), "tol_kind": tol_kind, "claim": claim, "why": why,
            "verdict": verdict(expected, measured, tol=tol, tol_kind=tol_kind, claim=claim)}


def count_verdicts(rows: Sequence[dict]) -> dict[str, int]:
    """{verdict: number of rows}; rows written before verdicts existed count as informational."""
    out = {v: 0 for v in VERDICTS}
    for r in rows:
        out[r.get("verdict", "informational")] += 1
    return out


def _primary() -> bool:
    """False on processes other than 0 of a multi-process job (they compute the rows but do not write)."""
    if "jax" not in sys.modules:
        return True
    from ictl.multihost import is_primary

    return is_primary()


def write_results(workdir: pathlib.Path | str, rows: Sequence[dict], **extra: Any) -> pathlib.Path:
    """Writes {experiment, rows, ...extra} to workdir/results.json and returns the path (process 0 of a
    multi-process job writes; the others only return the path)."""
    path = pathlib.Path(workdir) / RESULTS_FILE
    if not _primary():
        return path
    payload = {"rows": list(rows), **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
    return path


def read_results(workdir: pathlib.Path | str) -> dict | None:
    path = pathlib.Path(workdir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_figure(fig, workdir: pathlib.Path | str, stem: str) -> list[pathlib.Path]:
    """Saves ``fig`` as workdir/stem.png (for the report) and workdir/stem.pdf, then closes it (on
    processes other than 0 of a multi-process job it only closes it).

    ICTL_DRAFT_FIGURES=1 (the test suite sets it) writes the same two files as drafts: a 20-dpi PNG,
    no tight layout or bounding box (0.5 instead of 1.1 CPU-s for a two-panel figure), and the PDF a
    page holding that PNG (Pillow), so the figure is drawn once, not twice (1.0 s fewer for a 16-panel one)."""
    import matplotlib.pyplot as plt

    png, pdf = (pathlib.Path(workdir) / f"{stem}.{ext}" for ext in ("png", "pdf"))
    if not _primary():
        plt.close(fig)
        return [png, pdf]
    if os.environ.get("ICTL_DRAFT_FIGURES") == "1":
        from PIL import Image

        fig.savefig(png, dpi=20)
        with Image.open(png) as img:
            img.convert("RGB").save(pdf, "PDF")
    else:
        fig.tight_layout()
        fig.savefig(png, dpi=130, bbox_inches="tight")
        fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)
    return [png, pdf]


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.6, height: float = 3.4):
    """A matplotlib figure with the project's defaults (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes
