"""Report: takes what MLflow holds (runs and their full histories), gives reports/<study>/
(index.html, report.md, figures) whose claims table checks the lecture notes against the runs.

results.py reads runs and curves into DataFrames (also for a notebook); stats.py intervals,
paired t-tests, Holm's adjustment and power; claims.py the verdicts (one design, declared
families); contrasts.py the claims that compare a group's members, paired by seed, and
group_figures.py their figures; summary.py what a study found, for the top of its report; figures.py one PNG per
function; pages.py the sections and pages, render.py draws them (HTML, Markdown). Everything comes from the tracking store, never from a sweep's memory.
"""

from __future__ import annotations

from studylib.report.pages import write_report, write_reports
from studylib.report.results import load_curves, load_runs

__all__ = ["load_curves", "load_runs", "write_report", "write_reports"]
