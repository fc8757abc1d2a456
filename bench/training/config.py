"""What one training run is: problem, balancer, budget and seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bench.balancers import balancer_class, build_balancer_params, check_balancer_steps, check_balancer_tasks
from bench.errors import ConfigError
from bench.params import build_params, params_to_dict
from bench.problems import build_problem
from bench.training.budget import Budget
from bench.training.device import resolve_device


def derive_seed(seed: int, stream: str) -> int:
    """An independent seed for one random stream ("init", "batches", ...) of a run's seed."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode())])
    # Shifted as a Python int: numpy 1.x refuses uint64 >> int (it would cast both to float).
    return int(state.generate_state(1, dtype=np.uint64)[0]) >> 1


# derive_seed keeps a seed's low 32 bits (seeds 0 and 2**32 would train the same runs), as does
# numpy's legacy seeding, which Optuna's samplers use.
MAX_SEED = 2**32 - 1
SEED_RULE = f"an integer from 0 to {MAX_SEED:,}"


def valid_seed(seed: object) -> bool:
    """A run's seed: a whole number a stored run's parameters and every library's seeding take.

    >>> [valid_seed(s) for s in (0, 2**32 - 1, 2**32, -1, True, 1.0)]
    [True, True, False, False, False, False]
    """
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


@dataclass(frozen=True)
class RunConfig:
    """One training run.

    `seed` fixes the model's initialisation and the order of training batches; `data_seed`
    (default: `seed`) fixes the problem's data. The two come from separate random streams, so
    runs compared in a study share both when they share the seeds.
    """

    problem: str
    balancer: str
    seed: int = 0
    problem_params: Mapping[str, Any] = field(default_factory=dict)
    balancer_params: Mapping[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    data_seed: int | None = None
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def validated(self, *, source: str | None = None) -> "RunConfig":
        """A copy with normalised options, or a ConfigError naming the bad field."""
        problem = build_problem(self.problem, self.problem_params, source=source)
        balancer_params = build_balancer_params(self.balancer, self.balancer_params, source=source)
        static_weights = getattr(balancer_params, "weights", None)
        if static_weights is not None and len(static_weights) != problem.n_tasks:
            raise ConfigError("balancer.weights", f"{problem.n_tasks} weights, one per task",
                              list(static_weights), source=source)
        for name, seed in (("seed", self.seed), ("data_seed", self.data_seed)):
            if seed is not None and not valid_seed(seed):
                raise ConfigError(name, SEED_RULE + " (as a study's seeds)", seed, source=source)
        if self.dtype not in ("float32", "float64"):
            raise ConfigError("dtype", "'float32' or 'float64'", self.dtype, source=source)
        resolve_device(self.device, source=source)
        budget = build_params(Budget, dataclasses.asdict(self.budget), source=source)
        try:
            steps_per_epoch = budget.steps_per_epoch(problem.train_size())
        except ConfigError as err:
            raise err.located(source) from None
        check_balancer_steps(balancer_params, budget.steps, steps_per_epoch=steps_per_epoch, source=source)
        check_balancer_tasks(balancer_params, problem.tasks, source=source)
        return dataclasses.replace(
            self,
            # A registered problem's options with their defaults filled in; a problem function of
            # one's own is called again with exactly the options it was given.
            problem_params=(params_to_dict(problem.params)
                            if ":" not in self.problem and dataclasses.is_dataclass(problem.params)
                            else dict(self.problem_params)),
            balancer_params=params_to_dict(balancer_params),
            budget=budget,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "problem_params": dict(self.problem_params),
            "balancer": self.balancer,
            "balancer_params": dict(self.balancer_params),
            "budget": dataclasses.asdict(self.budget),
            "seed": self.seed,
            "data_seed": self.resolved_data_seed,
            "device": self.device,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        return cls(
            problem=data["problem"],
            balancer=data["balancer"],
            seed=int(data["seed"]),
            problem_params=dict(data.get("problem_params", {})),
            balancer_params=dict(data.get("balancer_params", {})),
            budget=Budget(**data.get("budget", {})),
            data_seed=data.get("data_seed"),
            device=data.get("device", "auto"),
            dtype=data.get("dtype", "float32"),
        )

    def batch_family(self) -> tuple[str, dict[str, Any]]:
        """The balancer and options this run trains with inside a batch of runs."""
        cls = balancer_class(self.balancer)
        params = build_balancer_params(self.balancer, self.balancer_params)
        family, family_params = cls.batch_family(params)
        return family, params_to_dict(family_params)

    def batch_key(self) -> str:
        """Runs with equal keys can train together as one stacked model."""
        family, family_params = self.batch_family()
        shared = {k: v for k, v in family_params.items()
                  if k not in balancer_class(family).per_run_fields}
        key = {
            "problem": self.problem,
            "problem_params": dict(self.problem_params),
            "family": family,
            "family_params": shared,
            "budget": dataclasses.asdict(self.budget),
            "device": self.device,
            "dtype": self.dtype,
        }
        return json.dumps(key, sort_keys=True, default=str)


def config_hash(data: Any) -> str:
    """A short stable hash of a JSON-able configuration."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
