"""The arms of a study: what each one trains, as a list of runs keyed by (arm, point, seed).

Each arm kind parses its table of the study file and expands to `RunSpec`s. `ARM_KINDS` is the
registry the study file's `kind` field is checked against.

- `grid`: static weights on the simplex, an exhaustive regular grid (or a list of points), or
  `n_trials` points proposed by an Optuna sampler on the unit cube mapped to the simplex
  (see `bench.study.simplex`).
- `gradnorm`: GradNorm at one or more alpha values, with any GradNorm option.
- `gradnorm-static`: for every run of a GradNorm arm, its time-averaged weights (whole run or the
  tail window) retrained from scratch with the same seed: the paper's "GradNorm static".
- `equal`, `static`, `uncertainty`, `dwa`, `rlw`, `loss-scale`: the baselines.

Every arm may also set `network_lr`, the network's Adam learning rate for its runs (default: the
study's `[budget] lr`); a `gradnorm-static` arm without one retrains each GradNorm run at its
rate. A list of rates (not for grids, nor GradNorm static, which follows its GradNorm arm) trains
each, under keys such as `lr=0.002/seed=0`, and the comparison chooses one on validation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from bench.balancers import balancer_class, check_balancer_steps, check_balancer_tasks
from bench.errors import ConfigError, did_you_mean
from bench.params import build_params, params_to_dict
from bench.study.simplex import (
    cube_to_simplex,
    grid_divisions,
    normalise,
    renormalised_cube_to_simplex,
    simplex_grid,
)
from bench.training.config import SEED_RULE, derive_seed, valid_seed

if TYPE_CHECKING:
    from bench.problems import TaskSpec

SAMPLERS = ("tpe", "random", "qmc", "cmaes", "grid")
MAPPINGS = ("stick-breaking", "renormalised")


@dataclass(frozen=True)
class RunSpec:
    """One run of a study, before training.

    `params` are the trial parameters known when the run is queued (name -> (value,
    distribution)). A run that `depends_on` another run of the study gets the rest when it is
    claimed: GradNorm static takes its weights from its finished GradNorm run ("complete"); a
    sampled grid point's other seeds take the point its first seed's trial sampled ("params").
    """

    arm: str
    key: str
    seed: int
    balancer: str
    balancer_params: Mapping[str, Any]
    params: Mapping[str, tuple[Any, BaseDistribution]] = field(default_factory=dict)
    depends_on: tuple[str, str] | None = None
    dependency: str | None = None  # "complete" or "params"
    proposal: bool = False  # the trial whose parameters an Optuna sampler chooses
    point: int | None = None  # a sampled grid's point index (its proposal and the other seeds)
    lr: float | None = None  # the network's learning rate, where not the study's [budget] lr


def seed_param(seed: int) -> tuple[int, IntDistribution]:
    # A single-valued distribution: samplers never treat the seed as something to search.
    return seed, IntDistribution(seed, seed)


def weight_params(weights: Sequence[float]) -> dict[str, tuple[float, FloatDistribution]]:
    T = len(weights)
    return {f"w{i}": (float(w), FloatDistribution(0.0, float(T))) for i, w in enumerate(weights)}


def format_weights(weights: Sequence[float]) -> str:
    return ",".join(f"{w:.6g}" for w in weights)


# An option of every arm: the network's learning rate for its runs, where it is not the study's.
# Not `lr`: the uncertainty balancer's `lr` is its log-variances' learning rate.
NETWORK_LR = "network_lr"


class Arm:
    """An arm of a study. Subclasses parse their table and expand to runs."""

    kind: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    takes_balancer_options: ClassVar[str | None] = None  # balancer whose options the table may hold
    # Whether `network_lr` may list several rates, each trained and one chosen on validation (as
    # GradNorm's alpha is), and why not where it may not.
    takes_several_rates: ClassVar[bool] = True
    several_rates_refused: ClassVar[str] = ""

    def __init__(self, name: str, table: Mapping[str, Any], *, tasks: int, source: str):
        self.name = name
        self.tasks = tasks
        self.source = source
        table = dict(table)
        table.pop("kind", None)
        # The study file's own value (None: the study's [budget] lr).
        self.own_network_lr: float | list[float] | None = None
        if NETWORK_LR in table:
            self.own_network_lr = self._network_lr(table.pop(NETWORK_LR))
        own = {k: table.pop(k) for k in list(table) if k in self.options}
        balancer_fields = ([f.name for f in dataclasses.fields(balancer_class(self.takes_balancer_options).Params)]
                           if self.takes_balancer_options is not None else [])
        unknown = sorted(set(table) - set(balancer_fields))
        if unknown:
            known = list(dict.fromkeys([*self.options, *balancer_fields, NETWORK_LR]))
            hint = did_you_mean(unknown[0], known)
            if unknown[0] == "lr" and hint is None:
                hint = f"the network's learning rate for this arm's runs is {NETWORK_LR}"
            raise ConfigError(self.field(unknown[0]), f"an option of the '{self.kind}' arm ({', '.join(known)})",
                              source=source, hint=hint)
        self.balancer_params: dict[str, Any] = {}
        self.balancer_options: Any = None  # the options dataclass, defaults filled in
        if self.takes_balancer_options is not None:
            params: Any = build_params(balancer_class(self.takes_balancer_options).Params, table,
                                  source=source, prefix=f"arms.{name}.", owner=f"the '{self.kind}' arm")
            self.balancer_options = params
            # Keep only what the file set: defaults stay the balancer's, not frozen in the study.
            self.balancer_params = {k: v for k, v in params_to_dict(params).items() if k in table}
        self.parse(own)

    def field(self, name: str) -> str:
        return f"arms.{self.name}.{name}"

    def _network_lr(self, value: Any) -> float | list[float]:
        def rate(lr: Any) -> bool:
            return not isinstance(lr, bool) and isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0

        if not isinstance(value, list):
            if not rate(value):
                raise self.error(NETWORK_LR, "a positive number, or a list of them: the network's Adam learning "
                                 "rate for this arm's runs (without it, the study's [budget] lr)", value)
            return float(value)
        if not self.takes_several_rates:
            raise self.error(NETWORK_LR, f"one positive number for a '{self.kind}' arm ({self.several_rates_refused})",
                             value)
        if not value or not all(rate(lr) for lr in value):
            raise self.error(NETWORK_LR, "a positive number or a non-empty list of them", value)
        keys = [f"{lr:g}" for lr in value]  # the runs' keys: lr=0.002/seed=0
        if len(set(keys)) != len(keys):
            raise self.error(NETWORK_LR, "distinct values (in their first 6 significant digits, which name "
                             "the runs)", value)
        return [float(lr) for lr in value]

    @property
    def network_lrs(self) -> list[float] | None:
        """The rates this arm's own `network_lr` names, as a list; None without one."""
        lr = self.own_network_lr
        return None if lr is None else lr if isinstance(lr, list) else [lr]

    def rates(self) -> list[tuple[str, float | None]]:
        """The learning rates this arm trains, each with the part of its runs' keys that names it:
        `[("", None)]` at the study's rate; with a list of several, `("lr=0.002/", 0.002)` and so on."""
        if self.network_lrs is None:
            return [("", None)]
        if len(self.network_lrs) == 1:
            return [("", self.network_lrs[0])]
        return [(f"lr={lr:g}/", lr) for lr in self.network_lrs]

    def rate_params(self, lr: float | None) -> dict[str, tuple[float, FloatDistribution]]:
        """The trial parameter of a run's rate, where the arm trains several (for Optuna's tables)."""
        if lr is None or self.network_lrs is None or len(self.network_lrs) < 2:
            return {}
        return {"lr": (lr, FloatDistribution(0.0, max(1.0, lr)))}

    def error(self, name: str, expected: str, got: Any = None) -> ConfigError:
        return ConfigError(self.field(name), expected, got, source=self.source)

    def parse(self, options: dict[str, Any]) -> None:
        """Check this arm's own options (not the balancer's)."""

    def check_steps(self, steps: int, steps_per_epoch: int | None) -> None:
        """Refuse balancer options whose warm-up outlasts a budget of `steps` steps."""
        if self.balancer_options is not None:
            check_balancer_steps(self.balancer_options, steps, steps_per_epoch=steps_per_epoch,
                                 source=self.source, prefix=f"arms.{self.name}.")

    def check_tasks(self, tasks: Sequence[TaskSpec]) -> None:
        """Refuse balancer options that do nothing for the problem's tasks."""
        if self.balancer_options is not None:
            check_balancer_tasks(self.balancer_options, tasks, source=self.source, prefix=f"arms.{self.name}.")

    def runs(self, seeds: Sequence[int]) -> list[RunSpec]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.balancer_params}

    def identity(self) -> dict[str, Any]:
        """What the study's configuration stores of this arm: `describe()`, and its own
        learning rate where it sets one (only then: studies stored before the option keep
        their hash)."""
        described = self.describe()
        if self.own_network_lr is not None:
            described[NETWORK_LR] = self.own_network_lr
        return described


