"""The stacked layers against PyTorch's own: slice r of a stack computes what a lone layer with
slice r's parameters computes, and each slice starts as `nn.Linear` or `nn.Conv2d` would."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.problems.layers import (StackedConv2d, StackedLinear, StackedMLP, StackedModule, per_image,
                                   seeded_generators)

SEEDS = st.lists(st.integers(0, 2**16), min_size=1, max_size=3, unique=True)


def inputs_for(seeds: list[int]) -> torch.Generator:
    """A generator for an example's inputs, so that a failing example is drawn again as it was."""
    return torch.Generator().manual_seed(sum(seeds))


@settings(max_examples=20, deadline=None)
@given(seeds=SEEDS, batch=st.integers(1, 4), middle=st.integers(1, 3),
       sizes=st.tuples(st.integers(1, 5), st.integers(1, 5)))
def test_a_stacked_linear_layer_is_one_affine_map_per_slice_whatever_the_input_dimensions(seeds, batch, middle,
                                                                                          sizes):
    n_in, n_out = sizes
    layer = StackedLinear(n_in, n_out, seeded_generators(seeds)).double()
    x = torch.randn(len(seeds), batch, middle, n_in, dtype=torch.float64, generator=inputs_for(seeds))
    flat = layer(x[:, :, 0])  # (R, B, in), the common case
    deep = layer(x)  # (R, B, ..., in): the middle dimensions ride along
    assert deep.shape == (len(seeds), batch, middle, n_out)
    for r in range(len(seeds)):
        alone = F.linear(x[r], layer.weight[r].T, layer.bias[r, 0])
        torch.testing.assert_close(deep[r], alone)
        torch.testing.assert_close(flat[r], alone[:, 0])


@settings(max_examples=20, deadline=None)
@given(seeds=SEEDS, sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4))
def test_a_stacked_mlp_is_each_slices_linear_layers_each_followed_by_relu(seeds, sizes):
    mlp = StackedMLP(sizes, seeded_generators(seeds)).double()
    x = torch.randn(len(seeds), 6, sizes[0], dtype=torch.float64, generator=inputs_for(seeds))
    out = mlp(x)
    for r in range(len(seeds)):
        alone = x[r]
        for layer in mlp.layers:
            alone = torch.relu(F.linear(alone, layer.weight[r].T, layer.bias[r, 0]))
        torch.testing.assert_close(out[r], alone)


@settings(max_examples=15, deadline=None)
@given(seeds=SEEDS, channels=st.tuples(st.integers(1, 3), st.integers(1, 3)), kernel=st.integers(1, 3),
       padding=st.integers(0, 1))
def test_a_stacked_convolution_is_one_convolution_per_slice(seeds, channels, kernel, padding):
    c_in, c_out = channels
    conv = StackedConv2d(c_in, c_out, kernel, seeded_generators(seeds), padding=padding).double()
    x = torch.randn(len(seeds), 2, c_in, 5, 6, dtype=torch.float64, generator=inputs_for(seeds))
    out = conv(x)
    for r in range(len(seeds)):
        torch.testing.assert_close(out[r], F.conv2d(x[r], conv.weight[r], conv.bias[r], padding=padding))
    pooled = per_image(F.max_pool2d, out, 2)
    torch.testing.assert_close(pooled[-1], F.max_pool2d(out[-1], 2))


def test_each_slice_starts_uniform_within_torchs_bound_and_from_its_own_seed_alone():
    """Uniform in +-1/sqrt(fan_in), weight and bias, as `nn.Linear` and `nn.Conv2d` start; fan_in
    counts a convolution's kernel too. A slice's draws depend on its seed, not on its neighbours."""
    linear = StackedLinear(400, 300, seeded_generators([0, 1]))
    conv = StackedConv2d(16, 64, 5, seeded_generators([0, 1]))
    for layer, fan_in in ((linear, 400), (conv, 16 * 25)):
        bound, weight = 1 / math.sqrt(fan_in), layer.weight.detach()
        assert float(layer.bias.detach().abs().max()) <= bound
        assert bound >= float(weight.abs().max()) > 0.99 * bound  # thousands of draws reach near it
        assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)  # a uniform's spread
    again = StackedLinear(400, 300, seeded_generators([5, 1]))
    assert torch.equal(again.weight[1], linear.weight[1]) and not torch.equal(again.weight[0], linear.weight[0])


