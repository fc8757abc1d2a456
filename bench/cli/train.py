"""`bench train`: one training run of one balancer on one problem."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.cli.common import (
    arm_table, console, err_console, fmt, parse_assignments, print_json, print_note, set_once,
)
from bench.errors import ConfigError
from bench.training import Budget  # torch-free; the engine loads when a run starts

if TYPE_CHECKING:
    from bench.training import RunRecord


def train_command(
    problem: Annotated[str, typer.Option(help="Problem name (see `bench list`).")] = "toy",
    tasks: Annotated[Optional[int], typer.Option(help="Number of tasks T (toy problem).")] = None,
    sigmas: Annotated[Optional[str], typer.Option(help="Comma-separated task scales sigma_i (toy problem).")] = None,
    problem_param: Annotated[Optional[list[str]], typer.Option("--problem-param", "-p", help="Problem option KEY=VALUE (repeatable).")] = None,
    balancer: Annotated[str, typer.Option(help="Balancing method (see `bench list`).")] = "equal",
    alpha: Annotated[Optional[float], typer.Option(help="GradNorm's asymmetry alpha >= 0.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated static weights (balancer static), rescaled to sum to T.")] = None,
    balancer_param: Annotated[Optional[list[str]], typer.Option("--balancer-param", "-b", help="Balancer option KEY=VALUE (repeatable).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = Budget.steps,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = Budget.batch_size,
    lr: Annotated[float, typer.Option(help="The network's Adam learning rate.")] = Budget.lr,
    eval_every: Annotated[int, typer.Option(help="Evaluate on train / val / test every this many steps.")] = Budget.eval_every,
    tail_fraction: Annotated[float, typer.Option(help="Tail window of the time-averaged weights, as a fraction of the steps.")] = Budget.tail_fraction,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and batch order.")] = 0,
    data_seed: Annotated[Optional[int], typer.Option(help="Seed of the data (default: --seed).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda[:N].")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 or float64.")] = "float32",
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as one JSON object.")] = False,
) -> None:
    """Train one multitask model under one loss-balancing method and report its losses and weights."""
    from bench.training import RunConfig, train

    problem_params = parse_assignments(problem_param, "--problem-param")
    set_once(problem_params, "tasks", tasks, "--tasks", "-p")
    set_once(problem_params, "sigmas", sigmas, "--sigmas", "-p")
    balancer_params = parse_assignments(balancer_param, "--balancer-param")
    set_once(balancer_params, "alpha", alpha, "--alpha", "-b")
    set_once(balancer_params, "weights", weights, "--weights", "-b")
    if balancer == "static" and "weights" not in balancer_params:  # else it trains equal weights, named static
        raise ConfigError("--weights", "static weights for balancer static, one per task (--weights 3,1); "
                          "equal weights are --balancer equal", source="bench train")
    try:
        config = RunConfig(
            problem=problem, balancer=balancer, seed=seed, data_seed=data_seed,
            problem_params=problem_params, balancer_params=balancer_params,
            budget=Budget(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                          tail_fraction=tail_fraction),
            device=device, dtype=dtype,  # type: ignore[arg-type]
        ).validated(source="bench train")
        with sharing_the_cores(), Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=err_console, transient=True, disable=not err_console.is_terminal,
        ) as progress:
            task = progress.add_task("train", total=steps)
            record = train(config, progress=lambda done: progress.update(task, completed=done))
    except ConfigError as err:
        if err.source not in (None, "bench train"):  # said of another source already: --problem-param, a file
            raise
        given: dict[str, dict[str, object]] = {"problem": {"tasks": tasks, "sigmas": sigmas},
                                               "balancer": {"alpha": alpha, "weights": weights}}
        raise ConfigError(option_of(err.field, given), err.expected, err.got, source="bench train",
                          hint=err.hint) from None
    if as_json:
        print_json(record.to_dict())
    else:
        print_summary(record)
    if not record.ok:
        err_console.print(Text.assemble(("error:", "red"), f" the run failed: {record.reason}"), soft_wrap=True)
        raise typer.Exit(1)


@contextlib.contextmanager
def sharing_the_cores() -> Iterator[None]:
    """Train with this process's share of PyTorch's threads while `bench run`s, or other `bench
    train`s, train on this machine (see `bench.study.machine`), and be seen by those that start
    meanwhile: as it starts, for one run is short."""
    import torch

    from bench.study.machine import TrainersHere, sharing_note, threads_each

    trainers, own = TrainersHere(), torch.get_num_threads()
    with trainers.training():
        others = sum(trainers.others().values())
        threads = threads_each(own, 1, others)
        if threads < own:
            print_note(sharing_note(others, threads, own, "this run"))
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(own)


# The options of `bench train` that set a run configuration's fields of the same name.
SHORT_OPTIONS = {"problem": "-p", "balancer": "-b"}


def option_of(field: str, given: dict[str, dict[str, object]]) -> str:
    """The option of `bench train` that sets a run configuration's `field`, for its errors: the
    user typed `--tasks 3` or `-p n_train=0`, not `problem.tasks` or `problem.n_train`.

    >>> given = {"problem": {"tasks": 3}, "balancer": {"alpha": None}}
    >>> [option_of(f, given) for f in ("problem.tasks", "problem.n_train", "balancer.alpha", "eval_every")]
    ['--tasks', '-p n_train', '-b alpha', '--eval-every']
    >>> option_of("balancer.weights[1]", {"balancer": {"weights": "1,-1"}})
    '--weights[1]'
    """
    group, dot, rest = field.partition(".")
    if not dot:
        return "--" + field.replace("_", "-") if field.isidentifier() else field
    if group not in SHORT_OPTIONS:
        return field
    key = rest.split("[")[0].split(".")[0]
    suffix = rest[len(key):]
    if given.get(group, {}).get(key) is not None:  # set by its own option, --tasks or --alpha
        return "--" + key.replace("_", "-") + suffix
    return f"{SHORT_OPTIONS[group]} {key}{suffix}"


# What a balancer's counters mean, and what to do about them (README, GradNorm's options).
STAT_SENTENCES = {
    "nonpositive_weight_steps": "a task weight was <= 0 on {value} of {steps} steps: GradNorm's weights "
                                "crossed zero (the paper sets no floor); a smaller rate, -b weight_lr=0.002, "
                                "or a floor, -b floor=0.01, keeps them positive",
    "floor_binding_steps": "the weight floor bound on {value} of {steps} steps",
}


def print_summary(record: RunRecord) -> None:
    c = record.config
    alpha = c.get("balancer_params", {}).get("alpha")  # GradNorm's one hyperparameter: which run is this
    console.print(Text.assemble(
        (c["balancer"], "bold"), f" (alpha={alpha:g})" if alpha is not None else "", " on ", (c["problem"], "bold"),
        f" (seed {c['seed']}, data seed {c['data_seed']}, {c['budget']['steps']} steps, {record.device}): ",
        (record.status, "bold"), f" - {record.reason}" if record.reason else ""))

    def at(values: Sequence[float | None] | None, i: int) -> str:
        return fmt(values[i]) if values and values[i] is not None else "-"
    rows = [(name, at(record.train_loss, i), at(record.val_loss, i), at(record.test_loss, i),
             at(record.overfitting_gap, i), at(record.mean_weights, i), at(record.final_weights, i))
            for i, name in enumerate(record.task_names)]
    table = arm_table("losses per task (gap = test - train) and weights",
                      ("train", "val", "test", "gap", "mean w", "final w"), rows, key="task")
    console.print(table)
    # The problem's own measures on each split (accuracy, RMS error), "-" where a task has none.
    measures = (record.metrics or {}).get("test")
    if measures:
        console.print(arm_table("test measures", list(measures), [
            (name, *(at(values, i) for values in measures.values())) for i, name in enumerate(record.task_names)
        ], key="task"))
    if record.ok:
        console.print(f"task-normalised loss: train {fmt(record.normalized_train_loss)}, "
                      f"val {fmt(record.normalized_val_loss)}, test {fmt(record.normalized_test_loss)}; "
                      f"overfitting gap {fmt(record.normalized_overfitting_gap)}")
    for key, value in record.balancer_stats.items():
        if isinstance(value, int) and value:
            console.print(STAT_SENTENCES.get(key, f"{key.replace('_', ' ')}: {{value}}")
                          .format(value=value, steps=record.steps_done))
    console.print(f"wall time {record.wall_time_s:.1f} s")
