"""The small base class every loss-balancing method builds on.

A balancer holds the task weights of R runs trained together (shape (R, T)). At each step the
training engine asks for `weights()`, the weights w(t) it uses for the network's gradient, and
records them; after the network's gradient is computed it calls `update(step, losses, norms)`,
where the balancer moves to w(t + 1). Balancers never touch the network's parameters or
gradients: they see only the detached per-task losses and, when they ask for them, the per-task
gradient norms ||grad_W L_i|| at the parameters W they name.
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
