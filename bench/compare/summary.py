"""The summary of a comparison: a few plain sentences that answer the paper's two claims on the
study's own runs (did GradNorm match the grid, and do its averaged weights retrained as static
weights do as well), set GradNorm against the weights that need no search, and say what the
tables alone do not show (a grid point that gives a task up, a choice that moves without a seed,
GradNorm's weights crossing zero or missing their targets). It reads a `Comparison`'s tables and
tests (`bench.compare.analysis`); the figures it adds are GradNorm's paired test against a grid's
choices made again without each seed, and its place among the grid points that weight every task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pandas as pd

from bench.compare import stats
from bench.compare.analysis import (
    Comparison, GridSelection, each_left_out, family_size, is_quick, left_out_versus, per_seed, placing,
    point_words, representatives, static_words,
)
from bench.compare.convergence import still_improving_sentence
from bench.compare.stats import significant, versus
from bench.formatting import count, join_words


def _have(k: int) -> str:
    """The verb after "k of n points": "1 of 66 has", "0 of 66 have"."""
    return "has" if k == 1 else "have"


def _seconds(value: float) -> str:
    """Wall time for a sentence: whole seconds, tenths below 10 s (a small study's arms all
    read "0 s" otherwise)."""
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _on_seeds(row: Any) -> str:
    """On how many seeds a paired row's arm was lower or higher: said from the side that wins more
    seeds, as the paired sentences ("lower on 0 of 10" is a riddle); and when the mean goes the
    other way, that the seeds it loses on outweigh the others.

    >>> from types import SimpleNamespace as Row
    >>> _on_seeds(Row(n=3, wins=3, losses=0, mean_difference=-0.2))
    'lower on 3 of 3 seeds'
    >>> _on_seeds(Row(n=3, wins=2, losses=1, mean_difference=1.06))
    'lower on 2 of 3 seeds, though by less than it is higher on the other'
    >>> _on_seeds(Row(n=10, wins=3, losses=7, mean_difference=-0.1))
    'higher on 7 of 10 seeds, though by less than it is lower on the other 3'
    """
    lower = row.wins >= row.losses
    side = f"lower on {int(row.wins)}" if lower else f"higher on {int(row.losses)}"
    # The mean the other way (test loss 3.094 vs 2.038, lower on 2 of 3 seeds): said, not left a riddle.
    rest = int(row.losses if lower else row.wins)
    against = (row.mean_difference > 0) if lower else (row.mean_difference < 0)
    though = (f", though by less than it is {'higher' if lower else 'lower'} on the other"
              f"{'' if rest == 1 else f' {rest}'}") if against and rest else ""
    return f"{side} of {count(int(row.n), 'seed')}{though}"


def _verdict(row: Any, c: Comparison) -> tuple[str, str]:
    """How arm a stands against arm b in a paired comparison row, claiming a difference only
    where the paired t-test finds one at the 5 % level; and the evidence, in words, with the
    Holm-adjusted p where the study's other tests make that difference uncertain, and the
    signed-rank test's p where it reads the seeds otherwise (see stats.rank_test_disagrees)."""
    if row.n < 2:  # one seed: a difference, not a verdict
        verdict = ("has a lower test loss than" if row.mean_difference < 0 else
                   "has a higher test loss than" if row.mean_difference > 0 else "ties with")
        return verdict, "1 seed, no test"
    if math.isnan(row.p_value):  # every seed's difference alike (or none): no spread to test
        verdict = "beats" if row.mean_difference < 0 else "does not beat"
        return verdict, f"{int(row.n)} seeds"
    evidence = f"paired over {int(row.n)} seeds, {stats.difference(row)}, p = {row.p_value:.2g}"
    if row.p_value < 0.05 and row.p_holm >= 0.05:
        tests = family_size(c.comparisons, c.twins)
        evidence += f", or {row.p_holm:.2g} after Holm's adjustment for the study's {tests} paired tests"
    if stats.rank_test_disagrees(int(row.wins), int(row.losses), row.p_value, row.wilcoxon_p):
        evidence += (f", though the Wilcoxon signed-rank test, which a seed far off sways less, gives "
                     f"p = {row.wilcoxon_p:.2g}")
    if row.p_value >= 0.05:
        return "does not differ significantly from", evidence
    return ("beats" if row.mean_difference < 0 else "is beaten by"), evidence


