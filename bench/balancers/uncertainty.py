"""`uncertainty`: homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

Each task has a learned log-variance s_i = log sigma_i^2 and the loss is
    sum_i c_i exp(-s_i) L_i + s_i / 2,
with c_i = 1/2 for regression tasks (Kendall et al., eq. 7: L / (2 sigma^2) + log sigma) and
c_i = 1 for classification tasks (eq. 10: L / sigma^2 + log sigma). The weights are
w_i = c_i exp(-s_i); they are not renormalised. The s_i have their own Adam optimiser with
learning rate 0.025, the setting the GradNorm paper used for this baseline. The network's
gradient uses w(t); the s_i then take their step on the same objective.
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
class UncertaintyParams:
    lr: float = 0.025
    initial_log_variance: float = 0.0

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", "a positive number", self.lr)
        if not math.isfinite(self.initial_log_variance):
            raise ConfigError("initial_log_variance", "a finite number", self.initial_log_variance)


class Uncertainty(Balancer):
    name = "uncertainty"
    Params = UncertaintyParams
    description = "uncertainty weighting (Kendall et al. 2018), learned log-variances"
    params: list[UncertaintyParams]

    def __init__(self, params: Sequence[UncertaintyParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__(params, tasks, **kwargs)
        p = self.params[0]
        self.log_variance = torch.full((self.n_runs, self.n_tasks), p.initial_log_variance,
                                       device=self.device, dtype=self.dtype, requires_grad=True)
        self.factor = torch.tensor([0.5 if t.kind != "classification" else 1.0 for t in self.tasks],
                                   device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.Adam([self.log_variance], lr=p.lr)
        self._stopped = torch.zeros(self.n_runs, dtype=torch.bool, device=self.device)

    def weights(self) -> Tensor:
        return self.factor * torch.exp(-self.log_variance.detach())

    def objective(self, log_variance: Tensor, losses: Tensor) -> Tensor:
        """Kendall et al.'s loss per run, shape (R,)."""
        return (self.factor * torch.exp(-log_variance) * losses + 0.5 * log_variance).sum(dim=1)

    def update(self, step: int, losses: Tensor, grad_norms: Tensor | None) -> None:
        stopped = self._stopped.unsqueeze(1)
        losses = torch.where(stopped, torch.zeros_like(losses), losses)
        before = self.log_variance.detach().clone()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.objective(self.log_variance, losses).sum(),
                                          self.log_variance)
        self.log_variance.grad = grad
        self.optimizer.step()
        self.log_variance.grad = None
        with torch.no_grad():
            self.log_variance.copy_(torch.where(stopped, before, self.log_variance))

    def stop_runs(self, runs: Tensor) -> None:
        self._stopped |= runs

    def run_stats(self) -> list[dict[str, Any]]:
        return [{"log_variances": self.log_variance[r].tolist()} for r in range(self.n_runs)]
