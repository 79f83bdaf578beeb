"""Experiment configuration: typed, frozen, validated once at the edge.

An experiment file (`experiments/*.toml`) is parsed into an `Experiment`; nothing below this
module reads raw dicts or environment variables. Where a run is recorded and which device it
uses are not part of the science, so they live apart in `Settings`, filled from the CLI.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from studylib.errors import ConfigError
from studylib.models import UNION_TAGS, ModelConfig
from studylib.models.mlp import MLPConfig


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


DIGITS_SHAPE = (8, 8)  # scikit-learn's digits: 1,797 images of 8 x 8 pixels
TEXT_DATA = ("words", "spelling")  # built from wordfreq's word lists (studylib/data/text.py)
# Fields that describe how MNIST-1D is generated; the digits set is fixed and has none.
MNIST1D_ONLY = ("num_train", "num_test", "length", "generation_seed", "shuffle_seq")
TEXT_ONLY = ("languages", "words_per_language", "shared_words", "tokenizer", "vocab_size")
SPELLING_ONLY = ("typo_rate",)
# The fields each data set owns; setting another's field is an error.
OWN_FIELDS = {
    "mnist1d": MNIST1D_ONLY,
    "digits": (),
    "words": TEXT_ONLY,
    "spelling": TEXT_ONLY + SPELLING_ONLY,
}
DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "pl", "fi")


class DataConfig(Frozen):
    name: Literal["mnist1d", "digits", "words", "spelling"] = Field(
        "mnist1d",
        description="mnist1d: (40,) signals; digits: (8, 8) images, 360 held for test; "
        "words: language of a word; spelling: restore a misspelled word",
    )
    num_train: int = Field(4000, ge=10, description="MNIST-1D examples for train + validation")
    num_test: int = Field(1000, ge=10, description="MNIST-1D examples for the test split")
    length: int = Field(40, ge=8, description="MNIST-1D sequence length")
    generation_seed: int = Field(42, description="seed of the generator: fixes the data set")
    shuffle_seq: bool = Field(False, description="permute the time axis (the paper's control)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of train carved out for val")
    train_examples: int | None = Field(
        None, ge=1, description="keep only this many training examples (provokes overfitting)"
    )
    label_noise: float = Field(
        0.0, ge=0, lt=1, description="fraction of training labels replaced by a wrong class"
    )
    languages: tuple[str, ...] = Field(
        DEFAULT_LANGUAGES, description="text: wordfreq language codes; words: one class each"
    )
    words_per_language: int = Field(
        5000, ge=10, le=100_000, description="text: the most frequent words of each language"
    )
    shared_words: Literal["drop", "most_frequent"] = Field(
        "drop",
        description="text: a word of several languages is dropped, or labelled by "
        "the language where it is most frequent",
    )
    tokenizer: Literal["char", "word", "bpe"] = Field(
        "char", description="text: fitted on the training words only"
    )
    vocab_size: int = Field(
        1000, ge=32, le=100_000, description="bpe: tokens at most, specials and letters included"
    )
    typo_rate: float = Field(
        0.1, gt=0, lt=1, description="spelling: chance that a character is edited"
    )

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, languages: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(languages)) != len(languages) or not languages:
            raise ValueError("must be distinct language codes, at least one")
        if languages == DEFAULT_LANGUAGES:
            return languages
        from wordfreq import available_languages  # start-up cost: 0.16 s, text studies only

        known = sorted(available_languages())
        for code in languages:
            if code not in known:
                raise ValueError(f"{code!r} is not a wordfreq language; allowed: {known}")
        return languages

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        for name in MNIST1D_ONLY + TEXT_ONLY + SPELLING_ONLY:
            value, default = getattr(self, name), DataConfig.model_fields[name].default
            if name not in OWN_FIELDS[self.name] and value != default:
                users = [data for data, own in OWN_FIELDS.items() if name in own]
                raise ValueError(
                    f"data.{name} = {value!r} applies to {' and '.join(users)} only, not "
                    f"{self.name}: leave it out (default {default!r})"
                )
        if self.name == "words" and len(self.languages) < 2:
            raise ValueError(f"data.languages = {list(self.languages)}: words needs 2 or more")
        if self.name == "spelling" and self.tokenizer != "char":
            raise ValueError(
                f"data.tokenizer = {self.tokenizer!r}: spelling reads and writes characters; "
                "allowed: 'char'"
            )
        return self

    @property
    def is_text(self) -> bool:
        return self.name in TEXT_DATA

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One example's shape, as `load_splits` will deliver it; None for token ids, whose
        length the tokenizer decides."""
        if self.is_text:
            return None
        return (self.length,) if self.name == "mnist1d" else DIGITS_SHAPE


