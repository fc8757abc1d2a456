"""Per-task evaluation metrics beyond the loss, accumulated over chunks of a split."""

from __future__ import annotations

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


def accuracy_metric(name: str = "accuracy") -> Metric:
    """Fraction of examples whose arg-max class is the target class (logits on the last dim)."""
    return Metric(
        name=name,
        batch_stats=lambda logits, target: (logits.argmax(dim=-1) == target).float().sum(dim=1, keepdim=True),
        finalize=lambda stats, n: stats[:, 0] / n,
        higher_is_better=True,
    )
