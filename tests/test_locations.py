"""Storage and tracking locations: one parser for every command and launcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from studylib.errors import ConfigError
from studylib.locations import (
    file_system_type,
    is_loopback,
    parse_storage,
    parse_tracking_uri,
)


def test_a_journal_path_is_a_local_file():
    location = parse_storage("runs/optuna.journal")
    assert location.kind == "journal" and location.is_file
    assert location.path == Path("runs/optuna.journal")
    assert location.text == location.redacted == "runs/optuna.journal"
    assert location.host is None and location.port is None
    assert not location.reachable_from_other_machines  # /tmp, the work tree: not NFS here


@pytest.mark.parametrize(
    ("text", "path"),
    [("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:////srv/x/mlflow.db", "/srv/x/mlflow.db")],
)
def test_sqlite_paths_are_read_as_sqlalchemy_reads_them(text, path):
    for location in (parse_storage(text), parse_tracking_uri(text)):
        assert location.kind == "sqlite" and location.path == Path(path)
        assert location.text == text


def test_a_database_url_keeps_its_password_out_of_sight():
    text = "postgresql+psycopg://optuna:s3cret@dbhost:5433/studies"
    location = parse_storage(text)
    assert (location.kind, location.host, location.port, location.database) == (
        "postgresql",
        "dbhost",
        5433,
        "studies",
    )
    assert location.text == text  # what the client connects with
    assert location.redacted == "postgresql+psycopg://optuna:***@dbhost:5433/studies"
    assert "s3cret" not in repr(location) and "s3cret" not in str(location)
    assert location.reachable_from_other_machines


@pytest.mark.parametrize(
    ("text", "reachable"),
    [
        ("http://127.0.0.1:5000", False),
        ("http://localhost:5000", False),
        ("http://[::1]:5000", False),
        ("http://127.0.1.1:5000", False),
        ("https://mlflow.example.org", True),
        ("http://10.0.0.5:5000", True),
        ("postgresql://mlflow@dbhost/mlflow", True),
        ("postgresql:///mlflow", False),  # libpq's local socket
    ],
)
def test_servers_on_loopback_are_this_machines_alone(text, reachable):
    assert parse_tracking_uri(text).reachable_from_other_machines is reachable


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.5") and not is_loopback("dbhost")


def test_a_file_on_a_shared_file_system_is_reachable_from_other_machines():
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "nas:/export /data nfs4 rw 0 0\n"
        "tmpfs /data/scratch tmpfs rw 0 0\n"
        "fs:/x /mnt/my\\040share cifs rw 0 0\n"
    )
    assert file_system_type(Path("/data/study/optuna.journal"), mounts) == "nfs4"
    assert file_system_type(Path("/data/scratch/optuna.journal"), mounts) == "tmpfs"
    assert file_system_type(Path("/database/optuna.journal"), mounts) == "ext4"
    assert file_system_type(Path("/mnt/my share/x.journal"), mounts) == "cifs"


BAD_STORAGE = {
    "": "empty",
    "   ": "empty",
    "foo://bar": "unknown scheme 'foo'",
    "://x": "no scheme",
    "sqlite://": "in-memory",
    "sqlite:///:memory:": "in-memory",
    "postgresql://dbhost:port/x": "port is not a number",
    "postgresql://dbhost:99999/x": "port is not a number",
    "postgresql://dbhost": "no database name",
    "mysql:///x": "no host",
    "mssql://h/x": "not an Optuna storage",
    "runs/": "names a folder",
    " optuna.journal": "spaces at its ends",
    "a\nb.journal": "control characters",
    "http://127.0.0.1:5000": "not an Optuna storage",
}


@pytest.mark.parametrize(("text", "why"), list(BAD_STORAGE.items()))
def test_a_bad_storage_is_one_line_naming_flag_value_and_what_is_allowed(text, why):
    with pytest.raises(ConfigError) as caught:
        parse_storage(text)
    message = str(caught.value)
    assert message.startswith(f"--storage = {text!r}: "), message
    assert why in message and "allowed: a journal file path" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("foo://bar", "unknown scheme"),
        ("mlruns", "not a URI"),
        ("", "empty"),
        ("http://", "no host"),
        ("http://:5000", "no host"),
        ("https://h:0x1/", "port"),
    ],
)
def test_a_bad_tracking_uri_is_one_line(text, why):
    with pytest.raises(ConfigError) as caught:
        parse_tracking_uri(text)
    message = str(caught.value)
    assert message.startswith(f"--tracking-uri = {text!r}: ") and why in message, message
    assert "allowed: sqlite:///PATH" in message and "\n" not in message


def test_errors_never_show_a_password():
    with pytest.raises(ConfigError) as caught:
        parse_storage("foo://user:hunter2secret@host/db")
    assert "hunter2secret" not in str(caught.value) and "***" in str(caught.value)


def test_the_flag_can_be_named_by_the_caller():
    with pytest.raises(ConfigError, match=r"^launcher\.storage = 'x://y'"):
        parse_storage("x://y", flag="launcher.storage")
