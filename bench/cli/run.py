"""`bench run`: run a study (every arm, every seed) into a result store."""

from __future__ import annotations

import datetime
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.cli.common import arm_table, console, err_console, fmt, home_path, print_note, unwritable_folder, working
from bench.errors import BenchError, ConfigError, nothing_stored_yet
from bench.formatting import count
from bench.store.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL

if TYPE_CHECKING:  # pandas loads with the verbs that read results
    import pandas as pd

QUICK_FACTOR = 0.1
LOG_EVERY_S = 60.0  # where stderr is a log file, a progress line this often
MAX_SEEDS = 1000  # each seed is a run of every arm: more is a typo, not a study


def parse_seeds(text: str) -> list[int]:
    """'0,1,2', '0-4' or a mix: '0-2,7'."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError("--seeds", "a list such as 0,1,2 or a range such as 0-4", text)
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise ConfigError("--seeds", "ranges low-high with low <= high", text)
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:  # counted before listing: 0-100000000 must fail at once
            raise ConfigError("--seeds", f"at most {MAX_SEEDS:,} seeds (each is a run of every arm)", text)
        seeds.extend(range(lo, hi + 1))
    return seeds


class ProgressLines:
    """Progress as a line every LOG_EVERY_S seconds, where stderr is no terminal (a log file, a
    batch job's output): rich draws its bar there once, at the end, so a long study's log said
    nothing for its whole run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = self.last = clock()
        self.waiting = ""

    def report(self, done: float, total: int, seconds_left: float | None) -> None:
        now = self.clock()
        waiting, self.waiting = self.waiting, ""  # said again at each poll for as long as it lasts
        if now - self.last < LOG_EVERY_S or done >= total:  # rich prints the last one
            return
        self.last = now
        elapsed = now - self.start
        line = f"training: {int(done)}/{total} runs, {_duration(elapsed)} elapsed"
        if seconds_left is not None:
            line += f", about {_duration(seconds_left)} left"
        err_console.print(line + (f"; {waiting}" if waiting else ""), soft_wrap=True)

    def wait(self, what: str) -> None:
        """What the worker waits for (other workers' runs), told with the next line."""
        self.waiting = what


def _duration(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


def run_command(
    study: Annotated[str, typer.Option(callback=home_path, help="A study file, or the name of one here or in studies/.")],
    storage: Annotated[Optional[str], typer.Option(callback=home_path, help="Optuna storage: a journal file path (default results/bench.journal) or an RDB URL such as postgresql://user@host/db.")] = None,
    jobs: Annotated[int, typer.Option(help="Parallel training processes (joblib), at most one per core this process may use.")] = 1,
    seeds: Annotated[Optional[str], typer.Option(help="Seeds to run, e.g. 0,1,2 or 0-4 (default: the study's). More seeds add runs to the same study.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help=f"A quick look: {QUICK_FACTOR:.0%} of the steps, stored as its own study <name>-quick.")] = False,
    new_version: Annotated[bool, typer.Option("--new-version", help="If the study's configuration changed, store it as <name>-vN instead of stopping.")] = False,
    batch_runs: Annotated[Optional[int], typer.Option(help="Runs stacked into one model at most (default: automatic).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda[:N].")] = "auto",
    heartbeat: Annotated[int, typer.Option(help="Seconds between heartbeats of runs in hand.")] = HEARTBEAT_INTERVAL,
    grace: Annotated[int, typer.Option(help="Seconds without a heartbeat after which other workers retrain this worker's runs (recorded with them; it waits as long for theirs, or as long as they asked).")] = GRACE_PERIOD,
    backend: Annotated[str, typer.Option(help="loky (local processes, --jobs) or dask (an existing cluster, --scheduler).")] = "loky",
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address, e.g. tcp://10.0.0.5:8786.")] = None,
    tables: Annotated[str, typer.Option(callback=home_path, help="Folder for the tables <folder>/<study>/runs.*, and metrics.* and curves.parquet (long form).")] = "results",  # export.RESULTS_DIR
) -> None:
    """Run every arm of a study for every seed, storing each run in an Optuna storage."""
    from bench.store import DEFAULT_STORAGE, ResultStore
    from bench.store.export import runs_table, write_runs_table
    from bench.study import StudyRunner, StudySpec, check_data

    with nothing_stored_yet():  # loading the study imports and builds its problem: the user's code
        spec = StudySpec.load(study)
        if seeds is not None:
            spec = spec.with_seeds(parse_seeds(seeds))
        if quick:
            spec = spec.quick(QUICK_FACTOR)
    StudyRunner.check_options(jobs, device, backend, scheduler)
    if reason := unwritable_folder(Path(tables)):  # the tables are written once every run is
        raise ConfigError("--tables", f"a folder that can be written ({reason})", tables)
    if batch_runs is not None and batch_runs < 1:
        raise ConfigError("--batch-runs", "an integer >= 1", batch_runs)
    if heartbeat < 1:
        raise ConfigError("--heartbeat", "a whole number of seconds >= 1", heartbeat)
    if grace <= heartbeat:
        # A shorter grace would declare live runs dead between two beats and retrain them.
        raise ConfigError("--grace", f"more seconds than --heartbeat ({heartbeat})", grace)
    if backend == "loky":  # a Dask client need not hold the data its workers read
        # Before the storage is opened: missing data leaves no new, empty journal behind either.
        with working("loading the first seed's data"):
            check_data(spec, device)
    with working(f"reading {storage or DEFAULT_STORAGE}"):
        store = ResultStore(storage, heartbeat_interval=heartbeat, grace_period=grace)
    for note in store.notes:
        print_note(note)
    runner = StudyRunner(spec, store, jobs=jobs, batch_runs=batch_runs, device=device,
                         new_version=new_version, backend=backend, scheduler=scheduler, on_note=print_note)
    for note in runner.notes:
        print_note(note)
    console.print(Text.assemble("study ", (spec.name, "bold"), f" from {spec.path}: {count(len(spec.runs()), 'run')} "
                                f"({', '.join(f'{a}: {len(arm.runs(spec.seeds))}' for a, arm in spec.arms.items())}), "
                                f"seeds {spec.seeds}, {spec.budget.steps} steps each"))
    opened = len(store.notes)
    runner.prepare()  # refuses a changed configuration before anything is shown or trained
    for note in store.notes[opened:]:  # what registering the study did to the storage
        print_note(note)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn(), TextColumn("eta"),
                  TextColumn("[progress.remaining]{task.fields[left]}"), console=err_console,
                  transient=False) as progress:
        # The time left is the runner's: it knows the stacks still to train (see bench.study.time_left).
        task = progress.add_task("training", total=sum(len(runs) for runs in runner.runs.values()),
                                 left=_duration(None))

        lines = None if err_console.is_terminal else ProgressLines()

        def report(done: float, total: int) -> None:
            seconds_left = runner.seconds_left() if done < total else 0.0
            progress.update(task, completed=done, total=total, description="training",
                            left=_duration(seconds_left))
            if lines is not None:
                lines.report(done, total, seconds_left)

        def waiting(holders: dict[str, int]) -> None:
            # Until a silent worker's runs come back (--grace after its last heartbeat), say why.
            held = ", ".join(f"{w} ({count(n, 'run')})" for w, n in sorted(holders.items()))
            progress.update(task, description=f"waiting for {held}" if held else "waiting")
            if lines is not None:
                lines.wait(f"waiting for {held}" if held else "waiting")

        runner.on_progress, runner.on_wait = report, waiting
        final = runner.run()
        progress.update(task, completed=final.done, total=final.total, left=_duration(0))
    name = runner.name
    entries = store.records(name)  # every record, read once: for the tables and the summary
    table = runs_table(store, name, entries)
    try:
        paths, replaced = write_runs_table(store, name, Path(tables), table, entries)
    except OSError as err:
        raise BenchError(f"every run is stored in {store.url}, but the tables could not be written "
                         f"to {Path(tables) / name}: {err.strerror or err}") from None
    if replaced:
        print_note(f"{Path(tables) / name} held the tables of a study {name!r} in another storage ({replaced}); "
                   "they now hold this storage's. To keep each storage's tables apart, pass --tables DIR: "
                   "`bench run` on a finished study writes its tables without training again")
    print_arm_summary(table)
    # `done` counts failed runs too: a failed run is settled, never retried by a later `bench run`.
    console.print(f"{final.done} of {final.total} runs finished in study {name} "
                  f"({final.done - final.failed} ok, {final.failed} failed); {runner.trained_here} trained now")
    console.print(f"results: {store.url} (Optuna studies {name}/<arm>; open with "
                  f"`optuna-dashboard {shlex.quote(store.url)}`)")
    console.print(f"tables:  {paths[0].parent}/ ({', '.join(p.name for p in paths)})")
    console.print(f"next:    bench compare --study {shlex.quote(name)}"  # a command to paste
                  + (f" --storage {shlex.quote(storage)}" if storage else ""))


def print_arm_summary(table: pd.DataFrame) -> None:
    if table.empty:
        return
    rows = []
    for arm, runs in table.groupby("arm", sort=False):
        ok = runs[runs.status == "ok"]
        rows.append((arm, str(len(runs)), str(int((runs.status == "failed").sum())),
                     fmt(ok.normalized_val_loss.mean() if len(ok) else None),
                     fmt(ok.normalized_test_loss.mean() if len(ok) else None),
                     f"{runs.wall_time_s.sum():.1f}"))
    out = arm_table("task-normalised losses, mean over each arm's runs",
                    ("runs", "failed", "val", "test", "total time (s)"), rows)
    console.print(out)
    if "kind" in table and (table.kind == "grid").any():
        # A grid's mean over all its points, bad ones included, read as GradNorm beating it.
        console.print("A grid's row is the mean over all its points; `bench compare` chooses its point on "
                      "validation and sets it against the other arms.")