def at_step_sentence(c: Comparison) -> str:
    """What a comparison at an evaluation step reads there, and what it still takes from the
    whole run."""
    steps = c.runs.steps_done[c.runs.status == "ok"].max() if "steps_done" in c.runs else math.nan
    of = f" of {int(steps)}" if not math.isnan(steps) else ""
    whole_run = ("Weights (GradNorm static's included), times, and GradNorm's weights <= 0 and distance to its "
                 "targets are the whole run's; the final metrics are left out.")
    if not isinstance(c.at_step, int):  # best-val
        read = representatives(c.runs, c.grids) if "read_at_step" in c.runs else pd.DataFrame()
        medians = read.groupby("label", sort=False).read_at_step.median().dropna() if len(read) else pd.Series()
        steps_words = ", ".join(f"{label} {m:g}" for label, m in medians.items())
        where = f" (each arm's median step{of}: {steps_words})" if len(medians) else ""
        return ("Compared at each run's best step on validation, as early stopping keeps it: each run's train, "
                "validation and test losses are those of its evaluation, after the first, with the lowest "
                f"task-normalised validation loss{where}, from curves stored to 4 significant digits, and a grid's "
                f"point is chosen on those validation losses. {whole_run}")
    if c.at_step == steps:
        return f"Compared at step {c.at_step}{of}, the runs' end: as `bench compare` compares them without --at-step."
    return (f"Compared at step {c.at_step}{of}: each run's train, validation and test losses are those of its "
            f"evaluation at step {c.at_step} (stored to 4 significant digits), where a grid's point is chosen on "
            f"validation too (the paper compared its grid with GradNorm at 15k of 80k steps). {whole_run}")


def representative_rates(c: Comparison) -> dict[str, tuple[float, bool]]:
    """Each arm's learning rate, as the summary speaks for it (its variants other than those it
    passes over: an arm trained at several speaks for its chosen rate, a GradNorm static arm for
    its GradNorm arm's), and whether validation chose it. From the runs table's `lr` (what the
    runs trained at); empty without it."""
    if "lr" not in c.runs:
        return {}
    spoken_for = c.runs[~c.runs.label.isin(c.passed_over)]
    rates = {}
    for arm, g in spoken_for.groupby("arm", sort=False):
        values = g.lr.dropna().unique()
        if len(values) == 1:
            choice = c.choices.get(arm)
            rates[str(arm)] = (float(values[0]), choice is not None and choice.what != "alpha")
    return rates


def learning_rate_sentence(c: Comparison) -> str | None:
    """Which arms trained at a learning rate of their own (`network_lr`), where any did: their
    differences from the others are then of weighting and learning rate together."""
    study_lr = ((c.manifest.get("identity") or {}).get("budget") or {}).get("lr")
    rates = representative_rates(c)
    if study_lr is None or all(lr == study_lr for lr, _ in rates.values()):
        return None
    chosen = [f"{arm}'s" for arm, (_, picked) in rates.items() if picked]
    by_validation = f"; {join_words(chosen)} chosen on validation" if chosen else ""
    if len({lr for lr, _ in rates.values()}) == 1:
        lr = next(iter(rates.values()))[0]
        return (f"Every arm is compared at lr = {lr:g} (network_lr{by_validation}), not at the study's [budget] "
                f"lr = {study_lr:g}.")
    by_rate: dict[float, list[str]] = {}
    for arm, (lr, _) in rates.items():
        by_rate.setdefault(lr, []).append(arm)
    study_words = "the study's [budget] lr = "
    listed = "; ".join(f"{join_words(names)} at {study_words if lr == study_lr else ''}{lr:g}"
                       for lr, names in by_rate.items())
    return (f"The arms are compared at different learning rates (network_lr{by_validation}): {listed}. Between arms at "
            "different rates, a difference is one of weighting and learning rate together.")


