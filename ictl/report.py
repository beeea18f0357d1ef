"""The HTML report: one page that says what reproduced, then every experiment's figures and rows.

The page opens with a summary table — per experiment: the scale that ran (quick / paper), the
claims reproduced out of the claims made (a claim is a results row with a tolerance; see
`ictl.results.row`), the informational rows, and the headline figure — so a reader sees at a
glance what reproduced. Each section then shows the module docstring, the rows with their
tolerance and verdict, and every figure. Figures are embedded (base64 PNG), so the page can be
mailed or moved on its own. `summary(workdirs)` returns the counts the table shows.
"""
from __future__ import annotations

import base64
import datetime
import html
import importlib
import json
import pathlib

from ictl.results import count_verdicts, read_results

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f3f3f3}td.num{text-align:right;font-family:monospace}img{max-width:100%;margin:4px 0}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{max-width:560px}.doc{white-space:pre-wrap;color:#444;font-size:13px}
h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}.small{color:#666;font-size:12px}
td.reproduced{background:#e3f4e3}td.not-reproduced{background:#fbe1e1}td.informational{color:#777}
img.thumb{max-width:220px}
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


def _tolerance(r: dict) -> str:
    """'±0.05', '±5%', '≤ e + 0.1', '≥ e − 2%' or '—' (informational)."""
    tol = r.get("tol")
    if tol is None:
        return "—"
    t = f"{100 * tol:.3g}%" if r.get("tol_kind") == "rel" else f"{tol:.3g}"
    return {"equal": f"±{t}", "at_most": f"≤ e + {t}", "at_least": f"≥ e − {t}"}[r.get("claim", "equal")]


def _info(workdir: pathlib.Path) -> dict:
    """Experiment name, scale, status and seconds of a run directory."""
    name, scale = workdir.name, "?"
    cfg_path = workdir / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        name, scale = cfg.get("experiment", name), cfg.get("config", {}).get("scale", "?")
    status = json.loads((workdir / "run.json").read_text()) if (workdir / "run.json").exists() else {}
    return {"name": name, "scale": scale, "seconds": status.get("seconds")}


def _headline(workdir: pathlib.Path, name: str, res: dict) -> pathlib.Path | None:
    """The figure named in results.json ('headline'), else the one named like the experiment, else the first."""
    figs = sorted(workdir.glob("*.png"))
    by_stem = {f.stem: f for f in figs}
    for stem in (res.get("headline"), name):
        if stem in by_stem:
            return by_stem[stem]
    return figs[0] if figs else None


def _img(path: pathlib.Path, cls: str = "") -> str:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return f"<img{f' class={cls}' if cls else ''} src='data:image/png;base64,{b64}' alt='{html.escape(path.stem)}'>"


def summary(workdirs) -> list[dict]:
    """Per run directory: name, scale, claims, reproduced, not reproduced, informational, headline stem."""
    out = []
    for d in map(pathlib.Path, workdirs):
        res = read_results(d) or {"rows": []}
        info = _info(d)
        counts = count_verdicts(res.get("rows", []))
        head = _headline(d, info["name"], res)
        out.append({"workdir": d.name, **info, "claims": counts["reproduced"] + counts["not reproduced"],
                    "reproduced": counts["reproduced"], "not reproduced": counts["not reproduced"],
                    "informational": counts["informational"], "headline": head.stem if head else None})
    return out


def _section(workdir: pathlib.Path) -> str:
    res = read_results(workdir) or {"rows": []}
    info = _info(workdir)
    secs = info["seconds"]
    parts = [f"<section id='{html.escape(workdir.name)}'><h2>{html.escape(workdir.name)}</h2>",
             f"<div class='small'>experiment <b>{html.escape(info['name'])}</b> · scale {html.escape(str(info['scale']))}"
             f" · workdir {html.escape(str(workdir))}{f' · {secs:.0f} s' if secs else ''}</div>",
             f"<div class='doc'>{html.escape(_doc(info['name']))}</div>"]
    rows = res.get("rows", [])
    if rows:
        parts.append("<table class='rows'><tr><th>quantity</th><th>expected</th><th>measured</th><th>rel. err</th>"
                     "<th>tolerance</th><th>verdict</th><th>source</th><th>why / note</th></tr>")
        for r in rows:
            v = r.get("verdict", "informational")
            why = " · ".join(x for x in (r.get("why", ""), r.get("note", "")) if x)
            parts.append(f"<tr><td>{html.escape(r['quantity'])}</td><td class=num>{_fmt(r['expected'])}</td>"
                         f"<td class=num>{_fmt(r['measured'])}</td><td class=num>{_fmt(r.get('rel_err'))}</td>"
                         f"<td class=num>{html.escape(_tolerance(r))}</td><td class='{v.replace(' ', '-')}'>{v}</td>"
                         f"<td>{html.escape(r['source'])}</td><td>{html.escape(why)}</td></tr>")
        parts.append("</table>")
    figs = sorted(workdir.glob("*.png"))
    if figs:
        parts.append("<div class='figs'>")
        for f in figs:
            parts.append(f"<figure>{_img(f)}<figcaption class='small'>{html.escape(f.stem)} (PDF beside it)"
                         "</figcaption></figure>")
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def write_report(workdirs, out: pathlib.Path) -> pathlib.Path:
    """Writes the page for ``workdirs`` (each with results.json) to ``out``."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdirs = [pathlib.Path(d) for d in workdirs]
    table = summary(workdirs)
    head = ["<table id='summary'><tr><th>experiment</th><th>scale</th><th>claims reproduced</th>"
            "<th>not reproduced</th><th>informational rows</th><th>headline figure</th><th>run time</th></tr>"]
    for s, d in zip(table, workdirs):
        fig = _headline(d, s["name"], read_results(d) or {})
        ok = "reproduced" if s["claims"] and not s["not reproduced"] else ("not-reproduced" if s["claims"] else "")
        head.append(f"<tr><td><a href='#{html.escape(s['workdir'])}'>{html.escape(s['workdir'])}</a></td>"
                    f"<td>{html.escape(str(s['scale']))}</td><td class='num {ok}'>{s['reproduced']} / {s['claims']}</td>"
                    f"<td class=num>{s['not reproduced']}</td><td class=num>{s['informational']}</td>"
                    f"<td>{_img(fig, 'thumb') if fig else '—'}</td>"
                    f"<td class=num>{_fmt(s['seconds'] and round(s['seconds']))}{' s' if s['seconds'] else ''}</td></tr>")
    head.append("</table>")
    total = sum(s["claims"] for s in table)
    rep = sum(s["reproduced"] for s in table)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>ictl report</title><style>{_CSS}</style>"
            f"</head><body><h1>ictl report</h1><p class='small'>written {stamp}. <b>{rep} of {total} claims "
            f"reproduced</b> at the scale that ran. A claim is a row with a tolerance (and the reason for it: MC "
            f"error, bootstrap band, paper precision); its verdict is <i>reproduced</i> when the measured value "
            f"meets the expected one within it. Informational rows make no claim. Sources: theory = closed form or "
            f"solver of ictl.theory, paper = the paper's number, baseline = a classical learner.</p>"
            f"{''.join(head)}{''.join(_section(d) for d in workdirs)}</body></html>")
    out.write_text(page)
    return out
