"""End to end: a tiny ablation, with one arm tuned, logged to MLflow and resumed."""

from __future__ import annotations

import re

import optuna
from mlflow import MlflowClient

from studylib.config import ARMS, Experiment
from studylib.names import DESIGN_ATTR
from studylib.report import write_report
from studylib.sweep.ablation import (
    ablation_key,
    ablation_steps,
    arm_values,
    legacy_ledger_name,
    open_ledger,
    run_ablation,
    tuning_name,
)
from studylib.sweep.loops import open_storage


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
        "train.monitor": "val_loss",
    }
    assert arm_values("early_stopping_error", strengths) == {
        **base,
        "train.patience": 7,
        "train.early_stopping": True,
        "train.monitor": "val_error",
    }
    every = arm_values("all", strengths)
    assert every["model.dropout"] == 0.3 and every["train.l2"] == 1e-3
    assert every["train.early_stopping"] is True and every["train.patience"] == 7
    assert "train.monitor" not in every  # `all` keeps the experiment's own monitor


def test_ablation_runs_every_arm_per_seed_and_resumes(tiny_ablation, settings):
    summary = run_ablation(tiny_ablation, settings)
    assert summary.runs_done == len(ARMS) * 2 and summary.runs_skipped == 0
    # l2 had no given strength: it was tuned within its [sweep.search] range, never at 0.
    assert 1e-6 <= summary.strengths["l2"]["l2"] <= 1e-2
    # `all` tuned its own l2 (its only untuned knob here), in a tuning study of its own.
    assert 1e-6 <= summary.strengths["all"]["l2"] <= 1e-2
    assert summary.strengths["all"]["dropout"] == 0.3  # given strengths hold for every arm

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
    # Every arm replays (stop_epoch/patience) the patience the early-stopping arm stops with
    # (the ablation's, 1), not the experiment's train.patience (2).
    assert {r.data.params["train.patience"] for r in runs} == {"1"}
    assert by_cell[("baseline", "0")].data.params["train.early_stopping"] == "False"
    assert by_cell[("all", "1")].data.params["train.l2"] == str(summary.strengths["all"]["l2"])
    tunes = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'tune'")
    by_arm = {arm: [r for r in tunes if r.data.tags["studylib.arm"] == arm] for arm in ARMS}
    # tune_trials (2) per knob tuned: l2 alone tunes l2; `all` tunes l2 (the rest is given).
    assert {arm: len(runs) for arm, runs in by_arm.items() if runs} == {"l2": 2, "all": 2}
    # Tuned on its own seed (split, init, batch order), never an evaluation seed, and named.
    assert {r.data.tags["studylib.seed"] for r in tunes} == {"1001"}
    assert {r.data.params["seed"] for r in tunes} == {"1001"}
    (parent,) = client.search_runs([exp.experiment_id], "tags.`studylib.role` = 'ablation'")
    assert parent.data.tags["studylib.tuning_seed"] == "1001"
    stopping = by_cell[("early_stopping_error", "0")].data
    assert stopping.params["train.monitor"] == "val_error"
    assert by_cell[("early_stopping", "0")].data.params["train.monitor"] == "val_loss"
    for run in runs:  # kept-weight statistics, prune-and-evaluate; no test curve unless asked
        assert {"kept_l2_norm", "kept_exact_zeros", "pruned_test_acc/1e-3"} <= set(run.data.metrics)
        assert "test/acc" not in run.data.metrics

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
    # Each figure embedded once or more (a static PNG also sits beside its interactive chart;
    # plotly's inlined script carries a 1x1 PNG of its own, far shorter than any figure).
    figures = set(re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]{2000})", page))
    assert len(figures) == len(pngs)


def test_all_arm_tunes_its_knobs_jointly_without_single_arms(tiny, settings, tmp_path):
    raw = tiny.model_dump()
    raw["sweep"]["trials"] = 0  # ranges only: no Optuna search
    raw["sweep"]["search"]["weight_decay"] = {"low": 1e-3, "high": 1e-1, "log": True}
    raw["ablation"] = {
        "seeds": [3],
        "arms": ["baseline", "all"],
        "tune_trials": 2,
        "strength": {"patience": 2},  # given in advance: patience is never tuned
    }
    raw["reference"] = {"test_acc": 0.5, "source": "a made-up paper"}
    exp = Experiment.model_validate(raw)
    summary = run_ablation(exp, settings)
    assert summary.runs_done == 2
    joint = summary.strengths["all"]
    assert set(joint) == {"dropout", "l1", "l2", "weight_decay", "patience"}
    assert joint["l1"] > 0 and joint["patience"] == 2
    index = write_report(settings.tracking_uri, ["tiny"], tmp_path / "r")
    board = (index.parent / "report.md").read_text().split("## Leaderboard")[1].split("##")[0]
    assert "published test acc" in board and "0.5000" in board


