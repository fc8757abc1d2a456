"""The training engine: records, determinism, stacked runs equal lone runs, failures stay alone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.errors import ConfigError
from bench.problems import PROBLEMS
from bench.problems.toy import ToyProblem
from bench.training import BatchTrainer, Budget, RunConfig, train, train_runs
from bench.training.config import derive_seed
from bench.training.engine import batch_indices, downsample
from tests.conftest import TINY_BUDGET, TINY_TOY, tiny_config

BALANCER_CASES = [
    ("equal", {}),
    ("static", {"weights": (3.0, 1.0, 0.5)}),
    ("gradnorm", {"alpha": 1.0}),
    ("gradnorm", {"alpha": 0.5, "parametrisation": "softmax", "grad_params": "all_shared"}),
    ("uncertainty", {}),
    ("dwa", {"period": 3}),
    ("rlw", {}),
    ("loss-scale", {"steps": 2}),
]


def comparable(record) -> dict:
    d = record.to_dict()
    for key in ("wall_time_s", "batch_wall_time_s", "batch_runs"):
        d.pop(key)
    return d


def assert_records_close(a, b, rtol: float) -> None:
    def walk(x, y, path):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        elif isinstance(x, float):
            assert math.isclose(x, y, rel_tol=rtol, abs_tol=rtol), f"{path}: {x} vs {y}"
        else:
            assert x == y, path
    walk(comparable(a), comparable(b), "record")


def test_record_holds_what_a_run_produced():
    config = tiny_config("gradnorm", tasks=3, alpha=1.0)
    record = train(config)
    assert record.status == "ok" and record.reason is None
    # The data seed defaults to the seed, and the record says which it was.
    assert record.config["data_seed"] == record.to_dict()["data_seed"] == config.seed == 0
    other = train(dataclasses.replace(tiny_config("equal", seed=1), data_seed=4))
    assert (other.config["seed"], other.config["data_seed"], other.to_dict()["data_seed"]) == (1, 4, 4)
    assert len(record.train_loss) == len(record.val_loss) == len(record.test_loss) == 3
    norm = [t ** 2 for t in (1.0, 3.0, 9.0)]
    assert record.normalisers == norm
    assert record.normalized_test_loss == pytest.approx(sum(l / n for l, n in zip(record.test_loss, norm)))
    assert record.overfitting_gap == pytest.approx([t - s for t, s in zip(record.test_loss, record.train_loss)])
    assert record.normalized_overfitting_gap == pytest.approx(record.normalized_test_loss - record.normalized_train_loss)
    steps = config.budget.steps
    assert [row[0] for row in record.weights_trajectory] == list(range(steps))
    assert record.weights_trajectory[0][1:] == [1.0, 1.0, 1.0]  # w_i(0) = 1
    assert sum(record.mean_weights) == pytest.approx(3.0)
    assert record.curves["step"] == [0, 5, 10, 15, 20]
    assert len(record.curves["test"]) == 5 and record.curves["test"][-1] == record.test_loss
    assert record.metrics["test"]["rms"][0] == pytest.approx(math.sqrt(record.test_loss[0]))
    assert set(record.traces) == {"grad_norms", "target_norms"}


def test_each_run_of_a_stack_is_charged_its_share_of_the_stack_s_time():
    """The comparison's cost of an arm sums its runs' wall times: three runs stacked and trained
    in t seconds cost t in all, not 3t."""
    records = train_runs([tiny_config("equal", seed=s) for s in (0, 1, 2)])
    assert [r.batch_runs for r in records] == [3, 3, 3]
    assert sum(r.wall_time_s for r in records) == pytest.approx(records[0].batch_wall_time_s, rel=1e-12)
    assert len({r.wall_time_s for r in records}) == 1


@pytest.mark.parametrize("steps,reported", [(20, list(range(1, 21))), (250, list(range(2, 251, 2)))])
def test_progress_is_reported_every_hundredth_of_the_run_and_at_its_end(steps, reported):
    calls = []
    train(tiny_config("equal", budget=dataclasses.replace(TINY_BUDGET, steps=steps, eval_every=steps)), calls.append)
    assert calls == reported


def test_a_metric_without_a_value_is_stored_as_none():
    """A metric undefined on a split (an RMS over no valid pixel is 0 / 0) is None in the record,
    as JSON has no NaN, and the other run of the stack keeps its value."""
    from bench.training.engine import _metric_table

    tasks = BatchTrainer([tiny_config("equal")]).tasks
    final = {"test": {(1, "rms"): torch.tensor([math.nan, 0.5], dtype=torch.float64)}}
    assert _metric_table(tasks, final, 0) == {"test": {"rms": [None, None]}}
    assert _metric_table(tasks, final, 1) == {"test": {"rms": [None, 0.5]}}


def test_a_weight_trajectory_keeps_where_the_weights_change_and_the_ends_of_every_flat_stretch():
    static = train(tiny_config("static", tasks=3, weights=(3.0, 1.0, 0.5)))
    steps = static.config["budget"]["steps"]
    assert static.weights_trajectory == [[0, 2.0, 2 / 3, 1 / 3], [steps - 1, 2.0, 2 / 3, 1 / 3]]
    # DWA keeps w = 1 for its first two periods (of 4 steps here), then moves every period.
    dwa = train(tiny_config("dwa", tasks=3, period=4))
    assert [row[0] for row in dwa.weights_trajectory[:4]] == [0, 7, 8, 11]
    assert dwa.weights_trajectory[1][1:] == [1.0, 1.0, 1.0] != dwa.weights_trajectory[2][1:]


@pytest.mark.parametrize("fraction", [0.25, 0.21])
def test_tail_mean_weights_use_the_tail_window(fraction):
    """The last quarter of 20 steps is 5 steps; 21% of them is 4.2 steps, and a part of a step counts
    as a whole one: 5 steps again."""
    budget = Budget(steps=20, batch_size=16, lr=1e-2, eval_every=5, tail_fraction=fraction)
    record = train(tiny_config("gradnorm", alpha=1.0, budget=budget))
    tail = [row[1:] for row in record.weights_trajectory[-5:]]
    assert record.tail_mean_weights == pytest.approx([sum(c) / 5 for c in zip(*tail)])


def test_trajectories_are_downsampled_to_500_points():
    steps, trace = downsample(torch.arange(2000.0).view(2000, 1, 1))
    assert len(steps) <= 500 and steps[0] == 0 and steps[-1] == 1999
    assert trace[:, 0, 0].tolist() == [float(s) for s in steps]


def test_batches_are_epochs_of_permutations():
    idx = batch_indices(seed=5, n_train=10, batch_size=3, steps=7)
    assert idx.shape == (7, 3)
    first_epoch = idx[:3].flatten().tolist()
    assert len(set(first_epoch)) == 9  # no repeats within an epoch; the 10th example is dropped
    assert torch.equal(idx, batch_indices(seed=5, n_train=10, batch_size=3, steps=7))
    # Each seed its own order: seeds are replications, and a shared order would tie their noise.
    assert not torch.equal(idx, batch_indices(seed=6, n_train=10, batch_size=3, steps=7))


def test_an_epoch_counts_the_full_batches_the_engine_draws():
    # Counted as `batch_indices` draws them: an epoch-long warm-up (GradNorm's L_i(0) over the
    # first epoch, DWA's default period) must end where the engine's epoch does.
    assert [Budget(batch_size=b).steps_per_epoch(10) for b in (1, 3, 4, 5, 10)] == [10, 3, 2, 2, 1]
    assert Budget(batch_size=3).steps_per_epoch(None) is None
    with pytest.raises(ConfigError, match="at most the problem's 10 training examples"):
        Budget(batch_size=11).steps_per_epoch(10)


def test_each_seed_and_stream_gets_its_own_seed_and_only_the_low_32_bits_count():
    seeds = [derive_seed(s, stream) for s in (0, 1, 2 ** 16, 2 ** 31, 2 ** 32 - 1) for stream in ("init", "batches")]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2 ** 63 for s in seeds)
    assert derive_seed(2 ** 32 + 5, "init") == derive_seed(5, "init")  # why a study's seeds stop at 2**32 - 1


def test_a_budget_refuses_a_tail_with_no_steps_and_a_quick_look_keeps_its_evaluations():
    with pytest.raises(ConfigError, match="tail_fraction"):
        Budget(tail_fraction=0.0).validate()  # the tail's mean weights would be a mean over no step
    Budget(tail_fraction=1.0).validate()
    budget = Budget(steps=1500, eval_every=100)
    assert [(b.steps, b.eval_every) for b in (budget.scaled(0.1), budget.scaled(0.0333), budget.scaled(1e-6))] == [
        (150, 100), (50, 50), (1, 1)]  # rounded, not cut: 49.95 steps are 50; at least one evaluation


def test_each_seed_starts_from_its_own_weights_and_sees_its_own_batches_when_stacked():
    """Seeds are replications: on one data seed, stacked side by side, two seeds start from
    different weights and draw the training rows in different orders."""
    trainer = BatchTrainer([dataclasses.replace(tiny_config("equal", seed=s), data_seed=0) for s in (0, 1)])
    assert all(not torch.equal(p[0], p[1]) for p in trainer.model.parameters() if p.abs().sum() > 0)
    x, _ = trainer.training_batch(0)
    assert not torch.equal(x[0], x[1])


def test_a_run_draws_its_initial_weights_from_its_seeds_init_stream():
    """Which stream a seed's initial weights come from is part of what a stored run's seed means:
    drawn from another, every result already stored under that seed would stand for other runs."""
    trainer = BatchTrainer([tiny_config("equal", seed=3)])
    drawn = trainer.problem.checked_model([derive_seed(3, "init")]).double()
    for ours, theirs in zip(trainer.model.parameters(), drawn.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_runs_of_one_seed_on_different_data_seeds_each_train_on_their_own_data_when_stacked():
    """One batch order, two data sets: each slice indexes its own data with the shared order."""
    configs = [dataclasses.replace(tiny_config("equal", seed=3), data_seed=d) for d in (0, 1)]
    for config, record in zip(configs, train_runs(configs)):
        assert_records_close(record, train(config), rtol=1e-9)


def test_each_split_is_scored_on_its_own_examples():
    """The final losses of train, validation (where grid points and alphas are chosen) and test,
    against the trained model scored by hand on that split's examples."""
    configs = [dataclasses.replace(tiny_config("gradnorm", seed=s, alpha=1.0), data_seed=0) for s in (0, 1)]
    trainer = BatchTrainer(configs)
    records = trainer.run()
    data = trainer.problem.load(0)
    with torch.no_grad():
        for name in ("train", "val", "test"):
            split = getattr(data, name)
            stacked = lambda t: t.double().unsqueeze(0).expand(len(configs), *t.shape)  # noqa: E731
            losses = trainer.problem.losses(trainer.model(stacked(split.inputs)), [stacked(y) for y in split.targets])
            for r, record in enumerate(records):
                assert getattr(record, f"{name}_loss") == pytest.approx(losses[r].tolist(), rel=1e-9)


