"""A trial's MLflow life: one run opened with its config, fed its curve, closed with how it
ended. Sweep trials, population members, ablation arms and `studylib train` runs all go through
these three functions, so every run of every mode carries the same params, tags and metrics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import optuna
import torch
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag

from studylib.config import Experiment, Speed
from studylib.names import (
    ARCH_TAG,
    COMPILE_TAG,
    DATASET_TAG,
    DEVICE_TAG,
    GROUP_TAG,
    NOTE_TAG,
    PRECISION_TAG,
    REASON_TAG,
    RUN_NAME_TAG,
    RUN_SEED_TAG,
    STATUS_TAG,
)
from studylib.tracking.records import RecordedRun, Recorder
from studylib.tracking.store import Run, Tracker, TrackingUnavailable, environment_tags
from studylib.train import TrainResult


def group_tags(exp: Experiment) -> dict[str, str]:
    return {GROUP_TAG: exp.group} if exp.group else {}


# ---------------------------------------------------------------------------------------------
# What a run says about itself: name, description, params, data set. Computed here, from the
# config alone, as data that the run's first writes carry (no call of their own).

# Data fields that only some data sets read (studylib/data): the rest are left out of a run's
# params, so that an MNIST-1D run shows no tokenizer and a text run no sequence length.
DATA_FIELDS = {
    "mnist1d": {"num_train", "num_test", "length", "generation_seed", "shuffle_seq"},
    "digits": set(),
    "words": {"languages", "words_per_language", "shared_words", "tokenizer", "vocab_size"},
    "spelling": {
        "languages",
        "words_per_language",
        "shared_words",
        "tokenizer",
        "typo_rate",
        "vocab_size",
    },
}
COMMON_DATA = {"name", "val_fraction", "train_examples", "label_noise"}
ONLY_SOME = set().union(*DATA_FIELDS.values())


def applicable_params(exp: Experiment) -> dict[str, str]:
    """The resolved config as MLflow params (`exp.flat()`), less the data fields that this
    run's data set does not read (`data.vocab_size` only under BPE)."""
    keep = DATA_FIELDS[exp.data.name]
    if exp.data.is_text and exp.data.tokenizer != "bpe":
        keep = keep - {"vocab_size"}
    out = {}
    for key, value in exp.flat().items():
        section, _, name = key.partition(".")
        if section == "data" and name in ONLY_SOME and name not in keep:
            continue
        out[key] = value
    return out


def effective_params(exp: Experiment) -> dict[str, Any]:
    """What training used, apart from what Optuna sampled (`optuna.*`): each regularizer's
    strength, 0 when its switch is off, and the patience, "off" without early stopping."""
    return {
        "effective.dropout": exp.model.dropout,
        "effective.l1": exp.train.l1,
        "effective.l2": exp.train.l2,
        "effective.weight_decay": exp.train.weight_decay,
        "effective.patience": exp.train.patience if exp.train.early_stopping else "off",
    }


def regularizers_phrase(exp: Experiment) -> str:
    """ "dropout 0.10, l2 7.9e-3, patience 5", or "no regularization"."""
    parts = []
    if exp.model.dropout:
        parts.append(f"dropout {exp.model.dropout:.2f}")
    for name in ("l1", "l2", "weight_decay"):
        value = getattr(exp.train, name)
        if value:
            parts.append(f"{name.replace('_', ' ')} {value:.1e}".replace("e-0", "e-"))
    if exp.train.early_stopping:
        parts.append(f"patience {exp.train.patience}")
    return ", ".join(parts) or "no regularization"


def trial_run_name(number: int, exp: Experiment, baseline: bool = False) -> str:
    """A sweep trial's run name: what it is at a glance in the MLflow UI's runs table."""
    if baseline:
        return f"trial {number}: baseline (no regularization)"
    return f"trial {number}: {regularizers_phrase(exp)}"


def run_description(exp: Experiment, what: str) -> str:
    """A run's description (MLflow's `mlflow.note.content`, Markdown)."""
    return (
        f"{what} of study `{exp.name}`: {exp.model.arch} on {exp.data.name}, seed {exp.seed}, "
        f"up to {exp.train.max_epochs} epochs. Regularization: {regularizers_phrase(exp)}.\n\n"
        "Params `effective.*` are what training used; `optuna.*` what Optuna sampled (a "
        "strength is sampled even when its switch is off). Charts: `train/loss` and "
        "`val/loss` per epoch; `curves.png` (written by `make report`) draws both."
    )


def data_generator(exp: Experiment) -> tuple[str, dict[str, Any]]:
    """Who makes the data set and with which arguments (the fields its loader reads)."""
    fields = DATA_FIELDS[exp.data.name] | (COMMON_DATA - {"name"})
    args = {k: v for k, v in exp.data.model_dump(mode="json").items() if k in fields}
    generator = {
        "mnist1d": "mnist1d.data.make_dataset",
        "digits": "sklearn.datasets.load_digits",
        "words": "wordfreq.top_n_list",
        "spelling": "wordfreq.top_n_list",
    }[exp.data.name]
    return generator, args


