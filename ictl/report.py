"""The HTML report: one page with every experiment's figures and results table.

Figures are embedded (base64 PNG), so the page can be mailed or moved on its own.
"""
from __future__ import annotations

import base64
import datetime
import html
import importlib
import json
import pathlib

from ictl.results import read_results

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}td.num{text-align:right;font-family:monospace}img{max-width:100%;margin:4px 0}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{max-width:560px}.doc{white-space:pre-wrap;color:#444;font-size:13px}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}.small{color:#666;font-size:12px}
"""


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x))


def _doc(name: str) -> str:
    try:
        return (importlib.import_module(f"experiments.{name}").__doc__ or "").strip()
    except Exception:  # an experiment that no longer imports still gets its results shown
        return ""


def _section(workdir: pathlib.Path) -> tuple[str, list[dict]]:
    res = read_results(workdir) or {"rows": []}
    name = workdir.name
    cfg_path = workdir / "config.json"
    if cfg_path.exists():
        name = json.loads(cfg_path.read_text()).get("experiment", name)
    status = {}
    if (workdir / "run.json").exists():
        status = json.loads((workdir / "run.json").read_text())
    secs = status.get("seconds")
    parts = [f"<h2 id='{html.escape(workdir.name)}'>{html.escape(workdir.name)}</h2>",
             f"<div class='small'>experiment <b>{html.escape(name)}</b> · workdir {html.escape(str(workdir))}"
             f"{f' · {secs:.0f} s' if secs else ''}</div>",
             f"<div class='doc'>{html.escape(_doc(name))}</div>"]
    rows = res.get("rows", [])
    if rows:
        parts.append("<table><tr><th>quantity</th><th>expected</th><th>measured</th><th>rel. err</th>"
                     "<th>source</th><th>note</th></tr>")
        for r in rows:
            parts.append(f"<tr><td>{html.escape(r['quantity'])}</td><td class=num>{_fmt(r['expected'])}</td>"
                         f"<td class=num>{_fmt(r['measured'])}</td><td class=num>{_fmt(r.get('rel_err'))}</td>"
                         f"<td>{html.escape(r['source'])}</td><td>{html.escape(r.get('note', ''))}</td></tr>")
        parts.append("</table>")
    figs = sorted(workdir.glob("*.png"))
    if figs:
        parts.append("<div class='figs'>")
        for f in figs:
            b64 = base64.b64encode(f.read_bytes()).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(f.stem)}'>"
                         f"<figcaption class='small'>{html.escape(f.stem)} (PDF beside it)</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts), rows


def write_report(workdirs, out: pathlib.Path) -> pathlib.Path:
    """Writes the page for ``workdirs`` (each with results.json) to ``out``."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections, summary = [], []
    for d in workdirs:
        body, rows = _section(pathlib.Path(d))
        sections.append(body)
        errs = [r["rel_err"] for r in rows if r.get("rel_err") is not None]
        summary.append((pathlib.Path(d).name, len(rows), max(errs) if errs else None))
    head = ["<table><tr><th>experiment</th><th>results</th><th>largest rel. err</th></tr>"]
    head += [f"<tr><td><a href='#{html.escape(n)}'>{html.escape(n)}</a></td><td class=num>{k}</td>"
             f"<td class=num>{_fmt(e)}</td></tr>" for n, k, e in summary]
    head.append("</table>")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>ictl report</title><style>{_CSS}</style>"
            f"</head><body><h1>ictl report</h1><p class='small'>written {stamp}. Each row sets the measured value "
            f"beside the expected one (source: theory = closed form or solver of ictl.theory, paper = the paper's "
            f"number, baseline = a classical learner).</p>{''.join(head)}{''.join(sections)}</body></html>")
    out.write_text(page)
    return out
