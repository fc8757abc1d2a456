"""`bench perf`: how fast training is, measured side by side in one process.

Figures:
- `sequential_s`, `batched_s`, `batched_speedup`: the default study's runs (every arm, every
  seed; `steps` steps each) trained one by one, then in the stacked batches the study manager
  forms, and the ratio;
- `plain_step_ms` and `plain_speedup`: a textbook PyTorch loop (nn.Linear modules, one run,
  torch.optim.Adam) for one of those runs, per step, and the stacked engine's per-run step against it;
- `matmul_gflops`: a 2048 x 2048 float32 matrix product, the machine's practical peak;
  `batched_gflops` / `single_gflops`: the training step's matrix-product work (counted from
  the layers' shapes) per second, stacked / alone, from the median step time of several
  rounds (robust to a shared machine's bursts); `peak_fraction` = batched / matmul;
- `gradnorm_step_ratio` (one run) and `gradnorm_step_ratio_batched` (32 runs): a GradNorm step's
  time over an equal-weights step's, keyed by T, each the median of paired rounds;
- `peak_memory_mb`: the process's peak resident memory (and CUDA's peak allocation on a GPU).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from bench import __version__
from bench.errors import ConfigError
from bench.problems.layers import StackedLinear
from bench.study.spec import StudySpec
from bench.training import BatchTrainer, Budget, RunConfig, train, train_runs
from bench.training.batching import max_stacked_runs, plan_batches
from bench.training.device import resolve_device
from bench.training.engine import batch_indices, problem_for

# Told what is being done now (a phrase) and, for the long parts, how far along: progress(what,
# done, total) after each stacked batch and each run trained alone.
Progress = Callable[..., None]


def matmul_gflops(size: int = 2048, repeats: int = 10, device: torch.device | None = None) -> float:
    """The best of `repeats` large float32 matrix products, after warming up."""
    device = device or torch.device("cpu")
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(trainer: BatchTrainer) -> float:
    """Matrix-product FLOPs of one training step of every run: forward, weight and input
    gradients of each stacked linear layer (no input gradient for the first layer)."""
    batch = trainer.budget.batch_size
    flops = 0.0
    first = True
    for module in trainer.model.modules():
        if isinstance(module, StackedLinear):
            per = 2.0 * batch * module.in_features * module.out_features * module.n_runs
            flops += per * (2 if first else 3)
            first = False
    return flops


def seconds_per_step(step: Callable[[int], None], steps: int, start: int, device: torch.device) -> float:
    """Seconds per call of `step(i)` for i in [start, start + steps), the device synchronised."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        step(i)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def median_seconds_per_step(step: Callable[[int], None], rounds: int, steps: int, start: int,
                            device: torch.device) -> float:
    """The median over `rounds` rounds of `steps` steps of the seconds per step: robust to the
    bursts of a shared machine, which a single long mean is not."""
    return statistics.median(seconds_per_step(step, steps, start + k * steps, device) for k in range(rounds))


def time_steps(trainer: BatchTrainer, steps: int, start: int = 0) -> float:
    """Seconds per training step over `steps` steps (evaluation excluded)."""
    return seconds_per_step(trainer.step, steps, start, trainer.device)


def _trainer(config: RunConfig, runs: int, steps: int) -> BatchTrainer:
    budget = dataclasses.replace(config.budget, steps=steps, eval_every=steps)
    return BatchTrainer([dataclasses.replace(config, budget=budget)] * runs)


def study_configs(spec: StudySpec, steps: int, device: str) -> list[RunConfig]:
    """Every run of the study at `steps` steps; runs whose weights come from another run
    (GradNorm static, sampled points) train with unit weights here: the same cost."""
    budget = dataclasses.replace(spec.budget, steps=steps, eval_every=min(spec.budget.eval_every, steps))
    spec = dataclasses.replace(spec, budget=budget)
    ones = {"weights": [1.0] * spec.n_tasks}
    return [spec.run_config(run, ones if run.balancer == "static" and "weights" not in run.balancer_params else None,
                            device) for run in spec.runs()]


