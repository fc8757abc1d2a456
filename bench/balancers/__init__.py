"""Loss-balancing methods, one file each on `Balancer`. `BALANCERS` is the one registry:
the CLI, study files and the report read their choices from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.balancers.base import Balancer
from bench.balancers.dwa import DWA
from bench.balancers.equal import Equal
from bench.balancers.gradnorm import GradNorm
from bench.balancers.loss_scale import LossScale
from bench.balancers.rlw import RLW
from bench.balancers.static import Static
from bench.balancers.uncertainty import Uncertainty
from bench.errors import ConfigError, did_you_mean
from bench.params import build_params

if TYPE_CHECKING:
    from bench.problems import TaskSpec

BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls for cls in (Equal, Static, GradNorm, Uncertainty, DWA, RLW, LossScale)
}


def balancer_class(name: str, *, source: str | None = None) -> type[Balancer]:
    try:
        return BALANCERS[name]
    except KeyError:
        raise ConfigError("balancer", "one of " + ", ".join(BALANCERS), name, source=source,
                          hint=did_you_mean(name, BALANCERS)) from None


def build_balancer_params(name: str, params: Mapping[str, Any] | None = None, *,
                          source: str | None = None) -> Any:
    """The validated options of balancer `name`, or a ConfigError naming the field."""
    cls = balancer_class(name, source=source)
    return build_params(cls.Params, params, source=source, prefix="balancer.",
                        owner=f"balancer {name!r}")


def check_balancer_steps(params: Any, steps: int, *, steps_per_epoch: int | None = None,
                         source: str | None = None, prefix: str = "balancer.") -> None:
    """Refuse options whose warm-up outlasts a budget of `steps` steps: the method would train
    the whole run with its initial weights of 1, equal weights under another name.
    `steps_per_epoch` (None when the training size is unknown) checks warm-ups counted in epochs."""
    _check(params, "check_steps", (steps,), {"steps_per_epoch": steps_per_epoch}, source, prefix)


def check_balancer_tasks(params: Any, tasks: Sequence[TaskSpec], *, source: str | None = None,
                         prefix: str = "balancer.") -> None:
    """Refuse options that do nothing for these tasks (GradNorm's `log_classes` initial losses
    without a classification task): the run would be another option's under this one's name."""
    _check(params, "check_tasks", (tasks,), {}, source, prefix)


def _check(params: Any, method: str, args: tuple, kwargs: dict[str, Any], source: str | None, prefix: str) -> None:
    check = getattr(params, method, None)
    if check is None:
        return
    try:
        check(*args, **kwargs)
    except ConfigError as err:
        raise err.located(source, prefix=prefix) from None


__all__ = ["BALANCERS", "Balancer", "balancer_class", "build_balancer_params", "check_balancer_steps",
           "check_balancer_tasks"]
