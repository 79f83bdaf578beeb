"""Data: MNIST-1D generated offline, scikit-learn's 8 x 8 digits, or words (studylib/text.py);
split train / validation / test, kept on the device.

Discipline: validation is carved from the generated training split with the run's seed and
drives early stopping and Optuna; the test split is scored once per run, on the selected
checkpoint. The overfitting knobs (fewer training examples, label noise) touch only the
training split, so validation and test stay clean measures of generalization.

Digits (sklearn.datasets.load_digits, shipped inside scikit-learn, no download): 1,797 images of
8 x 8 pixels valued 0..16, scaled to [0, 1]. A fixed test split of 36 images per class (360 in
all), drawn once with DIGITS_TEST_SEED and the same for every run and seed; the other 1,437
are the pool that validation is carved from with the run's seed, as for MNIST-1D.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from studylib.config import ConfigError, DataConfig

NUM_CLASSES = 10
DIGITS_TEST_PER_CLASS = 36  # 360 test images: 20% of 1,797, the same share as MNIST-1D's test
DIGITS_TEST_SEED = 1797  # fixes which images are test, whatever the run's seed


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


def mnist1d_arrays(cfg: DataConfig, cache_dir: Path) -> dict[str, np.ndarray]:
    """The generated data set (train and test), from the disk cache when it was made before."""
    recipe = {
        "num_train": cfg.num_train,
        "num_test": cfg.num_test,
        "length": cfg.length,
        "seed": cfg.generation_seed,
        "shuffle_seq": cfg.shuffle_seq,
        "version": 1,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"mnist1d-{key}.npz"
    if path.exists():
        with np.load(path) as cached:
            return dict(cached)

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    total = cfg.num_train + cfg.num_test
    args.num_samples = -(-total // NUM_CLASSES) * NUM_CLASSES  # whole examples per class
    args.train_split = 1.0
    args.final_seq_length = cfg.length
    args.seed = cfg.generation_seed
    args.shuffle_seq = cfg.shuffle_seq
    # make_dataset reseeds the global `random` and numpy generators: put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        made = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x, y = made["x"].astype(np.float32), made["y"].astype(np.int64)
    arrays = {
        "x": x[: cfg.num_train],
        "y": y[: cfg.num_train],
        "x_test": x[cfg.num_train : total],
        "y_test": y[cfg.num_train : total],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: parallel workers never read a half-written file
    return arrays


def digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8) floats in [0, 1], with the fixed stratified test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_TEST_SEED)
    test = np.zeros(len(y), dtype=bool)
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(y == digit)
        test[rng.choice(members, size=DIGITS_TEST_PER_CLASS, replace=False)] = True
    return {"x": x[~test], "y": y[~test], "x_test": x[test], "y_test": y[test]}


def load_splits(cfg: DataConfig, seed: int, cache_dir: Path) -> Splits:
    """Seeded train / validation split of the training pool, plus the untouched test set."""
    if cfg.is_text:
        from studylib.text import load_text_splits

        return load_text_splits(cfg, seed, cache_dir)
    arrays = mnist1d_arrays(cfg, cache_dir) if cfg.name == "mnist1d" else digits_arrays()
    x, y = arrays["x"], arrays["y"]
    # Independent streams, so changing the noise level never changes which examples are val.
    split_rng = np.random.default_rng([seed, 0])
    noise_rng = np.random.default_rng([seed, 1])

    order = split_rng.permutation(len(y))
    num_val = round(cfg.val_fraction * len(y))
    val_idx, train_idx = order[:num_val], order[num_val:]
    if cfg.train_examples is not None:
        if cfg.train_examples > len(train_idx):
            raise ConfigError(
                f"data.train_examples = {cfg.train_examples}: only {len(train_idx)} training "
                f"examples remain after the validation split; allowed 1..{len(train_idx)}"
            )
        train_idx = train_idx[: cfg.train_examples]

    y_train = y[train_idx].copy()
    num_noisy = round(cfg.label_noise * len(y_train))
    if num_noisy:
        noisy = noise_rng.choice(len(y_train), size=num_noisy, replace=False)
        shift = noise_rng.integers(1, NUM_CLASSES, size=num_noisy)  # never the true class
        y_train[noisy] = (y_train[noisy] + shift) % NUM_CLASSES

    return Splits(
        x_train=torch.from_numpy(x[train_idx]),
        y_train=torch.from_numpy(y_train),
        x_val=torch.from_numpy(x[val_idx]),
        y_val=torch.from_numpy(y[val_idx]),
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        num_classes=NUM_CLASSES,
    )
