"""Train: takes a model, `Splits` and a `TrainConfig`, gives a `TrainResult` (per-epoch history,
kept epoch, final and test figures, kept weights).

loop.py is `fit` and the epoch step it shares with population training (population.py: many
trials as one `torch.vmap`-ed model); regularizers.py the penalties and decay; stopping.py the
early-stopping rules; gradients.py per-layer gradient norms; tasks.py what a loss and a score
are per task; device.py the device and the speed knobs. Nothing here talks to MLflow or Optuna:
a caller sees each epoch through `on_epoch`.
"""

from __future__ import annotations

from studylib.train.device import resolve_device
from studylib.train.loop import EpochCallback, TrainResult, evaluate, fit

__all__ = ["EpochCallback", "TrainResult", "evaluate", "fit", "resolve_device"]