class TrainConfig(Frozen):
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    batch_size: int = Field(100, ge=1)
    max_epochs: int = Field(100, ge=1)
    l1: float = Field(0.0, ge=0, description="L1 penalty: l1 * sum |w| over weight matrices")
    l2: float = Field(0.0, ge=0, description="L2 penalty: l2 * sum w^2 over weight matrices")
    weight_decay: float = Field(
        0.0, ge=0, lt=1, description="decoupled decay: w <- w - lr * weight_decay * w per step"
    )
    early_stopping: bool = True
    stopping: Literal["patience", "gl", "pq", "up"] = Field(
        "patience", description="early-stopping rule: patience, or Prechelt's GL, PQ, UP"
    )
    patience: int = Field(10, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest val loss drop that counts")
    gl_alpha: float = Field(5.0, gt=0, description="GL: stop when generalization loss > alpha (%)")
    pq_alpha: float = Field(0.5, gt=0, description="PQ: stop when GL / training progress > alpha")
    up_strips: int = Field(3, ge=1, description="UP: stop after val loss rose in this many strips")
    strip_length: int = Field(5, ge=1, description="k: epochs per strip for PQ and UP")
    grad_clip: float = Field(
        0.0, ge=0, description="clip the global gradient norm to this before each step; 0: off"
    )
    grad_norms: bool = Field(
        False, description="log grad_norm/<layer>: each layer's gradient norm, epoch mean"
    )


# Which config field each searchable hyperparameter sets.
SEARCHABLE = {
    "dropout": "model.dropout",
    "l1": "train.l1",
    "l2": "train.l2",
    "weight_decay": "train.weight_decay",
    "patience": "train.patience",
    "lr": "train.lr",
}
# The one table of "off": the strength at which each regularizer does nothing. The sweep's
# baseline trial, every ablation arm's starting point and a switched-off search (`allow_zero`)
# all read it.
REGULARIZER_OFF = {"dropout": 0.0, "l1": 0.0, "l2": 0.0, "weight_decay": 0.0}


def all_regularizers_off() -> dict[str, Any]:
    """Config values with every regularizer off and no early stopping: the baseline."""
    values: dict[str, Any] = {SEARCHABLE[name]: off for name, off in REGULARIZER_OFF.items()}
    values["train.early_stopping"] = False
    return values


class SearchRange(Frozen):
    low: float
    high: float
    log: bool = False
    allow_zero: bool = Field(
        False, description="also let Optuna switch this regularizer off (adds a '<name>_on' param)"
    )

    @model_validator(mode="after")
    def _check(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, got {self.low}; use allow_zero for 0")
        return self


class PrunerConfig(Frozen):
    enabled: bool = True
    startup_trials: int = Field(5, ge=0, description="trials finished before pruning starts")
    warmup_epochs: int = Field(10, ge=0, description="epochs of each trial never pruned")


class SweepConfig(Frozen):
    trials: int = Field(
        20, ge=0, description="total trials of the study, across resumes; 0: no search"
    )
    baseline: bool = Field(True, description="trial 0 runs with every regularizer off")
    pruner: PrunerConfig = PrunerConfig()
    search: dict[Literal[tuple(SEARCHABLE)], SearchRange] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if "dropout" in self.search and self.search["dropout"].high >= 1:
            raise ValueError(
                f"search.dropout.high must be below 1, got {self.search['dropout'].high}"
            )
        if "patience" in self.search:
            rng = self.search["patience"]
            if rng.low < 1 or rng.low != int(rng.low) or rng.high != int(rng.high):
                raise ValueError(
                    f"search.patience needs whole numbers >= 1, got {rng.low}..{rng.high}"
                )
        for name, rng in self.search.items():
            if rng.allow_zero and name not in REGULARIZER_OFF:
                raise ValueError(
                    f"search.{name}.allow_zero: only {sorted(REGULARIZER_OFF)} can be 0"
                )
            if name in REGULARIZER_OFF and rng.low < 0:
                raise ValueError(f"search.{name}.low must be >= 0, got {rng.low}")
        return self


# The arms of an ablation: the baseline, each regularizer alone, and all of them together.
ARMS = ("baseline", "dropout", "l1", "l2", "weight_decay", "early_stopping", "all")
# Which strength each arm turns on (early stopping's strength is its patience).
ARM_KNOBS = {
    "dropout": ("dropout",),
    "l1": ("l1",),
    "l2": ("l2",),
    "weight_decay": ("weight_decay",),
    "early_stopping": ("patience",),
}
NUISANCE = ("lr",)


class StrengthConfig(Frozen):
    """Scientific hyperparameters: the strength each regularizer gets in its arm.

    A strength left out is tuned: a small Optuna search over its `[sweep.search]` range.
    """

    dropout: float | None = Field(None, gt=0, lt=1)
    l1: float | None = Field(None, gt=0)
    l2: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, gt=0, lt=1)
    patience: int | None = Field(None, ge=1)


class AblationConfig(Frozen):
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (0, 1, 2), min_length=1, description="every arm runs once per seed"
    )
    arms: tuple[Literal[ARMS], ...] = Field(ARMS, min_length=1)
    strength: StrengthConfig = StrengthConfig()
    nuisance: dict[Literal[NUISANCE], SearchRange] = Field(
        default_factory=dict, description="tuned per arm so that every arm gets a fair chance"
    )
    tune_trials: int = Field(8, ge=1, description="Optuna trials per arm that needs tuning")

    @model_validator(mode="after")
    def _check(self) -> AblationConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {list(self.seeds)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must differ, got {list(self.arms)}")
        return self


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ReferenceConfig(Frozen):
    """A published number this experiment reproduces; the report shows it beside ours."""

    test_acc: float = Field(ge=0, le=1, description="published test accuracy, as a fraction")
    source: str = Field(min_length=1, description="where the number comes from")


class Experiment(Frozen):
    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    seed: int = Field(0, ge=0, description="fixes the split, the init and the dropout masks")
    group: str | None = Field(
        None, pattern=NAME_PATTERN, description="study group it belongs to; set by a group file"
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = MLPConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    ablation: AblationConfig | None = None
    reference: ReferenceConfig | None = None

    @model_validator(mode="after")
    def _tunable(self) -> Experiment:
        if self.ablation is None:
            return self
        for arm in self.ablation.arms:
            for knob in ARM_KNOBS.get(arm, ()):
                if getattr(self.ablation.strength, knob) is None and knob not in self.sweep.search:
                    raise ValueError(
                        f"ablation.strength.{knob} is not given and there is no "
                        f"[sweep.search.{knob}] range to tune it from (arm {arm!r})"
                    )
        return self

    @model_validator(mode="after")
    def _model_reads_data(self) -> Experiment:
        # Each family says what it can read; sizes that do not work out fail here, not in fit.
        shape = self.data.input_shape
        what = "token ids" if shape is None else f"examples of shape {shape}"
        prefix = f"model.arch = {self.model.arch!r} with data.name = {self.data.name!r} ({what})"
        if (self.model.arch == "seq2seq") != (self.data.name == "spelling"):
            raise ValueError(
                f"{prefix}: the spelling task and the seq2seq model go together; allowed: "
                "data.name = 'spelling' with model.arch = 'seq2seq', else another pair"
            )
        try:
            self.model.check_input(shape)
        except ValueError as exc:
            raise ValueError(f"{prefix}: {exc}") from None
        return self

    def with_values(self, values: dict[str, Any]) -> Experiment:
        """A copy with dotted fields replaced (`{"model.dropout": 0.3}`), validated again."""
        raw = self.model_dump()
        for dotted, value in values.items():
            _set_dotted(raw, dotted, value)
        return Experiment.model_validate(raw)

    def value(self, dotted: str) -> Any:
        """The value of one dotted field: `exp.value("train.lr")`."""
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def flat(self) -> dict[str, str]:
        """Every resolved field as `section.field` -> string, the form MLflow params take."""
        out: dict[str, str] = {}

        def walk(prefix: str, node: Any) -> None:
            whole = prefix in ("sweep.search", "ablation.nuisance")
            if isinstance(node, dict) and node and not whole:
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
            elif isinstance(node, (list, tuple, dict)):
                out[prefix] = json.dumps(node, sort_keys=True)
            else:
                out[prefix] = str(node)

        walk("", self.model_dump(mode="json"))
        return out


@dataclass(frozen=True)
class Speed:
    """How a run uses the hardware; off by default until `make bench` shows a knob winning.

    Neither knob changes the arithmetic beyond float rounding: bf16 runs the forward passes
    under `torch.autocast` (losses and metrics stay float32), compile wraps the model in
    `torch.compile` (the first epochs pay for compilation).
    """

    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False


DEFAULT_SPEED = Speed()


@dataclass(frozen=True)
class Settings:
    """Where results go and what runs them: not part of an experiment's science."""

    tracking_uri: str = "sqlite:///mlflow.db"
    storage: str = "optuna.journal"  # a file path (Optuna journal) or a database URL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: Path = Path(".studylib-cache")
    artifact_root: Path = Path("mlartifacts")  # used when tracking to a local database
    progress: bool = True
    speed: Speed = DEFAULT_SPEED
    heartbeat_seconds: int = 60  # database storage: trials of a worker silent 3x this fail
    tracking_retry_seconds: float = 60.0  # MLflow calls retried this long, then a clear error


# ---------------------------------------------------------------------------------------------
# [launcher]: where a sweep's workers run (sweep --launcher slurm|ray). Not the science: it is
# read apart from the Experiment, so it is never stored with the study nor logged as a param,
# and changing it never refuses a resume.


class SlurmConfig(Frozen):
    """`[launcher.slurm]`: one Slurm job array of `--jobs` tasks, one worker each (submitit)."""

    partition: str | None = Field(None, min_length=1, description="sbatch --partition")
    time: int = Field(60, ge=1, le=525_600, description="minutes per task (sbatch --time)")
    cpus_per_task: int = Field(1, ge=1, le=1024, description="also the worker's torch threads")
    gpus_per_task: int = Field(0, ge=0, le=64)
    mem_gb: float | None = Field(None, gt=0, description="sbatch --mem; none: the default")
    signal_delay: int = Field(
        90, ge=0, description="seconds before the time limit SIGUSR2 arrives (sbatch --signal)"
    )
    max_requeues: int = Field(
        3, ge=0, description="SIGUSR2 (time limit, preemption) requeues a task at most this often"
    )
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict, description='more sbatch options: {account = "x", qos = "y"}'
    )
    setup: tuple[str, ...] = Field(
        (), description="shell lines run before each worker (module load ..., source venv)"
    )
    logs: str = Field(
        "slurm-logs", min_length=1, description="folder of submitit's files and task logs"
    )

    @field_validator("sbatch")
    @classmethod
    def _option_names(cls, options: dict[str, Any]) -> dict[str, Any]:
        for key in options:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
                raise ValueError(f"{key!r} is not an sbatch option name (letters, digits, -, _)")
        return options


class RayConfig(Frozen):
    """`[launcher.ray]`: `--jobs` Ray tasks, one worker each."""

    address: str | None = Field(
        None,
        min_length=1,
        description="auto, ray://HOST:10001 or HOST:PORT; none: start Ray on this machine",
    )
    num_cpus: float = Field(1.0, gt=0, le=1024, description="CPUs per worker")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per worker; 0.5: two share one")
    max_retries: int = Field(
        3, ge=0, le=100, description="a worker whose process or node died is started again"
    )
    host: str = Field(
        "127.0.0.1", min_length=1, description="a Ray started here binds this address"
    )
    dashboard: bool = Field(False, description="a Ray started here also runs its dashboard")

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"{value}: above 1, GPUs per worker must be a whole number")
        return value


