"""`equal`: every task weight is 1 (the usual baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.balancers.static import Static, StaticParams
from bench.problems.base import TaskSpec


@dataclass(frozen=True)
class EqualParams:
    pass


class Equal(Static):
    name = "equal"
    Params = EqualParams
    description = "all weights 1"
    per_run_fields = ()

    def __init__(self, params: Sequence[EqualParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__([StaticParams() for _ in params], tasks, **kwargs)

    @classmethod
    def batch_family(cls, params: Any) -> tuple[str, Any]:
        # Equal weights are the static point (1, ..., 1): they train in the same batch as a grid.
        return Static.name, StaticParams()
