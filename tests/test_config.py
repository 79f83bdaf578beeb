from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from studylib.cli import main
from studylib.config import ConfigError, Experiment, load_experiment, parse_assignment

REPO = Path(__file__).resolve().parents[1]
GOOD = """
name = "t"
[model]
hidden = [8]
[train]
max_epochs = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_experiment(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_good_file_loads_with_defaults(tmp_path):
    exp = load_experiment(write(tmp_path, GOOD))
    assert exp.model.hidden == (8,)
    assert exp.train.max_epochs == 1
    assert exp.data.num_train == 4000 and exp.data.length == 40
    with pytest.raises(ValidationError):  # frozen: code below the edge cannot change a config
        exp.train.lr = 1.0  # type: ignore[misc]


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my_study.toml"
    path.write_text("[train]\nmax_epochs = 2\n")
    assert load_experiment(path).name == "my_study"


def test_unknown_key_names_field_and_allowed_keys(tmp_path):
    message = error_of(write(tmp_path, GOOD + "droput = 0.5\n"))
    assert "train.droput" in message and "unknown key" in message
    assert "patience" in message  # the allowed keys are listed


def test_wrong_type(tmp_path):
    message = error_of(write(tmp_path, GOOD.replace("max_epochs = 1", 'max_epochs = "ten"')))
    assert "train.max_epochs" in message and "'ten'" in message and "integer" in message


@pytest.mark.parametrize(
    ("section", "line", "field", "bound"),
    [
        ("model", "dropout = 1.0", "model.dropout", "less than 1"),
        ("model", "dropout = 1.5", "model.dropout", "less than 1"),
        ("train", "l1 = -0.1", "train.l1", "greater than or equal to 0"),
        ("train", "l2 = -0.0001", "train.l2", "greater than or equal to 0"),
        ("train", "patience = 0", "train.patience", "greater than or equal to 1"),
        ("train", "optimizer = 'rmsprop'", "train.optimizer", "'sgd', 'adam' or 'adamw'"),
        ("data", "label_noise = 1.0", "data.label_noise", "less than 1"),
    ],
)
def test_out_of_range_names_field_value_and_range(tmp_path, section, line, field, bound):
    text = f'name = "t"\n[{section}]\n{line}\n'
    message = error_of(write(tmp_path, text))
    assert field in message
    assert line.split("= ")[1].strip("'") in message  # the offending value
    assert bound in message


def test_search_range_checks(tmp_path):
    base = 'name = "t"\n[sweep.search.l1]\n'
    assert "below high" in error_of(write(tmp_path, base + "low = 1e-3\nhigh = 1e-5\n"))
    assert "log=true needs low > 0" in error_of(
        write(tmp_path, base + "low = 0.0\nhigh = 1e-3\nlog = true\n")
    )
    text = 'name = "t"\n[sweep.search.dropout]\nlow = 0.1\nhigh = 1.0\n'
    assert "search.dropout.high must be below 1" in error_of(write(tmp_path, text))
    text = 'name = "t"\n[sweep.search.momentum]\nlow = 0.1\nhigh = 0.9\n'
    assert "sweep.search" in error_of(write(tmp_path, text))


def test_missing_and_malformed_files(tmp_path):
    assert "file not found" in error_of(tmp_path / "nope.toml")
    assert "invalid TOML" in error_of(write(tmp_path, "name = \n"))


def test_overrides_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    assert load_experiment(path, {"train.lr": 0.01}).train.lr == 0.01
    assert "model.dropout" in error_of(path, {"model.dropout": 2.0})
    assert parse_assignment("model.hidden=[64, 32]") == ("model.hidden", [64, 32])
    assert parse_assignment("train.optimizer=sgd") == ("train.optimizer", "sgd")
    with pytest.raises(ConfigError):
        parse_assignment("no-equals-sign")


def test_flat_params_cover_every_field():
    flat = Experiment(name="x").flat()
    assert flat["model.hidden"] == "[256, 256]"
    assert flat["train.l1"] == "0.0"
    assert flat["data.train_examples"] == "None"
    assert flat["sweep.search"] == "{}"
    assert all(isinstance(v, str) for v in flat.values())


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, 'name = "t"\n[train]\npatience = 0\n')
    before = set(os.listdir(tmp_path))
    assert main(["sweep", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.patience = 0" in err[0]
    assert set(os.listdir(tmp_path)) == before  # no mlflow.db, no journal, no cache


def test_cli_missing_file_and_unwritable_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "missing.toml"]) == 2
    assert "missing.toml: file not found" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["report", "--out", str(blocker / "reports")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not writable" in err


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["sweep", "x.toml", "--trials", "0"])
    assert exited.value.code == 2


def test_every_shipped_experiment_file_is_valid():
    for path in sorted((REPO / "experiments").glob("*.toml")):
        load_experiment(path)
