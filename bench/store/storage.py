"""Opening the Optuna storage that holds a study's results.

A storage is given as Optuna and optuna-dashboard take it:
- a file path (the embedded default, `results/bench.journal`): Optuna's journal file storage.
  It needs no server, and several processes on one machine can share it: every write goes
  through one append-only log under a file lock, so claiming a queued run is atomic.
- an RDB URL: `sqlite:///results/bench.db`, `postgresql://user:pw@host/db`,
  `mysql+pymysql://...` (several machines: PostgreSQL or MySQL).

Runs that a dead worker held are found by heartbeats: every in-flight run's heartbeat is
recorded every `heartbeat_interval` seconds, and a run whose heartbeat is older than
`grace_period` is failed and queued again (Optuna's `fail_stale_trials` and
`RetryHeartbeatStaleTrialCallback`). RDB storages have this natively; for the journal file,
`HeartbeatJournalStorage` adds the same interface, keeping each heartbeat as a trial system
attribute.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from bench.errors import StorageError

DEFAULT_STORAGE = "results/bench.journal"
HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 30
HEARTBEAT_ATTR = "bench:heartbeat"
# What to install when SQLAlchemy lacks a URL's driver, by dialect.
DRIVER_HINTS = {
    "postgresql": "for PostgreSQL: pip install 'gradnorm-bench[postgres]' (psycopg 3 and SQLAlchemy 2.1, "
                  "which reads a postgresql:// URL with it; psycopg2 wants postgresql+psycopg2://)",
    "mysql": "for MySQL: pip install pymysql, and write the URL as mysql+pymysql://...",
}


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage plus Optuna's heartbeat interface."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int,
                 stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None):
        super().__init__(JournalFileBackend(path))
        self.path = path
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        deadline = time.time() - self._grace_period
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            beat = trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)
            # A retried trial inherits its predecessor's old heartbeat: its start counts too.
            if max(started, beat) < deadline:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
        return self._stale_trial_callback


def is_file_storage(url: str) -> bool:
    return "://" not in url


def _local_file(url: str) -> Path | None:
    """The file behind a journal's path or a sqlite:/// URL; None for a database server's URL."""
    if is_file_storage(url):
        return Path(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        return Path(url.removeprefix("sqlite:///").split("?")[0])
    return None


def open_storage(url: str | None = None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD, create: bool = True) -> BaseStorage:
    """The storage at `url` (default: the journal file under results/), with heartbeats on.
    With `create=False`, a journal or SQLite file that does not exist is refused, not created."""
    url = url or DEFAULT_STORAGE
    local = _local_file(url)
    if not create and local is not None and not local.exists():
        raise StorageError(f"no results at {url}: `bench run --study ...` stores them there"
                           + ("" if url == DEFAULT_STORAGE else ", or pass --storage with the storage it used"))
    with warnings.catch_warnings():
        # Optuna marks heartbeats and the retry callback experimental; we rely on them knowingly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open_storage(url, heartbeat_interval, grace_period)


def _open_storage(url: str, heartbeat_interval: int, grace_period: int) -> BaseStorage:
    retry = RetryHeartbeatStaleTrialCallback()
    if is_file_storage(url):
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the results folder {path.parent}: {err.strerror}") from None
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StorageError(f"the results storage {path} is not writable: check the folder's "
                               "permissions or pass --storage with another path or URL")
        if path.exists() and not path.is_file():  # a folder, /dev/null: the journal's appends fail later
            raise StorageError(f"the results storage {path} is not a file: pass --storage with a journal "
                               "file's path (it is created if missing) or an RDB URL")
        try:
            return HeartbeatJournalStorage(str(path), heartbeat_interval, grace_period, retry)
        except OSError as err:
            raise StorageError(f"cannot open the results storage {path}: {err}") from None
    if url.split("?")[0] in ("sqlite://", "sqlite:///:memory:"):
        raise StorageError(f"the storage {url} is an in-memory database, which keeps nothing once this "
                           "command ends: give a file, sqlite:///results/bench.db, or leave --storage out")
    try:
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        if url.startswith(("postgresql", "mysql")):
            engine_kwargs = {"pool_pre_ping": True}
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period, heartbeat_stale_trial_callback=retry)
    except ImportError as err:
        # Optuna's message is generic; the module SQLAlchemy tried to import is in the cause.
        missing = getattr(err.__cause__, "name", None) or err.name or "unknown"
        raise StorageError(f"the storage {url} needs a database driver that is not installed (the module "
                           f"{missing}); "
                           + DRIVER_HINTS.get(url.split(":")[0].split("+")[0], DRIVER_HINTS["postgresql"])) from None
    except Exception as err:  # SQLAlchemy's errors: unreachable host, bad credentials, bad URL
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"cannot open the storage {url}: {message}") from None


def describe_storage(url: str | None) -> str:
    return url or DEFAULT_STORAGE