def headline(c: Comparison) -> list[str]:
    """A few plain sentences answering the paper's two claims: did GradNorm match or beat the
    grid, at what cost, and does it overfit less; and do its averaged weights, retrained as
    static weights, do as well as GradNorm itself? Then against the weights that need no search
    (the study's own static weights, 1 / L_i(0), equal weights), and, with an `rlw` arm, weights
    drawn at random."""
    lines = [at_step_sentence(c)] if c.at_step is not None else []
    lines += [sentence] if (sentence := learning_rate_sentence(c)) else []
    lines += [f"{reason}: it is left out of the tables and tests, which compare the other arms."
              for reason in c.unselectable.values()]
    # An arm whose every variant trained as another arm's: its choice is that arm's, told once.
    lines += [choice.sentence() for arm, choice in c.choices.items()
              if not set(c.runs.label[c.runs.arm == arm]) <= set(c.twins)]
    lines += [sentence for grid in c.grids.values() if (sentence := grid.sentence())]
    main = c.main.set_index("arm")
    if not (main.kind == "gradnorm").any():  # no GradNorm to set against it: what the grid found
        for grid in c.grids.values():
            lines += [_grid_found(grid, main), *_held_out_lines(c, grid, [])]
    # With several alphas or learning rates, the sentences speak for the variant chosen on validation only.
    passed_over = c.passed_over

    def gaps(a: str, b: str) -> str:
        gap_a, gap_b = main.loc[a, "normalized_overfitting_gap"], main.loc[b, "normalized_overfitting_gap"]
        return f"Overfitting gap (test - train): {versus(gap_a, gap_b, 3)}."

    compared: dict[str, list[str]] = {}  # grid arm: the GradNorm labels set against it
    for _, row in c.comparisons.iterrows():
        a, b = row.arm, row.versus
        if main.loc[a, "kind"] != "gradnorm" or b not in c.grids or a in passed_over or a in c.twins:
            continue
        failed = int(main.loc[a, "failed"])
        if row.n == 0:  # nothing to compare: say why rather than print NaNs
            why = (f"{failed} of {int(main.loc[a, 'runs'])} runs failed (see the failed runs)" if failed
                   else "no seed has finished on both")
            lines.append(f"{a} cannot be compared with the grid search ({b}): {why}.")
            continue
        verdict, evidence = _verdict(row, c)
        diverged = f" ({failed} of {int(main.loc[a, 'runs'])} runs failed, left out)" if failed else ""
        standing = c.standings[(c.standings.arm == a) & (c.standings.grid == b)].iloc[0]
        grid_cost, own_cost = main.loc[b, "wall_time_s"], main.loc[a, "wall_time_s"]
        # A grid of one point (T = 4 at resolution 0.25 without its boundary) has no choice to make.
        among = (f"for the point chosen on validation, {_on_seeds(row)}; {int(standing.n_better)} of "
                 f"{int(standing.n_points)} grid points {_have(standing.n_better)} a lower test loss"
                 if standing.n_points > 1 else f"for its only point, {_on_seeds(row)}")
        lines.append(
            f"{a}{diverged} {verdict} the grid search ({b}; {evidence}): test loss "
            f"{versus(row.mean_a, row.mean_b)} {among}. "
            f"Cost: {count(int(main.loc[a, 'runs']), 'run')} ({_seconds(own_cost)}) against "
            f"{count(int(main.loc[b, 'runs']), 'run')} ({_seconds(grid_cost)}). "
            + gaps(a, b)
        )
        if c.grids[b].unweighted:
            lines.append(_given_up(c, a, c.grids[b]))
        compared.setdefault(b, []).append(a)
    for arm, labels in compared.items():
        lines += _held_out_lines(c, c.grids[arm], labels)

    def pairs(kind_a: str, kind_b: str) -> Iterator[pd.Series]:
        """The paired rows of an arm of kind_a against one of kind_b, with seeds in common."""
        for _, row in c.comparisons.iterrows():
            if (main.loc[row.arm, "kind"] == kind_a and main.loc[row.versus, "kind"] == kind_b and row.n > 0
                    and not {row.arm, row.versus} & (passed_over | set(c.twins))):
                yield row

    def losses(row: Any) -> str:
        return f"test loss {versus(row.mean_a, row.mean_b)}, {_on_seeds(row)}"

    for row in pairs("gradnorm-static", "gradnorm"):
        verdict, evidence = _verdict(row, c)
        lines.append(f"{row.arm} {verdict} {row.versus} ({evidence}): {losses(row)}. "
                     + gaps(row.arm, row.versus))
    # Static weights that need no search: the study's own, those scaled by 1 / L_i(0), and equal
    # weights, the paper's baseline (a study without a grid had no verdict at all).
    rivals = {"static": lambda b, evidence: static_words(b, main.loc[b, "weights"], evidence),
              "loss-scale": lambda b, evidence: ("static weights scaled by each task's first-step loss, "
                                                 f"1 / L_i(0) ({b}; {evidence})"),
              "equal": lambda b, evidence: f"equal weights ({b}; {evidence})"}
    for kind, words in rivals.items():
        for row in pairs("gradnorm", kind):
            verdict, evidence = _verdict(row, c)
            lines.append(f"{row.arm} {verdict} {words(row.versus, evidence)}: {losses(row)}. "
                         + gaps(row.arm, row.versus))
    for row in pairs("gradnorm", "rlw"):
        verdict, evidence = _verdict(row, c)
        lines.append(f"{row.arm} {verdict} random loss weighting ({row.versus}; {evidence}), Lin et al.'s "
                     f"litmus test for a weighting method: {losses(row)}.")
    # After the verdicts, which the reports' index quotes the first of.
    lines += [_twin_sentence(c, twin, same) for twin, same in c.twins.items() if twin not in passed_over]
    lines += [sentence] if (sentence := still_improving_sentence(c)) else []
    return lines + _weight_health(c)


