"""Done means, in real Chromium: a tiny sweep and ablation, reported; the landing page and
every page it links load with no empty table or section, every image decodes at >= 150 dpi,
every interactive chart draws, the dropout x L2 heatmap's rows are in numeric order with no
negative edge, the arm panels share their x-limits; then, against `studylib ui` started here
on a free loopback port, the report's MLflow links open the runs (not the traces view) with
the named runs and their tags, and the compare view of baseline and best.

`make test-browser` runs it (marker `browser`: about a minute on two cores). With
STUDYLIB_SCREENSHOTS=<folder> it also saves the report's first screen and the MLflow
experiment page there (how docs/*.png were made).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from bench.browser import CHROMIUM, chromium, dom_showing, screenshots, serve_ui
from studylib.names import UI_PORT

pytestmark = pytest.mark.browser

if CHROMIUM is None and os.environ.get("STUDYLIB_REQUIRE_BROWSER"):
    raise RuntimeError(
        "STUDYLIB_REQUIRE_BROWSER is set but chromium is missing: make setup-browser"
    )

# After load (and a moment for plotly): what a reader would see, as JSON on <body>.
PROBE = """<script>window.addEventListener('load', () => setTimeout(() => {
  const dpi = img => {
    const b = atob(img.src.split(',')[1] || ''); const k = b.indexOf('pHYs');
    if (k < 0) return 0;
    const v = ((b.charCodeAt(k + 4) << 24) >>> 0) + (b.charCodeAt(k + 5) << 16)
      + (b.charCodeAt(k + 6) << 8) + b.charCodeAt(k + 7);
    return v * 0.0254;
  };
  const images = [...document.images];
  const charts = [...document.querySelectorAll('.plotly-graph-div')];
  const empty = [];
  for (const h of document.querySelectorAll('h2')) {
    let n = h.nextElementSibling, text = '';
    while (n && n.tagName !== 'H2') { text += n.innerText || n.textContent; n = n.nextElementSibling; }
    if (!text.trim()) empty.push(h.textContent);
  }
  const probe = {
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    dpi: images.map(dpi),
    charts: charts.length,
    drawn: charts.filter(c => c.querySelector('.main-svg')).length,
    emptyTables: [...document.querySelectorAll('table')]
      .filter(t => !t.querySelectorAll('tbody tr').length).length,
    emptySections: empty,
    heatmapRows: [...document.querySelectorAll('figure[data-rows]')]
      .map(f => JSON.parse(f.dataset.rows)),
    xlims: [...document.querySelectorAll('figure[data-xlims]')]
      .map(f => JSON.parse(f.dataset.xlims)),
    links: [...document.links].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  };
  document.body.setAttribute('data-probe', JSON.stringify(probe));
}, 1500));</script></body>"""


def probe(page: Path, tmp: Path, port: int) -> dict:
    """Load a copy of `page` (beside it: its relative links still resolve) with the probe."""
    text = page.read_text().replace(f"127.0.0.1:{UI_PORT}", f"127.0.0.1:{port}")
    probed = page.with_name(f".probed-{page.name}")
    probed.write_text(text.replace("</body>", PROBE))
    try:
        dom = chromium(probed.as_uri(), tmp / "profile", "--dump-dom")
    finally:
        probed.unlink()
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, f"{page}: the probe did not run"
    return json.loads(html.unescape(found[1]))


@pytest.fixture
def served(study_for_browser):
    """`studylib ui` over the study's store, on a free loopback port, stopped afterwards."""
    uri, _ = study_for_browser
    with serve_ui(uri) as port:
        yield port


@pytest.fixture
def study_for_browser(tmp_path, data_cache, mlflow_template):
    from conftest import TINY_ABLATION, local_settings

    from studylib.config import Experiment
    from studylib.report import write_reports
    from studylib.sweep import run_sweep
    from studylib.sweep.ablation import run_ablation

    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    settings = local_settings(tmp_path, data_cache)
    exp = Experiment.model_validate(TINY_ABLATION)
    run_sweep(exp, settings, trials=7)  # the baseline and six more: the heatmap is drawn
    run_ablation(exp, settings)
    written = write_reports(settings.tracking_uri, tmp_path / "reports")
    return settings.tracking_uri, written[0]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: `make setup-browser`")
