"""The report is a real page: headless Chromium loads it offline and every figure decodes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)
# Runs after load: counts images that decoded, and whether the claims table made it.
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const claims = [...document.querySelectorAll('h2')].some(h => h.textContent.startsWith('Claims'))
    && document.body.innerText.includes('L1 drives more weights to zero than L2');
  document.body.setAttribute('data-probe', ok + '/' + images.length + '/' + claims);
});</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: `make setup-browser`")
def test_report_renders_in_headless_chromium(study_report, tmp_path):
    index = study_report
    figures = len(list(index.parent.glob("*.png")))
    assert figures >= 6
    probed = tmp_path / "probed.html"
    probed.write_text(index.read_text().replace("</body>", PROBE))
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'data-probe="(\d+)/(\d+)/(\w+)"', out.stdout)
    assert found, out.stderr[-2000:]
    loaded, total, claims = int(found[1]), int(found[2]), found[3]
    assert total == figures and loaded == figures
    assert claims == "true"