def test_batches_drawn_an_epoch_at_a_time_are_the_same_batches():
    """The engine draws each epoch's batches as it reaches it, rather than every step's up front."""
    from bench.training.engine import BatchOrder

    order = BatchOrder([5, 9], n_train=10, batch_size=3, device=torch.device("cpu"))
    whole = torch.stack([batch_indices(s, 10, 3, 20) for s in (5, 9)])  # (seeds, steps, B)
    assert all(torch.equal(order.at(step), whole[:, step]) for step in range(20))
    assert torch.equal(order.at(4), whole[:, 4])  # an earlier step again: drawn again from the start
    assert torch.equal(order.at(17), whole[:, 17])  # a later epoch, skipping some
    assert torch.equal(order.at(14), whole[:, 14])  # the epoch just before: drawn again too
    with pytest.raises(ConfigError, match="batch_size"):
        BatchOrder([0], n_train=2, batch_size=3, device=torch.device("cpu"))


@pytest.mark.parametrize("balancer,params", BALANCER_CASES)
def test_same_seeds_give_identical_records(balancer, params):
    params = dict(params)
    if "weights" in params:
        params["weights"] = params["weights"][:2]
    a = train(tiny_config(balancer, seed=4, dtype="float32", **params))
    b = train(tiny_config(balancer, seed=4, dtype="float32", **params))
    assert comparable(a) == comparable(b)


