"""Helpers shared by the CLI verbs: option parsing, consoles, output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.errors import BenchError, ConfigError, UserCodeError
from bench.formatting import format_number

if TYPE_CHECKING:  # the verbs import what they use when they run: `bench --help` loads none of it
    from bench.store import ResultStore
    from bench.study import StudySpec

# No markup: what is printed quotes the user's names, paths and TOML tables ("grid[fine]",
# "[budget]"), which rich would read as tags and drop. Styles are given explicitly (Text, style=).
console = Console(highlight=False, markup=False)
err_console = Console(stderr=True, highlight=False, markup=False)


def home_path(value: Any) -> Any:
    """A path option's value with a leading ~ expanded, as a typer callback (a string or a Path).
    The shell expands `--storage ~/x` but not `--storage=~/x`, which would otherwise make a
    folder named ~ in the working directory. An SQLite URL's path is expanded too
    (sqlite:///~/runs.db); other URLs and names are left alone."""
    if isinstance(value, str):
        if value.startswith("sqlite:///~"):  # SQLAlchemy takes the path as written
            return "sqlite:///" + os.path.expanduser(value.removeprefix("sqlite:///"))
        return os.path.expanduser(value)
    if isinstance(value, Path):
        return value.expanduser()
    return value


def home_paths(values: list[str] | None) -> list[str]:
    """`home_path` for a repeatable option, never None: typer before 0.19 takes the length of
    what the callback returns, and an option not given (None) failed with a TypeError."""
    return [home_path(value) for value in values or []]


def unwritable_folder(folder: Path) -> str | None:
    """Why `folder` cannot be made or written ("afile is not a folder"), or None if it can. Checked
    before the work whose output goes there: a file on the way otherwise failed only at the end."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def print_note(note: str) -> None:
    """A note for the user on stderr: something done that they should know of, not an error."""
    err_console.print(Text.assemble(("note:", "yellow"), f" {note}"), soft_wrap=True)


def working(what: str) -> contextlib.AbstractContextManager:
    """A spinner on stderr saying what is being done, while it is done, on a terminal only
    (nothing in a log or a pipe). For the seconds a verb would otherwise sit silent: replaying
    a large journal, drawing a report's figures."""
    if not err_console.is_terminal:
        return contextlib.nullcontext()
    return err_console.status(what, spinner="dots")


def parse_assignments(items: Iterable[str] | None, option: str) -> dict[str, object]:
    """`["a=1", "b=x,y"]` -> {"a": "1", "b": "x,y"}; values are coerced later by their option's type
    (the dict takes the named options' values too: `set_once`)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(option, "KEY=VALUE", item)
        if key.strip() in out:  # else the last one silently won
            raise ConfigError(option, f"each KEY once ({key.strip()}={out[key.strip()]} came first)", item)
        out[key.strip()] = value.strip()
    return out


def set_once(params: dict[str, object], key: str, value: object, option: str, short: str) -> None:
    """`params[key] = value` from the named option `option`, refused when `short KEY=VALUE`
    gave it already: which of the two wins is a guess the user should not have to make."""
    if value is None:
        return
    if key in params:
        raise ConfigError(option, f"{key} once: as {option} or as {short} {key}=..., not both "
                                  f"({short} {key}={params[key]})", value)
    params[key] = value


def print_json(data: Any) -> None:
    """Exactly one strict JSON object on stdout: non-finite numbers (a diverged run's losses)
    become null, since NaN and Infinity are not JSON and jq and most parsers refuse them."""
    sys.stdout.write(json.dumps(_strict(data), allow_nan=False) + "\n")
    sys.stdout.flush()


def _strict(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def arm_table(title: str, numeric_columns: Sequence[str], rows: Iterable[Sequence[str | Text]],
              key: str = "arm") -> Table:
    """A table of one row per arm (or per `key`): no vertical rules, so that it fits 80 columns
    (a log, a CI page). When it would not fit (a runaway run's numbers widen their columns),
    names break after a hyphen ("gradnorm-floor-" / "static") rather than mid-word; on a console
    narrower still, the headers are cut ("runn…"), and numbers only where even their digits do
    not fit: "1…" for 198 runs would read as a number."""
    cells = [list(row) for row in rows]
    headers = list(numeric_columns)
    table = _arm_table(title, headers, cells, key)
    excess = _excess(table)
    if excess <= 0:
        return table
    longest = max(len(Text(str(row[0])).plain) for row in cells) if cells else 0
    width = max(len(key), longest - excess, 8)
    for row in cells:
        if isinstance(row[0], str):
            row[0] = "\n".join(textwrap.wrap(row[0], width, break_on_hyphens=True)) or row[0]
    table = _arm_table(title, headers, cells, key)
    excess = _excess(table)
    # Cut the longest header (the rightmost of equals) a letter at a time, down to its numbers' width.
    widest = [max((Text(str(row[i])).cell_len for row in cells if len(row) > i), default=1)
              for i in range(1, len(headers) + 1)]
    shown = [len(h) for h in headers]
    while excess > 0:
        cuttable = [i for i, (n, w) in enumerate(zip(shown, widest)) if n > max(w, 2)]
        if not cuttable:
            break
        shown[max(cuttable, key=lambda i: (shown[i], i))] -= 1
        excess -= 1
    if shown != [len(h) for h in headers]:
        headers = [h if n == len(h) else h[:n - 1] + "…" for h, n in zip(headers, shown)]
        table = _arm_table(title, headers, cells, key)
    return table


def _excess(table: Table) -> int:
    """How many columns wider than the console the table is, measured unbounded: rich clamps a
    measurement to the console's width."""
    return console.measure(table, options=console.options.update(width=10_000)).maximum - console.width


def _arm_table(title: str, numeric_columns: Sequence[str], rows: list[list], key: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # Names are wrapped above, at hyphens: rich's own folding would break them at any letter,
    # or drop the column entirely on a narrow console.
    table.add_column(key, no_wrap=True, min_width=8)
    for column in numeric_columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a terminal table: the report's format, one digit fewer in scientific notation."""
    return format_number(value, digits, exponent_digits=max(1, digits - 1))


def stored_study_names(store: ResultStore, requested: Iterable[str] | None) -> list[str]:
    """The stored names of the studies asked for (default: every one in the store). Each is a
    stored name, or a study file (path or name in studies/) whose study is stored under its
    `name`: `bench compare --study my.toml` reads what `bench run --study my.toml` wrote."""
    if not requested:
        names = store.study_names()
        if not names:
            raise ConfigError("--study", f"a study stored in {store.url} (none yet: run `bench run --study gridsearch`)")
        return names
    out = []
    for name in requested:
        if store.manifest(name) is None:
            from bench.study import StudySpec  # only for a file's name: loading it imports torch

            try:
                spec = StudySpec.load(name)
            except ConfigError as err:
                if Path(name).is_file():  # a study file that no longer loads (its problem's module gone)
                    raise _file_refused(err, store) from None
                spec = None  # no study file either: the store's error below names what it holds
            except Exception as err:  # its problem's module raised as it was imported
                failure = UserCodeError.located(err)
                if failure is None:  # a bug of ours, or BENCH_TRACEBACK: the traceback
                    raise
                raise _file_refused(failure, store) from None
            if spec is not None:
                name = stored_version_of(store, spec, name)
        store.require_manifest(name)
        if name not in out:  # `--study tiny --study tiny.toml`: one study, compared once
            out.append(name)
    return out


def _file_refused(err: ConfigError | UserCodeError, store: ResultStore) -> BenchError:
    """A study file's own error ("no study named 'my.toml'" read as if the file were not there),
    with the stored studies, which can be named without their file."""
    stored = store.study_names()
    if not stored:
        return err
    shown = ", ".join(stored[:5]) + (", ..." if len(stored) > 5 else "")
    also = f"a stored study can be named instead of its file (in {store.url}: {shown})"
    if isinstance(err, UserCodeError):
        return UserCodeError(f"{err}; {also}")
    return ConfigError(err.field, err.expected, err.got, source=err.source,
                       hint=f"{err.hint}; {also}" if err.hint else also)


def stored_version_of(store: ResultStore, spec: StudySpec, path: str) -> str:
    """The stored version of the study a file describes now: the one with its configuration
    (`name`, or `name-vN` after --new-version), never an older one the file no longer describes."""
    stored = store.stored_version(spec.name, spec.config_hash(), spec.legacy_hashes())
    if stored is not None:
        return stored
    versions = store.versions(spec.name)  # read again only to name them in the error
    if not versions:
        return spec.name  # nothing stored: the store's own error names what it holds
    from bench.store.results import added_arms, configuration_changes

    latest, manifest = versions[-1]
    changes = configuration_changes(manifest.get("identity"), spec.identity())
    run = f"bench run --study {shlex.quote(path)}"
    first = dict(versions).get(spec.name, {})
    if not added_arms(first.get("identity"), spec.identity()):  # new arms alone extend the study itself
        run += " --new-version"
    raise BenchError(
        f"{path}: its configuration has not been run: no stored version of study {spec.name!r} "
        f"({', '.join(v for v, _ in versions)}) has it{f' (since {latest}: {changes})' if changes else ''}; "
        f"run it with `{run}`, or name a stored version with --study")
