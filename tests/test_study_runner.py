"""The study manager end to end on tiny budgets: every arm, resume, safety, parallel runs."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest

import bench.study.manager as manager
from bench.cli import main
from bench.errors import BenchError, StorageError
from bench.problems import PROBLEMS
from bench.store import ResultStore
from bench.store.export import curves_table, metrics_table, norm_target_gap, runs_table
from bench.store.results import RUN_KEY, STATUS, SUMMARY, ArmTrials, StudyConfigChanged, rounded, tell
from bench.study import StudyRunner, StudySpec
from bench.study.simplex import cube_to_simplex
from tests.test_engine import PoisonedToy
from tests.test_study_spec import TINY

FULL = TINY + """
[arms.sampled]
kind = "grid"
method = "optuna"
sampler = "tpe"
n_trials = 4
parallel_points = 2

[arms.uncertainty]

[arms.dwa]
period = 2

[arms.rlw]
"""


def spec_of(text: str, **kwargs) -> StudySpec:
    return StudySpec.from_dict(tomllib.loads(text), source="test.toml", **kwargs)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return ResultStore(str(tmp_path / "results" / "bench.journal"))


def results_by_key(store: ResultStore, name: str) -> dict:
    return {(r["arm"], r["run_key"]): r for r in store.records(name)}


def test_an_arm_with_its_own_learning_rate_trains_at_it_and_the_summary_says_so(store):
    from bench.compare import load_comparison

    spec = spec_of(TINY.replace("[arms.grid]\nmethod = \"exhaustive\"\nresolution = 0.5\n", "")
                   .replace("alpha = [0.5, 1.0]", "alpha = 0.5\nnetwork_lr = 0.03")
                   + '\n[arms.equal-fast]\nkind = "equal"\nnetwork_lr = 0.03\n')
    assert StudyRunner(spec, store).run().failed == 0
    records = results_by_key(store, "tiny")
    for (arm, key), r in records.items():
        assert r["record"]["config"]["budget"]["lr"] == (0.01 if arm == "equal" else 0.03), (arm, key)
    # The same seeds and data at another rate: other losses.
    for seed in (0, 1):
        assert (records[("equal", f"seed={seed}")]["record"]["normalized_val_loss"]
                != records[("equal-fast", f"seed={seed}")]["record"]["normalized_val_loss"])
    table = runs_table(store, "tiny")
    assert table.groupby("arm", sort=False).lr.unique().map(list).to_dict() == {
        "gradnorm": [0.03], "gradnorm-static": [0.03], "equal": [0.01], "equal-fast": [0.03]}
    assert set(metrics_table(table, ["task0", "task1"]).groupby("arm").lr.unique().map(list).map(tuple)) == {
        (0.03,), (0.01,)}
    said = [line for line in load_comparison(store, "tiny").headline if "learning rate" in line]
    assert said == ["The arms are compared at different learning rates (network_lr): gradnorm, gradnorm-static and "
                    "equal-fast at 0.03; equal at the study's [budget] lr = 0.01. Between arms at different rates, a "
                    "difference is one of weighting and learning rate together."]


def test_an_arm_given_several_learning_rates_trains_each_and_is_judged_at_the_one_chosen_on_validation(store):
    import matplotlib.pyplot as plt

    from bench.cli.compare import _comparison_object
    from bench.compare import load_comparison
    from bench.report import figures

    spec = spec_of(TINY.replace("alpha = [0.5, 1.0]", "alpha = 0.5\nnetwork_lr = [0.01, 0.05]")
                   .replace("[arms.equal]", "[arms.equal]\nnetwork_lr = [0.002, 0.01, 0.05]") + "\n[arms.uncertainty]\n")
    assert StudyRunner(spec, store).run().failed == 0
    table = runs_table(store, "tiny")
    equal = table[table.arm == "equal"]
    assert sorted(equal.run_key) == sorted(f"lr={lr}/seed={s}" for lr in ("0.002", "0.01", "0.05") for s in (0, 1))
    assert (equal.lr == equal.run_key.str.extract(r"lr=([^/]+)/")[0].astype(float)).all()
    # Each GradNorm static run retrains its GradNorm run at that run's rate.
    static = table[table.arm == "gradnorm-static"].set_index("run_key").lr
    assert static.to_dict() == table[table.arm == "gradnorm"].set_index("run_key").lr.to_dict()
    assert set(static) == {0.01, 0.05}

    c = load_comparison(store, "tiny")
    for arm in ("equal", "gradnorm"):
        runs = table[table.arm == arm]
        by_val = runs.groupby(runs.run_key.str.rsplit("/seed=", n=1).str[0]).normalized_val_loss.mean()
        assert c.choices[arm].chosen_variant == by_val.idxmin() and c.choices[arm].what == "learning rate"
    assert "gradnorm-static" not in c.choices and "uncertainty" not in c.choices
    chosen = {arm: f"{arm} ({c.choices[source].chosen_variant})" for arm, source in
              (("equal", "equal"), ("gradnorm", "gradnorm"), ("gradnorm-static", "gradnorm"))}
    every = set(c.main.arm)
    assert c.passed_over == every - set(chosen.values()) - {"grid", "grid (all weights > 0)", "uncertainty"}
    # The tables list every rate; the paired tests and the summary only the chosen ones.
    assert len(every) == 1 + 3 + 2 + 2 + 1 + ("grid (all weights > 0)" in every)
    tested = set(c.comparisons.arm) | set(c.comparisons.versus)
    assert not tested & c.passed_over and set(chosen.values()) <= tested
    assert ((c.comparisons.arm == chosen["gradnorm-static"]) & (c.comparisons.versus == chosen["gradnorm"])).any()
    equal_line = next(line for line in c.headline if line.startswith("equal: "))
    assert f"validation chose {c.choices['equal'].chosen_variant} of 3 values" in equal_line
    assert "the tables list every learning rate" in equal_line
    for passed in c.passed_over:
        assert not any(f"{passed} " in line or f"{passed})" in line for line in c.headline[2:]), passed
    as_json = _comparison_object(c, None)
    assert as_json["choices"]["equal"]["setting"] == "learning rate" and as_json["alpha_choices"] == {}
    assert {row["variant"] for row in as_json["choices"]["equal"]["chosen_without_each_seed"]} <= {
        "lr=0.002", "lr=0.01", "lr=0.05"}
    fig = figures.setting_sensitivity(c)
    drawn = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in drawn] == ["the network's learning rate (network_lr)"] * 2
    assert drawn[1].get_xscale() == "log"  # 0.002 to 0.05: decades apart
    plt.close(fig)


def test_a_run_without_a_record_takes_its_rate_from_its_key_or_its_arm():
    """A worker that failed before training stores no record: its rate comes from the study."""
    from bench.store.export import runs_frame

    manifest = {"kinds": {"equal": "equal", "fast": "equal", "slow": "equal"}, "task_names": ["a", "b"],
                "identity": {"budget": {"lr": 0.001}, "arms": {"equal": {"kind": "equal"},
                                                              "fast": {"kind": "equal", "network_lr": [0.01, 0.05]},
                                                              "slow": {"kind": "equal", "network_lr": 0.0005}}}}

    def entry(arm: str, key: str) -> dict:
        return {"study": "s", "arm": arm, "run_key": key, "trial": 0, "status": "failed", "reason": "out of memory",
                "user_attrs": {"seed": 0}, "params": {"seed": 0}, "value": None, "record": None}

    frame = runs_frame(manifest, [entry("equal", "seed=0"), entry("fast", "lr=0.05/seed=0"), entry("slow", "seed=0")])
    assert dict(zip(frame.arm, frame.lr)) == {"equal": 0.001, "fast": 0.05, "slow": 0.0005}
    assert frame.lr.dtype == float


def test_a_study_at_one_learning_rate_says_nothing_of_it(store):
    from bench.compare import load_comparison

    assert StudyRunner(spec_of(TINY), store).run().failed == 0
    assert set(runs_table(store, "tiny").lr) == {0.01}
    assert not any("learning rate" in line for line in load_comparison(store, "tiny").headline)


def test_every_arm_runs_and_is_stored(store):
    spec = spec_of(FULL)
    runner = StudyRunner(spec, store)
    progress = runner.run()
    assert progress.left == 0 and progress.failed == 0
    assert progress.total == len(spec.runs()) == 6 + 4 + 4 + 2 + 8 + 2 + 2 + 2
    records = results_by_key(store, "tiny")
    assert len(records) == progress.total
    for (arm, key), r in records.items():
        assert r["status"] == "ok"
        assert r["value"] == pytest.approx(r["record"]["normalized_val_loss"])
        # Beside the value, for optuna-dashboard's trial table.
        assert {k: r["user_attrs"][k] for k in SUMMARY} == {k: r["record"][k] for k in SUMMARY}
        assert r["params"]["seed"] == r["record"]["config"]["seed"]

    # GradNorm static retrains each GradNorm run's time-averaged weights, same seed.
    for (arm, key), r in records.items():
        if arm == "gradnorm-static":
            source = records[("gradnorm", key)]["record"]
            assert r["record"]["config"]["balancer_params"]["weights"] == pytest.approx(source["mean_weights"])
            assert r["record"]["config"]["seed"] == source["config"]["seed"]
            assert [r["params"][f"w{i}"] for i in range(2)] == pytest.approx(source["mean_weights"])

    # Sampled points: both seeds of a point train the point its first seed's trial sampled.
    for k in range(4):
        first, second = records[("sampled", f"point={k}/seed=0")], records[("sampled", f"point={k}/seed=1")]
        assert first["params"]["z0"] == second["params"]["z0"]
        weights = list(cube_to_simplex([first["params"]["z0"]], 2))
        assert first["record"]["config"]["balancer_params"]["weights"] == pytest.approx(weights)
        assert second["record"]["config"]["balancer_params"]["weights"] == pytest.approx(weights)

    # Exhaustive grid points sum to T; the tidy table has one row per run.
    table = runs_table(store, "tiny")
    assert len(table) == progress.total
    # The arms in the study file's order (the store's is alphabetical), each arm's runs in natural order.
    assert list(table.arm.unique()) == list(spec.arms) == ["grid", "gradnorm", "gradnorm-static", "equal",
                                                            "sampled", "uncertainty", "dwa", "rlw"]
    assert table[table.arm == "sampled"].run_key.tolist()[:3] == ["point=0/seed=0", "point=0/seed=1", "point=1/seed=0"]
    grid = table[table.arm == "grid"]
    assert ((grid.weight_task0 + grid.weight_task1) - 2).abs().max() < 1e-9
    # GradNorm's own counts and L_i(0) come from each record, for the comparison to report.
    gradnorm = table[table.arm == "gradnorm"]
    for row in gradnorm.itertuples():
        stats = records[("gradnorm", row.run_key)]["record"]["balancer_stats"]
        assert row.nonpositive_weight_steps == stats["nonpositive_weight_steps"]
        assert row.floor_binding_steps == stats["floor_binding_steps"]
        assert [row.initial_loss_task0, row.initial_loss_task1] == stats["initial_losses"]
        assert row.norm_target_gap == norm_target_gap(records[("gradnorm", row.run_key)]["record"]) >= 0
    assert table[table.arm == "grid"].nonpositive_weight_steps.isna().all()
    # A static retrain carries its GradNorm run's alpha (its own parameters are weights): with
    # the alpha empty, `groupby(["arm", "alpha"])` dropped every static retrain.
    retrains = table[table.arm == "gradnorm-static"].set_index("run_key").alpha
    assert retrains.to_dict() == gradnorm.set_index("run_key").alpha.to_dict() and set(retrains) == {0.5, 1.0}
    assert table.groupby(["arm", "alpha"]).size().loc["gradnorm-static"].to_dict() == {0.5: 2, 1.0: 2}
    assert table[table.arm == "grid"].norm_target_gap.isna().all()
    # The long table: one row per run and measure, each the runs table's value, the parameters beside.
    long = metrics_table(table, ["task0", "task1"])
    assert not long.duplicated(["arm", "run_key", "metric", "split", "task"]).any()
    keys = list(zip(long.arm, long.run_key))  # each run's measures together, the runs in the table's order
    assert list(dict.fromkeys(keys)) == list(zip(table.arm, table.run_key))
    assert sum(a != b for a, b in zip(keys, keys[1:])) == len(table) - 1
    wide = table.set_index(["arm", "run_key"])
    for column, (metric, split, task) in {"normalized_test_loss": ("normalized_loss", "test", ""),
                                          "val_loss_task1": ("loss", "val", "task1"),
                                          "mean_weight_task0": ("mean_weight", "", "task0"),
                                          "norm_target_gap": ("norm_target_gap", "", "")}.items():
        rows = long[(long.metric == metric) & (long.split == split) & (long.task == task)]
        assert rows.set_index(["arm", "run_key"]).value.to_dict() == wide[column].dropna().to_dict()
    grid_rows = long[long.arm == "grid"]
    assert (grid_rows.weight_task0 + grid_rows.weight_task1 - 2).abs().max() < 1e-9  # its parameters
    assert set(long.metric) >= {"loss", "rms", "overfitting_gap", "wall_time_s", "initial_loss"}
    # The curves in long form: every evaluation of every run, its weights, GradNorm's norms.
    curves = curves_table(table, store.records("tiny"), ["task0", "task1"])
    assert not curves.duplicated(["arm", "run_key", "step", "metric", "split", "task"]).any()
    for (arm, key), r in records.items():
        run = curves[(curves.arm == arm) & (curves.run_key == key)]
        final = run[(run.step == r["record"]["steps_done"]) & (run.metric == "loss") & (run.split == "test")]
        assert final.value.tolist() == pytest.approx(r["record"]["test_loss"], rel=1e-3)  # stored to 4 digits
        total = run[(run.step == 0) & (run.metric == "normalized_loss") & (run.split == "val")].value.item()
        assert total == pytest.approx(sum(v / n for v, n in zip(r["record"]["curves"]["val"][0],
                                                               r["record"]["normalisers"])), rel=1e-3)
        assert total == rounded(total)  # to 4 significant digits, as the losses it sums
        weights = run[run.metric == "weight"].pivot(index="step", columns="task", values="value")
        assert weights.to_numpy().tolist() == [row[1:] for row in r["record"]["weights_trajectory"]]
        assert (run.seed == r["params"]["seed"]).all() and (run.balancer == r["record"]["config"]["balancer"]).all()
        assert set(run.metric) == ({"loss", "normalized_loss", "weight"}
                                   | ({"grad_norm", "target_norm"} if arm == "gradnorm" else set()))
    grid_rows = curves[curves.arm == "grid"]
    assert (grid_rows.weight_task0 + grid_rows.weight_task1 - 2).abs().max() < 1e-9  # its parameters


def sampled_grid(sampler: str, n_trials: int, parallel_points: int) -> str:
    """The tiny study with a sampled grid; for CMA-ES, with a third task (it searches two
    dimensions or more)."""
    text = TINY.replace('method = "exhaustive"\nresolution = 0.5', f'method = "optuna"\nsampler = "{sampler}"\n'
                        f'n_trials = {n_trials}\nparallel_points = {parallel_points}')
    if sampler == "cmaes":
        assert "tasks = 2\nsigmas = [1.0, 10.0]" in text
        text = text.replace("tasks = 2\nsigmas = [1.0, 10.0]", "tasks = 3\nsigmas = [1.0, 10.0, 3.0]")
    return text


@pytest.mark.parametrize("sampler", ["random", "qmc", "cmaes", "grid"])
def test_every_sampler_proposes_its_points_and_finishes(store, sampler):
    # GridSampler stops the study after its last point, which raises in ask-and-tell (optuna#5141).
    text = sampled_grid(sampler, n_trials=4, parallel_points=2)
    progress = StudyRunner(spec_of(text), store).run()
    assert progress.left == 0 and progress.failed == 0
    points = {tuple(r["record"]["config"]["balancer_params"]["weights"])
              for (arm, _), r in results_by_key(store, "tiny").items() if arm == "grid"}
    assert len(points) == 4
    if sampler == "grid":  # the centres of the cube's four cells 1/8, 3/8, 5/8, 7/8, on the simplex
        expected = sorted(tuple(cube_to_simplex([z], 2)) for z in (1 / 8, 3 / 8, 5 / 8, 7 / 8))
        assert [w for p in sorted(points) for w in p] == pytest.approx([w for p in expected for w in p])


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_grid_drawn_as_the_papers_trains_each_seed_on_the_rescaled_point(store, sampler):
    """`mapping = "renormalised"`: each point's weights are T u / sum(u) of the sampler's T
    coordinates, stored with the first seed's trial, and every seed trains them."""
    text = sampled_grid(sampler, n_trials=3, parallel_points=2).replace(
        "n_trials = 3", 'n_trials = 3\nmapping = "renormalised"')
    progress = StudyRunner(spec_of(text), store).run()
    assert progress.left == 0 and progress.failed == 0
    study = optuna.load_study(study_name="tiny/grid", storage=store.storage)
    weights_by_point: dict[int, set] = {}
    for trial in study.trials:
        assert set(trial.params) == {"u0", "u1", "seed"}
        u = (trial.params["u0"], trial.params["u1"])
        expected = (2 * u[0] / sum(u), 2 * u[1] / sum(u))
        record = results_by_key(store, "tiny")[("grid", trial.user_attrs[RUN_KEY])]
        weights = tuple(record["record"]["config"]["balancer_params"]["weights"])
        assert weights == pytest.approx(expected)
        point = int(trial.user_attrs[RUN_KEY].split("/")[0].removeprefix("point="))
        weights_by_point.setdefault(point, set()).add(weights)
    assert len(weights_by_point) == 3 and all(len(w) == 1 for w in weights_by_point.values())  # seeds agree


