"""Layers stacked over R independent runs, computed with batched matrix products.

Stacking many small networks of one architecture into one set of tensors lets a grid search
train all its points at once: each slice r has its own parameters and initialisation, and
every operation acts slice by slice, so slice r computes exactly what a lone network would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per run; initialisation draws from it layer by layer, in order."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class StackedLinear(nn.Module):
    """R independent affine maps `y_r = x_r @ W_r + b_r`.

    `weight` has shape (R, in, out) and `bias` (R, 1, out). Each slice is initialised like
    `torch.nn.Linear` (uniform in +-1/sqrt(in) for weight and bias) from its run's generator.
    """

    def __init__(self, in_features: int, out_features: int, generators: Sequence[torch.Generator]):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        bound = 1.0 / math.sqrt(in_features)
        weights, biases = [], []
        for g in generators:
            # Drawn as (out, in) like nn.Linear, then laid out for x @ W.
            w = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=g)
            b = torch.empty(out_features).uniform_(-bound, bound, generator=g)
            weights.append(w.t())
            biases.append(b)
        self.weight = nn.Parameter(torch.stack(weights).contiguous())
        self.bias = nn.Parameter(torch.stack(biases).unsqueeze(1).contiguous())

    @property
    def n_runs(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        # bmm then an in-place bias add: measurably faster on CPUs than baddbmm, which first
        # copies the broadcast bias into the output.
        if x.dim() == 3:
            return torch.bmm(x, self.weight).add_(self.bias)
        # (R, B, ..., in): flatten the middle dimensions into the batch.
        shape = x.shape
        y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), self.weight).add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"runs={self.n_runs}, in={self.in_features}, out={self.out_features}"


class StackedMLP(nn.Module):
    """A stack of fully connected ReLU layers, for R runs: every layer is followed by ReLU."""

    def __init__(self, sizes: Sequence[int], generators: Sequence[torch.Generator]):
        super().__init__()
        self.layers = nn.ModuleList(
            StackedLinear(a, b, generators) for a, b in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