def _twin_sentence(c: Comparison, twin: str, same: str) -> str:
    """That `twin` trained as `same`, bit for bit, and why where it can be told: a weight floor
    that never bound, or a static retrain of GradNorm runs that were themselves the same."""
    runs = c.runs.set_index("label")
    arm_of = c.runs.groupby("label").arm.first()
    arms = (c.manifest.get("identity") or {}).get("arms", {})
    described = [arms.get(arm_of[label], {}) for label in (twin, same)]
    differ = {k for k in described[0].keys() | described[1].keys() if described[0].get(k) != described[1].get(k)}
    why = ""
    if differ == {"floor"} and "floor_binding_steps" in runs:
        floored = twin if described[0].get("floor") else same
        if (runs.loc[[floored], "floor_binding_steps"].fillna(0) == 0).all():
            whose = "its" if floored == twin else f"{same}'s"
            why = f" ({whose} weight floor never bound)"
    sources = c.manifest.get("gradnorm_static_sources", {})
    source_twin, source_same = sources.get(arm_of[twin]), sources.get(arm_of[same])
    if source_twin and source_same and any(arm_of.get(t) == source_twin and arm_of.get(s) == source_same
                                           for t, s in c.twins.items()):
        why = f" (they retrain the runs of {source_twin} and {source_same}, which were the same)"
    n = int((runs.loc[[twin], "status"] == "ok").sum())
    return (f"{twin} trained exactly as {same}: the same losses, to the last bit, on each of its "
            f"{count(n, 'finished run')}{why}. What is said of {same} holds for it, and is not said twice.")


def _weight_health(c: Comparison) -> list[str]:
    """A sentence per GradNorm label whose weights crossed zero or met their floor (a weight <= 0
    no longer trains its task, or trains it upward), and one where its gradient norms stayed far
    from their targets: what the tables alone do not show."""
    lines = []
    for label, g in c.runs[c.runs.balancer == "gradnorm"].groupby("label", sort=False):
        if label in c.twins:  # its runs are its twin's, already told
            continue
        for column, what, advice in (
                ("nonpositive_weight_steps", "a task weight was <= 0",
                 " The paper imposes no floor, and a weight <= 0 stops training its task or trains it "
                 "towards a higher loss; a smaller `weight_lr` or a `floor` (e.g. 0.01) keeps every "
                 "weight positive."),
                ("floor_binding_steps", "the floor held a task weight up", "")):
            if column not in g:
                continue
            counts = g[column].dropna()
            hit = counts[counts > 0]
            if hit.empty:
                continue
            low, high = int(hit.min()), int(hit.max())
            span = f"{low}" if low == high else f"{low} to {high}"
            steps = g.loc[hit.index, "steps_done"].dropna() if "steps_done" in g else pd.Series(dtype=float)
            of_steps = f" of {int(steps.max())}" if len(steps) and steps.min() == steps.max() else ""
            lines.append(f"{label}: {what} on {span}{of_steps} steps in {len(hit)} of {len(counts)} "
                         f"runs.{advice}")
        line = _off_target(c, label, g)
        if line:
            lines.append(line)
    return lines


