"""One file per model family; `build_model` turns a validated config into an `nn.Module`.

`ModelConfig` is a union told apart by `arch` ("mlp", "cnn", "rnn", "transformer", "textcnn",
"seq2seq"; an experiment file without `arch` gets the MLP). Every config has `check_input(input_shape)`,
which raises ValueError when the family cannot read examples of that shape (a 2-D CNN given
MNIST-1D's (40,) signals, say) or when its sizes do not work out; `Experiment` calls it at
load time, so such a config is rejected before any training. Token ids (text) have the shape
None there, since the tokenizer decides their length.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Discriminator, Tag
from torch import nn

from studylib.models.cnn import BLOCK_CONFIGS, CNN, CNNConfig
from studylib.models.mlp import MLP, MLPConfig
from studylib.models.rnn import RNN, RNNConfig
from studylib.models.seq2seq import Seq2Seq, Seq2SeqConfig
from studylib.models.textcnn import TextCNN, TextCNNConfig
from studylib.models.transformer import Transformer, TransformerConfig

ARCHS = {
    "mlp": MLPConfig,
    "cnn": CNNConfig,
    "rnn": RNNConfig,
    "transformer": TransformerConfig,
    "textcnn": TextCNNConfig,
    "seq2seq": Seq2SeqConfig,
}


def _arch_of(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("arch", "mlp")
    return getattr(value, "arch", None)


ModelConfig = Annotated[
    Annotated[MLPConfig, Tag("mlp")]
    | Annotated[CNNConfig, Tag("cnn")]
    | Annotated[RNNConfig, Tag("rnn")]
    | Annotated[TransformerConfig, Tag("transformer")]
    | Annotated[TextCNNConfig, Tag("textcnn")]
    | Annotated[Seq2SeqConfig, Tag("seq2seq")],
    Discriminator(_arch_of),
]

# Tags pydantic writes into error locations of the unions above, mapped to their classes.
UNION_TAGS: dict[str, type] = {**ARCHS, **BLOCK_CONFIGS}


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None = None,
    shared_vocab: bool = False,
) -> nn.Module:
    """`input_shape` is one example's shape, without the batch axis; `vocab_size` is given
    when examples are token ids (text), and then they are embedded. seq2seq: `num_classes` is
    the target vocabulary, `vocab_size` the source's, `shared_vocab` whether their ids are the
    same tokens (Splits.shared_vocab)."""
    if isinstance(cfg, MLPConfig):
        return MLP(cfg, math.prod(input_shape), num_classes)
    if isinstance(cfg, CNNConfig):
        return CNN(cfg, input_shape, num_classes)
    if isinstance(cfg, RNNConfig):
        return RNN(cfg, input_shape, num_classes, vocab_size)
    if isinstance(cfg, TransformerConfig):
        return Transformer(cfg, input_shape, num_classes, vocab_size)
    if isinstance(cfg, (TextCNNConfig, Seq2SeqConfig)):
        if vocab_size is None:
            raise ValueError(f"{cfg.arch} reads token ids: build_model needs the vocab_size")
        if isinstance(cfg, TextCNNConfig):
            return TextCNN(cfg, vocab_size, num_classes)
        return Seq2Seq(cfg, vocab_size, num_classes, shared_vocab)
    raise TypeError(f"no model for config {type(cfg).__name__}")
