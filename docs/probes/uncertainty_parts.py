"""Which part of uncertainty weighting's dynamics gives it its lead over equal weights?

Uncertainty weighting (Kendall et al. 2018) moves two things at once: the balance between the
task weights and their overall scale (on the overlaid-image problems, about half of equal
weights' early on, rising as the losses fall). This probe trains, on each seed of a study's
problem and budget, equal weights, uncertainty weighting, and two variants that keep one of the
two each:
  uncertainty-balance  its weights rescaled to sum to T at every step: the balance moves, the
                       scale stays equal weights';
  uncertainty-scale    every task weighted by its weights' mean: the scale moves, the balance
                       stays equal weights'.
It prints each arm's mean task-normalised test loss and its paired comparison with equal weights
and with uncertainty weighting (README: "What the real-data studies say"). Nothing is stored.

    .venv/bin/python docs/probes/uncertainty_parts.py --study multimnist --seeds 0-9
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, ClassVar

import pandas as pd
from rich.console import Console
from rich.progress import track
from torch import Tensor

from bench.balancers import BALANCERS
from bench.balancers.uncertainty import Uncertainty
from bench.cli.run import parse_seeds
from bench.compare import stats
from bench.errors import BenchError
from bench.study.spec import StudySpec
from bench.training import train
from bench.training.config import RunConfig


class UncertaintyBalance(Uncertainty):
    name: ClassVar[str] = "uncertainty-balance"

    def weights(self) -> Tensor:
        w = super().weights()
        return w * self.n_tasks / w.sum(dim=1, keepdim=True)


class UncertaintyScale(Uncertainty):
    name: ClassVar[str] = "uncertainty-scale"

    def weights(self) -> Tensor:
        return super().weights().mean(dim=1, keepdim=True).expand(-1, self.n_tasks).clone()


ARMS = ("equal", "uncertainty", UncertaintyBalance.name, UncertaintyScale.name)


def probe(study: str, seeds: list[int]) -> pd.DataFrame:
    """One row per arm and seed: the run's task-normalised test loss and mean weights."""
    for cls in (UncertaintyBalance, UncertaintyScale):
        BALANCERS.setdefault(cls.name, cls)
    spec = StudySpec.load(study)
    rows: list[dict[str, Any]] = []
    runs = [(arm, seed) for arm in ARMS for seed in seeds]
    for arm, seed in track(runs, description="training", transient=True, console=Console(stderr=True)):
        config = RunConfig(problem=spec.problem, balancer=arm, seed=seed, problem_params=spec.problem_params,
                           budget=spec.budget, dtype=spec.dtype).validated()  # type: ignore[arg-type]
        record = train(config)
        rows.append({"arm": arm, "seed": seed, "status": record.status,
                     "test": record.normalized_test_loss, "mean_weights": record.mean_weights})
    return pd.DataFrame(rows)


def report(runs: pd.DataFrame) -> list[str]:
    """Each arm's paired comparison with equal weights and with uncertainty weighting."""
    by_arm = {arm: dict(zip(g.seed, g.test)) for arm, g in runs.groupby("arm", sort=False)}
    return [stats.describe(arm, versus, stats.paired(by_arm[arm], by_arm[versus]))
            for arm in ARMS[1:] for versus in ("equal", "uncertainty") if arm != versus]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="multimnist", help="a study's name or file: its problem and budget")
    parser.add_argument("--seeds", default="0-9", help="seeds, e.g. 0-9 or 0,3,5")
    args = parser.parse_args(argv)
    try:
        runs = probe(args.study, parse_seeds(args.seeds))
    except BenchError as err:  # a study or seeds that cannot be read: one line, as `bench` gives it
        sys.exit(f"error: {err}")
    table = runs.groupby("arm", sort=False).agg(seeds=("seed", "size"), mean_test_loss=("test", "mean"))
    table["mean_weights"] = [tuple(round(float(w), 3) for w in pd.DataFrame(list(weights)).mean())
                             for _, weights in runs.groupby("arm", sort=False).mean_weights]
    print(table.reset_index().to_string(index=False))
    print("\n".join(report(runs)))


if __name__ == "__main__":
    main()
