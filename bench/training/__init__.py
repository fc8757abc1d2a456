"""Training runs: configuration, the stacked training engine and the run record."""

from bench.training.config import Budget, RunConfig
from bench.training.engine import BatchTrainer, train, train_runs
from bench.training.record import RunRecord

__all__ = ["Budget", "RunConfig", "RunRecord", "BatchTrainer", "train", "train_runs"]
