"""Properties of GradNorm (Algorithm 1). Each test fails on a known broken implementation:
weights not renormalised, L_grad leaking into the network, new weights used for the network
step, target not detached, wrong norms, weight optimiser re-created every step, no pull towards
equal gradient norms at alpha = 0."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.balancers.gradnorm import GradNorm, GradNormParams
from bench.problems.base import TaskSpec
from bench.store.export import norm_target_gap
from bench.training import Budget
from bench.training import engine
from bench.training.engine import BatchTrainer
from tests.conftest import tiny_config


def trainer_for(**kwargs) -> BatchTrainer:
    tasks = kwargs.pop("tasks", 2)
    seeds = kwargs.pop("seeds", (0,))
    budget = kwargs.pop("budget", Budget(steps=50, batch_size=16, lr=1e-2, eval_every=10))
    return BatchTrainer([tiny_config("gradnorm", seed=s, tasks=tasks, budget=budget, **kwargs)
                         for s in seeds])


def naive_task_norms(trainer: BatchTrainer, x, ys, params) -> torch.Tensor:
    """||grad_W L_i|| per run and task, one autograd call per task and run (the obvious way)."""
    model = trainer.model
    rows = []
    for r in range(trainer.n_runs):
        row = []
        for i, task in enumerate(trainer.tasks):
            loss = task.loss(model(x)[i], ys[i])[r]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            row.append(math.sqrt(sum(float(g[r].square().sum()) for g in grads if g is not None)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@settings(max_examples=15, deadline=None)
@given(alpha=st.floats(0, 3), tasks=st.integers(2, 4), seed=st.integers(0, 1000),
       parametrisation=st.sampled_from(["raw", "softmax"]))
def test_weights_sum_to_T_after_every_step(alpha, tasks, seed, parametrisation):
    trainer = trainer_for(tasks=tasks, seeds=(seed, seed + 1), alpha=alpha,
                          parametrisation=parametrisation, weight_lr=0.05)
    for step in range(12):
        trainer.step(step)
        sums = trainer.balancer.weights().sum(dim=1)
        assert torch.allclose(sums, torch.full_like(sums, tasks), atol=1e-9)


def test_weights_sum_to_T_with_a_floor_and_binding_is_counted():
    # sigma = (1, 100): the large task's weight wants to go far below the floor.
    trainer = trainer_for(sigmas=(1.0, 100.0), alpha=0.12, weight_lr=0.1, floor=0.2)
    for step in range(40):
        trainer.step(step)
        w = trainer.balancer.weights()
        assert torch.allclose(w.sum(dim=1), torch.tensor([2.0], dtype=w.dtype))
        assert bool((w >= 0.2 - 1e-12).all())
    assert int(trainer.balancer.floor_binding_steps[0]) > 0


def test_a_floor_that_never_binds_leaves_the_run_bit_for_bit_as_algorithm_1():
    """A named deviation that does not act must change nothing: rescaling weights that already
    sum to T by T / sum rounds them differently, and over 600 float32 steps of the toy that moved
    the test loss by 1e-3."""
    budget = Budget(steps=60, batch_size=16, lr=1e-2, eval_every=20)
    runs = {floor: engine.train_runs([tiny_config("gradnorm", seed=s, tasks=3, budget=budget, dtype="float32",
                                                  alpha=0.12, weight_lr=0.002, floor=floor) for s in (0, 1)])
            for floor in (None, 0.01)}
    for plain, floored in zip(runs[None], runs[0.01]):
        assert floored.balancer_stats["floor_binding_steps"] == 0
        assert floored.weights_trajectory == plain.weights_trajectory
        assert floored.normalized_test_loss == plain.normalized_test_loss


def floored_balancer(tasks: int, runs: int, floor: float) -> GradNorm:
    specs = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(tasks)]
    return GradNorm([GradNormParams(floor=floor)] * runs, specs, device=torch.device("cpu"),
                    dtype=torch.float64, steps_per_epoch=1)


def test_a_floor_holds_when_rescaling_pushes_another_weight_below_it():
    # Clamping 0.09 to 0.3 and rescaling the others by 2.7 / 2.91 would leave 0.31 at 0.288.
    balancer = floored_balancer(3, 1, floor=0.3)
    w = balancer._renormalised(torch.tensor([[2.6, 0.31, 0.09]], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([[2.4, 0.3, 0.3]], dtype=torch.float64))
    assert int(balancer.floor_binding_steps[0]) == 1


@settings(max_examples=60, deadline=None)
@given(tasks=st.integers(2, 8), floor=st.floats(0.01, 0.99), seed=st.integers(0, 10_000))
def test_floored_weights_sum_to_T_stay_above_the_floor_and_keep_the_free_ratios(tasks, floor, seed):
    g = torch.Generator().manual_seed(seed)
    # Raw weights after a step: any signs, a positive sum (a non-positive one is divergence).
    raw = torch.randn(16, tasks, generator=g, dtype=torch.float64) * 3 + 1
    raw = raw[raw.sum(dim=1) > 0.1]
    balancer = floored_balancer(tasks, raw.shape[0], floor)
    w = balancer._renormalised(raw)
    assert torch.allclose(w.sum(dim=1), torch.full((raw.shape[0],), float(tasks), dtype=w.dtype))
    assert bool((w >= floor - 1e-12).all())
    free = w > floor + 1e-9
    for r in range(raw.shape[0]):
        kept, clamped = raw[r, free[r]], raw[r, ~free[r]]
        # The free weights are the raw ones times one factor; every clamped one started lower.
        ratios = w[r, free[r]] / kept
        assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-9)
        if len(clamped):
            assert bool(clamped.max() <= kept.min())
    assert torch.equal(balancer.floor_binding_steps, (raw / raw.sum(dim=1, keepdim=True) * tasks < floor).any(dim=1).long())


def test_no_gradient_of_L_grad_reaches_the_network():
    trainer = trainer_for(tasks=3, alpha=1.0)
    trainer.step(0)  # past the first step, so that L_i(0) is set and r_i != 1
    weights = trainer.balancer.weights()
    x, ys = trainer.training_batch(1)
    trainer.optimizer.zero_grad(set_to_none=True)
    losses, norms = trainer.compute_gradients(x, ys, weights)
    assert not norms.requires_grad and not losses.requires_grad
    before = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.balancer.update(1, losses, norms)
    assert trainer.balancer.last_gradnorm_loss is not None
    for p, g in zip(trainer.model.parameters(), before):
        assert torch.equal(p.grad, g)


def test_network_step_uses_the_old_weights():
    trainer = trainer_for(tasks=3, alpha=1.0, weight_lr=0.2)
    trainer.step(0)
    shadow = copy.deepcopy(trainer.model)
    shadow_optimizer = torch.optim.Adam(shadow.parameters(), lr=trainer.budget.lr, fused=True)
    shadow_optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))
    old = trainer.balancer.weights()
    x, ys = trainer.training_batch(1)
    trainer.step(1)
    new = trainer.balancer.weights()
    assert not torch.allclose(old, new), "the weights should have moved for this test to mean anything"

    def network_after_step(weights):
        model = copy.deepcopy(shadow)
        optimizer = torch.optim.Adam(model.parameters(), lr=trainer.budget.lr, fused=True)
        optimizer.load_state_dict(copy.deepcopy(shadow_optimizer.state_dict()))
        losses = trainer.problem.losses(model(x), ys)
        (weights * losses).sum().backward()
        optimizer.step()
        return list(model.parameters())

    with_old = network_after_step(old)
    with_new = network_after_step(new)
    for p, q_old, q_new in zip(trainer.model.parameters(), with_old, with_new):
        assert torch.allclose(p, q_old, atol=1e-12)
    assert any(not torch.allclose(q_old, q_new) for q_old, q_new in zip(with_old, with_new))


@pytest.mark.parametrize("tasks_per_pack", [1, 2, 3])
def test_network_gradient_is_that_of_the_weighted_loss_sum(tasks_per_pack, monkeypatch):
    trainer = trainer_for(tasks=3, seeds=(0, 1))
    x, ys = trainer.training_batch(0)
    z_elements = trainer.n_runs * x.shape[1] * trainer.model.last_shared_layer.out_features
    monkeypatch.setattr(engine, "NORM_PACK_ELEMENTS", tasks_per_pack * z_elements)
    weights = torch.tensor([[0.5, 2.0, 0.5], [1.5, 0.25, 1.25]], dtype=trainer.dtype)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.compute_gradients(x, ys, weights)
    got = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.optimizer.zero_grad(set_to_none=True)
    (weights * trainer.problem.losses(trainer.model(x), ys)).sum().backward()
    for g, p in zip(got, trainer.model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tasks_per_pack", [1, 2, 3])
@pytest.mark.parametrize("grad_params", ["last_layer_weight", "last_layer", "all_shared", "representation"])
def test_task_gradient_norms_match_one_autograd_call_per_task(grad_params, tasks_per_pack, monkeypatch):
    trainer = trainer_for(tasks=3, seeds=(0, 1, 2), grad_params=grad_params)
    x, ys = trainer.training_batch(0)
    z_elements = trainer.n_runs * x.shape[1] * trainer.model.last_shared_layer.out_features
    monkeypatch.setattr(engine, "NORM_PACK_ELEMENTS", tasks_per_pack * z_elements)
    # The engine measures the norms of the weighted gradients and divides by |w_i|: weights of
    # every sign and size, and a zero weight, whose task's norm is unobserved and reported as 0.
    weights = torch.tensor([[0.5, 2.0, 0.5], [1.5, -0.25, 1e-3], [0.0, 1.0, 3.0]], dtype=trainer.dtype)
    _, norms = trainer.compute_gradients(x, ys, weights)
    model = trainer.model
    if grad_params == "representation":
        h = model.trunk(x)
        expected = []
        for r in range(trainer.n_runs):
            row = []
            for i, task in enumerate(trainer.tasks):
                hi = h.detach().requires_grad_(True)
                loss = task.loss(model.heads[i](hi), ys[i])[r]
                (g,) = torch.autograd.grad(loss, hi)
                row.append(float(g[r].norm()))
            expected.append(row)
        expected = torch.tensor(expected, dtype=torch.float64)
    else:
        layer = model.last_shared_layer
        params = {"last_layer_weight": [layer.weight], "last_layer": [layer.weight, layer.bias],
                  "all_shared": model.shared_parameters()}[grad_params]
        expected = naive_task_norms(trainer, x, ys, params)
    expected = torch.where(weights != 0, expected, 0)
    assert torch.allclose(norms, expected, rtol=1e-9)
    assert norms[2, 0] == 0 and (norms[weights != 0] > 0).all()


@pytest.mark.parametrize("parametrisation", ["raw", "softmax"])
def test_L_grad_and_its_gradient_match_a_hand_computation(parametrisation):
    alpha = 0.7
    trainer = trainer_for(tasks=3, seeds=(0, 1), alpha=alpha, parametrisation=parametrisation)
    for step in range(3):
        trainer.step(step)
    balancer = trainer.balancer
    x, ys = trainer.training_batch(3)
    w = balancer.weights()
    losses, norms = trainer.compute_gradients(x, ys, w)
    n = naive_task_norms(trainer, x, ys, [trainer.model.last_shared_layer.weight])
    assert torch.allclose(norms, n, rtol=1e-9)

    # Algorithm 1 by hand, the target held constant.
    T = 3
    G = w * n
    G_bar = G.mean(dim=1, keepdim=True)
    ratio = losses / balancer.initial_losses
    r = ratio / ratio.mean(dim=1, keepdim=True)
    target = G_bar * r ** alpha
    L_grad = (G - target).abs().sum(dim=1)
    dL_dw = torch.sign(G - target) * n  # dG_i/dw_i = ||grad_W L_i|| for w_i > 0
    if parametrisation == "softmax":
        # w = T softmax(theta): dw_i/dtheta_j = w_i (delta_ij - w_j / T)
        jac = torch.diag_embed(w) - w.unsqueeze(2) * w.unsqueeze(1) / T
        expected_grad = torch.einsum("ri,rij->rj", dL_dw, jac)
    else:
        expected_grad = dL_dw

    theta = balancer.theta.detach().clone().requires_grad_(True)
    got = balancer.gradnorm_loss(theta, losses, norms)
    (grad,) = torch.autograd.grad(got.sum(), theta)
    assert torch.allclose(got, L_grad, rtol=1e-10)
    assert torch.allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)
    closed_loss, closed_grad = balancer.loss_and_gradient(losses, norms)  # what the update uses
    assert torch.allclose(closed_loss, L_grad, rtol=1e-10)
    assert torch.allclose(closed_grad, expected_grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(tasks=st.integers(2, 5), runs=st.integers(1, 3), alpha=st.floats(0, 3), seed=st.integers(0, 2**16),
       parametrisation=st.sampled_from(["raw", "softmax"]), reduction=st.sampled_from(["sum", "mean"]),
       kinks=st.booleans())
def test_closed_form_gradient_equals_autograd_of_L_grad(tasks, runs, alpha, seed, parametrisation,
                                                        reduction, kinks):
    """The update's formula for dL_grad/dtheta against autograd of the definition, including
    the kinks of |.|: zero and negative raw weights, and G_i exactly on its target."""
    g = torch.Generator().manual_seed(seed)
    specs = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(tasks)]
    balancer = GradNorm([GradNormParams(alpha=alpha, parametrisation=parametrisation, reduction=reduction)] * runs,
                        specs, device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=1)
    balancer.initial_losses = torch.rand(runs, tasks, generator=g, dtype=torch.float64) + 0.5
    losses = torch.rand(runs, tasks, generator=g, dtype=torch.float64) + 0.1
    norms = torch.rand(runs, tasks, generator=g, dtype=torch.float64) * 10
    balancer.theta = torch.randn(runs, tasks, generator=g, dtype=torch.float64)
    if kinks:
        # Equal training rates and unit norms: the target is mean_i |w_i|, which the weights
        # (0, 2, 1, 1, ...) meet for every w_i = 1 (and softmax's equal weights everywhere);
        # a raw weight of 0 is the kink of |w|.
        losses = balancer.initial_losses.clone()
        norms = torch.ones(runs, tasks, dtype=torch.float64)
        row = [0.0, 2.0] + [1.0] * (tasks - 2) if parametrisation == "raw" else [0.3] * tasks
        balancer.theta = torch.tensor([row] * runs, dtype=torch.float64)

    theta = balancer.theta.clone().requires_grad_(True)
    loss = balancer.gradnorm_loss(theta, losses, norms)
    (expected,) = torch.autograd.grad(loss.sum(), theta)
    got_loss, got = balancer.loss_and_gradient(losses, norms)
    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_weight_optimizer_state_survives_across_steps():
    trainer = trainer_for(alpha=0.5)
    optimizer = trainer.balancer.optimizer
    for step in range(7):
        trainer.step(step)
    assert trainer.balancer.optimizer is optimizer
    state = optimizer.state[trainer.balancer.theta]
    assert int(state["step"]) == 7
    assert float(state["exp_avg_sq"].abs().sum()) > 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_weights_steps_are_the_named_optimisers(optimizer):
    """Two updates by hand, each renormalised to sum to T: plain SGD moves w by -lr g; Adam
    (PyTorch's defaults, betas 0.9 and 0.999) by -lr m_hat / sqrt(v_hat), its moments kept
    across steps (on the first step that is -lr sign(g), whatever the betas or a momentum)."""
    specs = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(3)]
    balancer = GradNorm([GradNormParams(alpha=1.0, weight_optimizer=optimizer, weight_lr=0.1)] * 2, specs,
                        device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=1)
    losses = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]], dtype=torch.float64)
    later = torch.tensor([[0.9, 1.0, 2.9], [0.5, 0.2, 3.0]], dtype=torch.float64)
    norms = torch.tensor([[1.0, 0.2, 3.0], [2.0, 1.0, 0.1]], dtype=torch.float64)
    m = v = torch.zeros(2, 3, dtype=torch.float64)
    expected = torch.ones(2, 3, dtype=torch.float64)
    for step, step_losses in enumerate((losses, later)):
        balancer.initial_losses = losses  # the first update sets L_i(0) = its losses itself
        _, g = balancer.loss_and_gradient(step_losses, norms)
        assert (g != 0).all()
        if step == 0:
            balancer.initial_losses = None
        balancer.update(step, step_losses, norms)
        if optimizer == "sgd":
            expected = expected - 0.1 * g
        else:
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g.square()
            expected = expected - 0.1 * (m / (1 - 0.9 ** (step + 1))) / (v / (1 - 0.999 ** (step + 1))).sqrt()
        expected = 3 * expected / expected.sum(dim=1, keepdim=True)
        torch.testing.assert_close(balancer.weights(), expected, rtol=1e-6, atol=0)


def test_alpha_zero_pulls_gradient_norms_at_W_towards_equality():
    budget = Budget(steps=150, batch_size=16, lr=1e-3, eval_every=50)
    trainer = trainer_for(sigmas=(1.0, 20.0), alpha=0.0, weight_lr=0.02, budget=budget)
    record = trainer.run()[0].to_dict()
    G = trainer.balancer.traces()["grad_norms"]  # (steps, R, T): G_i = |w_i| ||grad_W L_i||

    def spread(g):
        return float((g.max(dim=-1).values / g.min(dim=-1).values).median())

    first, last = spread(G[:5]), spread(G[-30:])
    assert first > 5
    assert last < first / 3
    # The recorded targets are G_bar(t) at alpha = 0, and the runs table's gap measures the
    # distance from them over the tail window: far at the start, close once balanced.
    target = trainer.balancer.traces()["target_norms"]
    assert torch.allclose(target, G.mean(dim=-1, keepdim=True).expand_as(G))
    assert norm_target_gap(record) < 0.3
    assert norm_target_gap({**record, "tail_fraction": 1.0}) > norm_target_gap(record)
    first_steps = {k: [row for row in v if row[0] < 5] for k, v in record["traces"].items()}
    assert norm_target_gap({**record, "traces": first_steps, "steps_done": 5}) > 0.6  # spread > 5: gap > 4/6


def test_target_trace_is_nan_while_the_initial_losses_are_being_averaged():
    trainer = trainer_for(alpha=1.0, initial_loss="mean_first_steps", initial_loss_steps=4)
    for step in range(6):
        trainer.step(step)
    traces = trainer.balancer.traces()
    assert traces["grad_norms"].shape == traces["target_norms"].shape == (6, 1, 2)
    assert torch.isnan(traces["target_norms"][:4]).all()
    assert torch.isfinite(traces["target_norms"][4:]).all()
    trainer.evaluate()
    record = trainer.records(0.0)[0].to_dict()
    assert math.isfinite(norm_target_gap({**record, "tail_fraction": 1.0}))  # the NaN steps are skipped


def test_initial_loss_mean_of_first_steps_keeps_unit_weights_meanwhile():
    trainer = trainer_for(alpha=1.0, initial_loss="mean_first_steps", initial_loss_steps=4)
    seen = []
    for step in range(6):
        x, ys = trainer.training_batch(step)
        seen.append(trainer.problem.losses(trainer.model(x), ys).detach())
        if step < 4:
            assert torch.equal(trainer.balancer.weights(), torch.ones(1, 2, dtype=torch.float64))
        trainer.step(step)
    assert torch.allclose(trainer.balancer.initial_losses, torch.stack(seen[:4]).mean(0))
    assert not torch.equal(trainer.balancer.weights(), torch.ones(1, 2, dtype=torch.float64))


def test_initial_loss_log_classes_for_classification_tasks():
    tasks = [TaskSpec("digits", "classification", loss=None, n_classes=10),
             TaskSpec("size", "regression", loss=None)]
    balancer = GradNorm([GradNormParams(initial_loss="log_classes")], tasks,
                        device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=1)
    losses = torch.tensor([[2.0, 5.0]], dtype=torch.float64)
    balancer.update(0, losses, torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    assert balancer.initial_losses.tolist() == [[math.log(10), 5.0]]


@settings(max_examples=25, deadline=None)
@given(norms=st.lists(st.floats(0.01, 100), min_size=2, max_size=5))
def test_alpha_zero_drives_weighted_norms_together_for_fixed_gradients(norms):
    T = len(norms)
    tasks = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(T)]
    balancer = GradNorm([GradNormParams(alpha=0.0, weight_lr=0.01)], tasks,
                        device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=1)
    n = torch.tensor([norms], dtype=torch.float64)
    losses = torch.ones(1, T, dtype=torch.float64)
    spread_before = float((n.max() / n.min()))
    for step in range(600):
        balancer.update(step, losses, n)
        assert math.isclose(float(balancer.weights().sum()), T, rel_tol=1e-9)
    G = balancer.weights() * n
    spread_after = float(G.max() / G.min())
    # Either already equal, or much closer to equal than at the start (Adam jitters near 0 loss).
    assert spread_after <= max(1.1, 1 + (spread_before - 1) / 4) or spread_before < 1.1


@pytest.mark.parametrize("bad,field", [
    ({"alpha": -0.1}, "alpha"), ({"alpha": math.nan}, "alpha"), ({"weight_lr": 0}, "weight_lr"),
    ({"floor": 1.5}, "floor"), ({"floor": 0.0}, "floor"),
    ({"floor": 1.0}, "floor"),  # the mean weight is 1: a floor of 1 binds every weight to it, equal weights
    ({"floor": 0.1, "parametrisation": "softmax"}, "floor"), ({"grad_params": "everything"}, "grad_params"),
    ({"initial_loss_steps": 0}, "initial_loss_steps"),
])
def test_parameter_validation(bad, field):
    from bench.balancers import build_balancer_params
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"balancer\.{field}: expected"):
        build_balancer_params("gradnorm", bad)


def test_a_failed_runs_steps_are_not_counted_after_it_failed():
    """A failed run's row is still renormalised, then restored: counting it said "a task weight
    was <= 0 on 2 of 1 steps"."""
    balancer = floored_balancer(2, 2, floor=None)
    balancer.stop_runs(torch.tensor([False, True]))
    balancer._renormalised(torch.tensor([[3.0, -1.0], [3.0, -1.0]], dtype=torch.float64))
    assert balancer.nonpositive_weight_steps.tolist() == [1, 0]
    at_zero = floored_balancer(2, 3, floor=None)  # a weight of exactly 0 drops its task: it counts
    at_zero._renormalised(torch.tensor([[2.0, 0.0], [3.0, -1.0], [1.0, 1.0]], dtype=torch.float64))
    assert at_zero.nonpositive_weight_steps.tolist() == [1, 1, 0]
    floored = floored_balancer(2, 2, floor=0.2)
    floored.stop_runs(torch.tensor([True, False]))
    floored._renormalised(torch.tensor([[1.95, 0.05], [1.95, 0.05]], dtype=torch.float64))
    assert floored.floor_binding_steps.tolist() == [0, 1]
    # End to end: weights thrown beyond any limit by the first update fail the run at step 1.
    [record] = engine.train_runs([tiny_config("gradnorm", alpha=1.5, weight_lr=1e6)])
    assert record.status == "failed" and record.steps_done == 1
    assert record.balancer_stats["nonpositive_weight_steps"] <= record.steps_done


@settings(max_examples=30, deadline=None)
@given(alphas=st.lists(st.floats(0, 3), min_size=2, max_size=2, unique=True), seed=st.integers(0, 2**16),
       parametrisation=st.sampled_from(["raw", "softmax"]))
def test_alpha_reaches_the_weights_only_through_the_sign_of_each_gap(alphas, seed, parametrisation):
    """dL_grad/dw_i = sign(G_i - G_bar r_i^alpha) sign(w_i) ||grad_W L_i||: its size does not
    depend on alpha. Two alphas whose every G_i sits on the same side of its target take the same
    steps, bit for bit (README: How much alpha matters)."""
    g = torch.Generator().manual_seed(seed)
    specs = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(2)]
    balancers = [GradNorm([GradNormParams(alpha=a, parametrisation=parametrisation)],
                          specs, device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=1)
                 for a in alphas]
    for step in range(30):
        losses = 1 + 0.05 * torch.rand(1, 2, generator=g, dtype=torch.float64)  # r_i^alpha within 16 % of 1
        # Task 0's gradient norm far above any target, task 1's far below, for 30 Adam steps of
        # about 0.025 each: the signs cannot differ between the alphas.
        norms = torch.tensor([[100.0, 0.01]], dtype=torch.float64) * (1 + 0.1 * torch.rand(1, 2, generator=g))
        for balancer in balancers:
            balancer.update(step, losses, norms)
    first, second = (b.weights() for b in balancers)
    assert torch.equal(first, second)
    assert not torch.equal(first, torch.ones_like(first))  # and they did move