class LauncherConfig(Frozen):
    slurm: SlurmConfig = SlurmConfig()
    ray: RayConfig = RayConfig()


class LauncherFile(Frozen):
    """What `load_launcher` validates: the file's `[launcher]` table, under its own name."""

    launcher: LauncherConfig = LauncherConfig()


def load_launcher(path: str | Path, flags: dict[str, Any] | None = None) -> LauncherConfig:
    """`[launcher]` of an experiment (or group) file, with command-line values (dotted,
    `"slurm.time"`) over it; every problem is one `ConfigError` line."""
    path = Path(path)
    raw = {"launcher": _read_toml(path).get("launcher", {})}
    try:
        LauncherFile.model_validate(raw)  # the file alone: its errors name the file
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc, LauncherFile)) from None
    for dotted, value in (flags or {}).items():
        _set_dotted(raw, f"launcher.{dotted}", value)
    try:
        return LauncherFile.model_validate(raw).launcher
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(Path("command line"), exc, LauncherFile)
        ) from None


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Parse and validate an experiment file; every problem becomes one `ConfigError` line."""
    path = Path(path)
    raw = _read_toml(path)
    raw.pop("launcher", None)  # where it runs, not the science: load_launcher reads it
    raw.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        try:
            _set_dotted(raw, dotted, value)
        except TypeError:
            raise ConfigError(f"{path}: --set {dotted}: not a field path") from None
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None


class GroupFile(Frozen):
    """A study group: member experiment files swept one after another as one comparison."""

    group: str = Field(pattern=NAME_PATTERN, max_length=60)
    members: tuple[str, ...] = Field(min_length=1, description="experiment files, relative paths")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description='dotted fields set in every member: "train.lr" = 0.01'
    )


def load_experiments(path: str | Path, overrides: dict[str, Any] | None = None) -> list[Experiment]:
    """One experiment file -> [its Experiment]; a group file (one with `members`) -> every member.

    Group members are renamed "<group>-<name>" and carry `group`, so each is its own Optuna
    study and MLflow experiment, tagged with the group. All are validated before any trains.
    """
    path = Path(path)
    raw = _read_toml(path)
    if "members" not in raw:
        return [load_experiment(path, overrides)]
    raw.pop("launcher", None)  # the group's own [launcher]: load_launcher reads it
    try:
        spec = GroupFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(first["loc"])
        raise ConfigError(f"{path}: {field}: {first['msg']}") from None
    members = []
    for member in spec.members:
        exp = load_experiment(path.parent / member, {**spec.overrides, **(overrides or {})})
        members.append(exp.with_values({"name": f"{spec.group}-{exp.name}", "group": spec.group}))
    names = [exp.name for exp in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: members: two members share a name: {names}")
    return members


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """`train.lr=0.01` -> ("train.lr", 0.01); the value is read as TOML, else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.lr=0.01")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed


