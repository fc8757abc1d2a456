"""The bench processes training on this machine now (`bench run` workers of any study or
storage, `bench train`, `bench perf`).

Each PyTorch process takes every core: two workers on one 2-core machine, 2 threads each,
trained a 33-run stack 11 times slower than with 1 thread each, their OpenMP threads spinning
for a core that the other process held. The study manager shares the cores out among the
training processes it finds here.

A worker training holds an exclusive `flock` on a file of its own in one folder (the machine's
temporary folder, or BENCH_TRAINERS); the lock goes with the process however it ends, so a
killed worker is never counted, and its file is removed by the next look. Where there is no
`flock` (Windows) or no folder to write, a worker sees only itself here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bench.formatting import count

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".trainer"


def default_folder() -> Path:
    """BENCH_TRAINERS, or a folder of this user's in the temporary folder."""
    if os.environ.get("BENCH_TRAINERS"):  # set empty (BENCH_TRAINERS= in a script): unset
        return Path(os.environ["BENCH_TRAINERS"]).expanduser()
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"gradnorm-bench-trainers-{user}"


class TrainersHere:
    """This machine's training processes, by worker: `training` registers this worker's for a
    block, `processes` counts every worker's and `others` the other workers'."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._held: set[str] = set()  # this worker's files: a process id may be another container's too

    def _folder(self) -> Path:
        return self.folder if self.folder is not None else default_folder()

    @contextlib.contextmanager
    def training(self, processes: int = 1) -> Iterator[None]:
        """This worker trains with `processes` processes for the block."""
        held = self._register(processes)
        try:
            yield
        finally:
            if held is not None:
                path, handle = held
                self._held.discard(path.name)
                with contextlib.suppress(OSError):
                    path.unlink()
                handle.close()  # and the lock with it

    def _register(self, processes: int) -> tuple[Path, IO[str]] | None:
        if fcntl is None:
            return None
        try:
            folder = self._folder()
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, prefix=f"{os.getpid()}-{processes}-", suffix=".new")
        except OSError:
            return None  # nowhere to register: the others do not see this one
        handle = os.fdopen(fd, "w")
        path = Path(name).with_suffix(SUFFIX)
        try:
            # Locked under a name no look reads, then renamed: a look never takes a file that is
            # not locked yet for a dead worker's.
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(name, path)
        except OSError:
            handle.close()
            with contextlib.suppress(OSError):
                os.unlink(name)
            return None
        self._held.add(path.name)
        return path, handle

    def processes(self) -> dict[int, int]:
        """Training processes of each worker training here now (this one's included while it
        trains), by the worker's process id."""
        return self._live(with_this_one=True)

    def others(self) -> dict[int, int]:
        """Training processes of each other worker training here now, by its process id (which
        may be this one's, in another container that shares the folder)."""
        return self._live(with_this_one=False)

    def _live(self, with_this_one: bool) -> dict[int, int]:
        if fcntl is None:
            return {}
        found: dict[int, int] = {}
        try:
            paths = list(self._folder().glob(f"*{SUFFIX}"))
        except OSError:
            return {}
        for path in paths:
            try:
                pid, processes = (int(part) for part in path.name.split("-")[:2])
            except ValueError:
                continue  # not one of ours
            # This worker's own file is locked too: a lock through another open file conflicts with it.
            if (with_this_one or path.name not in self._held) and _locked(path):
                found[pid] = found.get(pid, 0) + processes
        return found


def _locked(path: Path) -> bool:
    """Whether a live worker holds `path`; a dead one's file is removed."""
    assert fcntl is not None
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(OSError):
                path.unlink()
            return False
    except OSError:
        return False  # gone meanwhile


def threads_each(threads: int, processes: int, others: int) -> int:
    """Each of a worker's `processes` training processes' share of `threads` (the machine's cores, or
    PyTorch's threads in one process) while the other workers here train with `others` processes.

    >>> threads_each(4, 1, 1), threads_each(4, 2, 2), threads_each(2, 2, 1)
    (2, 1, 1)
    """
    return max(1, threads // (processes + others))


def running_here(processes: int, what: str = "bench training process") -> str:
    """
    >>> running_here(1), running_here(2, "other bench training process")
    ('1 bench training process runs on this machine', '2 other bench training processes run on this machine')
    """
    return f"{count(processes, what)} {'runs' if processes == 1 else 'run'} on this machine"


def sharing_note(others: int, threads: int, own: int, who: str) -> str:
    """What a process that gives up threads tells its user.

    >>> sharing_note(2, 1, 4, "this worker")  # doctest: +NORMALIZE_WHITESPACE
    "2 other bench training processes run on this machine: this worker trains with 1 thread of
    its 4 while they do (PyTorch's threads in several processes wait on each other's cores)"
    """
    return (f"{running_here(others, 'other bench training process')}: {who} trains with "
            f"{count(threads, 'thread')} of its {own} while {'it does' if others == 1 else 'they do'} "
            "(PyTorch's threads in several processes wait on each other's cores)")
