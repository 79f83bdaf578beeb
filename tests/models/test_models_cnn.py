from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from studylib.cli import main
from studylib.config import Experiment, load_experiment
from studylib.errors import ConfigError
from studylib.models import build_model
from studylib.models.cnn import (
    CNNConfig,
    conv_output_size,
    conv_parameters,
    feature_plan,
    plan,
)

PAPER_BLOCKS = [  # the MNIST-1D paper's CNN: 40 -> 19 -> 10 -> 5 with torch's rounding down
    {"channels": 25, "kernel": 5, "stride": 2, "padding": 1},
    {"channels": 25, "kernel": 3, "stride": 2, "padding": 1},
    {"channels": 25, "kernel": 3, "stride": 2, "padding": 1},
]
SKIP_AND_DENSE_2D = {
    "dims": 2,
    "blocks": [
        {"channels": 8, "kernel": 3, "pool": {"kind": "max", "size": 2}},
        {"type": "residual", "channels": 8},  # identity skip
        {"type": "residual", "channels": 16, "stride": 2},  # projection skip
        {"type": "dense", "layers": 3, "growth": 4},
        {"type": "transition", "channels": 8, "pool": {"kind": "avg", "size": 2}},
    ],
    "head": [12],
    "size_rule": "floor",  # a stride-2 'same' convolution of an even width: (4 - 3 + 2)/2 + 1
}
CASES = {
    "paper-1d": ((40,), {"blocks": PAPER_BLOCKS, "size_rule": "floor"}),
    "default-1d": ((40,), {}),
    "pooled-1d-bn": (
        (40,),
        {
            "batch_norm": True,
            "blocks": [
                {"channels": 16, "kernel": 5, "pool": {"kind": "max", "size": 2}},
                {"channels": 32, "kernel": 1},  # a 1 x 1 convolution: channels change only
                {"channels": 32, "kernel": 3, "padding": 0, "pool": {"kind": "avg", "size": 3}},
            ],
        },
    ),
    "skip-dense-2d": ((8, 8), SKIP_AND_DENSE_2D),
    "skip-dense-2d-bn": ((8, 8), {**SKIP_AND_DENSE_2D, "batch_norm": True}),
}


def test_output_size_is_the_lecture_formula():
    # W' = (W - F + 2P)/S + 1
    assert conv_output_size(32, 5, 1, 2) == 32  # "same"
    assert conv_output_size(40, 4, 2, 1) == 20
    assert conv_output_size(7, 3, 2, 0) == 3
    # torch rounds down; exact sizing refuses: (40 - 5 + 2)/2 + 1 = 19.5
    assert conv_output_size(40, 5, 2, 1, exact=False) == 19
    with pytest.raises(ValueError, match=r"\(40 - 5 \+ 2\*1\)/2 \+ 1 = 19.5 is not a whole"):
        conv_output_size(40, 5, 2, 1)
    # pooling, P = 0: (W - F)/S + 1
    assert conv_output_size(8, 2, 2) == 4
    assert conv_output_size(10, 3, 3, exact=False) == 3
    with pytest.raises(ValueError, match="shrinks to nothing"):
        conv_output_size(3, 5, 1, 0)


