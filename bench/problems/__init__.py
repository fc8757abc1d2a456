"""Problems: data, a stacked model factory, tasks and losses. `PROBLEMS` maps names to classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.errors import ConfigError, did_you_mean
from bench.params import build_params
from bench.problems.base import DataSplits, Metric, MultiTaskModel, Problem, Split, TaskSpec
from bench.problems.diamonds import DiamondsProblem
from bench.problems.multimnist import MultiFashionProblem, MultiMNISTProblem
from bench.problems.nyuv2 import NYUv2Problem
from bench.problems.qm9 import QM9Problem
from bench.problems.toy import ToyProblem
from bench.problems.user import user_problem

PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls for cls in (ToyProblem, QM9Problem, MultiFashionProblem, MultiMNISTProblem,
                              DiamondsProblem, NYUv2Problem)
}


def build_problem(name: str, params: Mapping[str, Any] | None = None, *,
                  source: str | None = None) -> Problem:
    """The problem called `name` with its options, or a ConfigError naming what is wrong.

    `name` is a registered problem, or "package.module:function" for a user-defined one: the
    function is called with the options as keyword arguments and returns a Problem.
    """
    known = "one of " + ", ".join(sorted(PROBLEMS)) + ", or module:function"
    if not isinstance(name, str):  # a study file's `name = 1`: `":" in name` raised TypeError
        raise ConfigError("problem", known, name, source=source)
    if ":" in name:
        return user_problem(name, params, source=source)
    try:
        cls = PROBLEMS[name]
    except KeyError:
        raise ConfigError("problem", known, name, source=source, hint=did_you_mean(name, PROBLEMS)) from None
    return cls(build_params(cls.Params, params, source=source, prefix="problem.",
                            owner=f"problem {name!r}"))


__all__ = [
    "PROBLEMS", "build_problem", "Problem", "MultiTaskModel", "TaskSpec", "Metric", "Split",
    "DataSplits",
]
