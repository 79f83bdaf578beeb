"""The report is a real page: headless Chromium loads it offline and every figure decodes."""

from __future__ import annotations

import re

import pytest

from bench.browser import CHROMIUM, chromium

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
    dom = chromium(probed.as_uri(), tmp_path / "profile", "--dump-dom", budget=10000)
    found = re.search(r'data-probe="(\d+)/(\d+)/(\w+)"', dom)
    assert found, dom[-2000:]
    loaded, total, claims = int(found[1]), int(found[2]), found[3]
    assert total == figures and loaded == figures
    assert claims == "true"