@pytest.mark.parametrize("tasks, n_trials", [(3, 9), (4, 8), (4, 12), (4, 27), (5, 16)])
def test_the_grid_sampler_never_proposes_one_weighting_twice(tasks, n_trials):
    """Its grid was the cube's corners and edges, 0 and 1 on every axis, and stick breaking maps
    a whole face of the cube (z0 = 1: task 0 takes everything) to one point of the simplex: with
    4 tasks and 12 trials, (4, 0, 0, 0) was trained four times and (0, 4, 0, 0) twice."""
    text = sampled_grid("grid", n_trials=n_trials, parallel_points=4).replace(
        "tasks = 2\nsigmas = [1.0, 10.0]", f"tasks = {tasks}\nsigmas = {[float(2 ** k) for k in range(tasks)]}")
    arm = spec_of(text).arms["grid"]
    sampler = arm.sampler()
    study = optuna.create_study(sampler=sampler)
    points = []
    for _ in range(n_trials):
        trial = study.ask(arm.cube_distributions())
        points.append(arm.weights_from_cube(trial.params))
        tell(study, trial, 0.0)  # the grid's last point stops the study (optuna#5141)
    assert len(set(points)) == n_trials, sorted(points)  # distinct
    assert all(w > 0 for p in points for w in p)  # and none gives a task up, as in the paper's grid
    assert all(sum(p) == pytest.approx(tasks) for p in points)


@pytest.mark.parametrize("sampler", ["random", "qmc", "grid"])
def test_the_sampler_seed_chooses_the_points(sampler):
    """Another `sampler_seed`, other points: for QMC the scrambling of its sequence (unscrambled,
    every seed gives the same points, the first on the cube's corner, which gives task 0 nothing)."""
    def proposals(seed):
        text = sampled_grid(sampler, n_trials=4, parallel_points=4)
        arm = spec_of(text.replace("parallel_points = 4", f"parallel_points = 4\nsampler_seed = {seed}")).arms["grid"]
        study = optuna.create_study(sampler=arm.sampler())
        points = []
        for _ in range(4):
            trial = study.ask(arm.cube_distributions())
            points.append(arm.weights_from_cube(trial.params))
            tell(study, trial, 0.0)
        return points
    assert proposals(0) == proposals(0)
    if sampler == "grid":  # the same cell centres, in another order
        assert proposals(0) != proposals(1) and sorted(proposals(0)) == sorted(proposals(1))
    else:
        assert set(proposals(0)).isdisjoint(proposals(1))
    assert all(min(p) > 0 for p in proposals(0))


