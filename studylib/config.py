"""Experiment configuration: typed, frozen, validated once at the edge.

An experiment file (`experiments/*.toml`) is parsed into an `Experiment`; nothing below this
module reads raw dicts or environment variables. Where a run is recorded and which device it
uses are not part of the science, so they live apart in `Settings`, filled from the CLI.
"""

from __future__ import annotations

import functools
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
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from studylib.errors import ConfigError
from studylib.models import UNION_TAGS, ModelConfig
from studylib.models.mlp import MLPConfig


class Frozen(BaseModel):
    # inf and nan are refused in every float field: no strength, rate or threshold means
    # anything at infinity (an l1 of inf, a min_delta of inf that no epoch can beat).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# Bounds that are not the science's but the machine's: each says why in its error.
# numpy's legacy RandomState takes seeds in 0..2**32 - 1; Optuna's TPE sampler (seeded with
# seed + trials so far, wrapped) and the MNIST-1D generator use it.
SEED_MAX = 2**32 - 1
SEED_WHY = "numpy's RandomState, which Optuna's TPE sampler and the MNIST-1D generator use, takes 32-bit seeds"
# Every epoch's figures are kept in memory and written to MLflow (about a dozen points each).
MAX_EPOCHS = 100_000
EPOCHS_WHY = "every epoch's figures are kept in memory and written to MLflow"
# A study's trials are replayed from its storage by every worker that opens it.
MAX_TRIALS = 100_000
TRIALS_WHY = "every worker replays the study's trials from its storage"


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
    generation_seed: int = Field(
        42,
        ge=0,
        le=SEED_MAX,
        description="seed of the generator: fixes the data set",
        json_schema_extra={"why": SEED_WHY},
    )
    shuffle_seq: bool = Field(False, description="permute the time axis (the paper's control)")
    val_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="share of train carved out for val; 0 only for runs that select nothing "
        "(no early stopping, no search, no tuned arm: the MNIST-1D paper's exact setting)",
    )
    train_examples: int | None = Field(
        None, ge=1, description="keep only this many training examples (provokes overfitting)"
    )
    label_noise: float = Field(
        0.0, ge=0, lt=1, description="fraction of training labels replaced by a wrong class"
    )
    random_labels: bool = Field(
        False,
        description="every training label drawn uniformly over the classes, independent of "
        "the example (Zhang et al. 2017; may equal the true class, unlike label_noise)",
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
        "char",
        description="text: fitted on the training words only; spelling: what the encoder reads "
        "(the decoder writes characters whatever this is)",
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
        if self.random_labels and (self.is_text or self.label_noise):
            raise ValueError(
                f"data.random_labels with data.name = {self.name!r} and label_noise = "
                f"{self.label_noise}: allowed with mnist1d or digits and label_noise = 0 "
                "(random labels replace every training label)"
            )
        if self.name == "words" and len(self.languages) < 2:
            raise ValueError(f"data.languages = {list(self.languages)}: words needs 2 or more")
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
    max_epochs: int = Field(100, ge=1, le=MAX_EPOCHS, json_schema_extra={"why": EPOCHS_WHY})
    l1: float = Field(0.0, ge=0, description="L1 penalty: l1 * sum |w| over weight matrices")
    l1_method: Literal["subgradient", "proximal"] = Field(
        "subgradient",
        description="subgradient: l1 * sign(w) added to the gradient; proximal: soft-threshold "
        "after each step (lr * l1, preconditioned like Adam's step under Adam): exact zeros",
    )
    l2: float = Field(0.0, ge=0, description="L2 penalty: l2 * sum w^2 over weight matrices")
    weight_decay: float = Field(
        0.0, ge=0, description="decoupled decay: w <- w - lr * weight_decay * w per step"
    )
    early_stopping: bool = True
    monitor: Literal["val_loss", "val_error"] = Field(
        "val_loss",
        description="what early stopping and the best epoch watch: validation loss, or "
        "validation error = 1 - accuracy",
    )
    stopping: Literal["patience", "gl", "pq", "up"] = Field(
        "patience", description="early-stopping rule: patience, or Prechelt's GL, PQ, UP"
    )
    patience: int = Field(
        10,
        ge=1,
        le=MAX_EPOCHS,
        description="epochs without improvement before stopping",
        json_schema_extra={"why": EPOCHS_WHY},
    )
    min_delta: float = Field(0.0, ge=0, description="smallest val loss drop that counts")
    gl_alpha: float = Field(5.0, gt=0, description="GL: stop when generalization loss > alpha (%)")
    pq_alpha: float = Field(0.5, gt=0, description="PQ: stop when GL / training progress > alpha")
    up_strips: int = Field(
        3, ge=1, le=MAX_EPOCHS, description="UP: stop after val loss rose in this many strips"
    )
    strip_length: int = Field(
        5, ge=1, le=MAX_EPOCHS, description="k: epochs per strip for PQ and UP"
    )
    grad_clip: float = Field(
        0.0, ge=0, description="clip the global gradient norm to this before each step; 0: off"
    )
    grad_norms: bool = Field(
        False, description="log grad_norm/<layer>: each layer's gradient norm, epoch mean"
    )
    mc_passes: int = Field(
        0,
        ge=0,
        le=10_000,
        description="also score test with the mean of this many dropout passes (MC dropout) "
        "and log calibration (ECE); 0: off",
    )
    shuffle: bool = Field(
        True,
        description="batches from a fresh permutation each epoch; false: in order every epoch "
        "(the MNIST-1D paper's batch order)",
    )
    state_grads: bool = Field(
        False,
        description="rnn, one direction: log ||dL/dh_t|| per step on a fixed batch of 100 "
        "training examples, before training and for the kept weights",
    )

    @model_validator(mode="after")
    def _decay_below_one_step(self) -> TrainConfig:
        check_decay_step(self.lr, self.weight_decay, "lr", "weight_decay")
        return self


def check_decay_step(lr: float, weight_decay: float, lr_name: str, decay_name: str) -> None:
    """Each step multiplies the weights by 1 - lr * weight_decay: it must stay above 0."""
    if lr * weight_decay >= 1:
        raise ValueError(
            f"{decay_name} = {weight_decay:g} with {lr_name} = {lr:g}: lr * weight_decay = "
            f"{lr * weight_decay:g}; allowed: below 1 (each step multiplies the weights by "
            "1 - lr * weight_decay)"
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
        20,
        ge=0,
        le=MAX_TRIALS,
        description="total trials of the study, across resumes; 0: no search",
        json_schema_extra={"why": TRIALS_WHY},
    )
    baseline: bool = Field(True, description="trial 0 runs with every regularizer off")
    pruner: PrunerConfig = PrunerConfig()
    search: dict[Literal[tuple(SEARCHABLE)], SearchRange] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        # Whether each range fits its field is checked by `Experiment`, which knows the
        # model family whose `dropout` field the range sets.
        for name, rng in self.search.items():
            if rng.allow_zero and name not in REGULARIZER_OFF:
                raise ValueError(
                    f"search.{name}.allow_zero: only {sorted(REGULARIZER_OFF)} can be 0"
                )
        return self


# The arms of an ablation: the baseline, each regularizer alone, and all of them together.
# Early stopping runs twice, watching validation loss and validation error (1 - accuracy).
ARMS = (
    "baseline",
    "dropout",
    "l1",
    "l2",
    "weight_decay",
    "early_stopping",
    "early_stopping_error",
    "all",
)
# Which strength each arm turns on (early stopping's strength is its patience).
ARM_KNOBS = {
    "dropout": ("dropout",),
    "l1": ("l1",),
    "l2": ("l2",),
    "weight_decay": ("weight_decay",),
    "early_stopping": ("patience",),
    "early_stopping_error": ("patience",),
}
# What each early-stopping arm watches (`train.monitor`); `all` keeps the experiment's own.
ARM_MONITOR = {"early_stopping": "val_loss", "early_stopping_error": "val_error"}
# Arms that stop early: their patience is given in advance, never tuned (see AblationConfig).
EARLY_STOPPING_ARMS = ("early_stopping", "early_stopping_error", "all")
NUISANCE = ("lr",)


class StrengthConfig(Frozen):
    """Scientific hyperparameters: the strength each regularizer gets in its arm.

    A strength left out is tuned: a small Optuna search over its `[sweep.search]` range.
    """

    dropout: float | None = Field(None, gt=0, lt=1)
    l1: float | None = Field(None, gt=0)
    l2: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, gt=0, description="lr * weight_decay below 1")
    patience: int | None = Field(
        None, ge=1, description="given in advance when an arm stops early; never tuned"
    )