def test_reports_and_mlflow_ui_in_chromium(study_for_browser, served, tmp_path):
    _, landing = study_for_browser
    port = served
    seen = {landing: probe(landing, tmp_path, port)}
    pages = [
        Path(unquote(urlsplit(link).path))
        for link in seen[landing]["links"]
        if link.startswith("file:") and link.endswith("index.html")
    ]
    assert (landing.parent / "tiny" / "index.html") in pages
    for page in pages:
        seen[page] = probe(page, tmp_path, port)

    mlflow_links = set()
    for page, found in seen.items():
        assert found["emptyTables"] == 0 and found["emptySections"] == [], page
        assert found["decoded"] == found["images"], page
        assert all(dpi >= 150 for dpi in found["dpi"]), (page, found["dpi"])
        assert found["drawn"] == found["charts"], page
        for rows in found["heatmapRows"]:
            assert rows[0] == "off (0)" or not rows[0].startswith("-")
            lows = [float(r.split(" to ")[0]) for r in rows if r != "off (0)"]
            assert lows == sorted(lows) and min(lows) >= 0, rows
        for xlims in found["xlims"]:
            assert len({tuple(x) for x in xlims}) == 1, xlims
        for link in found["links"]:
            target = urlsplit(link)
            if target.scheme == "file" and target.path.endswith(f".probed-{page.name}"):
                assert target.fragment in found["ids"], link  # the contents' anchors
            elif target.scheme == "file":
                assert Path(unquote(target.path)).is_file(), link
            elif f"127.0.0.1:{port}" in link:
                mlflow_links.add(link)
    study = seen[landing.parent / "tiny" / "index.html"]
    assert study["heatmapRows"] and study["xlims"] and study["images"] >= 6
    if _has_plotly():
        assert study["charts"] >= 2  # the sweep scatter and its parallel coordinates

    # The MLflow UI, through the report's own links.
    runs_page = min(  # the sweep's trials (a set has no order: pick it by what it shows)
        link for link in mlflow_links if "searchFilter" in link and "'trial'" in unquote(link)
    )
    # A fresh browser profile per MLflow page, as a newcomer's: the UI keeps view state (the
    # run page's chart layout, the compare view's choices) in the profile's local storage.
    dom = dom_showing(runs_page, tmp_path / "p-runs", "trial 0: baseline (no regularization)")
    assert "trial 0: baseline (no regularization)" in dom  # the runs table, named runs
    assert "No data available" not in dom  # not the traces overview
    run_page = next(
        link for link in study["links"] if re.search(r"/runs/[0-9a-f]{32}/model-metrics\?", link)
    )
    dom = dom_showing(run_page, tmp_path / "p-run", "Add chart")
    # The run page on its model-metrics tab: a section of charts per metric prefix, "train (3)".
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert re.search(r"\btrain \(\d+\)", text) and re.search(r"\bval \(\d+\)", text), text[-2000:]
    assert "trial " in text
    overview = run_page.replace("/model-metrics?", "/overview?")
    dom = dom_showing(overview, tmp_path / "p-overview", "studylib.role")
    assert "studylib.role" in dom  # its tags, one tab away
    # "Compare baseline and best" (two runs), not an arms comparison: the shortest compare link
    # (a set has no order, and picking the first one made this test flaky).
    compare = min((link for link in mlflow_links if "compare-runs" in link), key=len)
    dom = dom_showing(compare, tmp_path / "p-compare", "trial 0: baseline (no regularization)")
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert "trial 0: baseline (no regularization)" in dom, text[-3000:]

    shots = os.environ.get("STUDYLIB_SCREENSHOTS")
    if shots:
        report = landing.parent / "tiny" / "index.html"
        wanted = "trial 0: baseline (no regularization)"
        screenshots(report, runs_page, Path(shots), tmp_path / "p-shots", wanted)


def _has_plotly() -> bool:
    import importlib.util

    return importlib.util.find_spec("plotly") is not None
