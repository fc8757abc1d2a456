"""The training engine: trains R runs of one problem and budget at once, as one stacked model.

A single run is the case R = 1. Runs trained together share the problem, the architecture, the
budget and the balancing method's family; each has its own slice of every parameter, its own
initialisation seed, its own optimiser state (Adam is elementwise, so one Adam over stacked
tensors is R independent Adams), its own data seed and batch order, and its own task weights.
Every operation acts slice by slice, so a slice computes what the run would compute alone.

One step, for the weights w(t) the balancer gives:
    1. forward: the last shared layer's output z, per-task losses L (R, T);
    2. if the balancer needs them, the per-task gradients of w_i L_i at z (one backward pass
       through the heads) and from them the norms G_i = ||grad_W w_i L_i|| at GradNorm's W (for
       a stacked linear layer, batched products a^T [delta_i ... delta_j] with its input a, a
       few tasks at a time), passed on as ||grad_W L_i|| = G_i / |w_i|;
    3. the network's gradient of sum_i w_i(t) L_i, with the *old* weights w(t);
    4. the network's Adam step, then `balancer.update(...)` moves the weights to w(t + 1).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from bench.balancers import BALANCERS
from bench.errors import ConfigError
from bench.params import build_params
from bench.problems import Problem, build_problem
from bench.problems.base import Metric, TaskSpec
from bench.problems.layers import StackedLinear
from bench.training.config import RunConfig, derive_seed
from bench.training.device import resolve_device
from bench.training.record import TRAJECTORY_POINTS, RunRecord, without_repeats

ProgressCallback = Callable[[int], None]

# Evaluation processes examples in chunks of about this many input elements over all runs. On a
# CPU, smaller chunks keep a layer's activations in cache: a 32-run stack of the default study
# evaluated in 114 ms with 2^20 elements, 119 ms with 2^21 and 132 ms with 2^22 (a lone run, in
# one chunk either way, is unchanged); a GPU prefers fewer, larger launches.
EVAL_CHUNK_ELEMENTS_CPU = 1 << 20
EVAL_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24
# A run whose task weights exceed this in absolute value has diverged (raw GradNorm weights whose
# sum nears zero explode on renormalisation; uncertainty weights can grow without end).
MAX_TASK_WEIGHT = 1e6
# A run whose task-normalised loss on the training split, at an evaluation, is past this many
# times its value before training has diverged too: such a loss (GradNorm's weights crossed zero
# and train a task upward) overflows later, so a run failed or finished by the budget's length.
MAX_LOSS_GROWTH = 1e6
# GradNorm's per-task gradients at the last shared layer are handled a few tasks at a time,
# packed side by side in at most about this many elements (256K floats, 1 MiB): small enough to
# stay in cache. A large stack of runs takes one task at a time, with no packing copy at all.
NORM_PACK_ELEMENTS = 1 << 18
# The last shared layer's parameters that GradNorm's W is, per `grad_params` that names them.
LAST_LAYER_PARAMS = {"last_layer_weight": ("weight",), "last_layer": ("weight", "bias")}


@functools.lru_cache(maxsize=8)
def _cached_problem(name: str, params_json: str) -> Problem:
    import json

    return build_problem(name, json.loads(params_json))


def problem_for(config: RunConfig) -> Problem:
    """The problem instance of a run; one per process and options, so its data is built once."""
    import json

    return _cached_problem(config.problem, json.dumps(dict(config.problem_params), sort_keys=True))


def batch_indices(seed: int, n_train: int, batch_size: int, steps: int) -> Tensor:
    """Training batch indices (steps, batch_size): epochs of random permutations, last partial
    batch of each epoch dropped. Drawn from the run's "batches" stream."""
    order = BatchOrder([seed], n_train, batch_size, torch.device("cpu"))
    epochs = [order.next_epoch()[0] for _ in range(math.ceil(steps / order.per_epoch))]
    return torch.cat(epochs)[:steps]


