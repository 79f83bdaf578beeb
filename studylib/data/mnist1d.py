"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package and cached on disk.

`make_dataset(get_dataset_args())` builds the data set in under a second without a network;
`get_dataset` would try a download, so it is never called. The generator reseeds Python's and
numpy's global generators; their states are put back afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np

from studylib.config import DataConfig
from studylib.data.splits import NUM_CLASSES

# Peak memory of `make_dataset` per generated value: 38 bytes measured here (50,000 examples of
# length 40, and 5,000 of length 400: 34), float64 intermediates and their copies.
GENERATION_BYTES_PER_VALUE = 40


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

    # start-up cost: 0.8 s, paid only when the cache misses
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
