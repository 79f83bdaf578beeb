"""Splits: train / validation / test as tensors, and how validation is carved from a pool.

Discipline: validation is carved from the training pool with the run's seed and drives early
stopping and Optuna; the test split is scored once per run, on the selected checkpoint. The
overfitting knobs (fewer training examples, label noise, random labels) touch only the training
split, so validation and test stay clean measures of generalization.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from studylib.config import DataConfig
from studylib.errors import ConfigError

NUM_CLASSES = 10  # MNIST-1D and digits alike


@dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int  # classes; for "seq2seq", the target vocabulary
    vocab_size: int | None = None  # token ids in x (text); None: x holds numbers
    # seq2seq: x's ids are y's (the encoder reads the characters the decoder writes), so one
    # embedding table can serve both; False when the source has a tokenizer of its own.
    shared_vocab: bool = False
    task: str = "classify"  # "classify": y is (N,) labels; "seq2seq": y is (N, T) token ids
    data_metrics: dict[str, float] = field(default_factory=dict)  # logged once per run (OOV)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> Splits:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
        }
        return replace(self, **moved)


def check_carve(cfg: DataConfig, pool: int, unit: str) -> tuple[int, int]:
    """(validation, training) sizes of a pool of `pool` examples, the one carve every data set
    follows; ConfigError when either would be empty or `train_examples` asks for more than
    remain. Computable from the config alone, so it is checked before anything is written."""
    num_val = round(cfg.val_fraction * pool)
    left = pool - num_val
    # val_fraction = 0 is asked for (a run that selects nothing, config.py checks that); a
    # share that rounds to 0 is not.
    if (num_val < 1 and cfg.val_fraction) or left < 1:
        raise ConfigError(
            f"data.val_fraction = {cfg.val_fraction}: a pool of {pool} {unit} gives {num_val} "
            f"for validation and {left} for training; allowed: a share leaving at least one of each"
        )
    if cfg.train_examples is not None and cfg.train_examples > left:
        raise ConfigError(
            f"data.train_examples = {cfg.train_examples}: only {left} training {unit} remain "
            f"after the validation split; allowed 1..{left}"
        )
    return num_val, left


def split_pool(arrays: dict[str, np.ndarray], cfg: DataConfig, seed: int) -> Splits:
    """Seeded train / validation split of the training pool `x`, `y`, plus the untouched test
    set `x_test`, `y_test`; the overfitting knobs act on the training split only."""
    x, y = arrays["x"], arrays["y"]
    # Independent streams, so changing the noise level never changes which examples are val.
    split_rng = np.random.default_rng([seed, 0])
    noise_rng = np.random.default_rng([seed, 1])
    random_rng = np.random.default_rng([seed, 2])

    order = split_rng.permutation(len(y))
    num_val, _ = check_carve(cfg, len(y), "examples")
    val_idx, train_idx = order[:num_val], order[num_val:]
    if cfg.train_examples is not None:
        train_idx = train_idx[: cfg.train_examples]

    y_train = y[train_idx].copy()
    num_noisy = round(cfg.label_noise * len(y_train))
    if num_noisy:
        noisy = noise_rng.choice(len(y_train), size=num_noisy, replace=False)
        shift = noise_rng.integers(1, NUM_CLASSES, size=num_noisy)  # never the true class
        y_train[noisy] = (y_train[noisy] + shift) % NUM_CLASSES
    if cfg.random_labels:
        # Uniform over all classes, the true one included, and independent of the example:
        # label_noise near 1 is not this (it never keeps the true class, so its labels are
        # anti-correlated with the truth and still carry information).
        y_train = random_rng.integers(0, NUM_CLASSES, size=len(y_train))

    return Splits(
        x_train=torch.from_numpy(x[train_idx]),
        y_train=torch.from_numpy(y_train),
        x_val=torch.from_numpy(x[val_idx]),
        y_val=torch.from_numpy(y[val_idx]),
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        num_classes=NUM_CLASSES,
    )
