"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import difflib
import os
import re
import sysconfig
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SHOW_TRACEBACK = "BENCH_TRACEBACK"  # set to 1: errors raised in a user's own code keep their traceback
PACKAGE_DIR = Path(__file__).resolve().parent
# The user's own problem packages (or single modules), wherever they are installed: a problem
# package in site-packages is still the user's code.
USER_CODE_PATHS: set[Path] = set()


def mark_user_code(path: Path) -> None:
    """Count the package folder or module file at `path` as the user's own code (never this
    package: a problem function of ours named as module:function keeps our bugs ours)."""
    path = path.resolve()
    if not path.is_relative_to(PACKAGE_DIR):
        USER_CODE_PATHS.add(path)


def traceback_asked() -> bool:
    """BENCH_TRACEBACK set to anything but empty, 0, false, no or off (as such switches go)."""
    return os.environ.get(SHOW_TRACEBACK, "").strip().lower() not in ("", "0", "false", "no", "off")


class BenchError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""

    exit_code = 2


class ConfigError(BenchError):
    """A configuration value is missing, malformed or out of range.

    The message names where the value came from (a file, a CLI option), the field,
    and what was expected.
    """

    def __init__(self, field: str, expected: str, got: object = None, *, source: str | None = None,
                 hint: str | None = None):
        self.field = field
        self.expected = expected
        self.got = got
        self.source = source
        self.hint = hint  # said last: "did you mean 'resolution'?"
        where = f"{source}: " if source else ""
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{where}{field}: expected {expected}{got_text}" + (f"; {hint}" if hint else ""))

    def located(self, source: str | None, *, prefix: str = "") -> ConfigError:
        """This error with its field under `prefix` (an arm's, say) and, unless it names one
        already, read from `source`: a value checked deep down is reported at the file or option
        the user wrote it in.

        >>> str(ConfigError("floor", "a number in (0, 1)", 2).located("s.toml", prefix="arms.gn."))
        's.toml: arms.gn.floor: expected a number in (0, 1), got 2'
        >>> str(ConfigError("root", "a folder", source="--problem-param").located("s.toml"))
        '--problem-param: root: expected a folder'
        """
        return ConfigError(prefix + self.field, self.expected, self.got, source=self.source or source,
                           hint=self.hint)

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a `--jobs` process, it crosses back pickled: by default Python would rebuild it
        # from its message alone, which this __init__ refuses (joblib then fails with
        # BrokenProcessPool, and the user's one line is lost). `got` travels as its text when it
        # is not a plain value.
        plain = (str, int, float, bool, list, tuple, dict, type(None))
        got = self.got if isinstance(self.got, plain) else _Shown(repr(self.got))
        return (_config_error, (self.field, self.expected, got, self.source, self.hint))


class _Shown(str):
    """A value's text that prints as the value did (its repr) in a ConfigError's message."""

    def __repr__(self) -> str:
        return str(self)


def _config_error(field: str, expected: str, got: object, source: str | None, hint: str | None) -> ConfigError:
    return ConfigError(field, expected, got, source=source, hint=hint)


def did_you_mean(name: object, known: Iterable[str]) -> str | None:
    """The hint for a misspelt name, when one known name is close to it.

    >>> did_you_mean("resolutoin", ["method", "resolution", "boundary"]), did_you_mean("lrate", ["lr", "steps"])
    ("did you mean 'resolution'?", None)
    >>> did_you_mean("GRIDSEARCH", ["gridsearch", "optuna"])  # case counts for nothing in the match
    "did you mean 'gridsearch'?"
    """
    by_lower = {str(k).lower(): k for k in known}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
    return f"did you mean {by_lower[close[0]]!r}?" if close else None


class StorageError(BenchError):
    """The result storage cannot be opened or written."""


class OutOfMemory(BenchError):
    """torch or numpy could not allocate memory: the data, the model or the stack of runs is too
    large for the device. Not a bug to report, and not a failure of the run in hand."""

    exit_code = 1


def memory_failure(err: BaseException, advice: str = "") -> OutOfMemory | None:
    """An allocation failure (torch.OutOfMemoryError on a GPU, the CPU allocator's RuntimeError,
    numpy's MemoryError) as one line, or None for any other error.

    >>> str(memory_failure(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
    ...     "can't allocate memory: you tried to allocate 1000000000000 bytes. Error code 12 (Cannot allocate memory)")))
    'out of memory: this machine could not allocate 931.3 GiB more for torch'
    """
    text = str(err)
    if type(err).__name__ == "OutOfMemoryError":  # torch's, raised by the CUDA caching allocator
        # "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ...": the
        # first two sentences; the rest is advice about fragmentation.
        reason = ". ".join(text.split(". ")[:2]).rstrip(".")
    elif isinstance(err, MemoryError):
        reason = text or "Python could not allocate memory"
    elif isinstance(err, RuntimeError) and "can't allocate memory" in text:
        tried = re.search(r"tried to allocate (\d+) bytes", text)
        size = f"{int(tried[1]) / 2**30:,.1f} GiB more" if tried else "more memory"
        reason = f"this machine could not allocate {size} for torch"
    else:
        return None
    return OutOfMemory(f"out of memory: {reason}{advice}")


class UserCodeError(BenchError):
    """An exception raised in the user's own code (a problem module of theirs: its data, model or
    loss), told in one line with the file and line it came from. It crosses process boundaries
    as plain text, so a `--jobs` worker's error reads the same."""

    exit_code = 1
    before_storing = False  # raised while a study's data and model were checked: nothing is stored

    @classmethod
    def located(cls, err: BaseException) -> UserCodeError | None:
        """The error as a UserCodeError, or None when it did not come from the user's code (a bug
        of ours keeps its traceback) or when BENCH_TRACEBACK is set."""
        if isinstance(err, UserCodeError):
            return err
        if traceback_asked():
            return None
        frame = user_code_frame(err)
        if frame is None:
            return None
        return cls(f"{type(err).__name__}: {err}, raised in your code at {frame.filename}, line "
                   f"{frame.lineno}, in {frame.name}")


@contextmanager
def nothing_stored_yet() -> Iterator[None]:
    """Errors raised in the user's own code within are told as having stored nothing (not as
    "the runs in hand were queued again"): a study file's problem, imported and built before
    the storage is opened."""
    try:
        yield
    except BenchError:
        raise
    except Exception as err:
        failure = UserCodeError.located(err)
        if failure is None:
            raise
        failure.before_storing = True
        raise failure from None


def user_code_frame(err: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the error's traceback in the user's own code: a problem package of
    theirs (`mark_user_code`), or any file not in this package, the standard library or
    installed packages."""
    paths = sysconfig.get_paths()
    library_dirs = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = Path(frame.filename)
        if not path.is_file():  # <frozen importlib...>, <string>
            continue
        path = path.resolve()
        if any(path.is_relative_to(p) for p in USER_CODE_PATHS):
            return frame
        if not any(path.is_relative_to(d) for d in (PACKAGE_DIR, *library_dirs)):
            return frame
    return None
