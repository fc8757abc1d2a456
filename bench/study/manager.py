"""The study manager: queues a study's runs in the result store, claims them, trains them in
stacked batches (in parallel with joblib when asked), and stores every record.

Any number of managers may work on one study at once, on one machine or many, sharing its
storage: each claims queued runs atomically, so no run is trained twice; a run held by a worker
that died is queued again once its heartbeat is stale; Ctrl-C gives the runs in hand back.

Order of work: the runs that others wait for go first. GradNorm static runs can only start once
their GradNorm run is finished (by whichever worker); the other seeds of a point an Optuna sampler
proposed start once that point is known.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import optuna
import torch
import joblib
from joblib import Parallel, cpu_count, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError
from optuna.trial import FrozenTrial, TrialState

from bench import __version__
from bench.environment import environment
from bench.balancers.static import validate_static_weights
from bench.errors import BenchError, ConfigError, UserCodeError, memory_failure
from bench.formatting import count
from bench.store.results import (
    REASON, RUN_KEY, ArmTrials, ResultStore, StudyProgress, attrs_to_record, is_finished, record_to_attrs,
)
from bench.study.arms import GradNormArm, GradNormStaticArm, GridArm, RunSpec, weight_params
from bench.study.machine import TrainersHere, sharing_note, threads_each
from bench.study.spec import StudySpec
from bench.study.time_left import TimeLeft
from bench.training import RunConfig, train_runs
from bench.training.allocator import keep_freed_memory
from bench.training.batching import max_stacked_runs, plan_batches
from bench.training.config import config_hash
from bench.training.device import resolve_device


# How often a worker training one stack after another looks again for the other workers: those
# training on its machine since (to share its cores) and its study's anywhere (for the time left;
# the storage is read for them).
LOOK_FOR_LOCAL_WORKERS_S = 10.0


class Interrupted(BenchError):
    exit_code = 130


class Terminated(Interrupted):
    """Stopped by SIGTERM (`kill`, `timeout`, a batch scheduler's time limit), which gives back
    the runs in hand as Ctrl-C does; exit code 143, as a shell reports a process that SIGTERM ended."""

    exit_code = 143


class _StopSignal(KeyboardInterrupt):
    """Ctrl-C or SIGTERM as the worker's handler raises it: a KeyboardInterrupt to every `except` on
    its way, but not KeyboardInterrupt itself. CPython marks an exact KeyboardInterrupt leaving code
    run from a string (a dataclass or namedtuple made on the way) as unhandled, even once caught, and
    then ends the process by SIGINT whatever exit code was set: -2, not 143 or 130."""


class TrainingProcessLost(BenchError):
    """A process of `--jobs`, or a Dask worker, died (the out-of-memory killer, a crash in native code)."""


@dataclass
class Claimed:
    """A run this worker holds: its trial, its spec and the configuration it trains with."""

    arm: str
    trial: FrozenTrial
    run: RunSpec
    study: optuna.Study
    config: RunConfig
    weights: list[float] | None = None


def _train_batch(index: int, configs: list[dict[str, Any]], threads: int, own_process: bool
                 ) -> tuple[int, list[dict[str, Any]]]:
    """A joblib task: train one batch in a worker process; return its index and records.

    `own_process`: the worker is one of ours (loky), not a process of somebody's Dask cluster,
    so its allocator may be tuned like the CLI's own process; untuned, a 34-run stacked step
    there paid about 2,000 page faults and 3-5 ms of kernel time."""
    if own_process:
        keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        return index, [r.to_dict() for r in train_runs([RunConfig.from_dict(c) for c in configs])]
    except Exception as err:
        # Located here, where the traceback is: the parent process receives only the exception.
        # Memory running out is nobody's bug: it travels as it is, and the CLI says so.
        located = None if memory_failure(err) else UserCodeError.located(err)
        if located is None:
            raise
        raise located from None


class HeartbeatThread:
    """Records the heartbeat of every run this worker holds, every `interval` seconds."""

    def __init__(self, store: ResultStore, interval: float):
        self.store, self.interval = store, interval
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-heartbeat")

    def __enter__(self) -> "HeartbeatThread":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, ids: Sequence[int]) -> None:
        with self._lock:
            self.trial_ids.update(ids)

    def drop(self, ids: Sequence[int]) -> None:
        with self._lock:
            self.trial_ids.difference_update(ids)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            try:
                self.store.heartbeat(ids)
            except Exception:  # a missed beat is retried at the next interval
                pass


def check_data(spec: StudySpec, device: str = "auto") -> None:
    """Load the first seed's data before the study is stored. Missing data, or fewer examples
    than the study asks for, then stops `bench run` with nothing stored: a study stored with
    its runs queued keeps its configuration, so mending the study file (a `root`, a smaller
    `n_train`) would otherwise need --new-version and another name. So do a model that does
    not fit the tasks, and targets holding NaN or inf that a task's loss does not leave out:
    every run would fail at the first batch holding one, stored as diverged."""
    from bench.problems.base import check_missing_labels, probe_rows
    from bench.training.engine import problem_for  # its cache: `--jobs 1` trains on this data

    config = spec.run_config(spec.runs()[0], device=device)
    problem = problem_for(config)
    try:
        data = problem.load(config.resolved_data_seed)
        model = problem.checked_model([0])
        problem.check_model_takes(model, probe_rows(data.train.inputs, runs=1, rows=2))
        check_missing_labels(problem, data, model)
        problem.check_stacking(data)
    except ConfigError as err:
        raise err.located(spec.path) from None
    except Exception as err:
        failure = memory_failure(err, f", for one run of {spec.path}, so nothing was stored. A smaller problem "
                                      "(data or model) needs less") or UserCodeError.located(err)
        if failure is None:
            raise
        if isinstance(failure, UserCodeError):
            failure.before_storing = True
        raise failure from None


class StudyRunner:
    """Runs a study against a result store until every run of it is finished."""

    @staticmethod
    def check_options(jobs: int, device: str, backend: str = "loky", scheduler: str | None = None) -> None:
        """Refuse processes, a device or a backend that cannot be: `bench run` asks before it
        opens the storage, so that a mistyped option leaves no new, empty journal behind."""
        if jobs < 1:
            raise ConfigError("--jobs", "an integer >= 1", jobs)
        resolve_device(device, field="--device")
        if backend not in ("loky", "dask"):
            raise BenchError(f"--backend: expected loky or dask, got {backend!r}")
        if backend == "dask" and not scheduler:
            raise BenchError("--backend dask needs --scheduler ADDRESS (a running Dask scheduler)")
        if scheduler and backend != "dask":  # else the batches would quietly train here
            raise BenchError(f"--scheduler {scheduler} is for --backend dask: add --backend dask to train on "
                             "that cluster, or leave --scheduler out to train here")

    def __init__(self, spec: StudySpec, store: ResultStore, *, jobs: int = 1,
                 batch_runs: int | None = None, device: str = "auto", new_version: bool = False,
                 poll_interval: float = 2.0, backend: str = "loky", scheduler: str | None = None,
                 on_progress: Callable[[float, int], None] | None = None,
                 on_wait: Callable[[dict[str, int]], None] | None = None,
                 on_note: Callable[[str], None] | None = None):
        self.check_options(jobs, device, backend, scheduler)  # here, not after the study is queued
        self.spec = spec
        self.store = store
        self.notes: list[str] = []  # for the user: what this runner chose other than asked
        cores = cpu_count()  # joblib's: this process's affinity and cgroup quota, not the machine's cores
        if backend == "loky" and jobs > cores:
            # More processes than cores only share them, each paying its start-up and its copy of
            # the data: --jobs 1000 spent two minutes starting processes for one run.
            self.notes.append(f"--jobs {jobs} is more than the {cores} cores this process may use: "
                              f"{cores} training processes run")
            jobs = cores
        self.jobs = jobs
        self.batch_runs = batch_runs  # None: what fits memory (bench.training.batching)
        self.device = device
        self.new_version = new_version
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        self.on_wait = on_wait  # told, while this worker waits, who holds the runs it waits for
        self.on_note = on_note  # told what the user should know mid-run (stacks made smaller)
        self.name = spec.name
        self.runs: dict[str, dict[str, RunSpec]] = defaultdict(dict)
        for run in spec.runs():
            self.runs[run.arm][run.key] = run
        self.samplers = {name: arm.sampler() for name, arm in spec.arms.items()
                         if isinstance(arm, GridArm) and arm.sampled}
        # Arms whose runs others depend on go first.
        self.arm_order = sorted(spec.arms, key=lambda a: (not isinstance(spec.arms[a], GradNormArm),
                                                          isinstance(spec.arms[a], GradNormStaticArm)))
        self.trained_here = 0
        # What is left to train, for the progress bar: priced stack by stack where this worker
        # trains them one at a time, else at the pace of the runs trained here so far.
        self._time_left: TimeLeft | None = None
        self._waiting = False  # on runs that other workers hold: their time left is theirs to tell
        self._began = time.monotonic()
        self._done = self._total = 0.0
        self._done_at_start = 0.0
        self._lost: set[tuple[str, str]] = set()  # runs found lost at the last look
        self.prepared = False
        self._interrupted = threading.Event()
        self._by_sigterm = False  # what stopped the worker: SIGTERM, or else Ctrl-C
        self._storing = False  # writing trained runs' results: a first Ctrl-C waits for the end
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # This process's PyTorch threads, shared with the other workers training on this machine.
        self._own_threads = torch.get_num_threads()
        self.machine = TrainersHere()
        self._others_here = 0  # training processes of the other workers on this machine
        self._seen_last = 0  # as many, as the last look found them
        self._looked_at = 0.0
        self._told_sharing = False
        self.backend, self.scheduler = backend, scheduler
        self._client: Any = None  # a dask.distributed Client, an optional dependency
        self._stack_limit: int | None = None

    # ------------------------------------------------------------------ setting up
    def prepare(self) -> str:
        """Register the study (refusing a changed configuration) and queue its runs once."""
        try:
            with self._noticing_interrupts():  # SIGTERM too: a worker killed mid-queue made others wait
                return self._prepare()
        except KeyboardInterrupt:
            raise self._stopped(" before training began (the runs queued so far are kept); "
                                "run the same command to continue") from None

    def _prepare(self) -> str:
        spec = self.spec
        if self.backend == "loky":  # a Dask client need not hold the data its workers read
            check_data(spec, self.device)  # again after `bench run`'s check: cached, and for callers of the API
        attrs = {
            "arms": list(spec.arms),
            "kinds": {name: arm.kind for name, arm in spec.arms.items()},
            "gradnorm_static_sources": {name: arm.source_arm for name, arm in spec.arms.items()
                                        if isinstance(arm, GradNormStaticArm)},
            "identity": spec.identity(),
            "study_text": spec.text,
            "study_file": spec.path,
            "description": spec.description,
            "task_names": _task_names(spec),
            "environment": environment(),
        }
        self.name = self.store.register(spec.name, spec.config_hash(), attrs, new_version=self.new_version,
                                        legacy_hashes=spec.legacy_hashes())
        expected = {arm: sorted(runs) for arm, runs in self.runs.items()}
        runset = config_hash({"identity": spec.identity(), "runs": expected})
        by_arm = {arm: [(run.key, dict(run.params)) for run in self.runs[arm].values()]
                  for arm in spec.arms}
        self.store.queue_once(self.name, runset, by_arm)
        self.prepared = True
        return self.name

    def progress(self, trials: dict[str, ArmTrials] | None = None) -> StudyProgress:
        return self.store.progress(self.name, {arm: list(runs) for arm, runs in self.runs.items()}, trials)

    # ------------------------------------------------------------------ the loop
    def run(self) -> StudyProgress:
        if not self.prepared:
            self.prepare()
        interval = self.store.storage.get_heartbeat_interval() if hasattr(
            self.store.storage, "get_heartbeat_interval") else None
        self._began, self._done_at_start = time.monotonic(), self.progress().done  # others' runs: not this pace
        with HeartbeatThread(self.store, interval or 5) as heartbeat, self._noticing_interrupts():
            self.heartbeat = heartbeat
            try:
                while True:
                    self._check_interrupted()
                    self.store.fail_stale(self.name, self.spec.arms)
                    claimed = self.claim_wave()
                    self._waiting = False
                    if claimed:
                        try:
                            self.train(claimed)
                        except Exception as err:
                            if not self._smaller_stacks_after(err, claimed):
                                raise
                        continue
                    progress = self.progress()
                    self._waiting = progress.left > 0  # nothing to claim: others hold what is left
                    self._report(progress.done)
                    if progress.left == 0:
                        return progress
                    # Nothing to claim and nothing running: a run may be lost (its dependents
                    # then wait for it for ever).
                    if progress.running == 0 and self._requeue_lost():
                        continue
                    if progress.running == 0 and progress.waiting == 0:
                        raise BenchError(f"study {self.name!r}: {count(progress.left, 'run')} in a "
                                         "state bench does not set (pruned?): neither finished, "
                                         "queued, running nor given back")
                    # Others hold the remaining runs, or their dependencies: wait for them.
                    if self.on_wait is not None and progress.running:
                        self.on_wait({w: n for w, n in self.store.workers(self.name).items() if w != self.worker})
                    time.sleep(self.poll_interval)
            except KeyboardInterrupt:
                released = self.release_all("terminated (SIGTERM)" if self._by_sigterm else "interrupted (Ctrl-C)")
                stored = (f"{count(self.trained_here, 'run')} trained here "
                          f"{'is' if self.trained_here == 1 else 'are'} stored; " if self.trained_here else "")
                raise self._stopped(f": {stored}{count(released, 'run')} in hand "
                                    f"{'was' if released == 1 else 'were'} queued again; "
                                    f"run the same command to continue") from None
            except TrainingProcessLost as err:
                released = self.release_all("a training process died")
                raise TrainingProcessLost(
                    f"{err}; {count(released, 'run')} in hand {'was' if released == 1 else 'were'} "
                    "queued again and every run stored is kept: run the same command to go on") from None
            except ConfigError as err:  # the problem broke a rule mid-training (a loss's shape)
                self.release_all(f"worker error: {type(err).__name__}")
                raise err.located(self.spec.path) from None
            except BaseException as err:
                # Never leave claimed runs RUNNING: give them back, then let the error speak.
                self.release_all(f"worker error: {type(err).__name__}")
                raise
            finally:
                if self._client is not None:
                    self._client.close()
                    self._client = None
                if torch.get_num_threads() != self._own_threads:  # shared with workers now gone
                    torch.set_num_threads(self._own_threads)

    @contextlib.contextmanager
    def _noticing_interrupts(self) -> Iterator[None]:
        """Ctrl-C, or SIGTERM, also sets a flag that the loop checks at every progress report.
        Python drops the KeyboardInterrupt when it lands in code whose errors are ignored (an
        import lock's callback, a finaliser) and prints it as "Exception ignored ... Traceback";
        the flag still stops the worker, so that dropped interrupt is not printed."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_stop_signal(signum: int, frame: FrameType | None) -> None:
            first = not self._interrupted.is_set()
            if first:
                self._by_sigterm = signum == signal.SIGTERM
            self._interrupted.set()
            if first and self._storing:  # runs already trained: `store_records` stops after them
                again = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
                print(f"storing the runs just trained, then stopping ({again} again stops at once)",
                      file=sys.stderr, flush=True)
                return
            raise _StopSignal

        previous_hook = sys.unraisablehook

        def on_unraisable(unraisable: Any) -> None:  # sys.UnraisableHookArgs
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                previous_hook(unraisable)

        self._interrupted.clear()
        self._by_sigterm = False
        previous = signal.signal(signal.SIGINT, on_stop_signal)
        # SIGTERM's default ends the process at once, its runs left RUNNING until their heartbeats
        # go stale (--grace): `bench status` still showed the dead worker training them.
        previous_term = signal.signal(signal.SIGTERM, on_stop_signal)
        sys.unraisablehook = on_unraisable
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
            sys.unraisablehook = previous_hook

    def _stopped(self, rest: str) -> Interrupted:
        """The error for a worker stopped by Ctrl-C ("interrupted" + `rest`) or SIGTERM ("terminated")."""
        if self._by_sigterm:
            return Terminated("terminated" + rest)
        return Interrupted("interrupted" + rest)

    def _check_interrupted(self) -> None:
        if self._interrupted.is_set():
            raise _StopSignal

    def release_all(self, reason: str) -> int:
        """Give back every run this worker holds in the store, the number given back. The store
        is asked rather than a list kept here: Ctrl-C can land between a claim and its hold."""
        if not self.prepared:  # nothing can have been claimed yet
            return 0
        return self.store.release_held(self.name, self.spec.arms, self.worker, reason)

    def _smaller_stacks_after(self, err: BaseException, claimed: Sequence[Claimed]) -> bool:
        """After memory ran out training stacks of several runs (what fits is an estimate, and a
        GPU's memory is shared), give back the runs in hand and stack half as many as the largest
        from now on; the runs stored are kept. False for any other error, or where stacks were
        of one run already."""
        failure = memory_failure(err)
        largest = max(len(batch) for batch in self.batches(claimed))
        if failure is None or largest <= 1:
            return False
        self.release_all("out of memory: trained again in smaller stacks")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the failed stack's blocks, cached by torch's allocator
        self._stack_limit = max(1, min(self.stack_limit(), largest) // 2)
        if self.on_note is not None:
            self.on_note(f"{failure}: the runs in hand were queued again, and from now on "
                         f"up to {count(self._stack_limit, 'run')} train in one stack")
        return True

    # ------------------------------------------------------------------ claiming
    def stack_limit(self) -> int:
        """Runs per stacked model: `--batch-runs`, or what fits memory; 1 where the problem
        trains one run at a time."""
        if self._stack_limit is None:
            config = self.spec.run_config(self.spec.runs()[0], {"weights": [1.0] * self.spec.n_tasks},
                                          self.device)
            self._stack_limit = max_stacked_runs(config, resolve_device(config.device), cap=self.batch_runs)
        return self._stack_limit

    def claim_wave(self) -> list[Claimed]:
        """Claim the runs that can start now: enough for `jobs` stacked batches, no more, so
        that other workers find work too."""
        capacity = self.jobs * self.stack_limit()
        claimed: list[Claimed] = []
        # Proposals first: their points let the other seeds of each point start in this wave.
        for arm_name in self.samplers:
            arm: GridArm = self.spec.arms[arm_name]  # type: ignore[assignment]
            trials = self.store.arm_trials(self.name, [arm_name], self.samplers)[arm_name]
            proposed = 0
            for trial in _waiting(trials.trials):
                if proposed >= arm.parallel_points or len(claimed) >= capacity:
                    break
                run = self._run_of(arm_name, trial)
                if run is None or not run.proposal or not self.store.claim(trial, self.worker):
                    continue
                params = trial.params
                if not all(name in params for name in arm.cube_distributions()):
                    if arm.point_streams:
                        trials.study.sampler = arm.sampler(run.point)
                    sampled = optuna.Trial(trials.study, trial._trial_id)
                    params = {name: sampled.suggest_float(name, d.low, d.high)
                              for name, d in arm.cube_distributions().items()}
                claimed.append(self._hold(arm_name, trial, run, trials.study,
                                          weights=list(arm.weights_from_cube(params))))
                proposed += 1
        everything = self.store.arm_trials(self.name, self.spec.arms, self.samplers)
        for arm_name in self.arm_order:
            trials = everything[arm_name]
            for trial in _waiting(trials.trials):
                if len(claimed) >= capacity:
                    return claimed
                run = self._run_of(arm_name, trial)
                if run is None or run.proposal:
                    continue
                resolved = self._resolve(run, everything)
                if resolved is None or not self.store.claim(trial, self.worker):
                    continue
                weights, failure = resolved
                if failure is not None:
                    self.store.fail(trials.study, trial, failure)
                    continue
                if weights is not None and run.dependency is not None:
                    extra = (weight_params(weights) if run.dependency == "complete"
                             else _cube_params(cast(GridArm, self.spec.arms[arm_name]), everything, run))
                    self.store.set_params(trial._trial_id, extra)
                claimed.append(self._hold(arm_name, trial, run, trials.study, weights=weights))
        return claimed

    def _run_of(self, arm_name: str, trial: FrozenTrial) -> RunSpec | None:
        """The run of this study's file that a stored trial is, or None (a trial of another version)."""
        key = trial.user_attrs.get(RUN_KEY)
        return self.runs[arm_name].get(key) if isinstance(key, str) else None

    def _resolve(self, run: RunSpec, everything: Mapping[str, ArmTrials]
                 ) -> tuple[list[float] | None, str | None] | None:
        """(weights, failure) for a run whose dependency is met; None while it is not."""
        if run.depends_on is None:
            return (list(run.balancer_params["weights"]) if "weights" in run.balancer_params else None), None
        arm, key = run.depends_on
        dep = everything[arm].by_key.get(key)
        if run.dependency == "params":
            grid: GridArm = self.spec.arms[run.arm]  # type: ignore[assignment]
            if dep is None or not all(name in dep.params for name in grid.cube_distributions()):
                return None
            return list(grid.weights_from_cube(dep.params)), None
        if dep is None or not is_finished(dep):
            return None
        if dep.state != TrialState.COMPLETE:
            return None, f"its GradNorm run {key} failed: {dep.user_attrs.get(REASON)}"
        static: GradNormStaticArm = self.spec.arms[run.arm]  # type: ignore[assignment]
        record = attrs_to_record(dep.user_attrs)
        if record is None:  # finished by something else than bench (another tool sharing the storage)
            return None, f"its GradNorm run {key} finished without a run record"
        weights = static.weights_from(record)
        try:
            validate_static_weights(tuple(weights))
        except ConfigError as err:
            return None, (f"its GradNorm run {key} averaged to weights that static weights cannot be "
                          f"(expected {err.expected}, got {', '.join(f'{w:.3g}' for w in weights)})")
        return weights, None

    def _hold(self, arm: str, trial: FrozenTrial, run: RunSpec, study: optuna.Study,
              weights: list[float] | None) -> Claimed:
        overrides = {"weights": weights} if weights is not None and run.balancer == "static" else {}
        claimed = Claimed(arm, trial, run, study, self.spec.run_config(run, overrides, self.device), weights)
        self.heartbeat.hold([trial._trial_id])
        return claimed

    def _later_stacks(self, trials: dict[str, ArmTrials]) -> list[int]:
        """The sizes of the stacks that the runs still queued will make, wave by wave in the order
        `claim_wave` takes them (weights, which a static retrain does not know yet, are each run's own
        in a stack: its batch key leaves them out)."""
        waiting = [run for arm in self.arm_order for key, run in self.runs[arm].items()
                   if (t := trials[arm].by_key.get(key)) is not None and t.state == TrialState.WAITING]
        wave = self.jobs * self.stack_limit()
        sizes = []
        for start in range(0, len(waiting), wave):
            configs = [self.spec.run_config(run, device=self.device) for run in waiting[start:start + wave]]
            sizes += [len(batch) for batch in plan_batches(configs, self.stack_limit())]
        return sizes

    # ------------------------------------------------------------------ training
    def batches(self, claimed: Sequence[Claimed]) -> list[list[Claimed]]:
        """The claimed runs grouped into stacked batches (see `plan_batches`), GradNorm first
        (static retrains wait for it), then the largest first, for parallel workers to even out."""
        configs = [c.config for c in claimed]
        plan = plan_batches(configs, self.stack_limit(), workers=self.jobs if self.backend == "loky" else 1)
        batches = [[claimed[i] for i in batch] for batch in plan]
        batches.sort(key=lambda b: (b[0].run.balancer != "gradnorm", -len(b)))
        return batches

    def train(self, claimed: Sequence[Claimed]) -> None:
        batches = self.batches(claimed)
        if self.backend != "loky":  # a Dask cluster's workers share no cores with this one
            self._train(batches, processes=1)
            return
        processes = min(self.jobs, len(batches))  # no process without a batch to train
        with self.machine.training(processes):  # the other workers here see it, and share the cores with it
            self._train(batches, processes)

    def _train(self, batches: list[list[Claimed]], processes: int) -> None:
        stepwise = self.jobs == 1 and self.backend == "loky"
        # One read of the storage for the runs stored so far, the runs still queued and the workers
        # holding runs (a Dask cluster's workers share no cores with this one).
        loky = self.backend == "loky"
        trials = self.store.arm_trials(self.name, self.arm_order) if self.on_progress or loky else None
        total_before = self.progress(trials).done if self.on_progress else 0
        if stepwise:
            assert trials is not None
            if self._time_left is None:
                self._time_left = TimeLeft(batches[0][0].config.budget.steps)
            timer = self._time_left
            timer.plan([len(b) for b in batches], self._later_stacks(trials))
        if loky:
            self._look_at_workers(trials)
        if stepwise:
            done_runs = 0
            for batch in batches:
                steps = batch[0].config.budget.steps

                def progress(step: int, size: int = len(batch), base: int = done_runs, steps: int = steps) -> None:
                    timer.step(step)
                    if time.monotonic() - self._looked_at > LOOK_FOR_LOCAL_WORKERS_S:
                        self._look_at_workers()  # one started since: share with it from now on
                    self._report(total_before + base + size * step / steps)

                timer.start(len(batch))
                records = train_runs([c.config for c in batch], progress)
                timer.finish()
                self.store_records(batch, [r.to_dict() for r in records])
                done_runs += len(batch)
            return
        threads = threads_each(cpu_count(), processes, self._others_here) if self.backend == "loky" else 1
        done_runs = 0
        with self._parallel_backend():
            n_jobs = processes if self.backend == "loky" else -1  # Dask: every worker of the cluster
            results = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
                delayed(_train_batch)(i, [c.config.to_dict() for c in b], threads, self.backend == "loky")
                for i, b in enumerate(batches))
            try:
                for index, records in results:
                    self.store_records(batches[index], records)
                    done_runs += len(batches[index])
                    self._report(total_before + done_runs)
            except TerminatedWorkerError as err:
                codes = re.search(r"exit codes of the workers are \{(.*?)\}", str(err))
                n = len(codes.group(1).split(", ")) if codes else 1
                died = (f"{'a training process' if n == 1 else f'{n} training processes'} died"
                        + (f" ({codes.group(1)})" if codes else ""))
                raise TrainingProcessLost(
                    f"{died}, most likely killed by the system when memory ran "
                    f"out: with --jobs {self.jobs}, each process trains stacks of up to "
                    f"{self.stack_limit()} runs. Fewer --jobs or a smaller --batch-runs need less "
                    "memory") from None
            except Exception as err:
                if type(err).__name__ != "KilledWorker":  # dask's, without importing it here
                    raise
                raise TrainingProcessLost(
                    "a Dask worker died while training a batch, and again each time Dask gave the "
                    "batch to another (its `distributed.scheduler.allowed-failures`), most likely out of "
                    f"memory: a smaller --batch-runs (now up to {self.stack_limit()} runs a batch) needs "
                    "less; the workers' logs say more") from None

    def _parallel_backend(self) -> contextlib.AbstractContextManager[Any]:
        """joblib's process pool, or an existing Dask cluster through joblib's Dask backend."""
        if self.backend == "loky":
            return contextlib.nullcontext()
        if self._client is None:
            try:
                from dask.distributed import Client
            except ImportError:
                raise BenchError("--backend dask needs dask.distributed: pip install 'gradnorm-bench[dask]'") from None
            try:
                self._client = Client(self.scheduler, timeout=30)
            except (OSError, TimeoutError) as err:
                raise BenchError(f"cannot reach the Dask scheduler at {self.scheduler}: {err}") from None
        return joblib.parallel_config(backend=_cluster_backend())

    def store_records(self, batch: Sequence[Claimed], records: Sequence[dict[str, Any]]) -> None:
        """Store a trained batch's records. A Ctrl-C meanwhile stops the worker after the last
        one (a second Ctrl-C at once): it threw away a whole stack's training, minutes of a
        real study, for the second it takes to write."""
        self._storing = True
        try:
            self._store_records(batch, records)
        finally:
            self._storing = False
        self._check_interrupted()

    def _store_records(self, batch: Sequence[Claimed], records: Sequence[dict[str, Any]]) -> None:
        for claimed, record in zip(batch, records):
            attrs = record_to_attrs(record)
            attrs.update({"arm": claimed.arm, "seed": claimed.run.seed, "version": __version__,
                          "config_hash": self.spec.config_hash()})
            if claimed.weights is not None:
                attrs["weights"] = claimed.weights
            value = record.get("normalized_val_loss")
            if record["status"] == "ok" and value is not None and math.isfinite(value):
                stored = self.store.complete(claimed.study, claimed.trial, value, attrs)
            else:
                reason = record.get("reason") or "non-finite validation loss at the end of training"
                stored = self.store.fail(claimed.study, claimed.trial, reason, attrs)
            self.heartbeat.drop([claimed.trial._trial_id])
            self.trained_here += stored

    def _requeue_lost(self) -> bool:
        """Queue again the runs that are neither settled, queued nor running: a worker gave them
        back, or they were failed as stale, and the storage failed (a full disk) before their copy
        was queued. A run must be seen lost twice, a poll apart: the worker giving it back may be
        between its two writes. False if no run is lost."""
        expected = {arm: list(runs) for arm, runs in self.runs.items()}
        lost = self.store.lost_runs(self.name, expected)
        again, self._lost = lost & self._lost, lost
        if again:
            by_arm: dict[str, list] = defaultdict(list)
            for arm, key in sorted(again):
                by_arm[arm].append((key, dict(self.runs[arm][key].params)))
            self.store.requeue(self.name, by_arm)
        elif lost:
            time.sleep(self.poll_interval)
        return bool(lost)

    def _look_at_workers(self, trials: dict[str, ArmTrials] | None = None) -> None:
        """Find the other workers training now: this study's anywhere (those holding runs;
        `trials`: every arm's, as just read, where given) take their share of the runs queued,
        which the time left counts; and every worker training on this machine, of any study,
        shares its cores (see `bench.study.machine`)."""
        self._looked_at = time.monotonic()
        workers = set(self.store.workers(self.name, trials)) | {self.worker}
        if self._time_left is not None:
            self._time_left.workers = len(workers)
        here = self.machine.others()
        host = self.worker.rpartition(":")[0]
        for worker in workers:  # one of this study that the folder does not show (another user's)
            worker_host, _, pid = worker.rpartition(":")
            if worker_host == host and pid.isdigit() and int(pid) != os.getpid():
                here.setdefault(int(pid), 1)
        seen = sum(here.values())
        # A worker between two waves holds no run for a moment: threads are taken back only once
        # two looks in a row have found fewer training processes.
        previous, self._seen_last = self._seen_last, seen
        self._others_here = seen if seen >= self._others_here else max(seen, previous)
        if self.jobs > 1:  # processes of its own: `train` gives each its share
            return
        threads = threads_each(self._own_threads, 1, self._others_here)
        if threads != torch.get_num_threads():
            if threads < self._own_threads and self.on_note is not None and not self._told_sharing:
                self._told_sharing = True
                self.on_note(sharing_note(self._others_here, threads, self._own_threads, "this worker"))
            torch.set_num_threads(threads)

    def _report(self, done: float) -> None:
        self._check_interrupted()
        self._done, self._total = done, sum(len(r) for r in self.runs.values())
        if self.on_progress is not None:
            self.on_progress(done, int(self._total))

    def seconds_left(self) -> float | None:
        """The training time left, as far as this worker can tell; None while it cannot (no
        run trained yet, or stacks of one size only, whose cost says nothing of the next size's),
        and while it waits for runs that other workers hold: its last wave's figure then stood
        still, at 0 once its own stacks were done, until the others finished."""
        if self._waiting:
            return None
        if self._time_left is not None:
            return self._time_left.seconds_left()
        trained = self._done - self._done_at_start  # other workers' runs count: they share the work
        if trained <= 0:
            return None
        return (self._total - self._done) * (time.monotonic() - self._began) / trained


def _cluster_backend() -> str:
    """joblib's Dask backend, registered under a name of ours with two mends (joblib 1.6):
    - joblib runs a call in the calling process when its backend offers a single job, which a
      cluster of one worker thread does (one worker on one GPU): the batches never reached the
      cluster, whose device and data the caller may lack;
    - a batch whose worker died (Dask's KilledWorker, after its retries) set its error where
      `Parallel` never looks, and the coordinator waited for it for ever."""
    import asyncio

    from joblib._dask import DaskDistributedBackend

    class EveryBatchOnTheCluster(DaskDistributedBackend):
        def effective_n_jobs(self, n_jobs: int) -> int:
            return max(2, super().effective_n_jobs(n_jobs))  # the cluster queues the second one

        async def _collect(self) -> None:  # joblib's, with the error handed to `Parallel` too
            while self._continue:
                async for future, result in self.waiting_futures:
                    done, callback = self._results.pop(future), self._callbacks.pop(future)
                    if future.status == "error":
                        error = result[1]
                        done.set_exception(error)
                        callback(error)  # `Parallel` raises it
                    else:
                        done.set_result(result)
                        callback(result)
                await asyncio.sleep(0.01)

    joblib.register_parallel_backend("bench-dask", EveryBatchOnTheCluster)
    return "bench-dask"


def _waiting(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number)


def _cube_params(arm: GridArm, everything: Mapping[str, ArmTrials], run: RunSpec) -> dict[str, Any]:
    """The sampled coordinates of a point, copied from the trial that sampled it."""
    assert run.depends_on is not None  # a sampled point's other seeds depend on its first
    dep = everything[run.depends_on[0]].by_key[run.depends_on[1]]
    return {name: (dep.params[name], d) for name, d in arm.cube_distributions().items()}


def _task_names(spec: StudySpec) -> list[str]:
    from bench.problems import build_problem

    return build_problem(spec.problem, spec.problem_params).task_names


def run_study(spec: StudySpec, store: ResultStore, **kwargs: Any) -> StudyProgress:
    """Run `spec` against `store` until all its runs are finished."""
    return StudyRunner(spec, store, **kwargs).run()


__all__ = ["StudyRunner", "run_study", "Interrupted", "Terminated", "TrainingProcessLost", "Claimed"]
