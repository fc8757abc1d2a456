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
attribute. A run waits for the longer of the looking worker's grace period and the one its
holder recorded on it (a worker with a slow heartbeat, `--heartbeat 60 --grace 300`, keeps its
runs among workers with the default 30 s), and its queued copy starts without its last holder's
marks.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import time
import warnings
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from bench.errors import StorageError

DEFAULT_STORAGE = "results/bench.journal"
HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 30
# Trial system attributes of the worker holding a run: its last heartbeat (journal storage),
# its --grace, and its name (host:pid). A queued copy of the run starts without them.
HEARTBEAT_ATTR = "bench:heartbeat"
GRACE_ATTR = "bench:grace"
WORKER = "bench:worker"
HOLDER_ATTRS = (HEARTBEAT_ATTR, GRACE_ATTR, WORKER)
# What to install when SQLAlchemy lacks a URL's driver, by dialect.
DRIVER_HINTS = {
    "postgresql": "for PostgreSQL: pip install 'gradnorm-bench[postgres]' (psycopg 3 and SQLAlchemy 2.1, "
                  "which reads a postgresql:// URL with it; psycopg2 wants postgresql+psycopg2://)",
    "mysql": "for MySQL: pip install pymysql, and write the URL as mysql+pymysql://...",
}


SQLITE_HEADER = b"SQLite format 3\x00"
# Opening a new database creates Optuna's tables; a worker that loses that race to another
# opens it again, at most this many times in all.
SCHEMA_RACE_ATTEMPTS = 4


class CheckedJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, whose read errors name the file and its first damaged line.

    Optuna raises a bare JSONDecodeError (or "Invalid log format.") on a line it cannot read: a
    write cut short by a killed process or a full disk, after which another write was appended
    (optuna/optuna#5138), or a file that is not a journal at all.
    """

    def __init__(self, path: str):
        super().__init__(path)
        self.path = Path(path)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError and Optuna's format error alike
            raise StorageError(_damaged_journal_message(self.path)) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        try:
            super().append_logs(logs)
        except OSError as err:  # a full disk, a lost mount: the run in hand is queued again later
            raise StorageError(f"cannot write to the results storage {self.path}: {err.strerror or err}. "
                               "Every run stored before is kept; once it can be written, run the same "
                               "command to go on") from None


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _starts_like_a_journal(path: Path) -> bool:
    """An empty file, or one whose first line is a record or the start of one (a first write cut
    short). Anything else (an SQLite database, a CSV passed by mistake) is never read as a journal
    nor set aside or appended to: Optuna would read a lone line of it as a cut-short write."""
    first = _first_line(path)
    return not first or _is_record(first) or (not first.endswith(b"\n") and first.startswith(b"{"))


def _is_record(line: bytes) -> bool:
    """A complete journal line: one JSON object, newline-terminated."""
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _first_damaged_line(path: Path) -> tuple[int, int] | None:
    """(line number from 1, number of lines) of the journal's first line that is not a complete
    record; None if every line is one."""
    damaged = None
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if damaged is None and not _is_record(line):
                damaged = number
    return None if damaged is None else (damaged, number)


def _damaged_journal_message(path: Path) -> str:
    """What is wrong with a journal file Optuna cannot read or add to, and how to go on."""
    if _is_sqlite(path):
        return f"{path} is an SQLite database, not a journal file: pass it as --storage sqlite:///{path}"
    found = _first_damaged_line(path)
    if found is None:  # repaired meanwhile by hand
        return f"{path} could not be read as an Optuna journal file; reading it again may work"
    number, total = found
    if number == 1:
        return (f"{path} is not an Optuna journal file (its first line is not a journal record): pass "
                "--storage with a journal file's path or an RDB URL")
    # A cut-short last line never gets here: readers skip it and `bench run` sets it aside.
    what = "is not a journal record (an edit, or two writes run together)"
    if number == total:
        where = (f"{path} is damaged: its last line, {number}, {what}; the next write would bury it, "
                 "and Optuna could not read the file past it")
        lost = ""
    else:
        where = f"{path} is damaged: line {number} of {total} {what}, and Optuna cannot read it past there"
        lost = " (runs recorded after them are trained again)"
    kept, them = ("Line 1 is", "it") if number == 2 else (f"Lines 1 to {number - 1} are", "them")
    repaired = path.with_name(f"{path.stem}-repaired{path.suffix}")
    command = f"head -n {number - 1} {shlex.quote(str(path))} > {shlex.quote(str(repaired))}"
    return (f"{where}. {kept} intact: `{command}` copies {them} into a new "
            f"journal to pass as --storage{lost}; {path} is left as it is")


def _prepare_journal_for_writing(path: Path) -> str | None:
    """Make sure an append cannot bury a damaged last line: Optuna's reader skips one, but once
    another write follows it, it stops every later read. A write cut short (no newline, and no
    writer holds the lock) is set aside in a file of its own, which leaves the journal as every
    reader already sees it; the note returned says so. A complete line that is not a record (an
    edit?) is refused."""
    if not path.exists() or path.stat().st_size == 0 or _is_record(_last_line(path)):
        return None
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's writers hold: one may be mid-append
    lock.acquire()
    try:
        last = _last_line(path)
        if _is_record(last):
            return None
        if last.endswith(b"\n"):
            raise StorageError(_damaged_journal_message(path))
        aside = path.with_name(f"{path.name}.cut-short-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        aside.write_bytes(last)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - len(last))
            os.fsync(f.fileno())
    finally:
        lock.release()
    return (f"the last write to {path} was cut short (a process killed while writing, or a full disk): its "
            f"{len(last)} bytes, which no reader could use, were moved to {aside}")


def _first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline()


def _last_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        chunk = 1 << 16
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            tail = f.read()
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0 or start == 0:
                return tail[cut + 1:]
            chunk *= 4


def stale_after(grace_period: float, system_attrs: Mapping[str, Any]) -> float:
    """Seconds without a heartbeat after which a run counts as abandoned: the looking worker's
    grace period, or the longer one that the run's holder recorded (its --grace).

    >>> stale_after(30, {}), stale_after(30, {GRACE_ATTR: 300}), stale_after(30, {GRACE_ATTR: 2})
    (30, 300, 30)
    """
    held = system_attrs.get(GRACE_ATTR)
    if isinstance(held, (int, float)) and not isinstance(held, bool):
        return max(grace_period, held)
    return grace_period


class RequeueStaleRun(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale (or given back) run, whose queued copy leaves its last holder's
    name, grace period and heartbeat behind: a copy that kept them looked held, and one whose new
    worker died before naming itself was never found stale on an RDB storage."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in HOLDER_ATTRS}
        super().__call__(study, trial)


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's RDB storage, whose stale runs wait for their holder's grace period when it is
    longer than this worker's (`stale_after`)."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        own = self.grace_period
        assert own is not None  # `open_storage` always gives one
        stale = super()._get_stale_trial_ids(study_id)
        longer: dict[int, set[int]] = {}
        for trial_id in stale:
            grace = math.ceil(stale_after(own, self.get_trial_system_attrs(trial_id)))  # Optuna's are whole seconds
            if grace > own:
                longer.setdefault(grace, set()).add(trial_id)
        for grace, trial_ids in longer.items():
            # Optuna's query reads the grace period from here; nothing else does meanwhile (the
            # heartbeat thread only records beats).
            self.grace_period = grace
            try:
                still = set(super()._get_stale_trial_ids(study_id))
            finally:
                self.grace_period = own
            stale = [t for t in stale if t not in trial_ids or t in still]
        return stale


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage plus Optuna's heartbeat interface."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int,
                 stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None):
        super().__init__(CheckedJournalFileBackend(path))
        self.path = path
        self.notes: list[str] = []  # what opening the journal did to it, for the user
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            beat = trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)
            # A copy queued by an older version inherited its predecessor's old heartbeat: its
            # start counts too.
            if max(started, beat) < now - stale_after(self._grace_period, trial.system_attrs):
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


def storage_identity(url: str | None) -> str:
    """One name per storage, whatever way it is written: a local file's absolute path (a journal,
    or an SQLite database), a server's URL without its password. Tables and reports carry it, so
    that one storage's never replace another's under the same study name."""
    url = url or DEFAULT_STORAGE
    local = _local_file(url)
    if local is not None:
        return str(local.resolve())
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy reads: opening it would have failed first
        return url


def shareable_url(url: str) -> str:
    """`url` as reports and the commands they print show it: a database's URL without its
    password (its client reads that from ~/.pgpass or PGPASSWORD), anything else as given. A
    report is made to be passed on; its "Reproduce" commands carried the password.

    >>> shareable_url("postgresql://bench:s3cret@db.lab:5432/runs"), shareable_url("results/bench.journal")
    ('postgresql://bench@db.lab:5432/runs', 'results/bench.journal')
    """
    if is_file_storage(url):
        return url
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.password is None:
        return url
    # URL.set(password=None) keeps the password (None means "unchanged"): built again without it.
    bare = URL.create(parsed.drivername, username=parsed.username, host=parsed.host, port=parsed.port,
                      database=parsed.database, query=parsed.query)
    return bare.render_as_string(hide_password=False)


def _lost_schema_race(err: BaseException) -> bool:
    """Whether opening a database failed because another process created Optuna's tables at the
    same moment (workers started together on a new database): opening it again then succeeds."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    text = str(err)
    return (isinstance(err, IntegrityError) and "alembic_version" in text) or (
        isinstance(err, (IntegrityError, OperationalError, ProgrammingError))
        and ("already exists" in text or "pg_type_typname_nsp_index" in text))


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
        return _open_storage(url, heartbeat_interval, grace_period, create)


