"""Layers stacked over R independent runs, computed with batched matrix products.

Stacking many small networks of one architecture into one set of tensors lets a grid search
train all its points at once: each slice r has its own parameters and initialisation, and
every operation acts slice by slice, so slice r computes exactly what a lone network would.
`StackedModule` stacks any ordinary module the same way, with torch.func.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state


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


class StackedModule(nn.Module):
    """R independent copies of an ordinary module, computed as one: `factory()` builds one run's
    module (any `nn.Module` taking one tensor of shape (B, ...)); its parameters and buffers are
    stacked with a leading run dimension (R, ...), and its forward is vmapped over the runs, so
    that input (R, B, ...) gives output (R, B, ...). A model of one's own need not be rewritten
    in the stacked layers above (the way PyTorch's model-ensembling recipe stacks models).

    Run r's copy is built by `factory()` with torch's random generator seeded by a number drawn
    from `generators[r]`, so that it starts from its own seed, as `StackedLinear` does; the
    caller's random state is left as it was. Each slice then computes what the lone module
    would: batch norm keeps each run's running statistics, and dropout draws each run's own masks
    (not the lone module's: a stack with dropout matches lone runs in distribution only).
    GradNorm's W is the stacked `weight` when the module has one of its own (`nn.Linear`).

    The module keeps its state in its parameters and buffers: other tensors it holds stay on
    the template, which has no data (torch's "meta" device). A parameter `0.weight` is
    registered as `0__weight` (a name cannot hold a dot).
    """

    template: nn.Module  # one run's module, without data: not registered, see __init__

    def __init__(self, factory: Callable[[], nn.Module], generators: Sequence[torch.Generator]):
        super().__init__()
        copies = []
        for g in generators:
            seed = int(torch.randint(0, 2**62, (), generator=g))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                copies.append(factory())
        if not copies:
            raise ValueError("StackedModule: one generator per run, at least one")
        params, buffers = stack_module_state(copies)
        self._names: dict[str, str] = {}  # registered name -> the module's own dotted name
        for name, value in [*params.items(), *buffers.items()]:
            key = name.replace(".", "__")
            if key in self._names:
                raise ValueError(f"StackedModule: {name!r} and {self._names[key]!r} would both be "
                                 f"registered as {key!r}")
            self._names[key] = name
            if name in params:
                self.register_parameter(key, nn.Parameter(value.detach()))
            else:
                self.register_buffer(key, value)
        self.n_runs = len(copies)
        # The template whose forward is called with each run's tensors: kept out of the
        # module's children, so that its parameters are not the stack's.
        self.__dict__["template"] = copy.deepcopy(copies[0]).to("meta")

    def train(self, mode: bool = True) -> StackedModule:
        super().train(mode)
        self.template.train(mode)  # batch norm and dropout read the template's mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        state = {self._names[key]: value for key, value in
                 [*self.named_parameters(recurse=False), *self.named_buffers(recurse=False)]}

        def one_run(run_state: dict[str, Tensor], run_input: Tensor) -> Tensor:
            return functional_call(self.template, run_state, (run_input,))

        if self.n_runs == 1:  # a run alone (a problem that does not stack): vmap's overhead for nothing
            return one_run({name: value[0] for name, value in state.items()}, x[0]).unsqueeze(0)
        return torch.vmap(one_run, randomness="different")(state, x)

    def extra_repr(self) -> str:
        return f"runs={self.n_runs}, module={self.template!r}"
