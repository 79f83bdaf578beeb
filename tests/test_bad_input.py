"""Property-based: any malformed experiment file or --set gives exit 2, one line, no files.

Hypothesis writes files three ways: arbitrary bytes, a valid experiment with one field or
section replaced by a value of another type or range, and a valid experiment with a key that
does not exist. Whatever it finds, `studylib sweep` / `studylib train` must answer with one
line naming the file (exit code 2) before touching anything on disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY as VALID
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from studylib.cli import main
from studylib.config import load_experiment
from studylib.errors import ConfigError

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_key(key: str) -> str:
    return key if BARE_KEY.match(key) else json.dumps(key)


def to_toml(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


def leaf_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in leaf_paths(v, (*prefix, k))] + (
            [prefix] if prefix else []
        )
    return [prefix]


def with_value(doc: dict, path: tuple, value: Any) -> dict:
    doc = json.loads(json.dumps(doc))
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
PATHS = leaf_paths(VALID)


@st.composite
def corrupted(draw) -> str:
    path = draw(st.sampled_from(PATHS))
    if draw(st.booleans()):  # a field (or a whole section) with a value of another kind
        doc = with_value(VALID, path, draw(values))
    else:  # a key nobody defined, next to real ones
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in str(PATHS)))
        parent = path[:-1]
        doc = with_value(VALID, (*parent, key), draw(values))
    return to_toml(doc)


def run_cli(args: list[str], folder: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def assert_refused(content: bytes, extra: list[str] | None = None, command: str = "sweep"):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "exp.toml"
        path.write_bytes(content)
        before = sorted(p.name for p in folder.iterdir())
        code, out, err = run_cli([command, str(path), *(extra or [])], folder)
        after = sorted(p.name for p in folder.iterdir())
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("studylib: error: "), err
    assert str(path) in lines[0] or "--set" in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert after == before  # no database, journal, cache or report


def is_valid(content: bytes, overrides: dict | None = None) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.toml"
        path.write_bytes(content)
        try:
            load_experiment(path, overrides)
        except ConfigError:
            return False
    return True


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_in_one_line(content):
    assume(not is_valid(content))
    assert_refused(content)


@FAST
@given(corrupted())
def test_a_corrupted_experiment_is_refused_in_one_line(text):
    content = text.encode()
    assume(not is_valid(content))
    assert_refused(content)


@FAST
@given(
    st.sampled_from(["train.lr", "model.dropout", "data.num_train", "sweep.trials", "train.x"]),
    st.text(max_size=15),
)
def test_a_bad_set_assignment_is_refused_in_one_line(key, value):
    from studylib.config import parse_assignment

    content = to_toml(VALID).encode()
    try:
        dotted, parsed = parse_assignment(f"{key}={value}")
    except ConfigError:
        dotted = None
    assume(dotted is None or not is_valid(content, {dotted: parsed}))
    assert_refused(content, ["--set", f"{key}={value}"], command="train")


def test_the_generator_starts_from_a_valid_experiment():
    assert is_valid(to_toml(VALID).encode())
    assert len(PATHS) > 30


# ---------------------------------------------------------------------------------------------
# Issue 13: every bad input is refused before anything is written, in a folder that already
# holds a study: exit 2, one line on stderr, no traceback, every file byte-identical after.

STUDY = """name = "study"
seed = 0
[data]
num_train = 600
num_test = 200
val_fraction = 0.25
train_examples = 300
[model]
arch = "mlp"
hidden = [32]
[train]
lr = 3e-3
batch_size = 50
max_epochs = 2
[sweep]
trials = 2
[sweep.pruner]
enabled = false
[sweep.search.dropout]
low = 0.0
high = 0.5
"""
BN_CNN = STUDY.replace('name = "study"', 'name = "bn"').replace(
    'arch = "mlp"\nhidden = [32]', 'arch = "cnn"\nbatch_norm = true\nsize_rule = "floor"'
)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, with its bytes: what "nothing was written" compares."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def working_folder(tmp_path_factory, mlflow_template) -> Path:
    """A folder as a user has it after one small sweep: experiment file, journal, mlflow.db,
    artifacts, data cache."""
    folder = tmp_path_factory.mktemp("working")
    shutil.copyfile(mlflow_template, folder / "mlflow.db")  # its tables take seconds to make
    (folder / "study.toml").write_text(STUDY)
    code, _, err = run_cli(["sweep", "study.toml", "--no-progress", "--device", "cpu"], folder)
    assert code == 0, err
    return folder


def refused(folder: Path, argv: list[str], setup=None) -> str:
    """Run `argv` in a copy of the working folder; assert the refusal; return its one line."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(folder, work, symlinks=True)
        if setup is not None:
            setup(work)
        before = folder_bytes(work)
        code, out, err = run_cli(argv, work)
        after = folder_bytes(work)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("studylib: error: "), err
    assert "Traceback" not in out + err
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"
    return lines[0]


