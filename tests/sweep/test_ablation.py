"""End to end: a tiny ablation, with one arm tuned, logged to MLflow and resumed."""

from __future__ import annotations

import re

from mlflow import MlflowClient

from studylib.config import ARMS, Experiment
from studylib.report import write_report
from studylib.sweep.ablation import arm_values, run_ablation


def test_arm_values_switch_on_one_regularizer_at_a_time():
    strengths = {"dropout": 0.3, "l1": 1e-4, "l2": 1e-3, "weight_decay": 0.05, "patience": 7}
    base = arm_values("baseline", strengths)
    assert base == {
        "model.dropout": 0.0,
        "train.l1": 0.0,
        "train.l2": 0.0,
        "train.weight_decay": 0.0,
        "train.early_stopping": False,
    }
    assert arm_values("l1", strengths) == {**base, "train.l1": 1e-4}
    assert arm_values("early_stopping", strengths) == {
        **base,
        "train.patience": 7,
        "train.early_stopping": True,
    }
    every = arm_values("all", strengths)
    assert every["model.dropout"] == 0.3 and every["train.l2"] == 1e-3
    assert every["train.early_stopping"] is True and every["train.patience"] == 7


def test_ablation_runs_every_arm_per_seed_and_resumes(tiny_ablation, settings):
    summary = run_ablation(tiny_ablation, settings)
    assert summary.runs_done == len(ARMS) * 2 and summary.runs_skipped == 0
    # l2 had no given strength: it was tuned within its [sweep.search] range, never at 0.
    assert 1e-6 <= summary.strengths["l2"] <= 1e-2

    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'arm'")
    cells = {(r.data.tags["studylib.arm"], r.data.tags["studylib.ablation_seed"]) for r in runs}
    assert cells == {(arm, seed) for arm in ARMS for seed in ("0", "1")}
    by_cell = {
        (r.data.tags["studylib.arm"], r.data.tags["studylib.ablation_seed"]): r for r in runs
    }
    l1 = by_cell[("l1", "0")].data.params
    assert (l1["train.l1"], l1["train.l2"], l1["model.dropout"]) == ("0.001", "0.0", "0.0")
    assert l1["train.early_stopping"] == "False" and l1["seed"] == "0"
    assert by_cell[("early_stopping", "1")].data.params["train.early_stopping"] == "True"
    assert by_cell[("all", "1")].data.params["train.l2"] == str(summary.strengths["l2"])
    tunes = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'tune'")
    assert {r.data.tags["studylib.arm"] for r in tunes} == {"l2"} and len(tunes) == 2

    again = run_ablation(tiny_ablation, settings)
    assert again.runs_done == 0 and again.runs_skipped == len(ARMS) * 2
    assert again.strengths == summary.strengths  # the tuning study resumed, not rerun


def test_ablation_report_has_claims_curves_and_intervals(study_report):
    index = study_report
    folder = index.parent
    pngs = {p.name for p in folder.glob("*.png")}
    assert {"tiny-mlp-arms.png", "tiny-mlp-gap.png", "tiny-mlp-weights.png"} <= pngs
    markdown = (folder / "report.md").read_text()
    assert "## Claims of the lecture notes, checked" in markdown
    claim_rows = [line for line in markdown.splitlines() if "L1 drives more weights" in line]
    assert len(claim_rows) == 1
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", claim_rows[0])[1:-1]]
    assert cells[:2] == ["tiny", "mlp"]
    assert cells[2] == "L1 drives more weights to zero than L2"
    assert cells[12] in {"supported", "contradicted", "inconclusive"}  # the verdict column
    assert "## Leaderboard: test accuracy" in markdown and "ablation" in markdown
    assert "## Architectures side by side" not in markdown  # one architecture only
    assert "tiny / mlp: sweep" in markdown and "tiny / mlp: ablation over seeds" in markdown
    page = index.read_text()
    assert page.count("data:image/png;base64,") == len(pngs)


def test_all_arm_tunes_its_knobs_jointly_without_single_arms(tiny, settings, tmp_path):
    raw = tiny.model_dump()
    raw["sweep"]["trials"] = 0  # ranges only: no Optuna search
    raw["sweep"]["search"]["weight_decay"] = {"low": 1e-3, "high": 1e-1, "log": True}
    raw["ablation"] = {"seeds": [3], "arms": ["baseline", "all"], "tune_trials": 2}
    raw["reference"] = {"test_acc": 0.5, "source": "a made-up paper"}
    exp = Experiment.model_validate(raw)
    summary = run_ablation(exp, settings)
    assert summary.runs_done == 2
    assert set(summary.strengths) == {"dropout", "l1", "l2", "weight_decay", "patience"}
    assert summary.strengths["l1"] > 0 and 1 <= summary.strengths["patience"] <= 3
    index = write_report(settings.tracking_uri, ["tiny"], tmp_path / "r")
    board = (index.parent / "report.md").read_text().split("## Leaderboard")[1].split("##")[0]
    assert "published test acc" in board and "0.5000" in board
