"""`rlw`: Random Loss Weighting (Lin, Ye, Xu, Shi and Zhang, TMLR 2022).

At every step the weights are drawn afresh, whatever the losses:
    w(t) = T softmax(z(t)),   z(t) ~ N(0, I_T).
The paper proposes it as a litmus test: a balancing method that does not beat random weights
has not shown that its weighting helps. Its weights sum to 1; here they sum to T like every
other method's (equal weights are all 1). Under Adam the two train the same network, since Adam
is invariant to a constant scale of the loss (up to its epsilon).

Each run draws from its own generator, seeded from the run's seed, so a run's weights are the
same whether it trains alone or stacked with others, and differ between seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.balancers.base import Balancer
from bench.problems.base import TaskSpec

# Draws are made this many steps at a time, one call per run, rather than one call per run
# and step: a 33-run stack would otherwise spend more on generator calls than on the weights.
DRAW_BLOCK_STEPS = 1024


@dataclass(frozen=True)
class RLWParams:
    pass


def rlw_weights(z: Tensor) -> Tensor:
    """Lin et al.'s weights from standard normal draws z (..., T), scaled to sum to T."""
    return z.shape[-1] * torch.softmax(z, dim=-1)


class RLW(Balancer):
    name = "rlw"
    Params = RLWParams
    description = "random loss weighting (Lin et al. 2022): T softmax(z), z ~ N(0, I) drawn every step"
    params: list[RLWParams]

    def __init__(self, params: Sequence[RLWParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__(params, tasks, **kwargs)
        if self.seeds is None:
            raise ValueError("rlw draws its weights from each run's seed: pass `seeds`")
        self._generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self._block = torch.empty(0)
        self._next = 0  # index of the current step's draw within the block
        self._stopped = torch.zeros(self.n_runs, dtype=torch.bool, device=self.device)
        self._weights = self._draw()

    def _draw(self) -> Tensor:
        if self._next >= self._block.shape[0]:
            # (block, R, T), drawn on the CPU so that every device sees the same weights.
            self._block = torch.stack([
                torch.randn(DRAW_BLOCK_STEPS, self.n_tasks, generator=g, dtype=torch.float64)
                for g in self._generators
            ], dim=1)
            self._next = 0
        weights = rlw_weights(self._block[self._next]).to(self.device, self.dtype)
        self._next += 1
        return weights

    def weights(self) -> Tensor:
        return self._weights

    def update(self, step: int, losses: Tensor, grad_norms: Tensor | None) -> None:
        new = self._draw()
        self._weights = torch.where(self._stopped.unsqueeze(1), self._weights, new)

    def stop_runs(self, runs: Tensor) -> None:
        self._stopped |= runs
