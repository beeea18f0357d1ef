"""results.json rows, figures (PNG + PDF) and their reading back for the report."""
from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

SOURCES = ("theory", "paper", "baseline")
RESULTS_FILE = "results.json"


def _num(x) -> float:
    return float(x)


def row(quantity: str, expected: float, measured: float, source: str, *, note: str = "") -> dict:
    """One comparison: rel_err = |measured − expected| / |expected| (the absolute error when expected = 0)."""
    if source not in SOURCES:
        raise ValueError(f"source: got {source!r}; allowed {SOURCES}")
    expected, measured = _num(expected), _num(measured)
    err = abs(measured - expected)
    rel_err = err / abs(expected) if expected != 0 else err
    return {"quantity": quantity, "expected": expected, "measured": measured,
            "rel_err": rel_err if math.isfinite(rel_err) else None, "source": source, "note": note}


def write_results(workdir: pathlib.Path | str, rows: Sequence[dict], **extra: Any) -> pathlib.Path:
    """Writes {experiment, rows, ...extra} to workdir/results.json and returns the path."""
    path = pathlib.Path(workdir) / RESULTS_FILE
    payload = {"rows": list(rows), **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
    return path


def read_results(workdir: pathlib.Path | str) -> dict | None:
    path = pathlib.Path(workdir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_figure(fig, workdir: pathlib.Path | str, stem: str) -> list[pathlib.Path]:
    """Saves ``fig`` as workdir/stem.png (for the report) and workdir/stem.pdf, then closes it."""
    import matplotlib.pyplot as plt

    out = []
    fig.tight_layout()
    for ext in ("png", "pdf"):
        path = pathlib.Path(workdir) / f"{stem}.{ext}"
        fig.savefig(path, dpi=130 if ext == "png" else None, bbox_inches="tight")
        out.append(path)
    plt.close(fig)
    return out


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.6, height: float = 3.4):
    """A matplotlib figure with the project's defaults (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes
