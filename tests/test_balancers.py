"""Formula tests of the other balancing methods, on hand-made losses, and property tests of their
invariants on drawn ones."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.balancers import BALANCERS, build_balancer_params
from bench.balancers.dwa import DWA, DWAParams
from bench.balancers.equal import Equal, EqualParams
from bench.balancers.loss_scale import LossScale, LossScaleParams
from bench.balancers.rlw import DRAW_BLOCK_STEPS, RLW, RLWParams
from bench.balancers.static import Static, StaticParams
from bench.balancers.uncertainty import Uncertainty, UncertaintyParams
from bench.errors import ConfigError
from bench.problems.base import TaskSpec

CPU = dict(device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=2)


def tasks(*kinds: str) -> list[TaskSpec]:
    return [TaskSpec(f"t{i}", kind, loss=None, n_classes=3 if kind == "classification" else None)
            for i, kind in enumerate(kinds)]


def test_registry_holds_every_method_once_under_its_own_name():
    assert set(BALANCERS) == {"equal", "static", "gradnorm", "uncertainty", "dwa", "rlw", "loss-scale"}
    assert all(cls.name == name for name, cls in BALANCERS.items())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(0, 100), min_size=3, max_size=3).filter(lambda w: sum(w) > 1e-6),
                min_size=1, max_size=4))
def test_static_weights_are_rescaled_to_sum_to_T(rows):
    balancer = Static([StaticParams(tuple(r)) for r in rows], tasks("regression", "regression", "regression"), **CPU)
    w = balancer.weights()
    assert torch.allclose(w.sum(dim=1), torch.full((len(rows),), 3.0, dtype=torch.float64))
    for r, row in enumerate(rows):  # proportional to what was asked
        assert torch.allclose(w[r] * sum(row), torch.tensor(row, dtype=torch.float64) * 3, atol=1e-9)


def test_equal_weights_are_ones_and_train_as_a_static_point():
    balancer = Equal([EqualParams()], tasks("regression", "regression"), **CPU)
    assert balancer.weights().tolist() == [[1.0, 1.0]]
    assert Equal.batch_family(EqualParams()) == ("static", StaticParams())


@pytest.mark.parametrize("weights", [(1.0, -1.0), (0.0, 0.0), (math.nan, 1.0)])
def test_bad_static_weights_are_refused(weights):
    with pytest.raises(ConfigError):
        build_balancer_params("static", {"weights": weights})


def test_uncertainty_weights_and_objective_follow_kendall():
    balancer = Uncertainty([UncertaintyParams(lr=0.1)], tasks("regression", "classification"), **CPU)
    # s = 0: regression weight 1/2 (1 / (2 sigma^2)), classification weight 1 (1 / sigma^2)
    assert balancer.weights().tolist() == [[0.5, 1.0]]
    s = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    losses = torch.tensor([[2.0, 0.7]], dtype=torch.float64)
    expected = 0.5 * math.exp(-0.3) * 2.0 + 0.15 + math.exp(0.2) * 0.7 - 0.1
    assert balancer.objective(s, losses).item() == pytest.approx(expected)


def test_uncertainty_update_is_an_adam_step_on_the_log_variances():
    balancer = Uncertainty([UncertaintyParams(lr=0.1)], tasks("regression", "regression"), **CPU)
    # d/ds [exp(-s) L / 2 + s / 2] at s = 0 is (1 - L) / 2: negative for L = 3, positive for L = 0.2.
    balancer.update(0, torch.tensor([[3.0, 0.2]], dtype=torch.float64), None)
    # Adam's first step moves each coordinate by lr against the sign of its gradient.
    assert balancer.log_variance.detach()[0].tolist() == pytest.approx([0.1, -0.1])
    assert balancer.weights()[0].tolist() == pytest.approx([0.5 * math.exp(-0.1), 0.5 * math.exp(0.1)])


def test_uncertainty_starts_from_its_initial_log_variance():
    balancer = Uncertainty([UncertaintyParams(initial_log_variance=1.0)], tasks("regression", "classification"), **CPU)
    assert balancer.log_variance.detach().tolist() == [[1.0, 1.0]]
    assert balancer.weights()[0].tolist() == pytest.approx([0.5 * math.exp(-1.0), math.exp(-1.0)])


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from(["regression", "classification"]), min_size=1, max_size=3).flatmap(
    lambda kinds: st.tuples(st.just(kinds), st.lists(st.lists(st.floats(0.05, 20.0), min_size=len(kinds),
                                                              max_size=len(kinds)), min_size=1, max_size=3))))
def test_uncertainty_weights_settle_at_one_over_twice_each_loss_whatever_the_task_kind(case):
    """Kendall et al.'s objective c exp(-s) L + s / 2 is least at exp(-s) = 1 / (2 c L): the weight
    c exp(-s) settles at 1 / (2 L), for regression (c = 1/2) and classification (c = 1) alike,
    and each run of a stack settles on its own losses, step for step as it would alone."""
    kinds, rows = case
    losses = torch.tensor(rows, dtype=torch.float64)
    stacked = Uncertainty([UncertaintyParams(lr=0.2)] * len(rows), tasks(*kinds), **CPU)
    alone = [Uncertainty([UncertaintyParams(lr=0.2)], tasks(*kinds), **CPU) for _ in rows]
    for step in range(400):
        stacked.update(step, losses, None)
        for r, balancer in enumerate(alone):
            balancer.update(step, losses[r:r + 1], None)
    assert torch.allclose(stacked.weights(), 1 / (2 * losses), rtol=1e-6)
    assert torch.equal(stacked.weights(), torch.cat([b.weights() for b in alone]))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.floats(0.5, 4.0), st.integers(0, 2 ** 16),
       st.lists(st.floats(0.01, 100.0), min_size=4, max_size=4))
def test_dwa_weights_follow_each_runs_own_period_means_whatever_each_tasks_scale(period, runs, temperature,
                                                                                 seed, scales):
    """At every step: 1 for two periods, then T softmax(r / temperature) of the ratio of the last
    two periods' mean losses, computed here again from the losses; positive and summing to T;
    each run's from its own losses; and unchanged by a task's losses taken at another scale."""
    T, steps = 4, 6 * period
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(steps, runs, T, generator=g, dtype=torch.float64) * 5 + 0.1
    scaled = losses * torch.tensor(scales, dtype=torch.float64)
    options = [DWAParams(temperature=temperature, period=period)] * runs
    stacked, rescaled = DWA(options, tasks(*["regression"] * T), **CPU), DWA(options, tasks(*["regression"] * T), **CPU)
    alone = [DWA(options[:1], tasks(*["regression"] * T), **CPU) for _ in range(runs)]
    for step in range(steps):
        means = [losses[k * period:(k + 1) * period].mean(dim=0) for k in range(step // period)]
        if len(means) < 2:
            expected = torch.ones(runs, T, dtype=torch.float64)
        else:
            expected = T * torch.softmax(means[-1] / means[-2] / temperature, dim=1)
        w = stacked.weights()
        assert torch.allclose(w, expected, rtol=1e-12)
        assert (w > 0).all() and torch.allclose(w.sum(dim=1), torch.full((runs,), float(T), dtype=torch.float64))
        assert torch.equal(w, torch.cat([b.weights() for b in alone]))
        assert torch.allclose(rescaled.weights(), w, rtol=1e-9)
        stacked.update(step, losses[step], None)
        rescaled.update(step, scaled[step], None)
        for r, balancer in enumerate(alone):
            balancer.update(step, losses[step, r:r + 1], None)


def test_dwa_keeps_unit_weights_for_two_periods_then_follows_the_loss_ratio():
    balancer = DWA([DWAParams(temperature=2.0, period=2)], tasks("regression", "regression", "regression"), **CPU)
    period_means = [[4.0, 1.0, 2.0], [2.0, 1.0, 3.0]]
    step = 0
    for mean in period_means:
        for delta in (-0.5, 0.5):  # two steps per period, averaging to `mean`
            assert balancer.weights().tolist() == [[1.0, 1.0, 1.0]]
            balancer.update(step, torch.tensor([mean], dtype=torch.float64) + delta, None)
            step += 1
    ratio = [2.0 / 4.0, 1.0 / 1.0, 3.0 / 2.0]
    exp = [math.exp(r / 2.0) for r in ratio]
    expected = [3 * e / sum(exp) for e in exp]
    assert balancer.weights()[0].tolist() == pytest.approx(expected)
    assert float(balancer.weights().sum()) == pytest.approx(3.0)


def test_dwa_period_defaults_to_one_epoch():
    balancer = DWA([DWAParams()], tasks("regression", "regression"), **dict(CPU, steps_per_epoch=7))
    assert balancer.period == 7


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(1e-3, 1e4), min_size=3, max_size=3), min_size=1, max_size=4),
       st.integers(1, 3))
def test_loss_scale_weights_are_one_until_L0_is_known_then_inverse_to_it_and_fixed(first, steps):
    """w_i = 1 while L_i(0) is measured (the mean of the first `steps` steps' losses), then
    T (1 / L_i(0)) / sum_j (1 / L_j(0)) for good: sum T, and w_i L_i(0) the same for every task."""
    runs = len(first)
    balancer = LossScale([LossScaleParams(steps=steps)] * runs, tasks(*["regression"] * 3), **CPU)
    losses = torch.tensor(first, dtype=torch.float64)
    for step in range(steps):
        assert torch.equal(balancer.weights(), torch.ones(runs, 3, dtype=torch.float64))
        balancer.update(step, losses * (1 + 0.5 * step) / (1 + 0.25 * (steps - 1)), None)  # mean: `losses`
    w = balancer.weights()
    assert torch.allclose(w.sum(dim=1), torch.full((runs,), 3.0, dtype=torch.float64))
    balanced = w * losses  # each task's weighted initial loss, the same across tasks
    assert torch.allclose(balanced, balanced[:, :1].expand_as(balanced), rtol=1e-9)
    balancer.update(steps, losses.flip(1) * 7, None)  # later losses change nothing
    assert torch.equal(balancer.weights(), w)
    assert balancer.run_stats()[0]["initial_losses"] == pytest.approx(first[0])


def test_loss_scale_keeps_a_stopped_runs_unit_weights_and_its_nans_out():
    balancer = LossScale([LossScaleParams()] * 2, tasks("regression", "regression"), **CPU)
    balancer.stop_runs(torch.tensor([True, False]))
    balancer.update(0, torch.tensor([[math.nan, 1.0], [4.0, 1.0]], dtype=torch.float64), None)
    assert balancer.weights().tolist() == [[1.0, 1.0], [0.4, 1.6]]


def test_loss_scale_needs_at_least_one_step():
    with pytest.raises(ConfigError, match="steps"):
        build_balancer_params("loss-scale", {"steps": 0})


def rlw_weights_over(balancer: RLW, steps: int, losses: torch.Tensor | None = None) -> torch.Tensor:
    """The weights an RLW balancer gives at each of `steps` steps, (steps, R, T)."""
    rows = []
    for step in range(steps):
        rows.append(balancer.weights())
        given = losses[step] if losses is not None else torch.ones_like(rows[-1])
        balancer.update(step, given, None)
    return torch.stack(rows)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 12), st.lists(st.integers(0, 2**62), min_size=1, max_size=4))
def test_rlw_weights_are_positive_and_sum_to_T_at_every_step(n_tasks, seeds):
    balancer = RLW([RLWParams()] * len(seeds), tasks(*["regression"] * n_tasks), seeds=seeds, **CPU)
    w = rlw_weights_over(balancer, 50)
    assert w.shape == (50, len(seeds), n_tasks)
    assert bool((w > 0).all())
    assert torch.allclose(w.sum(dim=2), torch.full(w.shape[:2], float(n_tasks), dtype=torch.float64))


def test_rlw_weights_come_from_the_runs_seed_whatever_the_losses_or_the_other_runs():
    specs = tasks("regression", "regression", "regression")
    steps = DRAW_BLOCK_STEPS + 10  # across a block of draws
    alone = rlw_weights_over(RLW([RLWParams()], specs, seeds=[7], **CPU), steps)
    stacked = rlw_weights_over(RLW([RLWParams()] * 3, specs, seeds=[3, 7, 11], **CPU), steps,
                               losses=torch.rand(steps, 3, 3, dtype=torch.float64) * 100)
    assert torch.equal(stacked[:, 1], alone[:, 0])
    assert not torch.allclose(stacked[:, 0], stacked[:, 2])  # other seeds, other draws
    assert not torch.allclose(alone[0, 0], alone[1, 0])  # a fresh draw at every step


def test_rlw_weights_follow_softmax_of_standard_normal_draws():
    # T = 2: w_1 = 2 sigmoid(z_1 - z_2) with z_1 - z_2 ~ N(0, 2). Its mean is 1 by symmetry and
    # its median 1; P(w_1 > 2 sigmoid(sqrt 2)) = P(N(0, 1) > 1) = 0.159.
    balancer = RLW([RLWParams()], tasks("regression", "regression"), seeds=[0], **CPU)
    w1 = rlw_weights_over(balancer, 20000)[:, 0, 0]
    assert float(w1.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(w1.median()) == pytest.approx(1.0, abs=0.02)
    threshold = 2 * torch.sigmoid(torch.tensor(math.sqrt(2.0)))
    assert float((w1 > threshold).double().mean()) == pytest.approx(0.1587, abs=0.01)


def test_rlw_keeps_a_stopped_runs_weights_and_needs_seeds():
    balancer = RLW([RLWParams()] * 2, tasks("regression", "regression"), seeds=[1, 2], **CPU)
    balancer.update(0, torch.ones(2, 2, dtype=torch.float64), None)
    before = balancer.weights().clone()
    balancer.stop_runs(torch.tensor([True, False]))
    balancer.update(1, torch.ones(2, 2, dtype=torch.float64), None)
    after = balancer.weights()
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    with pytest.raises(ValueError, match="seed"):
        RLW([RLWParams()], tasks("regression", "regression"), **CPU)


@pytest.mark.parametrize("name", sorted(BALANCERS))
@settings(max_examples=10, deadline=None)
@given(stopped_at=st.integers(0, 5),
       rows=st.lists(st.lists(st.floats(0.05, 20.0), min_size=4, max_size=4), min_size=8, max_size=8))
def test_a_stopped_run_keeps_its_weights_finite_and_fixed_and_the_other_run_goes_on_as_alone(name, stopped_at, rows):
    """The contract of `stop_runs`, for every method: from the step its run failed, a row's losses
    and gradient norms are whatever the failed slice computes (NaN here); its weights stay where
    they were, finite, and the other run's weights are step for step those it would have alone."""
    cls, kinds = BALANCERS[name], tasks("regression", "classification")
    params = build_balancer_params(name, {"weights": (1.0, 3.0)} if name == "static" else {})
    drawn = torch.tensor(rows, dtype=torch.float64)  # per step: the losses and norms of the live run
    pair = cls([params] * 2, kinds, seeds=[3, 4], **CPU)
    alone = cls([params], kinds, seeds=[4], **CPU)
    for step, values in enumerate(drawn):
        losses, norms = values[:2], values[2:]
        if step == stopped_at:
            pair.stop_runs(torch.tensor([True, False]))
            held = pair.weights()[0].clone()
        failed = torch.full_like(losses, math.nan) if step >= stopped_at else losses
        pair.update(step, torch.stack([failed, losses]), torch.stack([failed, norms]))
        alone.update(step, losses[None], norms[None])
        # Up to rounding: GradNorm's fused Adam rounds a row of a stack of two and a lone row differently.
        assert torch.allclose(pair.weights()[1], alone.weights()[0], rtol=1e-12, atol=0)
        if step >= stopped_at:
            assert torch.equal(pair.weights()[0], held) and bool(torch.isfinite(held).all())


@pytest.mark.parametrize("balancer,bad,field", [
    ("dwa", {"temperature": 0.0}, "temperature"), ("dwa", {"temperature": -2.0}, "temperature"),
    ("dwa", {"temperature": math.inf}, "temperature"), ("dwa", {"temperature": math.nan}, "temperature"),
    ("dwa", {"period": 0}, "period"),
    ("uncertainty", {"lr": 0.0}, "lr"), ("uncertainty", {"lr": math.inf}, "lr"),
    ("uncertainty", {"initial_log_variance": math.inf}, "initial_log_variance"),
    ("uncertainty", {"initial_log_variance": math.nan}, "initial_log_variance"),
    ("loss-scale", {"steps": 0}, "steps"),
    ("static", {"weights": [1.0, -0.5]}, "weights"), ("static", {"weights": [0.0, 0.0]}, "weights"),
    ("static", {"weights": [1.0, math.nan]}, "weights"),
])
def test_each_methods_bad_options_are_refused_naming_the_option(balancer, bad, field):
    """A softmax at temperature 0 or below, an Adam step of 0, a log-variance that is not a
    number: each is refused before training, naming its option, rather than train NaN weights."""
    with pytest.raises(ConfigError, match=rf"balancer\.{field}: expected"):
        build_balancer_params(balancer, bad)


@pytest.mark.parametrize("balancer,good", [
    ("dwa", {"temperature": 1e-3, "period": 1}), ("uncertainty", {"lr": 1e-6, "initial_log_variance": -5.0}),
    ("loss-scale", {"steps": 1}), ("static", {"weights": [0.0, 1e-9]}),
])
def test_each_methods_options_at_the_edge_of_what_it_takes_are_accepted(balancer, good):
    params = build_balancer_params(balancer, good)
    assert all(getattr(params, k) == (tuple(v) if isinstance(v, list) else v) for k, v in good.items())
