"""The report in a real browser: headless Chromium renders it and a script on the page checks that
every experiment's section, results table and figures are there and every image decoded.

Needs Debian's `chromium` (`.ci/run` installs it when missing). The page is copied with a checking
script appended; `chromium --headless --dump-dom` prints the DOM after the load event, and the
script's verdict is read from it. A deliberately broken image must be caught.
"""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from ictl.report import summary, write_report
from ictl.results import new_figure, row, save_figure, write_results

CHECK_JS = """
<script>
window.addEventListener('load', () => {
  const sections = [...document.querySelectorAll('section')].map(s => ({
    id: s.id, tables: s.querySelectorAll('table.rows').length,
    images: s.querySelectorAll('.figs img').length,
    broken: [...s.querySelectorAll('img')].filter(i => !(i.complete && i.naturalWidth > 0)).length}));
  const thumbs = [...document.querySelectorAll('#summary img')];
  const out = {sections, summary_rows: document.querySelectorAll('#summary tr').length - 1,
               thumbs: thumbs.length, broken_thumbs: thumbs.filter(i => !(i.complete && i.naturalWidth > 0)).length};
  const pre = document.createElement('pre'); pre.id = 'ictl-check';
  pre.textContent = 'ICTL' + JSON.stringify(out) + 'ICTL'; document.body.appendChild(pre);
});
</script>
"""


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is needed for the browser test (.ci/run installs it: apt-get install chromium)"
    return exe


def render_and_check(page, tmp_path) -> dict:
    """Loads ``page`` (HTML file) in headless Chromium with the checking script; returns its findings."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_JS + "</body>"))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"ICTL(\{.*?\})ICTL", out.stdout)
    assert m, f"no check output from chromium (exit {out.returncode}): {out.stderr[-1500:]}"
    return json.loads(m.group(1))


def _fake_run(root, name, n_figs, verdicts):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"experiment": name, "config": {"scale": "quick"}}))
    (d / "run.json").write_text(json.dumps({"status": "done", "seconds": 3.0}))
    for i in range(n_figs):
        fig, ax = new_figure()
        ax[0, 0].plot(np.arange(5), np.arange(5) ** (i + 1))
        save_figure(fig, d, name if i == 0 else f"{name}_{i}")
    rows = [row(f"q{i}", 1.0, m, "theory", tol=0.1, why="test") for i, m in enumerate(verdicts)]
    rows.append(row("info", 1.0, 2.0, "baseline"))
    write_results(d, rows)
    return d


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICTL_DRAFT_FIGURES", "0")     # the figures a run writes, not the suite's drafts
        dirs = [_fake_run(root, "exp_a", 2, [1.0, 1.05]), _fake_run(root, "exp_b", 1, [1.0, 3.0, 0.95])]
    return write_report(dirs, root / "report.html"), dirs


def test_draft_figures_are_the_same_files_at_low_resolution(tmp_path, monkeypatch):
    """ICTL_DRAFT_FIGURES=1 (tests/conftest.py) writes the same PNG and PDF, the PNG at 20 dpi: a
    4.6 × 3.4 in figure is 92 × 68 pixels; a run's figure (130 dpi, tight box) is several times wider."""
    import matplotlib.image

    widths = {}
    for draft in ("1", "0"):
        monkeypatch.setenv("ICTL_DRAFT_FIGURES", draft)
        fig, ax = new_figure()
        ax[0, 0].plot(np.arange(5), np.arange(5))
        (tmp_path / draft).mkdir()
        png, pdf = save_figure(fig, tmp_path / draft, "f")
        assert png.name == "f.png" and pdf.name == "f.pdf" and pdf.read_bytes().startswith(b"%PDF")
        widths[draft] = matplotlib.image.imread(png).shape[:2]
    assert widths["1"] == (68, 92) and widths["0"][1] > 400


def test_summary_counts_equal_the_rows_verdicts(report):
    _, dirs = report
    s = {x["workdir"]: x for x in summary(dirs)}
    assert (s["exp_a"]["reproduced"], s["exp_a"]["claims"], s["exp_a"]["informational"]) == (2, 2, 1)
    assert (s["exp_b"]["reproduced"], s["exp_b"]["not reproduced"], s["exp_b"]["claims"]) == (2, 1, 3)
    assert s["exp_a"]["headline"] == "exp_a" and s["exp_b"]["scale"] == "quick"
    page = report[0].read_text()
    assert "4 of 5 claims reproduced" in page and page.count("class='not-reproduced'>not reproduced") == 1


def test_every_section_table_and_figure_renders(report, tmp_path):
    found = render_and_check(report[0], tmp_path)
    assert [s["id"] for s in found["sections"]] == ["exp_a", "exp_b"]
    assert [(s["tables"], s["images"], s["broken"]) for s in found["sections"]] == [(1, 2, 0), (1, 1, 0)]
    assert (found["summary_rows"], found["thumbs"], found["broken_thumbs"]) == (2, 2, 0)


def test_a_broken_image_is_caught(report, tmp_path):
    page = tmp_path / "broken.html"
    text = report[0].read_text()
    i = text.index("data:image/png;base64,", text.index("<section")) + len("data:image/png;base64,")
    page.write_text(text[:i] + "AAAA" + text[i + 4:])  # corrupt the PNG header of the first section figure
    found = render_and_check(page, tmp_path)
    assert found["sections"][0]["broken"] == 1 and found["sections"][1]["broken"] == 0