class BaselineArm(Arm):
    """A balancer trained once per seed with fixed options."""

    balancer: ClassVar[str]

    def runs(self, seeds: Sequence[int]) -> list[RunSpec]:
        return [RunSpec(self.name, f"{at}seed={s}", s, self.balancer, dict(self.balancer_params),
                        {**self.rate_params(lr), "seed": seed_param(s)}, lr=lr)
                for at, lr in self.rates() for s in seeds]


class EqualArm(BaselineArm):
    kind = balancer = "equal"
    takes_balancer_options = "equal"


class UncertaintyArm(BaselineArm):
    kind = balancer = "uncertainty"
    takes_balancer_options = "uncertainty"


class DWAArm(BaselineArm):
    kind = balancer = "dwa"
    takes_balancer_options = "dwa"


class RLWArm(BaselineArm):
    kind = balancer = "rlw"
    takes_balancer_options = "rlw"


class LossScaleArm(BaselineArm):
    kind = balancer = "loss-scale"
    takes_balancer_options = "loss-scale"


class StaticArm(Arm):
    """One fixed set of weights, for example weights a user tuned by hand."""

    kind = "static"
    options = ("weights",)

    def parse(self, options: dict[str, Any]) -> None:
        if "weights" not in options:
            raise self.error("weights", f"a list of {self.tasks} non-negative weights")
        self.weights = _check_point(self, "weights", options["weights"], self.tasks)

    def runs(self, seeds: Sequence[int]) -> list[RunSpec]:
        return [RunSpec(self.name, f"{at}seed={s}", s, "static", {"weights": list(self.weights)},
                        {**weight_params(self.weights), **self.rate_params(lr), "seed": seed_param(s)}, lr=lr)
                for at, lr in self.rates() for s in seeds]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": list(self.weights)}


