"""`loss-scale`: static weights inversely proportional to each task's initial loss.

    w_i = T (1 / L_i(0)) / sum_j (1 / L_j(0))   from step `steps` on; 1 before,
where L_i(0) is task i's training loss at the first step (the mean over the first `steps` steps).
The weighted loss sum_i w_i L_i is then, up to a constant factor, the task-normalised loss
sum_i L_i / L_i(0) by which the GradNorm paper judges its toy: training on the metric itself.
Not a method of the paper, but the simplest rival a practitioner has, needing no search: on the
toy problem it beats GradNorm on every task (README: What ten seeds say). Each run's L_i(0) is
its own, as GradNorm's is; like GradNorm's weights, the weights are 1 at the first step, whose
losses are not known before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.balancers.base import Balancer
from bench.errors import ConfigError
from bench.problems.base import TaskSpec


@dataclass(frozen=True)
class LossScaleParams:
    # L_i(0) is the mean training loss of the first `steps` steps (weights stay 1 until then).
    steps: int = 1

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError("steps", "an integer >= 1 (the first steps whose losses give L_i(0))",
                              self.steps)

    def check_steps(self, steps: int, *, steps_per_epoch: int | None = None) -> None:
        """Refuse a warm-up that outlasts the run: its weights would stay 1 throughout."""
        if self.steps >= steps:
            raise ConfigError("steps", f"fewer than the budget's {steps} steps (the weights stay 1 until "
                              "L_i(0) is known)", self.steps)


def inverse_loss_weights(initial_losses: Tensor) -> Tensor:
    """T (1 / L_i(0)) / sum_j (1 / L_j(0)) for each row (run) of `initial_losses` (R, T)."""
    inverse = initial_losses.reciprocal()
    return initial_losses.shape[1] * inverse / inverse.sum(dim=1, keepdim=True)


class LossScale(Balancer):
    name = "loss-scale"
    Params = LossScaleParams
    description = "static weights proportional to 1 / L_i(0), each task's first-step loss"
    params: list[LossScaleParams]

    def __init__(self, params: Sequence[LossScaleParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__(params, tasks, **kwargs)
        self.steps = self.params[0].steps
        self.initial_losses: Tensor | None = None
        self._sum = torch.zeros(self.n_runs, self.n_tasks, device=self.device, dtype=self.dtype)
        self._count = 0
        self._weights = torch.ones(self.n_runs, self.n_tasks, device=self.device, dtype=self.dtype)
        self._stopped = torch.zeros(self.n_runs, dtype=torch.bool, device=self.device)

    def weights(self) -> Tensor:
        return self._weights

    def update(self, step: int, losses: Tensor, grad_norms: Tensor | None) -> None:
        if self.initial_losses is not None:
            return
        stopped = self._stopped.unsqueeze(1)
        self._sum += torch.where(stopped, torch.ones_like(losses), losses)  # a failed run's NaNs stay out
        self._count += 1
        if self._count < self.steps:
            return
        self.initial_losses = self._sum / self._count
        undefined = self._undefined_where(~(self.initial_losses > 0) & ~stopped, self.initial_losses,
                                          "weights proportional to 1 / L_i(0) need each task's "
                                          "initial loss L_i(0) to be positive")
        self._weights = torch.where(stopped | undefined.unsqueeze(1), self._weights,
                                    inverse_loss_weights(self.initial_losses))

    def stop_runs(self, runs: Tensor) -> None:
        self._stopped |= runs

    def run_stats(self) -> list[dict[str, Any]]:
        initial = self.initial_losses
        return [{"initial_losses": None if initial is None else initial[r].tolist()}
                for r in range(self.n_runs)]
