"""Any valid study, however small or odd, runs, resumes after Ctrl-C and compares.

Studies drawn at random (two to six tasks, sampled grids of one trial, GradNorm's options, every
other method, float32 or float64, learning rates that make runs diverge, Ctrl-C part-way through)
found `bench compare` stopped by matplotlib on a simplex of fewer than three grid points, and
saying "nothing to compare" of an interrupted study without saying that it was unfinished.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bench.study.manager as manager
from bench.cli import main

GRADNORM_OPTIONS = {
    "floor": [0.05, 0.5], "grad_params": ["last_layer", "all_shared", "representation"],
    "parametrisation": ["softmax"], "weight_optimizer": ["sgd"], "weight_lr": [1e-3, 1.0],
    "reduction": ["mean"], "initial_loss": ["mean_first_steps"],
}


def toml_value(value) -> str:
    return json.dumps(value)  # numbers, strings and lists of them read the same in TOML


@st.composite
def studies(draw) -> str:
    tasks = draw(st.sampled_from([3, 2, 3, 4, 3, 6]))
    lines = [f"seeds = {draw(st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True))}",
             f"dtype = {toml_value(draw(st.sampled_from(['float32', 'float64'])))}",
             "[problem]", 'name = "toy"', f"tasks = {tasks}",
             f"sigmas = {draw(st.lists(st.sampled_from([0.5, 1.0, 4.0, 30.0]), min_size=tasks, max_size=tasks))}",
             "input_dim = 6", "output_dim = 3", "hidden = 5", f"depth = {draw(st.integers(1, 2))}",
             "n_train = 48", "n_val = 16", "n_test = 16",
             "[budget]", f"steps = {draw(st.integers(14, 24))}", "batch_size = 8",
             f"lr = {draw(st.sampled_from([0.01, 0.5, 1000.0]))}", f"eval_every = {draw(st.integers(1, 14))}"]
    grid = draw(st.sampled_from(["sampled", "exhaustive", "inside", "none"]))
    if grid == "exhaustive":
        lines += ["[arms.grid]", f"resolution = {draw(st.sampled_from([1, 0.5]))}"]
    elif grid == "inside" and tasks <= 4:
        lines += ["[arms.grid]", "resolution = 0.25", "boundary = false"]
    elif grid == "sampled":
        mapping = draw(st.sampled_from(["stick-breaking", "renormalised"]))
        samplers = ["tpe", "random", "qmc"] + (["grid"] if mapping == "stick-breaking" else [])
        sampler = draw(st.sampled_from(samplers + (["cmaes"] if tasks >= 3 or mapping == "renormalised" else [])))
        lines += ["[arms.grid]", 'method = "optuna"', f'sampler = "{sampler}"', f"n_trials = {draw(st.integers(1, 3))}",
                  f'mapping = "{mapping}"']
    if draw(st.booleans()):
        lines += ["[arms.gradnorm]", f"alpha = {toml_value(draw(st.sampled_from([0.12, 1.5, [0, 1.5]])))}"]
        options = draw(st.dictionaries(st.sampled_from(sorted(GRADNORM_OPTIONS)), st.integers(0, 2), max_size=2))
        for option, pick in options.items():
            value = GRADNORM_OPTIONS[option][pick % len(GRADNORM_OPTIONS[option])]
            if option == "floor" and options.get("parametrisation") is not None:
                continue  # a floor on softmax weights is refused
            lines.append(f"{option} = {toml_value(value)}")
            if option == "initial_loss":
                lines.append("initial_loss_steps = 3")
        if draw(st.booleans()):
            lines += ["[arms.gradnorm-static]", f"window = {toml_value(draw(st.sampled_from(['all', 'tail'])))}"]
    for arm in draw(st.lists(st.sampled_from(["equal", "uncertainty", "dwa", "rlw", "loss-scale", "mine"]),
                             min_size=1, max_size=3, unique=True)):
        lines.append(f"[arms.{arm}]")
        if arm == "mine":
            lines += ['kind = "static"', f"weights = {[1.0] * (tasks - 1) + [0.0]}"]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=studies(), interrupt_at=st.sampled_from([None, 1, 2]), batch_runs=st.sampled_from([1, 4, 64]))
def test_any_valid_study_runs_resumes_and_compares(tmp_path_factory, monkeypatch, capsys, text, interrupt_at,
                                                   batch_runs):
    work = tmp_path_factory.mktemp("any")
    monkeypatch.chdir(work)
    (work / "any.toml").write_text(text)
    trained, calls = manager.train_runs, []

    def ctrl_c_part_way(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return trained(*args, **kwargs)

    monkeypatch.setattr(manager, "train_runs", ctrl_c_part_way)
    first = main(["run", "--study", "any.toml", "--batch-runs", str(batch_runs)])
    assert first in (0, 130)
    if first == 130:  # an interrupted study compares what it has, or says what it lacks
        code = main(["compare", "--study", "any", "--no-report"])
        err = capsys.readouterr().err
        assert code == 0 or "is not finished" in err or "has no finished runs yet" in err, err
    monkeypatch.setattr(manager, "train_runs", trained)
    assert main(["run", "--study", "any.toml"]) == 0
    capsys.readouterr()
    code = main(["compare", "--study", "any"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Every run may have diverged (lr = 1000) in a study whose only other arm is a grid.
    assert code == 0 or "so there is nothing to compare" in err, err
    if code == 0:
        assert (work / "reports" / "any" / "index.html").is_file()
        assert main(["compare", "--study", "any", "--format", "json", "--no-report"]) == 0
        assert json.loads(capsys.readouterr().out)["any"]["arms"]