def _check_point(arm: Arm, name: str, value: Any, tasks: int) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != tasks:
        raise arm.error(name, f"a list of {tasks} weights, one per task", value)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise arm.error(name, "finite numbers", value)
    if any(v < 0 for v in value):
        raise arm.error(name, "non-negative weights", value)
    if sum(value) <= 0:
        raise arm.error(name, "weights that do not all equal zero", value)
    return normalise([float(v) for v in value])


class GridArm(Arm):
    """Static weights on the simplex: exhaustive, a list of points, or sampled by Optuna."""

    kind = "grid"
    takes_several_rates = False
    several_rates_refused = ("a grid searches its weights at one rate: give each rate a grid arm of its own, "
                             "and the summary sets GradNorm against each grid's chosen point")
    options = ("method", "resolution", "boundary", "max_points", "points", "sampler", "n_trials",
               "parallel_points", "sampler_seed", "mapping")
    # A finer resolution multiplies the points (T = 3 at 0.001: 501,501 of them, each trained once
    # per seed); past this many points, listed or sampled, the file must say it means it.
    default_max_points = 10_000

    def parse(self, options: dict[str, Any]) -> None:
        self.method = options.get("method", "exhaustive")
        if self.method not in ("exhaustive", "optuna"):
            raise self.error("method", "'exhaustive' or 'optuna'", self.method)
        max_points = options.get("max_points", self.default_max_points)
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
            raise self.error("max_points", "a whole number of points >= 1", max_points)
        if self.method == "exhaustive":
            for bad in ("sampler", "n_trials", "parallel_points", "sampler_seed", "mapping"):
                if bad in options:
                    raise self.error(bad, "no sampler option with method = 'exhaustive'", options[bad])
            # boundary = false: only points with every weight > 0, as in the paper's grid (a task
            # weighted 0 never trains its head; see the comparison's "(all weights > 0)" row).
            self.boundary = options.get("boundary", True)
            if not isinstance(self.boundary, bool):
                raise self.error("boundary", "true or false (false: only points with every weight > 0)",
                                 self.boundary)
            if not self.boundary and "points" in options:
                raise self.error("boundary", "no boundary option with a list of points (list the points "
                                 "you want)", self.boundary)
            if ("resolution" in options) == ("points" in options):
                raise self.error("resolution", "either a resolution or a list of points (one of the two)")
            if "points" in options:
                points = options["points"]
                if not isinstance(points, list) or not points:
                    raise self.error("points", "a non-empty list of points", points)
                self.points = [_check_point(self, f"points[{i}]", p, self.tasks) for i, p in enumerate(points)]
                first: dict[str, int] = {}  # one run per point and seed: a point listed twice is one
                for i, p in enumerate(self.points):
                    j = first.setdefault(format_weights(p), i)
                    if j != i:
                        raise self.error(f"points[{i}]", f"points that differ once rescaled to sum to "
                                         f"{self.tasks} (points[{j}] = {points[j]} is the same: "
                                         f"w={format_weights(p)})", points[i])
                self.resolution = None
            else:
                self.resolution = options["resolution"]
                if isinstance(self.resolution, bool) or not isinstance(self.resolution, (int, float)):
                    raise self.error("resolution", "a number such as 0.1 (1 / resolution divisions)",
                                     self.resolution)
                try:
                    n = grid_divisions(self.resolution)
                except ValueError as err:
                    raise self.error("resolution", f"a number in (0, 1] whose inverse is whole ({err})",
                                     self.resolution) from None
                # Counted before the points are listed: a mistyped resolution must fail at once.
                size = (math.comb(n + self.tasks - 1, self.tasks - 1) if self.boundary
                        else math.comb(n - 1, self.tasks - 1))
                if size > max_points:
                    raise self.error("resolution", f"a grid of at most max_points = {max_points:,} points "
                                     f"(this one has {size:,} for {self.tasks} tasks, each trained once per "
                                     "seed): a coarser resolution, method = 'optuna' with n_trials, or a "
                                     "larger max_points", self.resolution)
                self.points = simplex_grid(self.tasks, self.resolution)
                if not self.boundary:
                    self.points = [p for p in self.points if min(p) > 0]
                    if not self.points:
                        raise self.error("resolution", f"a resolution of at most 1/{self.tasks} with "
                                         f"boundary = false (a finer grid has points with all {self.tasks} "
                                         "weights > 0)", self.resolution)
            return
        for bad in ("resolution", "points", "boundary"):
            if bad in options:
                raise self.error(bad, "no grid points with method = 'optuna' (the sampler proposes them)",
                                 options[bad])
        self.sampler_name = options.get("sampler", "tpe")
        if self.sampler_name not in SAMPLERS:
            raise self.error("sampler", "one of " + ", ".join(SAMPLERS), self.sampler_name)
        n_trials = options.get("n_trials")
        if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
            raise self.error("n_trials", "a whole number of points >= 1", n_trials)
        if n_trials > max_points:
            raise self.error("n_trials", f"at most max_points = {max_points:,} points (each trained once per "
                             "seed), or a larger max_points", n_trials)
        self.n_trials = n_trials
        self.parallel_points = options.get("parallel_points", 8)
        points = self.parallel_points
        if not isinstance(points, int) or isinstance(points, bool) or points < 1:
            raise self.error("parallel_points", "a whole number >= 1", self.parallel_points)
        self.sampler_seed = options.get("sampler_seed", 0)
        if not valid_seed(self.sampler_seed):  # Optuna's samplers seed numpy's RandomState: 32 bits
            raise self.error("sampler_seed", SEED_RULE, self.sampler_seed)
        if self.tasks < 2:
            raise self.error("method", "at least two tasks for a sampled grid", self.tasks)
        # How a point of the sampler's cube becomes weights: stick breaking (uniform on the
        # simplex), or the paper's T uniform numbers renormalised to sum to T (crowds the centre).
        self.mapping = options.get("mapping", "stick-breaking")
        if self.mapping not in MAPPINGS:
            raise self.error("mapping", "'stick-breaking' (uniform on the simplex) or 'renormalised' (the "
                             "paper's: T uniform weights rescaled to sum to T)", self.mapping)
        if self.mapping == "renormalised" and self.sampler_name == "grid":
            raise self.error("sampler", "tpe, random, qmc or cmaes with mapping = 'renormalised' (the grid "
                             "sampler's cells along each diagonal of the cube, (0.25, 0.25) and (0.75, 0.75), "
                             "rescale to one weighting)", self.sampler_name)
        if self.sampler_name == "cmaes" and self.mapping == "stick-breaking" and self.tasks == 2:
            # Optuna's CMA-ES would fall back to random sampling, saying so only at INFO level.
            raise self.error("sampler", "a sampler for a one-dimensional search (2 tasks search the cube "
                             "[0, 1]^(T-1) = [0, 1], and CMA-ES needs two dimensions or more): tpe, random, "
                             "qmc or grid", self.sampler_name)

    def runs(self, seeds: Sequence[int]) -> list[RunSpec]:
        lr = self.rates()[0][1]  # a grid trains at one rate
        if self.method == "exhaustive":
            return [
                RunSpec(self.name, f"w={format_weights(p)}/seed={s}", s, "static", {"weights": list(p)},
                        {**weight_params(p), "seed": seed_param(s)}, lr=lr)
                for p in self.points for s in seeds
            ]
        first = seeds[0]
        out = []
        for k in range(self.n_trials):
            out.append(RunSpec(self.name, f"point={k}/seed={first}", first, "static", {},
                               {"seed": seed_param(first)}, proposal=True, point=k, lr=lr))
            out.extend(
                RunSpec(self.name, f"point={k}/seed={s}", s, "static", {}, {"seed": seed_param(s)},
                        depends_on=(self.name, f"point={k}/seed={first}"), dependency="params", point=k, lr=lr)
                for s in seeds[1:]
            )
        return out

    # Sampled grids ---------------------------------------------------------------------
    @property
    def sampled(self) -> bool:
        return self.method == "optuna"

    def cube_distributions(self) -> dict[str, FloatDistribution]:
        """The sampler's search space: the cube [0, 1]^(T-1) of stick breaking (z0, z1, ...), or
        [0, 1]^T of raw weights to renormalise (u0, u1, ...; other names, so that a trial stored
        under one map is never read as the other's)."""
        if self.mapping == "renormalised":
            return {f"u{k}": FloatDistribution(0.0, 1.0) for k in range(self.tasks)}
        return {f"z{k}": FloatDistribution(0.0, 1.0) for k in range(self.tasks - 1)}

    @property
    def point_streams(self) -> bool:
        """Whether each point is proposed from a random stream of its own (see `sampler`). QMC
        and grid samplers keep one seed: it fixes the scrambling of their sequence and the order
        of their grid, which every point shares, and they index points by trial."""
        return self.sampler_name not in ("qmc", "grid")

    def sampler(self, point: int | None = None) -> optuna.samplers.BaseSampler:
        """The arm's sampler; with `point` (where `point_streams`), the one that proposes that
        point, its random stream drawn from `sampler_seed` and the point's index. Workers sharing
        a study, or a run resumed after Ctrl-C, would otherwise replay one seeded stream from its
        start and propose the same points again (Optuna's CMA-ES adds the trial number to its
        seed for the same reason)."""
        seed = self.sampler_seed
        if point is not None and self.point_streams:
            seed = derive_seed(seed, f"point {point}") % 2 ** 32  # numpy's RandomState takes 32 bits
        if self.sampler_name == "tpe":
            # constant_liar: points proposed side by side in one batch avoid each other.
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.sampler_name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, scramble=True)
        if self.sampler_name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        # The centres of m^(T-1) >= n_trials equal cells of the cube (a random n_trials of them
        # when more): each cell carries the same share of the simplex, and no two centres give one
        # weighting. The cube's faces would (z0 = 1 gives task 0 everything, whatever the rest).
        per_dim = next(m for m in itertools.count(1) if m ** (self.tasks - 1) >= self.n_trials)
        space = {name: [(i + 0.5) / per_dim for i in range(per_dim)] for name in self.cube_distributions()}
        return optuna.samplers.GridSampler(space, seed=seed)

    def weights_from_cube(self, params: Mapping[str, float]) -> tuple[float, ...]:
        if self.mapping == "renormalised":
            return renormalised_cube_to_simplex([params[f"u{k}"] for k in range(self.tasks)], self.tasks)
        return cube_to_simplex([params[f"z{k}"] for k in range(self.tasks - 1)], self.tasks)

    def describe(self) -> dict[str, Any]:
        if self.method == "exhaustive":
            described = {"kind": self.kind, "method": self.method, "resolution": self.resolution,
                         "points": [list(p) for p in self.points] if self.resolution is None else len(self.points)}
            if not self.boundary:  # only when set: studies stored before the option keep their hash
                described["boundary"] = False
            return described
        described = {"kind": self.kind, "method": self.method, "sampler": self.sampler_name,
                     "n_trials": self.n_trials, "parallel_points": self.parallel_points,
                     "sampler_seed": self.sampler_seed}
        if self.sampler_name == "grid":  # not the cube's corners and edges, as before: other points
            described["grid"] = "cell centres"
        if self.mapping != "stick-breaking":  # only when set: studies stored before the option keep their hash
            described["mapping"] = self.mapping
        return described


