"""`bench compare`: tables of test loss and overfitting gap per arm, and the HTML report."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.text import Text

from bench.cli.common import (arm_table, console, err_console, fmt, home_path, home_paths, print_json, print_note,
                               stored_study_names, unwritable_folder, working)
from bench.errors import BenchError, ConfigError

if TYPE_CHECKING:  # the comparison (pandas, SciPy) loads when the verb runs
    import pandas as pd

    from bench.compare import Comparison

CSV_COLUMNS = ["arm", "runs", "normalized_test_loss", "normalized_train_loss", "normalized_overfitting_gap"]
# Failed runs listed in the terminal, with their reasons; the report lists every one.
FAILED_RUNS_SHOWN = 5


def compare_command(
    study: Annotated[Optional[list[str]], typer.Option(callback=home_paths, help="Stored study, or its study file, to compare (repeatable; default: every study in the storage).")] = None,
    storage: Annotated[Optional[str], typer.Option(callback=home_path, help="Optuna storage (default results/bench.journal).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table (terminal + report), csv or markdown (main table on stdout), or json (per study: summary, arms, paired tests).")] = "table",
    reports: Annotated[str, typer.Option(callback=home_path, help="Folder for reports/<study>/, and reports/index.html, which links them all.")] = "reports",  # report.REPORTS_DIR
    no_report: Annotated[bool, typer.Option("--no-report", help="Print the tables only; write no files.")] = False,
    at_step: Annotated[Optional[str], typer.Option("--at-step", help="Compare the runs as they stood at this evaluation step, the grid's point chosen on validation there (the paper compared at 15k of 80k steps), or with best-val each run at its own best on validation (early stopping); the report goes to reports/<study>@step<N>/ (or @best-val/).")] = None,
) -> None:
    """Compare a study's arms: test loss, overfitting gap, GradNorm against the grid; write the report."""
    if output_format not in ("table", "csv", "markdown", "json"):
        raise ConfigError("--format", "table, csv, markdown or json", output_format)
    from bench.compare.at_step import parse_step

    step = None if at_step is None else parse_step(at_step)
    import pandas as pd

    from bench.compare import load_comparison
    from bench.report import write_report
    from bench.report.html import missing_glyphs, report_storage, write_index
    from bench.store.storage import storage_identity
    from bench.store import DEFAULT_STORAGE, ResultStore

    if not no_report and (reason := unwritable_folder(Path(reports))):  # before minutes of figures
        raise ConfigError("--reports", f"a folder that can be written ({reason}), or --no-report", reports)
    with working(f"reading {storage or DEFAULT_STORAGE}"):
        store = ResultStore(storage, create=False)
        names = stored_study_names(store, study)
    mains, objects, index = [], {}, None
    for name in names:
        with working(f"comparing the arms of {name}"):
            comparison = load_comparison(store, name, step)
        main = comparison.main.assign(study=name)
        if step is not None:
            main = main.assign(at_step=step)
        mains.append(main)
        # The report first: output cut short (`bench compare | head`) ends the process at the print.
        if not no_report:
            previous = report_storage(Path(reports) / comparison.report_name)
            try:
                with working(f"drawing the report of {name}"), missing_glyphs() as missing:
                    path = write_report(comparison, Path(reports), storage)
                    index = write_index(Path(reports))  # with the report: a cut pipe ends us at the print
            except OSError as err:
                raise BenchError(f"cannot write the report of {comparison.title} to "
                                 f"{Path(reports) / comparison.report_name}: {err.strerror or err} ({err.filename}); "
                                 "pass --reports with another folder, or --no-report") from None
            if missing:
                print_note(f"the report's figures show {''.join(sorted(missing))} (in the names of arms or tasks) "
                           "as boxes: matplotlib's fonts here lack them. The report's tables and text have them")
        if output_format == "table":
            print_comparison(comparison)
        objects[name] = _comparison_object(comparison, None if no_report else path)
        if not no_report:
            (err_console if output_format != "table" else console).print(f"report: {path}")
            if previous not in (None, storage_identity(storage)):
                print_note(f"{path.parent} held the report of a study {name!r} in another storage ({previous}); "
                           "it now holds this storage's. To keep each storage's reports apart, pass --reports DIR")
    if index is not None and len(list(Path(reports).glob("*/index.html"))) > 1:
        (err_console if output_format != "table" else console).print(f"all reports: {index}")
    if output_format == "json":  # for a script: `bench compare --format json | jq '.gridsearch.summary[0]'`
        print_json(objects)
    elif output_format != "table":
        frame = pd.concat(mains, ignore_index=True)
        columns = (["study"] if len(names) > 1 else []) + CSV_COLUMNS + [
            c for c in frame.columns if c not in CSV_COLUMNS + ["study"]]
        frame = frame[columns]
        if output_format == "csv":
            frame.to_csv(sys.stdout, index=False)
        else:
            from bench.report.html import markdown_table

            sys.stdout.write(markdown_table(frame))


