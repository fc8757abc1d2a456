"""`dwa`: Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019).

    w_k(t) = K exp(r_k(t-1) / temperature) / sum_i exp(r_i(t-1) / temperature),
    r_k(t-1) = L_k(t-1) / L_k(t-2),
where L_k(t) is task k's mean training loss over period t (an epoch in the paper) and K the
number of tasks. For the first two periods all weights are 1. Our training is counted in steps:
a period is `period` steps, by default one pass over the training set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.balancers.base import Balancer
from bench.errors import ConfigError
from bench.problems.base import TaskSpec


@dataclass(frozen=True)
class DWAParams:
    temperature: float = 2.0
    period: int | None = None

    def validate(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError("temperature", "a positive number", self.temperature)
        if self.period is not None and self.period < 1:
            raise ConfigError("period", "an integer >= 1 (steps)", self.period)

    def check_steps(self, steps: int, *, steps_per_epoch: int | None = None) -> None:
        """Refuse periods so long that the weights stay 1 throughout (they do for two periods).
        The default period, one epoch, is checked when `steps_per_epoch` is known."""
        if self.period is not None and 2 * self.period >= steps:
            raise ConfigError("period", f"fewer than half the budget's {steps} steps (the weights stay 1 "
                              "for the first two periods)", self.period)
        if self.period is None and steps_per_epoch is not None and 2 * steps_per_epoch >= steps:
            raise ConfigError("period", f"a period of fewer than {(steps + 1) // 2} steps, or a budget of "
                              f"more than {2 * steps_per_epoch} steps: the default period, one "
                              f"epoch, is {steps_per_epoch} steps here, and the weights stay 1 for the "
                              "first two periods")


def dwa_weights(previous: Tensor, before_previous: Tensor, temperature: float) -> Tensor:
    """Liu et al.'s weights from two consecutive period-mean losses, each (R, T). A task whose
    loss was 0 in both periods did not change: its ratio is 1, not 0 / 0.

    >>> dwa_weights(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.5, 0.0]]), 2.0)
    tensor([[1., 1.]])
    """
    ratio = torch.where((previous == 0) & (before_previous == 0), 1.0, previous / before_previous)
    return previous.shape[1] * torch.softmax(ratio / temperature, dim=1)


class DWA(Balancer):
    name = "dwa"
    Params = DWAParams
    description = "Dynamic Weight Average (Liu et al. 2019)"
    params: list[DWAParams]

    def __init__(self, params: Sequence[DWAParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__(params, tasks, **kwargs)
        p = self.params[0]
        self.temperature = p.temperature
        self.period = p.period or max(1, self.steps_per_epoch)
        self._sum = torch.zeros(self.n_runs, self.n_tasks, device=self.device, dtype=self.dtype)
        self._count = 0
        self._period_means: list[Tensor] = []  # the last two completed periods
        self._weights = torch.ones(self.n_runs, self.n_tasks, device=self.device, dtype=self.dtype)
        self._stopped = torch.zeros(self.n_runs, dtype=torch.bool, device=self.device)

    def weights(self) -> Tensor:
        return self._weights

    def update(self, step: int, losses: Tensor, grad_norms: Tensor | None) -> None:
        self._sum += torch.where(self._stopped.unsqueeze(1), torch.ones_like(losses), losses)
        self._count += 1
        if self._count < self.period:
            return
        self._period_means = (self._period_means + [self._sum / self._count])[-2:]
        self._sum = torch.zeros_like(self._sum)
        self._count = 0
        if len(self._period_means) == 2:
            before, previous = self._period_means
            # A loss that rose from exactly 0 has no ratio: the run's weights are undefined.
            risen = (before == 0) & (previous != 0) & ~self._stopped.unsqueeze(1)
            keep = self._stopped | self._undefined_where(
                risen, previous, "DWA's ratio L_k(t-1) / L_k(t-2) divides by a period's mean loss of 0, "
                "and the next period's is")
            new = dwa_weights(previous, before, self.temperature)
            self._weights = torch.where(keep.unsqueeze(1), self._weights, new)

    def stop_runs(self, runs: Tensor) -> None:
        self._stopped |= runs
