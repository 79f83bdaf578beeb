"""scikit-learn's 8 x 8 digits: shipped inside scikit-learn, no download.

1,797 images of 8 x 8 pixels valued 0..16, scaled to [0, 1]. A fixed test split of 36 images
per class (360 in all), drawn once with DIGITS_TEST_SEED and the same for every run and seed;
the other 1,437 are the pool that validation is carved from with the run's seed, as for
MNIST-1D.
"""

from __future__ import annotations

import numpy as np

from studylib.data.splits import NUM_CLASSES

DIGITS_TEST_PER_CLASS = 36  # 360 test images: 20% of 1,797, the same share as MNIST-1D's test
DIGITS_TEST_SEED = 1797  # fixes which images are test, whatever the run's seed
DIGITS_IMAGES = 1797
DIGITS_POOL = DIGITS_IMAGES - DIGITS_TEST_PER_CLASS * NUM_CLASSES  # what validation is carved from


def digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8) floats in [0, 1], with the fixed stratified test split."""
    from sklearn.datasets import load_digits  # start-up cost: 1.1 s, digits studies only

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_TEST_SEED)
    test = np.zeros(len(y), dtype=bool)
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(y == digit)
        test[rng.choice(members, size=DIGITS_TEST_PER_CLASS, replace=False)] = True
    return {"x": x[~test], "y": y[~test], "x_test": x[test], "y_test": y[test]}
