"""Data: takes a `DataConfig` and a seed, gives `Splits` (train / validation / test tensors).

MNIST-1D generated offline (mnist1d.py), scikit-learn's 8 x 8 digits (digits.py) or words from
wordfreq (text.py); validation is carved from the training pool with the run's seed
(splits.py). Nothing here knows about models, training or tracking.
"""

from __future__ import annotations

from pathlib import Path

from studylib.config import DataConfig
from studylib.data.digits import digits_arrays
from studylib.data.mnist1d import mnist1d_arrays
from studylib.data.splits import Splits, split_pool
from studylib.data.text import load_text_splits

__all__ = ["Splits", "load_splits"]


def load_splits(cfg: DataConfig, seed: int, cache_dir: Path) -> Splits:
    """The splits of `cfg` for `seed`: a seeded validation carve, the untouched test set."""
    if cfg.is_text:
        return load_text_splits(cfg, seed, cache_dir)
    arrays = mnist1d_arrays(cfg, cache_dir) if cfg.name == "mnist1d" else digits_arrays()
    return split_pool(arrays, cfg, seed)
