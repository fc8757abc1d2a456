"""The record of one training run: what the result store keeps and the comparison reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TRAJECTORY_POINTS = 500  # at most this many points of a per-step trajectory are kept


def without_repeats(rows: list[list[float]]) -> list[list[float]]:
    """The rows `[step, values...]` less those whose values equal both neighbours': a constant
    stretch keeps its first and last row, so that drawing straight lines between the rows kept
    gives the same path. Static weights took two thirds of a study's storage, 500 equal rows a run.

    >>> without_repeats([[0, 1.0], [2, 1.0], [4, 1.0], [6, 0.5], [8, 0.5], [10, 0.5]])
    [[0, 1.0], [4, 1.0], [6, 0.5], [10, 0.5]]
    """
    return [row for i, row in enumerate(rows)
            if i in (0, len(rows) - 1) or not (row[1:] == rows[i - 1][1:] == rows[i + 1][1:])]


@dataclass
class RunRecord:
    """Everything one run produced.

    Losses are final (after the last step) and per task, in the problem's task order; the
    normalised totals are `sum_i L_i / normaliser_i`. The overfitting gap is test minus train.
    Curves hold the per-task losses at every evaluation step; trajectories are downsampled to at
    most 500 points, each `[step, value_1, ..., value_T]`. The weight trajectory leaves out the
    inside of every stretch where the weights stay the same (see `without_repeats`): a static
    run's is two points, its first step and its last.
    """

    config: dict[str, Any]
    status: str  # "ok" or "failed"
    task_names: list[str]
    normalisers: list[float]
    reason: str | None = None
    failed_step: int | None = None
    train_loss: list[float] | None = None
    val_loss: list[float] | None = None
    test_loss: list[float] | None = None
    normalized_train_loss: float | None = None
    normalized_val_loss: float | None = None
    normalized_test_loss: float | None = None
    overfitting_gap: list[float] | None = None
    normalized_overfitting_gap: float | None = None
    metrics: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    final_weights: list[float] | None = None
    mean_weights: list[float] | None = None
    tail_mean_weights: list[float] | None = None
    tail_fraction: float = 0.5
    weights_trajectory: list[list[float]] = field(default_factory=list)
    curves: dict[str, list] = field(default_factory=dict)
    traces: dict[str, list[list[float]]] = field(default_factory=dict)
    balancer_stats: dict[str, Any] = field(default_factory=dict)
    steps_done: int = 0
    wall_time_s: float = 0.0
    batch_wall_time_s: float = 0.0
    batch_runs: int = 1
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-able dict; the run's identity (balancer, problem, seed, steps) on top."""
        out = {
            "status": self.status,
            "balancer": self.config["balancer"],
            "problem": self.config["problem"],
            "seed": self.config["seed"],
            "data_seed": self.config["data_seed"],
            "steps": self.config["budget"]["steps"],
        }
        out.update(dataclasses.asdict(self))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
