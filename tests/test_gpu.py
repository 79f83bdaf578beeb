"""CUDA checks, run by `make gpu-check` on a GPU machine (skipped without one)."""

from __future__ import annotations

import pytest
import torch

from studylib.config import DEFAULT_SPEED, Experiment, Speed
from studylib.data import load_splits
from studylib.models import build_model
from studylib.sweep import run_sweep
from studylib.train import fit, resolve_device
from studylib.train.population import fit_population

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SMALL = {
    "name": "gpu",
    "data": {"num_train": 600, "num_test": 200, "val_fraction": 0.25, "train_examples": 300},
    "model": {"arch": "mlp", "hidden": [64, 64]},
    "train": {"lr": 3e-3, "batch_size": 50, "max_epochs": 6, "patience": 3},
}


@pytest.fixture
def exp() -> Experiment:
    return Experiment.model_validate(SMALL)


def trained(exp, splits, speed=DEFAULT_SPEED):
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, splits.input_shape, splits.num_classes).to(splits.x_train.device)
    return fit(model, splits, exp.train, exp.seed, speed=speed)


def test_auto_picks_cuda_and_turns_tf32_on():
    assert resolve_device("auto").type == "cuda"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    else:
        assert torch.backends.cuda.matmul.allow_tf32


def test_a_trial_on_the_gpu_learns_what_it_learns_on_the_cpu(exp, data_cache):
    splits = load_splits(exp.data, exp.seed, data_cache)
    cpu = trained(exp, splits)
    gpu = trained(exp, splits.to(resolve_device("cuda")))  # TF32 matmuls: close, not equal
    for mine, theirs in zip(gpu.history, cpu.history, strict=True):
        assert mine["val/loss"] == pytest.approx(theirs["val/loss"], rel=0.05)
    assert gpu.final["test_acc"] == pytest.approx(cpu.final["test_acc"], abs=0.05)


@pytest.mark.parametrize(
    "speed", [Speed(precision="bf16"), Speed(compile=True), Speed("bf16", True)], ids=str
)
def test_speed_knobs_train_to_the_same_place(exp, data_cache, speed):
    splits = load_splits(exp.data, exp.seed, data_cache).to(resolve_device("cuda"))
    plain = trained(exp, splits)
    fast = trained(exp, splits, speed)
    assert fast.status == plain.status
    assert fast.history[-1]["val/loss"] == pytest.approx(plain.history[-1]["val/loss"], rel=0.1)
    assert set(fast.state_dict) == set(plain.state_dict)  # no "_orig_mod." prefixes


@pytest.fixture
def full_fp32():
    """IEEE float32 matmuls for a test about equal arithmetic, not about TF32's rounding."""
    resolve_device("cuda")  # turns TF32 on
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        before = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        yield
        matmul.fp32_precision = before
    else:
        before = matmul.allow_tf32
        matmul.allow_tf32 = False
        yield
        matmul.allow_tf32 = before


def test_population_on_the_gpu_matches_sequential_trials(exp, data_cache, full_fp32):
    splits = load_splits(exp.data, exp.seed, data_cache).to(torch.device("cuda"))
    exps = [exp.with_values(v) for v in ({}, {"train.l2": 1e-2}, {"train.patience": 1})]
    for member, outcome in zip(exps, fit_population(exps, splits), strict=True):
        alone = trained(member, splits)
        assert outcome.result.stopped_epoch == alone.stopped_epoch
        for mine, theirs in zip(outcome.result.history, alone.history, strict=True):
            assert mine["val/loss"] == pytest.approx(theirs["val/loss"], rel=1e-3)


def test_population_with_dropout_members_trains_on_the_gpu(exp, data_cache):
    # Each member's dropout rate is a buffer: it must follow the weights onto the device.
    splits = load_splits(exp.data, exp.seed, data_cache).to(torch.device("cuda"))
    exps = [exp.with_values({"model.dropout": rate}) for rate in (0.0, 0.3)]
    outcomes = fit_population(exps, splits)
    alone = trained(exps[0], splits)  # the member without dropout is untouched by the other
    assert outcomes[0].result.history[0]["val/loss"] == pytest.approx(
        alone.history[0]["val/loss"], rel=1e-2
    )
    assert outcomes[1].result.final["test_acc"] > 0.15  # above chance (0.1): it learned


def test_two_workers_share_one_gpu(tiny, settings, monkeypatch):
    from dataclasses import replace

    from studylib.sweep import workers

    cores = workers.machine_cores()
    monkeypatch.setattr(workers, "machine_cores", lambda: max(2, cores))
    summary = run_sweep(tiny, replace(settings, device="cuda"), trials=4, workers=2)
    assert summary.trials_done == 4 and summary.trials_run == 4


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_proximal_l1_error_monitor_and_test_curve_on_the_gpu(exp, data_cache, full_fp32, optimizer):
    """Issue 11's training pieces on CUDA: the proximal step reads Adam's state on the device,
    the test curve buffer stays there until the end, and population members match."""
    lr = 1e-2 if optimizer == "adam" else 2e-2
    cfg = {"train.l1_method": "proximal", "train.l1": 1e-2, "train.optimizer": optimizer}
    cfg |= {"train.lr": lr, "train.monitor": "val_error"}
    member = exp.with_values(cfg)
    splits = load_splits(exp.data, exp.seed, data_cache)
    cpu = trained(member, splits)
    cuda = splits.to(torch.device("cuda"))
    torch.manual_seed(member.seed)
    model = build_model(member.model, splits.input_shape, splits.num_classes).to("cuda")
    gpu = fit(model, cuda, member.train, member.seed, test_curve=True)
    assert len(gpu.test_curve) == gpu.stopped_epoch
    assert gpu.final["kept_exact_zeros"] > 0.1
    assert gpu.final["kept_exact_zeros"] == pytest.approx(cpu.final["kept_exact_zeros"], abs=0.02)
    outcomes = fit_population([member, member.with_values({"train.l1": 3e-3})], cuda)
    assert outcomes[0].result.final["kept_exact_zeros"] == pytest.approx(
        gpu.final["kept_exact_zeros"], abs=1e-3
    )
