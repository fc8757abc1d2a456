"""`bench perf`: how fast stacked training is against one-by-one training and the machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.cli.common import console, err_console, home_path, print_json, print_note, unwritable_folder
from bench.errors import ConfigError


def perf_command(
    study: Annotated[str, typer.Option(callback=home_path, help="The study whose runs are timed.")] = "gridsearch",
    steps: Annotated[int, typer.Option(help="Steps per run (the study's own budget is not needed for a ratio).")] = 300,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    sequential: Annotated[bool, typer.Option(help="Also train the runs one by one (the slow part).")] = True,
    csv: Annotated[Path, typer.Option(callback=home_path, help="CSV file the figures are appended to.")] = Path("results/perf.csv"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the figures.")] = False,
) -> None:
    """Time a study's runs one by one and stacked, and a GradNorm step against an equal one.

    Also: the stacked step's throughput against a large matrix product, and peak memory."""
    from bench.perf import append_csv, run_benchmark
    from bench.study.machine import TrainersHere, running_here
    from bench.training.device import resolve_device

    resolve_device(device, field="--device")  # before the CSV's folder is made
    require_writable(csv)  # before minutes of measuring, not after
    trainers = TrainersHere()
    busy = sum(trainers.processes().values())
    if busy:
        print_note(f"{running_here(busy)}: these timings share its cores with {'it' if busy == 1 else 'them'}, "
                   "and say less of the machine than timings taken alone")
    progress = PerfProgress()
    try:
        with trainers.training():  # a `bench run` started meanwhile leaves it its share of the cores
            figures = run_benchmark(study, steps, device, sequential, progress=progress)
    finally:
        progress.close()
    kept = append_csv(figures, csv)
    if kept is not None:
        print_note(f"{csv} had other columns (another version's figures, or another file): it is kept as "
                   f"{kept}, and {csv} starts again with these figures")
    if as_json:
        print_json(figures)
        return
    table = Table("figure", "value", title=f"bench perf ({figures['device']}, {figures['threads']} threads)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for key, value in figures.items():
        if isinstance(value, dict):
            value = ", ".join(f"T={k}: {v:.2f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"  # 1790 MB, not 1.79e+03
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"appended to {csv}")


class PerfProgress:
    """The benchmark's stages as lines, and its two timed trainings as bars of runs. The bars are
    redrawn only when a batch or a run ends: a refresh thread would compete with the training
    it times for the machine's cores."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.what: str | None = None

    def __call__(self, what: str, done: int | None = None, total: int | None = None) -> None:
        if done is None:
            self.close()
            err_console.print(f"{what}...", style="dim")
            return
        if what != self.what:
            self.close()
            self.what = what
            self.bar = Progress(TextColumn("[dim]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=err_console, auto_refresh=False)
            self.bar.start()
            self.bar.add_task(what, total=total)
        assert self.bar is not None
        self.bar.update(self.bar.task_ids[0], completed=done)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        self.bar, self.what = None, None


def require_writable(csv: Path) -> None:
    """Open `csv` for appending once (creating its folder), or raise a ConfigError naming --csv."""
    if reason := unwritable_folder(csv.parent):
        raise ConfigError("--csv", f"a CSV file that can be written ({reason})", str(csv))
    existed = csv.exists()
    try:
        csv.parent.mkdir(parents=True, exist_ok=True)
        with csv.open("a"):
            pass
    except OSError as err:
        raise ConfigError("--csv", "a CSV file that can be written (it is created if missing)",
                          f"{csv}: {err.strerror or err}") from None
    if not existed:
        csv.unlink()  # an empty file would read as a CSV with another header