# How far (runs table's `norm_target_gap`) a run's gradient norms may stay from GradNorm's targets
# before the summary says it did not balance: runs that settle stay within 0.5% on the toy
# problem and within 15% on a noisier one; weights swinging across zero left one run 73% away.
NORM_GAP_FAR = 0.25


def _off_target(c: Comparison, label: str, runs: pd.DataFrame) -> str | None:
    """A sentence for a GradNorm label with runs whose gradient norms at W stayed far from its own
    targets over the tail window: GradNorm did not do what it is meant to do there."""
    if "norm_target_gap" not in runs:
        return None
    gaps = runs.loc[runs.status == "ok", "norm_target_gap"].dropna()
    far = gaps[gaps > NORM_GAP_FAR]
    if far.empty:
        return None
    tail = (c.manifest.get("identity") or {}).get("budget", {}).get("tail_fraction")
    window = f"the last {tail:.0%} of the steps" if tail else "the tail window"
    span = f"{far.min():.0%}" if len(far) == 1 else f"{far.min():.0%} to {far.max():.0%}"
    rest = gaps[gaps <= NORM_GAP_FAR]
    others = f"; the other runs, within {rest.max():.0%}" if len(rest) else ""
    crossed = runs.loc[far.index].get("nonpositive_weight_steps", pd.Series(dtype=float)).dropna()
    if (crossed > 0).any():
        n = int((crossed > 0).sum())
        cause = (f"A task weight crossed zero in {n} of them: weights that swing so (a `weight_lr` too "
                 "large) leave the norms off target")
    else:
        # A run far too short for its weights' learning rate: `--quick` on the toy studies left
        # every run 56% away, with no weight near zero.
        quick = " (a --quick study has a tenth of the steps)" if is_quick(c.study, c.manifest) else ""
        cause = ("No task weight crossed zero in them: the weights were likely still on their way, in "
                 f"too few steps for their `weight_lr`{quick}")
    return (f"{label}: GradNorm did not reach its own targets in {len(far)} of {len(gaps)} runs: over "
            f"{window}, their gradient norms at W were {span} away from them on average (sum_i "
            f"|mean G_i/G_bar - mean r_i^alpha| / sum_i mean r_i^alpha; 0 is on target{others}). "
            f"{cause}; the weight and gradient-norm figures show which.")


def _grid_found(grid: GridSelection, main: pd.DataFrame) -> str:
    """What a grid found, in a study without GradNorm: the point chosen on validation, its test
    loss and how many points beat it on test, and the tasks it gives up with the best point that
    weights every task."""
    test = main.loc[grid.arm, "normalized_test_loss"]
    n = len(grid.points)
    others = grid.points[(grid.points.failed == 0) & ~grid.points.selected]  # not itself, by a rounding
    better = int((others.normalized_test_loss < test).sum())
    among = f"; {better} of the other {n - 1} {_have(better)} a lower test loss" if n > 1 else ""
    line = (f"{grid.arm}: validation chose {point_words(grid.selected, grid.weights)} of {count(n, 'point')} "
            f"(test loss {significant(test)}{among}).")
    if grid.unweighted:
        line += f" It {grid.gives_up_words}"
        if grid.weighted_all:
            line += (f"; {grid.weighted_all_words}, {point_words(grid.weighted_all, grid.weighted_all_weights)}, "
                     f"has test loss {significant(main.loc[grid.weighted_all_label, 'normalized_test_loss'])}")
        line += "."
    return line


def _held_out_lines(c: Comparison, grid: GridSelection, labels: list[str]) -> list[str]:
    """Whether the grid's test loss owes anything to choosing its point on the networks it is
    then tested on: the choice made again without each seed (analysis._chosen_without_each_seed),
    of its point and of its best point that weights every task; and each of `labels` (GradNorm, its
    alpha chosen the same way where it has several) set against each so judged, where either
    choice moves (else the verdict's own test says it)."""
    if len(grid.points) < 2:
        return []
    lines = _left_out_lines(c, grid, grid.held_out, grid.selected, "the grid's point", "the grid's left-out choices",
                            labels)
    if grid.weighted_all and grid.n_weighted_all > 1:
        lines += _left_out_lines(c, grid, grid.weighted_all_held_out, grid.weighted_all,
                                 "its best point that weights every task",
                                 "the left-out choices among the grid points that weight every task", labels)
    return lines


