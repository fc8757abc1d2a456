"""Problems on a fixed table (features and per-task targets), split by the data seed, with a
stacked MLP: QM9 and Diamonds share this."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Sequence

import numpy as np
import torch
from torch import nn

from bench.errors import ConfigError
from bench.problems.base import DataSplits, MultiTaskModel, Problem, Split
from bench.problems.layers import StackedLinear, StackedMLP, seeded_generators


def check_table_options(field: str, chosen: tuple[str, ...], known: Collection[str], hidden: tuple[int, ...]) -> None:
    """The options tabular problems share: distinct known task names, an MLP of >= 2 layers."""
    if not chosen or any(c not in known for c in chosen) or len(set(chosen)) != len(chosen):
        raise ConfigError(field, "distinct names among " + ", ".join(known), list(chosen))
    if len(hidden) < 2 or min(hidden) < 1:
        raise ConfigError("hidden", "at least two layer sizes >= 1", list(hidden))


def split_sizes(total: int, n_train: int | None, n_val: int, n_test: int, source: str) -> tuple[int, int, int]:
    if n_train is None:
        n_train = total - n_val - n_test
    if min(n_train, n_val, n_test) < 1 or n_train + n_val + n_test > total:
        raise ConfigError("n_train / n_val / n_test",
                          f"positive sizes summing to at most the {total} examples of {source}",
                          [n_train, n_val, n_test])
    return n_train, n_val, n_test


class TabularProblem(Problem):
    """Features (N, F) and targets per task from `table()`; a permutation of the rows by the data
    seed gives train / validation / test; features are standardised with the training split's
    mean and standard deviation. Model: an MLP trunk (`hidden` sizes, ReLU), one linear head per
    task (`output_sizes`)."""

    @abstractmethod
    def table(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Features (N, F) as float, and one target array (N,) per task."""

    @property
    @abstractmethod
    def output_sizes(self) -> list[int]:
        """Outputs of each task's head (1 for a regression, C for C classes)."""

    def train_size(self) -> int | None:
        return self.params.n_train

    def _load(self, data_seed: int) -> DataSplits:
        features, targets = self.table()
        n_train, n_val, n_test = split_sizes(len(features), self.params.n_train, self.params.n_val,
                                             self.params.n_test, self.name)
        order = np.random.default_rng(int(data_seed)).permutation(len(features))
        parts = np.split(order, [n_train, n_train + n_val, n_train + n_val + n_test])[:3]
        mean = features[parts[0]].mean(axis=0)
        std = features[parts[0]].std(axis=0)
        std[std == 0] = 1.0

        def split(rows: np.ndarray) -> Split:
            x = torch.as_tensor((features[rows] - mean) / std, dtype=torch.float32)
            ys = tuple(torch.as_tensor(t[rows]) for t in targets)
            return Split(x, ys)

        return DataSplits(*(split(rows) for rows in parts))

    def build_model(self, init_seeds: Sequence[int]) -> MultiTaskModel:
        gens = seeded_generators(init_seeds)
        sizes = [self.n_features] + list(self.params.hidden)
        body = StackedMLP(sizes[:-1], gens)
        last = StackedLinear(sizes[-2], sizes[-1], gens)
        heads = [StackedLinear(sizes[-1], out, gens) for out in self.output_sizes]
        return MultiTaskModel(body, last, heads, n_runs=len(init_seeds), activation=nn.ReLU())

    @property
    def n_features(self) -> int:
        return int(self.table()[0].shape[1])
