"""Before anything is written: every check a command can make from its input, in one place.

A sweep that starts, creates its Optuna study, claims a trial and only then finds that a
learning rate, a data size, the device or a population cannot work leaves a study behind (or
worse, marks trials failed). So every command first runs its checks here and each problem is
one `ConfigError` line (exit code 2) while the working folder is still exactly as it was:

- where results go: `--storage` and `--tracking-uri` parsed (studylib.locations), the folders
  of files written into (journal, SQLite database, artifacts, data cache) writable and not
  full, an existing store readable and writable;
- the device (`--device cuda` on a machine without CUDA);
- the data: the validation carve and `data.train_examples` against the pool the config
  describes, and the memory making the data set takes against this machine's;
- the model: its parameters (counted on torch's "meta" device, nothing allocated) against the
  memory of the device it trains on;
- `--workers` and `--population`: the storage, the cores, and a dry run of a population's
  batched model on two examples of the right shape (vmap, BatchNorm).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from studylib.config import Experiment, Settings
from studylib.data import Splits, check_data, data_bytes
from studylib.data.mnist1d import GENERATION_BYTES_PER_VALUE
from studylib.errors import ConfigError
from studylib.locations import Location, parse_storage, parse_tracking_uri
from studylib.models import build_model
from studylib.sweep.workers import check_workers
from studylib.train import resolve_device
from studylib.train.population import Population, check_population_search

# A study records into its journal, MLflow's database, the artifacts and the data cache: a file
# system with less than this free is full for our purposes (the default study writes ~40 MB).
MIN_FREE_BYTES = 64 * 2**20
# Memory a parameter takes in training: the weight, its gradient, Adam's two moments and the
# early-stopping copy of the best weights, float32 each.
BYTES_PER_PARAMETER = 5 * 4
NUM_CLASSES_BOUND = 10  # MNIST-1D and digits; text models are not sized here (see model_bytes)


def check_sweep(
    exps: list[Experiment],
    settings: Settings,
    workers: int = 1,
    population: int = 1,
    source: str | Path | None = None,
) -> None:
    """Everything `studylib sweep` can check before it opens a store. `source`: the file the
    experiments come from, named in their errors."""
    check_locations(settings, storage=True)
    if workers > 1:
        check_workers(workers, parse_storage(settings.storage))
    device = resolve_device(settings.device)
    for exp in exps:
        check_experiment(exp, settings, device, population, source)


def check_train(
    exps: list[Experiment], settings: Settings, source: str | Path | None = None
) -> None:
    """Everything `studylib train` can check before it opens the tracking store."""
    check_locations(settings, storage=False)
    device = resolve_device(settings.device)
    for exp in exps:
        check_experiment(exp, settings, device, 1, source)


def check_experiment(
    exp: Experiment,
    settings: Settings,
    device: torch.device,
    population: int = 1,
    source: str | Path | None = None,
) -> None:
    """The data it carves, the memory it needs, a population's batched model."""
    try:
        check_data(exp.data, settings.cache_dir)
        check_memory(exp, device)
        if population > 1:
            check_population(exp, population)
    except ConfigError as exc:
        if source is None:
            raise
        raise ConfigError(f"{source}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Where results go


def check_locations(settings: Settings, *, storage: bool) -> tuple[Location | None, Location]:
    """Parse both locations; every file studylib would write must be writable, its disk not
    full. Returns (storage, tracking)."""
    store = parse_storage(settings.storage) if storage else None
    tracking = parse_tracking_uri(settings.tracking_uri)
    if store is not None and store.path is not None:
        check_file(store.path, "--storage", store.redacted)
    if tracking.path is not None:
        check_file(tracking.path, "--tracking-uri", tracking.redacted)
        check_folder(settings.artifact_root, "MLflow artifacts", str(settings.artifact_root))
    check_folder(settings.cache_dir, "data cache", str(settings.cache_dir))
    return store, tracking


def check_file(path: Path, flag: str, shown: str) -> None:
    """A store file: an existing one must be a regular file we can read and write; its folder
    must take new files (SQLite and the journal's lock write beside it)."""
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{flag} = {shown}: {path} is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(
                f"{flag} = {shown}: {path} cannot be read and written here (read-only file, "
                "folder or file system); allowed: a store in a folder this user can write"
            )
    check_folder(path.parent, flag, shown)


def check_folder(folder: Path, flag: str, shown: str) -> None:
    """`folder` (or the nearest existing folder above it, where it would be made) takes a new
    file, and its file system has MIN_FREE_BYTES free. The probe leaves nothing behind."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} = {shown}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} = {shown}: cannot write in {probe} ({exc.strerror}); allowed: a folder "
            "this user can write"
        ) from None
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"{flag} = {shown}: the disk holding {probe} is full ({free:,} bytes free); a "
            f"study needs at least {MIN_FREE_BYTES // 2**20} MiB free to record into"
        )


def check_readable(location: Location, flag: str) -> None:
    """A store a report reads: a SQLite file must exist (MLflow would make an empty one) and
    its folder take new files: SQLite in WAL mode writes its index beside the database even
    to read it."""
    if location.path is None:
        return
    if not location.path.is_file():
        raise ConfigError(f"{flag} = {location.redacted}: no such database file")
    if not os.access(location.path, os.R_OK):
        raise ConfigError(f"{flag} = {location.redacted}: {location.path} cannot be read")
    folder = location.path.absolute().parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag} = {location.redacted}: its folder {folder} cannot be written "
            f"({exc.strerror}), and SQLite writes beside a database to read it; copy the "
            "database to a writable folder and read the copy"
        ) from None


# ---------------------------------------------------------------------------------------------
# Memory


def machine_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are) of the memory a run on `device` has at most."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"the GPU ({props.name})"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total, "this machine's memory"


def check_memory(exp: Experiment, device: torch.device) -> None:
    """Data and model that this machine could not hold: refused, saying the bound."""
    host, host_name = machine_memory(torch.device("cpu"))
    need = data_bytes(exp.data)
    if need > host:
        per_example = exp.data.length * GENERATION_BYTES_PER_VALUE
        most = host // per_example
        raise ConfigError(
            f"data.num_train = {exp.data.num_train}: generating {exp.data.num_train:,} + "
            f"{exp.data.num_test:,} examples of length {exp.data.length} takes about "
            f"{_size(need)} ({GENERATION_BYTES_PER_VALUE} bytes a value); {host_name} is "
            f"{_size(host)}; allowed here: num_train + num_test at most {most:,}"
        )
    parameters = model_parameters(exp)
    if parameters is None:
        return
    memory, name = machine_memory(device)
    if parameters * BYTES_PER_PARAMETER > memory:
        raise ConfigError(
            f"model = {_short(exp)}: {parameters:,} parameters take about "
            f"{_size(parameters * BYTES_PER_PARAMETER)} to train (weights, gradients, optimizer "
            f"state, the kept copy: {BYTES_PER_PARAMETER} bytes each); {name} is "
            f"{_size(memory)}; allowed here: at most {memory // BYTES_PER_PARAMETER:,} parameters"
        )


def model_parameters(exp: Experiment) -> int | None:
    """The model's parameter count, built on the meta device (no memory, no init cost); None
    for token models, whose vocabulary the tokenizer decides after the data is made."""
    shape = exp.data.input_shape
    if shape is None:
        return None
    with torch.device("meta"):
        model = build_model(exp.model, shape, NUM_CLASSES_BOUND)
    return sum(p.numel() for p in model.parameters())


def _size(count: int) -> str:
    value, unit = float(count), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _short(exp: Experiment) -> str:
    text = json.dumps(exp.model.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------------------------------------
# Populations


def check_population(exp: Experiment, population: int = 2) -> None:
    """`--population`: what population training does not implement, then a dry run of the
    batched model on two examples of the data's shape (nothing is read, nothing written)."""
    try:
        check_population_search(exp)
        shape = exp.data.input_shape
        assert shape is not None  # check_population_search refuses token data
        x = torch.zeros((2, *shape))
        y = torch.zeros(2, dtype=torch.long)
        Population([exp], Splits(x, y, x, y, x, y, num_classes=NUM_CLASSES_BOUND))
    except ConfigError as exc:
        raise ConfigError(
            f"--population = {population} with model.arch = {exp.model.arch!r}: {exc}; "
            "allowed: sweep this experiment without --population"
        ) from None
