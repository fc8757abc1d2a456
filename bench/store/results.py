"""The result store: a study's runs as trials of Optuna studies in one Optuna storage.

Layout, for a study named S with arms A, B, ...:
- Optuna study `S` (the manifest) holds the study file, its configuration hash, the package
  version and the arm names as study user attributes;
- Optuna study `S/A` per arm holds one trial per run. Its parameters are the run's weights (or
  alpha, or sampled simplex coordinates) and seed; its value is the selection metric (the
  task-normalised validation loss); its user attributes hold the run record.

Every run is queued once, as a WAITING trial, when the study is first run (or when seeds are
added); workers claim queued trials atomically (WAITING -> RUNNING, as Optuna's own queue does),
so several processes on several machines can share one study without training a run twice.
A run is finished when it has a COMPLETE trial, or a FAILED one whose `status` attribute is
"failed" (it diverged, or its GradNorm run did). A trial failed by an interruption or a dead
worker is not finished: a copy of it is queued again.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from bench import __version__
from bench.errors import BenchError, StorageError, did_you_mean
from bench.formatting import join_words
from bench.store.storage import (DEFAULT_STORAGE, GRACE_ATTR, GRACE_PERIOD, HEARTBEAT_INTERVAL, WORKER,
                                 RequeueStaleRun, open_storage, stale_after)

MANIFEST = "bench:manifest"
RUN_KEY = "run_key"
STATUS = "status"
REASON = "reason"
WAIT_FOR_OTHERS_S = 120.0
QUEUE_BEAT_S = 2.0  # the worker queuing a study's runs marks its lock this often
MAX_VERSIONS = 999  # name, name-v2, ... name-v999

# The run record is kept in a few user attributes: each stays small enough for any RDB's text
# column, and the per-step series are rounded to 4 significant digits (plenty for a plot).
RECORD = "record"
SERIES = ("weights_trajectory", "traces", "curves")
RECORD_PARTS = (RECORD,) + SERIES
# Shown by optuna-dashboard next to the trial's value.
SUMMARY = ("normalized_test_loss", "normalized_train_loss", "normalized_overfitting_gap",
           "mean_weights", "wall_time_s")


def rounded(value: Any, digits: int = 4) -> Any:
    """`value` (a float, or the floats in a list or dict, however nested) to `digits` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return value


def record_to_attrs(record: dict[str, Any]) -> dict[str, Any]:
    """User attributes holding a run record (see `attrs_to_record`)."""
    attrs = {RECORD: {k: v for k, v in record.items() if k not in SERIES}}
    attrs.update({k: rounded(record[k]) for k in SERIES if k in record})
    attrs.update({k: record[k] for k in SUMMARY if record.get(k) is not None})
    return attrs


def attrs_to_record(attrs: dict[str, Any]) -> dict[str, Any] | None:
    if RECORD not in attrs:
        return None
    return {**attrs[RECORD], **{k: attrs[k] for k in SERIES if k in attrs}}


class StudyConfigChanged(BenchError):
    """A study of this name exists with another configuration."""


def tell(study: optuna.Study, trial: FrozenTrial, *args: Any, **kwargs: Any) -> None:
    """`study.tell`, where GridSampler's stop after the last grid point is not an error, and a
    trial another worker finished first raises UpdateFinishedTrialError, as Optuna's storages do.

    GridSampler calls `study.stop()` once every point is evaluated; outside `optimize()` that
    raises RuntimeError (optuna#5141, documented for ask-and-tell) after Optuna has stored the
    trial's result. The grid being done is expected here: the runs are all stored.
    """
    try:
        study.tell(trial.number, *args, **kwargs)
    except RuntimeError as err:
        if not (isinstance(study.sampler, optuna.samplers.GridSampler) and "Study.stop" in str(err)):
            raise
    except ValueError:
        # `tell` reads the trial first, and refuses a finished one with a bare ValueError: another
        # worker failed it as stale (or gave it back) since this one last wrote to it.
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            raise UpdateFinishedTrialError(f"trial {trial.number} was finished by another worker") from None
        raise


