"""Which runs train together: grouping by batch key, and how many runs fit in memory."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bench.training.config import RunConfig, derive_seed

# Runs stacked per model at most, by default.
MAX_RUNS = 72
# On a CPU, a stack also stops where its training memory (`run_memory_bytes` per run) leaves the
# cache: a larger stack's elementwise passes and Adam run from memory and gain nothing per run.
# Measured on a 2-core Xeon VM, the study's runs at 150-300 steps each, paired rounds: the
# default toy (2.3 MB per run) trained in 27.2-27.8 s in stacks of 16 to 32 and 29.4-30.7 s in
# stacks of 68; the 10-task toy (4.3 MB) in 18.7-20.0 s in stacks of 16, 20.1-21.0 s of 32 and
# 22.4-22.9 s of 63; diamonds (1.4 MB) in 22.2-22.7 s in stacks of 38 and 22.0-23.3 s of 57.
# An accelerator wants the largest launches it can get, up to `MAX_RUNS`.
CPU_STACK_BYTES = 75 * 2**20
# Use at most this fraction of the memory available when the batch starts.
MEMORY_FRACTION = 0.5
# Stacks are split to give every parallel worker work, but not below this many runs.
MIN_SPLIT_RUNS = 16


def available_memory(device: torch.device) -> int | None:
    """Bytes available on `device` now, if the platform says."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_memory_bytes(config: RunConfig) -> int:
    """An estimate of one stacked run's training memory: parameters with their gradients and
    Adam moments, plus the activations of one training batch (kept for the backward pass)."""
    from bench.training.engine import problem_for

    problem = problem_for(config)
    dtype = getattr(torch, config.dtype)
    size = torch.tensor([], dtype=dtype).element_size()
    model = problem.checked_model([derive_seed(config.seed, "init")]).to(dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    data = problem.load(config.resolved_data_seed).train
    batch = min(config.budget.batch_size, len(data))
    activations = 0

    def count(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal activations
        if isinstance(output, torch.Tensor):
            activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in _leaf_modules(model)]
    with torch.no_grad():
        model(data.inputs[:batch].to(dtype=dtype).unsqueeze(0))
    for h in hooks:
        h.remove()
    # parameters, gradients, two Adam moments; activations saved plus their gradients (x3)
    return size * (4 * params + 3 * activations)


def _leaf_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose outputs are the model's activations: its leaves, and inside a
    StackedModule (a leaf to torch) the leaves of the module it stacks, which its forward calls."""
    from bench.problems.layers import StackedModule

    leaves = []
    for module in model.modules():
        if isinstance(module, StackedModule):
            leaves += [m for m in module.template.modules() if not list(m.children())]
        elif not list(module.children()):
            leaves.append(module)
    return leaves


def default_max_runs(device: torch.device, run_bytes: int) -> int:
    """Runs stacked per model at most on `device` unless the user says otherwise, for runs of
    `run_bytes` training memory each."""
    if device.type != "cpu":
        return MAX_RUNS
    return max(1, min(MAX_RUNS, CPU_STACK_BYTES // max(1, run_bytes)))


def max_stacked_runs(config: RunConfig, device: torch.device, cap: int | None = None) -> int:
    """How many runs of this configuration to stack: what fits memory, at most `cap` (by default
    `default_max_runs`; 1 for a problem that trains one run at a time)."""
    from bench.training.engine import problem_for

    if not problem_for(config).supports_stacking:
        return 1
    per_run = max(1, run_memory_bytes(config))
    if cap is None:
        cap = default_max_runs(device, per_run)
    available = available_memory(device)
    if available is None:
        return cap
    return max(1, min(cap, int(MEMORY_FRACTION * available // per_run)))


def plan_batches(configs: Sequence[RunConfig], max_runs: int, workers: int = 1) -> list[list[int]]:
    """Indices of `configs` grouped into batches that train as one stacked model: runs with one
    batch key, at most `max_runs` per batch, in chunks of near-equal size; runs of one data seed
    kept together where possible (they share their input batches).

    With several `workers`, batches are also made small enough that every worker gets one
    (down to `MIN_SPLIT_RUNS` runs: a stack that size is about as fast per run as a full one),
    instead of a few full stacks and idle workers.
    """
    cap = max(1, max_runs)
    if workers > 1:
        cap = min(cap, max(MIN_SPLIT_RUNS, math.ceil(len(configs) / workers)))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(configs):
        groups[c.batch_key()].append(i)
    batches = []
    for members in groups.values():
        members.sort(key=lambda i: (configs[i].resolved_data_seed, configs[i].seed, i))
        chunks = math.ceil(len(members) / cap)
        batches.extend([list(map(int, part)) for part in np.array_split(np.array(members), chunks)])
    return batches