def dataset_input(exp: Experiment) -> DatasetInput:
    """The run's data set as an MLflow dataset input: name, a digest of what makes it (the
    generator and its arguments, MNIST-1D's generation seed among them) and the source, so
    the runs table's Dataset column tells data sets apart. The split seed is the run's own."""
    generator, args = data_generator(exp)
    made_of = json.dumps({"generator": generator, "args": args}, sort_keys=True)
    digest = hashlib.sha256(made_of.encode()).hexdigest()[:8]
    source = CodeDatasetSource(
        {
            "generator": generator,
            "args": json.dumps(args, sort_keys=True),
            "split_seed": str(exp.seed),
        }
    )
    dataset = MetaDataset(source=source, name=exp.data.name, digest=digest)
    return DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag(key="mlflow.data.context", value="train")]
    )


def start_trial_run(
    exp: Experiment,
    tracker: Tracker | Recorder,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None,
    speed: Speed,
    parameters: int,
    device: torch.device,
    optuna_params: dict[str, Any] | None = None,
    link: Callable[[str], None] | None = None,
) -> Run | RecordedRun:
    """The MLflow run of one trial, with its tags and its full resolved config as params.

    `optuna_params`: the trial's own Optuna parameters (`l1_on`, ...), logged as `optuna.*`:
    the report rebuilds the search from them for its importance figure. `link(run_id)` runs as
    soon as the run exists, before anything else is written to it: a trial that dies (or
    loses the tracking server) right after leaves a trace of its run.
    """
    run = tracker.start_run(
        run_name,
        tags={
            **tags,
            **environment_tags(),
            ARCH_TAG: exp.model.arch,
            DATASET_TAG: exp.data.name,
            RUN_SEED_TAG: str(exp.seed),
            DEVICE_TAG: str(device),
            PRECISION_TAG: speed.precision,
            COMPILE_TAG: str(speed.compile),
            **group_tags(exp),
            NOTE_TAG: tags.get(NOTE_TAG) or run_description(exp, "A run"),
        },
        parent_id=parent_id,
    )
    if link is not None and run.run_id is not None:  # a recorded run: its writer links it
        link(run.run_id)
    params: dict[str, Any] = {**applicable_params(exp), "model.parameters": parameters}
    params.update({f"optuna.{name}": value for name, value in (optuna_params or {}).items()})
    params.update(effective_params(exp))
    run.log_params(params)  # one write (per 100 params): each MLflow call is a transaction
    run.log_inputs([dataset_input(exp)])
    return run


def close_trial_run(
    run: Run | RecordedRun,
    exp: Experiment,
    result: TrainResult,
    data_metrics: dict[str, float] | None = None,
) -> None:
    """Record how a trial ended: curve, final metrics, config and weights; FAILED if diverged.

    The closing tags, final metrics and the rest of the curve go out in one batch."""
    if result.status == "diverged" and result.history:
        run.log_epoch(len(result.history), result.history[-1])  # the finite part of that epoch
    closing = {STATUS_TAG: result.status, REASON_TAG: result.reason}
    if result.status == "diverged":
        run.closing(tags=closing)
        run.finish("FAILED")
        return
    for epoch, figures in enumerate(result.test_curve, start=1):  # read after training ended
        run.log_epoch(epoch, figures)
    run.log_files(
        json_files={"config.json": exp.model_dump(mode="json")},
        state_dicts={"model.pt": result.state_dict} if result.state_dict is not None else None,
    )
    # data_metrics: OOV rates (text); train_seconds: the trial's wall time in `fit`
    metrics = {**result.final, **(data_metrics or {})}
    if result.seconds:
        metrics["train_seconds"] = result.seconds
    run.closing(tags=closing, metrics=metrics)
    run.finish("FINISHED")


def close_interrupted_run(run: Run | RecordedRun, exc: BaseException) -> None:
    """Close the run of a trial that training left by an exception: pruned, killed or crashed."""
    if isinstance(exc, TrackingUnavailable):
        return  # nothing more can be written
    if isinstance(exc, optuna.TrialPruned):
        tags = {STATUS_TAG: "pruned", REASON_TAG: str(exc)}
        if run.name:  # MLflow's status says FINISHED: the name tells a pruned run at a glance
            tags[RUN_NAME_TAG] = pruned_name(run.name, str(exc))
        run.closing(tags=tags)
        run.finish("FINISHED")
    elif isinstance(exc, KeyboardInterrupt):
        reason = f"interrupted by {exc or 'SIGINT'}"
        run.closing(tags={STATUS_TAG: "killed", REASON_TAG: reason})
        run.finish("KILLED")
    elif isinstance(exc, Exception):
        reason = f"{type(exc).__name__}: {exc}"
        run.closing(tags={STATUS_TAG: "crashed", REASON_TAG: reason})
        run.finish("FAILED")


def pruned_name(name: str, reason: str) -> str:
    """ "trial 27 [pruned at epoch 4]: dropout 0.10" from the reason "pruned at epoch 4: ..."."""
    head, sep, rest = name.partition(":")
    when = reason.split(":")[0] if reason.startswith("pruned") else "pruned"
    return f"{head} [{when}]{sep}{rest}"
