"""Loss and score per task: per-token cross-entropy without padding, exact match by greedy
decoding, and one evaluation function adding batches up for both tasks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from studylib.tokens import BOS_ID, EOS_ID, PAD_ID
from studylib.train import loop as train_module
from studylib.train.tasks import TASKS

VOCAB = 8


class Scripted(nn.Module):
    """A 'seq2seq model' whose logits and greedy output are fixed in advance; the source's
    first token is the example's row."""

    def __init__(self, logits: torch.Tensor, decoded: torch.Tensor):
        super().__init__()
        self.logits, self.decoded = logits, decoded

    def forward(self, src, tgt_in):
        return self.logits[src[:, 0], : tgt_in.shape[1]]

    def greedy(self, src, steps):
        return self.decoded[src[:, 0], :steps]


def targets() -> torch.Tensor:
    # <bos> 5 6 <eos> <pad>  and  <bos> 7 <eos> <pad> <pad>
    return torch.tensor([[BOS_ID, 5, 6, EOS_ID, PAD_ID], [BOS_ID, 7, EOS_ID, PAD_ID, PAD_ID]])


def test_seq2seq_loss_is_per_target_token_and_skips_padding():
    y = targets()
    logits = torch.randn(2, 4, VOCAB)
    model = Scripted(logits, y[:, 1:])
    loss = TASKS["seq2seq"].loss(model, torch.arange(2)[:, None], y)
    real = [(0, 0, 5), (0, 1, 6), (0, 2, EOS_ID), (1, 0, 7), (1, 1, EOS_ID)]  # 5 target tokens
    expected = sum(-F.log_softmax(logits[b, t], -1)[tok] for b, t, tok in real) / len(real)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


def test_exact_match_needs_every_token_up_to_eos_and_ignores_what_follows():
    y = targets()
    src = torch.arange(2)[:, None]
    right_then_junk = torch.tensor([[5, 6, EOS_ID, 4], [7, EOS_ID, 5, 5]])
    score = TASKS["seq2seq"].score(Scripted(torch.randn(2, 4, VOCAB), right_then_junk), src, y)
    assert score[1].item() == 5 and score[2].item() == 2  # 5 target tokens, 2 exact matches
    no_eos = torch.tensor([[5, 6, 6, 4], [7, EOS_ID, 5, 5]])  # first word runs on past its end
    score = TASKS["seq2seq"].score(Scripted(torch.randn(2, 4, VOCAB), no_eos), src, y)
    assert score[2].item() == 1


def test_evaluate_adds_batches_up_the_same_way_for_both_tasks(monkeypatch):
    y = targets().repeat(3, 1)  # 6 words, 15 target tokens
    logits = torch.randn(6, 4, VOCAB)
    decoded = y[:, 1:].clone()
    decoded[0, 0] = 4  # one word wrong
    model = Scripted(logits, decoded)
    src = torch.arange(6)[:, None].expand(6, 3)
    whole = train_module.evaluate(model, src, y, "seq2seq")
    monkeypatch.setattr(train_module, "EVAL_BATCH", 4)  # batches of 4 and 2
    batched = train_module.evaluate(model, src, y, "seq2seq")
    assert torch.allclose(whole, batched)
    expected_loss = F.cross_entropy(
        logits.flatten(0, 1), y[:, 1:].flatten(), ignore_index=PAD_ID
    ).item()
    assert math.isclose(whole[0].item(), expected_loss, rel_tol=1e-5)
    assert math.isclose(whole[1].item(), 5 / 6, rel_tol=1e-6)
    # Classification: mean cross-entropy over examples and accuracy, as before.
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    loss, acc = train_module.evaluate(nn.Identity(), scores, labels).tolist()
    assert math.isclose(loss, F.cross_entropy(scores, labels).item(), rel_tol=1e-6)
    assert math.isclose(acc, 2 / 3, rel_tol=1e-6)
