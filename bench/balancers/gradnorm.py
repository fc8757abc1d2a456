"""`gradnorm`: GradNorm (Chen et al., ICML 2018), Algorithm 1 by default.

At every step t, for each run:
    G_i(t)   = || grad_W (w_i(t) L_i(t)) ||_2 = |w_i(t)| * || grad_W L_i(t) ||_2
    G_bar(t) = mean_i G_i(t)
    r_i(t)   = L~_i(t) / mean_j L~_j(t),  with  L~_i(t) = L_i(t) / L_i(0)
    L_grad   = sum_i | G_i(t) - G_bar(t) * r_i(t)^alpha |    (the target G_bar * r^alpha is detached)
The network's gradient uses the old weights w(t) (the engine computed it before `update`). The
weights are then moved by their own optimiser (Adam, learning rate 0.025, state kept across
steps) along dL_grad/dw only (nothing reaches the network), and renormalised so that
sum_i w_i = T.

Because w_i is a scalar, grad_W (w_i L_i) = w_i grad_W L_i: the engine hands over the unweighted
norms ||grad_W L_i|| and no second-order graph is needed. With the target constant, dL_grad/dw
has a closed form (`loss_and_gradient`), which the update uses: on a lone run, autograd on this
tiny graph cost more than the formula. `gradnorm_loss` is the differentiable definition, and
the tests check that both give the same gradient.

Every deviation seen in public implementations is an explicit option (see `GradNormParams`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from bench.balancers.base import Balancer
from bench.errors import ConfigError
from bench.problems.base import TaskSpec


@dataclass(frozen=True)
class GradNormParams:
    # Asymmetry: strength of the pull towards equal training rates (paper: 0.12 toy, 1.5 NYUv2).
    alpha: float = 1.5
    # W, the parameters G_i is measured on. Paper: the last shared layer's weight matrix.
    # "last_layer" adds its bias; "all_shared" is every trunk parameter (LibMTL);
    # "representation" is the trunk's output (the shared representation).
    grad_params: Literal["last_layer_weight", "last_layer", "all_shared", "representation"] = (
        "last_layer_weight"
    )
    # L_i(0). Paper: the loss at the first step. "mean_first_steps" averages the first
    # `initial_loss_steps` steps, during which the weights stay at 1 (LibMTL uses a first epoch);
    # "log_classes" uses log C for classification tasks (first-step loss for the others).
    initial_loss: Literal["first_step", "mean_first_steps", "log_classes"] = "first_step"
    initial_loss_steps: int = 1
    # Paper: raw weights renormalised to sum to T. "softmax": w = T * softmax(theta) (LibMTL).
    parametrisation: Literal["raw", "softmax"] = "raw"
    # The weights' own optimiser. Paper (NYUv2): Adam with learning rate 0.025.
    weight_optimizer: Literal["adam", "sgd"] = "adam"
    weight_lr: float = 0.025
    # Paper: L_grad is summed over tasks; "mean" divides it (and the weights' step) by T.
    reduction: Literal["sum", "mean"] = "sum"
    # Paper: no floor. A positive floor keeps raw weights >= floor; binding steps are counted.
    floor: float | None = None

    def validate(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError("alpha", "a finite number >= 0", self.alpha)
        if not (math.isfinite(self.weight_lr) and self.weight_lr > 0):
            raise ConfigError("weight_lr", "a positive number", self.weight_lr)
        if self.initial_loss_steps < 1:
            raise ConfigError("initial_loss_steps", "an integer >= 1", self.initial_loss_steps)
        if self.initial_loss_steps != 1 and self.initial_loss != "mean_first_steps":
            # Only that rule averages; under the others the option would be silently ignored.
            raise ConfigError("initial_loss_steps", "initial_loss = 'mean_first_steps' with it (the "
                              f"{self.initial_loss!r} rule takes L_i(0) from the first step)",
                              self.initial_loss_steps)
        if self.floor is not None:
            if not 0 < self.floor < 1:
                raise ConfigError("floor", "a number in (0, 1) (the mean weight is 1)", self.floor)
            if self.parametrisation != "raw":
                raise ConfigError("floor", "no floor with parametrisation = 'softmax' "
                                  "(softmax weights are positive already)", self.floor)

    def check_tasks(self, tasks: Sequence[TaskSpec]) -> None:
        """Refuse `log_classes` where no task is a classification: L_i(0) would be every task's
        first-step loss, `first_step` under another name."""
        if self.initial_loss == "log_classes" and all(t.log_classes is None for t in tasks):
            raise ConfigError("initial_loss", "'first_step' or 'mean_first_steps' for a problem without "
                              "classification tasks ('log_classes' sets L_i(0) = log C for those only; here "
                              "it would be 'first_step')", self.initial_loss)

    def check_steps(self, steps: int, *, steps_per_epoch: int | None = None) -> None:
        """Refuse a warm-up that outlasts the run: its weights would stay 1 throughout."""
        if self.initial_loss == "mean_first_steps" and self.initial_loss_steps >= steps:
            raise ConfigError("initial_loss_steps", f"fewer than the budget's {steps} steps (the weights "
                              "stay 1 until L_i(0) is known)", self.initial_loss_steps)


class GradNorm(Balancer):
    name = "gradnorm"
    Params = GradNormParams
    description = "GradNorm (Chen et al. 2018), Algorithm 1; deviations are named options"
    per_run_fields = ("alpha",)
    params: list[GradNormParams]

    def __init__(self, params: Sequence[GradNormParams], tasks: Sequence[TaskSpec], **kwargs: Any) -> None:
        super().__init__(params, tasks, **kwargs)
        p = self.options = self.params[0]
        R, T = self.n_runs, self.n_tasks
        self.alpha = self.per_run("alpha")  # (R, 1)
        # theta: raw weights (paper) or softmax logits. A tensor of its own, moved by its own
        # optimiser: it never enters the network's graph.
        init = torch.ones(R, T) if p.parametrisation == "raw" else torch.zeros(R, T)
        self.theta = init.to(device=self.device, dtype=self.dtype)
        if p.weight_optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.theta], lr=p.weight_lr,
                                                                     fused=self.theta.device.type in ("cpu", "cuda"))
        else:
            self.optimizer = torch.optim.SGD([self.theta], lr=p.weight_lr)
        self.initial_losses: Tensor | None = None
        self._warmup_sum = torch.zeros(R, T, device=self.device, dtype=self.dtype)
        self._stopped = torch.zeros(R, dtype=torch.bool, device=self.device)
        self.floor_binding_steps = torch.zeros(R, dtype=torch.long, device=self.device)
        self.nonpositive_weight_steps = torch.zeros(R, dtype=torch.long, device=self.device)
        self._norm_trace: list[Tensor] = []
        self._target_trace: list[Tensor] = []  # G_bar r_i^alpha per step: how far G_i is from its aim
        # The last step's quantities, kept for inspection and tests.
        self.last_gradnorm_loss: Tensor | None = None
        self.last_target: Tensor | None = None
        self.last_weighted_norms: Tensor | None = None

    @property
    def grad_norm_target(self) -> str:
        return self.options.grad_params

    def _weights_of(self, theta: Tensor) -> Tensor:
        if self.options.parametrisation == "softmax":
            return self.n_tasks * torch.softmax(theta, dim=1)
        return theta

    def weights(self) -> Tensor:
        return self._weights_of(self.theta.detach()).clone()

    def _set_initial_losses(self, step: int, losses: Tensor) -> bool:
        """Record L_i(0); return True while still warming up (no weight update this step)."""
        p = self.options
        if p.initial_loss == "mean_first_steps":
            self._warmup_sum += losses
            if step + 1 < p.initial_loss_steps:
                return True
            self.initial_losses = self._warmup_sum / p.initial_loss_steps
            self._check_initial_losses()
            return True
        initial = losses.clone()
        if p.initial_loss == "log_classes":
            for i, task in enumerate(self.tasks):
                if task.log_classes is not None:
                    initial[:, i] = task.log_classes
        self.initial_losses = initial
        self._check_initial_losses()
        return False

    def _check_initial_losses(self) -> None:
        """r_i(t) = L_i(t) / L_i(0) needs L_i(0) > 0: at 0 every ratio is NaN, whose sign is 0 in
        torch, so the weights would silently stay where they are (equal weights, under GradNorm's name)."""
        initial = self.initial_losses
        assert initial is not None
        self._undefined_where(~(initial > 0) & ~self._stopped.unsqueeze(1), initial,
                              "GradNorm's training rates divide by each task's initial loss L_i(0), "
                              "which must be positive")

    def _target(self, weighted_norms: Tensor, losses: Tensor) -> Tensor:
        """G_bar(t) r_i(t)^alpha, a constant in L_grad."""
        assert self.initial_losses is not None
        mean_norm = weighted_norms.mean(dim=1, keepdim=True)
        loss_ratio = losses / self.initial_losses
        inverse_rate = loss_ratio / loss_ratio.mean(dim=1, keepdim=True)
        return (mean_norm * inverse_rate.pow(self.alpha)).detach()

    def gradnorm_loss(self, theta: Tensor, losses: Tensor, grad_norms: Tensor) -> Tensor:
        """L_grad per run, shape (R,), differentiable in theta only (the target is detached)."""
        weighted_norms = self._weights_of(theta).abs() * grad_norms  # G_i = |w_i| ||grad_W L_i||
        gaps = (weighted_norms - self._target(weighted_norms, losses)).abs()
        return gaps.sum(dim=1) if self.options.reduction == "sum" else gaps.mean(dim=1)

    def loss_and_gradient(self, losses: Tensor, grad_norms: Tensor) -> tuple[Tensor, Tensor]:
        """L_grad per run (R,) at the current theta, and dL_grad/dtheta (R, T), in closed form.

        dL_grad/dw_i = sign(G_i - target_i) sign(w_i) ||grad_W L_i|| (sign(0) = 0 at the kinks,
        as autograd has it); through w = T softmax(theta), dL/dtheta_j = w_j (g_j - sum_i w_i g_i / T).
        """
        w = self._weights_of(self.theta)
        weighted_norms = w.abs() * grad_norms
        target = self._target(weighted_norms, losses)
        gaps = weighted_norms - target
        grad = gaps.sign() * w.sign() * grad_norms
        loss = gaps.abs().sum(dim=1)
        if self.options.reduction == "mean":
            loss, grad = loss / self.n_tasks, grad / self.n_tasks
        if self.options.parametrisation == "softmax":
            grad = w * (grad - (w * grad).sum(dim=1, keepdim=True) / self.n_tasks)
        self.last_target, self.last_weighted_norms = target, weighted_norms
        return loss, grad

    def update(self, step: int, losses: Tensor, grad_norms: Tensor | None) -> None:
        assert grad_norms is not None, "GradNorm needs the per-task gradient norms"
        if self.initial_losses is None and self._set_initial_losses(step, losses):
            self._norm_trace.append(self.weights().abs() * grad_norms)
            self._target_trace.append(torch.full_like(grad_norms, math.nan))  # no target while warming up
            return
        initial_losses = self.initial_losses
        assert initial_losses is not None  # the warm-up, if any, has ended
        any_stopped = bool(self._stopped.any())
        if any_stopped:
            # Failed runs may carry non-finite numbers; keep them out of their own row's update.
            stopped = self._stopped.unsqueeze(1)
            losses = torch.where(stopped, initial_losses, losses)
            grad_norms = torch.where(stopped, torch.ones_like(grad_norms), grad_norms)
            before = self.theta.detach().clone()
        self.last_gradnorm_loss, grad = self.loss_and_gradient(losses, grad_norms)
        target, weighted_norms = self.last_target, self.last_weighted_norms
        assert target is not None and weighted_norms is not None  # set by loss_and_gradient
        # With L_i(0) > 0 (checked), a negative loss (a loss of one's own) has no training rate,
        # and every loss at 0 leaves the rates 0 / 0: the targets are NaN, or mean nothing.
        undefined = (~torch.isfinite(target) | (losses < 0)).any(dim=1, keepdim=True)
        # Non-finite gradient norms are divergence, not undefined rates: the network's step took
        # the same gradients, and the engine fails the run on its next losses.
        undefined &= torch.isfinite(grad_norms).all(dim=1, keepdim=True)
        if any_stopped:
            undefined &= ~stopped
        if bool(undefined.any()):
            negative = losses < 0
            named = torch.where(negative.any(dim=1, keepdim=True), negative, True) & undefined
            self._undefined_where(named, losses / initial_losses, "GradNorm's targets G_bar r_i^alpha "
                                  f"need loss ratios L_i(t) / L_i(0) >= 0, not all 0 (at step {step})")
        self._norm_trace.append(weighted_norms)
        self._target_trace.append(target)
        self.theta.grad = grad
        self.optimizer.step()
        self.theta.grad = None
        with torch.no_grad():
            if self.options.parametrisation == "raw":
                self.theta.copy_(self._renormalised(self.theta))
            if any_stopped:
                self.theta.copy_(torch.where(stopped, before, self.theta))

    def _renormalised(self, w: Tensor) -> Tensor:
        T = self.n_tasks
        w = w * (T / w.sum(dim=1, keepdim=True))
        floor = self.options.floor
        # A failed run's row is restored after this step: its steps are not counted.
        live = ~self._stopped
        if floor is None:
            self.nonpositive_weight_steps += ((w <= 0).any(dim=1) & live).long()
            return w
        # Clamp at the floor and rescale the free weights so that the sum stays T. Rescaling
        # shrinks the free weights, which can push another below the floor: repeat until none
        # does. At most T rounds: the free weights always sum to more than 1 > floor, so one stays free.
        bound = w < floor
        for _ in range(T):
            free_total = (w * ~bound).sum(dim=1, keepdim=True)
            room = T - floor * bound.sum(dim=1, keepdim=True)
            clamped = torch.where(bound, torch.full_like(w, floor), w * room / free_total)
            newly = (clamped < floor) & ~bound
            if not bool(newly.any()):
                break
            bound |= newly
        binding = bound.any(dim=1, keepdim=True)
        self.floor_binding_steps += (binding.squeeze(1) & live).long()
        # A run whose floor does not bind keeps its weights as they are: rescaling them by
        # T / sum = 1 would still round them differently, and a floor that never binds must leave
        # the run identical to Algorithm 1's (after 600 toy steps it moved the test loss by 1e-3).
        return torch.where(binding, clamped, w)

    def stop_runs(self, runs: Tensor) -> None:
        self._stopped |= runs

    def traces(self) -> dict[str, Tensor]:
        """G_i(t) = |w_i| ||grad_W L_i|| and its target G_bar(t) r_i(t)^alpha at every step, each
        of shape (steps, R, T); the target is NaN on warm-up steps, which have none."""
        if not self._norm_trace:
            return {}
        return {"grad_norms": torch.stack(self._norm_trace), "target_norms": torch.stack(self._target_trace)}

    def run_stats(self) -> list[dict[str, Any]]:
        initial = self.initial_losses
        return [
            {
                "initial_losses": None if initial is None else initial[r].tolist(),
                "floor_binding_steps": int(self.floor_binding_steps[r]),
                "nonpositive_weight_steps": int(self.nonpositive_weight_steps[r]),
            }
            for r in range(self.n_runs)
        ]
