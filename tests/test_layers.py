"""The stacked layers against PyTorch's own: slice r of a stack computes what a lone layer with
slice r's parameters computes, and each slice starts as `nn.Linear` or `nn.Conv2d` would."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.problems.layers import StackedConv2d, StackedLinear, StackedMLP, per_image, seeded_generators

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