# The tuning seed when none is given: far from any evaluation seed a study would list.
TUNING_SEED_OFFSET = 1000


class AblationConfig(Frozen):
    seeds: tuple[Annotated[int, Field(ge=0, le=SEED_MAX)], ...] = Field(
        (0, 1, 2, 3, 4),
        min_length=1,
        description="every arm runs once per seed",
        json_schema_extra={"why": SEED_WHY},
    )
    arms: tuple[Literal[ARMS], ...] = Field(ARMS, min_length=1)
    strength: StrengthConfig = StrengthConfig()
    nuisance: dict[Literal[NUISANCE], SearchRange] = Field(
        default_factory=dict, description="tuned per arm so that every arm gets a fair chance"
    )
    tune_trials: int = Field(
        8, ge=1, le=MAX_TRIALS, description="Optuna trials per arm that needs tuning"
    )
    tune_budget: Literal["per_knob", "per_arm"] = Field(
        "per_knob",
        description="per_knob: an arm gets tune_trials for each knob it tunes (all: four); "
        "per_arm: every arm that tunes gets tune_trials, whatever it tunes (the same budget)",
    )
    tuning_seed: int | None = Field(
        None,
        ge=0,
        le=SEED_MAX,
        description="the seed arms are tuned on (its own split, init, batch order); never one "
        "of `seeds`; default max(seeds) + 1000",
        json_schema_extra={"why": SEED_WHY},
    )
    test_curves: bool = Field(
        False,
        description="arms also log test/loss and test/acc per epoch, read only after training "
        "(early stopping's regret needs them)",
    )

    @model_validator(mode="after")
    def _check(self) -> AblationConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {list(self.seeds)}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must differ, got {list(self.arms)}")
        if self.tuning_seed is not None and self.tuning_seed in self.seeds:
            raise ValueError(
                f"tuning_seed = {self.tuning_seed} is also an evaluation seed "
                f"({list(self.seeds)}); allowed: a seed not in seeds (tuning on an evaluation "
                "seed makes that seed's arm runs a best-of-N)"
            )
        return self

    @property
    def tuning_seed_used(self) -> int:
        """The seed arms are tuned on: `tuning_seed`, or max(seeds) + TUNING_SEED_OFFSET."""
        if self.tuning_seed is not None:
            return self.tuning_seed
        return max(self.seeds) + TUNING_SEED_OFFSET


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ReferenceConfig(Frozen):
    """A published number this experiment reproduces; the report shows it beside ours."""

    test_acc: float = Field(ge=0, le=1, description="published test accuracy, as a fraction")
    source: str = Field(min_length=1, description="where the number comes from")


