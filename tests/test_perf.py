"""The benchmark's machinery (figures present, CSV kept) and batch planning. No timing asserts:
speed is reported by `bench perf`, never tested against a clock."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from bench.perf import append_csv, run_benchmark
from bench.perf.benchmark import step_flops, warm_up
from bench.problems import PROBLEMS
from bench.training.engine import problem_for
from bench.training import BatchTrainer
from bench.training import batching
from bench.training.batching import max_stacked_runs, plan_batches
from tests.conftest import tiny_config
from tests.test_study_spec import TINY


def test_plan_batches_groups_by_key_and_caps_the_size():
    configs = ([tiny_config("static", seed=s % 3, weights=(1.0, float(s + 1))) for s in range(7)]
               + [tiny_config("equal", seed=1), tiny_config("gradnorm", seed=0, alpha=1.0)])
    batches = plan_batches(configs, max_runs=3)
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len(b) <= 3 for b in batches)
    assert [8] in batches  # GradNorm trains apart from the static family
    for b in batches:  # equal weights train as a static point, next to the grid
        assert len({configs[i].batch_key() for i in b}) == 1
        seeds = [configs[i].seed for i in b]
        assert seeds == sorted(seeds)


def test_plan_batches_keeps_the_runs_of_one_data_seed_together():
    """Runs of one data seed share their input batches: stacked apart, each stack gathers its own."""
    configs = [tiny_config("static", seed=s, weights=(1.0, 2.0)) for s in range(4)]
    configs = [dataclasses.replace(c, data_seed=d).validated() for c, d in zip(configs, (1, 0, 1, 0))]
    assert plan_batches(configs, max_runs=2) == [[1, 3], [0, 2]]


def test_plan_batches_gives_every_parallel_worker_a_stack_down_to_a_floor():
    configs = [tiny_config("static", seed=s % 2, weights=(1.0, float(s + 1))) for s in range(40)]
    sizes = lambda plan: sorted(len(b) for b in plan)  # noqa: E731
    assert sizes(plan_batches(configs, max_runs=72)) == [40]
    assert sizes(plan_batches(configs, max_runs=72, workers=2)) == [20, 20]
    # 4 workers would mean stacks of 10: split no further than MIN_SPLIT_RUNS (16) per stack.
    assert batching.MIN_SPLIT_RUNS == 16
    assert sizes(plan_batches(configs, max_runs=72, workers=4)) == [13, 13, 14]
    assert sizes(plan_batches(configs, max_runs=8, workers=2)) == [8] * 5  # the memory cap still holds


def test_a_cpu_stacks_as_many_runs_as_keep_the_stack_in_cache(monkeypatch):
    config = tiny_config("equal")
    monkeypatch.setattr(batching, "available_memory", lambda device: 1 << 40)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert batching.run_memory_bytes(config) * batching.MAX_RUNS < batching.CPU_STACK_BYTES
    assert max_stacked_runs(config, cpu) == max_stacked_runs(config, cuda) == batching.MAX_RUNS == 72
    # runs the size of the default toy's, of the 10-task toy's, and too large for one stack
    for run_bytes, runs in ((2_330_000, 33), (4_300_000, 18), (100 << 20, 1)):
        monkeypatch.setattr(batching, "run_memory_bytes", lambda c, b=run_bytes: b)
        assert max_stacked_runs(config, cpu) == runs
        assert max_stacked_runs(config, cuda) == 72
    assert max_stacked_runs(config, cpu, cap=50) == 50  # --batch-runs overrides


def test_a_runs_memory_counts_parameters_gradients_adam_moments_and_a_batchs_activations():
    # The tiny toy in float64, batch 16: parameters 8*6+6, 6*6+6 and two heads of 6*3+3; the
    # layers' outputs (its leaf modules': two trunk layers, the activation, two heads) 16*(6+6+6+3+3).
    params, activations = 8 * 6 + 6 + 6 * 6 + 6 + 2 * (6 * 3 + 3), 16 * (6 + 6 + 6 + 3 + 3)
    assert batching.run_memory_bytes(tiny_config("equal")) == 8 * (4 * params + 3 * activations)


def test_a_stacked_modules_memory_counts_the_activations_inside_it(monkeypatch):
    """The toy written in torch's modules and stacked by StackedModule: to torch a StackedModule
    is one leaf, but its body's own ReLU keeps its output for the backward pass as well (16 * 6
    more values than the toy's StackedMLP, whose ReLU is a function, not a module)."""
    from tests.test_engine import PlainModulesToy, plain_modules_config

    monkeypatch.setitem(PROBLEMS, PlainModulesToy.name, PlainModulesToy)
    config = dataclasses.replace(plain_modules_config("equal", 0), problem_params=tiny_config("equal").problem_params)
    params, activations = 8 * 6 + 6 + 6 * 6 + 6 + 2 * (6 * 3 + 3), 16 * (6 + 6 + 6 + 6 + 3 + 3)
    assert batching.run_memory_bytes(config) == 8 * (4 * params + 3 * activations)


