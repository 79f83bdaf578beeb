from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from studylib.config import DataConfig
from studylib.data import load_splits
from studylib.data import splits as data_module
from studylib.data.mnist1d import mnist1d_arrays
from studylib.errors import ConfigError

SMALL = DataConfig(num_train=600, num_test=200, val_fraction=0.25)


def rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def test_generation_matches_the_papers_defaults(data_cache):
    arrays = mnist1d_arrays(DataConfig(), data_cache)
    assert arrays["x"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40)
    assert arrays["x"].dtype == np.float32 and arrays["y"].dtype == np.int64
    assert np.bincount(arrays["y"], minlength=10).min() > 300  # all ten digits present


def test_generation_restores_global_rngs_and_caches(tmp_path, monkeypatch):
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    first = mnist1d_arrays(SMALL, tmp_path)
    assert (random.random(), np.random.rand()) == expected  # make_dataset reseeds; we restore
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1

    import mnist1d.data

    def no_generation(*_args, **_kwargs):
        raise AssertionError("second call must read the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    second = mnist1d_arrays(SMALL, tmp_path)
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_splits_are_disjoint_and_sized(data_cache):
    splits = load_splits(SMALL, seed=0, cache_dir=data_cache)
    assert len(splits.y_val) == 150 and len(splits.y_train) == 450 and len(splits.y_test) == 200
    train, val, test = rows(splits.x_train), rows(splits.x_val), rows(splits.x_test)
    assert len(train) == 450 and len(val) == 150
    assert not train & val and not train & test and not val & test


def test_split_is_seeded(data_cache):
    a = load_splits(SMALL, seed=3, cache_dir=data_cache)
    b = load_splits(SMALL, seed=3, cache_dir=data_cache)
    c = load_splits(SMALL, seed=4, cache_dir=data_cache)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)


def test_knobs_touch_training_split_only(data_cache):
    arrays = mnist1d_arrays(SMALL, data_cache)
    clean = load_splits(SMALL, seed=0, cache_dir=data_cache)
    noisy_cfg = SMALL.model_copy(update={"label_noise": 0.2, "train_examples": 100})
    noisy = load_splits(noisy_cfg, seed=0, cache_dir=data_cache)
    # Validation and test are the same examples with the same labels.
    assert torch.equal(noisy.x_val, clean.x_val) and torch.equal(noisy.y_val, clean.y_val)
    assert torch.equal(noisy.x_test, torch.from_numpy(arrays["x_test"]))
    assert torch.equal(noisy.y_test, torch.from_numpy(arrays["y_test"]))
    # Training keeps 100 examples, 20 of them with a wrong label.
    assert len(noisy.y_train) == 100
    assert torch.equal(noisy.x_train, clean.x_train[:100])
    assert int((noisy.y_train != clean.y_train[:100]).sum()) == 20


def test_too_many_training_examples_is_a_config_error(data_cache):
    cfg = SMALL.model_copy(update={"train_examples": 451})
    with pytest.raises(ConfigError, match=r"data.train_examples = 451.*1\.\.450"):
        load_splits(cfg, seed=0, cache_dir=data_cache)


def test_splits_move_to_device(data_cache):
    splits = load_splits(SMALL, seed=0, cache_dir=data_cache).to(torch.device("cpu"))
    assert splits.input_shape == (40,) and splits.num_classes == data_module.NUM_CLASSES


# ---------------------------------------------------------------------------------------------
# scikit-learn's 8 x 8 digits

DIGITS = DataConfig(name="digits")


def test_digits_split_sizes_and_fixed_stratified_test_set():
    splits = load_splits(DIGITS, seed=0, cache_dir=Path("unused"))
    assert splits.input_shape == (8, 8) == DIGITS.input_shape
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (1150, 287, 360)
    assert np.bincount(splits.y_test.numpy()).tolist() == [36] * 10  # stratified
    assert float(splits.x_train.min()) == 0.0 and float(splits.x_train.max()) == 1.0
    other = load_splits(DIGITS, seed=7, cache_dir=Path("unused"))
    # The test set is fixed; the validation split follows the run's seed.
    assert torch.equal(other.x_test, splits.x_test) and torch.equal(other.y_test, splits.y_test)
    assert not torch.equal(other.x_val, splits.x_val)
    train, val, test = rows(splits.x_train), rows(splits.x_val), rows(splits.x_test)
    assert len(train) + len(val) + len(test) > 1700  # a few digits are pixel-identical
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 1797