class BatchOrder:
    """`batch_indices` of several seeds, drawn one epoch at a time as training reaches it (steps
    come in order). Drawn all at once, the indices took steps x batch_size integers per seed:
    1.2 GB for three seeds of 200,000 steps of 256 examples."""

    def __init__(self, seeds: Sequence[int], n_train: int, batch_size: int, device: torch.device):
        if batch_size > n_train:
            raise ConfigError("batch_size", f"at most the {n_train} training examples", batch_size)
        self.n_train, self.batch_size, self.device = n_train, batch_size, device
        self.per_epoch = n_train // batch_size
        self._seeds = list(seeds)
        self._start()

    def _start(self) -> None:
        self._generators = [torch.Generator().manual_seed(derive_seed(s, "batches")) for s in self._seeds]
        self._epoch = -1
        self._current: Tensor | None = None

    def next_epoch(self) -> Tensor:
        """The next epoch's batches of every seed, (seeds, per_epoch, batch_size), on the CPU: a
        random permutation of the training rows each, its last partial batch dropped."""
        kept = self.per_epoch * self.batch_size
        perms = [torch.randperm(self.n_train, generator=g)[:kept] for g in self._generators]
        self._epoch += 1
        return torch.stack(perms).view(len(perms), self.per_epoch, self.batch_size)

    def at(self, step: int) -> Tensor:
        """Every seed's batch at `step`, shape (seeds, batch_size)."""
        epoch, within = divmod(step, self.per_epoch)
        if epoch < self._epoch:  # back to an earlier epoch: draw again from the start
            self._start()
        while self._epoch < epoch:
            drawn = self.next_epoch()
            if self._epoch == epoch:
                self._current = drawn.to(self.device)
        assert self._current is not None
        return self._current[:, within]


def downsample(trace: Tensor, points: int = TRAJECTORY_POINTS) -> tuple[list[int], Tensor]:
    """At most `points` evenly spaced rows of a per-step trace (steps, ...), first and last kept."""
    n = trace.shape[0]
    if n <= points:
        idx = torch.arange(n)
    else:
        idx = torch.unique(torch.linspace(0, n - 1, points).round().long())
    return idx.tolist(), trace[idx]


