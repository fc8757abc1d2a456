"""The per-run losses against PyTorch's own, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.errors import ConfigError
from bench.problems.losses import cross_entropy, squared_error


def reference_squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() != pred.dim():
        target = target.unsqueeze(-1)
    return torch.stack([F.mse_loss(p, t.expand_as(p)) for p, t in zip(pred, target.expand_as(pred))])


@settings(max_examples=30, deadline=None)
@given(runs=st.integers(1, 4), batch=st.integers(1, 5), outputs=st.integers(1, 4),
       scalar_target=st.booleans(), seed=st.integers(0, 2**16))
def test_squared_error_value_and_gradients_match_mse_loss(runs, batch, outputs, scalar_target, seed):
    g = torch.Generator().manual_seed(seed)
    pred_shape = (runs, batch, 1 if scalar_target else outputs)
    target_shape = (runs, batch) if scalar_target else pred_shape
    pred = torch.randn(pred_shape, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(target_shape, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(runs, generator=g, dtype=torch.float64)

    ours = squared_error(pred, target)
    ours_grads = torch.autograd.grad((weights * ours).sum(), [pred, target])
    ref = reference_squared_error(pred, target)
    ref_grads = torch.autograd.grad((weights * ref).sum(), [pred, target])

    assert ours.shape == (runs,)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_squared_error_gradient_through_a_broadcast_target():
    """A target shared by every run (an expanded view, as stacked runs get it)."""
    pred = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    base = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(squared_error(pred, base.expand(3, 4, 2)).sum(), [base])
    torch.testing.assert_close(grad, -2 * (pred - base).sum(0) / 8)


@pytest.mark.parametrize("pred_shape,target_shape", [
    ((2, 5, 2), (2, 5, 1)),  # a head of 2 outputs for targets of 1: broadcasting would hide it
    ((2, 5, 3), (2, 5)),  # a scalar target meets a prediction of 3 outputs
    ((2, 5, 1), (2, 4, 1)),  # another batch
    ((2, 5, 1), (3, 5, 1)),  # another number of runs
])
def test_squared_error_refuses_predictions_of_another_shape_than_their_targets(pred_shape, target_shape):
    with pytest.raises(ConfigError) as err:
        squared_error(torch.zeros(pred_shape), torch.zeros(target_shape))
    assert f"predictions {pred_shape} for targets {target_shape}" in str(err.value)
    # one target shared by every run still broadcasts over the runs
    assert squared_error(torch.ones(3, 5, 2), torch.zeros(1, 5, 2)).tolist() == [1.0, 1.0, 1.0]


def test_cross_entropy_refuses_logits_that_do_not_fit_their_targets():
    with pytest.raises(ConfigError) as err:
        cross_entropy(torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, dtype=torch.long))
    assert "logits (2, 5, 3, 4) for targets (2, 5)" in str(err.value)
    losses = cross_entropy(torch.zeros(2, 5, 3, 4), torch.zeros(2, 5, 4, dtype=torch.long))
    torch.testing.assert_close(losses, torch.full((2,), math.log(3)))
