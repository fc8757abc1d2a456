"""The small base class every loss-balancing method builds on.

A balancer holds the task weights of R runs trained together (shape (R, T)). At each step the
training engine asks for `weights()`, the weights w(t) it uses for the network's gradient, and
records them; after the network's gradient is computed it calls `update(step, losses, norms)`,
where the balancer moves to w(t + 1). Balancers never touch the network's parameters or
gradients: they see only the detached per-task losses and, when they ask for them, the per-task
gradient norms ||grad_W L_i|| at the parameters W they name.

Driving one by hand, as the engine does: GradNorm (Algorithm 1) for one run of two tasks.

>>> import torch
>>> from bench.balancers import BALANCERS, build_balancer_params
>>> from bench.problems import TaskSpec
>>> from bench.problems.losses import squared_error
>>> tasks = [TaskSpec("a", "regression", loss=squared_error), TaskSpec("b", "regression", loss=squared_error)]
>>> options = build_balancer_params("gradnorm", {"alpha": 1.5, "weight_lr": 0.1})
>>> gradnorm = BALANCERS["gradnorm"]([options], tasks, device=torch.device("cpu"),
...                                  dtype=torch.float64, steps_per_epoch=10)
>>> gradnorm.weights()  # w(0) = 1 for every task
tensor([[1., 1.]], dtype=torch.float64)

At the first step both losses are at L_i(0), so both targets are the mean norm G_bar = 1.5;
task a's gradient norm (2) is above it and b's (1) below, so a's weight falls and b's rises by
Adam's first step (the learning rate), and the weights still sum to T = 2:

>>> losses, norms = torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([[2.0, 1.0]], dtype=torch.float64)
>>> gradnorm.update(0, losses, norms)
>>> gradnorm.weights()
tensor([[0.9000, 1.1000]], dtype=torch.float64)

Later, with the same unweighted norms (so G_i = w_i ||grad_W L_i|| = 1.8 and 1.1), task b
has trained faster (its loss ratio L_b / L_b(0) is the lower), so its target
G_bar r_b^alpha is the lower; b's norm is now above its target and a's below, so the gradient
of L_grad pushes w_b down and w_a up (`update` hands it to the weights' Adam):

>>> loss, gradient = gradnorm.loss_and_gradient(torch.tensor([[0.8, 0.2]], dtype=torch.float64), norms)
>>> gradnorm.last_weighted_norms, gradnorm.last_target
(tensor([[1.8000, 1.1000]], dtype=torch.float64), tensor([[2.9346, 0.3668]], dtype=torch.float64))
>>> gradient
tensor([[-2.,  1.]], dtype=torch.float64)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.problems.base import TaskSpec


class Balancer(ABC):
    """Task weights for R runs trained together, one row per run."""

    name: ClassVar[str]
    Params: ClassVar[type]
    description: ClassVar[str] = ""
    # Options that may differ between runs trained together (one value per run).
    per_run_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Sequence[Any], tasks: Sequence[TaskSpec], *,
                 device: torch.device, dtype: torch.dtype, steps_per_epoch: int,
                 seeds: Sequence[int] | None = None):
        if not params:
            raise ValueError("a balancer needs the options of at least one run")
        if seeds is not None and len(seeds) != len(params):
            raise ValueError(f"{len(seeds)} seeds for {len(params)} runs")
        self.params = list(params)
        # One seed per run for a method's own random stream (a run's weights must not depend
        # on the runs it trains with); None where the caller has no seeds to give.
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        self.tasks = list(tasks)
        self.device = device
        self.dtype = dtype
        self.steps_per_epoch = steps_per_epoch
        # Runs whose weights the method cannot define (it divides by a loss of 0, say), with the
        # reason: the engine takes them out after each step and fails them, rather than let them
        # train on weights that mean nothing.
        self.undefined: dict[int, str] = {}

    @property
    def n_runs(self) -> int:
        return len(self.params)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def grad_norm_target(self) -> str | None:
        """The parameters whose per-task gradient norms `update` needs, or None."""
        return None

    def per_run(self, field: str) -> Tensor:
        """The value of option `field` for every run, as an (R, 1) tensor."""
        values = [float(getattr(p, field)) for p in self.params]
        return torch.tensor(values, device=self.device, dtype=self.dtype).unsqueeze(1)

    @abstractmethod
    def weights(self) -> Tensor:
        """The weights w(t) for the current step, shape (R, T), detached."""

    def update(self, step: int, losses: Tensor, grad_norms: Tensor | None) -> None:
        """Move to w(t + 1) given the step's detached losses (R, T) and, if asked, the norms (R, T)."""

    def stop_runs(self, runs: Tensor) -> None:
        """Runs (a boolean mask of shape (R,)) that failed: keep their weights fixed and finite."""

    def _undefined_where(self, bad: Tensor, values: Tensor, what: str) -> Tensor:
        """Record the runs (rows of the (R, T) mask `bad`) whose weights are undefined, naming
        their tasks and `values`; `what` says why ("GradNorm divides by it"). Returns the rows."""
        rows = bad.any(dim=1)
        for r in rows.nonzero().flatten().tolist():
            if r in self.undefined:
                continue
            named = ", ".join(f"{self.tasks[i].name} ({float(values[r, i]):.3g})"
                              for i in bad[r].nonzero().flatten().tolist())
            self.undefined[r] = f"undefined task weights: {what}: {named}"
        return rows

    def traces(self) -> dict[str, Tensor]:
        """Per-step quantities worth plotting, each of shape (steps, R, T)."""
        return {}

    def run_stats(self) -> list[dict[str, Any]]:
        """Extra per-run facts for the run record (e.g. how often a floor bound)."""
        return [{} for _ in range(self.n_runs)]

    @classmethod
    def batch_family(cls, params: Any) -> tuple[str, Any]:
        """The balancer and options that train this run inside a batch of runs.

        Runs whose families agree on every option outside `per_run_fields` train together.
        `equal`, for instance, trains as `static` with unit weights, next to a grid's points.
        """
        return cls.name, params
