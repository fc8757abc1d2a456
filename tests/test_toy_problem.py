"""The paper's synthetic problem: shapes, scales, seeds and the model's structure."""

from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError
from bench.problems import PROBLEMS, build_problem
from bench.problems.toy import default_sigmas


def test_registry_maps_toy():
    assert "toy" in PROBLEMS


def test_data_shapes_scales_and_unit_norm_inputs():
    problem = build_problem("toy", {"tasks": 2, "sigmas": "1,100", "n_train": 50, "n_val": 20, "n_test": 30})
    data = problem.load(0)
    assert [len(s) for _, s in data.items()] == [50, 20, 30]
    assert data.train.inputs.shape == (50, 250)
    assert torch.allclose(data.train.inputs.norm(dim=1), torch.ones(50), atol=1e-5)
    assert 0.45 < float((data.train.inputs < 0).double().mean()) < 0.55  # from [-1, 1]^250, not [0, 1]^250
    assert [t.shape for t in data.train.targets] == [(50, 100), (50, 100)]
    # |f_i| <= sigma_i, and tanh saturates: most outputs are near +-sigma_i
    for target, sigma in zip(data.test.targets, (1.0, 100.0)):
        assert float(target.abs().max()) <= sigma
        assert float((target.abs() > 0.5 * sigma).float().mean()) > 0.8
    assert [t.normaliser for t in problem.tasks] == [1.0, 10000.0]
    # Validation and test are inputs the network never trains on.
    rows = {name: {tuple(x) for x in split.inputs.tolist()} for name, split in data.items()}
    assert [len(r) for r in rows.values()] == [50, 20, 30]
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"] or rows["val"] & rows["test"])


def test_function_matrices_have_the_documented_scales():
    std = build_problem("toy", {"tasks": 3})
    shared, task = std.functions(0)
    assert shared.shape == (100, 250) and task.shape == (3, 100, 250)
    assert float(shared.std()) == pytest.approx(10.0, rel=0.02)
    assert float(task.std()) == pytest.approx(3.5, rel=0.02)
    # eps_i is each task's own draw, independent of B and of the other tasks' (the same eps for
    # every task would make the tasks one function at different scales).
    draws = torch.stack([shared.flatten(), *task.flatten(1)])
    correlations = torch.corrcoef(draws) - torch.eye(4)
    assert float(correlations.abs().max()) < 0.02  # 25,000 entries: chance correlations ~ 0.006
    var = build_problem("toy", {"tasks": 3, "scale_kind": "variance"})
    shared, task = var.functions(0)
    assert float(shared.std()) == pytest.approx(10.0 ** 0.5, rel=0.02)
    assert float(task.std()) == pytest.approx(3.5 ** 0.5, rel=0.02)


def test_data_depends_on_the_data_seed_only():
    problem = build_problem("toy", {"n_train": 10, "n_val": 5, "n_test": 5})
    assert torch.equal(problem.load(3).train.inputs, build_problem("toy", {"n_train": 10, "n_val": 5, "n_test": 5}).load(3).train.inputs)
    assert not torch.equal(problem.load(3).train.inputs, problem.load(4).train.inputs)


def test_the_data_a_seed_stands_for_stays_the_same():
    """Stored runs are keyed on their configuration, the data seed among it: drawn another way,
    the same seed's data would leave them standing for other data. These are data seed 0's."""
    data = build_problem("toy", {"n_train": 10, "n_val": 5, "n_test": 5}).load(0)
    assert data.train.inputs[0, :3].tolist() == pytest.approx([-0.0891050, 0.00129277, 0.0548377], rel=1e-5)
    assert data.test.inputs[-1, -2:].tolist() == pytest.approx([0.0581964, -0.0817221], rel=1e-5)
    assert data.train.targets[1][0, :2].tolist() == pytest.approx([99.99978, -100.0], rel=1e-6)


def test_default_sigmas():
    assert default_sigmas(2) == (1.0, 100.0)
    ten = default_sigmas(10)
    assert ten[0] == 1.0 and ten[-1] == pytest.approx(100.0)
    ratios = [b / a for a, b in zip(ten, ten[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_model_exposes_shared_last_shared_and_task_parameters():
    problem = build_problem("toy", {"tasks": 3})
    model = problem.build_model([11, 12])
    assert model.n_runs == 2 and model.n_tasks == 3
    assert model.last_shared_weight().shape == (2, 100, 100)
    assert len(model.body.layers) == 3  # four shared layers: three in the body, then W
    assert model.last_shared_layer.weight.shape == (2, 100, 100)
    assert len(model.task_parameters()) == 3
    shared = {id(p) for p in model.shared_parameters()}
    specific = {id(p) for p in model.task_specific_parameters()}
    assert not shared & specific
    assert shared | specific == {id(p) for p in model.parameters()}
    # each slice is initialised from its own seed; a lone run with that seed matches its slice
    alone = problem.build_model([12])
    assert torch.equal(alone.body.layers[0].weight[0], model.body.layers[0].weight[1])
    assert not torch.equal(model.body.layers[0].weight[0], model.body.layers[0].weight[1])


@pytest.mark.parametrize("params", [{"tasks": 0}, {"tasks": 2, "sigmas": "1,2,3"}, {"sigmas": "1,-1"},
                                    {"sigmas": "1,0"}, {"shared_scale": -1.0}, {"task_scale": -0.5},
                                    {"n_train": 0}, {"scale_kind": "both"}, {"colour": "red"}])
def test_bad_parameters_name_the_field(params):
    with pytest.raises(ConfigError) as err:
        build_problem("toy", params)
    assert list(params)[-1] in str(err.value)