def test_a_problem_that_does_not_stack_trains_one_run_at_a_time(monkeypatch):
    config = tiny_config("equal")
    monkeypatch.setattr(type(problem_for(config)), "supports_stacking", False)
    assert max_stacked_runs(config, torch.device("cpu")) == max_stacked_runs(config, torch.device("cpu"), cap=50) == 1


def test_max_stacked_runs_follows_the_memory_available(monkeypatch):
    config = tiny_config("equal")
    assert max_stacked_runs(config, torch.device("cpu"), cap=50) <= 50
    per_run = batching.run_memory_bytes(config)
    monkeypatch.setattr(batching, "available_memory", lambda device: 10 * per_run)
    assert max_stacked_runs(config, torch.device("cpu"), cap=50) == 5
    monkeypatch.setattr(batching, "available_memory", lambda device: 0)
    assert max_stacked_runs(config, torch.device("cpu"), cap=50) == 1


def test_step_flops_counts_every_stacked_layer():
    trainer = BatchTrainer([tiny_config("equal")] * 3)
    # tiny toy: body 8->6, last 6->6, two heads 6->3; batch 16; no input gradient for layer 1
    per_run = 2 * 16 * (8 * 6 * 2 + 6 * 6 * 3 + 2 * 6 * 3 * 3)
    assert step_flops(trainer) == 3 * per_run


def test_warm_up_pays_first_use_costs_for_both_sides():
    """Neither side of `batched_speedup` may be charged for data built once per process."""
    configs = [tiny_config("static", seed=s, weights=(1.0, 2.0)) for s in (5, 6)] + [tiny_config("equal", seed=7)]
    for c in configs:
        problem_for(c)._data_cache.pop(c.resolved_data_seed, None)
    warm_up(configs)
    assert all(c.resolved_data_seed in problem_for(c)._data_cache for c in configs)


@pytest.mark.slow
def test_benchmark_reports_every_figure(tmp_path):
    study = tmp_path / "tiny.toml"
    study.write_text(TINY)
    calls = []
    figures = run_benchmark(str(study), steps=4, rounds=1, progress=lambda *args: calls.append(args))
    counted = [c for c in calls if len(c) == 3]  # (what, done, total): the two timed trainings
    n = figures["runs"]
    stacked = [c[1] for c in counted if "stacked batches" in c[0]]  # after each batch
    assert stacked[0] == 0 and stacked[-1] == n and stacked == sorted(stacked) and len(stacked) == figures["batches"] + 1
    assert [c[1:] for c in counted if "one by one" in c[0]] == [(i, n) for i in range(n + 1)]
    for key in ("batched_speedup", "peak_fraction", "matmul_gflops", "batched_s", "sequential_s",
                "peak_memory_mb", "plain_speedup"):
        assert figures[key] > 0, key
    # Each ratio is the one its name and the README state (sequential over batched time, batched
    # over matmul throughput, ...): arithmetic on the figures reported, not a timing.
    assert figures["batched_speedup"] == pytest.approx(figures["sequential_s"] / figures["batched_s"])
    assert figures["peak_fraction"] == pytest.approx(figures["batched_gflops"] / figures["matmul_gflops"])
    assert figures["single_peak_fraction"] == pytest.approx(figures["single_gflops"] / figures["matmul_gflops"])
    assert figures["plain_speedup"] == pytest.approx(figures["plain_step_ms"] / figures["batched_step_ms_per_run"])
    # The throughput counts every stacked run's work: per run and step, the stack's FLOPs are a lone run's.
    assert (figures["batched_gflops"] * figures["batched_step_ms_per_run"]
            == pytest.approx(figures["single_gflops"] * figures["single_step_ms"]))
    assert set(figures["gradnorm_step_ratio"]) == {"2", "10", "20"}
    assert all(v > 0 for v in figures["gradnorm_step_ratio_batched"].values())
    path = tmp_path / "perf.csv"
    append_csv(figures, path)
    append_csv(figures, path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 and "gradnorm_step_ratio_T10" in rows[0]


@pytest.mark.slow
def test_benchmark_times_a_plain_step_in_a_study_without_static_weights(tmp_path):
    """It measured the throughput on a static run's step, and a study of GradNorm and
    uncertainty weighting alone ended in a StopIteration traceback after its timed trainings."""
    study = tmp_path / "adaptive.toml"
    study.write_text(TINY.split("[arms.grid]")[0] + "[arms.gradnorm]\nalpha = 1.0\n\n[arms.uncertainty]\n")
    figures = run_benchmark(str(study), steps=4, sequential=False, rounds=1)
    assert figures["runs"] == 4 and figures["peak_fraction"] > 0 and figures["single_gflops"] > 0


def test_a_figures_file_with_other_columns_is_kept_aside_and_said(tmp_path, monkeypatch, capsys):
    """It was renamed to perf-<seconds>.csv without a word (`appended to perf.csv`, said the
    CLI), and a second one in the same second replaced the first."""
    import bench.perf
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    figures = {"device": "cpu", "threads": 2, "batched_speedup": 3.0, "gradnorm_step_ratio": {"2": 1.1}}
    monkeypatch.setattr(bench.perf, "run_benchmark", lambda *args, **kwargs: figures)
    Path("perf.csv").write_text("my,own\n1,2\n")
    assert main(["perf", "--csv", "perf.csv", "--json"]) == 0
    err = capsys.readouterr().err
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("perf-")]
    assert "note: perf.csv had other columns" in err and f"it is kept as {kept.name}" in err
    assert kept.read_text() == "my,own\n1,2\n"
    assert Path("perf.csv").read_text().splitlines()[0] == "device,threads,batched_speedup,gradnorm_step_ratio_T2"

    Path("perf.csv").write_text("other,columns\n3,4\n")  # again, within the same second
    assert append_csv(figures, Path("perf.csv")) not in (None, kept)
    assert sorted(p.read_text() for p in tmp_path.glob("perf-*")) == ["my,own\n1,2\n", "other,columns\n3,4\n"]
    assert append_csv(figures, Path("perf.csv")) is None  # its own columns: appended
    assert len(Path("perf.csv").read_text().splitlines()) == 3