@pytest.mark.parametrize("balancer,params", BALANCER_CASES)
def test_stacked_runs_equal_runs_trained_alone(balancer, params):
    """Float64: a slice of a stack matches the lone run to 1e-9 (only summation order differs)."""
    configs = [tiny_config(balancer, seed=s, tasks=3, **params) for s in (0, 1, 1, 2)]
    stacked = train_runs(configs)
    for config, record in zip(configs, stacked):
        assert record.batch_runs == 4
        assert_records_close(record, train(config), rtol=1e-9)


def test_a_task_weighted_zero_never_trains_its_head():
    """What the comparison tells readers of a grid point on the simplex's boundary: the task's
    head keeps its initial parameters (Adam moves nothing whose gradient stays 0), in a stack too."""
    configs = [tiny_config("static", seed=s, tasks=3, weights=(2.0, 1.0, 0.0)) for s in (0, 1)]
    trainer = BatchTrainer(configs + [tiny_config("static", seed=2, tasks=3, weights=(1.0, 1.0, 1.0))])
    heads = [p.detach().clone() for p in trainer.model.task_specific_parameters()]
    for step in range(5):
        trainer.step(step)
    after = trainer.model.task_specific_parameters()
    assert len(heads) == 6  # a weight and a bias per task
    for i, (before, now) in enumerate(zip(heads, after)):
        untouched = (before == now).flatten(1).all(dim=1).tolist()
        assert untouched == ([True, True, False] if i // 2 == 2 else [False, False, False]), i


@pytest.mark.parametrize("balancer,params", [("equal", {}), ("gradnorm", {"alpha": 1.0}),
                                             ("gradnorm", {"alpha": 1.0, "grad_params": "representation"}),
                                             ("gradnorm", {"alpha": 1.0, "grad_params": "all_shared"})])
def test_a_training_step_computes_the_model_that_evaluation_scores(balancer, params):
    """Training computes the trunk layer by layer (to take GradNorm's norms where it cuts the
    graph), evaluation calls the model: on one full batch of the training set, both give the
    same losses, after training steps too (the last shared layer's activation included)."""
    budget = dataclasses.replace(TINY_BUDGET, batch_size=TINY_TOY["n_train"])
    trainer = BatchTrainer([tiny_config(balancer, seed=s, budget=budget, **params) for s in (0, 1)])
    for step in range(3):
        trainer.evaluate()
        x, targets = trainer.training_batch(step)
        losses, _ = trainer.compute_gradients(x, targets, trainer.balancer.weights())
        torch.testing.assert_close(losses, trainer.eval_losses["train"][-1], rtol=1e-12, atol=0)
        trainer.step(step)


def test_evaluation_does_not_depend_on_its_chunk_size():
    """Evaluation runs in chunks of examples (small on a CPU, to stay in cache); chunks of one
    to three examples, with a ragged last one, give the losses and metrics of one whole pass."""
    configs = [tiny_config("equal", seed=s) for s in (0, 1, 1)]
    whole, chunked = BatchTrainer(configs), BatchTrainer(configs)
    chunked._eval_chunk_elements = len(configs) * TINY_TOY["input_dim"] * 3  # 3 examples per chunk
    for trainer in (whole, chunked):
        for i in range(3):
            trainer.step(i)
        trainer.evaluate(with_metrics=True)
    for split in ("train", "val", "test"):
        torch.testing.assert_close(chunked.eval_losses[split][-1], whole.eval_losses[split][-1],
                                   rtol=1e-12, atol=1e-12)
        assert chunked.final_metrics[split].keys() == whole.final_metrics[split].keys()
        for key, value in whole.final_metrics[split].items():
            torch.testing.assert_close(chunked.final_metrics[split][key], value, rtol=1e-12, atol=1e-12)


def test_stacked_float32_runs_equal_lone_runs_within_tolerance():
    """Float32, the default: documented tolerance 1e-4 relative after a short run."""
    configs = [tiny_config("gradnorm", seed=s, tasks=3, dtype="float32", alpha=1.0) for s in (0, 1)]
    for config, record in zip(configs, train_runs(configs)):
        assert_records_close(record, train(config), rtol=1e-4)


class PlainModulesToy(ToyProblem):
    """The toy problem with its model written as one writes a lone network, from torch's own
    modules, and stacked by StackedModule."""

    name = "plain-modules-toy"

    def build_model(self, init_seeds):
        from torch import nn

        from bench.problems import MultiTaskModel
        from bench.problems.layers import StackedModule, seeded_generators

        p, gens = self.params, seeded_generators(init_seeds)
        sizes = [p.input_dim] + [p.hidden] * p.depth

        def body():  # every layer but the last shared one, each with its ReLU
            return nn.Sequential(*[m for a, b in zip(sizes[:-2], sizes[1:-1]) for m in (nn.Linear(a, b), nn.ReLU())])

        return MultiTaskModel(StackedModule(body, gens), StackedModule(lambda: nn.Linear(p.hidden, p.hidden), gens),
                              [StackedModule(lambda: nn.Linear(p.hidden, p.output_dim), gens) for _ in range(p.tasks)],
                              n_runs=len(init_seeds), activation=nn.ReLU())


def plain_modules_config(balancer: str, seed: int, **params) -> RunConfig:
    return dataclasses.replace(tiny_config(balancer, seed=seed, tasks=3, **params), problem=PlainModulesToy.name)


@pytest.mark.parametrize("balancer,params",
                         BALANCER_CASES + [("gradnorm", {"alpha": 1.0, "grad_params": "last_layer"})])
def test_a_model_of_plain_torch_modules_stacked_trains_each_run_as_alone(monkeypatch, balancer, params):
    """StackedModule: a stack of ordinary modules, vmapped, gives each run what it gives alone."""
    monkeypatch.setitem(PROBLEMS, PlainModulesToy.name, PlainModulesToy)
    configs = [plain_modules_config(balancer, s, **params) for s in (0, 1, 1, 2)]
    stacked = train_runs(configs)
    for config, record in zip(configs, stacked):
        assert record.status == "ok" and record.batch_runs == 4
        assert_records_close(record, train(config), rtol=1e-9)


@pytest.mark.parametrize("grad_params", ["last_layer_weight", "last_layer", "all_shared", "representation"])
@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_stacked_plain_modules_compute_and_train_as_the_stacked_layers_do(monkeypatch, grad_params, seeds):
    """Given the toy model's parameters, the same network of plain modules computes the same
    losses, gradients and GradNorm norms (through autograd and vmap, where the toy's linear last
    layer has its norms in closed form), and trains to the same parameters."""
    monkeypatch.setitem(PROBLEMS, PlainModulesToy.name, PlainModulesToy)
    params = {"alpha": 1.0, "grad_params": grad_params}
    ours = BatchTrainer([tiny_config("gradnorm", seed=s, tasks=3, **params) for s in seeds])
    plain = BatchTrainer([plain_modules_config("gradnorm", s, **params) for s in seeds])
    pairs = []  # (the toy's StackedLinear parameter, the plain module's, laid out as nn.Linear's)
    layers = [*ours.model.body.layers, ours.model.last_shared_layer, *ours.model.heads]
    wrapped = [(plain.model.body, f"{2 * i}__") for i in range(len(ours.model.body.layers))]
    wrapped += [(m, "") for m in (plain.model.last_shared_layer, *plain.model.heads)]
    assert len(layers) == len(wrapped) == 2 + 3
    with torch.no_grad():
        for layer, (module, prefix) in zip(layers, wrapped):
            weight, bias = getattr(module, prefix + "weight"), getattr(module, prefix + "bias")
            weight.copy_(layer.weight.transpose(1, 2))
            bias.copy_(layer.bias.squeeze(1))
            pairs += [(layer.weight, weight, True), (layer.bias, bias, False)]
    # a task weighted 0 too
    weights = torch.tensor([[2.0, 0.5, 0.5], [0.0, 1.0, 2.0]], dtype=torch.float64)[:len(seeds)]
    x, targets = ours.training_batch(0)
    expected, expected_norms = ours.compute_gradients(x, targets, weights)
    losses, norms = plain.compute_gradients(x, targets, weights)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(norms, expected_norms, rtol=1e-10, atol=0)
    for toy_param, plain_param, transposed in pairs:
        grad = toy_param.grad.transpose(1, 2) if transposed else toy_param.grad.squeeze(1)
        torch.testing.assert_close(plain_param.grad, grad, rtol=1e-10, atol=1e-14)
    # And they train alike. A vmapped head's gradient comes back transposed, and fused Adam,
    # given it as it came, moved the heads elsewhere than the toy's, from the first step.
    for step in range(3):
        ours.step(step)
        plain.step(step)
    for toy_param, plain_param, transposed in pairs:
        value = toy_param.transpose(1, 2) if transposed else toy_param.squeeze(1)
        torch.testing.assert_close(plain_param, value, rtol=1e-9, atol=1e-12)


class SequentialLastLayerToy(PlainModulesToy):
    """The last shared layer a StackedModule of a Sequential: no one weight W for GradNorm."""

    name = "sequential-last-layer-toy"

    def build_model(self, init_seeds):
        from torch import nn

        from bench.problems.layers import StackedModule, seeded_generators

        model = super().build_model(init_seeds)
        hidden = self.params.hidden
        model.last_shared_layer = StackedModule(lambda: nn.Sequential(nn.Linear(hidden, hidden)),
                                                seeded_generators(init_seeds))
        return model


def test_stacked_runs_kept_apart_pass_the_check_that_they_are_even_with_dropout_and_batch_norm():
    """`bench run` checks that run 0's predictions and losses ignore run 1's parameters and rows;
    torch's dropout and batch norm in a StackedModule keep the runs apart (each run its own
    statistics, its own masks), and the check, drawing the same masks twice, says nothing."""
    from torch import nn

    from bench.problems.base import check_runs_apart
    from bench.problems.layers import StackedModule, seeded_generators

    class NormedDropoutToy(PlainModulesToy):
        def build_model(self, init_seeds):
            model = super().build_model(init_seeds)
            width = self.params.input_dim
            model.body = nn.Sequential(StackedModule(lambda: nn.Sequential(nn.BatchNorm1d(width), nn.Dropout(0.5)),
                                                     seeded_generators(init_seeds)), model.body)
            return model

    problem = NormedDropoutToy(ToyProblem.Params(**TINY_TOY))
    model = problem.checked_model([0, 1])
    check_runs_apart(problem, problem.load(0), model)
    outputs = model.body[0](torch.ones(2, 50, TINY_TOY["input_dim"]) + torch.arange(50.0)[:, None])
    assert not torch.equal(outputs[0] == 0, outputs[1] == 0)  # each run its own dropout mask


class MixedRunsToy(ToyProblem):
    """The toy, its trunk's output centred over every row of every run: the runs of a stack meet."""

    name = "mixed-runs-toy"

    def build_model(self, init_seeds):
        model = super().build_model(init_seeds)
        model.activation = CentredOverEveryRun()
        return model


class CentredOverEveryRun(torch.nn.Module):
    def forward(self, z):
        return torch.relu(z - z.mean(dim=(0, 1), keepdim=True))


def test_a_stack_whose_runs_meet_is_refused_by_the_engine_too_and_a_run_alone_trains(monkeypatch):
    """`bench run` checks this before it opens the storage; a Dask worker, or a caller of
    train_runs, meets it when the first stack of the problem is built."""
    monkeypatch.setitem(PROBLEMS, MixedRunsToy.name, MixedRunsToy)
    configs = [dataclasses.replace(tiny_config("equal", seed=s), problem=MixedRunsToy.name) for s in (0, 1)]
    with pytest.raises(ConfigError, match=r"^problem: expected a model whose stacked runs stay apart: .*, got "
                                          r"\"run 0's predictions of task0 changed\"$"):
        train_runs(configs)
    assert train(configs[0]).status == "ok"


def test_gradnorm_on_a_last_shared_layer_without_one_weight_says_what_to_do(monkeypatch):
    monkeypatch.setitem(PROBLEMS, SequentialLastLayerToy.name, SequentialLastLayerToy)
    config = dataclasses.replace(plain_modules_config("gradnorm", 0, alpha=1.0), problem=SequentialLastLayerToy.name)
    with pytest.raises(ConfigError) as told:
        BatchTrainer([config])
    assert str(told.value) == (
        "balancer.grad_params: expected parameters the model's last shared layer has: last_layer_weight takes its "
        "weight, and StackedModule has no weight (make the last shared layer one layer, such as a StackedLinear or "
        "a StackedModule of an nn.Linear, or set grad_params = \"all_shared\"), got 'last_layer_weight'")
    every_shared = dataclasses.replace(plain_modules_config("gradnorm", 0, alpha=1.0, grad_params="all_shared"),
                                       problem=SequentialLastLayerToy.name)
    assert train(every_shared).status == "ok"


class PoisonedToy(ToyProblem):
    """The toy problem, except that data seed 13 has one non-finite training target."""

    name = "poisoned-toy"

    def _load(self, data_seed):
        data = super()._load(data_seed)
        if data_seed == 13:
            data.train.targets[1][7] = float("inf")
        return data


class PoisonedPlainModulesToy(PoisonedToy, PlainModulesToy):
    """The poisoned toy, its network in torch's modules stacked by StackedModule."""

    name = "poisoned-plain-modules-toy"


@pytest.mark.parametrize("problem", [PoisonedToy, PoisonedPlainModulesToy], ids=["stacked layers", "StackedModule"])
@pytest.mark.parametrize("balancer", ["equal", "gradnorm", "uncertainty", "dwa", "rlw", "loss-scale"])
def test_a_diverging_run_fails_alone_and_the_others_go_on(monkeypatch, balancer, problem):
    monkeypatch.setitem(PROBLEMS, problem.name, problem)
    budget = Budget(steps=20, batch_size=16, lr=1e-2, eval_every=5)
    configs = [RunConfig(problem=problem.name, balancer=balancer, seed=s, data_seed=d,
                         problem_params=dict(TINY_TOY), budget=budget, dtype="float64",
                         device="cpu").validated() for s, d in ((0, 0), (1, 13), (2, 2))]
    trainer = BatchTrainer(configs)
    records = trainer.run()
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    # Its slice stays frozen at zeros (Adam's moments too, which would move it again): finite
    # numbers, whatever the step that failed it left there.
    assert all(not p[1].any() for p in trainer.model.parameters())
    failed = records[1]
    assert "non-finite training loss" in failed.reason and "task1" in failed.reason
    assert failed.failed_step == failed.steps_done < 20
    assert failed.test_loss is None and failed.normalized_test_loss is None
    # Its curves hold the evaluations up to its failure (the one at that step came before it)
    # and its weights the steps it took, all finite.
    assert failed.curves["step"] == [s for s in (0, 5, 10, 15) if s <= failed.failed_step]
    assert [row[0] for row in failed.weights_trajectory][-1] == failed.failed_step - 1
    assert all(math.isfinite(v) for row in failed.weights_trajectory for v in row)
    # the survivors are exactly what they would be without the failing neighbour
    for config, record in zip([configs[0], configs[2]], [records[0], records[2]]):
        alone = train(config)
        assert_records_close(record, alone, rtol=1e-9)


def test_batch_runs_must_share_problem_and_budget():
    with pytest.raises(ValueError):
        train_runs([tiny_config("equal"), tiny_config("equal", budget=Budget(steps=3, batch_size=16))])
    with pytest.raises(ValueError):
        train_runs([tiny_config("equal"), tiny_config("gradnorm")])
    # One stacked model has one dtype: float32 and float64 runs never share a batch.
    assert tiny_config("equal", dtype="float32").batch_key() != tiny_config("equal", dtype="float64").batch_key()
    assert tiny_config("static", weights=[1.0, 1.0]).batch_key() == tiny_config("static", weights=[0.5, 1.5]).batch_key()
    # Nor do runs meant for two devices (a study's workers on two GPUs).
    assert tiny_config("equal").batch_key() != dataclasses.replace(tiny_config("equal"), device="cuda:1").batch_key()


def test_runaway_task_weights_count_as_divergence():
    from bench.training.engine import MAX_TASK_WEIGHT, BatchTrainer

    trainer = BatchTrainer([tiny_config("equal", seed=s) for s in (0, 1)])
    trainer._check_diverged(torch.tensor([[1.0, 1.0], [-2 * MAX_TASK_WEIGHT, 3.0]], dtype=torch.float64),
                            "task weights", 7, limit=MAX_TASK_WEIGHT)
    # A later check that finds the same run wrong before it is retired leaves the first cause.
    trainer._check_diverged(torch.tensor([[1.0, 1.0], [math.nan, 1.0]], dtype=torch.float64), "training loss", 7)
    trainer._retire_failed_runs()
    assert trainer.alive.tolist() == [True, False]
    assert trainer.failures[1] == (7, "diverged: task weights beyond 1e+06 at step 7 (task task0)")
    # The other run failing later leaves the first one retired.
    trainer._check_diverged(torch.tensor([[math.inf, 1.0], [0.0, 0.0]], dtype=torch.float64),
                            "task weights", 9, limit=MAX_TASK_WEIGHT)
    trainer._retire_failed_runs()
    assert trainer.alive.tolist() == [False, False]
    assert trainer.failures[0] == (9, "diverged: non-finite task weights at step 9 (task task0)")
    assert trainer.failures[1][0] == 7


def test_a_training_loss_grown_a_millionfold_counts_as_divergence():
    """A loss that runs away (GradNorm's weights crossed zero and train a task upward) overflows
    only later: the run failed or finished by the budget's length, and a finished one's 3e+08
    carried its arm's mean."""
    from bench.training.engine import MAX_LOSS_GROWTH

    trainer = BatchTrainer([tiny_config("equal", seed=s) for s in (0, 1, 2)])  # normalisers 1 and 9
    # 2.0 each, task-normalised; run 2's problem was solved before training, and no growth is defined
    before = torch.tensor([[1.0, 9.0], [1.0, 9.0], [0.0, 0.0]], dtype=torch.float64)
    trainer.eval_losses["train"] = [before, torch.tensor([[1.5e6, 9.0], [0.5, 9 * 2.1e6], [1e-3, 0.0]],
                                                         dtype=torch.float64)]
    trainer.steps_done = 40
    trainer._check_runaway()
    trainer._retire_failed_runs()
    assert 1.5e6 + 1 < MAX_LOSS_GROWTH * 2 < 0.5 + 2.1e6  # run 0 grew 750,001-fold, run 1 1,050,000-fold
    assert trainer.alive.tolist() == [True, False, True] and trainer.failures[0] is trainer.failures[2] is None
    assert trainer.failures[1] == (40, "diverged: task-normalised training loss 2.1e+06 at step 40, 1.1e+06 times "
                                       "its 2 before training (beyond 1e+06; task task1 grew most)")


def test_a_run_whose_loss_runs_away_between_evaluations_fails_with_the_others_unchanged():
    budget = Budget(steps=20, batch_size=16, lr=100.0, eval_every=5)  # Adam at 100: the loss explodes
    runaway = tiny_config("equal", seed=0, budget=budget)
    trainer = BatchTrainer([runaway])
    [record] = trainer.run()
    assert record.status == "failed" and record.failed_step == 5
    assert trainer.steps_done <= 6  # with no run left, training stops (not at 20)
    assert record.curves["step"] == [0, 5]  # the evaluation that found it is in its curves
    assert record.reason.startswith("diverged: task-normalised training loss ")
    assert train(tiny_config("equal", seed=0)).ok  # the same run at a sane rate


def test_the_check_that_a_model_takes_its_inputs_leaves_it_as_it_was():
    """A batch-norm layer of one's own would have counted the probe's rows in its statistics."""
    from torch import nn

    from bench.problems import build_problem

    class Normed(nn.Module):  # batch norm over every run's rows, then the toy's trunk
        def __init__(self, body: nn.Module, width: int):
            super().__init__()
            self.norm, self.body = nn.BatchNorm1d(width), body

        def forward(self, x):
            return self.body(self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape))

    class OwnToy(ToyProblem):  # a problem of one's own: the check runs its model
        pass

    problem = OwnToy(build_problem("toy", {"n_train": 20, "n_val": 5, "n_test": 5, "input_dim": 6}).params)
    model = problem.checked_model([0, 1])
    model.body = Normed(model.body, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = problem.load(0).train.inputs[None, :2].expand(2, 2, 6) * 5 + 3
    problem.check_model_takes(model, inputs)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model(inputs)  # what the check must not do
    assert not torch.equal(model.body.norm.running_mean, before["body.norm.running_mean"])


class SolvedTaskToy(ToyProblem):
    """The toy problem, except that with data seed 13 task1's loss is exactly 0 throughout
    (its targets are 0, and its loss is the squared product of target and prediction)."""

    name = "solved-task-toy"

    def _load(self, data_seed):
        data = super()._load(data_seed)
        if data_seed == 13:
            for split in (data.train, data.val, data.test):
                split.targets[1].zero_()
        return data

    def _tasks(self):
        first, second = super()._tasks()
        return [first, dataclasses.replace(second, loss=lambda pred, target: (pred * target).square().mean(dim=(1, 2)))]


@pytest.mark.parametrize("balancer", ["gradnorm", "loss-scale"])
def test_a_run_whose_weights_divide_by_a_zero_initial_loss_fails_alone_and_says_why(monkeypatch, balancer):
    """GradNorm's rates L_i(t) / L_i(0) were 0 / 0 = NaN, whose sign is 0 in torch: its weights
    silently stayed at 1, an equal-weights run under GradNorm's name; 1 / L_i(0) 'diverged'."""
    monkeypatch.setitem(PROBLEMS, SolvedTaskToy.name, SolvedTaskToy)
    budget = Budget(steps=12, batch_size=16, lr=1e-2, eval_every=4)
    configs = [RunConfig(problem="solved-task-toy", balancer=balancer, seed=s, data_seed=d,
                         problem_params=dict(TINY_TOY), budget=budget, dtype="float64",
                         device="cpu").validated() for s, d in ((0, 0), (1, 13))]
    records = train_runs(configs)
    assert [r.status for r in records] == ["ok", "failed"]
    failed = records[1]
    assert failed.reason.startswith("undefined task weights: ") and "task1 (0)" in failed.reason
    assert "L_i(0)" in failed.reason and failed.steps_done == 1
    assert_records_close(records[0], train(configs[0]), rtol=1e-9)  # its neighbour as if alone


def test_dwa_fails_a_run_whose_loss_rose_from_exactly_zero_and_keeps_a_zero_loss_at_ratio_one():
    from bench.balancers.dwa import DWA, DWAParams
    from bench.problems.base import TaskSpec

    specs = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(2)]
    dwa = DWA([DWAParams(period=1)] * 2, specs, device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=1)
    dwa.update(0, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), None)
    dwa.update(1, torch.tensor([[1.0, 0.0], [1.0, 0.5]], dtype=torch.float64), None)
    assert dwa.weights()[0].tolist() == [1.0, 1.0]  # 0 / 0: unchanged, ratio 1 like task t0's
    assert list(dwa.undefined) == [1] and "t1 (0.5)" in dwa.undefined[1]
    assert dwa.weights()[1].tolist() == [1.0, 1.0]  # kept finite until the engine retires it


def test_gradnorm_fails_a_run_with_a_negative_loss_which_has_no_training_rate():
    from bench.balancers.gradnorm import GradNorm, GradNormParams
    from bench.problems.base import TaskSpec

    specs = [TaskSpec(f"t{i}", "regression", loss=None) for i in range(2)]
    gradnorm = GradNorm([GradNormParams(alpha=1.0)] * 2, specs, device=torch.device("cpu"),
                        dtype=torch.float64, steps_per_epoch=1)
    norms = torch.ones(2, 2, dtype=torch.float64)
    gradnorm.update(0, torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64), norms)
    assert not gradnorm.undefined
    gradnorm.update(1, torch.tensor([[0.5, 1.0], [0.5, -0.4]], dtype=torch.float64), norms)
    assert list(gradnorm.undefined) == [1] and "t1 (-0.2)" in gradnorm.undefined[1]
    assert "t0" not in gradnorm.undefined[1]
    # Non-finite gradient norms are divergence, which the engine names on the next step's losses.
    gradnorm.update(2, torch.tensor([[0.5, 1.0]] * 2, dtype=torch.float64),
                    torch.tensor([[1.0, math.nan]] * 2, dtype=torch.float64))
    assert list(gradnorm.undefined) == [1]
