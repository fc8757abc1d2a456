"""`bench status`: how far a study stored in a storage has come, per arm."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.text import Text

from bench.cli.common import arm_table, console, home_path, home_paths, print_json, stored_study_names, working
from bench.errors import ConfigError
from bench.formatting import count
from bench.store.storage import GRACE_PERIOD

if TYPE_CHECKING:
    from bench.store import ResultStore


def status_command(
    study: Annotated[Optional[list[str]], typer.Option(callback=home_paths, help="Stored study, or its study file (repeatable; default: every study in the storage).")] = None,
    storage: Annotated[Optional[str], typer.Option(callback=home_path, help="Optuna storage (default results/bench.journal).")] = None,
    grace: Annotated[int, typer.Option(help="Seconds without a heartbeat after which a worker counts as stopped, as `bench run --grace`: a worker started with a longer --grace gets its own.")] = GRACE_PERIOD,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: per study, each arm's counts and the total, and the workers.")] = False,
) -> None:
    """Progress of a study: runs done, running, failed and left, per arm and in total."""
    from bench.store import DEFAULT_STORAGE, ResultStore

    if grace < 1:
        raise ConfigError("--grace", "a whole number of seconds >= 1", grace)
    with working(f"reading {storage or DEFAULT_STORAGE}"):
        store = ResultStore(storage, grace_period=grace, create=False)
        names = stored_study_names(store, study)
    if as_json:  # for a script that waits on a study: `bench status --json | jq .gridsearch.all.left`
        print_json({name: _progress_object(store, name) for name in names})
        return
    for name in names:
        progress = store.stored_progress(name)
        rows: list[Sequence[str | Text]] = []
        total = None
        for arm, p in progress.items():
            rows.append((arm, str(p.total), str(p.done), str(p.failed), str(p.running), str(p.waiting), str(p.left)))
            total = p if total is None else total + p
        if total is not None:
            rows.append([Text(str(v), style="bold") for v in ("all", total.total, total.done, total.failed,
                                                               total.running, total.waiting, total.left)])
        table = arm_table(f"{name} in {store.url}", ["runs", "done", "failed", "running", "waiting", "left"], rows)
        console.print(table)
        lost = 0 if total is None else total.left - total.running - total.waiting
        if lost:
            console.print(f"{count(lost, 'run')} given back but not queued again (the storage failed in "
                          f"between): `bench run` queues {'it' if lost == 1 else 'them'}")
        workers, silent = store.workers(name), store.silent_workers(name)
        if workers:
            console.print("running on: " + ", ".join(f"{w} ({count(n, 'run')})" for w, n in sorted(workers.items())))
        if silent:
            console.print("silent, so stopped (killed, or its machine lost): "
                          + ", ".join(f"{w} ({count(n, 'run')}, no heartbeat for over {seconds:g} s)"
                                      for w, (n, seconds) in sorted(silent.items()))
                          + "; the next `bench run` on this storage queues those runs again")


def _progress_object(store: ResultStore, name: str) -> dict:
    """A study's counts per arm and in total (`left` = runs not done), and its workers' runs."""
    from bench.store.results import StudyProgress

    progress = store.stored_progress(name)
    arms = {arm: {**dataclasses.asdict(p), "left": p.left} for arm, p in progress.items()}
    total = sum(progress.values(), start=StudyProgress(0, 0, 0, 0, 0))
    silent = store.silent_workers(name)
    return {"storage": str(store.url), "arms": arms, "all": {**dataclasses.asdict(total), "left": total.left},
            "workers": store.workers(name), "silent_workers": {w: n for w, (n, _) in silent.items()}}
