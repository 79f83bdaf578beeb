"""Passwords in URLs: masked in text, in log records, and in whatever the CLI prints."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from studylib import redact as redact_module
from studylib.cli import build_parser, main
from studylib.redact import install_log_filter, redact, remember


@pytest.fixture(autouse=True)
def forget(monkeypatch):
    monkeypatch.setattr(redact_module, "_known", set())


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://bob:pw123@db:5432/optuna", "postgresql://bob:***@db:5432/optuna"),
        ("postgresql+psycopg://bob:a/b:c@db/x", "postgresql+psycopg://bob:***@db/x"),
        ("http://u:p%40ss@127.0.0.1:5000", "http://u:***@127.0.0.1:5000"),
        (
            "API request to http://u:secret@h:5000/api/2.0/x failed",
            "API request to http://u:***@h:5000/api/2.0/x failed",
        ),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("postgresql://bob@db/optuna", "postgresql://bob@db/optuna"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ],
)
def test_urls_lose_their_passwords(text, shown):
    assert redact(text) == shown


def test_remembered_passwords_are_masked_anywhere():
    remember("postgresql://bob:hunter2%21@db/optuna", "optuna.journal", "sqlite:///mlflow.db")
    assert redact("auth failed for password hunter2! (hunter2%21)") == (
        "auth failed for password *** (***)"
    )


def test_log_records_are_redacted(caplog):
    remember("postgresql://bob:topsecret@db/optuna")
    install_log_filter()
    install_log_filter()  # idempotent
    logger = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        logger.info("connecting to %s", "postgresql://bob:topsecret@db/optuna")
        try:
            raise RuntimeError("bad password topsecret")
        except RuntimeError:
            logger.exception("failed")
    assert "topsecret" not in caplog.text
    assert "postgresql://bob:***@db/optuna" in caplog.text
    assert "bad password ***" in caplog.text


def test_unreachable_storage_error_hides_the_password(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "e.toml"
    exp.write_text('name = "e"\n[train]\nmax_epochs = 1\n')
    code = main(
        [
            "sweep",
            str(exp),
            "--no-progress",
            "--storage",
            "postgresql://postgres:Sup3rSecret@127.0.0.1:1/nothing",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "Sup3rSecret" not in err
    assert "OperationalError" in err  # the cause is still told


def test_ui_binds_loopback_unless_asked(monkeypatch, capsys):
    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"
    launched = []
    monkeypatch.setattr("os.execv", lambda exe, argv: launched.append(argv))
    main(["ui"])
    assert launched[0][launched[0].index("--host") + 1] == "127.0.0.1"


def torch_loads(source: str, where: str) -> list[tuple[str, int, bool]]:
    """(file, line, passes weights_only=True) for each torch.load call in `source`."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            flags = {k.arg: k.value for k in node.keywords}
            safe = isinstance(flags.get("weights_only"), ast.Constant) and (
                flags["weights_only"].value is True
            )
            calls.append((where, node.lineno, safe))
    return calls


def test_every_torch_load_in_studylib_is_weights_only():
    assert torch_loads("torch.load(p)\ntorch.load(p, weights_only=True)", "x") == [
        ("x", 1, False),
        ("x", 2, True),
    ]
    calls = [
        call
        for path in sorted((Path(__file__).parents[1] / "studylib").rglob("*.py"))
        for call in torch_loads(path.read_text(), str(path))
    ]
    assert calls, "the checkpoint loader was not found"
    assert all(safe for _, _, safe in calls), [c for c in calls if not c[2]]


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_checkpoints_round_trip_and_pickled_code_is_refused(settings):
    import pickle

    import torch

    from studylib.tracking import Tracker

    tracker = Tracker(settings.tracking_uri, "ckpt", settings.artifact_root)
    run = tracker.start_run("r", tags={})
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    run.log_state_dict(weights)
    loaded = tracker.load_state_dict(run.run_id)
    assert torch.equal(loaded["w"], weights["w"])

    evil = tracker.start_run("evil", tags={})
    run_dir = settings.artifact_root / "evil.pt"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": Payload()}, run_dir)
    tracker.client.log_artifact(evil.run_id, str(run_dir))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        tracker.load_state_dict(evil.run_id, "evil.pt")
