"""Shared fixtures: tiny versions of the toy problem that train in milliseconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from bench.training import Budget, RunConfig

# CI draws the same examples on every run, as Hypothesis advises: a failure there is a property that
# the change under test broke, never an unlucky draw that keeps a good change from landing. Anywhere
# else each run draws new examples and keeps its failures in .hypothesis/ to replay them.
# No deadline anywhere: it is a timing, and a busy machine stalls a first call past it (a
# 532 ms example failed CI as "Flaky" against the 200 ms default, though the property held).
settings.register_profile("bench", deadline=None)
settings.register_profile("ci", parent=settings.get_profile("bench"), derandomize=True, database=None,
                          print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "bench")

# Small enough for property tests, large enough to have a real trunk and heads.
TINY_TOY = {
    "tasks": 2, "sigmas": (1.0, 10.0), "input_dim": 8, "output_dim": 3, "hidden": 6, "depth": 2,
    "n_train": 64, "n_val": 32, "n_test": 32,
}
TINY_BUDGET = Budget(steps=20, batch_size=16, lr=1e-2, eval_every=5)


def tiny_config(balancer: str = "equal", seed: int = 0, *, tasks: int = 2, sigmas=None,
                budget: Budget = TINY_BUDGET, dtype: str = "float64", **balancer_params) -> RunConfig:
    problem = dict(TINY_TOY, tasks=tasks,
                   sigmas=sigmas if sigmas is not None else tuple(float(3 ** i) for i in range(tasks)))
    return RunConfig(problem="toy", balancer=balancer, seed=seed, problem_params=problem,
                     balancer_params=balancer_params, budget=budget, dtype=dtype,
                     device="cpu").validated()


@pytest.fixture(autouse=True)
def _deterministic_threads(tmp_path_factory, monkeypatch):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    # Each test's workers (and the `bench run`s it starts) share the cores among themselves only,
    # never with a `bench run` on this machine meanwhile, nor with another test's.
    monkeypatch.setenv("BENCH_TRAINERS", str(tmp_path_factory.mktemp("trainers")))
    yield


REPO = Path(__file__).resolve().parent.parent
# Where tests, tools and installs may write in the checkout.
_NOT_THE_CHECKOUTS = {".git", ".venv", ".hypothesis", ".pytest_cache", "__pycache__", "gradnorm_bench.egg-info"}


def _checkout_files() -> set[str]:
    found = set()
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in _NOT_THE_CHECKOUTS]
        found.update(os.path.relpath(os.path.join(folder, name), REPO) for name in files + subfolders)
    return found


@pytest.fixture(autouse=True)
def _tests_leave_the_checkout_alone():
    """A test that forgets to work in tmp_path writes into the repository (one left an empty
    nowhere/ there, and the wheel test setuptools' build/): it fails, naming what it wrote. A
    walk of the checkout takes about a millisecond."""
    before = _checkout_files()
    yield
    written = sorted(_checkout_files() - before)
    assert not written, f"this test wrote into the checkout {REPO}: {', '.join(written[:10])}"


def require_system_tool(name: str) -> str:
    """The path of a system program, or skip; CI sets BENCH_REQUIRE_SYSTEM_TOOLS=1 to fail instead."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("BENCH_REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(f"{name} is required (BENCH_REQUIRE_SYSTEM_TOOLS=1) but not installed")
        pytest.skip(f"{name} is not installed (make system-deps installs it)")
    return path


_TRAINER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("machine", sys.argv[1])
machine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(machine)
with machine.TrainersHere().training(int(sys.argv[2])):
    print("training", flush=True)
    sys.stdin.read()  # until the test lets it go
"""


@pytest.fixture
def trainer_elsewhere():
    """Start another worker's registration as training on this machine, in a process of its own
    (`bench.study.machine` alone: no torch to load), with so many training processes; it holds
    it until its stdin closes or it is killed."""
    started: list[subprocess.Popen] = []

    def start(processes: int = 1) -> subprocess.Popen:
        worker = subprocess.Popen([sys.executable, "-c", _TRAINER, str(REPO / "bench" / "study" / "machine.py"),
                                   str(processes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(worker)
        assert worker.stdout is not None and worker.stdout.readline() == "training\n"
        return worker

    yield start
    for worker in started:
        worker.kill()
        worker.communicate()