class GradNormArm(Arm):
    """GradNorm at one or more alpha values; every other GradNorm option applies to all."""

    kind = "gradnorm"
    options = ("alpha",)
    takes_balancer_options = "gradnorm"

    def parse(self, options: dict[str, Any]) -> None:
        alpha = options.get("alpha", [1.5])
        alphas = alpha if isinstance(alpha, list) else [alpha]
        if not alphas:
            raise self.error("alpha", "a number >= 0 or a non-empty list of them", alpha)
        for a in alphas:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
                raise self.error("alpha", "finite numbers >= 0", alpha)
        if len(set(alphas)) != len(alphas):
            raise self.error("alpha", "distinct values", alpha)
        self.alphas = [float(a) for a in alphas]

    def runs(self, seeds: Sequence[int]) -> list[RunSpec]:
        return [
            RunSpec(self.name, f"alpha={a:g}/{at}seed={s}", s, "gradnorm", {**self.balancer_params, "alpha": a},
                    {"alpha": (a, FloatDistribution(0.0, max(10.0, a))), **self.rate_params(lr),
                     "seed": seed_param(s)}, lr=lr)
            for a in self.alphas for at, lr in self.rates() for s in seeds
        ]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "alpha": self.alphas, **self.balancer_params}


class GradNormStaticArm(Arm):
    """GradNorm static: each GradNorm run's time-averaged weights, retrained from scratch."""

    kind = "gradnorm-static"
    takes_several_rates = False
    several_rates_refused = ("it retrains each GradNorm run at that run's rate, or at the one rate given here; "
                             "to train GradNorm at several, give its arm the list")
    options = ("source", "window")

    def parse(self, options: dict[str, Any]) -> None:
        self.source_arm = options.get("source")
        self.window = options.get("window", "all")
        if self.window not in ("all", "tail"):
            raise self.error("window", "'all' (the whole run) or 'tail' (the budget's tail_fraction)",
                             self.window)

    def bind(self, arms: Mapping[str, Arm]) -> None:
        """Find the GradNorm arm this arm retrains (the only one, unless `source` names it)."""
        gradnorm_arms = [a for a in arms.values() if isinstance(a, GradNormArm)]
        if self.source_arm is None:
            if len(gradnorm_arms) != 1:
                have = (f"the study has {len(gradnorm_arms)}: {', '.join(a.name for a in gradnorm_arms)}"
                        if gradnorm_arms else "the study has none: add a [arms.gradnorm]")
                raise self.error("source", f"the name of the GradNorm arm to retrain ({have})")
            self.source_arm = gradnorm_arms[0].name
        if not (isinstance(self.source_arm, str) and isinstance(arms.get(self.source_arm), GradNormArm)):
            raise self.error("source", "the name of a gradnorm arm of this study",
                             self.source_arm)
        self.gradnorm = arms[self.source_arm]

    def runs(self, seeds: Sequence[int]) -> list[RunSpec]:
        return [
            # A fresh run of its GradNorm run's, but for the weights: at that run's rate, unless set here.
            RunSpec(self.name, run.key, run.seed, "static", {},
                    {**{k: v for k, v in run.params.items() if k == "lr" and self.network_lrs is None},
                     "seed": seed_param(run.seed)},
                    depends_on=(self.gradnorm.name, run.key), dependency="complete",
                    lr=run.lr if self.network_lrs is None else self.network_lrs[0])
            for run in self.gradnorm.runs(seeds)
        ]

    def weights_from(self, source_record: Mapping[str, Any]) -> list[float]:
        key = "mean_weights" if self.window == "all" else "tail_mean_weights"
        return list(source_record[key])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source_arm, "window": self.window}


ARM_KINDS: dict[str, type[Arm]] = {
    cls.kind: cls for cls in (GridArm, GradNormArm, GradNormStaticArm, EqualArm, StaticArm,
                              UncertaintyArm, DWAArm, RLWArm, LossScaleArm)
}
