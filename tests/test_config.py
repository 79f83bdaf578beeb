from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from studylib.cli import main
from studylib.config import Experiment, load_experiment, parse_assignment
from studylib.errors import ConfigError

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
    assert (
        "sweep.search.dropout.high = 1.0: model.dropout does not accept it (Input should be "
        "less than 1)" in error_of(write(tmp_path, text))
    )
    text = 'name = "t"\n[sweep.search.momentum]\nlow = 0.1\nhigh = 0.9\n'
    assert "sweep.search" in error_of(write(tmp_path, text))


@pytest.mark.parametrize(
    ("name", "bounds", "said"),
    [
        (
            "lr",
            "low = 1e-3\nhigh = 100\nlog = true",
            "lr.high = 100.0: train.lr does not accept it "
            "(Input should be less than or equal to 10)",
        ),
        ("lr", "low = 1e-3\nhigh = inf", "lr.high = inf: Input should be a finite number"),
        ("l1", "low = -1.0\nhigh = 1e-3", "l1.low = -1.0: train.l1 does not accept it"),
        ("weight_decay", "low = -0.1\nhigh = 1.0", "weight_decay.low = -0.1: train.weight_decay"),
        (
            "patience",
            "low = 1\nhigh = 2.5",
            "patience.high = 2.5: train.patience does not accept it "
            "(Input should be a valid integer, got a number with a fractional part)",
        ),
        ("patience", "low = 0\nhigh = 3", "patience.low = 0.0: train.patience does not accept it"),
        (
            "patience",
            "low = 1\nhigh = 1e9",
            "train.patience does not accept it (Input should be "
            "less than or equal to 100000 (every epoch's figures",
        ),
    ],
)
def test_a_search_range_only_samples_what_its_field_accepts(tmp_path, name, bounds, said):
    """The range check is derived from the target field's own constraints (issue 13: a range
    wider than its field passed validation and crashed the first trial that sampled past it)."""
    message = error_of(write(tmp_path, f'name = "t"\n[sweep.search.{name}]\n{bounds}\n'))
    assert said in message and "\n" not in message


def test_a_nuisance_range_and_a_strength_are_checked_against_their_fields_too(tmp_path):
    text = 'name = "t"\n[ablation]\narms = ["baseline"]\n[ablation.nuisance.lr]\nlow = 1e-3\nhigh = 20\n'
    assert "ablation.nuisance.lr.high = 20.0: train.lr does not accept it" in error_of(
        write(tmp_path, text)
    )
    text = 'name = "t"\n[ablation]\narms = ["l1"]\n[ablation.strength]\nl1 = inf\n'
    assert "ablation.strength.l1 = inf: Input should be a finite number" in error_of(
        write(tmp_path, text)
    )


@pytest.mark.parametrize(
    ("section", "line", "said"),
    [
        ("train", "l1 = inf", "train.l1 = inf: Input should be a finite number"),
        ("train", "l2 = nan", "train.l2 = nan: Input should be a finite number"),
        ("train", "min_delta = inf", "train.min_delta = inf: Input should be a finite number"),
        ("model", "dropout = -inf", "model.dropout = -inf: Input should be a finite number"),
        (
            "train",
            "max_epochs = 1000000000000",
            "train.max_epochs = 1000000000000: Input should "
            "be less than or equal to 100000 (every epoch's figures are kept in memory",
        ),
        (
            "data",
            "generation_seed = -5",
            "data.generation_seed = -5: Input should be greater "
            "than or equal to 0 (numpy's RandomState",
        ),
        (
            "data",
            "generation_seed = 4294967296",
            "Input should be less than or equal to 4294967295",
        ),
        (
            "sweep",
            "trials = 100000000",
            "sweep.trials = 100000000: Input should be less than or "
            "equal to 100000 (every worker replays",
        ),
    ],
)
def test_no_infinite_strength_and_no_size_past_what_the_machine_or_rng_takes(
    tmp_path, section, line, said
):
    message = error_of(write(tmp_path, f'name = "t"\n[{section}]\n{line}\n'))
    assert said in message, message


