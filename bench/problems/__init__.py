"""Problems: data, a stacked model factory, tasks and losses. `PROBLEMS` maps names to classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.errors import ConfigError
from bench.params import build_params
from bench.problems.base import DataSplits, Metric, MultiTaskModel, Problem, Split, TaskSpec
from bench.problems.toy import ToyProblem

PROBLEMS: dict[str, type[Problem]] = {
    ToyProblem.name: ToyProblem,
}


def build_problem(name: str, params: Mapping[str, Any] | None = None, *,
                  source: str | None = None) -> Problem:
    """The problem called `name` with its options, or a ConfigError naming what is wrong."""
    try:
        cls = PROBLEMS[name]
    except KeyError:
        raise ConfigError("problem", "one of " + ", ".join(sorted(PROBLEMS)), name, source=source) from None
    return cls(build_params(cls.Params, params, source=source, prefix="problem.",
                            owner=f"problem {name!r}"))


__all__ = [
    "PROBLEMS", "build_problem", "Problem", "MultiTaskModel", "TaskSpec", "Metric", "Split",
    "DataSplits",
]
