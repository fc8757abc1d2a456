"""`bench delete`: remove a stored study from its storage, after asking."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.common import console, err_console, home_path, print_note, stored_study_names, working
from bench.errors import BenchError
from bench.formatting import count


def delete_command(
    study: Annotated[str, typer.Option(callback=home_path, help="Stored study to delete (as `bench status` names it), or its study file.")],
    storage: Annotated[Optional[str], typer.Option(callback=home_path, help="Optuna storage (default results/bench.journal).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete a stored study: every arm's runs and the study's record. Asks first; cannot be undone."""
    from bench.store import DEFAULT_STORAGE, ResultStore

    with working(f"reading {storage or DEFAULT_STORAGE}"):
        store = ResultStore(storage, create=False)
        (name,) = stored_study_names(store, [study])
        progress = store.stored_progress(name)
    for note in store.notes:
        print_note(note)
    done = sum(p.done for p in progress.values())
    failed = sum(p.failed for p in progress.values())
    what = (f"study {name!r} in {store.url}: {count(done, 'finished run')} ({failed} failed) in "
            f"{count(len(progress), 'arm')}")
    if not yes:
        if not sys.stdin.isatty():
            raise BenchError(f"not deleting {what}: there is no terminal to ask on; pass --yes to "
                             "delete without asking")
        if not typer.confirm(f"Delete {what}? This cannot be undone", default=False, err=True):
            err_console.print("nothing deleted")
            raise typer.Exit(1)
    with working(f"deleting {name}"):
        store.delete(name)
    console.print(f"deleted {what}", soft_wrap=True)
    # Tables and reports are files, views of the storage: the user's to keep or remove.
    views = [str(folder) for folder in (Path("results") / name, Path("reports") / name) if folder.is_dir()]
    if views:
        console.print(f"files of a study of that name, left as they are: {' and '.join(views)}", soft_wrap=True)