def ready_to_claim(runner: StudyRunner) -> StudyRunner:
    """`runner` with its study registered and queued, and the heartbeat that `run()` sets up
    (never started here): ready for `claim_wave`."""
    runner.prepare()
    runner.heartbeat = manager.HeartbeatThread(runner.store, 60)
    return runner


def test_a_wave_proposes_parallel_points_points_and_trains_their_other_seeds_with_them(store):
    runner = ready_to_claim(StudyRunner(spec_of(sampled_grid("random", n_trials=6, parallel_points=2)), store,
                                        batch_runs=20))
    sampled = [c for c in runner.claim_wave() if c.arm == "grid"]
    assert sorted((c.run.point, c.run.seed, c.run.proposal) for c in sampled) == [
        (0, 0, True), (0, 1, False), (1, 0, True), (1, 1, False)]
    weights = {(c.run.point, c.run.seed): c.weights for c in sampled}
    assert weights[(0, 0)] == weights[(0, 1)] and weights[(1, 0)] == weights[(1, 1)]


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "qmc", "grid"])
def test_two_workers_proposing_side_by_side_propose_distinct_points(store, sampler):
    """Each worker builds the arm's seeded sampler; proposals drawn from one seeded stream in
    both (or in a run resumed after Ctrl-C) used to repeat each other's points."""
    text = sampled_grid(sampler, n_trials=8, parallel_points=4)
    first, second = StudyRunner(spec_of(text), store, batch_runs=2), StudyRunner(spec_of(text), store, batch_runs=2)
    for runner in (first, second):
        ready_to_claim(runner)
    proposals = [c for runner in (first, second, first, second) for c in runner.claim_wave() if c.run.proposal]
    assert len(proposals) == 8
    points = {tuple(c.weights) for c in proposals}
    assert len(points) == 8, sorted(points)


def test_rerunning_a_finished_study_trains_nothing(store):
    StudyRunner(spec_of(TINY), store).run()
    again = StudyRunner(spec_of(TINY), store)
    again.run()
    assert again.trained_here == 0


def test_resume_after_an_interruption_continues_and_matches_an_uninterrupted_run(store, tmp_path, monkeypatch):
    spec = spec_of(TINY)
    calls = {"n": 0}
    real = manager.train_runs

    def interrupted_second_batch(configs, progress=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(configs, progress)

    monkeypatch.setattr(manager, "train_runs", interrupted_second_batch)
    first = StudyRunner(spec, store, batch_runs=3)
    with pytest.raises(manager.Interrupted):
        first.run()
    done_before = first.progress().done
    assert 0 < done_before < len(spec.runs())
    monkeypatch.setattr(manager, "train_runs", real)

    second = StudyRunner(spec, store, batch_runs=3)
    second.run()
    assert second.trained_here == len(spec.runs()) - done_before  # nothing finished is retrained

    reference = ResultStore(str(tmp_path / "reference.journal"))
    StudyRunner(spec, reference, batch_runs=3).run()
    resumed, uninterrupted = results_by_key(store, "tiny"), results_by_key(reference, "tiny")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert resumed[key]["value"] == pytest.approx(uninterrupted[key]["value"], rel=1e-5)


def test_an_interruption_between_claiming_a_run_and_holding_it_leaves_nothing_running(store, monkeypatch):
    spec = spec_of(TINY)
    real_hold = StudyRunner._hold
    holds = {"n": 0}

    def interrupted_third_hold(self, *args, **kwargs):
        holds["n"] += 1
        if holds["n"] == 3:  # the run is claimed (RUNNING in the store) but not yet in hand
            raise KeyboardInterrupt
        return real_hold(self, *args, **kwargs)

    monkeypatch.setattr(StudyRunner, "_hold", interrupted_third_hold)
    runner = StudyRunner(spec, store)
    with pytest.raises(manager.Interrupted) as err:
        runner.run()
    assert "3 runs in hand were queued again" in str(err.value)
    assert runner.progress().running == 0
    monkeypatch.setattr(StudyRunner, "_hold", real_hold)
    again = StudyRunner(spec, store)
    assert again.run().left == 0
    assert again.trained_here == len(spec.runs())


def claimed_and_trained(store: ResultStore, n: int) -> tuple[StudyRunner, list, list[dict]]:
    """A runner of the tiny study, the first `n` runs it claims, and their records, not stored."""
    runner = ready_to_claim(StudyRunner(spec_of(TINY), store, batch_runs=n))
    claimed = runner.claim_wave()[:n]
    return runner, claimed, [r.to_dict() for r in manager.train_runs([c.config for c in claimed])]


def test_a_result_another_worker_settled_first_is_not_counted_as_trained_here(store, monkeypatch):
    """Its run was failed as stale and is trained again elsewhere: this worker's summary must not
    count it among the runs it stored."""
    runner, (first, second), records = claimed_and_trained(store, 2)
    with monkeypatch.context() as patch:
        patch.setattr(store, "complete", lambda *args: False)
        runner.store_records([first], records[:1])
    assert runner.trained_here == 0
    runner.store_records([second], records[1:])
    assert runner.trained_here == 1


def test_gradnorm_batches_train_first_so_that_their_static_retrains_can_start(store):
    runner = ready_to_claim(StudyRunner(spec_of(TINY), store, batch_runs=4))
    runner.jobs = 3  # a wave of 12 runs: GradNorm's 4, then the grid's 6 and equal's 2
    batches = runner.batches(runner.claim_wave())
    balancers = [batch[0].run.balancer for batch in batches]
    assert balancers[0] == "gradnorm" and "static" in balancers[1:]
    sizes = [len(batch) for batch in batches if batch[0].run.balancer != "gradnorm"]
    assert sizes == sorted(sizes, reverse=True)  # then the largest first


def test_a_run_that_ends_without_a_finite_validation_loss_is_stored_as_failed(store):
    """Optuna would fail a trial told NaN, without the reason that settles it: queued again and
    trained again for ever."""
    runner, claimed, records = claimed_and_trained(store, 1)
    runner.store_records(claimed, [{**records[0], "normalized_val_loss": float("nan")}])
    (stored,) = [r for r in store.records("tiny") if r["run_key"] == claimed[0].run.key and r["arm"] == claimed[0].arm]
    assert (stored["status"], stored["reason"]) == ("failed", "non-finite validation loss at the end of training")


def test_a_run_seen_lost_is_queued_again_at_the_next_look_not_at_once(store):
    """The worker giving a run back may be between its two writes (its trial failed, its copy
    about to be queued): queued at first sight, that run would be queued twice."""
    runner = StudyRunner(spec_of(TINY), store, poll_interval=0.0)
    runner.prepare()
    arm = store.arm_study("tiny", "equal")
    trial = next(t for t in arm.get_trials() if t.state == optuna.trial.TrialState.WAITING)
    assert store.claim(trial, "elsewhere:1")
    tell(arm, trial, state=optuna.trial.TrialState.FAIL)  # given back, its copy not (yet) queued

    def copies():
        return [t.state.name for t in arm.get_trials() if t.user_attrs.get(RUN_KEY) == trial.user_attrs[RUN_KEY]]

    assert runner._requeue_lost() and copies() == ["FAIL"]
    assert runner._requeue_lost() and copies() == ["FAIL", "WAITING"]
    assert not runner._requeue_lost()


def test_progress_moves_by_each_runs_share_of_its_steps(store):
    """A stack of runs counts as that many runs while it trains, not as one that jumps ahead when stored."""
    reported = []
    only_equal = TINY.split("[arms.grid]")[0] + "[arms.equal]\n"
    StudyRunner(spec_of(only_equal), store, batch_runs=2, on_progress=lambda done, total: reported.append(done)).run()
    assert reported[-1] == 2 and max(b - a for a, b in zip(reported, reported[1:])) <= 0.5


def test_the_time_left_prices_the_stacks_that_then_train_and_ends_at_zero(store):
    """The runner's time left (bench.study.time_left) prices the stack in hand, its wave's stacks
    still to start, and the stacks the runs queued after the wave will make. Those must be the
    stacks that then train: here, in waves of 3 runs, GradNorm's 4 runs make [3], then [1] beside
    the grid's first 2 runs ([2]); the grid's other 4 and equal's 2 stack together ([3], [3]), and
    the static retrains make [3] and [1]. Runs counted twice or left out, or arms that stack
    together priced apart, would skew it."""
    stacks: list[tuple[float, int]] = []  # (start time, size) of each stack trained
    planned: list[list[int]] = []  # as each stack starts: the stacks planned after its wave
    lefts = []

    def look(done: float, total: int) -> None:
        timer = runner._time_left
        if timer is None or not timer._size:
            return
        if not stacks or stacks[-1][0] != timer._started:
            stacks.append((timer._started, timer._size))
            planned.append(list(timer.later))
        lefts.append(runner.seconds_left())

    runner = StudyRunner(spec_of(TINY), store, batch_runs=3, on_progress=look)
    runner.run()
    sizes = [size for _, size in stacks]
    assert sorted(sizes) == [1, 1, 2, 3, 3, 3, 3]
    assert sizes[0] == 3 and sorted(planned[0]) == sorted(sizes[1:])  # after the first wave: the rest
    assert lefts[0] is None and all(left >= 0 for left in lefts if left is not None)
    assert any(left is not None for left in lefts)
    assert runner.seconds_left() == 0.0


def test_a_run_given_back_whose_copy_was_never_queued_is_queued_again(store, monkeypatch, capsys):
    """A full disk between a given-back run's two writes (its trial failed, its copy not yet
    queued) left it neither queued nor running, and `bench run` refused forever to go on."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    spec = spec_of(TINY)
    real_hold, real_retry = StudyRunner._hold, RetryHeartbeatStaleTrialCallback.__call__
    calls = {"hold": 0, "retry": 0}

    def interrupted_third_hold(self, *args, **kwargs):
        calls["hold"] += 1
        if calls["hold"] == 3:
            raise KeyboardInterrupt
        return real_hold(self, *args, **kwargs)

    def first_copy_not_written(self, study, trial):
        calls["retry"] += 1
        if calls["retry"] == 1:
            raise StorageError("cannot write to the results storage: No space left on device")
        return real_retry(self, study, trial)

    # The runs in hand after the lost one stay RUNNING until their heartbeats go stale.
    store = ResultStore(store.url, heartbeat_interval=1, grace_period=2)
    monkeypatch.setattr(StudyRunner, "_hold", interrupted_third_hold)
    monkeypatch.setattr(RetryHeartbeatStaleTrialCallback, "__call__", first_copy_not_written)
    with pytest.raises(StorageError):
        StudyRunner(spec, store).run()
    monkeypatch.setattr(StudyRunner, "_hold", real_hold)
    expected = {arm: list(runs) for arm, runs in StudyRunner(spec, store).runs.items()}
    (lost,) = store.lost_runs(spec.name, expected)
    capsys.readouterr()
    assert main(["status", "--storage", store.url]) == 0
    assert "1 run given back but not queued again" in " ".join(capsys.readouterr().out.split())
    deadline = time.monotonic() + 60

    def within_a_minute(done, total):  # the old code waited for the lost run for ever
        assert time.monotonic() < deadline, "the lost run was never queued again"

    again = StudyRunner(spec, store, poll_interval=0.05, on_progress=within_a_minute)
    assert again.run().left == 0
    assert again.trained_here == len(spec.runs())
    assert not store.lost_runs(spec.name, expected)
    assert lost in {(r["arm"], r["run_key"]) for r in store.records(spec.name)}


def test_the_interrupted_message_counts_one_run_as_one_run(store, monkeypatch):
    def interrupted_first_hold(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StudyRunner, "_hold", interrupted_first_hold)
    with pytest.raises(manager.Interrupted) as err:
        StudyRunner(spec_of(TINY), store).run()
    assert str(err.value).startswith("interrupted: 1 run in hand was queued again; ")  # not "1 runs ... were"


def test_a_ctrl_c_that_python_swallows_still_stops_the_worker(store, monkeypatch):
    """Python drops a KeyboardInterrupt raised inside a finaliser or an import lock's callback
    ("Exception ignored in ..."); the worker must stop all the same, its runs queued again,
    without printing the dropped interrupt's traceback."""
    spec = spec_of(TINY)
    unraisable: list = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    class SignalledInFinaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, inside __del__, and its exception is ignored

    class FailingFinaliser:
        def __del__(self):
            raise ValueError("not an interrupt")

    def on_progress(done, total):
        if done > 0 and not sent:
            sent.append(True)
            FailingFinaliser()  # other ignored errors still reach the previous hook
            SignalledInFinaliser()  # made and finalised at once

    sent: list[bool] = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a shell's background job
    runner = StudyRunner(spec, store, batch_runs=3, on_progress=on_progress)
    with pytest.raises(manager.Interrupted):
        runner.run()
    assert sent and runner.progress().running == 0
    assert 0 < runner.progress().left
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert [type(u.exc_value) for u in unraisable] == [ValueError]
    assert sys.unraisablehook == unraisable.append  # hook restored


def signal_at_writes(store, monkeypatch, real_complete, writes: set[int], signum: int) -> None:
    """Send `signum` to this process as the store writes the runs numbered `writes` (from 1)."""
    count = {"n": 0}

    def complete_then_signal(*args, **kwargs):
        count["n"] += 1
        if count["n"] in writes:
            os.kill(os.getpid(), signum)
            time.sleep(0.01)  # the handler runs here, mid-batch
        return real_complete(*args, **kwargs)

    monkeypatch.setattr(store, "complete", complete_then_signal)


def test_a_ctrl_c_while_trained_runs_are_stored_stores_them_all_then_stops(store, monkeypatch, capsys):
    """The interrupt landed between two runs' writes: the rest of the stack, trained, was thrown
    away (36 of 42 in one case). Now the batch is stored whole and the worker stops after it."""
    spec = spec_of(TINY)
    real_complete = store.complete
    signal_at_writes(store, monkeypatch, real_complete, {2}, signal.SIGINT)
    runner = StudyRunner(spec, store, batch_runs=4)
    with pytest.raises(manager.Interrupted) as err:
        runner.run()
    progress = runner.progress()
    assert progress.done == runner.trained_here == 4  # the whole first stack
    assert progress.running == 0 and progress.left == len(spec.runs()) - 4
    assert str(err.value).startswith("interrupted: 4 runs trained here are stored; ")
    assert "storing the runs just trained, then stopping" in capsys.readouterr().err

    # A second Ctrl-C does not wait for the batch.
    signal_at_writes(store, monkeypatch, real_complete, {2, 3}, signal.SIGINT)
    again = StudyRunner(spec, store, batch_runs=4)
    with pytest.raises(manager.Interrupted):
        again.run()
    assert again.trained_here == 2 and again.progress().running == 0


def test_sigterm_gives_back_the_runs_in_hand_as_ctrl_c_does_and_exits_143(store, monkeypatch, capsys):
    """`kill`, `timeout` or a batch scheduler's time limit sends SIGTERM, which ended the worker at
    once: its runs stayed RUNNING until their heartbeats went stale, and `bench status` showed the
    dead worker still training them."""
    spec = spec_of(TINY)

    def terminated_once_training_has_begun(done, total):
        if done > 0 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here

    sent: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)
    runner = StudyRunner(spec, store, batch_runs=3, on_progress=terminated_once_training_has_begun)
    with pytest.raises(manager.Terminated) as err:
        runner.run()
    assert err.value.exit_code == 143
    assert str(err.value).startswith("terminated: ") and "3 runs in hand were queued again" in str(err.value)
    progress = runner.progress()
    assert progress.running == 0 and progress.waiting == len(spec.runs()) - progress.done > 0
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored

    # Mid-store, the stack is stored whole first, as for Ctrl-C, and the message names SIGTERM.
    signal_at_writes(store, monkeypatch, store.complete, {2}, signal.SIGTERM)
    again = StudyRunner(spec, store, batch_runs=3)
    with pytest.raises(manager.Terminated):
        again.run()
    assert again.trained_here == 3 and again.progress().running == 0
    assert "storing the runs just trained, then stopping (SIGTERM again stops at once)" in capsys.readouterr().err


