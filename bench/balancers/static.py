"""`static`: fixed task weights, rescaled so that they sum to T (a grid-search point)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.balancers.base import Balancer
from bench.errors import ConfigError
from bench.problems.base import TaskSpec


def validate_static_weights(weights: tuple[float, ...], n_tasks: int | None = None,
                            field: str = "weights") -> None:
    if n_tasks is not None and len(weights) != n_tasks:
        raise ConfigError(field, f"{n_tasks} weights, one per task", list(weights))
    if any(not math.isfinite(w) for w in weights):
        raise ConfigError(field, "finite numbers", list(weights))
    if any(w < 0 for w in weights):
        raise ConfigError(field, "non-negative weights", list(weights))
    if sum(weights) <= 0:
        raise ConfigError(field, "weights that do not all equal zero", list(weights))


@dataclass(frozen=True)
class StaticParams:
    # None means all ones; otherwise one non-negative weight per task, rescaled to sum to T.
    weights: tuple[float, ...] | None = None

    def validate(self) -> None:
        if self.weights is not None:
            validate_static_weights(self.weights)


class Static(Balancer):
    name = "static"
    Params: ClassVar[type] = StaticParams  # as the base declares them: `equal` sets its own
    description = "fixed weights, rescaled to sum to T"
    per_run_fields: ClassVar[tuple[str, ...]] = ("weights",)

    def __init__(self, params: Sequence[StaticParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__(params, tasks, **kwargs)
        rows = []
        for p in self.params:
            w = p.weights if p.weights is not None else (1.0,) * self.n_tasks
            validate_static_weights(w, self.n_tasks, field="balancer.weights")
            rows.append([x * self.n_tasks / sum(w) for x in w])
        self._weights = torch.tensor(rows, device=self.device, dtype=self.dtype)

    def weights(self) -> Tensor:
        return self._weights