def with_file(text: str):
    return lambda work: (work / "exp.toml").write_text(text)


SWEEP = ["sweep", "exp.toml", "--no-progress", "--device", "cpu"]
# name -> (experiment file, extra flags, what the one line must say)
REFUSALS = {
    # 2. a search range wider than its field
    "search range past its field": (
        STUDY + "[sweep.search.lr]\nlow = 1e-3\nhigh = 100\nlog = true\n",
        [],
        "sweep.search.lr.high = 100.0: train.lr does not accept it",
    ),
    "search range to inf": (
        STUDY + "[sweep.search.lr]\nlow = 1e-3\nhigh = inf\nlog = true\n",
        [],
        "sweep.search.lr.high = inf: Input should be a finite number",
    ),
    # 3. refused after writing: train_examples past the training split
    "train_examples past the split": (
        STUDY.replace("train_examples = 300", "train_examples = 100000"),
        [],
        "data.train_examples = 100000: only 450 training examples remain",
    ),
    # 4. a population of a BatchNorm CNN
    "batch-norm population": (
        BN_CNN,
        ["--population", "2"],
        "population: BatchNorm1d keeps running statistics",
    ),
    # 5. tracebacks where one line belongs
    "seed past the RNGs": (
        STUDY.replace("seed = 0", "seed = 100000000000000000000"),
        [],
        "seed = 100000000000000000000: Input should be less than or equal to 4294967295",
    ),
    "--seed past the RNGs": (
        STUDY,
        ["--seed", "99999999999999999999"],
        "argument --seed: 99999999999999999999: Input should be less than or equal to 4294967295",
    ),
    "negative generation seed": (
        STUDY.replace("[data]", "[data]\ngeneration_seed = -5"),
        [],
        "data.generation_seed = -5: Input should be greater than or equal to 0",
    ),
    "--storage unknown scheme": (STUDY, ["--storage", "foo://bar"], "--storage = 'foo://bar'"),
    "--storage empty": (STUDY, ["--storage", ""], "--storage = '': empty"),
    "--storage in /proc": (
        STUDY,
        ["--storage", "/proc/x.journal"],
        "--storage = /proc/x.journal: cannot write in /proc",
    ),
    "--tracking-uri unknown scheme": (
        STUDY,
        ["--tracking-uri", "foo://bar"],
        "--tracking-uri = 'foo://bar': unknown scheme 'foo'",
    ),
    "--seed making the name too long": (
        STUDY.replace('name = "study"', f'name = "{"n" * 95}"'),
        ["--seed", "7"],
        "--seed = 7: name: String should have at most 100 characters",
    ),
    # 6. accepted though meaningless
    "l1 = inf": (STUDY.replace("[train]", "[train]\nl1 = inf"), [], "train.l1 = inf"),
    "l2 = inf": (STUDY.replace("[train]", "[train]\nl2 = inf"), [], "train.l2 = inf"),
    "min_delta = inf": (
        STUDY.replace("[train]", "[train]\nmin_delta = inf"),
        [],
        "train.min_delta = inf: Input should be a finite number",
    ),
    "num_train = 10**12": (
        STUDY.replace("num_train = 600", "num_train = 1000000000000"),
        [],
        "data.num_train = 1000000000000: generating",
    ),
    "max_epochs = 10**12": (
        STUDY.replace("max_epochs = 2", "max_epochs = 1000000000000"),
        [],
        "train.max_epochs = 1000000000000: Input should be less than or equal to 100000",
    ),
    "a model past this machine's memory": (
        STUDY.replace("hidden = [32]", "hidden = [1000000000, 1000000000]"),
        [],
        "parameters take about",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_each_bad_input_of_issue_13_is_refused_before_anything_is_written(working_folder, name):
    text, flags, said = REFUSALS[name]
    line = refused(working_folder, [*SWEEP, *flags], with_file(text))
    assert said in line, line


def test_train_examples_past_the_split_leaves_no_study_behind(working_folder):
    """Issue 13, 3: the refusal came after the study was created, so the fixed file was then
    refused as "created with other settings". Now nothing exists until the check passes."""
    bad, _, _ = REFUSALS["train_examples past the split"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(working_folder, work)
        (work / "exp.toml").write_text(bad.replace('name = "study"', 'name = "fresh"'))
        assert run_cli(SWEEP, work)[0] == 2
        fixed = STUDY.replace('name = "study"', 'name = "fresh"').replace(
            "trials = 2", "trials = 1"
        )
        (work / "exp.toml").write_text(fixed)
        code, out, err = run_cli(SWEEP, work)
    assert code == 0, err
    assert "study fresh: 1 trials" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_refused(working_folder):
    assert "--device = cuda: no CUDA device" in refused(
        working_folder, [*SWEEP, "--device", "cuda"], with_file(STUDY)
    )


def test_report_into_proc_is_refused(working_folder):
    line = refused(working_folder, ["report", "--out", "/proc/x"])
    assert "--out = /proc/x: cannot write in /proc" in line


def test_a_disk_already_full_is_refused(working_folder, monkeypatch):
    from studylib.sweep import preflight

    full = shutil._ntuple_diskusage(total=10**9, used=10**9, free=4096)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: full)
    line = refused(working_folder, SWEEP, with_file(STUDY))
    assert "the disk holding" in line and "is full (4,096 bytes free)" in line


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` made read-only for this process: by its mode for a user, by a read-only bind
    mount for root (whom modes do not stop); skipped where neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_store_in_a_read_only_folder_is_refused_in_one_line(working_folder, tmp_path):
    work = tmp_path / "ro"
    shutil.copytree(working_folder, work)
    (work / "exp.toml").write_text(STUDY)
    before = folder_bytes(work)
    with read_only(work):
        sweep = run_cli(SWEEP, work)
        report = run_cli(["report", "--out", str(tmp_path / "reports")], work)
    assert folder_bytes(work) == before
    for code, out, err in (sweep, report):
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in out + err
    assert "cannot be read and written here" in sweep[2] or "cannot write in" in sweep[2]
    assert "SQLite writes beside a database to read it" in report[2]


BAD_FLAGS = [
    ["--storage", "foo://bar"],
    ["--storage", ""],
    ["--storage", "/proc/x.journal"],
    ["--tracking-uri", "foo://bar"],
    ["--tracking-uri", "mlruns"],
    ["--seed", "99999999999999999999"],
    ["--seed", "-1"],
    ["--trials", "0"],
    ["--trials", "1e3"],
    ["--heartbeat", "0"],
    ["--heartbeat", "1e30"],
    ["--tracking-timeout", "nan"],
    ["--tracking-timeout", "inf"],
    ["--workers", "999"],
    ["--population", "0"],
    ["--precision", "fp8"],
    ["--bogus"],
]
GOOD_FLAGS = [[], ["--trials", "3"], ["--seed", "3"], ["--heartbeat", "5"]]
# Fields whose bounds a value outside them must trip, and values outside every bound.
BOUNDED = [
    ("train", "l1"),
    ("train", "l2"),
    ("train", "min_delta"),
    ("train", "lr"),
    ("train", "max_epochs"),
    ("train", "patience"),
    ("data", "num_train"),
    ("data", "generation_seed"),
    ("seed",),
    ("sweep", "trials"),
    ("sweep", "search", "l2", "high"),
    ("sweep", "search", "dropout", "high"),
    ("sweep", "search", "patience", "high"),
]
OUT_OF_BOUNDS = [math.inf, -math.inf, math.nan, 10**12, 10**20, -5, 1e300, 2.5]


@st.composite
def malformed(draw) -> tuple[str, str]:
    """A whole experiment with one field out of its bounds (and that field's dotted name), or
    corrupted as above (and the file's name: which field a corruption trips is not known)."""
    if draw(st.booleans()):
        return draw(corrupted()), "exp.toml"
    path = draw(st.sampled_from(BOUNDED))
    value = draw(st.sampled_from(OUT_OF_BOUNDS))
    return to_toml(with_value({**VALID, "name": "study"}, path, value)), ".".join(path)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(malformed(), st.just((STUDY, ""))),
    st.lists(st.sampled_from(BAD_FLAGS + GOOD_FLAGS), max_size=2),
)
def test_cli_main_refuses_malformed_files_and_flags_without_touching_the_folder(
    working_folder, file_and_name, flag_lists
):
    """Hypothesis drives `cli.main` in-process: a malformed file, bad flags, or both, in a
    folder holding a study; every one is refused in one line that names the file's field (or
    the file) or a bad flag, the folder byte-identical."""
    text, named = file_and_name
    flags = [flag for flag_list in flag_lists for flag in flag_list]
    bad_file = not is_valid(text.encode())
    bad_flags = [flag_list[0] for flag_list in flag_lists if flag_list in BAD_FLAGS]
    assume(bad_file or bad_flags)
    line = refused(working_folder, [*SWEEP, *flags], with_file(text))
    # Either may be refused first; the line names what it refused.
    assert any(name in line for name in [*bad_flags, *([named] if bad_file else [])]), line