def _left_out_lines(c: Comparison, grid: GridSelection, held: pd.DataFrame, selected: str, what: str,
                    choices: str, labels: list[str]) -> list[str]:
    """The sentences of _held_out_lines for one choice of the grid's: `what` it chose, `selected`,
    made again without each seed (`held`), and `labels` set against those `choices`."""
    if held.empty:
        return []
    weights = grid.points.set_index("point")[[f"weight_{t}" for t in c.tasks]]

    def point(p: str) -> str:
        return point_words(p, weights.loc[p].tolist())

    again = f"{grid.arm}: chosen again on validation with {each_left_out(held)}, {what}"
    moved = held[held.point != selected]
    if moved.empty:
        lines = [f"{again} is {point(selected)} every time, so its test loss owes nothing to choosing the point on "
                 "the networks it is tested on."]
    else:
        where = "; ".join(f"{point(p)} for seed {int(s)}" for s, p in zip(moved.seed, moved.point))
        lines = [f"{again} moves ({where}). Judged on the seed each choice left out, its test loss is "
                 f"{left_out_versus(held, point(selected))}, whose choice saw the very networks it is tested on."]
    held_per_seed = dict(zip(held.seed.astype(int), held.normalized_test_loss))
    for label in labels:
        name, per_seed, own_moved = _left_out_choice(c, label)
        if own_moved or not moved.empty:
            lines.append(stats.describe(name, choices, stats.paired(per_seed, held_per_seed)))
    return lines


def _left_out_choice(c: Comparison, label: str) -> tuple[str, dict[int, float], bool]:
    """A GradNorm label as set against the grid's left-out choices: its name, its test loss per
    seed, and whether its own choice of alpha (or learning rate) moved when made again without
    each seed (with several, each seed's test loss is then that of the variant the other seeds
    chose)."""
    arm = c.runs.arm[c.runs.label == label].iloc[0]
    choice = c.choices.get(arm)
    if choice is None or choice.held_out.empty or choice.chosen != label:
        return label, per_seed(c.label_runs(label)), False
    held = choice.held_out
    return (f"{arm}, at the {choice.what} each seed's left-out choice picked,",
            dict(zip(held.seed.astype(int), held.normalized_test_loss)),
            bool((held.point != choice.chosen_variant).any()))


def _given_up(c: Comparison, a: str, grid: GridSelection) -> str:
    """The sentence for a grid whose selected point gives tasks up: what those tasks lost, and
    how arm `a` stands against the grid's best point that weights every task."""
    per_task = c.per_task.set_index(["arm", "task"]).test_loss
    losses = "; ".join(f"{t}: {versus(per_task[(grid.arm, t)], per_task[(a, t)])} for {a}"
                       for t in grid.unweighted)
    line = (f"The grid's chosen point ({point_words(grid.selected, grid.weights)}) {grid.gives_up_words} "
            f"(test loss of {losses}). ")
    if not grid.weighted_all:
        if not grid.points.all_weights_positive.any():  # T = 4 at resolution 0.5, say
            return line + f"The grid has no point that weights all {len(c.tasks)} tasks."
        return line + "No grid point with every seed finished weights every task."
    rows = c.comparisons[(c.comparisons.arm == a) & (c.comparisons.versus == grid.weighted_all_label)]
    where = f"{grid.weighted_all_words}, {point_words(grid.weighted_all, grid.weighted_all_weights)}"
    if rows.empty or rows.iloc[0].n == 0:
        return line + f"{a} cannot be compared with {where}: no seed has finished on both."
    row = rows.iloc[0]
    verdict, evidence = _verdict(row, c)
    value, grid_values = placing(c.runs, a, c.main.set_index("arm").loc[a, "normalized_test_loss"], grid)
    weighted = grid_values[grid.points.set_index("point").all_weights_positive.reindex(grid_values.index)]
    better = int((weighted < value).sum())
    among = f"; {better} of the {len(weighted)} {_have(better)} a lower test loss" if len(weighted) > 1 else ""
    return line + (f"{a} {verdict} {where} (chosen on validation; {evidence}): "
                   f"test loss {versus(row.mean_a, row.mean_b)}, {_on_seeds(row)}{among}.")


__all__ = ["headline"]