def test_digits_knobs_touch_training_split_only():
    clean = load_splits(DIGITS, seed=0, cache_dir=Path("unused"))
    cfg = DIGITS.model_copy(update={"train_examples": 200, "label_noise": 0.1})
    noisy = load_splits(cfg, seed=0, cache_dir=Path("unused"))
    assert torch.equal(noisy.x_val, clean.x_val) and torch.equal(noisy.y_val, clean.y_val)
    assert torch.equal(noisy.y_test, clean.y_test)
    assert len(noisy.y_train) == 200
    assert int((noisy.y_train != clean.y_train[:200]).sum()) == 20


def test_mnist1d_generation_fields_are_refused_for_digits():
    with pytest.raises(ValueError, match=r"data.length = 64 applies to mnist1d only"):
        DataConfig(name="digits", length=64)


@pytest.mark.parametrize("cfg", [SMALL, DIGITS, SMALL.model_copy(update={"length": 24})])
def test_declared_input_shape_is_what_loading_gives(cfg, data_cache):
    # Models are checked against `input_shape` at load time, before any data exists.
    DataConfig.model_validate(cfg.model_dump())
    assert load_splits(cfg, seed=0, cache_dir=data_cache).input_shape == cfg.input_shape


# Issue 15: random labels (Zhang et al. 2017), not label noise at 1


def test_random_labels_are_uniform_and_independent_of_the_truth(data_cache):
    big = DataConfig(num_train=4000, num_test=200, val_fraction=0.2)
    clean = load_splits(big, seed=0, cache_dir=data_cache)
    shuffled = load_splits(big.model_copy(update={"random_labels": True}), 0, data_cache)
    counts = np.bincount(shuffled.y_train.numpy(), minlength=10)
    # 3,200 draws over 10 classes: each count is 320 +/- 17 (binomial sd); a chi-square test of
    # uniformity with 9 degrees of freedom keeps p well above 0.001.
    assert chisquare(counts).pvalue > 1e-3
    # Independent of the example: the true class comes back about 1 time in 10 (label_noise
    # never gives it back, so its labels would agree 0 times in 10).
    agree = float((shuffled.y_train == clean.y_train).float().mean())
    assert 0.08 < agree < 0.12
    # Validation and test keep their true labels; the training examples are the same ones.
    assert torch.equal(shuffled.x_train, clean.x_train)
    assert torch.equal(shuffled.y_val, clean.y_val) and torch.equal(shuffled.y_test, clean.y_test)
    # Seeded, and a stream apart from the split's: seed 0 again gives the same labels.
    again = load_splits(big.model_copy(update={"random_labels": True}), 0, data_cache)
    assert torch.equal(again.y_train, shuffled.y_train)


def test_a_net_fitted_to_random_labels_scores_chance_on_test(data_cache):
    """True by construction (labels independent of the inputs), checked on the real pipeline:
    an MLP that memorizes random labels scores test accuracy within chance's binomial band."""
    from studylib.config import TrainConfig
    from studylib.models import build_model
    from studylib.models.mlp import MLPConfig
    from studylib.train import fit

    cfg = DataConfig(num_train=1200, num_test=1000, val_fraction=0.25, random_labels=True)
    splits = load_splits(cfg, seed=0, cache_dir=data_cache)
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=(128,)), (40,), 10)
    train = TrainConfig(lr=3e-3, max_epochs=60, early_stopping=False)
    result = fit(model, splits, train, seed=0)
    assert result.history[-1]["train/acc"] > 0.6  # it memorizes a good part of the noise
    # 1,000 test examples at p = 0.1: sd 0.0095, so [0.06, 0.14] is over four sd each side.
    assert 0.06 < result.final["test_acc"] < 0.14


def test_random_labels_refuse_label_noise_and_text():
    with pytest.raises(ValueError, match="random_labels"):
        DataConfig(random_labels=True, label_noise=0.2)
    with pytest.raises(ValueError, match="random_labels"):
        DataConfig(name="words", random_labels=True)