STOPPED_INSIDE_GENERATED_CODE = """
import os, signal, sys, time, tomllib
from bench.store import ResultStore
from bench.study import StudyRunner, StudySpec

study_file, storage, signame = sys.argv[1:]
spec = StudySpec.from_dict(tomllib.loads(open(study_file).read()), source=study_file)
runner = StudyRunner(spec, ResultStore(storage))
try:
    with runner._noticing_interrupts():  # the worker's handlers, as in `run`
        # The signal lands while Python runs code made from a string, as when a dataclass or a
        # namedtuple is made, and nothing runs such code afterwards to clear CPython's mark.
        exec(f"os.kill(os.getpid(), signal.{signame}); time.sleep(0.05)")
except KeyboardInterrupt:
    sys.exit(runner._stopped("").exit_code)  # what `bench run` exits with
"""


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_signal_landing_in_code_made_from_a_string_still_exits_with_its_code(tmp_path, signame, code):
    """CI saw `python -m bench run` exit by SIGINT (-2), not 143, after SIGTERM: under `-m`, CPython
    marks a KeyboardInterrupt leaving an `exec` of a string as unhandled, even once caught, and
    ends the process by SIGINT at exit whatever exit code was set."""
    (tmp_path / "stopped_worker.py").write_text(STOPPED_INSIDE_GENERATED_CODE)
    (tmp_path / "tiny.toml").write_text(TINY)
    worker = subprocess.run([sys.executable, "-m", "stopped_worker", "tiny.toml", "bench.journal", signame],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert worker.returncode == code, worker.stderr


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_ctrl_c_while_the_runs_are_queued_leaves_a_study_the_next_run_finishes(store, monkeypatch, stop):
    """The queue's lock stayed without its "done" mark: every later `bench run` waited two minutes
    for the interrupted worker, then stopped, asking the user to delete an Optuna study by hand.
    SIGTERM there ended the worker at once, and so left the lock too."""
    import optuna

    spec = spec_of(TINY)
    real_create = optuna.trial.create_trial
    made = {"n": 0}

    def create_then_stop(*args, **kwargs):
        made["n"] += 1
        if made["n"] == 4:
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here
        return real_create(*args, **kwargs)

    monkeypatch.setattr(optuna.trial, "create_trial", create_then_stop)
    with pytest.raises(manager.Interrupted) as err:
        StudyRunner(spec, store).run()
    if stop == "ctrl-c":
        assert str(err.value).startswith("interrupted before training began")
    else:
        assert isinstance(err.value, manager.Terminated) and err.value.exit_code == 143
        assert str(err.value).startswith("terminated before training began")
    monkeypatch.setattr(optuna.trial, "create_trial", real_create)
    import bench.store.results as results

    monkeypatch.setattr(results, "WAIT_FOR_OTHERS_S", 0.5)  # the old lock failed after this wait
    again = StudyRunner(spec, store)
    assert again.run().left == 0
    assert again.trained_here == len(spec.runs())  # each run queued once: 3 then the rest


def test_a_queue_lock_whose_worker_died_is_taken_over_and_a_live_one_is_waited_for(store):
    """A worker killed while queuing (no Ctrl-C to clean up) left its lock for good: every later
    worker waited two minutes and stopped. Now a lock unmarked for the grace period is taken
    over, and one its worker keeps marking is waited for, however long the queuing takes."""
    import threading

    import optuna

    store.grace_period = 0.6
    runs = {"arm": [(f"k{i}", {}) for i in range(3)]}
    optuna.create_study(storage=store.storage, study_name="s#queue-dead")  # its worker was killed
    start = time.monotonic()
    assert store.queue_once("s", "dead", runs) == 3
    assert 0.6 < time.monotonic() - start < 10
    assert store.queue_once("s", "dead", runs) == 0  # done: queued once

    live = optuna.create_study(storage=store.storage, study_name="s#queue-live")

    def queuing_slowly():
        for beat in range(1, 8):  # 1.4 s of queuing, marked every 0.2 s
            time.sleep(0.2)
            live.set_user_attr("beats", beat)
        live.set_user_attr("done", True)

    worker = threading.Thread(target=queuing_slowly)
    worker.start()
    assert store.queue_once("s", "live", {"arm": [("other", {})]}) == 0  # waited, took nothing over
    worker.join()
    assert "s#queue-live" in [s.study_name for s in store.storage.get_all_studies()]


def test_a_ctrl_c_while_a_study_is_registered_leaves_its_name_free(store, monkeypatch):
    import optuna

    real = optuna.Study.set_user_attr
    calls = {"n": 0}

    def set_then_ctrl_c(self, key, value):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", set_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        store.register("named", "hash", {"a": 1, "b": 2})
    monkeypatch.setattr(optuna.Study, "set_user_attr", real)
    assert "named" not in [s.study_name for s in store.storage.get_all_studies()]
    assert store.register("named", "hash", {"a": 1}) == "named"


def test_a_changed_configuration_is_refused_or_stored_as_a_new_version(store):
    StudyRunner(spec_of(TINY), store).run()
    changed = spec_of(TINY.replace("steps = 10", "steps = 12"))
    with pytest.raises(StudyConfigChanged) as err:
        StudyRunner(changed, store).run()
    assert "--new-version" in str(err.value)
    before = results_by_key(store, "tiny")
    runner = StudyRunner(changed, store, new_version=True)
    runner.run()
    assert runner.name == "tiny-v2"
    assert results_by_key(store, "tiny") == before  # the first version is untouched
    assert set(store.study_names()) == {"tiny", "tiny-v2"}


def test_an_arm_added_to_a_study_file_trains_its_runs_alone_in_the_same_study(store):
    """Adding DWA to a finished grid search used to need --new-version, which trained the whole
    grid again: the stored runs are still the study's, as more seeds only add runs."""
    StudyRunner(spec_of(TINY), store).run()
    before = results_by_key(store, "tiny")
    extended = spec_of(TINY + "\n[arms.dwa]\nperiod = 2\n")
    runner = StudyRunner(extended, store)
    progress = runner.run()
    assert runner.name == "tiny" and progress.left == 0
    assert runner.trained_here == len(extended.runs()) - len(spec_of(TINY).runs()) == 2  # dwa's, per seed
    after = results_by_key(store, "tiny")
    assert {k: v for k, v in after.items() if k[0] != "dwa"} == before  # kept as they were
    manifest = store.require_manifest("tiny")
    assert list(manifest["kinds"]) == list(extended.arms) and manifest["config_hash"] == extended.config_hash()
    assert manifest["study_text"] == extended.text
    assert any("now has the arm dwa" in note for note in store.notes)
    assert StudyRunner(extended, store).run().left == 0  # the extended file is the study now
    # The file as it was no longer describes the study; nor does one that adds an arm and changes another.
    for text in (TINY, TINY.replace("steps = 10", "steps = 12") + "\n[arms.rlw]\n"):
        with pytest.raises(StudyConfigChanged, match="--new-version"):
            StudyRunner(spec_of(text), store).run()
    # --new-version still means a new version.
    fresh = StudyRunner(spec_of(TINY + "\n[arms.rlw]\n"), store, new_version=True)
    fresh.run()
    assert fresh.name == "tiny-v2"


def test_a_study_file_whose_words_alone_changed_gives_the_stored_study_its_text_and_order(store):
    """A description mended, a comment added or the arms reordered leave the configuration as it
    was: the runs stand, and the report and tables used to keep the old words and order."""
    StudyRunner(spec_of(TINY), store).run()
    before = results_by_key(store, "tiny")
    body, equal = TINY.split("[arms.equal]")
    text = 'description = "Mended."\n# a comment\n' + body.replace("[arms.grid]", "[arms.equal]\n" + equal.strip() + "\n[arms.grid]")
    mended = StudySpec.from_dict(tomllib.loads(text), source="test.toml", text=text)
    assert mended.config_hash() == spec_of(TINY).config_hash()
    runner = StudyRunner(mended, store)
    runner.run()
    assert runner.name == "tiny" and runner.trained_here == 0 and results_by_key(store, "tiny") == before
    manifest = store.require_manifest("tiny")
    assert manifest["description"] == "Mended." and manifest["study_text"] == mended.text
    assert list(manifest["kinds"]) == ["equal", "grid", "gradnorm", "gradnorm-static"] == list(manifest["arms"])
    assert any("now has its study file's description, text and order of arms" in note for note in store.notes), store.notes
    store.notes.clear()
    StudyRunner(mended, store).run()
    assert not store.notes  # said once


def test_deleting_a_study_removes_its_runs_alone_and_its_later_versions_are_still_found(store):
    StudyRunner(spec_of(TINY), store).run()
    changed = spec_of(TINY.replace("steps = 10", "steps = 12"))
    StudyRunner(changed, store, new_version=True).run()
    StudyRunner(spec_of(TINY.replace('name = "tiny"', 'name = "tiny2"')), store).run()
    kept = {name: results_by_key(store, name) for name in ("tiny-v2", "tiny2")}
    deleted = store.delete("tiny")
    assert sum(p.done for p in deleted.values()) == len(spec_of(TINY).runs())
    assert store.study_names() == ["tiny-v2", "tiny2"]
    left = [s.study_name for s in store.storage.get_all_studies()]
    assert not [n for n in left if n == "tiny" or n.startswith(("tiny/", "tiny#"))], left
    assert {name: results_by_key(store, name) for name in kept} == kept  # the others untouched
    # With `tiny` gone, its second version is still found: a run of its configuration goes on
    # there instead of training it again under the free name.
    assert [name for name, _ in store.versions("tiny")] == ["tiny-v2"]
    again = StudyRunner(changed, store, new_version=True)
    again.run()
    assert again.name == "tiny-v2" and again.trained_here == 0
    # The deleted configuration starts afresh under its name.
    fresh = StudyRunner(spec_of(TINY), store)
    fresh.run()
    assert fresh.name == "tiny" and fresh.trained_here == len(spec_of(TINY).runs())
    assert store.first_free_version("tiny") == "tiny-v3"
    # In version order, though `tiny` was stored after `tiny-v2`; an Optuna study of someone
    # else's under a version's name is no version.
    theirs = optuna.create_study(storage=store.storage, study_name="tiny-v5")
    theirs.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=1.0))
    assert [name for name, _ in store.versions("tiny")] == ["tiny", "tiny-v2"]


