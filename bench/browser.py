"""Headless Chromium and `studylib ui` for the browser test and the README's screenshots.

`python -m bench.browser <folder> [--study mlp_mnist1d] [--out docs]` shoots the first screen of
`<folder>/reports/<study>/index.html` and the MLflow runs page that report links to, served by
`studylib ui` over `<folder>/mlflow.db` on a free loopback port, into `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from studylib.names import UI_PORT

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
)
WINDOW = "--window-size=1280,1000"


def chromium(url: str, profile: Path, *extra: str, budget: int = 15000) -> str:
    assert CHROMIUM is not None, "needs Debian's chromium: make setup-browser"
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
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return out.stdout


def dom_showing(url: str, profile: Path, wanted: str, tries: int = 3) -> str:
    """The page's DOM once `wanted` is in it: MLflow's pages fetch their runs after first paint,
    and on a loaded machine the virtual-time budget can end before the table is drawn."""
    dom = ""
    for attempt in range(tries):
        dom = chromium(url, profile, "--dump-dom", budget=25000 * (attempt + 1))
        if wanted in dom:
            break
    return dom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_ui(tracking_uri: str) -> Iterator[int]:
    """`studylib ui` over `tracking_uri` on a free loopback port, stopped afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "studylib", "ui", "--tracking-uri", tracking_uri]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # mlflow server starts workers: stop the whole group
    )
    try:
        first = server.stdout.readline()
        assert first.startswith(f"open http://127.0.0.1:{port}"), first  # the URL comes first
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "studylib ui exited"
                assert time.monotonic() < deadline, "the MLflow UI did not come up in 120 s"
                time.sleep(1)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def screenshots(report: Path, runs_page: str, out: Path, profile: Path, wanted: str) -> None:
    """The report's first screen and the MLflow runs page, once its runs are drawn."""
    out.mkdir(parents=True, exist_ok=True)
    chromium(report.as_uri(), profile, WINDOW, f"--screenshot={out / 'report-first-screen.png'}")
    dom_showing(runs_page, profile, wanted)  # the page's first load can miss its runs
    chromium(
        runs_page, profile, WINDOW, f"--screenshot={out / 'mlflow-experiment.png'}", budget=50000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where make sweep and make report ran")
    parser.add_argument("--study", default="mlp_mnist1d", help="default.toml's study")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    folder = args.folder.resolve()
    report = folder / "reports" / args.study / "index.html"
    with serve_ui(f"sqlite:///{folder / 'mlflow.db'}") as port:
        page = report.read_text()
        runs_page = next(
            link.replace(f"127.0.0.1:{UI_PORT}", f"127.0.0.1:{port}")
            for link in re.findall(r"href=[\"'](http://127\.0\.0\.1:[^\"']+)", page)
            if "searchFilter" in link
        ).replace("&amp;", "&")
        with tempfile.TemporaryDirectory() as profile:
            screenshots(report, runs_page, args.out, Path(profile), "trial 0: baseline")
    print(f"wrote {args.out / 'report-first-screen.png'} and {args.out / 'mlflow-experiment.png'}")


if __name__ == "__main__":
    main()
