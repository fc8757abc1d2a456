"""GradNorm against the grid at each evaluation step: the comparison of `bench compare
--at-step`, made at every step the runs were evaluated at, so that a reader sees whether the
verdict at the end of the budget holds earlier (the paper compared at 15k of 80k steps)."""

from __future__ import annotations

import pandas as pd

from bench.compare.analysis import Comparison, analyse, point_words
from bench.compare.at_step import evaluation_steps, runs_at_step
from bench.errors import BenchError
from bench.formatting import join_words

# Steps compared at most: each is a whole comparison (0.1 s for 1,000 runs).
MOST_STEPS = 16
COLUMNS = ["step", "gradnorm", "arm", "versus", "grid_point", "n", "wins", "losses", "mean_difference",
           "difference_ci_low", "difference_ci_high", "p_value"]


def spread(steps: list[int], most: int = MOST_STEPS) -> list[int]:
    """At most `most` of `steps`, evenly spread, the last always among them.

    >>> spread(list(range(100, 1501, 100)), 5)
    [100, 500, 800, 1100, 1500]
    >>> spread([5, 10], 5)
    [5, 10]
    """
    if len(steps) <= most:
        return list(steps)
    picked = {round(i * (len(steps) - 1) / (most - 1)) for i in range(most)}
    return [steps[i] for i in sorted(picked)]


def verdicts_over_steps(c: Comparison, most: int = MOST_STEPS) -> pd.DataFrame:
    """One row per evaluation step (at most `most`) and pair of a GradNorm arm (`gradnorm`; `arm`
    is its label at that step, with the alpha chosen on validation there) and a grid's point
    chosen on validation there (and the grid's best point that weights every task, where it has
    one): the paired difference of task-normalised test loss over seeds (GradNorm minus the
    grid), its 95% interval and p. Empty where the study sets no GradNorm arm against a grid."""
    kinds = c.main.set_index("arm").kind
    if not ((kinds == "gradnorm").any() and (kinds == "grid").any()):
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for step in spread(evaluation_steps(c.records), most):
        try:
            at = analyse(c.study, c.manifest, runs_at_step(c.manifest, c.records, step, c.study), c.records)
        except BenchError:  # nothing to compare at this step (every grid point has a failed seed)
            continue
        kind = at.main.set_index("arm").kind
        spoken_for = {choice.chosen for choice in at.choices.values()}  # the summary's alphas
        points = {arm: point_words(g.selected, g.weights) for arm, g in at.grids.items()}
        points.update({g.weighted_all_label: point_words(g.weighted_all, g.weighted_all_weights)
                       for g in at.grids.values() if g.weighted_all})
        arm_of = dict(zip(at.runs.label, at.runs.arm))
        for row in at.comparisons.itertuples():
            if (kind.get(row.arm) == "gradnorm" and kind.get(row.versus) == "grid" and row.arm not in at.twins
                    and (row.arm in spoken_for or arm_of[row.arm] not in at.choices)):
                test = {column: getattr(row, column) for column in COLUMNS[5:]}
                rows.append({"step": step, "gradnorm": arm_of[row.arm], "arm": row.arm, "versus": row.versus,
                             "grid_point": points[row.versus], **test})
    return pd.DataFrame(rows, columns=COLUMNS)


def over_steps_sentence(table: pd.DataFrame) -> str:
    """The verdicts of `verdicts_over_steps`, counted over the steps, one clause per pair.

    >>> t = pd.DataFrame({"step": [100, 200, 300], "gradnorm": "gradnorm", "versus": "grid",
    ...                   "mean_difference": [0.05, 0.04, 0.01], "p_value": [0.001, 0.01, 0.4]})
    >>> print(over_steps_sentence(t))  # doctest: +NORMALIZE_WHITESPACE
    At 3 evaluation steps (100 to 300; paired t-test, p < 0.05): gradnorm is beaten by grid at 2
    (the last, step 200) and does not differ significantly from it at 1.
    >>> print(over_steps_sentence(pd.concat([t, t.assign(versus="tpe", mean_difference=-0.1)])))
    ... # doctest: +NORMALIZE_WHITESPACE
    At 3 evaluation steps (100 to 300; paired t-test, p < 0.05): gradnorm is beaten by grid at 2
    (the last, step 200) and does not differ significantly from it at 1; gradnorm beats tpe at 2
    (the last, step 200) and does not differ significantly from it at 1.
    """
    if table.empty:
        return ""
    steps = sorted(set(table.step))
    clauses = []
    for (gradnorm, versus), d in table.groupby(["gradnorm", "versus"], sort=False):
        significant = d.p_value < 0.05
        beaten, beats = d[significant & (d.mean_difference > 0)], d[significant & (d.mean_difference < 0)]
        level = len(d) - len(beaten) - len(beats)
        parts: list[str] = []
        for verdict, rows in (("is beaten by", beaten), ("beats", beats)):
            if len(rows):
                last = f" (the last, step {rows.step.max()})" if rows.step.max() != steps[-1] else ""
                parts.append(f"{verdict} {versus if not parts else 'it'} at {len(rows)}{last}")
        if level:
            parts.append(f"does not differ significantly from {versus if not parts else 'it'} at {level}")
        clauses.append(f"{gradnorm} " + join_words(parts))
    return (f"At {len(steps)} evaluation steps ({steps[0]} to {steps[-1]}; paired t-test, p < 0.05): "
            + "; ".join(clauses) + ".")
