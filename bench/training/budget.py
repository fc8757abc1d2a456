"""How long and how a run trains: a module of its own, without torch, so that the CLI can show
the defaults in its help without loading the training engine."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import overload

from bench.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """How long and how a run trains. The network's optimiser is Adam."""

    steps: int = 1500
    batch_size: int = 100
    lr: float = 1e-3
    eval_every: int = 100
    # Time-averaged weights are also reported over the last `tail_fraction` of the steps.
    tail_fraction: float = 0.5

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "an integer >= 1", getattr(self, name))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", "a positive number", self.lr)
        if not 0 < self.tail_fraction <= 1:
            raise ConfigError("tail_fraction", "a number in (0, 1]", self.tail_fraction)

    @overload
    def steps_per_epoch(self, n_train: int) -> int: ...
    @overload
    def steps_per_epoch(self, n_train: None) -> None: ...
    def steps_per_epoch(self, n_train: int | None) -> int | None:
        """Full batches in one pass over `n_train` training examples (None when unknown); a batch
        larger than the training set is refused."""
        if n_train is None:
            return None
        if self.batch_size > n_train:
            raise ConfigError("batch_size", f"at most the problem's {n_train} training examples", self.batch_size)
        return n_train // self.batch_size

    def scaled(self, factor: float) -> "Budget":
        """The same budget with `factor` times the steps (at least 1), for quick looks."""
        steps = max(1, round(self.steps * factor))
        return dataclasses.replace(self, steps=steps, eval_every=max(1, min(self.eval_every, steps)))