def _open_storage(url: str, heartbeat_interval: int, grace_period: int, create: bool) -> BaseStorage:
    retry = RequeueStaleRun()
    if is_file_storage(url):
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the results folder {path.parent}: {err.strerror}") from None
        # Writing takes a lock file beside the journal; reading needs neither (a shared, read-only copy).
        if create and (not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK))):
            raise StorageError(f"the results storage {path} is not writable: check the folder's "
                               "permissions or pass --storage with another path or URL")
        if path.exists() and not path.is_file():  # a folder, /dev/null: the journal's appends fail later
            raise StorageError(f"the results storage {path} is not a file: pass --storage with a journal "
                               "file's path (it is created if missing) or an RDB URL")
        try:
            if path.exists() and not _starts_like_a_journal(path):  # read or appended to, it would break
                raise StorageError(_damaged_journal_message(path))
            note = _prepare_journal_for_writing(path) if create else None
            storage = HeartbeatJournalStorage(str(path), heartbeat_interval, grace_period, retry)
            if note:
                storage.notes.append(note)
            return storage
        except OSError as err:
            raise StorageError(f"cannot open the results storage {path}: {err}") from None
    if url.split("?")[0] in ("sqlite://", "sqlite:///:memory:"):
        raise StorageError(f"the storage {url} is an in-memory database, which keeps nothing once this "
                           "command ends: give a file, sqlite:///results/bench.db, or leave --storage out")
    database = _local_file(url)
    if create and database is not None:
        # SQLite creates its file but not the file's folder: `sqlite:///results/bench.db`, the
        # README's example, failed on a fresh clone with "unable to open database file".
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the results folder {database.parent}: {err.strerror}") from None
    try:
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        if url.startswith(("postgresql", "mysql")):
            engine_kwargs = {"pool_pre_ping": True}
        for attempt in range(SCHEMA_RACE_ATTEMPTS):
            try:
                return HeartbeatRDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                           grace_period=grace_period, heartbeat_stale_trial_callback=retry)
            except Exception as err:
                if attempt + 1 == SCHEMA_RACE_ATTEMPTS or not _lost_schema_race(err):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError as err:
        # Optuna's message is generic; the module SQLAlchemy tried to import is in the cause.
        missing = getattr(err.__cause__, "name", None) or err.name or "unknown"
        raise StorageError(f"the storage {url} needs a database driver that is not installed (the module "
                           f"{missing}); "
                           + DRIVER_HINTS.get(url.split(":")[0].split("+")[0], DRIVER_HINTS["postgresql"])) from None
    except Exception as err:  # SQLAlchemy's errors: unreachable host, bad credentials, bad URL
        from sqlalchemy.exc import NoSuchModuleError

        scheme = url.split("://")[0]
        if isinstance(err, NoSuchModuleError):  # "Can't load plugin: sqlalchemy.dialects:journal"
            raise StorageError(f"cannot open the storage {url}: {scheme}:// is no database SQLAlchemy knows; "
                               "a journal file is given by its path (--storage results/bench.journal), a "
                               "database by a URL such as sqlite:///results/bench.db or postgresql://user@host/db"
                               ) from None
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if database is not None and database.is_file() and _is_record(_first_line(database)):
            message += f"; {database} is an Optuna journal file: pass it as --storage {database}"
        raise StorageError(f"cannot open the storage {url}: {message}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def storage_failure(err: BaseException) -> StorageError | None:
    """An RDB storage's failure mid-command (a full disk, a lost server) as one line, or None for
    any other error. Optuna reports a failed commit as StorageInternalError, whose own text guesses
    at "invalid data"; the database's reason is in its cause."""
    from sqlalchemy.exc import OperationalError

    if not isinstance(err, (optuna.exceptions.StorageInternalError, OperationalError)):
        return None
    cause = err.__cause__ if isinstance(err.__cause__, OperationalError) else err
    cause = getattr(cause, "orig", None) or cause  # the database driver's own error, without SQL
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return StorageError(f"the results storage failed: {reason}. Every run stored before is kept; once "
                        "the storage works again, run the same command to go on")


def describe_storage(url: str | None) -> str:
    return url or DEFAULT_STORAGE
