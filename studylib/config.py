"""Experiment configuration: typed, frozen, validated once at the edge.

An experiment file (`experiments/*.toml`) is parsed into an `Experiment`; nothing below this
module reads raw dicts or environment variables. Where a run is recorded and which device it
uses are not part of the science, so they live apart in `Settings`, filled from the CLI.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from studylib.models.mlp import MLPConfig


class ConfigError(Exception):
    """Bad input, reported as one line before any training starts (exit code 2)."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(Frozen):
    name: Literal["mnist1d"] = "mnist1d"
    num_train: int = Field(4000, ge=10, description="examples generated for train + validation")
    num_test: int = Field(1000, ge=10, description="examples generated for the test split")
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
    patience: int = Field(10, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest val loss drop that counts")


# Which config field each searchable hyperparameter sets.
SEARCHABLE = {
    "dropout": "model.dropout",
    "l1": "train.l1",
    "l2": "train.l2",
    "weight_decay": "train.weight_decay",
    "patience": "train.patience",
    "lr": "train.lr",
}
# Values that switch a regularizer off: the baseline trial uses them.
REGULARIZER_OFF = {"dropout": 0.0, "l1": 0.0, "l2": 0.0, "weight_decay": 0.0}


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
    trials: int = Field(20, ge=1, description="total trials of the study, across resumes")
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


class Experiment(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = Field(0, ge=0, description="fixes the split, the init and the dropout masks")
    data: DataConfig = DataConfig()
    model: MLPConfig = MLPConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()

    def with_values(self, values: dict[str, Any]) -> Experiment:
        """A copy with dotted fields replaced (`{"model.dropout": 0.3}`), validated again."""
        raw = self.model_dump()
        for dotted, value in values.items():
            _set_dotted(raw, dotted, value)
        return Experiment.model_validate(raw)

    def flat(self) -> dict[str, str]:
        """Every resolved field as `section.field` -> string, the form MLflow params take."""
        out: dict[str, str] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and node and prefix != "sweep.search":
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


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Parse and validate an experiment file; every problem becomes one `ConfigError` line."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
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


def describe_validation_error(path: Path, exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"] if not _is_union_tag(part)) or "(top)"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(first["loc"][:-1]))
        text = f"{path}: {field}: unknown key; allowed here: {allowed}"
    else:
        shown = first.get("input")
        text = f"{path}: {field} = {_short(shown)}: {first['msg']}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Experiment
    for part in loc:
        if _is_union_tag(part):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _is_union_tag(part: Any) -> bool:
    # Pydantic puts the discriminator value or a function name into the location path.
    return isinstance(part, str) and (part.startswith("function-") or part in _ARCH_TAGS)


_ARCH_TAGS = {"mlp"}


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