def test_arms_log_a_test_curve_when_asked_and_tuning_runs_do_not(tiny_ablation, settings):
    exp = tiny_ablation.with_values(
        {"ablation.arms": ["baseline", "l2"], "ablation.seeds": [0], "ablation.test_curves": True}
    )
    run_ablation(exp, settings)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    arms = client.search_runs([experiment.experiment_id], "tags.`studylib.role` = 'arm'")
    assert len(arms) == 2
    for run in arms:
        stopped = int(run.data.metrics["stopped_epoch"])
        for key in ("test/loss", "test/acc"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
                range(1, stopped + 1)
            )
        kept = int(run.data.metrics["selected_epoch"])
        at_kept = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test/acc")}
        assert at_kept[kept] == run.data.metrics["test_acc"]
    tunes = client.search_runs([experiment.experiment_id], "tags.`studylib.role` = 'tune'")
    assert tunes and all("test/acc" not in r.data.metrics for r in tunes)


def test_per_arm_budget_gives_every_tuning_arm_the_same_trials(tiny, settings):
    # Issue 15, item 8: the regularized arm against a baseline with the same tuning budget. The
    # early-stopping arm tunes the learning rate only, `all` the learning rate and four
    # strengths; per_arm gives each tune_trials trials (per_knob would give `all` four times
    # as many).
    raw = tiny.model_dump()
    raw["sweep"]["trials"] = 0
    raw["sweep"]["search"]["weight_decay"] = {"low": 1e-3, "high": 1e-1, "log": True}
    raw["ablation"] = {
        "seeds": [3],
        "arms": ["early_stopping", "all"],
        "tune_trials": 2,
        "tune_budget": "per_arm",
        "strength": {"patience": 2},
        "nuisance": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
    }
    exp = Experiment.model_validate(raw)
    run_ablation(exp, settings)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    tunes = client.search_runs([experiment.experiment_id], "tags.`studylib.role` = 'tune'")
    counts = {}
    for r in tunes:
        counts[r.data.tags["studylib.arm"]] = counts.get(r.data.tags["studylib.arm"], 0) + 1
    assert counts == {"early_stopping": 2, "all": 2}


def test_ledgers_have_readable_names_one_per_design_and_old_names_resume(tiny_ablation, settings):
    storage = open_storage(settings)
    first = open_ledger(tiny_ablation, settings, storage)
    assert first.study_name == "tiny.ablation"
    assert first.user_attrs[DESIGN_ATTR] == ablation_key(tiny_ablation)
    assert tuning_name(first.study_name, tiny_ablation, "l2") == "tiny.ablation.l2"
    edited = tiny_ablation.with_values({"ablation.seeds": [0, 1, 2]})
    second = open_ledger(edited, settings, storage)
    assert second.study_name == "tiny.ablation-2"
    assert tuning_name(second.study_name, edited, "l2") == "tiny.ablation-2.l2"
    # Each design finds its own ledger again, its units queued once.
    again = open_ledger(tiny_ablation, settings, storage)
    assert again.study_name == "tiny.ablation"
    assert len(again.trials) == len(ablation_steps(tiny_ablation))
    assert len(open_ledger(edited, settings, storage).trials) == len(ablation_steps(edited))
    assert [s.study_name for s in storage.get_all_studies()] == ["tiny.ablation", "tiny.ablation-2"]

    # A ledger made before names were readable is resumed under its old name.
    old = tiny_ablation.with_values({"name": "old"})
    legacy = legacy_ledger_name(old)
    assert legacy == f"old.ablation.{ablation_key(old)}"
    optuna.create_study(study_name=legacy, storage=storage)
    assert open_ledger(old, settings, storage).study_name == legacy
    assert tuning_name(legacy, old, "l2") == f"old.ablation.l2.{ablation_key(old)}"
