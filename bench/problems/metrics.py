"""Per-task evaluation metrics beyond the loss, accumulated over chunks of a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.problems.base import Metric


def _sum_over_batch(values: Tensor) -> Tensor:
    """(R, B, ...) -> (R, 1): sum over the batch of the per-example mean over remaining dims."""
    per_example = values.reshape(values.shape[0], values.shape[1], -1).mean(dim=2)
    return per_example.sum(dim=1, keepdim=True)


def rms_metric(name: str = "rms") -> Metric:
    """Root mean squared error over all outputs of the split."""
    return Metric(
        name=name,
        batch_stats=lambda pred, target: _sum_over_batch((pred - target).square()),
        finalize=lambda stats, n: (stats[:, 0] / n).sqrt(),
    )


def accuracy_metric(name: str = "accuracy", ignore_index: int = -1) -> Metric:
    """Fraction of labelled entries whose arg-max class (logits' dim 2) is the target class;
    for images, pixel accuracy."""

    def stats(logits: Tensor, target: Tensor) -> Tensor:
        R = logits.shape[0]
        valid = (target != ignore_index).reshape(R, -1)
        correct = ((logits.argmax(dim=2) == target).reshape(R, -1) & valid).sum(dim=1)
        return torch.stack([correct, valid.sum(dim=1)], dim=1).double()

    return Metric(name=name, batch_stats=stats, finalize=lambda s, n: s[:, 0] / s[:, 1].clamp_min(1),
                  higher_is_better=True)


def mean_iou_metric(classes: int, name: str = "miou", ignore_index: int = -1) -> Metric:
    """Mean intersection over union over the classes present (segmentation)."""

    def stats(logits: Tensor, target: Tensor) -> Tensor:
        R = logits.shape[0]
        pred = logits.argmax(dim=2).reshape(R, -1)
        target = target.reshape(R, -1)
        valid = target != ignore_index
        inter, union = [], []
        for c in range(classes):
            p, t = (pred == c) & valid, (target == c) & valid
            inter.append((p & t).sum(dim=1))
            union.append((p | t).sum(dim=1))
        return torch.cat([torch.stack(inter, 1), torch.stack(union, 1)], dim=1).double()

    def finalize(s: Tensor, n: int) -> Tensor:
        inter, union = s[:, :classes], s[:, classes:]
        present = union > 0
        return (inter / union.clamp_min(1) * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)

    return Metric(name=name, batch_stats=stats, finalize=finalize, higher_is_better=True)


def masked_rms_metric(name: str = "rms") -> Metric:
    """Root mean squared error over valid entries (target != 0), e.g. depth pixels."""

    def stats(pred: Tensor, target: Tensor) -> Tensor:
        R = pred.shape[0]
        valid = (target != 0).reshape(R, -1)
        err = ((pred - target).square().reshape(R, -1) * valid).sum(dim=1)
        return torch.stack([err, valid.sum(dim=1)], dim=1).double()

    return Metric(name=name, batch_stats=stats, finalize=lambda s, n: (s[:, 0] / s[:, 1].clamp_min(1)).sqrt())


def angle_error_metric(name: str = "angle_error_deg") -> Metric:
    """Mean angle in degrees between predicted and true surface normals (channels on dim 2)
    over valid pixels (true normal not zero)."""

    def stats(pred: Tensor, target: Tensor) -> Tensor:
        R = pred.shape[0]
        cos = F.cosine_similarity(pred, target, dim=2).clamp(-1, 1)
        valid = (target.abs().sum(dim=2) > 0)
        angle = torch.rad2deg(torch.acos(cos)) * valid
        return torch.stack([angle.reshape(R, -1).sum(1), valid.reshape(R, -1).sum(1)], dim=1).double()

    return Metric(name=name, batch_stats=stats, finalize=lambda s, n: s[:, 0] / s[:, 1].clamp_min(1))