def _comparison_object(c: "Comparison", report: Path | None) -> dict:
    """A study's comparison as JSON: the step it was compared at (null: its runs' end), the
    summary's sentences, one object per row of the arms
    table and of the paired tests (a missing value is null), each grid's chosen point and each
    arm's chosen alpha or learning rate (`choices`; `alpha_choices`: those of alpha alone) with
    the choice made again without each seed, the arms that
    trained exactly as another (arm: that arm), and the report's path."""
    import json

    def rows(frame: pd.DataFrame) -> list[dict]:
        return json.loads(frame.to_json(orient="records", double_precision=15)) if not frame.empty else []

    grids = {arm: {"selected_point": g.selected, "weights": g.weights, "chosen_without_each_seed": rows(g.held_out),
                   "weighted_all_point": g.weighted_all,
                   "weighted_all_chosen_without_each_seed": rows(g.weighted_all_held_out)}
             for arm, g in c.grids.items()}
    choices = {arm: {"setting": a.what, "chosen": a.chosen_variant,
                     "chosen_without_each_seed": rows(a.held_out.rename(columns={"point": "variant"}))}
               for arm, a in c.choices.items()}
    # As before learning rates could be chosen too: the choices of alpha alone, the variant as "alpha".
    alphas = {arm: {"chosen": a.chosen_variant,
                    "chosen_without_each_seed": rows(a.held_out.rename(columns={"point": "alpha"}))}
              for arm, a in c.choices.items() if a.what == "alpha"}
    return {"at_step": c.at_step, "summary": list(c.headline), "arms": rows(c.main),
            "paired_tests": rows(c.comparisons.drop(columns=["sentence"], errors="ignore")),
            "grids": grids, "choices": choices, "alpha_choices": alphas, "same_runs": dict(c.twins),
            "report": str(report) if report else None}


def weight_text(w: float) -> str:
    """A task weight in the terminal: two decimals, and two significant digits below 0.005, so
    that a weight of 0.0002 (loss-scale weights at sigma = 100) does not read as a weight of 0.

    >>> [weight_text(w) for w in (2.8134, 0.0002, 0.0, 0.011)]
    ['2.81', '0.0002', '0.00', '0.01']
    """
    return f"{w:.2f}" if w == 0 or abs(w) >= 0.005 else f"{w:.2g}"


def print_comparison(c: Comparison) -> None:
    console.rule(Text(c.title, style="bold"))
    if c.unfinished:
        console.print(Text(c.unfinished, style="bold yellow"))
    for line in c.headline:
        console.print(f"- {line}")
    rows = []
    for row in c.main.itertuples():
        # Four significant digits, as in the sentences: arms often differ in the third.
        half = (row.test_ci95_high - row.test_ci95_low) / 2 if row.seeds > 1 else None
        rows.append((row.arm, str(row.runs), str(row.failed), fmt(row.normalized_test_loss), fmt(half, 2),
                     fmt(row.test_std, 2), fmt(row.normalized_train_loss), fmt(row.normalized_overfitting_gap, 3),
                     f"{row.wall_time_s:.1f}" if row.wall_time_s < 10 else f"{row.wall_time_s:.0f}"))
    table = arm_table("task-normalised losses, mean over seeds (± half the 95% interval)",
                      ("runs", "failed", "test", "± 95%", "sd", "train", "gap", "sec"), rows)
    console.print(table)
    for row in c.main.itertuples():
        if not all(math.isnan(w) for w in row.weights):  # an arm whose runs all failed has none
            console.print(f"  weights of {row.arm}: (" + ", ".join(weight_text(w) for w in row.weights) + ")")
    # The paired comparisons, described (the headline above gives the verdicts), under the
    # report's heading: without it they read as the summary printed twice.
    if c.paired_sentences:
        console.print("paired comparisons over seeds:")
    for sentence in c.paired_sentences:
        console.print(f"- {sentence}")
    if not c.failures.empty:
        console.print(f"failed runs: {len(c.failures)}, left out of every mean above")
        for row in c.failures.head(FAILED_RUNS_SHOWN).itertuples():
            console.print(f"  {row.arm} {row.run_key}: {row.reason}")
        if len(c.failures) > FAILED_RUNS_SHOWN:
            console.print(f"  and {len(c.failures) - FAILED_RUNS_SHOWN} more: the report lists them all")