class BatchTrainer:
    """Trains the runs in `configs` (which must share `RunConfig.batch_key()`) as one model."""

    def __init__(self, configs: Sequence[RunConfig]):
        if not configs:
            raise ValueError("no runs to train")
        keys = {c.batch_key() for c in configs}
        if len(keys) != 1:
            raise ValueError("runs trained together must share problem, budget and balancer family")
        self.configs = list(configs)
        first = self.configs[0]
        self.budget = first.budget
        self.device = resolve_device(first.device)
        self.dtype = getattr(torch, first.dtype)
        self.problem = problem_for(first)
        if not self.problem.supports_stacking and len(configs) > 1:
            raise ValueError(f"problem {first.problem!r} trains one run at a time")
        self.tasks = self.problem.tasks
        R, T = self.n_runs, self.n_tasks = len(configs), len(self.tasks)

        # Data: one stacked copy per distinct data seed; each run indexes its own.
        data_seeds = [c.resolved_data_seed for c in self.configs]
        distinct = sorted(set(data_seeds))
        self._run_data = torch.tensor([distinct.index(s) for s in data_seeds], device=self.device)
        per_seed = [self.problem.load(s) for s in distinct]
        self.splits = {}
        for name in ("train", "val", "test"):
            parts = [getattr(d, name).to(self.device, self.dtype) for d in per_seed]
            self.splits[name] = (
                torch.stack([p.inputs for p in parts]),
                tuple(torch.stack([p.targets[i] for p in parts]) for i in range(T)),
            )
        self._shared_data = len(distinct) == 1
        n_train = self.splits["train"][0].shape[1]
        self.steps_per_epoch = self.budget.steps_per_epoch(n_train)

        # Batch order: one sequence per distinct seed.
        seeds = [c.seed for c in self.configs]
        distinct_seeds = sorted(set(seeds))
        self._order = BatchOrder(distinct_seeds, n_train, self.budget.batch_size, self.device)
        self._run_order = torch.tensor([distinct_seeds.index(s) for s in seeds], device=self.device)
        self._shared_batches = self._shared_data and len(distinct_seeds) == 1

        self.model = self.problem.checked_model([derive_seed(s, "init") for s in seeds])
        self.model.to(device=self.device, dtype=self.dtype)
        self.problem.check_model_takes(self.model, self.splits["train"][0][self._run_data, :2])
        if self.n_runs > 1:  # once per problem: `bench run` checked it already, a Dask worker or the API not
            self.problem.check_stacking(per_seed[0])
        self._eval_chunk_elements = (EVAL_CHUNK_ELEMENTS_CPU if self.device.type == "cpu"
                                     else EVAL_CHUNK_ELEMENTS_ACCELERATOR)
        self.head_parameters = self.model.task_specific_parameters()
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.budget.lr, fused=fused)

        family, family_params = zip(*(c.batch_family() for c in self.configs))
        cls = BALANCERS[family[0]]
        self.balancer = cls(
            [build_params(cls.Params, p) for p in family_params], self.tasks,
            device=self.device, dtype=self.dtype, steps_per_epoch=self.steps_per_epoch,
            seeds=[derive_seed(c.seed, "balancer") for c in self.configs],
        )
        self._check_grad_norm_target()
        self.alive = torch.ones(R, dtype=torch.bool, device=self.device)
        self._pending_failures = torch.zeros(R, dtype=torch.bool, device=self.device)
        self._any_retired = False  # a Python flag: the hot path checks it without a device sync
        self.failures: list[tuple[int, str] | None] = [None] * R
        self._normalisers = torch.tensor([t.normaliser for t in self.tasks], device=self.device, dtype=torch.float64)
        self.weights_trace = torch.zeros(self.budget.steps, R, T, device=self.device, dtype=self.dtype)
        self.eval_steps: list[int] = []
        self.eval_losses: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
        self.final_metrics: dict[str, dict[tuple[int, str], Tensor]] = {}
        self.steps_done = 0

    # ----------------------------------------------------------------- data
    def training_batch(self, step: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Inputs (R, B, ...) and per-task targets (R, B, ...) of every run at `step`."""
        inputs, targets = self.splits["train"]
        order = self._order.at(step)  # (U, B)
        if self._shared_batches:
            idx = order[0]
            return (inputs[0, idx].expand(self.n_runs, *idx.shape, *inputs.shape[2:]),
                    tuple(y[0, idx].expand(self.n_runs, *idx.shape, *y.shape[2:]) for y in targets))
        idx = order[self._run_order]  # (R, B)
        rows = self._run_data.unsqueeze(1)
        return inputs[rows, idx], tuple(y[rows, idx] for y in targets)

    # ----------------------------------------------------------------- one step
    def task_gradient_norms(self, target: str, a: Tensor, z: Tensor, packs: Sequence[Tensor],
                            rep_grads: Sequence[Tensor] | None) -> Tensor:
        """The norms at `target` of the per-task gradients given, per run and task, shape (R, T).

        `packs` hold the per-task gradients at z, the last shared layer's output, a few tasks
        side by side: each is (R, ..., k, out) for k consecutive tasks (see `compute_gradients`).
        `rep_grads` (T tensors) are those at the trunk's output h (only for "representation").
        The norm of a linear map of a gradient scales with it: given the gradients of w_i L_i,
        this returns G_i = ||grad_W w_i L_i||.
        """
        if target == "representation":
            assert rep_grads is not None  # `compute_gradients` takes them for this target
            return torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in rep_grads], dim=1)
        layer = self.model.last_shared_layer
        R = z.shape[0]
        if target in ("last_layer_weight", "last_layer") and isinstance(layer, StackedLinear):
            # grad_W of task i = a^T delta_i: one batched product per pack, [delta_i ... delta_i+k]^T a,
            # laid out so that each task's block is contiguous for the norm.
            inputs = a.detach().reshape(R, -1, a.shape[-1])  # (R, N, in)
            squares = []
            for pack in packs:
                k, out = pack.shape[-2:]
                flat = pack.reshape(R, -1, k * out)  # (R, N, k * out)
                product = torch.bmm(flat.transpose(1, 2), inputs).view(R, k, -1)  # (R, k, out * in)
                sq = torch.linalg.vector_norm(product, dim=2).square()  # (R, k)
                if target == "last_layer":
                    sq = sq + flat.sum(dim=1).view(R, k, out).square().sum(dim=2)
                squares.append(sq)
            return torch.cat(squares, dim=1).sqrt()
        params = (self.model.shared_parameters() if target == "all_shared"
                  else [getattr(layer, name) for name in LAST_LAYER_PARAMS[target]])
        # Any other layer: one backward pass from z for all tasks at once (vmapped over tasks).
        deltas = torch.cat([pack.movedim(-2, 0) for pack in packs])  # (T, R, ...)
        grads = torch.autograd.grad(z, params, grad_outputs=deltas, retain_graph=True, is_grads_batched=True)
        total = cast(Tensor, sum(g.flatten(2).square().sum(dim=2) for g in grads))  # (T, R)
        return total.sqrt().t()

    def compute_gradients(self, x: Tensor, targets: Sequence[Tensor], weights: Tensor
                          ) -> tuple[Tensor, Tensor | None]:
        """Fill the network's .grad with grad sum_i w_i L_i; return losses (R, T) and, if the
        balancer asks, the norms ||grad_W L_i|| (R, T)."""
        model, T = self.model, self.n_tasks
        # Runs with a non-finite loss contribute nothing (their failure is noted by `step`).
        alive = self.alive.unsqueeze(1)
        target = self.balancer.grad_norm_target
        if target is None:
            losses = self.problem.losses(model.forward(x), targets)
            masked = torch.where(alive & torch.isfinite(losses), losses, torch.zeros_like(losses))
            (weights * masked).sum().backward()
            return losses.detach(), None
        a = model.body(x)
        z = model.last_shared_layer(a)
        # Cut the graph with one leaf per task (T detached views of one tensor, no copies): one
        # backward pass through the heads of sum_i w_i L_i gives every task's own gradient
        # w_i delta_i at the cut and the heads' final gradients (a head belongs to one task only).
        # Norms of the weighted gradients are the paper's G_i = ||grad_W w_i L_i||; the balancer
        # gets ||grad_W L_i|| = G_i / |w_i|. For a ReLU (or no) activation the cut is at h and the
        # gradient at z is g * (z > 0), which spares T activations; otherwise the cut is at z.
        relu = isinstance(model.activation, (nn.ReLU, nn.Identity))
        shared = model.activation(z) if relu else z
        cuts = [shared.detach().requires_grad_(True) for _ in range(T)]
        reps = cuts if relu else [model.activation(c) for c in cuts]
        losses = self.problem.losses(model.apply_heads(reps), targets)
        masked = torch.where(alive & torch.isfinite(losses), losses, torch.zeros_like(losses))
        want_reps = target == "representation" and not relu
        grads = list(torch.autograd.grad((weights * masked).sum(),
                                         [*cuts, *(reps if want_reps else []), *self.head_parameters],
                                         materialize_grads=True))
        deltas = grads[:T]
        param_grads = grads[2 * T:] if want_reps else grads[T:]
        for p, g in zip(self.head_parameters, param_grads):
            # autograd.grad gives a gradient in the layout its backward made (a vmapped
            # nn.Linear's comes transposed); fused Adam reads it as laid out like its parameter,
            # on the CPU silently wrong otherwise. .backward() would lay it out so (AccumulateGrad).
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
        weighted_norms = None
        if target == "representation":  # from the gradients at h, before any ReLU mask below
            weighted_norms = self.task_gradient_norms(target, a, z, [], grads[T:2 * T] if want_reps else deltas)

        # The deltas in packs of k tasks side by side, (R, ..., k, out): few enough elements
        # to stay in cache (one pack of all tasks for a single small run, one task per pack
        # for a large stack), so each pack needs one masking, one product and one sum.
        active = (z.detach() > 0).to(z.dtype).unsqueeze(-2) if isinstance(model.activation, nn.ReLU) else None
        k = max(1, min(T, NORM_PACK_ELEMENTS // z.numel()))
        packs, total = [], None
        for lo in range(0, T, k):
            hi = min(T, lo + k)
            # a fresh tensor to mask in place (a lone task's gradient is copied only if it is a view)
            pack = torch.stack(deltas[lo:hi], dim=-2) if hi - lo > 1 else deltas[lo].contiguous().unsqueeze(-2)
            if active is not None:
                pack.mul_(active)
            packs.append(pack)
            summed = pack.sum(dim=-2) if hi - lo > 1 else pack.squeeze(-2)
            if total is None:  # a fresh tensor: accumulating into a pack would corrupt its norm
                total = summed if hi - lo > 1 else summed.clone()
            else:
                total.add_(summed)
        if weighted_norms is None:
            weighted_norms = self.task_gradient_norms(target, a, z, packs, None)
        # Where w_i = 0, ||grad_W L_i|| is not observed; GradNorm needs it only times |w_i| or
        # sign(w_i), both 0 there, so 0 stands in.
        scale = weights.abs()
        observed = scale > 0
        norms = torch.where(observed, weighted_norms / torch.where(observed, scale, 1), 0)
        z.backward(total)
        return losses.detach(), norms

    def step(self, step: int) -> None:
        weights = self.balancer.weights()
        self._check_diverged(weights, "task weights", step, limit=MAX_TASK_WEIGHT)
        self._retire_failed_runs()
        self.weights_trace[step] = weights
        self.optimizer.zero_grad(set_to_none=True)
        x, targets = self.training_batch(step)
        losses, norms = self.compute_gradients(x, targets, weights)
        self._check_diverged(losses, "training loss", step, batch_targets=targets)
        self._retire_failed_runs()
        if self._any_retired:
            self._zero_retired_gradients()
        self.optimizer.step()
        self.balancer.update(step, losses, norms)
        self._fail_undefined_runs(step)
        self.steps_done = step + 1

    def _fail_undefined_runs(self, step: int) -> None:
        """Fail the live runs whose balancer cannot define their next weights: this step was
        taken with weights it could, so each took step + 1 steps. Each is handed over once (the
        balancer leaves it out once stopped): on the hot path, an empty dict is all there is."""
        undefined = self.balancer.undefined
        while undefined:
            r, reason = undefined.popitem()
            if bool(self.alive[r]) and not bool(self._pending_failures[r]):
                self.failures[r] = (step + 1, f"{reason} (after step {step})")
                self._pending_failures[r] = True

    def _check_grad_norm_target(self) -> None:
        """The parameters whose gradient norms the balancer asks for must exist: a last shared
        layer made of several layers has no one weight W."""
        target = self.balancer.grad_norm_target
        layer = self.model.last_shared_layer
        needs = LAST_LAYER_PARAMS.get(target, ()) if target is not None else ()
        missing = [name for name in needs if not isinstance(getattr(layer, name, None), nn.Parameter)]
        if missing:
            raise ConfigError("balancer.grad_params", f"parameters the model's last shared layer has: {target} "
                              f"takes its {' and '.join(needs)}, and {type(layer).__name__} has no "
                              f"{' or '.join(missing)} (make the last shared layer one layer, such as a "
                              "StackedLinear or a StackedModule of an nn.Linear, or set grad_params = "
                              "\"all_shared\")", target)

    # ----------------------------------------------------------------- failures
    def _check_diverged(self, values: Tensor, what: str, step: int, limit: float | None = None,
                        batch_targets: Sequence[Tensor] | None = None) -> None:
        """Mark live runs as failed at `step` where their row of `values` (R, T) is not finite,
        or beyond `limit` in absolute value. A task whose `batch_targets` hold NaN or inf is
        named as such: its data, not the balancing, made the loss non-finite."""
        wrong = ~torch.isfinite(values)
        if limit is not None:
            wrong |= values.abs() > limit
        bad = wrong.any(dim=1) & self.alive & ~self._pending_failures
        if not bool(bad.any()):
            return
        for r in bad.nonzero().flatten().tolist():
            tasks = ", ".join(self.tasks[i].name for i in wrong[r].nonzero().flatten().tolist())
            finite = bool(torch.isfinite(values[r]).all())
            state = f"{what} beyond {limit:g}" if finite else f"non-finite {what}"
            reason = f"diverged: {state} at step {step} (task {tasks})"
            if batch_targets is not None and not finite:
                in_data = [self.tasks[i].name for i in wrong[r].nonzero().flatten().tolist()
                           if batch_targets[i].is_floating_point()
                           and not bool(torch.isfinite(batch_targets[i][r]).all())]
                if in_data:
                    reason = (f"non-finite {what} at step {step}: the batch's targets of {', '.join(in_data)} "
                              "hold NaN or inf (missing labels?); a task's loss must leave those out")
            self.failures[r] = (step, reason)
        self._pending_failures |= bad

    def _retire_failed_runs(self) -> None:
        """Freeze newly failed runs: zero their slice of every parameter and Adam moment (and of
        every gradient, at each step from now on), so that they compute finite zeros from now on
        and never disturb the other slices."""
        bad = self._pending_failures
        if not bool(bad.any()):
            return
        self.alive &= ~bad
        self._any_retired = True
        self.balancer.stop_runs(bad)
        with torch.no_grad():
            for p in self.model.parameters():
                p[bad] = 0
                for value in self.optimizer.state.get(p, {}).values():
                    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == self.n_runs:
                        value[bad] = 0
        self._pending_failures = torch.zeros_like(bad)

    def _zero_retired_gradients(self) -> None:
        """Keep retired slices at zero. Masking their losses out is not enough: the gradient of a
        masked loss is 0 times the loss's own derivative, NaN where that is infinite (0 x inf, a
        squared error against an infinite target), and Adam carried the NaN into their weights."""
        dead = ~self.alive
        for p in self.model.parameters():
            if p.grad is not None:  # masked_fill_, not a boolean index: no device sync every step
                p.grad.masked_fill_(dead.view(-1, *[1] * (p.grad.dim() - 1)), 0)

    def _check_runaway(self) -> None:
        """Fail the live runs whose task-normalised training loss, just evaluated, is past
        MAX_LOSS_GROWTH times its value before training (evaluations, not batches: a spike
        between them is not judged)."""
        first, now = ((losses / self._normalisers).sum(dim=1) for losses in (self.eval_losses["train"][0],
                                                                            self.eval_losses["train"][-1]))
        runaway = (now > MAX_LOSS_GROWTH * first) & (first > 0) & self.alive & ~self._pending_failures
        if not bool(runaway.any()):
            return
        for r in runaway.nonzero().flatten().tolist():
            initial, latest = self.eval_losses["train"][0][r], self.eval_losses["train"][-1][r]
            growth = torch.where(initial > 0, latest / initial.clamp_min(1e-300), 0)
            self.failures[r] = (self.steps_done, f"diverged: task-normalised training loss {float(now[r]):.3g} "
                                f"at step {self.steps_done}, {float(now[r] / first[r]):.2g} times its "
                                f"{float(first[r]):.3g} before training (beyond {MAX_LOSS_GROWTH:g}; task "
                                f"{self.tasks[int(growth.argmax())].name} grew most)")
        self._pending_failures |= runaway

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, with_metrics: bool = False) -> None:
        """Mean per-task losses (and, if asked, metrics) on every split, for every run."""
        self.model.eval()
        self.eval_steps.append(self.steps_done)
        for name, (inputs, targets) in self.splits.items():
            n = inputs.shape[1]
            per_example = max(1, inputs[0, 0].numel())
            chunk = max(1, min(n, self._eval_chunk_elements // (self.n_runs * per_example)))
            loss_sum = torch.zeros(self.n_runs, self.n_tasks, device=self.device, dtype=torch.float64)
            stats: dict[tuple[int, str], Tensor] = {}  # (task, metric) -> summed stats
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                if self._shared_data:
                    x = inputs[0, lo:hi].unsqueeze(0).expand(self.n_runs, hi - lo, *inputs.shape[2:])
                    ys = tuple(y[0, lo:hi].unsqueeze(0).expand(self.n_runs, hi - lo, *y.shape[2:])
                               for y in targets)
                else:
                    x = inputs[self._run_data, lo:hi]
                    ys = tuple(y[self._run_data, lo:hi] for y in targets)
                preds = self.model(x)
                loss_sum += self.problem.losses(preds, ys).double() * (hi - lo)
                if with_metrics:
                    for i, task in enumerate(self.tasks):
                        for metric in task.metrics:
                            s = metric.batch_stats(preds[i], ys[i]).double()
                            stats[(i, metric.name)] = stats.get((i, metric.name), 0) + s
            self.eval_losses[name].append((loss_sum / n).to(torch.float64))
            if name == "train":
                self._check_runaway()
            if with_metrics:
                self.final_metrics[name] = {
                    (i, m): _metric(self.tasks[i], m).finalize(s, n) for (i, m), s in stats.items()
                }
        self.model.train()

    # ----------------------------------------------------------------- the whole run
    def run(self, progress: ProgressCallback | None = None) -> list[RunRecord]:
        start = time.perf_counter()
        steps, every = self.budget.steps, self.budget.eval_every
        report_every = max(1, steps // 100)
        self.evaluate()
        for step in range(steps):
            self.step(step)
            if self.steps_done % every == 0 and self.steps_done != steps:
                self.evaluate()
            if progress is not None and (self.steps_done % report_every == 0 or self.steps_done == steps):
                progress(self.steps_done)
            if not bool(self.alive.any()):
                break
        self.evaluate(with_metrics=True)
        wall = time.perf_counter() - start
        return self.records(wall)

    def records(self, wall_time: float) -> list[RunRecord]:
        steps = self.steps_done
        normalisers = self._normalisers.cpu()
        curves = {name: torch.stack(v).cpu() for name, v in self.eval_losses.items()}  # (E, R, T)
        weights = self.weights_trace[:steps].double().cpu()  # (steps, R, T)
        tail = max(1, math.ceil(self.budget.tail_fraction * steps))
        idx, sampled = downsample(weights)
        traces = {k: downsample(v[:steps].double().cpu()) for k, v in self.balancer.traces().items()}
        stats = self.balancer.run_stats()
        out = []
        for r, config in enumerate(self.configs):
            failure = self.failures[r]
            final = {name: curves[name][-1, r] for name in curves}
            normalized = {name: float((final[name] / normalisers).sum()) for name in final}
            record = RunRecord(
                config=config.to_dict(),
                status="ok" if failure is None else "failed",
                task_names=[t.name for t in self.tasks],
                normalisers=normalisers.tolist(),
                tail_fraction=self.budget.tail_fraction,
                steps_done=steps if failure is None else failure[0],
                wall_time_s=wall_time / self.n_runs,
                batch_wall_time_s=wall_time,
                batch_runs=self.n_runs,
                device=str(self.device),
                balancer_stats=stats[r],
            )
            run_steps = record.steps_done
            if run_steps > 0:
                w = weights[:run_steps, r]
                record.final_weights = w[-1].tolist()
                record.mean_weights = w.mean(0).tolist()
                record.tail_mean_weights = w[-min(tail, run_steps):].mean(0).tolist()
                record.weights_trajectory = without_repeats([[s] + sampled[j, r].tolist()
                                                             for j, s in enumerate(idx) if s < run_steps])
                record.traces = {
                    k: [[s] + v[j, r].tolist() for j, s in enumerate(k_idx) if s < run_steps]
                    for k, (k_idx, v) in traces.items()
                }
            evals = [j for j, s in enumerate(self.eval_steps) if failure is None or s <= failure[0]]
            record.curves = {"step": [self.eval_steps[j] for j in evals]}
            for name in curves:
                record.curves[name] = [curves[name][j, r].tolist() for j in evals]
            if failure is not None:
                record.failed_step, record.reason = failure
            else:
                record.train_loss = final["train"].tolist()
                record.val_loss = final["val"].tolist()
                record.test_loss = final["test"].tolist()
                record.normalized_train_loss = normalized["train"]
                record.normalized_val_loss = normalized["val"]
                record.normalized_test_loss = normalized["test"]
                record.overfitting_gap = (final["test"] - final["train"]).tolist()
                record.normalized_overfitting_gap = normalized["test"] - normalized["train"]
                record.metrics = _metric_table(self.tasks, self.final_metrics, r)
            out.append(record)
        return out


def _metric(task: TaskSpec, name: str) -> Metric:
    return next(m for m in task.metrics if m.name == name)


def _metric_table(tasks: Sequence[TaskSpec], final_metrics: dict[str, dict[tuple[int, str], Tensor]], r: int
                  ) -> dict[str, dict[str, list[float | None]]]:
    """{split: {metric: [value per task, None where a task lacks the metric]}}."""
    table: dict[str, dict[str, list[float | None]]] = {}
    for split, values in final_metrics.items():
        for (i, name), tensor in values.items():
            row = table.setdefault(split, {}).setdefault(name, [None] * len(tasks))
            v = float(tensor[r])
            row[i] = v if math.isfinite(v) else None
    return table


def train_runs(configs: Sequence[RunConfig], progress: ProgressCallback | None = None) -> list[RunRecord]:
    """Train runs that share a batch key together; records in the order of `configs`."""
    return BatchTrainer(configs).run(progress)


def train(config: RunConfig, progress: ProgressCallback | None = None) -> RunRecord:
    """Train one run."""
    return train_runs([config], progress)[0]
