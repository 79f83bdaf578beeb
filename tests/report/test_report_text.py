"""The OOV-against-tokenizer figure and table on a hand-made example, and text studies flowing
through the sweep and the report."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from studylib.config import load_experiments
from studylib.report import figures, write_reports
from studylib.sweep import run_single, run_sweep

REPO = Path(__file__).resolve().parents[2]


def test_oov_figure_and_table_on_a_hand_made_example(tmp_path):
    runs = pd.DataFrame(
        {
            "data.tokenizer": ["word", "char", "bpe", "char", "bpe", "char"],
            "data.vocab_size": [1000, 1000, 2000, 1000, 500, 1000],
            "arch": ["textcnn", "textcnn", "textcnn", "textcnn", "rnn", "rnn"],
            "dataset": ["words"] * 6,
            "vocab_size": [5004, 64, 2000, 62, 500, 64],
            "oov_rate/val": [1.0, 0.01, 0.0, 0.03, 0.0, 0.01],
            "oov_rate/test": [1.0, 0.02, 0.004, 0.04, 0.006, 0.02],
            "test_acc": [0.1, 0.7, 0.8, 0.6, 0.75, 0.68],
        }
    )
    png = tmp_path / "oov.png"
    caption, table = figures.oov_by_tokenizer(runs, png)
    assert matplotlib.image.imread(png).shape[0] > 100
    assert "From 6 finished runs" in caption
    # Finest units first: characters, BPE by vocabulary size, whole words.
    assert [str(t) for t in table["tokenizer"]] == ["char", "char", "bpe 500", "bpe 2000", "word"]
    char_cnn = table[(table["tokenizer"] == "char") & (table["model"] == "textcnn (words)")]
    assert char_cnn["runs"].item() == 2
    assert char_cnn["oov_val"].item() == pytest.approx(0.02)
    assert char_cnn["oov_test"].item() == pytest.approx(0.03)
    assert char_cnn["test_acc"].item() == pytest.approx(0.65)
    word = table[table["tokenizer"] == "word"]
    assert (word["oov_val"].item(), word["oov_test"].item(), word["vocab"].item()) == (1, 1, 5004)


def tiny_text(exp, epochs: int = 2):
    return exp.with_values(
        {
            "data.words_per_language": 150,
            "data.train_examples": 80,
            "train.max_epochs": epochs,
            "sweep.trials": 2,
            "sweep.pruner.enabled": False,
        }
    )


def test_text_studies_sweep_and_report_with_oov_rates(settings, tmp_path):
    members = [tiny_text(exp) for exp in load_experiments(REPO / "experiments" / "text.toml")]
    assert [exp.model.arch for exp in members] == ["textcnn", "rnn", "transformer"]
    for exp in members:
        summary = run_sweep(exp, settings)
        assert summary.trials_done == 2 and summary.best_value is not None, exp.name
    # A single run with whole-word tokens, as `studylib train ... --set data.tokenizer=word`.
    outcome = run_single(members[0].with_values({"data.tokenizer": "word"}), settings)
    assert outcome.status == "completed"

    written = write_reports(settings.tracking_uri, tmp_path / "reports", group="text")
    group_page = tmp_path / "reports" / "group-text" / "report.md"
    assert group_page.parent / "index.html" in written
    markdown = group_page.read_text()
    assert "Out-of-vocabulary rate against tokenizer" in markdown
    assert "Architectures side by side" in markdown
    for arch in ("textcnn", "rnn", "transformer"):
        assert f"{arch} (words)" in markdown
    # The word-token run: every held-out word unknown.
    word_rows = [line for line in markdown.splitlines() if line.startswith("| word ")]
    assert word_rows and "| 1 " in word_rows[0].replace("1.0000", "1")
    html = (group_page.parent / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # families, families-test, oov


def test_an_arch_in_two_studies_gets_a_panel_each(monkeypatch, tmp_path):
    from studylib.report import pages as report

    runs = pd.DataFrame(
        {
            "experiment": ["gru_mnist1d", "gru_mnist1d", "gru_words", "gru_words", "cnn_x"],
            "arch": ["rnn", "rnn", "rnn", "rnn", "cnn"],
            "role": ["trial"] * 5,
            "baseline": [True, False, True, False, True],
            "selected_val_loss": [1.0, 0.5, 2.0, 1.5, 0.7],
            "run_id": ["a", "b", "c", "d", "e"],
            "test_acc": [0.5] * 5,
        }
    )
    seen = {}

    def capture(rows, _curves, _path):
        seen["rows"] = rows
        return ""

    monkeypatch.setattr(report.figures, "family_curves", capture)
    monkeypatch.setattr(report.figures, "family_test_accuracy", lambda *_: "")
    report.families_section(list(runs.groupby(["experiment", "arch"])), None, tmp_path)
    panels = seen["rows"].groupby("arch")["run_id"].apply(set).to_dict()
    assert panels == {"rnn (gru_mnist1d)": {"a", "b"}, "rnn (gru_words)": {"c", "d"}, "cnn": {"e"}}