def test_perf_says_when_other_training_shares_the_machine_and_is_seen_by_it(tmp_path, monkeypatch, capsys,
                                                                           trainer_elsewhere):
    """Figures taken while a `bench run` trained on the same cores were stored as the machine's,
    without a word; and a `bench run` started meanwhile took every core from under them."""
    import bench.perf
    from bench.cli import main
    from bench.study.machine import TrainersHere

    seen_while_measuring: list[dict[int, int]] = []
    figures = {"device": "cpu", "threads": 2, "batched_speedup": 3.0}
    monkeypatch.setattr(bench.perf, "run_benchmark",
                        lambda *args, **kwargs: seen_while_measuring.append(TrainersHere().processes()) or figures)
    assert main(["perf", "--csv", str(tmp_path / "alone.csv"), "--json"]) == 0
    assert "note:" not in capsys.readouterr().err
    other = trainer_elsewhere(2)
    assert main(["perf", "--csv", str(tmp_path / "shared.csv"), "--json"]) == 0
    assert ("note: 2 bench training processes run on this machine: these timings share its cores with them"
            in " ".join(capsys.readouterr().err.split()))
    assert [sorted(seen) for seen in seen_while_measuring] == [[os.getpid()], sorted([os.getpid(), other.pid])]


def test_perf_progress_draws_the_timed_trainings_as_bars(monkeypatch):
    import io

    from rich.console import Console

    from bench.cli import perf

    out = io.StringIO()
    monkeypatch.setattr(perf, "err_console", Console(file=out, width=100))
    progress = perf.PerfProgress()
    progress("warming up")
    for done in range(4):
        progress("training 3 runs one by one", done, 3)
    assert progress.bar is not None and progress.bar.tasks[0].completed == 3
    progress("measuring a step")
    assert progress.bar is None  # the bar is closed when the next stage begins
    progress.close()
    text = out.getvalue()
    assert "warming up..." in text and "training 3 runs one by one" in text and "3/3" in text
    assert text.index("3/3") < text.index("measuring a step...")


def test_peak_memory_is_in_mebibytes_on_linux_and_on_macos(monkeypatch):
    """getrusage's ru_maxrss is KiB on Linux and bytes on macOS: `bench perf` on a Mac reported
    1024 times its peak memory."""
    import resource

    from bench.perf.benchmark import peak_memory_mb

    hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))  # the kernel's own peak resident size
    assert peak_memory_mb() == pytest.approx(hwm_kib / 1024, rel=0.05)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    monkeypatch.setattr(resource, "getrusage", lambda who: type(usage)((0, 0, 300 * 2**20) + tuple(usage)[3:]))
    assert peak_memory_mb("darwin") == 300 and peak_memory_mb("linux") == 300 * 1024