def test_the_seed_fits_numpys_32_bit_generators(tmp_path):
    message = error_of(write(tmp_path, 'name = "t"\nseed = 100000000000000000000\n'))
    assert (
        "seed = 100000000000000000000: Input should be less than or equal to 4294967295" in message
    )
    assert load_experiment(write(tmp_path, 'name = "t"\nseed = 4294967295\n')).seed == 2**32 - 1


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
    assert f"--out = {blocker / 'reports'}: {blocker} is not a folder" in err
    assert main(["report"]) == 2  # MLflow would have made an empty mlflow.db to read from
    assert "--tracking-uri = sqlite:///mlflow.db: no such database file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_cli_usage_errors_exit_2_in_one_line(capsys):
    assert main(["sweep", "x.toml", "--trials", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "studylib: error: argument --trials: must be >= 1, got 0 (studylib sweep -h)\n"
    assert main(["sweep"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert main(["--help"]) == 0


def test_every_shipped_experiment_file_is_valid():
    from studylib.config import load_experiments

    for path in sorted((REPO / "experiments").glob("*.toml")):
        assert load_experiments(path)  # a group file (all.toml) gives its members


# ---------------------------------------------------------------------------------------------
# The model union: `arch` picks the family; messages keep naming `model.<field>`


def test_arch_picks_the_family_and_defaults_to_mlp(tmp_path):
    assert load_experiment(write(tmp_path, GOOD)).model.arch == "mlp"
    text = 'name = "t"\n[model]\narch = "rnn"\ncell = "lstm"\n'
    exp = load_experiment(write(tmp_path, text))
    assert (exp.model.arch, exp.model.cell) == ("rnn", "lstm")
    assert exp.with_values({"model.dropout": 0.3}).model.dropout == 0.3  # sweeps reach it
    assert exp.flat()["model.cell"] == "lstm"


def test_unknown_arch_lists_the_families(tmp_path):
    message = error_of(write(tmp_path, 'name = "t"\n[model]\narch = "lstm"\n'))
    assert "model.arch = 'lstm'" in message
    for arch in ("mlp", "cnn", "rnn", "transformer"):
        assert f"'{arch}'" in message


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ('arch = "cnn"\ndropout = 1.5', "model.dropout = 1.5", "less than 1"),
        ('arch = "rnn"\ndropout = 1.0', "model.dropout = 1.0", "less than 1"),
        ('arch = "transformer"\nattn_dropout = -0.1', "model.attn_dropout = -0.1", "greater"),
        ('arch = "rnn"\ncell = "elman"', "model.cell = 'elman'", "'rnn', 'lstm' or 'gru'"),
    ],
)
def test_family_field_errors_name_the_field(tmp_path, model, field, words):
    message = error_of(write(tmp_path, f'name = "t"\n[model]\n{model}\n'))
    assert field in message and words in message


def test_unknown_key_in_a_family_or_block_lists_its_fields(tmp_path):
    message = error_of(write(tmp_path, 'name = "t"\n[model]\narch = "rnn"\nhiden = 8\n'))
    assert "model.hiden: unknown key" in message and "bidirectional" in message
    text = 'name = "t"\n[model]\narch = "cnn"\n[[model.blocks]]\nchannels = 4\nkernal = 3\n'
    message = error_of(write(tmp_path, text))
    assert "model.blocks[0].kernal: unknown key" in message
    assert "channels, kernel, stride, padding, pool" in message
    text = 'name = "t"\n[model]\narch = "cnn"\n[[model.blocks]]\ntype = "inception"\n'
    message = error_of(write(tmp_path, text))
    assert "model.blocks[0].type = 'inception'" in message and "'dense'" in message


def test_group_file_loads_every_member_renamed_and_tagged(tmp_path):
    from studylib.config import load_experiments

    (tmp_path / "a.toml").write_text('name = "a"\n[model]\narch = "cnn"\n')
    (tmp_path / "b.toml").write_text('name = "b"\n[model]\narch = "rnn"\n')
    group = tmp_path / "g.toml"
    group.write_text(
        'group = "fam"\nmembers = ["a.toml", "b.toml"]\n[overrides]\n"train.lr" = 0.5\n'
    )
    members = load_experiments(group, {"train.max_epochs": 3})
    assert [(m.name, m.group, m.model.arch) for m in members] == [
        ("fam-a", "fam", "cnn"),
        ("fam-b", "fam", "rnn"),
    ]
    assert all(m.train.lr == 0.5 and m.train.max_epochs == 3 for m in members)
    # A bad member fails the whole group before anything runs, naming the member's file.
    (tmp_path / "b.toml").write_text('name = "b"\n[model]\narch = "rnn"\npatch = 7\n')
    with pytest.raises(ConfigError, match=r"b.toml: .*model.patch = 7"):
        load_experiments(group)
    group.write_text('group = "fam"\nmembers = []\n')
    with pytest.raises(ConfigError, match=r"g.toml: members"):
        load_experiments(group)


def test_model_that_is_not_a_table(tmp_path):
    # Found by hypothesis: the family union has no tag to read from a plain value.
    message = error_of(write(tmp_path, 'name = "t"\nmodel = false\n'))
    assert "model = False: expected a table with `arch`" in message


# ---------------------------------------------------------------------------------------------
# Issue 11: decay per step, the tuning seed, patience given in advance, shipped seeds


def test_weight_decay_is_bounded_by_lr_times_decay(tmp_path):
    # lr 1e-3: a decay of 5 shrinks weights by 0.5 % a step, allowed; lr 0.1 with 10 is not.
    assert load_experiment(write(tmp_path, GOOD + "weight_decay = 5.0\n")).train.weight_decay == 5
    message = error_of(write(tmp_path, GOOD + "lr = 0.1\nweight_decay = 10.0\n"))
    assert "weight_decay = 10 with lr = 0.1: lr * weight_decay = 1" in message
    assert "allowed: below 1" in message
    text = GOOD + "[sweep.search.weight_decay]\nlow = 1e-2\nhigh = 2000.0\nlog = true\n"
    message = error_of(write(tmp_path, text))
    assert "sweep.search.weight_decay.high = 2000 with train.lr = 0.001" in message
    text = GOOD + "[ablation]\narms = ['weight_decay']\n[ablation.strength]\nweight_decay = 999.0\n"
    text += "[ablation.nuisance.lr]\nlow = 1e-4\nhigh = 2e-3\n"
    message = error_of(write(tmp_path, text))
    assert "ablation.strength.weight_decay = 999 with ablation.nuisance.lr.high" in message


def test_tuning_seed_is_never_an_evaluation_seed(tmp_path):
    base = GOOD + "[ablation]\narms = ['baseline']\nseeds = [0, 1, 2, 3, 4]\n"
    assert load_experiment(write(tmp_path, base)).ablation.tuning_seed_used == 1004
    exp = load_experiment(write(tmp_path, base + "tuning_seed = 77\n"))
    assert exp.ablation.tuning_seed_used == 77
    message = error_of(write(tmp_path, base + "tuning_seed = 3\n"))
    assert "ablation: tuning_seed = 3 is also an evaluation seed" in message


def test_patience_in_an_ablation_is_given_not_tuned(tmp_path):
    text = GOOD + "[sweep.search.patience]\nlow = 3\nhigh = 30\n[ablation]\n"
    text += "arms = ['baseline', 'early_stopping']\n"
    message = error_of(write(tmp_path, text))
    assert "ablation.strength.patience is not given (arm 'early_stopping')" in message
    assert "never tuned" in message
    exp = load_experiment(write(tmp_path, text + "[ablation.strength]\npatience = 10\n"))
    assert exp.ablation.strength.patience == 10


def test_shipped_ablations_evaluate_on_five_seeds_or_more():
    from studylib.config import load_experiments

    found = 0
    for path in sorted((REPO / "experiments").rglob("*.toml")):
        for exp in load_experiments(path):
            if exp.ablation is not None:
                found += 1
                assert len(exp.ablation.seeds) >= 5, exp.name
                assert exp.ablation.tuning_seed_used not in exp.ablation.seeds
    assert found >= 7  # default, depth (2), paper (4)