def test_a_study_is_not_deleted_while_a_worker_trains_one_of_its_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ResultStore(str(tmp_path / "bench.journal"), heartbeat_interval=1, grace_period=1)
    StudyRunner(spec_of(TINY), store).run()
    arm = store.arm_study("tiny", "equal")
    arm.enqueue_trial({}, user_attrs={"run_key": "one more"})
    assert store.claim(arm.get_trials()[-1], "elsewhere:41")
    with pytest.raises(BenchError, match=r"has runs in training on elsewhere:41 \(1\): stop its `bench run`"):
        store.delete("tiny")
    assert "tiny" in store.study_names()
    time.sleep(2.5)  # no heartbeat for the grace period: the worker was killed, and its run fails
    store.delete("tiny")
    assert store.study_names() == []
    # A worker that went on after the delete made its arm again and stored a run there: a study
    # of that name run afterwards, here with another budget, does not take it for its own.
    orphan = store.arm_study("tiny", "equal")
    orphan.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=1.0,
                                               user_attrs={"run_key": "seed=0"}))
    changed = StudyRunner(spec_of(TINY.replace("steps = 10", "steps = 12")), store)
    changed.run()
    assert changed.trained_here == len(changed.spec.runs())
    assert all(r["value"] != 1.0 for r in store.records("tiny"))


def test_more_seeds_add_runs_to_the_same_study(store):
    StudyRunner(spec_of(TINY), store).run()
    more = spec_of(TINY).with_seeds([0, 1, 2])
    runner = StudyRunner(more, store)
    runner.run()
    assert runner.name == "tiny"
    assert runner.trained_here == len(more.runs()) - len(spec_of(TINY).runs())


def test_a_diverging_run_is_stored_as_failed_and_the_study_completes(store, monkeypatch):
    monkeypatch.setitem(PROBLEMS, PoisonedToy.name, PoisonedToy)
    text = TINY.replace('name = "toy"', 'name = "poisoned-toy"').replace("seeds = [0, 1]", "seeds = [0, 13]")
    progress = StudyRunner(spec_of(text), store).run()
    assert progress.left == 0
    records = results_by_key(store, "tiny")
    failed = {k: r for k, r in records.items() if r["status"] == "failed"}
    # every run on data seed 13 diverges; GradNorm static runs of a failed GradNorm run fail too
    assert failed and all(k[1].endswith("seed=13") for k in failed)
    assert all("non-finite" in r["reason"] or "GradNorm run" in r["reason"] for r in failed.values())
    # A failed GradNorm run has no weights to retrain: its static run fails without training, saying why.
    statics = {key: r for (arm, key), r in failed.items() if arm == "gradnorm-static"}
    assert len(statics) == 2 and all(r["record"] is None for r in statics.values())
    assert all(r["reason"] == f"its GradNorm run {key} failed: {records[('gradnorm', key)]['reason']}"
               for key, r in statics.items())
    assert all(r["status"] == "ok" for k, r in records.items() if k[1].endswith("seed=0"))
    assert progress.failed == len(failed)


@pytest.mark.slow
def test_two_jobs_give_the_same_results_as_one(store, tmp_path):
    spec = spec_of(TINY)
    StudyRunner(spec, store, jobs=1, batch_runs=4).run()
    other = ResultStore(str(tmp_path / "two-jobs.journal"))
    StudyRunner(spec, other, jobs=2, batch_runs=4).run()
    one, two = results_by_key(store, "tiny"), results_by_key(other, "tiny")
    assert one.keys() == two.keys()
    for key in one:
        assert one[key]["value"] == pytest.approx(two[key]["value"], rel=1e-5)