def version_name(study: str, version: int) -> str:
    """The stored name of a study's version: `study`, then `study-v2`, `study-v3`, ..."""
    return study if version == 1 else f"{study}-v{version}"


def arm_study_name(study: str, arm: str) -> str:
    return f"{study}/{arm}"


def is_finished(trial: FrozenTrial) -> bool:
    """Whether this trial settles its run (complete, or failed for a reason of its own)."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get(STATUS) == "failed"
    )


@dataclass
class ArmTrials:
    """The trials of one arm, the latest trial per run key first in `by_key`."""

    study: optuna.Study
    trials: list[FrozenTrial]
    by_key: dict[str, FrozenTrial] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in self.trials:
            key = t.user_attrs.get(RUN_KEY)
            if key is None:
                continue
            best = self.by_key.get(key)
            # A finished trial settles its key; otherwise the newest (a retry) speaks for it.
            if best is None or (not is_finished(best) and (is_finished(t) or t.number > best.number)):
                self.by_key[key] = t


@dataclass
class StudyProgress:
    total: int
    done: int
    failed: int
    running: int
    waiting: int

    @property
    def left(self) -> int:
        return self.total - self.done

    def __add__(self, other: "StudyProgress") -> "StudyProgress":
        return StudyProgress(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def configuration_changes(stored: Any, now: Any, limit: int = 3) -> str:
    """What changed between two study configurations, in the study file's own terms:
    "arms.gradnorm.alpha: [0.12] -> [1.5]; arms.dwa: added". Empty if either is unknown (a study
    stored before configurations were kept).

    >>> configuration_changes({"budget": {"steps": 1500}, "arms": {"equal": {}}},
    ...                       {"budget": {"steps": 300}, "arms": {"equal": {}, "dwa": {}}})
    'budget.steps: 1500 -> 300; arms.dwa: added'
    >>> configuration_changes({"budget": {"steps": 1, "lr": 1, "batch_size": 1, "eval_every": 1, "tail_fraction": 1}},
    ...                       {"budget": {"steps": 2, "lr": 2, "batch_size": 2, "eval_every": 2, "tail_fraction": 2}})
    'budget.steps: 1 -> 2; budget.lr: 1 -> 2; budget.batch_size: 1 -> 2; and 2 more'
    """
    if not isinstance(stored, dict) or not isinstance(now, dict):
        return ""
    changes: list[str] = []

    def walk(old: Any, new: Any, path: str) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in list(old) + [k for k in new if k not in old]:
                where = f"{path}.{key}" if path else str(key)
                if key not in new:
                    changes.append(f"{where}: removed")
                elif key not in old:
                    changes.append(f"{where}: added")
                else:
                    walk(old[key], new[key], where)
        elif old != new:
            changes.append(f"{path}: {old!r} -> {new!r}")

    walk(stored, now, "")
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more


def added_arms(stored: Any, now: Any) -> list[str]:
    """The arms that configuration `now` adds to `stored`, when that is all it changes: the
    stored runs are then `now`'s runs too. Empty otherwise.

    >>> stored = {"budget": {"steps": 1500}, "arms": {"equal": {}}}
    >>> added_arms(stored, {"budget": {"steps": 1500}, "arms": {"equal": {}, "dwa": {}}})
    ['dwa']
    >>> added_arms(stored, {"budget": {"steps": 300}, "arms": {"equal": {}, "dwa": {}}})
    []
    >>> added_arms(stored, {"budget": {"steps": 1500}, "arms": {"equal": {"kind": "static"}, "dwa": {}}})
    []
    """
    if not isinstance(stored, dict) or not isinstance(now, dict):
        return []
    old_arms, new_arms = stored.get("arms"), now.get("arms")
    if not isinstance(old_arms, dict) or not isinstance(new_arms, dict):
        return []
    same_rest = {k: v for k, v in stored.items() if k != "arms"} == {k: v for k, v in now.items() if k != "arms"}
    kept = all(arm in new_arms and new_arms[arm] == spec for arm, spec in old_arms.items())
    return [arm for arm in new_arms if arm not in old_arms] if same_rest and kept else []


class ResultStore:
    """One Optuna storage holding any number of studies."""

    def __init__(self, url: str | None = None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD, create: bool = True):
        """`create=False` (for commands that only read) refuses a storage file that does not
        exist rather than creating an empty one."""
        self.url = url or DEFAULT_STORAGE
        self.grace_period = grace_period
        self.storage = open_storage(self.url, heartbeat_interval=heartbeat_interval,
                                    grace_period=grace_period, create=create)
        self.notes: list[str] = list(getattr(self.storage, "notes", []))  # for the user to read

    # ------------------------------------------------------------------ studies
    def study_names(self) -> list[str]:
        """The bench studies in this storage (their manifests), oldest first."""
        return [s.study_name for s in self.storage.get_all_studies()
                if s.user_attrs.get(MANIFEST)]

    def manifest(self, name: str) -> dict[str, Any] | None:
        try:
            study_id = self.storage.get_study_id_from_name(name)
        except KeyError:
            return None
        attrs = self.storage.get_study_user_attrs(study_id)
        return attrs if attrs.get(MANIFEST) else None

    def require_manifest(self, name: str) -> dict[str, Any]:
        manifest = self.manifest(name)
        if manifest is None:
            names = self.study_names()
            hint = did_you_mean(name, names)
            raise BenchError(f"no study named {name!r} in {self.url} (studies there: "
                             f"{', '.join(names) or 'none yet'}); " + (f"{hint} Or run" if hint else "run")
                             + " it first with `bench run --study ...`")
        return manifest

    def versions(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """The stored versions of study `name` (`name`, `name-v2`, ...), with their manifests, in
        version order; a deleted version leaves a gap, and the later ones are still found."""
        pattern = re.compile(re.escape(name) + r"(?:-v([1-9][0-9]*))?")
        found = []
        for s in self.storage.get_all_studies():
            match = pattern.fullmatch(s.study_name)
            if match and s.user_attrs.get(MANIFEST) and int(match.group(1) or 1) <= MAX_VERSIONS:
                found.append((int(match.group(1) or 1), s.study_name, s.user_attrs))
        return [(candidate, manifest) for _, candidate, manifest in sorted(found)]

    def stored_version(self, name: str, config_hash: str, legacy_hashes: Sequence[str] = ()) -> str | None:
        """The stored name of study `name`'s version with this configuration, if it was run.
        `legacy_hashes`: the same configuration as versions of bench that left part of it out
        hashed it (a problem's code fingerprint)."""
        hashes = (config_hash, *legacy_hashes)
        return next((candidate for candidate, manifest in self.versions(name)
                     if manifest.get("config_hash") in hashes), None)

    def first_free_version(self, name: str) -> str:
        """The first of `name`, `name-v2`, ... that no stored study holds."""
        taken = {candidate for candidate, _ in self.versions(name)}
        return next(version_name(name, v) for v in range(1, MAX_VERSIONS + 2) if version_name(name, v) not in taken)

    def register(self, name: str, config_hash: str, attrs: dict[str, Any], *,
                 new_version: bool = False, legacy_hashes: Sequence[str] = ()) -> str:
        """The stored name for a study with this configuration: `name`, or with --new-version
        the version that holds this configuration, else the first `name-vN` that is free. A
        different configuration under the same name is refused, never mixed in."""
        # A version with this configuration is continued wherever it is (`name-v3` when `name`
        # itself was deleted), rather than started again under a free name.
        same = self.stored_version(name, config_hash, legacy_hashes) if new_version else None
        if same is not None:
            return same
        version = 1
        while version <= MAX_VERSIONS:
            candidate = version_name(name, version)
            try:
                study = optuna.create_study(storage=self.storage, study_name=candidate,
                                            load_if_exists=False)
            except DuplicatedStudyError:
                stored = self._wait_for_manifest(candidate)
                if stored is None:  # its creator was interrupted and dropped it: try again
                    continue
                if stored.get("config_hash") in (config_hash, *legacy_hashes):
                    self._refresh_record(candidate, stored, attrs)
                    return candidate
                added = added_arms(stored.get("identity"), attrs.get("identity"))
                if added and not new_version:
                    self._add_arms(candidate, added, attrs, config_hash)
                    return candidate
                if not new_version:
                    same = self.stored_version(name, config_hash, legacy_hashes)
                    hint = (f"it is stored as {same!r}: pass --new-version to continue it" if same else
                            "pass --new-version to store this one as a new version (first free: "
                            f"{self.first_free_version(name)})")
                    changes = (configuration_changes(stored.get("identity"), attrs.get("identity"))
                               or f"stored {stored.get('config_hash')}, now {config_hash}")
                    raise StudyConfigChanged(
                        f"study {name!r} in {self.url} was run with another configuration ({changes}); "
                        f"results are never mixed: {hint}, or --storage for another store"
                    ) from None
                version += 1
                continue
            except optuna.exceptions.StorageInternalError as err:
                raise StorageError(f"cannot write to the storage {self.url}: {err}") from None
            try:
                # Parts left by a study deleted while one of its workers still ran (it made its
                # arms again) would be read as this study's runs. No worker of this study has
                # created any yet: they all wait for the manifest written below.
                self._delete_parts(candidate)
                for key, value in {**attrs, "config_hash": config_hash, "version": __version__,
                                   "created": time.time(), MANIFEST: True}.items():
                    study.set_user_attr(key, value)
            except BaseException:  # Ctrl-C: a study without its manifest would block the name
                _delete_study(self.storage, study._study_id)
                raise
            return candidate
        raise BenchError(f"too many versions of study {name!r}")

    def _refresh_record(self, name: str, stored: dict[str, Any], attrs: dict[str, Any]) -> None:
        """Take the study file's words into stored study `name` where only they changed: its
        description and text (a comment, a typo), and its arms' order (the tables follow it). The
        configuration is the same, so every stored run stands; the report read the old words."""
        # As JSON, order included: `kinds` orders the tables, and equal dicts in another order are ==.
        changed = {key: attrs[key] for key in ("description", "study_text", "arms", "kinds")
                   if key in attrs and json.dumps(stored.get(key)) != json.dumps(attrs[key])}
        if not changed:
            return
        study_id = self.storage.get_study_id_from_name(name)
        for key, value in changed.items():
            self.storage.set_study_user_attr(study_id, key, value)
        what = join_words([words for keys, words in ((("description",), "description"), (("study_text",), "text"),
                                                     (("arms", "kinds"), "order of arms"))
                           if set(keys) & set(changed)])
        self.notes.append(f"study {name!r} in {self.url} now has its study file's {what}; its configuration "
                          "is unchanged, so its stored runs stand")

    def _add_arms(self, name: str, added: list[str], attrs: dict[str, Any], config_hash: str) -> None:
        """Extend stored study `name` with arms its file now adds, the rest of its configuration
        unchanged: its runs stay valid, and only the new arms' runs are queued (as more seeds
        only add runs). The manifest takes the file's configuration and text."""
        study_id = self.storage.get_study_id_from_name(name)
        for key, value in {**attrs, "config_hash": config_hash}.items():
            if key != "environment":  # the one the study was created in; each run records its own
                self.storage.set_study_user_attr(study_id, key, value)
        arms, their = ("arms", "arms'") if len(added) > 1 else ("arm", "arm's")
        self.notes.append(f"study {name!r} in {self.url} now has the {arms} {join_words(added)} that its "
                          f"study file adds; its stored runs are kept, and only the new {their} runs "
                          "are trained")

    def _wait_for_manifest(self, name: str) -> dict[str, Any] | None:
        """The manifest of study `name`, once written; None if the study is dropped meanwhile."""
        # The manifest's creator writes its attributes right after creating it.
        deadline = time.monotonic() + WAIT_FOR_OTHERS_S
        while True:
            try:
                study_id = self.storage.get_study_id_from_name(name)
                attrs = self.storage.get_study_user_attrs(study_id)
            except KeyError:
                return None
            if attrs.get(MANIFEST):
                return attrs
            if time.monotonic() > deadline:
                if self.storage.get_n_trials(study_id):  # a bench study's runs are in its arms
                    raise BenchError(f"the Optuna study {name!r} in {self.url} is not a bench study "
                                     "(no manifest); choose another study name")
                # Its creator was killed while storing it (part of the manifest, or none, and no
                # runs): nothing is lost by dropping it, and the name is free again.
                _delete_study(self.storage, study_id)
                self.notes.append(f"the study {name!r} had no manifest {WAIT_FOR_OTHERS_S:.0f} s after "
                                  "it was created (its `bench run` was stopped while storing it): "
                                  "it held no runs and was stored again")
                return None
            time.sleep(0.2)

    def arm_study(self, study: str, arm: str,
                  sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        name = arm_study_name(study, arm)
        try:
            return optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
        except KeyError:
            return optuna.create_study(storage=self.storage, study_name=name, sampler=sampler,
                                       load_if_exists=True)

    def delete(self, name: str) -> dict[str, StudyProgress]:
        """Delete study `name` from the storage: its arms' runs, its queue locks, then its
        manifest (last: a delete cut short leaves a study that a second delete finishes).
        Refused while a worker holds one of its runs; a killed worker's runs count as failed.
        Returns the per-arm progress of what was deleted."""
        manifest = self.require_manifest(name)
        self.fail_stale(name, manifest["arms"])
        held = self.workers(name)
        if held:
            on = ", ".join(f"{worker} ({n})" for worker, n in sorted(held.items()))
            raise BenchError(f"study {name!r} in {self.url} has runs in training on {on}: stop its "
                             "`bench run` first (a worker killed without stopping counts as stopped "
                             f"once silent for its --grace, {self.grace_period} s unless set longer)")
        progress = self.stored_progress(name)
        self._delete_parts(name)
        _delete_study(self.storage, self.storage.get_study_id_from_name(name))
        return progress

    def _delete_parts(self, name: str) -> None:
        """Delete study `name`'s arms and queue locks (not its manifest)."""
        # Names cannot hold '/' or '#' (study files refuse them): these are this study's parts only.
        for part in self.storage.get_all_studies():
            if part.study_name.startswith((f"{name}/", f"{name}#queue-")):
                _delete_study(self.storage, part._study_id)

    # ------------------------------------------------------------------ queueing
    def queue_once(self, study: str, runset_id: str,
                   runs_by_arm: dict[str, list[tuple[str, dict[str, tuple[Any, BaseDistribution]]]]]
                   ) -> int:
        """Queue every run not yet in the store, exactly once even with many workers starting
        together: the worker that creates the lock study `study#queue-<runset_id>` queues, the
        others wait until it is done. Returns the number of runs this call queued."""
        lock_name = f"{study}#queue-{runset_id}"
        while True:
            try:
                lock = optuna.create_study(storage=self.storage, study_name=lock_name, load_if_exists=False)
                break
            except DuplicatedStudyError:
                if self._wait_for_queue(lock_name):
                    return 0
        queued, beats, beaten = 0, 0, time.monotonic()
        try:
            for arm, runs in runs_by_arm.items():
                arm_study = self.arm_study(study, arm)
                present = {t.user_attrs.get(RUN_KEY) for t in arm_study.get_trials(deepcopy=False)}
                for key, params in runs:
                    if key in present:
                        continue
                    if time.monotonic() - beaten > QUEUE_BEAT_S:  # alive, for the workers waiting
                        beats, beaten = beats + 1, time.monotonic()
                        try:
                            lock.set_user_attr("beats", beats)
                        except KeyError:  # stalled past the grace period: another worker took over
                            return queued + self.queue_once(study, runset_id, runs_by_arm)
                    _queue_run(arm_study, key, params)
                    queued += 1
        except BaseException:
            # Ctrl-C (or an error) part-way: drop the lock, so that the next worker queues the rest
            # (runs already queued are skipped) instead of waiting for a "done" that never comes.
            _delete_study(self.storage, lock._study_id)
            raise
        lock.set_user_attr("done", True)
        return queued

    def lost_runs(self, study: str, expected: dict[str, list[str]]) -> set[tuple[str, str]]:
        """(arm, run key) of the runs neither settled, queued nor running: given back, or failed
        as stale, with the storage failing (a full disk) before their copy was queued."""
        lost = set()
        for arm, trials in self.arm_trials(study, expected).items():
            for key in expected[arm]:
                t = trials.by_key.get(key)
                if t is None or (t.state == TrialState.FAIL and not is_finished(t)):
                    lost.add((arm, key))
        return lost

    def requeue(self, study: str, runs: dict[str, list[tuple[str, dict[str, tuple[Any, BaseDistribution]]]]]
                ) -> None:
        """Queue these runs again (a lost run's copy, as `release` would have queued it)."""
        for arm, arm_runs in runs.items():
            trials = self.arm_trials(study, [arm])[arm]
            for key, params in arm_runs:
                last = trials.by_key.get(key)
                if last is None:
                    _queue_run(trials.study, key, params)
                else:
                    RequeueStaleRun()(trials.study, last)

    def _wait_for_queue(self, lock_name: str) -> bool:
        """Wait for the worker that holds the queue's lock: True once it has queued every run;
        False once the lock is gone, so that the caller takes it. A lock whose worker stopped
        marking it for the grace period (killed, its machine lost) is deleted, by its id: of
        several waiters, one deletes it and one takes the lock, the others wait on the new one."""
        seen: tuple[tuple[int, Any], float] | None = None
        while True:
            try:
                lock_id = self.storage.get_study_id_from_name(lock_name)
            except KeyError:
                return False
            attrs = self.storage.get_study_user_attrs(lock_id)
            if attrs.get("done"):
                return True
            marks = (lock_id, attrs.get("beats"))
            if seen is None or seen[0] != marks:
                seen = (marks, time.monotonic())  # measured here: no clock is shared with its machine
            elif time.monotonic() - seen[1] > self.grace_period:
                _delete_study(self.storage, lock_id)
                return False
            time.sleep(0.2)

    # ------------------------------------------------------------------ workers
    def arm_trials(self, study: str, arms: Iterable[str],
                   samplers: dict[str, optuna.samplers.BaseSampler] | None = None
                   ) -> dict[str, ArmTrials]:
        out = {}
        for arm in arms:
            s = self.arm_study(study, arm, (samplers or {}).get(arm))
            out[arm] = ArmTrials(s, s.get_trials(deepcopy=False))
        return out

    def fail_stale(self, study: str, arms: Iterable[str]) -> None:
        """Fail runs whose worker stopped beating, and queue them again. A run whose worker was
        killed between taking it and its first heartbeat has no heartbeat, and Optuna's RDB
        storage never finds it stale: it is given back once it has been running, unowned, for
        the grace period (by its start time: a command that looks once, `bench delete`, sees it)."""
        for arm in arms:
            arm_study = self.arm_study(study, arm)
            fail_stale_trials(arm_study)
            for trial in arm_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if self._unowned_too_long(trial):
                    self.release(arm_study, trial, "its worker stopped before its first heartbeat")

    def _unowned_too_long(self, trial: FrozenTrial) -> bool:
        """A RUNNING trial with no worker named, taken more than the grace period ago."""
        # `claim` names the worker right after the first heartbeat: unnamed, it has none yet.
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return (WORKER not in trial.system_attrs
                and started < time.time() - stale_after(self.grace_period, trial.system_attrs))

    def silent_workers(self, study: str) -> dict[str, tuple[int, float]]:
        """Workers holding runs of `study` that have not beaten for the grace period (killed,
        their machine lost; the longer of this store's and the worker's own), with how many such
        runs each and that grace period: the next worker to look queues them again. Only reads:
        `bench status` shows them without changing the storage."""
        manifest = self.require_manifest(study)
        silent: dict[str, tuple[int, float]] = {}
        for arm in manifest["arms"]:
            arm_study = self.arm_study(study, arm)
            stale = (set(self.storage._get_stale_trial_ids(arm_study._study_id))
                     if isinstance(self.storage, BaseHeartbeat) and is_heartbeat_enabled(self.storage) else set())
            for trial in arm_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial._trial_id in stale or self._unowned_too_long(trial):
                    worker = trial.system_attrs.get(WORKER, "unknown")
                    runs, grace = silent.get(worker, (0, 0.0))
                    silent[worker] = (runs + 1, max(grace, stale_after(self.grace_period, trial.system_attrs)))
        return silent

    def claim(self, trial: FrozenTrial, worker: str) -> bool:
        """Take a queued trial (WAITING -> RUNNING); False if another worker took it first."""
        try:
            claimed = self.storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
        except UpdateFinishedTrialError:
            return False
        if claimed:
            try:
                # Others wait this long for this worker's heartbeats before taking the run back.
                self.storage.set_trial_system_attr(trial._trial_id, GRACE_ATTR, self.grace_period)
                self.heartbeat([trial._trial_id])
                self.storage.set_trial_system_attr(trial._trial_id, WORKER, worker)
            except UpdateFinishedTrialError:  # this process stalled past the grace period meanwhile
                return False
        return claimed

    def heartbeat(self, trial_ids: Sequence[int]) -> None:
        if isinstance(self.storage, BaseHeartbeat) and is_heartbeat_enabled(self.storage):
            for trial_id in trial_ids:
                self.storage.record_heartbeat(trial_id)

    def set_params(self, trial_id: int, params: Mapping[str, tuple[Any, BaseDistribution]]) -> None:
        for name, (value, distribution) in params.items():
            self.storage.set_trial_param(trial_id, name, distribution.to_internal_repr(value), distribution)

    def complete(self, study: optuna.Study, trial: FrozenTrial, value: float, attrs: dict[str, Any]) -> bool:
        """Store a finished run; False if its trial was meanwhile failed as stale (another
        worker then retrains it, and this result is dropped rather than stored twice)."""
        try:
            for key, v in attrs.items():
                self.storage.set_trial_user_attr(trial._trial_id, key, v)
            tell(study, trial, value)
        except UpdateFinishedTrialError:
            return False
        return True

    def fail(self, study: optuna.Study, trial: FrozenTrial, reason: str,
             attrs: dict[str, Any] | None = None) -> bool:
        """The run failed for a reason of its own (it diverged): finished, not retried."""
        try:
            for key, v in {**(attrs or {}), STATUS: "failed", REASON: reason}.items():
                self.storage.set_trial_user_attr(trial._trial_id, key, v)
            tell(study, trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
        return True

    def release(self, study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
        """Give a claimed run back (interrupted): its trial fails and a copy is queued again."""
        try:
            before = self.storage.get_trial(trial._trial_id)
            if before.state != TrialState.RUNNING:
                return
            self.storage.set_trial_user_attr(trial._trial_id, "interrupted", reason)
            tell(study, trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            return
        RequeueStaleRun()(study, before)

    def release_held(self, study: str, arms: Iterable[str], worker: str, reason: str) -> int:
        """Give back every run of `study` that `worker` still holds (RUNNING under its name);
        the number given back."""
        released = 0
        for arm in arms:
            arm_study = self.arm_study(study, arm)
            for trial in arm_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.system_attrs.get(WORKER) == worker:
                    self.release(arm_study, trial, reason)
                    released += 1
        return released

    def progress(self, study: str, expected: dict[str, list[str]],
                 trials: dict[str, ArmTrials] | None = None) -> StudyProgress:
        return sum(self.arm_progress(study, expected, trials).values(), StudyProgress(0, 0, 0, 0, 0))

    def arm_progress(self, study: str, expected: dict[str, list[str]],
                     trials: dict[str, ArmTrials] | None = None) -> dict[str, StudyProgress]:
        """Per arm: how many of the expected runs are done, failed, running, waiting (from
        `trials` where the caller has read them already)."""
        trials = trials if trials is not None else self.arm_trials(study, expected)
        out = {}
        for arm, keys in expected.items():
            done = failed = running = waiting = 0
            by_key = trials[arm].by_key
            for key in keys:
                t = by_key.get(key)
                if t is None:
                    continue
                if is_finished(t):
                    done += 1
                    failed += t.state == TrialState.FAIL
                elif t.state == TrialState.RUNNING:
                    running += 1
                elif t.state == TrialState.WAITING:
                    waiting += 1
            out[arm] = StudyProgress(total=len(keys), done=done, failed=failed, running=running,
                                     waiting=waiting)
        return out

    def stored_progress(self, study: str) -> dict[str, StudyProgress]:
        """Per-arm progress of a stored study, over the runs queued so far (any seeds)."""
        manifest = self.require_manifest(study)
        trials = self.arm_trials(study, manifest["arms"])
        expected = {arm: list(t.by_key) for arm, t in trials.items()}
        return self.arm_progress(study, expected)

    def workers(self, study: str, trials: dict[str, ArmTrials] | None = None) -> dict[str, int]:
        """Workers holding runs of a study now, with how many runs each holds (of `trials`, every
        arm's as the caller has just read them, where given)."""
        if trials is None:
            trials = self.arm_trials(study, self.require_manifest(study)["arms"])
        held: dict[str, int] = {}
        for arm_trials in trials.values():
            for t in arm_trials.trials:
                if t.state == TrialState.RUNNING:
                    worker = t.system_attrs.get(WORKER, "unknown")
                    held[worker] = held.get(worker, 0) + 1
        return held

    # ------------------------------------------------------------------ reading
    def records(self, study: str) -> list[dict[str, Any]]:
        """One dict per finished run of a study: arm, key, params, value, status and record."""
        manifest = self.require_manifest(study)
        out = []
        for arm in manifest["arms"]:
            for key, t in self.arm_trials(study, [arm])[arm].by_key.items():
                if not is_finished(t):
                    continue
                out.append({
                    "study": study, "arm": arm, "run_key": key, "trial": t.number,
                    "params": dict(t.params), "value": t.value,
                    "status": "ok" if t.state == TrialState.COMPLETE else "failed",
                    "reason": t.user_attrs.get(REASON),
                    "record": attrs_to_record(t.user_attrs),
                    "user_attrs": {k: v for k, v in t.user_attrs.items() if k not in RECORD_PARTS},
                })
        return out


def _queue_run(arm_study: optuna.Study, key: str, params: dict[str, tuple[Any, BaseDistribution]]) -> None:
    arm_study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING,
        params={n: v for n, (v, _) in params.items()},
        distributions={n: d for n, (_, d) in params.items()},
        user_attrs={RUN_KEY: key},
    ))


def _delete_study(storage: BaseStorage, study_id: int) -> None:
    """Delete a study by its id; already gone (another worker deleted it) is fine."""
    try:
        storage.delete_study(study_id)
    except KeyError:
        pass
