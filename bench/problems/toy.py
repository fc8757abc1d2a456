"""The paper's synthetic multitask regression (Chen et al. 2018, Section 4).

Task i maps x in R^250 to `f_i(x) = sigma_i * tanh((B + eps_i) x)` in R^100. B is shared by all
tasks and eps_i is task-specific; both are constant matrices with iid normal entries of scale
10 and 3.5. The paper does not say whether these scales are variances or standard deviations;
by default they are standard deviations, as in public re-implementations (`scale_kind =
"variance"` reads them as variances). sigma_i sets each task's output scale, so with equal
weights the large-sigma tasks dominate the gradient.

Our choices where the paper is silent (documented in the README):
- inputs: x drawn uniformly from [-1, 1]^250 and scaled to unit L2 norm, so that (B + eps_i) x
  has entries of standard deviation about sqrt(10^2 + 3.5^2) ~ 10.6 whatever the dimension;
- finite train / validation / test sets of `n_train`, `n_val`, `n_test` examples drawn from
  one generator seeded by the data seed (B and eps_i come from the same seed);
- T = 2 defaults to sigma = (1, 100), the paper's case; any other T defaults to scales evenly
  spaced in log over two orders of magnitude, sigma_i = 100^(i / (T - 1)), i = 0..T-1.

Model: a trunk of `depth` (4) fully connected ReLU layers of `hidden` (100) units; W, the last
shared layer, is the trunk's last layer. One affine `hidden -> output_dim` head per task.
Loss: mean squared error over the batch and the 100 outputs. Normaliser: sigma_i^2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.problems.base import DataSplits, MultiTaskModel, Problem, Split, TaskSpec
from bench.problems.layers import StackedLinear, StackedMLP, seeded_generators
from bench.problems.losses import squared_error
from bench.problems.metrics import rms_metric


def default_sigmas(tasks: int) -> tuple[float, ...]:
    """The paper's (1, 100) for two tasks; otherwise log-spaced from 1 to 100."""
    if tasks == 1:
        return (1.0,)
    if tasks == 2:
        return (1.0, 100.0)
    return tuple(float(100.0 ** (i / (tasks - 1))) for i in range(tasks))


@dataclass(frozen=True)
class ToyParams:
    tasks: int = 2
    sigmas: tuple[float, ...] | None = None
    input_dim: int = 250
    output_dim: int = 100
    hidden: int = 100
    depth: int = 4
    shared_scale: float = 10.0
    task_scale: float = 3.5
    scale_kind: Literal["std", "variance"] = "std"
    n_train: int = 1000
    n_val: int = 1000
    n_test: int = 2000

    def validate(self) -> None:
        if self.tasks < 1:
            raise ConfigError("tasks", "an integer >= 1", self.tasks)
        if self.sigmas is not None:
            if len(self.sigmas) != self.tasks:
                raise ConfigError("sigmas", f"{self.tasks} values, one per task (tasks = {self.tasks})",
                                  list(self.sigmas))
            if any(not s > 0 for s in self.sigmas):
                raise ConfigError("sigmas", "positive numbers", list(self.sigmas))
        for name in ("input_dim", "output_dim", "hidden", "depth", "n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "an integer >= 1", getattr(self, name))
        for name in ("shared_scale", "task_scale"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "a number >= 0", getattr(self, name))

    @property
    def resolved_sigmas(self) -> tuple[float, ...]:
        return self.sigmas if self.sigmas is not None else default_sigmas(self.tasks)


class ToyProblem(Problem):
    name = "toy"
    Params = ToyParams
    description = "the paper's synthetic regression: f_i(x) = sigma_i tanh((B + eps_i) x)"
    params: ToyParams

    @property
    def sigmas(self) -> tuple[float, ...]:
        return self.params.resolved_sigmas

    def _tasks(self) -> list[TaskSpec]:
        return [
            TaskSpec(name=f"task{i}", kind="regression", loss=squared_error, normaliser=s * s,
                     metrics=(rms_metric(),))
            for i, s in enumerate(self.sigmas)
        ]

    def train_size(self) -> int:
        return self.params.n_train

    def functions(self, data_seed: int) -> tuple[Tensor, Tensor]:
        """The shared matrix B (out, in) and the task matrices eps (T, out, in) for a data seed."""
        p = self.params
        g = torch.Generator().manual_seed(int(data_seed))
        to_std = (lambda s: s) if p.scale_kind == "std" else (lambda s: s ** 0.5)
        shared = torch.randn(p.output_dim, p.input_dim, generator=g) * to_std(p.shared_scale)
        task = torch.randn(p.tasks, p.output_dim, p.input_dim, generator=g) * to_std(p.task_scale)
        return shared, task

    def _load(self, data_seed: int) -> DataSplits:
        p = self.params
        shared, task = self.functions(data_seed)
        g = torch.Generator().manual_seed(int(data_seed) + 1_000_003)
        n = p.n_train + p.n_val + p.n_test
        x = torch.rand(n, p.input_dim, generator=g) * 2 - 1
        x = x / x.norm(dim=1, keepdim=True)
        sig = torch.tensor(self.sigmas).view(-1, 1, 1)
        y = sig * torch.tanh(torch.einsum("toi,ni->tno", shared + task, x))  # (T, N, out)

        def split(lo: int, hi: int) -> Split:
            return Split(x[lo:hi].contiguous(), tuple(y[t, lo:hi].contiguous() for t in range(p.tasks)))

        a, b = p.n_train, p.n_train + p.n_val
        return DataSplits(train=split(0, a), val=split(a, b), test=split(b, n))

    def build_model(self, init_seeds: Sequence[int]) -> MultiTaskModel:
        p = self.params
        gens = seeded_generators(init_seeds)
        sizes = [p.input_dim] + [p.hidden] * p.depth
        body = StackedMLP(sizes[:-1], gens)  # every layer but the last shared one, with ReLU
        last = StackedLinear(sizes[-2], sizes[-1], gens)
        heads = [StackedLinear(p.hidden, p.output_dim, gens) for _ in range(p.tasks)]
        return MultiTaskModel(body, last, heads, n_runs=len(init_seeds), activation=nn.ReLU())

    def describe(self) -> dict:
        return {"tasks": self.task_names, "sigmas": list(self.sigmas)}