class Experiment(Frozen):
    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    seed: int = Field(
        0,
        ge=0,
        le=SEED_MAX,
        description="fixes the split, the init and the dropout masks",
        json_schema_extra={"why": SEED_WHY},
    )
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
            if arm in EARLY_STOPPING_ARMS and self.ablation.strength.patience is None:
                raise ValueError(
                    f"ablation.strength.patience is not given (arm {arm!r}); allowed: a whole "
                    "number >= 1, given in advance: patience is never tuned in an ablation "
                    "(tuned on validation loss, the longest patience always wins)"
                )
            for knob in ARM_KNOBS.get(arm, ()):
                if getattr(self.ablation.strength, knob) is None and knob not in self.sweep.search:
                    raise ValueError(
                        f"ablation.strength.{knob} is not given and there is no "
                        f"[sweep.search.{knob}] range to tune it from (arm {arm!r})"
                    )
        return self

    @model_validator(mode="after")
    def _decay_steps_below_one(self) -> Experiment:
        # Each trial's config is validated again (TrainConfig), but a sweep or an ablation
        # must fail here, before anything runs, not at the trial that samples the high end.
        lrs = {"train.lr": self.train.lr}
        decays = {"train.weight_decay": self.train.weight_decay}
        if "lr" in self.sweep.search:
            lrs["sweep.search.lr.high"] = self.sweep.search["lr"].high
        if "weight_decay" in self.sweep.search:
            decays["sweep.search.weight_decay.high"] = self.sweep.search["weight_decay"].high
        if self.ablation is not None:
            if "lr" in self.ablation.nuisance:
                lrs["ablation.nuisance.lr.high"] = self.ablation.nuisance["lr"].high
            if self.ablation.strength.weight_decay is not None:
                decays["ablation.strength.weight_decay"] = self.ablation.strength.weight_decay
        lr_name, lr = max(lrs.items(), key=lambda item: item[1])
        decay_name, decay = max(decays.items(), key=lambda item: item[1])
        check_decay_step(lr, decay, lr_name, decay_name)
        return self

    @model_validator(mode="after")
    def _values_fit_their_fields(self) -> Experiment:
        """A search range may only sample values its config field accepts, and a strength may
        only be one: the field's own pydantic constraints decide, never a copy of its numbers."""
        ranges = [(f"sweep.search.{name}", name, rng) for name, rng in self.sweep.search.items()]
        strengths: dict[str, Any] = {}
        if self.ablation is not None:
            ranges += [
                (f"ablation.nuisance.{name}", name, rng)
                for name, rng in self.ablation.nuisance.items()
            ]
            strengths = self.ablation.strength.model_dump(exclude_none=True)
        for label, name, rng in ranges:
            for end in ("low", "high"):
                self._check_fits(f"{label}.{end}", SEARCHABLE[name], getattr(rng, end))
        for name, value in strengths.items():
            self._check_fits(f"ablation.strength.{name}", SEARCHABLE[name], value)
        return self

    def _check_fits(self, label: str, target: str, value: Any) -> None:
        section, name = target.split(".")
        owner = type(getattr(self, section))
        problem = field_refuses(owner, name, value)
        if problem is not None:
            raise ValueError(
                f"{label} = {value!r}: {target} does not accept it ({problem}); a range or "
                f"strength may only take values its field accepts"
            )

    @model_validator(mode="after")
    def _selection_needs_validation(self) -> Experiment:
        """val_fraction = 0 leaves nothing to select on: no early stopping, no search, no arm
        that tunes or stops early."""
        if self.data.val_fraction:
            return self
        selects = []
        if self.data.is_text:  # its data figures (OOV, tokens per word) read the validation words
            selects.append(f"data.name = {self.data.name!r}")
        if self.train.early_stopping:
            selects.append("train.early_stopping = true")
        if self.sweep.trials:
            selects.append(f"sweep.trials = {self.sweep.trials}")
        if self.ablation is not None and (set(self.ablation.arms) - {"baseline"}):
            selects.append(f"ablation.arms = {list(self.ablation.arms)}")
        if self.ablation is not None and self.ablation.nuisance:
            selects.append("ablation.nuisance (tuned on validation)")
        if selects:
            raise ValueError(
                f"data.val_fraction = 0 with {', '.join(selects)}: these select on a validation "
                "split that is empty; allowed: val_fraction > 0, or a run that selects nothing "
                "(train.early_stopping = false, sweep.trials = 0, ablation arms ['baseline']) "
                "on mnist1d or digits"
            )
        return self

    @model_validator(mode="after")
    def _state_grads_need_steps(self) -> Experiment:
        model = self.model
        if self.train.state_grads and (
            model.arch != "rnn" or model.bidirectional or self.data.is_text
        ):
            raise ValueError(
                "train.state_grads = true: the gradient at each step's state needs a "
                "one-directional rnn reading numbers; allowed: model.arch = 'rnn' with "
                "bidirectional = false on mnist1d or digits"
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
        shares = self.model.arch == "seq2seq" and self.model.share_embeddings
        if shares and self.data.tokenizer != "char":
            raise ValueError(
                f"model.share_embeddings = true with data.tokenizer = {self.data.tokenizer!r}: "
                "the encoder's tokens are not the characters the decoder writes; allowed: "
                "data.tokenizer = 'char', or share_embeddings false or left out"
            )
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


def field_refuses(owner: type[BaseModel], name: str, value: Any) -> str | None:
    """Why field `name` of config class `owner` refuses `value` (pydantic's own words), or None
    when it accepts it. The one way a value from elsewhere (a search range, a flag) is checked
    against a field's bounds."""
    try:
        _field_adapter(owner, name).validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _with_why(first["msg"], first["type"], owner.model_fields[name])
    return None


@functools.cache
def _field_adapter(owner: type[BaseModel], name: str) -> TypeAdapter:
    info = owner.model_fields[name]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])


