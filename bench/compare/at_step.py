"""A study's runs as they stood at one of their evaluation steps (`bench compare --at-step`).

The paper compares its grid with GradNorm at 15k of 80k steps, and a verdict at the end of a
budget need not hold earlier. Every run keeps its per-task train, validation and test losses at
each evaluation (its record's curves), so the comparison at step N reads them there rather than
training again: a run trained N steps under a constant learning rate is the same network. The
grid's point is then chosen on validation at step N too; weights and times stay the whole run's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.store.export import runs_frame, task_normalised

if TYPE_CHECKING:
    import pandas as pd

OPTION = "--at-step"
# `--at-step best-val`: each run at its own evaluation with the lowest task-normalised validation
# loss, as early stopping keeps it.
BEST_VALIDATION = "best-val"


def evaluation_steps(entries: list[dict[str, Any]]) -> list[int]:
    """The evaluation steps, after the first, that every finished run has (`store.records`'s
    entries); a failed run is not asked for the steps after it failed.

    >>> ok = lambda steps: {"status": "ok", "record": {"curves": {"step": steps}}}
    >>> evaluation_steps([ok([0, 5, 10]), ok([0, 5, 10, 15])])
    [5, 10]
    """
    common: set[int] | None = None
    for entry in entries:
        if entry.get("status") != "ok":
            continue
        steps = set(_steps(entry["record"]))
        common = steps if common is None else common & steps
    return sorted(s for s in common or () if s > 0)


def entries_at_step(entries: list[dict[str, Any]], step: int | str, study: str) -> list[dict[str, Any]]:
    """`entries` (`store.records`) with each run's losses, normalised losses, overfitting gaps and
    selection value those of its evaluation at `step` (from its curves, stored to 4 significant
    digits), and its final metrics left out (they are measured at the end only); a finished run
    whose last evaluation is `step` is as stored. A run that failed after `step` had finite losses
    there and counts as finished; one that failed at `step` or before stays failed. A step that
    some finished run was not evaluated at is refused, naming the steps that every one was.

    `step = "best-val"`: each run at its own evaluation after the first (before it failed, if it
    did) with the lowest task-normalised validation loss (the first of equals), as early stopping
    would keep it; the final metrics are left out of every run, so that no mean mixes the two.
    Each record read at a step holds it as `read_at_step`."""
    if step == BEST_VALIDATION:
        return [_entry_at_step(entry, best, metrics=False) if (best := _best_validation_step(entry)) else entry
                for entry in entries]
    steps = evaluation_steps(entries)
    if step not in steps:
        raise ConfigError(OPTION, f"{BEST_VALIDATION} or an evaluation step that every finished run of {study} "
                          f"has: {_steps_words(steps)}", step)
    return [_entry_at_step(entry, int(step)) for entry in entries]


def parse_step(text: str) -> int | str:
    """`--at-step`'s value: a whole number, or best-val.

    >>> parse_step("300"), parse_step("best-val")
    (300, 'best-val')
    """
    if text == BEST_VALIDATION:
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(OPTION, f"an evaluation step (a whole number) or {BEST_VALIDATION}", text) from None


def validation_curve(record: dict[str, Any] | None) -> dict[int, float]:
    """A run's task-normalised validation loss at each evaluation, from its stored curves; an
    evaluation with a loss stored as null (not finite) is left out.

    >>> validation_curve({"normalisers": [1.0, 10.0], "curves": {"step": [0, 5], "val": [[2.0, 20.0], [1.0, None]]}})
    {0: 4.0}
    """
    record = record or {}
    normalisers = record.get("normalisers") or []
    return {step: task_normalised(losses, normalisers)
            for step, losses in zip(_steps(record), (record.get("curves") or {}).get("val", []))
            if None not in losses}


def _best_validation_step(entry: dict[str, Any]) -> int | None:
    """The run's evaluation after the first, and before it failed, with the lowest task-normalised
    validation loss; None where it has none."""
    record = entry["record"] or {}
    failed = entry.get("status") != "ok"
    end = record.get("failed_step") or 0
    best, lowest = None, math.inf
    for step, value in validation_curve(record).items():
        if step > 0 and not (failed and step >= end) and value < lowest:
            best, lowest = step, value
    return best


def _entry_at_step(entry: dict[str, Any], step: int, metrics: bool = True) -> dict[str, Any]:
    record = entry["record"] or {}
    steps = _steps(record)
    if step not in steps or (entry["status"] != "ok" and not (record.get("failed_step") or 0) > step):
        return entry
    if entry["status"] == "ok" and step == steps[-1]:  # its end: the record's own losses, every digit kept
        return {**entry, "record": {**record, "read_at_step": step, **({} if metrics else {"metrics": {}})}}
    at = steps.index(step)
    # A loss that was not finite may be stored as null (JSON has no inf): NaN, as the means skip it.
    losses = {split: [math.nan if v is None else v for v in record["curves"][split][at]]
              for split in ("train", "val", "test")}
    normalisers = record["normalisers"]
    normalised = {split: task_normalised(values, normalisers) for split, values in losses.items()}
    record = {**record, "status": "ok", "failed_step": None, "reason": None, "metrics": {}, "read_at_step": step,
              **{f"{split}_loss": values for split, values in losses.items()},
              **{f"normalized_{split}_loss": value for split, value in normalised.items()},
              "overfitting_gap": [t - r for t, r in zip(losses["test"], losses["train"])],
              "normalized_overfitting_gap": normalised["test"] - normalised["train"]}
    return {**entry, "status": "ok", "reason": None, "value": normalised["val"], "record": record}


def _steps(record: dict[str, Any] | None) -> list[int]:
    return [int(s) for s in ((record or {}).get("curves") or {}).get("step", [])]


def _steps_words(steps: list[int]) -> str:
    """The steps, an evenly spaced run of them told by its ends and spacing.

    >>> _steps_words([100, 200, 300, 400, 500]), _steps_words([5, 10]), _steps_words([])
    ('100, 200, ..., 500 (every 100)', '5, 10', 'none')
    >>> _steps_words([100, 200, 300, 400, 500, 600, 650])
    '100, 200, ..., 600 (every 100), 650'
    """
    if not steps:
        return "none"
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    if len(steps) > 4 and len(gaps) == 1:
        return f"{steps[0]}, {steps[1]}, ..., {steps[-1]} (every {gaps.pop()})"
    if len(steps) > 6:  # a budget that is no multiple of the spacing ends off it
        return f"{_steps_words(steps[:-1])}, {steps[-1]}"
    return ", ".join(map(str, steps))


def runs_at_step(manifest: dict[str, Any], entries: list[dict[str, Any]], step: int | str,
                 study: str) -> pd.DataFrame:
    """The runs table (`runs_frame`) of `entries` read at `step` (`entries_at_step`), with the
    step each run was read at as `read_at_step`."""
    at = entries_at_step(entries, step, study)
    read = {(e["arm"], e["run_key"]): e["record"]["read_at_step"] for e in at
            if e.get("status") == "ok" and (e.get("record") or {}).get("read_at_step") is not None}
    runs = runs_frame(manifest, at)
    if not runs.empty:
        runs["read_at_step"] = [read.get(key) for key in zip(runs.arm, runs.run_key)]
    return runs
