"""Layers stacked over R independent runs, computed with batched matrix products.

Stacking many small networks of one architecture into one set of tensors lets a grid search
train all its points at once: each slice r has its own parameters and initialisation, and
every operation acts slice by slice, so slice r computes exactly what a lone network would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
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
            # In place: the layer's output is a fresh tensor that nothing else holds, and a
            # stack's activations are too large for cache, so one buffer fewer per layer counts.
            x = torch.relu_(layer(x))
        return x


class StackedConv2d(nn.Module):
    """R independent 2-d convolutions computed as one grouped convolution.

    Input (R, B, C, H, W) -> output (R, B, out, H', W'). Each slice is initialised like
    `torch.nn.Conv2d` (uniform in +-1/sqrt(fan_in) for weight and bias) from its run's generator.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 generators: Sequence[torch.Generator], padding: int = 0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        weights, biases = [], []
        for g in generators:
            weights.append(torch.empty(out_channels, in_channels, kernel_size, kernel_size)
                           .uniform_(-bound, bound, generator=g))
            biases.append(torch.empty(out_channels).uniform_(-bound, bound, generator=g))
        self.n_runs = len(generators)
        # A leading run dimension, like every stacked parameter: (R, out, in, k, k) and (R, out).
        self.weight = nn.Parameter(torch.stack(weights))
        self.bias = nn.Parameter(torch.stack(biases))

    def forward(self, x: Tensor) -> Tensor:
        R, B = x.shape[:2]
        merged = x.transpose(0, 1).reshape(B, R * self.in_channels, *x.shape[3:])
        y = F.conv2d(merged, self.weight.flatten(0, 1), self.bias.flatten(), padding=self.padding, groups=R)
        return y.view(B, R, self.out_channels, *y.shape[2:]).transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"runs={self.n_runs}, in={self.in_channels}, out={self.out_channels}, "
                f"kernel={self.kernel_size}, padding={self.padding}")


def per_image(op: Callable[..., Tensor], x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """Apply a batch-wise image op (pooling, upsampling) to (R, B, C, H, W) stacked images."""
    R, B = x.shape[:2]
    y = op(x.reshape(R * B, *x.shape[2:]), *args, **kwargs)
    return y.view(R, B, *y.shape[1:])
