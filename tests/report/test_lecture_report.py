"""Issue 15, end to end: the shipped memorization, L2-against-decay, MC-dropout and learning-curve
designs, shrunk to two epochs and two seeds, run as ablations and report their sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from studylib.config import Experiment, load_experiment, load_experiments
from studylib.report import write_reports
from studylib.sweep.ablation import run_ablation

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "data.num_train": 600,
    "data.num_test": 200,
    "train.max_epochs": 2,
    "ablation.seeds": [0, 1],
    "model.hidden": [16],
}


def tiny(exp: Experiment, **values) -> Experiment:
    return exp.with_values({**TINY, "data.train_examples": 60, **values})


@pytest.mark.slow  # 56 tiny runs: 185 s at load 12 on the 2-core machine
def test_new_designs_run_and_report_their_verdicts(settings, tmp_path):
    for name in ("memorization", "l2_vs_decay", "mc_dropout"):
        run_ablation(tiny(load_experiment(REPO / "experiments" / f"{name}.toml")), settings)
    # Two sizes x two noise levels of the learning curve, one tuning trial per knob.
    members = load_experiments(REPO / "experiments" / "learning_curve.toml")
    for exp in members:
        size, noise = exp.data.train_examples, exp.data.label_noise
        if size in (250, 1000) and noise in (0.0, 0.4):
            shrunk = tiny(exp, **{"data.train_examples": size // 10, "ablation.tune_trials": 1})
            run_ablation(shrunk, settings)

    written = write_reports(settings.tracking_uri, tmp_path / "reports")
    landing, *studies = written  # the landing page links the study and group pages
    assert landing == tmp_path / "reports" / "index.html"
    pages = {p.parent.name: (p.parent / "report.md").read_text() for p in studies}
    memorization = pages["memorization"]
    assert "memorization of random labels" in memorization
    assert "Without regularization the MLP fits random labels" in memorization
    assert "epochs to train acc 0.95" in memorization
    assert "the L2 penalty against weight decay under Adam" in pages["l2_vs_decay"]
    ensemble = pages["mc_dropout"]
    assert "dropout as an ensemble" in ensemble and "mean of 100 dropout passes" in ensemble
    group = pages["group-learning_curve"]
    assert "overfitting against data and noise" in group
    assert "The generalization gap shrinks as the training set grows" in group
    for page in (memorization, ensemble, group):
        # Two seeds each: every verdict is computed, none is missing for want of runs.
        section = page.split("Design: 2 evaluation seeds, paired by seed")[1]
        assert "not measured" not in section.split("\n## ")[0]