# Errors of a bound (not of a type): their message gains the bound's reason, where it has one.
BOUND_ERRORS = ("less_than", "less_than_equal", "greater_than", "greater_than_equal")


def _with_why(message: str, kind: str, info: FieldInfo | None) -> str:
    extra = info.json_schema_extra if info is not None else None
    if kind in BOUND_ERRORS and isinstance(extra, dict) and extra.get("why"):
        return f"{message} ({extra['why']})"
    return message


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
    heartbeat_seconds: int = 60  # database storage: trials of a worker silent 2x this fail
    tracking_retry_seconds: float = 60.0  # MLflow calls retried this long, then a clear error
    # Who writes a sweep's MLflow records and Optuna outcomes (sweep/writer.py): a process of
    # each training process (off the training path), a thread of it (the same code, for tests
    # that patch MLflow in this process), or "off": the training process, at once.
    writer: Literal["process", "thread", "off"] = "process"


# ---------------------------------------------------------------------------------------------
# [launcher]: where a sweep's workers run (sweep --launcher slurm|ray). Not the science: it is
# read apart from the Experiment, so it is never stored with the study nor logged as a param,
# and changing it never refuses a resume.


class SlurmConfig(Frozen):
    """`[launcher.slurm]`: one Slurm job array of `--jobs` tasks, one worker each (submitit)."""

    partition: str | None = Field(None, min_length=1, description="sbatch --partition")
    time: int = Field(60, ge=1, le=525_600, description="minutes per task (sbatch --time)")
    cpus_per_task: int = Field(1, ge=1, le=1024, description="also the worker's torch threads")
    gpus_per_task: int = Field(0, ge=0, le=64, description="sbatch --gpus-per-task; 0: none")
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
        message = _with_why(message, first["type"], _field_info(first["loc"]))
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


def _field_info(loc: tuple) -> FieldInfo | None:
    """The definition of the field an error location points at (None if not a model field)."""
    model: Any = Experiment
    info = None
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: the list's own field says what the items allow
        if _is_union_tag(part):
            model = UNION_TAGS.get(part, model)
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return None
        model = _model_class(info.annotation)
    return info


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