def lone_module(factory, seed: int) -> torch.nn.Module:
    """What StackedModule's run of `seed` starts from: `factory()` under a seed drawn from the run's generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=seeded_generators([seed])[0])))
        return factory()


@settings(max_examples=10, deadline=None)
@given(seeds=SEEDS, batch=st.integers(2, 5))
def test_a_stacked_module_is_each_runs_own_module_batch_norm_statistics_included(seeds, batch):
    """Each slice of a StackedModule starts as its run's own module and computes what that module
    computes alone, in training (batch norm over its own run's rows, updating its own running
    statistics) and in evaluation (with them); building it leaves the caller's random state as it was."""
    def factory():
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                   torch.nn.Linear(4, 2)).double()

    state = torch.get_rng_state()
    stacked = StackedModule(factory, seeded_generators(seeds))
    assert torch.equal(torch.get_rng_state(), state)
    lone = [lone_module(factory, s) for s in seeds]
    x = torch.randn(len(seeds), batch, 3, dtype=torch.float64, generator=inputs_for(seeds))
    for training in (True, False):
        stacked.train(training)
        out = stacked(x)
        for r, module in enumerate(lone):
            torch.testing.assert_close(out[r], module.train(training)(x[r]))
    for r, module in enumerate(lone):
        for name, value in module.named_parameters():
            assert torch.equal(getattr(stacked, name.replace(".", "__"))[r], value), name
        for name, value in module.named_buffers():  # vmapped batch norm rounds its statistics its own way
            torch.testing.assert_close(getattr(stacked, name.replace(".", "__"))[r], value, rtol=1e-12, atol=1e-15)
    assert int(stacked.get_buffer("1__num_batches_tracked")[0]) == 1  # one training forward, not two


def test_a_stacked_modules_dropout_draws_each_runs_own_masks_and_evaluation_none():
    """Two runs of one seed: their dropout masks differ in training (randomness is per run, not
    shared across the stack), and evaluation drops nothing."""
    stacked = StackedModule(lambda: torch.nn.Dropout(0.5), seeded_generators([0, 0]))
    x = torch.ones(2, 200, 3)
    out = stacked(x)
    assert set(out.unique().tolist()) == {0.0, 2.0} and not torch.equal(out[0], out[1])
    assert torch.equal(stacked.eval()(x), x)


def test_a_stacked_module_gives_gradnorms_w_and_refuses_what_it_cannot_stack():
    """A stacked nn.Linear has its own `weight` (R, out, in), the W GradNorm measures; names
    that would clash once their dots are replaced, or no run at all, are refused."""
    linear = StackedModule(lambda: torch.nn.Linear(3, 5), seeded_generators([0, 1, 2]))
    assert linear.weight.shape == (3, 5, 3) and linear.bias.shape == (3, 5) and linear.n_runs == 3
    conv = StackedModule(lambda: torch.nn.Conv2d(2, 4, 3, padding=1), seeded_generators([0, 1]))
    assert conv(torch.randn(2, 5, 2, 6, 6)).shape == (2, 5, 4, 6, 6)

    class Clash(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(1, 1, bias=False)
            self.a__weight = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(ValueError, match="'a.weight' and 'a__weight' would both be registered as 'a__weight'"):
        StackedModule(Clash, seeded_generators([0]))
    with pytest.raises(ValueError, match="one generator per run"):
        StackedModule(lambda: torch.nn.Linear(1, 1), [])