class PlainModel(nn.Module):
    """The textbook multitask MLP: nn.Linear trunk and heads, for the reference loop."""

    def __init__(self, sizes: list[int], out: int, tasks: int):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(sizes[-1], out) for _ in range(tasks))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def plain_step_seconds(config: RunConfig, rounds: int, steps: int) -> float:
    """Per-step time of a plain PyTorch training loop for one toy run (equal weights): the
    median over `rounds` rounds of `steps` steps, like the engine's."""
    problem = problem_for(config)
    p = problem.params
    device = resolve_device(config.device)
    torch.manual_seed(0)
    model = PlainModel([p.input_dim] + [p.hidden] * p.depth, p.output_dim, p.tasks).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.budget.lr)
    data = problem.load(config.resolved_data_seed).train.to(device)
    order = batch_indices(0, len(data), config.budget.batch_size, rounds * steps + 5).to(device)

    def step(i: int) -> None:
        idx = order[i]
        preds = model(data.inputs[idx])
        loss = cast(Tensor, sum(torch.mean((pred - y[idx]) ** 2) for pred, y in zip(preds, data.targets)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(5):
        step(i)
    return median_seconds_per_step(step, rounds, steps, 5, device)


def gradnorm_ratio(tasks: int, runs: int, device: str, rounds: int = 11) -> float:
    """Median over paired rounds of (GradNorm step time / equal-weights step time)."""
    budget = Budget(steps=100_000, eval_every=100_000)
    steps = 40 if runs == 1 else 10  # per round: long enough to average out timer and scheduler noise

    def make(balancer: str) -> BatchTrainer:
        config = RunConfig(problem="toy", balancer=balancer, problem_params={"tasks": tasks},
                           budget=budget, device=device).validated()
        trainer = BatchTrainer([config] * runs)
        time_steps(trainer, 3)
        return trainer

    equal, gradnorm = make("equal"), make("gradnorm")
    ratios = []
    position = 3
    for _ in range(rounds):
        e = time_steps(equal, steps, position)
        g = time_steps(gradnorm, steps, position)
        position += steps
        ratios.append(g / e)
    return statistics.median(ratios)


def warm_up(configs: list[RunConfig]) -> None:
    """Pay the process's first-use costs before either side is timed: the lazy imports of the
    first optimiser (about a second), thread pools, and every data seed's data (cached per process)."""
    for config in configs:
        problem_for(config).load(config.resolved_data_seed)
    for config in {c.batch_key(): c for c in configs}.values():
        budget = dataclasses.replace(config.budget, steps=2, eval_every=2)
        train_runs([dataclasses.replace(config, budget=budget)] * 2)


def run_benchmark(study: str = "gridsearch", steps: int = 300, device: str = "auto",
                  sequential: bool = True, progress: Progress = lambda *_: None,
                  rounds: int = 11) -> dict[str, Any]:
    if steps < 1:
        raise ConfigError("--steps", "an integer >= 1", steps)
    dev = resolve_device(device, field="--device")
    spec = StudySpec.load(study)
    configs = study_configs(spec, steps, device)
    if not problem_for(configs[0]).supports_stacking:
        raise ConfigError("--study", "a study whose problem stacks runs (bench perf times stacked training "
                          f"against one run at a time; {spec.problem} trains one run at a time)", study)
    out: dict[str, Any] = {
        "version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "study": spec.name, "runs": len(configs), "steps": steps,
    }
    progress("measuring the matrix product peak")
    out["matmul_gflops"] = matmul_gflops(device=dev)

    progress("warming up (not timed)")
    warm_up(configs)
    limit = max_stacked_runs(configs[0], dev)
    batches = plan_batches(configs, limit)
    out["batches"] = len(batches)
    out["batch_runs_max"] = max(len(b) for b in batches)
    what = f"training {len(configs)} runs in {len(batches)} stacked batches"
    progress(what, 0, len(configs))
    start, done = time.perf_counter(), 0
    for batch in batches:
        train_runs([configs[i] for i in batch])
        done += len(batch)
        progress(what, done, len(configs))
    out["batched_s"] = time.perf_counter() - start
    if sequential:
        what = f"training {len(configs)} runs one by one"
        progress(what, 0, len(configs))
        start = time.perf_counter()
        for done, config in enumerate(configs, 1):
            train(config)
            progress(what, done, len(configs))
        out["sequential_s"] = time.perf_counter() - start
        out["batched_speedup"] = out["sequential_s"] / out["batched_s"]

    progress("measuring the training step's throughput")
    # A static run's step (a grid point's); in a study without one, equal weights: the same step.
    grid_config = next((c for c in configs if c.balancer == "static"), None)
    if grid_config is None:
        grid_config = dataclasses.replace(configs[0], balancer="equal", balancer_params={}).validated()
    stacked = _trainer(grid_config, min(limit, len(configs)), 60)
    single = _trainer(grid_config, 1, 300)
    time_steps(stacked, 5)
    time_steps(single, 20)
    stacked_step = median_seconds_per_step(stacked.step, 8, 5, 5, stacked.device)
    single_step = median_seconds_per_step(single.step, 10, 20, 20, single.device)
    out["stacked_runs"] = stacked.n_runs
    out["batched_step_ms_per_run"] = 1e3 * stacked_step / stacked.n_runs
    out["single_step_ms"] = 1e3 * single_step
    out["batched_gflops"] = step_flops(stacked) / stacked_step / 1e9
    out["single_gflops"] = step_flops(single) / single_step / 1e9
    out["peak_fraction"] = out["batched_gflops"] / out["matmul_gflops"]
    out["single_peak_fraction"] = out["single_gflops"] / out["matmul_gflops"]
    if grid_config.problem == "toy":
        plain = plain_step_seconds(grid_config, 10, 20)
        out["plain_step_ms"] = 1e3 * plain
        out["plain_peak_fraction"] = step_flops(single) / plain / 1e9 / out["matmul_gflops"]
        out["plain_speedup"] = plain / (stacked_step / stacked.n_runs)

    progress("measuring a GradNorm step against an equal-weights step")
    out["gradnorm_step_ratio"] = {}
    out["gradnorm_step_ratio_batched"] = {}
    for tasks in (2, 10, 20):
        out["gradnorm_step_ratio"][str(tasks)] = gradnorm_ratio(tasks, 1, device, rounds)
        out["gradnorm_step_ratio_batched"][str(tasks)] = gradnorm_ratio(tasks, 32, device, rounds)

    if (peak := peak_memory_mb()) is not None:
        out["peak_memory_mb"] = peak
    if dev.type == "cuda":
        out["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def peak_memory_mb(platform_name: str = sys.platform) -> float | None:
    """This process's peak resident memory in MiB; None where the platform does not say (Windows
    has no `resource` module). getrusage counts it in KiB on Linux but in bytes on macOS."""
    try:
        import resource
    except ImportError:
        return None
    unit = 1 if platform_name == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20


def append_csv(figures: dict[str, Any], path: Path) -> Path | None:
    """Append one row (nested figures flattened) so runs can be compared over time. A file with
    other columns (another version's figures, or not this benchmark's file) is kept under a new
    name, returned, and a new file started."""
    row = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            row.update({f"{key}_T{k}": v for k, v in value.items()})
        else:
            row[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    exists, kept = path.exists(), None
    if exists:
        with path.open(newline="", errors="replace") as f:
            header = next(csv.reader(f), [])
        if header != list(row):
            stamp = time.strftime("%Y%m%dT%H%M%S")
            kept = path.with_name(f"{path.stem}-{stamp}{path.suffix}")
            for n in itertools.count(2):  # never onto a file kept a moment ago
                if not kept.exists():
                    break
                kept = path.with_name(f"{path.stem}-{stamp}-{n}{path.suffix}")
            path.rename(kept)
            exists = False
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if not exists:
            writer.writeheader()
        writer.writerow(row)
    return kept
