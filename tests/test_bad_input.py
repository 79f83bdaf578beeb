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
import tempfile
from pathlib import Path
from typing import Any

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
