"""What a batch's loss and score are, per task: the only part of training that knows the task.

- "classify": y is (N,) class labels; loss = mean cross-entropy over the batch's examples;
  accuracy = share of examples whose argmax is the label.
- "seq2seq": y is (N, T) target ids <bos> w_1 .. w_n <eos> <pad>..; with teacher forcing the
  model reads y[:, :-1] and predicts y[:, 1:]; loss = cross-entropy per target token, padding
  left out; accuracy = exact match: greedy decoding (batched, on the device) reproduces every
  target token up to and including <eos>.

`score` returns sums (loss, units the loss is averaged over, correct examples) so one
evaluation function can add them up over batches of any split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from studylib.tokens import PAD_ID


class Classification:
    name = "classify"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(summed loss, examples, correct) as one float tensor of shape (3,)."""
        logits = model(x).float()  # (B, C)
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        correct = (logits.argmax(dim=1) == y).sum()
        # new_full, not new_tensor: a tensor made from a host number is a copy to the device,
        # and on CUDA a blocking copy waits for the GPU (a host sync per evaluation).
        return torch.stack([loss_sum, loss_sum.new_full((), len(y)), correct.float()])


class SequenceToSequence:
    name = "seq2seq"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x, y[:, :-1])  # (B, T - 1, V): teacher forcing
        return F.cross_entropy(logits.flatten(0, 1), y[:, 1:].flatten(), ignore_index=PAD_ID)

    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(summed token loss, target tokens, exact matches) as a float tensor of shape (3,)."""
        target = y[:, 1:]  # (B, T - 1)
        logits = model(x, y[:, :-1]).float()
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID, reduction="sum"
        )
        real = target != PAD_ID
        decoded = model.greedy(x, target.shape[1])  # (B, T - 1)
        exact = ((decoded == target) | ~real).all(dim=1).sum()
        return torch.stack([loss_sum, real.sum().float(), exact.float()])


TASKS = {task.name: task for task in (Classification(), SequenceToSequence())}