def describe_validation_error(path: Path, exc: ValidationError, root: Any = None) -> str:
    """One line for a validation error of `root` (default: Experiment) read from `path`."""
    errors = exc.errors()
    first = errors[0]
    field = _field_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(first["loc"][:-1], root or Experiment))
        text = f"{path}: {field}: unknown key; allowed here: {allowed}"
    elif first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        key = "arch" if field == "model" else "type"
        context = first.get("ctx", {})
        if "expected_tags" in context:
            text = f"{path}: {field}.{key} = {context.get('tag')!r}: allowed: {context['expected_tags']}"
        else:  # not even a table: `model = false`
            text = f"{path}: {field} = {_short(first.get('input'))}: expected a table with `{key}`"
    elif not first["loc"]:  # a check across sections (model against data): its own message
        text = f"{path}: {message}"
    elif isinstance(first.get("input"), dict):  # a check across one section's fields
        text = f"{path}: {field}: {message}"
    else:
        text = f"{path}: {field} = {_short(first.get('input'))}: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def _field_path(loc: tuple) -> str:
    """("model", "cnn", "blocks", 2, "conv", "kernel") -> "model.blocks[2].kernel"."""
    text = ""
    for part in loc:
        if _is_union_tag(part):
            continue
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top)"


def _allowed_keys(loc: tuple, root: Any) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: its model is named by the union tag that follows
        if _is_union_tag(part):
            model = UNION_TAGS.get(part, model)
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_class(field.annotation)
    return list(getattr(model, "model_fields", {}))


def _model_class(annotation: Any) -> Any:
    """The pydantic model inside `X | None`; anything else as it is."""
    members = [a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")]
    return members[0] if len(members) == 1 else annotation


def _is_union_tag(part: Any) -> bool:
    # Pydantic puts the discriminator value or a function name into the location path.
    return isinstance(part, str) and (part.startswith("function-") or part in UNION_TAGS)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TypeError(dotted)
    node[leaf] = value
