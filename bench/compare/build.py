"""A study's comparison, built in two steps: its tables and paired tests (`analysis`), then the
summary's sentences about them (`summary`)."""

from __future__ import annotations

import shlex
from typing import Any

import pandas as pd

from bench.compare.analysis import Comparison, NothingToCompare, analyse, run_command
from bench.compare.at_step import runs_at_step
from bench.compare.summary import headline
from bench.store import DEFAULT_STORAGE
from bench.store.export import runs_frame
from bench.store.results import ResultStore, StudyProgress
from bench.store.storage import shareable_url


def build_comparison(study: str, manifest: dict[str, Any], runs: pd.DataFrame,
                     records: list[dict[str, Any]], at_step: int | str | None = None) -> Comparison:
    """The comparison of stored study `study` from its manifest, its runs (`runs_table`) and
    their records: tables, tests and summary. `at_step`: the step the runs were read at
    (`entries_at_step`), which the summary says first."""
    comparison = analyse(study, manifest, runs, records)
    comparison.at_step = at_step
    comparison.headline = headline(comparison)
    return comparison


def load_comparison(store: ResultStore, study: str, at_step: int | str | None = None) -> Comparison:
    """Stored study `study`, compared at the end of its runs, or as they stood at evaluation step
    `at_step` (or each at its best on validation: "best-val"); where nothing compares yet because
    it is still training or was stopped, the error says how to watch it or go on."""
    manifest = store.require_manifest(study)
    entries = store.records(study)
    progress = sum(store.stored_progress(study).values(), StudyProgress(0, 0, 0, 0, 0))
    storage = shareable_url(store.url) if store.url != DEFAULT_STORAGE else None
    # The records stay as stored (their curves, trajectories): the runs table reads them at the step.
    runs = runs_frame(manifest, entries) if at_step is None else runs_at_step(manifest, entries, at_step, study)
    try:
        comparison = build_comparison(study, manifest, runs, entries, at_step)
    except NothingToCompare as err:
        if progress.left == 0:
            raise
        # Interrupted, or still training: say so, and how to go on, not only that nothing compares.
        where = f" --storage {shlex.quote(storage)}" if storage else ""
        stored = f"{progress.done} of {progress.total} runs are stored"
        if progress.running:  # a worker is on it: where to watch it, rather than how to start it
            raise NothingToCompare(f"{err}; {study} is being trained ({stored}, {progress.running} running): "
                                   f"`bench status --study {study}{where}` shows how far it has come") from None
        command = run_command(study, manifest, runs.seed.dropna().astype(int).tolist() if len(runs) else [])
        raise NothingToCompare(f"{err}; {study} is not finished ({stored}): `{command}{where}` trains the rest"
                               ) from None
    comparison.progress = progress
    comparison.storage = storage
    return comparison


__all__ = ["build_comparison", "load_comparison"]
