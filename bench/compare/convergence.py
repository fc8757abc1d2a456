"""Whether a study's runs were still improving when their budget ended.

A comparison at the end of a budget answers "which weighting is better after these steps at
this learning rate". Where the runs are still improving fast, that answer can be one about which
arm trains faster: uncertainty weighting's lead over equal weights on MultiMNIST and MultiFashion
is largest at the lowest learning rate tried, and gone or turned into a loss at the highest
(README: "What the real-data studies say"). The summary says so when it applies, from the runs' own validation
curves; the test split stays out of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.compare.analysis import Comparison, representatives
from bench.compare.at_step import evaluation_steps, validation_curve

# The stretch a run's late improvement is measured over: from the last evaluation at or before
# this fraction of the budget's steps to the end.
LATE_START = 0.8
# A run still improving lowers its validation loss by more than this per fifth of the budget
# over that stretch. The shipped toy and diamonds studies' arms fall by at most 1.7 % per fifth
# (most by under 1 %); QM9's by up to 3.4 %, MultiMNIST's and MultiFashion's by 3 to 7 %, and
# the image studies' verdicts move with the learning rate.
STILL_IMPROVING = 0.02


@dataclass(frozen=True)
class LateImprovement:
    """Each arm's median run's relative fall in task-normalised validation loss from evaluation
    step `start` to `end` (a positive value is a fall), in the tables' arm order, twins left out."""

    start: int
    end: int
    falls: pd.Series  # label -> median over its finished runs of (L(start) - L(end)) / L(start)

    @property
    def per_fifth(self) -> float:
        """A fall over [start, end] scaled to a fifth of the budget's steps."""
        return 0.2 * self.end / (self.end - self.start)

    @property
    def improving(self) -> pd.Series:
        """The arms whose median run was still improving (STILL_IMPROVING)."""
        return self.falls[self.falls * self.per_fifth > STILL_IMPROVING]


def late_improvement(c: Comparison) -> LateImprovement | None:
    """Each table arm's late fall in validation loss (`LateImprovement`), read from the curves of
    its representative runs (a grid by its chosen point, and its best point that weights every
    task where that is another). None where it cannot be measured: a comparison read at a step
    before their last evaluation, or runs with no evaluation between the start and LATE_START of the budget."""
    steps = evaluation_steps(c.records)
    if not steps or c.at_step not in (None, steps[-1]):
        return None
    end = steps[-1]
    earlier = [s for s in steps if s <= LATE_START * end]
    if not earlier:
        return None
    start = earlier[-1]
    chosen = representatives(c.runs[c.runs.status == "ok"], c.grids)
    label_of = {(arm, key): label for arm, key, label in zip(chosen.arm, chosen.run_key, chosen.label)}
    falls: dict[str, list[float]] = {}
    for entry in c.records:
        label = label_of.get((entry.get("arm"), entry.get("run_key")))
        if label is None or entry.get("status") != "ok":
            continue
        fall = _fall(entry["record"], start, end)
        if fall is not None:
            falls.setdefault(label, []).append(fall)
    # A twin's runs are another label's, bit for bit (see analysis._twins): told once. An arm's
    # alphas or rates other than its chosen one are not the ones the verdicts speak for.
    order = [label for label in dict.fromkeys(chosen.label) if label not in c.twins and label not in c.passed_over]
    medians = pd.Series({label: float(pd.Series(falls[label]).median()) for label in order if label in falls},
                        dtype=float)
    return LateImprovement(start, end, medians) if len(medians) else None


def _fall(record: dict[str, Any], start: int, end: int) -> float | None:
    """The run's relative fall in task-normalised validation loss from `start` to `end`."""
    curve = validation_curve(record)
    before, after = curve.get(start, math.nan), curve.get(end, math.nan)
    if not (math.isfinite(before) and math.isfinite(after)) or before <= 0:
        return None
    return (before - after) / before


def still_improving_sentence(c: Comparison) -> str | None:
    """A sentence where some arm's runs were still improving at the end (`late_improvement`):
    which arms, by how much, and what that means for the verdicts; None otherwise."""
    late = late_improvement(c)
    if late is None or late.improving.empty:
        return None
    improving = late.improving
    low, high = (f"{fall:.1%}" for fall in (improving.min(), improving.max()))
    by = low if low == high else f"{low} to {high}"
    if len(improving) == len(late.falls):
        whose = "every arm's median run" if len(improving) > 1 else f"{improving.index[0]}'s median run"
    else:
        names = list(improving.index)
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
        whose = f"the median run of {listed} ({len(names)} of {len(late.falls)} arms)"
    span = late.end - late.start
    mark = f"more than {STILL_IMPROVING:.0%} per fifth of the budget counts as still improving"
    return (f"The runs were still improving when the budget ended: over the last {span} of {late.end} steps, "
            f"{whose} lowered its task-normalised validation loss by {by} ({mark}). A verdict at this budget "
            "may be one on which arm trains faster: more steps, or another learning rate ([budget] lr, or an arm's "
            "network_lr), can change it.")