def test_more_jobs_than_cores_or_batches_start_no_idle_processes(store, monkeypatch):
    """`--jobs 1000` started a thousand processes (two minutes, for a one-run study), and left a
    thousand semaphores behind."""
    from joblib import Parallel

    cores = manager.cpu_count()
    runner = StudyRunner(spec_of(TINY), store, jobs=cores + 998)
    assert runner.jobs == cores
    assert runner.notes == [f"--jobs {cores + 998} is more than the {cores} cores this process may use: "
                            f"{cores} training processes run"]
    started = []
    real_init = Parallel.__init__

    def counting_init(self, n_jobs=None, **kwargs):
        started.append(n_jobs)
        real_init(self, n_jobs=n_jobs, **kwargs)

    monkeypatch.setattr(Parallel, "__init__", counting_init)
    runner.jobs = 50  # as if the machine had 50 cores: still one process per batch at most
    monkeypatch.setattr(manager, "cpu_count", lambda: 50)
    runner.stack_limit = lambda: 100  # every arm's runs of a wave in one batch
    waves = []
    batches = runner.batches
    runner.batches = lambda claimed: waves.append(batches(claimed)) or waves[-1]
    runner.run()
    assert started == [len(wave) for wave in waves] and max(started) < 5
    assert StudyRunner(spec_of(TINY), store, jobs=cores).notes == []


def test_a_stack_that_runs_out_of_memory_is_trained_again_in_smaller_stacks(store, monkeypatch):
    """What fits is an estimate: a GPU's OutOfMemoryError on a stack of 8 stopped the whole study."""
    import torch

    real_train_runs = manager.train_runs
    stacks, notes = [], []

    def two_fit(configs, *args, **kwargs):
        stacks.append(len(configs))
        if len(configs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                                              "total capacity of 7.6 GiB of which 1.1 GiB is free. Including ...")
        return real_train_runs(configs, *args, **kwargs)

    monkeypatch.setattr(manager, "train_runs", two_fit)
    spec = spec_of(TINY)
    progress = StudyRunner(spec, store, batch_runs=8, on_note=notes.append).run()
    assert progress.left == 0 and progress.failed == 0 and progress.done == len(spec.runs())
    assert stacks[0] > 2 and max(stacks[1:]) == 2 and len(notes) == 1
    assert notes[0].startswith("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB: the runs in hand "
                               "were queued again, and from now on up to ")
    assert all(r["status"] == "ok" for r in results_by_key(store, "tiny").values())

    # A single run that does not fit stops the study, as before.
    monkeypatch.setattr(manager, "train_runs", lambda configs, *a, **k: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB. GPU 0 ...")))
    other = ResultStore("other.journal")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        StudyRunner(spec, other, batch_runs=8, on_note=notes.append).run()
    assert other.progress("tiny", {a: [r.key for r in spec.runs() if r.arm == a] for a in spec.arms}).running == 0


def test_runs_of_an_unknown_study_in_the_store_give_a_clear_error(store):
    with pytest.raises(BenchError) as err:
        store.records("nope")
    assert "no study named 'nope'" in str(err.value)


def test_gradnorm_static_of_weights_that_are_no_static_weighting_fails_alone(store, monkeypatch):
    from bench.study.arms import GradNormStaticArm

    # Raw GradNorm weights can average to negative values (the paper imposes no floor).
    monkeypatch.setattr(GradNormStaticArm, "weights_from", lambda self, record: [3.0, -1.0])
    progress = StudyRunner(spec_of(TINY), store).run()
    assert progress.left == 0
    statics = [r for r in store.records("tiny") if r["arm"] == "gradnorm-static"]
    assert len(statics) == 4 and all(r["status"] == "failed" for r in statics)
    assert all(r["reason"] == f"its GradNorm run {r['run_key']} averaged to weights that static weights "
               "cannot be (expected non-negative weights, got 3, -1)" for r in statics)
    assert all(r["status"] == "ok" for r in store.records("tiny") if r["arm"] != "gradnorm-static")


def test_gradnorm_static_of_a_gradnorm_run_finished_without_its_record_fails_alone(store, monkeypatch):
    """A GradNorm trial that another tool sharing the storage completed carries no run record:
    its static retrain fails with that reason, where reading its weights raised a TypeError."""
    monkeypatch.setattr(manager, "attrs_to_record", lambda attrs: None)
    progress = StudyRunner(spec_of(TINY), store).run()
    assert progress.left == 0
    statics = [r for r in store.records("tiny") if r["arm"] == "gradnorm-static"]
    assert len(statics) == 4 and all(r["status"] == "failed" for r in statics)
    assert all(r["reason"] == f"its GradNorm run {r['run_key']} finished without a run record" for r in statics)
    assert all(r["status"] == "ok" for r in store.records("tiny") if r["arm"] != "gradnorm-static")


@pytest.mark.timeout(120)
def test_a_run_pruned_by_another_tool_stops_the_study_rather_than_wait_for_it_for_ever(store):
    """A trial that Optuna itself (or a script on the shared storage) pruned is neither finished,
    queued, running nor given back: waiting for it would never end."""
    runner = StudyRunner(spec_of(TINY), store)
    runner.prepare()
    waiting = store.arm_study("tiny", "equal").get_trials()[0]
    store.storage.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.PRUNED)
    with pytest.raises(BenchError, match=r"^study 'tiny': 1 run in a state bench does not set \(pruned\?\)"):
        runner.run()
    assert sum(r["status"] == "ok" for r in store.records("tiny")) == 15  # every other run trained


def queued_tiny_study(tmp_path, monkeypatch, storage: str):
    """The tiny study queued, not trained, in a journal or an SQLite (RDB) storage with a 1 s
    heartbeat and grace period; its store and the equal arm's waiting trials."""
    monkeypatch.chdir(tmp_path)
    url = str(tmp_path / "bench.journal") if storage == "journal" else f"sqlite:///{tmp_path / 'bench.db'}"
    store = ResultStore(url, heartbeat_interval=1, grace_period=1)
    StudyRunner(spec_of(TINY), store).prepare()
    trials = store.arm_study("tiny", "equal").get_trials()
    return store, [t for t in trials if t.state == optuna.trial.TrialState.WAITING]


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
@pytest.mark.parametrize("killed_after_writes", [1, 2, 3])
@pytest.mark.parametrize("given_back_before", [False, True])
def test_a_worker_killed_part_way_through_a_claim_leaves_its_run_to_the_others(
        tmp_path, monkeypatch, storage, killed_after_writes, given_back_before):
    """A worker SIGKILLed between taking a run (RUNNING) and recording its first heartbeat left
    it RUNNING for ever in an RDB storage: Optuna finds a run stale by its heartbeat, and it had
    none. Every other worker then waited for it (a CI run hung for 600 s on PostgreSQL). So did
    a run given back once before: its queued copy carried its last holder's name."""
    killed, waiting = queued_tiny_study(tmp_path, monkeypatch, storage)
    url, trial = killed.url, waiting[0]
    if given_back_before:
        arm = killed.arm_study("tiny", "equal")
        assert killed.claim(trial, "earlier:1")
        killed.release(arm, trial, "Ctrl-C")
        trial = next(t for t in arm.get_trials() if t.state == optuna.trial.TrialState.WAITING
                     and t.user_attrs["run_key"] == trial.user_attrs["run_key"])

    class Killed(BaseException):
        pass

    writes = {"n": 0}

    def dies_after(write):
        def wrapped(*args, **kwargs):
            result = write(*args, **kwargs)
            writes["n"] += 1
            if writes["n"] == killed_after_writes:
                raise Killed
            return result
        return wrapped

    for name in ("set_trial_state_values", "record_heartbeat", "set_trial_system_attr"):
        monkeypatch.setattr(killed.storage, name, dies_after(getattr(killed.storage, name)))
    with pytest.raises(Killed):
        killed.claim(trial, "dead:1")

    other = ResultStore(url, heartbeat_interval=1, grace_period=1)
    deadline = time.monotonic() + 10
    while True:
        other.fail_stale("tiny", ["equal"])
        latest = other.arm_trials("tiny", ["equal"])["equal"].by_key[trial.user_attrs["run_key"]]
        if latest.state == optuna.trial.TrialState.WAITING:
            break  # queued again (or never taken): another worker trains it
        assert time.monotonic() < deadline, f"the run stays {latest.state.name} with nobody training it"
        time.sleep(0.2)
    assert StudyRunner(spec_of(TINY), other).run().left == 0


def test_a_run_taken_moments_ago_is_not_stale_whatever_heartbeat_it_carries(tmp_path, monkeypatch):
    """A copy queued by an older version kept its last holder's heartbeat, an hour old, say: in the
    journal, the run's start counts too, or every worker would take it for abandoned the moment
    another took it, and train it twice."""
    from bench.store.storage import HEARTBEAT_ATTR

    store, waiting = queued_tiny_study(tmp_path, monkeypatch, "journal")
    store = ResultStore(store.url, heartbeat_interval=1, grace_period=30)
    trial = waiting[0]
    assert store.claim(trial, "taker:1")
    store.storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 3600)
    store.fail_stale("tiny", ["equal"])
    latest = store.arm_trials("tiny", ["equal"])["equal"].by_key[trial.user_attrs["run_key"]]
    assert latest.state == optuna.trial.TrialState.RUNNING and latest.number == trial.number


def test_a_study_whose_creator_was_killed_while_storing_its_manifest_is_stored_again(
        store, monkeypatch, capsys):
    """A worker killed between creating the study and writing the last of its manifest left the
    name blocked: every later `bench run` waited for that manifest for ever."""
    import bench.store.results as results

    half_written = optuna.create_study(storage=store.storage, study_name="tiny")
    half_written.set_user_attr("arms", ["grid"])
    half_written.set_user_attr("config_hash", "written before the kill")
    monkeypatch.setattr(results, "WAIT_FOR_OTHERS_S", 0.5)
    study_file = Path("tiny.toml")
    study_file.write_text(TINY)
    assert main(["run", "--study", str(study_file), "--storage", store.url]) == 0
    assert "it held no runs and was stored again" in " ".join(capsys.readouterr().err.split())
    assert store.manifest("tiny")["config_hash"] == spec_of(TINY).config_hash()
    assert len(store.records("tiny")) == len(spec_of(TINY).runs())


