"""End to end: a tiny sweep and ablation (trained for real, conftest's `study_report`) through
write_report: the summary on top, a claim per arm with test loss beside test accuracy, the
design's power stated before the tables, and every verdict one of the four words."""

from __future__ import annotations

import re

from studylib.config import ARMS

VERDICTS = {"supported", "contradicted", "inconclusive", "not measured"}


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_study_report_summary_and_claims(study_report):
    markdown = (study_report.parent / "report.md").read_text()
    titles = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert titles[0] == "## tiny / mlp: summary"
    # The answer leads the page, above every section: the sentence, then its figure.
    lead = markdown.split(titles[0])[0].split("\n\n")
    assert lead[1].startswith("**Over 2 paired seeds (Holm-adjusted paired t-tests")
    assert lead[2] == "![tiny-mlp-summary.png](tiny-mlp-summary.png)"
    strengths = next(p for p in lead if p.startswith("Strengths used: "))
    assert strengths.startswith("Strengths used: dropout: dropout=0.3 (given)")
    assert strengths.count("patience=1 (given)") == 3  # both stopping arms, and all once
    # TINY_ABLATION has two seeds: the report says what that can detect, and warns up front.
    assert any(p.startswith("Warning: Only 2 evaluation seeds") for p in lead)
    claims = markdown.split("## Claims of the lecture notes, checked")[1].split("\n## ")[0]
    power = claims.index("tiny / mlp: Design: 2 evaluation seeds")
    first_table = claims.index("| study | arch | claim |")
    assert power < first_table  # stated before any result
    assert "test accuracy (m = 7): d_z >= 80.8" in claims  # n = 2, alpha / 7 (seven arms)
    per_arm = {}
    for line in claims.splitlines():
        row = cells(line)
        if len(row) > 3 and row[2].endswith("test accuracy over the baseline"):
            per_arm[row[2]] = row
    assert len(per_arm) == len(ARMS) - 1
    for row in per_arm.values():
        assert row[3] == "2"  # n
        assert row[9] in VERDICTS and row[13] in VERDICTS  # accuracy, and loss beside it
        assert row[5].startswith(("+", "-"))  # the mean paired difference
    # No per-epoch test curves in this tiny study: regret is not measured, and says why.
    regret = next(line for line in claims.splitlines() if "keeps an epoch as good as" in line)
    assert "not measured" in regret and "per-epoch test curve" in regret