def test_parameter_count_is_the_lecture_formula():
    assert conv_parameters(5, 1, 25, dims=1) == (5 * 1 + 1) * 25
    assert conv_parameters(3, 16, 32, dims=2) == (3 * 3 * 16 + 1) * 32
    conv = torch.nn.Conv2d(16, 32, 3)
    assert sum(p.numel() for p in conv.parameters()) == conv_parameters(3, 16, 32, dims=2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_equals_what_torch_builds(case):
    input_shape, fields = CASES[case]
    cfg = CNNConfig(**fields)
    layers = plan(cfg, input_shape, num_classes=10)
    model = build_model(cfg, input_shape, 10)
    seen: dict[str, tuple[int, ...]] = {}
    for layer in layers:
        module = model.get_submodule(layer.module)
        module.register_forward_hook(
            lambda _m, _i, out, name=layer.module: seen.__setitem__(name, tuple(out.shape[1:]))
        )
        if layer.kind != "block":
            assert sum(p.numel() for p in module.parameters()) == layer.params, layer.module
    out = model(torch.randn(3, *input_shape))
    assert out.shape == (3, 10)
    for layer in layers:
        assert seen[layer.module] == layer.out_shape, layer.module
    assert sum(layer.params for layer in layers) == sum(p.numel() for p in model.parameters())


def test_the_papers_cnn_flattens_125_features():
    layers = plan(CNNConfig(blocks=PAPER_BLOCKS, size_rule="floor"), (40,), 10)
    convs = [layer.out_shape for layer in layers if layer.kind == "conv"]
    assert convs == [(25, 19), (25, 10), (25, 5)]
    assert layers[-1].params == (125 + 1) * 10


def test_residual_block_with_zero_weights_is_the_identity():
    # Lecture notes, ResNet: with F(x) = 0 the block passes its input on (after the ReLU).
    cfg = CNNConfig(blocks=[{"type": "residual", "channels": 1}])
    model = build_model(cfg, (12,), 10)
    block = model.blocks[0]
    assert isinstance(block.projection, torch.nn.Identity)
    with torch.no_grad():
        for p in block.unit2.parameters():
            p.zero_()
    x = torch.randn(4, 1, 12)
    assert torch.equal(block(x), torch.relu(x))


def test_dense_block_concatenates_its_input_and_every_layer():
    cfg = CNNConfig(blocks=[{"channels": 5}, {"type": "dense", "layers": 3, "growth": 4}])
    model = build_model(cfg, (16,), 10)
    dense = model.blocks[1]
    assert [u.conv.in_channels for u in dense.units] == [5, 9, 13]
    x = torch.randn(2, 5, 16)
    out = dense(x)
    assert out.shape == (2, 5 + 3 * 4, 16)
    assert torch.equal(out[:, :5], x)  # the block input passes through untouched
    assert torch.equal(out[:, 5:9], dense.units[0](x))


@pytest.mark.parametrize(
    ("where", "blocks", "head_p"), [("blocks", 0.3, 0.0), ("head", 0.0, 0.3), ("both", 0.3, 0.3)]
)
def test_dropout_placement(where, blocks, head_p):
    model = build_model(CNNConfig(dropout=0.3, dropout_at=where), (40,), 10)
    assert (model.block_dropout.p, model.head_dropout.p) == (blocks, head_p)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cnn.toml"
    path.write_text('name = "t"\n' + text)
    return path


def test_a_block_that_shrinks_to_nothing_is_a_config_error(tmp_path):
    blocks = "".join(
        f"[[model.blocks]]\nchannels = 8\nkernel = {k}\nstride = {s}\npadding = 0\n"
        for k, s in ((4, 2), (3, 3), (7, 1))  # 40 -> 19 -> 6 -> (6 - 7)/1 + 1 = 0
    )
    path = write(tmp_path, '[model]\narch = "cnn"\nsize_rule = "floor"\n' + blocks)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "model.blocks[2] (conv)" in message and "(6 - 7 + 2*0)/1 + 1" in message


def test_sizes_that_do_not_divide_are_refused_naming_the_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = "".join(
        f"[[model.blocks]]\nchannels = 8\nkernel = {k}\nstride = 2\npadding = 1\n" for k in (4, 5)
    )  # 40 -> 20 -> (20 - 5 + 2)/2 + 1 = 9.5
    path = write(tmp_path, '[model]\narch = "cnn"\n' + blocks)
    before = set(tmp_path.iterdir())
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "model.blocks[1] (conv)" in err[0] and "9.5 is not a whole number" in err[0]
    assert "size_rule" in err[0]  # says what is allowed
    assert set(tmp_path.iterdir()) == before  # nothing trained, nothing written


def test_a_2d_cnn_on_mnist1d_is_refused(tmp_path):
    path = write(tmp_path, '[model]\narch = "cnn"\ndims = 2\n[[model.blocks]]\nchannels = 4\n')
    with pytest.raises(ConfigError, match=r"model.dims = 2.*shape \(40,\).*model.dims = 1"):
        load_experiment(path)


def test_same_padding_needs_an_odd_kernel(tmp_path):
    path = write(tmp_path, '[model]\narch = "cnn"\n[[model.blocks]]\nchannels = 4\nkernel = 4\n')
    with pytest.raises(ConfigError, match=r"model.blocks\[0\].*odd kernel, got kernel = 4"):
        load_experiment(path)


def test_every_layout_a_cnn_accepts():
    one_d = Experiment(name="a", model={"arch": "cnn"})
    two_d = Experiment(name="b", data={"name": "digits"}, model=SKIP_AND_DENSE_2D | {"arch": "cnn"})
    for exp, batch in ((one_d, torch.randn(2, 40)), (two_d, torch.rand(2, 8, 8))):
        shape = exp.data.input_shape
        assert len(feature_plan(exp.model, shape)) > 0
        model = build_model(exp.model, shape, 10)
        assert model(batch).shape == (2, 10)
        assert math.prod(shape) == batch[0].numel()