def test_an_optuna_study_of_the_same_name_with_trials_of_its_own_is_left_alone(store, monkeypatch):
    import bench.store.results as results

    foreign = optuna.create_study(storage=store.storage, study_name="tiny")
    foreign.set_user_attr("config_hash", "a key of a bench manifest, by chance")
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    monkeypatch.setattr(results, "WAIT_FOR_OTHERS_S", 0.5)
    with pytest.raises(BenchError, match="is not a bench study"):
        StudyRunner(spec_of(TINY), store).run()
    assert len(optuna.load_study(study_name="tiny", storage=store.storage).trials) == 2


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_status_tells_a_worker_that_stopped_beating_from_one_that_trains(tmp_path, monkeypatch, capsys, storage):
    """`bench status` listed a killed worker's runs as "running on" it for ever (until the next
    `bench run` queued them again): nothing told a user that worker was gone."""
    store, waiting = queued_tiny_study(tmp_path, monkeypatch, storage)
    assert store.claim(waiting[0], "dead:41") and store.claim(waiting[1], "alive:42")
    time.sleep(2.2)  # SQLite's clock counts whole seconds
    store.heartbeat([waiting[1]._trial_id])  # alive:42 goes on beating; dead:41 was killed
    capsys.readouterr()
    assert main(["status", "--storage", store.url, "--grace", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "running on: alive:42 (1 run), dead:41 (1 run)" in out
    assert ("silent, so stopped (killed, or its machine lost): dead:41 (1 run, no heartbeat for over 1 s); "
            "the next `bench run` on this storage queues those runs again") in out
    assert main(["status", "--storage", store.url]) == 0  # within the default 30 s: both alive
    assert "silent" not in capsys.readouterr().out
    assert store.workers("tiny") == {"alive:42": 1, "dead:41": 1}  # status changed nothing


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_worker_with_a_longer_grace_period_keeps_its_runs_among_workers_with_a_shorter_one(
        tmp_path, monkeypatch, capsys, storage):
    """A worker started with `--heartbeat 60 --grace 300` (a slow shared disk) lost every run it
    took to workers with the default 30 s, which found its heartbeat stale between two beats, so
    it never stored a result; `bench status` called it stopped. Its grace period now travels
    with its runs."""
    quick, waiting = queued_tiny_study(tmp_path, monkeypatch, storage)  # grace period 1 s
    patient = ResultStore(quick.url, heartbeat_interval=1, grace_period=5)
    assert patient.claim(waiting[0], "patient:41") and quick.claim(waiting[1], "quick:42")
    time.sleep(2.2)  # no heartbeat from either since (SQLite's clock counts whole seconds)
    assert main(["status", "--storage", quick.url, "--grace", "1"]) == 0
    assert "silent, so stopped (killed, or its machine lost): quick:42 (1 run, no heartbeat for over 1 s);" in (
        " ".join(capsys.readouterr().out.split()))
    quick.fail_stale("tiny", ["equal"])
    states = {t.system_attrs.get("bench:worker"): t.state for t in quick.arm_study("tiny", "equal").get_trials()
              if t.state != optuna.trial.TrialState.WAITING or "bench:worker" in t.system_attrs}
    assert states == {"patient:41": optuna.trial.TrialState.RUNNING, "quick:42": optuna.trial.TrialState.FAIL}
    time.sleep(4.0)  # now silent for its own 5 s as well: stopped
    assert main(["status", "--storage", quick.url, "--grace", "1"]) == 0
    assert "patient:41 (1 run, no heartbeat for over 5 s)" in " ".join(capsys.readouterr().out.split())
    quick.fail_stale("tiny", ["equal"])
    copies = [t for t in quick.arm_study("tiny", "equal").get_trials()
              if t.user_attrs["run_key"] in {w.user_attrs["run_key"] for w in waiting[:2]}]
    assert sorted(t.state.name for t in copies) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    # The queued copies start unheld: no worker's name, grace period or heartbeat.
    assert all(not {"bench:worker", "bench:grace", "bench:heartbeat"} & set(t.system_attrs)
               for t in copies if t.state == optuna.trial.TrialState.WAITING)


@contextlib.contextmanager
def held_elsewhere(store: ResultStore, trials: list) -> Iterator[threading.Event]:
    """Another worker's heartbeats for `trials`, which it has claimed, until the event this yields
    is set (a test sets it at the runner's first wait: that worker is then killed) or the block ends."""
    killed = threading.Event()
    other = ResultStore(store.url)

    def beating() -> None:
        while not killed.wait(0.2):
            other.heartbeat([t._trial_id for t in trials])

    beats = threading.Thread(target=beating)
    beats.start()
    try:
        yield killed
    finally:
        killed.set()
        beats.join()


def test_a_worker_waiting_for_runs_held_elsewhere_says_who_holds_them(tmp_path, monkeypatch):
    """`bench run` sat at "training 177/210" for the grace period, training nothing and saying
    nothing, while a killed worker's runs waited to come back."""
    store, waiting = queued_tiny_study(tmp_path, monkeypatch, "journal")
    assert store.claim(waiting[0], "elsewhere:41")
    told: list[dict[str, int]] = []
    lefts: list[float | None] = []  # the time left shown while it waits
    sharing: list[int | None] = []
    with held_elsewhere(store, waiting[:1]) as killed:  # elsewhere:41 trains until it is first waited for

        def on_wait(holders: dict[str, int]) -> None:
            told.append(holders)
            lefts.append(runner.seconds_left())
            killed.set()

        runner = StudyRunner(spec_of(TINY), store, poll_interval=0.05, on_wait=on_wait)
        # How many workers share the queued runs, as each report sees it (elsewhere:41 holds one).
        runner.on_progress = lambda done, total: sharing.append(runner._time_left and runner._time_left.workers)
        assert runner.run().left == 0
    assert told and all(holders == {"elsewhere:41": 1} for holders in told)  # never itself
    assert runner.trained_here == len(spec_of(TINY).runs())  # its run came back once it was killed
    # Its own stacks were done: their price, 0, said nothing of the run held elsewhere.
    assert runner._time_left is not None and lefts and all(left is None for left in lefts)
    assert runner.seconds_left() == 0.0
    # While elsewhere:41 held its run, it counted as a second worker; once its run came back, not.
    assert 2 in sharing and sharing[-1] == 1


def test_workers_of_a_study_on_one_machine_share_its_cores(tmp_path, monkeypatch):
    """Two `bench run`s of one study on a 2-core machine, each with PyTorch's 2 threads, trained
    the default study in 12 minutes where one alone took 3: their threads spun for each other's
    cores. A worker gives up threads while another of the study on its host holds runs, and takes
    them back once two looks in a row have found it gone."""
    import socket

    store, waiting = queued_tiny_study(tmp_path, monkeypatch, "journal")
    assert store.claim(waiting[0], f"{socket.gethostname()}:41")  # a worker on this machine
    assert store.claim(waiting[1], "elsewhere:42")  # and one on another: it takes no core of this one's
    monkeypatch.setattr(manager, "LOOK_FOR_LOCAL_WORKERS_S", 0.0)  # a look at every report
    threads = [4]
    monkeypatch.setattr(manager.torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(manager.torch, "set_num_threads", threads.append)
    notes: list[str] = []
    during: list[int] = []  # its threads at each progress report
    with held_elsewhere(store, waiting[:2]) as killed:  # both train until first waited for
        runner = StudyRunner(spec_of(TINY), store, poll_interval=0.05, on_wait=lambda holders: killed.set(),
                             on_note=notes.append, on_progress=lambda done, total: during.append(threads[-1]))
        assert runner.run().left == 0
    assert threads[:2] == [4, 2] and during[0] == 2  # halved from the first wave on, not for the host elsewhere
    assert during[-1] == 4 and set(threads) == {4, 2}  # its own once the other was gone
    assert notes == ["1 other bench training process runs on this machine: this worker trains with 2 threads of "
                     "its 4 while it does (PyTorch's threads in several processes wait on each other's cores)"]


def test_a_worker_of_another_study_on_this_machine_shares_its_cores_too(store, monkeypatch, trainer_elsewhere):
    """Two `bench run`s of different studies (or storages) on one machine spun for each other's
    cores as two of one study did: a worker sees every worker training here, not only its study's."""
    monkeypatch.setattr(manager, "LOOK_FOR_LOCAL_WORKERS_S", 0.0)  # a look at every report
    threads = [4]
    monkeypatch.setattr(manager.torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(manager.torch, "set_num_threads", threads.append)
    other = trainer_elsewhere(1)  # of no study this storage holds
    during: list[int] = []  # its threads at each progress report

    def on_progress(done: float, total: int) -> None:
        during.append(threads[-1])
        if len(during) == 1:
            other.communicate("")  # the other worker's study ends

    runner = StudyRunner(spec_of(TINY), store, on_progress=on_progress)
    assert runner.run().left == 0
    assert threads[:2] == [4, 2] and during[0] == 2
    assert during[-1] == 4  # its own once the other was gone


def test_with_jobs_each_process_counts_the_processes_of_other_workers_here(tmp_path, monkeypatch, trainer_elsewhere):
    """--jobs 2 on a 4-core machine where another worker trains with --jobs 2: the machine has
    4 training processes, so each of this worker's takes 1 thread (it took 4 // (2 × 2 workers)
    before only by luck of equal --jobs, and 2 with the other of another study)."""
    store, _ = queued_tiny_study(tmp_path, monkeypatch, "journal")
    monkeypatch.setattr(manager, "cpu_count", lambda: 4)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(manager, "Parallel", in_this_process(calls))
    trainer_elsewhere(2)
    assert StudyRunner(spec_of(TINY), store, jobs=2).run().left == 0
    assert calls[0] == (2, 1)


def in_this_process(calls: list[tuple[int, int]]) -> type:
    """joblib's Parallel, run here: `calls` gets the processes and the threads each batch is given."""

    class InThisProcess:
        def __init__(self, n_jobs: int, return_as: str):
            self.n_jobs = n_jobs

        def __call__(self, tasks):
            for function, (index, configs, threads, _own_process), _ in tasks:
                calls.append((self.n_jobs, threads))
                yield function(index, configs, threads, False)

    return InThisProcess


def test_with_jobs_each_process_takes_its_share_of_the_cores_left_to_this_worker(tmp_path, monkeypatch):
    """--jobs 2 on a 4-core machine where another worker of the study trains: each of the 2
    processes takes 1 thread (4 cores / 2 workers / 2 processes), not 2."""
    import socket

    store, waiting = queued_tiny_study(tmp_path, monkeypatch, "journal")
    assert store.claim(waiting[0], f"{socket.gethostname()}:41")  # a worker on this machine
    monkeypatch.setattr(manager, "cpu_count", lambda: 4)
    calls: list[tuple[int, int]] = []  # (processes, threads each) of each batch
    monkeypatch.setattr(manager, "Parallel", in_this_process(calls))
    with held_elsewhere(store, waiting[:1]) as killed:  # it trains until first waited for
        runner = StudyRunner(spec_of(TINY), store, jobs=2, poll_interval=0.05, on_wait=lambda holders: killed.set())
        assert runner.run().left == 0
    processes, threads = calls[0]
    assert processes == 2 and threads == 1


def test_a_worker_takes_its_threads_back_only_once_two_looks_find_the_other_gone(store, monkeypatch):
    """Another worker between two waves holds no run for a moment: one look that misses it must
    not give this worker every core while the other starts its next stack."""
    import socket

    threads = [4]
    monkeypatch.setattr(manager.torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(manager.torch, "set_num_threads", threads.append)
    runner = StudyRunner(spec_of(TINY), store)
    here = f"{socket.gethostname()}:41"
    looks = iter([{here: 3}, {}, {here: 3}, {}, {}, {"elsewhere:42": 3}])
    monkeypatch.setattr(runner.store, "workers", lambda name, trials=None: next(looks))
    seen = []
    for _ in range(6):
        runner._look_at_workers()
        seen.append(threads[-1])
    assert seen == [2, 2, 2, 2, 4, 4]
    runner._look_at_workers = lambda trials=None: threads.append(1)  # a third worker, then the study ends
    runner.run()
    assert threads[-1] == 4  # a caller's process keeps its threads


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
@pytest.mark.parametrize("step", ["release", "complete", "fail"])
def test_a_run_finished_by_another_worker_between_two_writes_is_left_to_it(tmp_path, monkeypatch, storage, step):
    """Two workers giving back the same silent run at once, or a run failed as stale while its
    worker stored its result: the second `tell` found the trial finished and Optuna raised
    ValueError ("Cannot tell a FAIL trial"), which stopped the worker with a traceback."""
    store, waiting = queued_tiny_study(tmp_path, monkeypatch, storage)
    arm = store.arm_study("tiny", "equal")
    trial = waiting[0]
    assert store.claim(trial, "slow:41")
    other = ResultStore(store.url, heartbeat_interval=1, grace_period=1)
    real_set = store.storage.set_trial_user_attr

    def others_finish_it_meanwhile(*args, **kwargs):
        real_set(*args, **kwargs)
        other.release(other.arm_study("tiny", "equal"), trial, "failed as stale elsewhere")

    monkeypatch.setattr(store.storage, "set_trial_user_attr", others_finish_it_meanwhile)
    if step == "release":
        assert store.release(arm, trial, "given back here") is None
    elif step == "complete":
        assert store.complete(arm, trial, 1.0, {"arm": "equal"}) is False
    else:
        assert store.fail(arm, trial, "diverged") is False
    trials = [t for t in arm.get_trials() if t.user_attrs.get("run_key") == trial.user_attrs["run_key"]]
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # one copy queued, by the other


def test_a_worker_stopping_gives_back_its_own_runs_and_not_those_of_the_others(tmp_path, monkeypatch):
    """Ctrl-C on one machine must not take the runs another machine is training."""
    store, waiting = queued_tiny_study(tmp_path, monkeypatch, "journal")
    assert store.claim(waiting[0], "here:1") and store.claim(waiting[1], "there:2")
    assert store.release_held("tiny", ["grid", "equal"], "here:1", "interrupted") == 1
    trials = store.arm_study("tiny", "equal").get_trials()
    state = {t.number: t.state.name for t in trials}
    assert state[waiting[0].number] == "FAIL" and state[waiting[1].number] == "RUNNING"
    assert store.workers("tiny") == {"there:2": 1}


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_claim_whose_run_was_given_back_before_it_was_named_is_no_claim(tmp_path, monkeypatch, storage):
    """A worker stalled (suspended, swapping) between taking a run and naming itself on it for
    the grace period: another worker has given the run back, and the claim must not hold it."""
    store, waiting = queued_tiny_study(tmp_path, monkeypatch, storage)
    other = ResultStore(store.url, heartbeat_interval=1, grace_period=1)
    real_set = store.storage.set_trial_system_attr

    def given_back_first(trial_id, key, value):
        other.release(other.arm_study("tiny", "equal"), waiting[0], "stalled past the grace period")
        return real_set(trial_id, key, value)

    monkeypatch.setattr(store.storage, "set_trial_system_attr", given_back_first)
    assert store.claim(waiting[0], "stalled:41") is False


def test_a_training_process_that_dies_stops_the_worker_with_one_line(tmp_path, monkeypatch, capsys):
    """A `--jobs` process killed by the out-of-memory killer ended `bench run` with joblib's
    TerminatedWorkerError and a wall of traceback."""
    from joblib.externals.loky import get_reusable_executor

    monkeypatch.chdir(tmp_path)
    get_reusable_executor().shutdown(wait=True)  # processes of earlier tests know another folder
    Path("oom_jobs.py").write_text(
        "import os, signal\n"
        "from bench.problems import build_problem\n"
        "def make(**params):\n"
        f"    if os.getpid() != {os.getpid()}:  # a --jobs process: 'out of memory'\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return build_problem('toy', params)\n")
    Path("tiny.toml").write_text(TINY.replace('name = "toy"\ntasks = 2', 'name = "oom_jobs:make"\ntasks = 2'))
    code = main(["run", "--study", "tiny.toml", "--jobs", "2", "--batch-runs", "2"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err, err
    # Both processes load the problem, and either or both may die before joblib notices.
    assert re.search(r"error: (a training process|2 training processes) died \(SIGKILL\(-9\)(, SIGKILL\(-9\))?\), "
                     "most likely killed by the system when memory ran out", err), err
    assert "Fewer --jobs or a smaller --batch-runs need less memory" in err
    assert "in hand were queued again and every run stored is kept: run the same command to go on" in err
    store = ResultStore(str(tmp_path / "results" / "bench.journal"))
    assert store.progress("tiny", {arm: list(runs) for arm, runs in StudyRunner(spec_of(TINY), store).runs.items()}
                          ).running == 0  # every run in hand given back


def test_the_long_table_tells_apart_tasks_named_like_the_end_of_anothers_columns():
    """Tasks `a` and `loss_a`: train_loss_a is task a's training loss, not a measure "train" of loss_a."""
    runs = pd.DataFrame({"arm": ["equal"], "run_key": ["seed=0"], "train_loss_a": [1.0], "train_loss_loss_a": [2.0],
                         "mean_weight_loss_a": [1.0]})
    long = metrics_table(runs, ["a", "loss_a"]).set_index(["metric", "split", "task"]).value
    assert long.to_dict() == {("loss", "train", "a"): 1.0, ("loss", "train", "loss_a"): 2.0,
                              ("mean_weight", "", "loss_a"): 1.0}


def test_the_norm_target_gap_averages_the_tail_windows_norms_before_it_compares_them():
    """G_i / G_bar against r_i^alpha, each averaged over the steps of the tail window (here steps
    5 to 9 of 10): a batch's noise, scattering the norms either side of their targets, cancels; a
    step before the window, one without a finite target and one whose norms are all 0 do not count."""
    outside = [[0, 10.0, 0.0], [0, 1.0, 1.0]]
    noisy = [[5, 1.0, 3.0], [5, 2.0, 2.0]], [[7, 3.0, 1.0], [7, 2.0, 2.0]]
    skipped = [[8, 1.0, 1.0], [8, math.inf, 1.0]], [[9, 0.0, 0.0], [9, 1.0, 1.0]]

    def record(*rows):
        return {"steps_done": 10, "tail_fraction": 0.5,
                "traces": {"grad_norms": [norms for norms, _ in rows], "target_norms": [t for _, t in rows]}}

    assert norm_target_gap(record(outside, *noisy, *skipped)) == 0.0
    # Below target on task 0, above on task 1 at both steps: |0.5 - 1| + |1.5 - 1| over the targets' 2.
    off = [[7, 1.0, 3.0], [7, 2.0, 2.0]]
    assert norm_target_gap(record(outside, noisy[0], off, *skipped)) == pytest.approx(0.5)
    assert norm_target_gap(record(outside, *skipped)) is None
    assert norm_target_gap({"steps_done": 10, "traces": {}}) is None


def test_a_finished_run_speaks_for_its_key_over_a_later_copy_and_a_retry_over_a_stale_failure():
    """A run key can have several trials (a run failed as stale is queued again): the finished
    one settles it, whatever came after; unsettled, the newest copy speaks for it."""
    study = optuna.create_study()
    State = optuna.trial.TrialState

    def add(key, state, status=None):
        attrs = {RUN_KEY: key, **({STATUS: status} if status else {})}
        study.add_trial(optuna.trial.create_trial(state=state, value=1.0 if state == State.COMPLETE else None,
                                                  user_attrs=attrs))

    add("done", State.COMPLETE)
    add("done", State.WAITING)  # a copy queued meanwhile: the run stays done, never retrained
    add("failed", State.FAIL, "failed")  # failed for a reason of its own: settled
    add("failed", State.FAIL)  # a later copy failed as stale
    add("retried", State.FAIL)  # failed as stale ...
    add("retried", State.WAITING)  # ... and queued again: the copy speaks for it
    by_key = ArmTrials(study, study.trials).by_key
    assert {key: t.number for key, t in by_key.items()} == {"done": 0, "failed": 2, "retried": 5}
