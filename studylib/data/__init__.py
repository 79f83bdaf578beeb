"""Data: takes a `DataConfig` and a seed, gives `Splits` (train / validation / test tensors).

MNIST-1D generated offline (mnist1d.py), scikit-learn's 8 x 8 digits (digits.py) or words from
wordfreq (text.py); validation is carved from the training pool with the run's seed
(splits.py). Nothing here knows about models, training or tracking.
"""

from __future__ import annotations

from pathlib import Path

from studylib.config import DataConfig
from studylib.data.digits import DIGITS_POOL, digits_arrays
from studylib.data.mnist1d import GENERATION_BYTES_PER_VALUE, mnist1d_arrays
from studylib.data.splits import Splits, check_carve, split_pool
from studylib.data.text import load_text_splits, pool_words

__all__ = ["Splits", "check_data", "data_bytes", "load_splits"]


def load_splits(cfg: DataConfig, seed: int, cache_dir: Path) -> Splits:
    """The splits of `cfg` for `seed`: a seeded validation carve, the untouched test set."""
    if cfg.is_text:
        return load_text_splits(cfg, seed, cache_dir)
    arrays = mnist1d_arrays(cfg, cache_dir) if cfg.name == "mnist1d" else digits_arrays()
    return split_pool(arrays, cfg, seed)


def check_data(cfg: DataConfig, cache_dir: Path) -> None:
    """The split sizes `load_splits` will carve, checked from the config alone (ConfigError),
    before any study or run exists: nothing is written, not even the cache."""
    if cfg.is_text:
        check_carve(cfg, pool_words(cfg, cache_dir), "words")
    else:
        check_carve(cfg, cfg.num_train if cfg.name == "mnist1d" else DIGITS_POOL, "examples")


def data_bytes(cfg: DataConfig) -> int:
    """Memory that making the data set takes at its peak (MNIST-1D's generator); the digits
    and word lists are small and bounded."""
    if cfg.name != "mnist1d":
        return 0
    return (cfg.num_train + cfg.num_test) * cfg.length * GENERATION_BYTES_PER_VALUE
