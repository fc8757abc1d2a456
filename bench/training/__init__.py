"""Training runs: configuration, the stacked training engine and the run record.

The names load on first use (PEP 562): the CLI imports this package for `Budget`'s defaults in
its help, and loading the engine, and with it torch, took seconds of every `bench --help`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "Budget": "bench.training.budget",
    "RunConfig": "bench.training.config",
    "RunRecord": "bench.training.record",
    "BatchTrainer": "bench.training.engine",
    "train": "bench.training.engine",
    "train_runs": "bench.training.engine",
}

if TYPE_CHECKING:
    from bench.training.budget import Budget
    from bench.training.config import RunConfig
    from bench.training.engine import BatchTrainer, train, train_runs
    from bench.training.record import RunRecord


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = list(_HOMES)
