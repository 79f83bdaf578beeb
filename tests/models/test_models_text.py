"""Models on token ids: TextCNN, the RNN and the Transformer with padding masks, and the
encoder-decoder's cross-attention and greedy decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from studylib.models import build_model
from studylib.models.rnn import RNNConfig
from studylib.models.seq2seq import Seq2SeqConfig
from studylib.models.textcnn import TextCNNConfig
from studylib.models.transformer import (
    MultiHeadAttention,
    TransformerConfig,
    attention_allowed,
)
from studylib.tokens import BOS_ID, PAD_ID

VOCAB, CLASSES, T = 30, 5, 9


def token_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids with real lengths 9, 4, 1 and 6, right-padded with PAD_ID; and the lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 4, 1, 6])
    x = torch.randint(4, VOCAB, (4, T), generator=gen)
    x[torch.arange(T) >= lengths[:, None]] = PAD_ID
    return x, lengths


def junk_in_padding(x: torch.Tensor) -> torch.Tensor:
    """The same real tokens, random ids where there was padding."""
    junk = torch.randint(4, VOCAB, x.shape, generator=torch.Generator().manual_seed(7))
    return torch.where(x == PAD_ID, junk, x)


MODELS = [
    TextCNNConfig(kernels=(2, 3, 5), filters=8, embed=12),
    RNNConfig(cell="gru", hidden=8, embed=6, readout="last"),
    RNNConfig(cell="lstm", hidden=8, embed=6, readout="flatten", layers=2),
    RNNConfig(cell="gru", hidden=8, embed=6, readout="mean", bidirectional=True),
    RNNConfig(cell="rnn", hidden=8, embed=6, readout="max"),
    TransformerConfig(d_model=16, heads=4, layers=2, ff=32, patch=1, pooling="cls"),
    TransformerConfig(d_model=16, heads=2, layers=1, ff=32, patch=1, pooling="mean"),
]


@pytest.mark.parametrize("cfg", MODELS, ids=lambda c: f"{c.arch}-{getattr(c, 'readout', '')}")
def test_padding_has_no_effect_on_the_prediction(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, (T,), CLASSES, VOCAB).eval()
    x, lengths = token_batch()
    padding = x == PAD_ID
    out = model(x)  # the mask defaults to x == PAD_ID
    assert out.shape == (4, CLASSES)
    assert torch.allclose(model(x, padding), out, atol=1e-6)
    # Whatever sits at padded positions, an explicit mask hides it.
    assert torch.allclose(model(junk_in_padding(x), padding), out, atol=1e-5)
    # More padding changes nothing either (for readouts whose width does not depend on T).
    if getattr(cfg, "readout", "") != "flatten" and cfg.arch != "transformer":
        wider = F.pad(x, (0, 3), value=PAD_ID)
        assert torch.allclose(model(wider), out, atol=1e-5)
        assert torch.allclose(model(x[2:3, :1]), out[2:3], atol=1e-5)  # the 1-token word alone


def test_padded_keys_get_zero_attention_in_the_token_transformer():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(d_model=16, heads=4, patch=1), (T,), CLASSES, VOCAB)
    x, lengths = token_batch()
    seen = []
    hook = model.layers[0].attn.register_forward_hook(
        lambda _module, args, out: seen.append(args[1])
    )
    model.eval()(x)
    hook.remove()
    padding = seen[0]  # (B, 1 + T): the class token never padding, then x == PAD_ID
    assert torch.equal(padding[:, 1:], x == PAD_ID) and not padding[:, 0].any()
    attn = model.layers[0].attn
    h = torch.randn(4, T + 1, 16)
    _, weights = attn(h, padding, return_weights=True)  # (B, h, T + 1, T + 1)
    assert (weights.masked_select(padding[:, None, None, :].expand_as(weights)) == 0).all()


def test_textcnn_kernels_span_the_embedding_and_pool_over_time():
    cfg = TextCNNConfig(embed=12, kernels=(2, 3), filters=5)
    model = build_model(cfg, (T,), CLASSES, VOCAB)
    for conv, kernel in zip(model.convs, (2, 3), strict=True):
        assert conv.weight.shape == (5, 12, kernel)  # K filters of F x d
        assert sum(p.numel() for p in conv.parameters()) == (kernel * 12 + 1) * 5
    assert model.head.in_features == 2 * 5  # one max per filter per kernel size
    # Max over time: in a sequence of one repeated token, where the one other token sits does
    # not matter (away from the ends, every window's content recurs).
    model.eval()
    inner = torch.full((1, 7), 5)
    inner[0, 3] = 9
    assert torch.allclose(model(inner), model(torch.roll(inner, 1, dims=1)), atol=1e-6)
    assert not torch.allclose(model(inner), model(torch.full((1, 7), 5)))


def test_the_swept_dropout_reaches_textcnn():
    model = build_model(TextCNNConfig(dropout=0.3), (T,), CLASSES, VOCAB)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}


# ---------------------------------------------------------------------------------------------
# Encoder-decoder: cross-attention and decoding


def test_cross_attention_equals_torch_sdpa_on_the_same_weights():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, attn_dropout=0.0)
    queries = torch.randn(3, 5, 16)  # decoder side, T = 5
    memory = torch.randn(3, 8, 16)  # encoder side, S = 8
    padding = torch.zeros(3, 8, dtype=torch.bool)
    padding[1, 6:] = True
    ours, weights = attn(queries, padding, memory=memory, return_weights=True)
    q = attn.split_heads(attn.w_q(queries))  # queries from the decoder ...
    k, v = attn.split_heads(attn.w_k(memory)), attn.split_heads(attn.w_v(memory))  # ... K, V not
    allowed = attention_allowed(padding, False, 5, 8, queries.device)
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, h, T, d_k)
    reference = attn.w_o(heads.transpose(1, 2).reshape(3, 5, 16))
    assert ours.shape == (3, 5, 16) and weights.shape == (3, 4, 5, 8)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert (weights[1, :, :, 6:] == 0).all()


def seq2seq_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=2, ff=32)
    return build_model(cfg, (6,), VOCAB, VOCAB, shared_vocab=True).eval()


SOURCE_VOCAB = 250  # BPE ids on the encoder's side; the decoder writes VOCAB characters


def test_the_encoder_may_read_tokens_of_its_own_while_the_decoder_writes_characters():
    cfg = Seq2SeqConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=1, ff=32)
    torch.manual_seed(0)
    shared = build_model(cfg, (6,), VOCAB, VOCAB, shared_vocab=True)
    assert shared.source_embed is None  # one table for characters in and out
    torch.manual_seed(0)
    untied = build_model(
        cfg.model_copy(update={"share_embeddings": False}), (6,), VOCAB, VOCAB, True
    )
    # Same draws up to the extra table, which comes last: only the source's table differs.
    for name, weight in shared.state_dict().items():
        assert torch.equal(untied.state_dict()[name], weight), name
    assert set(untied.state_dict()) - set(shared.state_dict()) == {"source_embed.weight"}

    torch.manual_seed(0)
    model = build_model(cfg, (6,), VOCAB, SOURCE_VOCAB).eval()  # shared_vocab False: BPE in
    assert model.source_embed.num_embeddings == SOURCE_VOCAB
    assert model.embed.num_embeddings == VOCAB == model.head.out_features
    src = torch.randint(4, SOURCE_VOCAB, (4, 5))
    src[1, 3:] = PAD_ID
    tgt = torch.randint(4, VOCAB, (4, 6))
    tgt[:, 0] = BOS_ID
    assert model(src, tgt).shape == (4, 6, VOCAB)
    decoded = model.greedy(src, 6)
    assert decoded.max() < VOCAB
    with torch.no_grad():  # the incremental decoder still equals decoding from scratch
        memory, padding = model.encode(src)
        out = torch.full((4, 1), BOS_ID)
        for _ in range(6):
            logits = model.decode(out, memory, padding)[:, -1]
            out = torch.cat([out, logits.argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(decoded, out[:, 1:])
    with pytest.raises(ValueError, match="share_embeddings"):
        build_model(cfg.model_copy(update={"share_embeddings": True}), (6,), VOCAB, SOURCE_VOCAB)


def test_decoder_is_causal_and_reads_the_source_through_cross_attention():
    model = seq2seq_model()
    src, _ = token_batch()
    tgt = torch.randint(4, VOCAB, (4, 6))
    tgt[:, 0] = BOS_ID
    out = model(src, tgt)  # (B, T, vocab)
    assert out.shape == (4, 6, VOCAB)
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 4) % (VOCAB - 4) + 4
    later = model(src, changed)
    assert torch.allclose(later[:, :4], out[:, :4], atol=1e-6)  # causal self-attention
    assert not torch.allclose(later[:, 4:], out[:, 4:])
    other_source = model(src.roll(1, dims=0), tgt)
    assert not torch.allclose(other_source[:, 0], out[:, 0])  # the decoder reads the encoder
    # Source padding is hidden from the encoder's and the cross-attention's keys.
    assert torch.allclose(model(F.pad(src, (0, 4), value=PAD_ID), tgt), out, atol=1e-5)


def test_incremental_greedy_decoding_equals_decoding_from_scratch():
    model = seq2seq_model(1)
    src, _ = token_batch(3)
    steps = 7
    fast = model.greedy(src, steps)
    memory, padding = model.encode(src)
    out = torch.full((4, 1), BOS_ID)
    with torch.no_grad():
        for _ in range(steps):  # recompute the whole prefix every step
            logits = model.decode(out, memory, padding)[:, -1]
            out = torch.cat([out, logits.argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(fast, out[:, 1:])
