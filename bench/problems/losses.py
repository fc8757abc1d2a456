"""Per-run losses: each returns one value per run, the mean over the batch (shape (R,))."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError


def _like(pred: Tensor, target: Tensor) -> Tensor:
    """The target laid out like the prediction. Only the run dimension may broadcast, and a
    scalar target (R, B) may meet a prediction (R, B, 1): anything else is a model whose heads do
    not fit the data, which broadcasting would hide (a 2-output head against 1-output targets)."""
    if target.dim() == pred.dim() - 1 and pred.shape[-1] == 1:
        target = target.unsqueeze(-1)
    if (target.dim() != pred.dim() or target.shape[1:] != pred.shape[1:]
            or target.shape[0] not in (1, pred.shape[0])):
        raise ConfigError("problem", "heads whose predictions have their targets' shape (runs, batch, ...)",
                          f"predictions {tuple(pred.shape)} for targets {tuple(target.shape)}")
    return target.expand_as(pred)


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the batch and every output of each run."""
    target = _like(pred, target)
    # mse_loss's fused kernels take fewer passes over the batch than (pred - target)^2.
    return F.mse_loss(pred, target, reduction="none").flatten(1).mean(dim=1)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -1) -> Tensor:
    """Mean cross-entropy per run. logits (R, B, C, ...) with classes on dim 2; target (R, B, ...)
    of class indices; entries equal to `ignore_index` count for nothing."""
    R, B, C = logits.shape[:3]
    if target.shape != (R, B, *logits.shape[3:]):
        raise ConfigError("problem", "heads whose logits are (runs, batch, classes, ...) for targets "
                          "(runs, batch, ...)", f"logits {tuple(logits.shape)} for targets {tuple(target.shape)}")
    flat = logits.reshape(R * B, C, *logits.shape[3:])
    losses = F.cross_entropy(flat, target.reshape(R * B, *target.shape[2:]), reduction="none",
                             ignore_index=ignore_index).view(R, -1)
    valid = (target.reshape(R, -1) != ignore_index).sum(dim=1).clamp_min(1)
    return losses.sum(dim=1) / valid
