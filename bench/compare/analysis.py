"""The comparison of a study's arms: tables of test loss and overfitting gap, GradNorm's standing
among the grid points, and paired tests over seeds. Reads stored results only; never trains.

Names used below:
- an arm's *variants*: one per alpha for GradNorm (and its static retrains), one per point for a
  grid, and one per learning rate for an arm given several (`network_lr`), else a single one; a
  *label* names an arm's variant in the tables ("gradnorm (alpha=0.12)"), or the arm alone when
  it has one variant. A grid arm is represented by the point selected on the validation split
  (task-normalised validation loss, mean over seeds); the test split is only reported. Any other
  arm with several variants (GradNorm's alphas, an arm's learning rates) has every variant in the
  tables, and the summary speaks for the one chosen on validation the same way; a GradNorm static
  arm follows its GradNorm arm's choice.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from bench.compare import stats
from bench.compare.stats import significant, telling_apart, versus
from bench.errors import BenchError
from bench.formatting import count, join_words
from bench.store.export import in_study_order
from bench.store.results import StudyProgress

# Balancers whose weights change during a run: a run's weights are shown time-averaged.
VARYING_WEIGHTS = ("gradnorm", "uncertainty", "dwa", "rlw", "loss-scale")
# The weighting methods a GradNorm arm is paired with, as the sentences name them.
BASELINE_WORDS = {"uncertainty": "uncertainty weighting", "dwa": "dynamic weight average",
                  "rlw": "random loss weighting", "loss-scale": "weights scaled by 1 / L_i(0)"}
# A task whose static weight is exactly 0 sends no gradient anywhere: its head keeps its initial
# weights (Adam moves nothing whose gradient stays 0). A grid point on the simplex's boundary can
# then win on the summed loss by giving a task up, which the paper's grid (weights drawn at
# random) never does; such a grid is also shown by its best point that weights every task.
EVERY_TASK_WEIGHTED = " (all weights > 0)"


# A choice made again without each seed (see _chosen_without_each_seed): one row per seed.
HELD_OUT_COLUMNS = ["seed", "point", "normalized_test_loss", "selected_test_loss"]


def variant_rate(variant: str) -> float | None:
    """The learning rate a variant names (`alpha=1.5/lr=0.002` -> 0.002); None where it names none.

    >>> variant_rate("alpha=1.5/lr=0.002"), variant_rate("lr=1e-05"), variant_rate("alpha=1.5")
    (0.002, 1e-05, None)
    """
    return float(variant.rsplit("lr=", 1)[1]) if "lr=" in variant else None


def _variant(run_key: str) -> str:
    return run_key.rsplit("/seed=", 1)[0] if "/seed=" in run_key else ""


@dataclass
class GridSelection:
    arm: str
    points: pd.DataFrame  # one row per point: weights, mean val / test / train, gap, seeds
    selected: str  # the variant chosen on validation
    weights: list[float]
    excluded: int  # points with a failed seed, left out of the selection
    unweighted: list[str] = field(default_factory=list)  # tasks the selected point gives weight 0
    # When `unweighted` is not empty: the best point on validation with every weight positive,
    # its weights, and how many eligible points weight every task.
    weighted_all: str | None = None
    weighted_all_weights: list[float] = field(default_factory=list)
    n_weighted_all: int = 0
    # Where the points have finished different seeds: the seeds the choice compared (see
    # _on_shared_seeds), and how many points lacked them.
    shared_seeds: list[int] = field(default_factory=list)
    unmatched: int = 0
    # The choice made again without each seed in turn: one row per seed the point was chosen on,
    # the point the other seeds choose, its test loss on the seed left out, and the selected
    # point's there (see _chosen_without_each_seed). Empty with fewer than two seeds; for
    # `weighted_all`, empty too where it is the only point that weights every task.
    held_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HELD_OUT_COLUMNS))
    weighted_all_held_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HELD_OUT_COLUMNS))

    def sentence(self) -> str | None:
        """Says how the point was chosen when the points have not finished the same seeds."""
        if not self.shared_seeds:
            return None
        which = seeds_words(self.shared_seeds)
        left = f"; {count(self.unmatched, 'point')} without {which} could not be chosen yet" if self.unmatched else ""
        return (f"{self.arm}: its points have not all finished the same seeds, so its point was chosen on "
                f"the mean validation loss over {which}, which every point compared has finished{left}. "
                "GradNorm is placed among the points, and the grid's figures draw them, on those seeds "
                "too; the grid-points table's other means are over every seed each point has finished.")

    @property
    def weighted_all_label(self) -> str:
        return self.arm + EVERY_TASK_WEIGHTED

    @property
    def gives_up_words(self) -> str:
        """What the selected point does to the tasks it weights 0: "gives b a weight of 0, so its
        head never trains"."""
        heads = "their heads never train" if len(self.unweighted) > 1 else "its head never trains"
        return f"gives {join_words(self.unweighted)} a weight of 0, so {heads}"

    @cached_property  # the report's CSVs and its page both read it
    def held_out_table(self) -> pd.DataFrame:
        """The choices made again without each seed, one row per seed and choice, labelled as the
        tables label them: the grid's point, then its best point that weights every task."""
        frames = [held.assign(grid=label)[["grid", *HELD_OUT_COLUMNS]]
                  for held, label in ((self.held_out, self.arm), (self.weighted_all_held_out, self.weighted_all_label))
                  if not held.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["grid", *HELD_OUT_COLUMNS])

    @property
    def weighted_all_words(self) -> str:
        if self.n_weighted_all == 1:
            return "the only grid point that weights every task"
        return f"the best of the {self.n_weighted_all} grid points that weight every task"


@dataclass
class VariantChoice:
    """An arm trained with several alphas (GradNorm) or learning rates (`network_lr`): the
    variant chosen on validation, as the grid's point is, so that the summary does not pick an
    arm's best setting on the test split."""
    arm: str
    val_losses: dict[str, float]  # variant ("alpha=0.12") -> mean task-normalised validation loss
    excluded: list[str] = field(default_factory=list)  # variants with a failed seed, left out
    # The same variants' mean test loss: reported, how much the setting matters, never used to choose.
    test_losses: dict[str, float] = field(default_factory=dict)
    # Where the variants have finished different seeds: the seeds the means are over (see
    # _on_shared_seeds), and the variants without them, left out.
    shared_seeds: list[int] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    # The choice made again without each seed in turn, as a grid's is (its `point` is a variant):
    # an arm's best alpha or rate on validation is partly its luckiest too.
    held_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HELD_OUT_COLUMNS))

    @property
    def what(self) -> str:
        """What the variants differ in, as the sentences name it.

        >>> [VariantChoice("a", dict.fromkeys(v, 1.0)).what for v in (
        ...     ["alpha=1", "alpha=2"], ["lr=0.1", "lr=0.2"], ["alpha=1/lr=0.1", "alpha=1/lr=0.2"],
        ...     ["alpha=1/lr=0.1", "alpha=2/lr=0.1", "alpha=1/lr=0.2", "alpha=2/lr=0.2"])]
        ['alpha', 'learning rate', 'learning rate', 'setting of alpha and learning rate']
        """
        variants = [*self.val_losses, *self.excluded, *self.unmatched]
        alphas = {v.split("/")[0] for v in variants if v.startswith("alpha=")}
        rates = {r for v in variants if (r := variant_rate(v)) is not None}
        if len(rates) > 1 and len(alphas) > 1:
            return "setting of alpha and learning rate"
        return "learning rate" if len(rates) > 1 else "alpha"

    @property
    def chosen_variant(self) -> str:
        return min(self.val_losses, key=self.val_losses.__getitem__)

    @property
    def chosen(self) -> str:
        """The chosen variant's label, as the tables name it: "gradnorm (alpha=0.12)"."""
        return f"{self.arm} ({self.chosen_variant})"

    def sentence(self) -> str:
        chosen = self.chosen_variant
        best = self.val_losses[chosen]
        # Alphas can train alike bit for bit (Adam moves the weights by the sign of each gap, which
        # they may share throughout): a tie, told as one, and the first of them taken.
        tied = [v for v, loss in self.val_losses.items() if v != chosen and loss == best]
        digits = telling_apart(list(self.val_losses.values()))
        others = "; ".join(f"{v}: {significant(loss, digits)}" for v, loss in self.val_losses.items()
                           if v != chosen and v not in tied)
        left_out = f" Left out for a failed seed: {', '.join(self.excluded)}." if self.excluded else ""
        what = self.what
        left_out += _shared_seeds_words(self.shared_seeds, self.unmatched, what)
        total = len(self.val_losses) + len(self.excluded) + len(self.unmatched)
        if len(self.val_losses) == 1:
            return (f"{self.arm}: {chosen} is the only one of {total} values with every "
                    f"seed finished; the sentences here are for {self.chosen}, and the tables list every "
                    f"{what}.{left_out}")
        spread = ""
        if len(self.test_losses) > 1:
            low, high = min(self.test_losses.values()), max(self.test_losses.values())
            if low == high:
                spread = f" Across them, test loss is the same: {significant(low)}."
            else:
                end_digits = telling_apart([low, high])

                def at(value: float) -> str:
                    return ", ".join(v for v, loss in self.test_losses.items() if loss == value)
                spread = (f" Across them, test loss runs from {significant(low, end_digits)} ({at(low)}) to "
                          f"{significant(high, end_digits)} ({at(high)}), {_percent(100 * (high / low - 1))} % apart.")
        first = "the first, " if tied else ""
        if not others:
            choice = (f"validation cannot tell {join_words([chosen, *tied])} apart (mean task-normalised "
                      f"validation loss {significant(best, digits)} for each)")
        else:
            choice = (f"validation chose {chosen} of {total} values{', tied with ' + join_words(tied) if tied else ''} "
                      f"(mean task-normalised validation loss {significant(best, digits)}; {others})")
        return (f"{self.arm}: {choice}; the sentences here are for {first}{self.chosen}, and the tables list "
                f"every {what}.{self._edge_words()}{spread}{'' if tied else self._left_out_words()}{left_out}")

    def _edge_words(self) -> str:
        """Where the chosen learning rate is the highest or lowest of those tried: the best rate may
        lie beyond them, and the arm's verdicts are then at a rate short of it."""
        # Over every rate tried: one beyond the chosen that failed, or has not finished, is no edge.
        rates = {r for v in [*self.val_losses, *self.excluded, *self.unmatched] if (r := variant_rate(v)) is not None}
        chosen = variant_rate(self.chosen_variant)
        if chosen is None or len(rates) < 2 or min(rates) < chosen < max(rates):
            return ""
        edge, beyond = ("highest", "higher") if chosen == max(rates) else ("lowest", "lower")
        return f" It is the {edge} learning rate tried: a {beyond} one may do better still."

    def _left_out_words(self) -> str:
        """The choice made again without each seed: whether it moves, and GradNorm's test loss so judged
        (not said of alphas tied on validation: which of them a choice takes is then a convention)."""
        held = self.held_out
        if held.empty:
            return ""
        moved = held[held.point != self.chosen_variant]
        if moved.empty:
            return f" Chosen again with {each_left_out(held)}, validation picks {self.chosen_variant} every time."
        where = "; ".join(f"{v} for seed {int(s)}" for s, v in zip(moved.seed, moved.point))
        return (f" Chosen again with {each_left_out(held)}, validation picks another {self.what} ({where}); "
                f"judged on the seed each choice left out, test loss is {left_out_versus(held, self.chosen_variant)}.")


def _percent(value: float) -> str:
    """Two significant digits, never in exponent form (a learning rate's spread reaches 130 %).

    >>> _percent(0.27), _percent(28.4), _percent(131.6)
    ('0.27', '28', '132')
    """
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def each_left_out(held: pd.DataFrame) -> str:
    """The seeds a choice was made again without, one at a time: "each of seeds 0-2 left out in turn"."""
    return f"each of {seeds_words(sorted(int(s) for s in held.seed))} left out in turn"


def left_out_versus(held: pd.DataFrame, selected: str) -> str:
    """The mean test loss of the choices made again without each seed, each on the seed it left out,
    against that of the choice made on every seed, `selected`: "1.867 vs 1.300 for w=1,1"."""
    return f"{versus(float(held.normalized_test_loss.mean()), float(held.selected_test_loss.mean()))} for {selected}"


def _shared_seeds_words(seeds: list[int], unmatched: list[str], what: str) -> str:
    """Says that a choice on validation compared only the seeds that every candidate finished."""
    if not seeds:
        return ""
    which = seeds_words(seeds)
    plural = what.replace("setting", "settings", 1) if what.startswith("setting") else f"{what}s"
    words = (f" Its {plural} have not all finished the same seeds, so the means here and the choice "
             f"are over {which}, which every {what} compared has finished.")
    if unmatched:
        words += f" Left out until they finish {which}: {', '.join(unmatched)}."
    return words


@dataclass
class Comparison:
    study: str
    manifest: dict[str, Any]
    tasks: list[str]
    runs: pd.DataFrame
    records: list[dict[str, Any]]
    main: pd.DataFrame
    per_task: pd.DataFrame
    grids: dict[str, GridSelection]
    standings: pd.DataFrame
    comparisons: pd.DataFrame
    headline: list[str] = field(default_factory=list)
    choices: dict[str, VariantChoice] = field(default_factory=dict)
    # Grid arms with no point to choose (every point has a failed seed), and why: left out of the
    # tables and tests, which compare the other arms.
    unselectable: dict[str, str] = field(default_factory=dict)
    # Labels whose runs are, bit for bit, an earlier label's (see _twins): told once, not twice.
    twins: dict[str, str] = field(default_factory=dict)
    progress: StudyProgress | None = None  # every run queued in the store, finished or not
    storage: str | None = None  # the store's URL, where it is not the default
    # Compared as the runs stood at this evaluation step, or each at its best on validation
    # ("best-val"); None: at their end.
    at_step: int | str | None = None

    @property
    def title(self) -> str:
        """The study, and the step it is compared at where that is not its runs' end."""
        if self.at_step is None:
            return self.study
        return f"{self.study} at " + (f"step {self.at_step}" if isinstance(self.at_step, int)
                                      else "each run's best step on validation")

    @cached_property
    def passed_over(self) -> set[str]:
        """The labels the summary does not speak for: an arm's alphas or learning rates other than
        the one chosen on validation, and a GradNorm static arm's retrains of them (the tables
        list them all)."""
        return passed_over_labels(self.runs, self.choices, self.manifest)

    @property
    def report_name(self) -> str:
        """The report's folder under reports/: a study at a step has its own, beside the study's
        (a study's name cannot hold '@', so no study's report is taken)."""
        if self.at_step is None:
            return self.study
        return f"{self.study}@" + (f"step{self.at_step}" if isinstance(self.at_step, int) else str(self.at_step))

    @property
    def unfinished(self) -> str | None:
        """What a reader of a study still training must know first: which runs the tables lack."""
        p = self.progress
        if p is None or p.left == 0:
            return None
        state = ", ".join(f"{n} {what}" for n, what in ((p.running, "running"), (p.waiting, "waiting"))
                          if n) or "none running"
        return (f"{self.study} is not finished: {p.done} of {p.total} runs are stored ({state}). "
                "The tables, tests and figures cover the finished runs only; a grid's choice and the "
                f"verdicts can change. `{self.run_command}` finishes it (or helps, if it is running "
                "elsewhere).")

    @property
    def run_command(self) -> str:
        """The `bench run` command that trains this stored study: its file, with the options that
        made the stored study differ from the file (--quick, --seeds, --new-version)."""
        command = run_command(self.study, self.manifest, self.runs.seed.dropna().astype(int).tolist())
        return command + (f" --storage {shlex.quote(self.storage)}" if self.storage else "")

    @property
    def paired_sentences(self) -> list[str]:
        """The paired comparisons, described, one sentence each; an arm with no finished run gets
        one sentence, not one per rival that it shares no seed with."""
        if self.comparisons.empty:
            return []
        main = self.main.set_index("arm")
        finished = main.runs - main.failed
        sentences, said = [], set()
        for twin, same in self.twins.items():
            sentences.append(f"{twin}: the same runs as {same}, so its paired comparisons are {same}'s "
                             "(comparisons.csv lists them all).")
        for row in self.comparisons.itertuples():
            if row.arm in self.twins or row.versus in self.twins:
                continue
            if finished.get(row.arm, 1) > 0:
                sentences.append(row.sentence)
            elif row.arm not in said:
                said.add(row.arm)
                versus = self.comparisons.versus[self.comparisons.arm == row.arm]
                rivals = join_words([v for v in versus if v not in self.twins], "or")
                sentences.append(f"{row.arm} has no finished run: no paired comparison with {rivals}.")
        return sentences

    @cached_property  # read by the terminal and the report several times each
    def failures(self) -> pd.DataFrame:
        """One row per failed run, with the step it failed at and why."""
        failed = self.runs[self.runs.status == "failed"]
        failed = failed.reindex(columns=["arm", "run_key", "seed", "failed_step", "reason"]).reset_index(drop=True)
        # whole steps; NaN where the run never started (shown as "-")
        steps = pd.Series([v if math.isnan(v) else int(v) for v in failed.failed_step.astype(float)], dtype=object)
        return failed.assign(failed_step=steps)

    def label_runs(self, label: str) -> pd.DataFrame:
        return self.runs[self.runs.label == label]

    @cached_property  # read by the report's table and figure; a comparison per evaluation step
    def over_steps(self) -> pd.DataFrame:
        """GradNorm against the grid at each evaluation step (`verdicts_over_steps`)."""
        from bench.compare.over_steps import verdicts_over_steps  # it builds comparisons: a cycle at import

        return verdicts_over_steps(self)


def _study_text(manifest: dict[str, Any]) -> dict[str, Any]:
    try:
        return tomllib.loads(manifest.get("study_text") or "")
    except tomllib.TOMLDecodeError:
        return {}


def _name_suffix(study: str, manifest: dict[str, Any]) -> re.Match | None:
    """The stored name is the file's, then -quick for --quick, then -vN for --new-version."""
    name = str(_study_text(manifest).get("name", study))
    return re.fullmatch(re.escape(name) + r"(-quick)?(-v\d+)?", study)


def is_quick(study: str, manifest: dict[str, Any]) -> bool:
    """Whether stored study `study` was trained with `bench run --quick`."""
    suffix = _name_suffix(study, manifest)
    return bool(suffix and suffix[1])


def run_command(study: str, manifest: dict[str, Any], seeds: list[int]) -> str:
    """`bench run` for stored study `study` from its manifest; `seeds`: those of its finished runs."""
    text = _study_text(manifest)
    parts = ["bench", "run", "--study", shlex.quote(str(manifest.get("study_file") or study))]
    suffix = _name_suffix(study, manifest)
    if suffix and suffix[1]:
        parts.append("--quick")
    file_seeds = [s for s in text.get("seeds", []) if isinstance(s, int)]
    every_seed = sorted(set(file_seeds) | set(seeds))
    if every_seed != sorted(file_seeds):
        parts += ["--seeds", _seed_ranges(every_seed)]
    if suffix and suffix[2]:
        parts.append("--new-version")
    return " ".join(parts)


def seeds_words(seeds: list[int]) -> str:
    """'seed 3', or 'seeds 0-2,5'.

    >>> seeds_words([3]), seeds_words([0, 1, 2, 5])
    ('seed 3', 'seeds 0-2,5')
    """
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {_seed_ranges(seeds)}"


def _seed_ranges(seeds: list[int]) -> str:
    """0,1,2,3,7 -> '0-3,7', as `bench run --seeds` reads it."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


class NothingToCompare(BenchError):
    """No arm has a run that can be compared: none finished, or only a grid none of whose points
    can be chosen."""


def analyse(study: str, manifest: dict[str, Any], runs: pd.DataFrame, records: list[dict[str, Any]]) -> Comparison:
    """A study's tables and paired tests from its runs (`runs_table`) and their records; the
    summary's sentences are `bench.compare.summary`'s, and `build_comparison` adds them."""
    tasks = list(manifest.get("task_names", []))
    kinds = manifest.get("kinds", {})
    runs = runs.copy()
    if runs.empty:
        raise NothingToCompare(f"study {study!r} has no finished runs yet")
    runs = in_study_order(runs, kinds)  # as runs_table gives them, whatever order a caller passes
    runs["variant"] = runs.run_key.map(_variant)
    runs["kind"] = runs.arm.map(kinds)
    n_variants = runs.groupby("arm").variant.nunique()

    def label(row: Any) -> str:  # a row of `runs.itertuples()`
        if row.kind == "grid" or n_variants[row.arm] == 1 or not row.variant:
            return row.arm
        return f"{row.arm} ({row.variant})"

    runs["label"] = runs.apply(label, axis=1)
    grids, unselectable = {}, {}
    for arm in runs.arm.unique():
        if kinds.get(arm) == "grid":
            try:
                grids[arm] = _select(runs[runs.arm == arm], tasks)
            except NoPointToChoose as err:  # the other arms are still worth comparing
                unselectable[arm] = str(err)
    chosen = representatives(runs, grids)
    if chosen.empty:  # grids alone, none with a point to choose
        raise NothingToCompare(f"{next(iter(unselectable.values()))}, so there is nothing to compare")
    arm_order = {arm: i for i, arm in enumerate(runs.arm.unique())}
    chosen = chosen.sort_values("arm", key=lambda arms: arms.map(arm_order), kind="stable")
    main = _main_table(runs, chosen, grids, tasks, manifest)
    per_task = _per_task_table(chosen, tasks)
    standings = _standings(runs, grids, main)
    twins = _twins(chosen)
    choices = _choose_variants(runs)
    # An arm trained at several learning rates is represented in the paired tests by the rate
    # chosen on validation, as a grid by its point: a test of every rate against every other arm's
    # would swell Holm's family with settings no one would pick. Several alphas are all tested.
    comparisons = _paired(chosen, grids, manifest, main, twins,
                          passed_over_labels(runs, choices, manifest, rates_only=True))
    return Comparison(study, manifest, tasks, runs, records, main, per_task, grids, standings, comparisons,
                      choices=choices, unselectable=unselectable, twins=twins)


def passed_over_labels(runs: pd.DataFrame, choices: dict[str, VariantChoice], manifest: dict[str, Any],
                       *, rates_only: bool = False) -> set[str]:
    """The labels of each arm with a choice (`choices`; with `rates_only`, those among learning
    rates) other than its chosen variant, and of a GradNorm static arm's retrains of them."""
    chosen = {arm: choice.chosen_variant for arm, choice in choices.items()
              if not rates_only or choice.what != "alpha"}
    for static, source in manifest.get("gradnorm_static_sources", {}).items():
        if source in chosen:
            chosen[static] = chosen[source]
    return {label for arm, variant, label in zip(runs.arm, runs.variant, runs.label)
            if arm in chosen and variant != chosen[arm]}


def representatives(rows: pd.DataFrame, grids: dict[str, GridSelection]) -> pd.DataFrame:
    """The rows (runs, or their records) that represent each label of the tables: a grid's
    selected point, everything else as is. A grid whose selected point gives a task up is also
    represented by its best point that weights every task, under a label of its own."""
    keep = [kind != "grid" or (arm in grids and variant == grids[arm].selected)
            for arm, kind, variant in zip(rows.arm, rows.kind, rows.variant)]
    return pd.concat([rows[pd.Series(keep, index=rows.index, dtype=bool)],
                      *(rows[(rows.arm == arm) & (rows.variant == g.weighted_all)].assign(label=g.weighted_all_label)
                        for arm, g in grids.items() if g.weighted_all)])


# A choice on validation compares the variants on the largest seed set that at least this share
# of them has finished: a point or two still training do not bring the others down to fewer
# seeds, and points given more seeds do not leave out those without them.
SHARED_SEEDS_COVERAGE = 0.75


def _on_shared_seeds(ok: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """The finished runs of the seeds that the variants compared have all finished, and those
    seeds: what a choice on validation may compare. Seeds differ in difficulty (each draws its own
    data), so means over different seeds would favour a variant that has finished only the easy
    ones (a study still training, or one given more seeds). Of the seed sets the variants have
    finished, the largest that SHARED_SEEDS_COVERAGE of them have; failing that, the one the
    most of them have. Variants without it are left out."""
    seeds = ok.groupby("variant", sort=False).seed.agg(frozenset)
    candidates = set(seeds) | ({frozenset.intersection(*seeds)} - {frozenset()})
    covering = {c: int(seeds.map(c.issubset).sum()) for c in candidates}
    enough = [c for c in candidates if covering[c] >= SHARED_SEEDS_COVERAGE * len(seeds)]
    # Ties: the set that more variants have, then the lower seeds.
    shared = max(enough or candidates, key=lambda c: ((len(c), covering[c]) if enough else (covering[c], len(c)),
                                                      [-s for s in sorted(c)]))
    chosen = seeds[seeds.map(shared.issubset)].index
    return ok[ok.variant.isin(chosen) & ok.seed.isin(shared)], sorted(int(s) for s in shared)


# What must be equal, bit for bit, on every seed for two labels to be the same runs.
TWIN_MEASURES = ("normalized_train_loss", "normalized_val_loss", "normalized_test_loss")


def _twins(chosen: pd.DataFrame) -> dict[str, str]:
    """Each label whose runs are, bit for bit, those of an earlier label of another arm (the same
    seeds, each with the same status and losses on every split), mapped to the first such label.
    GradNorm with a weight floor that never bound trains as GradNorm without one, and its static
    retrain as the other's: every sentence on one would be said again of the other. A grid's
    labels are left out (a chosen point is a choice), as are an arm's own alphas (the alpha
    choice says when they tie)."""
    first: dict[tuple, str] = {}
    arm_of: dict[str, str] = {}
    twins = {}
    for label, g in chosen[chosen.kind != "grid"].groupby("label", sort=False):
        if not (g.status == "ok").any():
            continue
        # float.hex: exact, and NaN (a failed run's losses) equals NaN
        key = tuple(sorted((int(seed), status, *(float(v).hex() for v in values))
                           for seed, status, *values in zip(g.seed, g.status, *(g[m] for m in TWIN_MEASURES))))
        same = first.get(key)
        if same is not None and arm_of[same] != g.arm.iloc[0]:
            twins[label] = same
        else:
            first.setdefault(key, label)
            arm_of.setdefault(label, g.arm.iloc[0])
    return twins


# Arms whose variants are not chosen among on validation: a grid's point has its own selection,
# and a GradNorm static arm retrains each of its GradNorm arm's variants, following that arm's choice.
_NOT_CHOSEN_AMONG = ("grid", "gradnorm-static")


def _choose_variants(runs: pd.DataFrame) -> dict[str, VariantChoice]:
    """For each arm with several alphas or learning rates, the variant with the lowest mean
    validation loss among those without a failed seed, over the seeds they have all finished."""
    choices = {}
    choosing = runs[~runs.kind.isin(_NOT_CHOSEN_AMONG)]
    for arm, g in choosing.groupby("arm", sort=False):
        if g.label.nunique() < 2:
            continue
        failed = g[g.status != "ok"].variant.unique().tolist()
        eligible = g[~g.variant.isin(failed)]
        if eligible.empty:
            continue
        shared, seeds = _on_shared_seeds(eligible)
        means = shared.groupby("variant", sort=False)[["normalized_val_loss", "normalized_test_loss"]].mean()
        held_out = (_chosen_without_each_seed(shared, seeds, str(means.normalized_val_loss.idxmin()))
                    if len(means) > 1 else pd.DataFrame(columns=HELD_OUT_COLUMNS))
        differ = len(shared) < len(eligible)
        choices[arm] = VariantChoice(arm, {str(k): float(v) for k, v in means.normalized_val_loss.items()},
                                   [str(v) for v in failed],
                                   {str(k): float(v) for k, v in means.normalized_test_loss.items()},
                                   shared_seeds=seeds if differ else [],
                                   unmatched=[str(v) for v in eligible.variant.unique() if v not in means.index],
                                   held_out=held_out)
    return choices


class NoPointToChoose(BenchError):
    """A grid arm every point of which has a failed seed: none can be chosen on validation."""


def _select(grid_runs: pd.DataFrame, tasks: list[str]) -> GridSelection:
    # One groupby per statistic, not a loop over points: 10,000 points took 13 s point by point.
    by_point = grid_runs.groupby("variant", sort=False)
    points = pd.DataFrame({"seeds": by_point.size(),
                           "failed": (grid_runs.status != "ok").groupby(grid_runs.variant, sort=False).sum()})
    points["failed"] = points.failed.astype(int)
    for t in tasks:
        points[f"weight_{t}"] = by_point[f"weight_{t}"].nth(0).set_axis(points.index)
    finished = grid_runs[grid_runs.status == "ok"].groupby("variant", sort=False)
    means = ["normalized_val_loss", "normalized_test_loss", "normalized_train_loss", "normalized_overfitting_gap"]
    points = points.join(finished[means].mean())  # a point with no finished seed: NaN
    points["test_std"] = finished.normalized_test_loss.std(ddof=1)
    points = points.join(finished[[f"test_loss_{t}" for t in tasks]].mean())
    points = points.rename_axis("point").reset_index()
    points["all_weights_positive"] = (points[[f"weight_{t}" for t in tasks]] > 0).all(axis=1)
    eligible = points[points.failed == 0]
    if eligible.empty:  # nothing can be selected, so nothing compared: say why, in one line
        failed = grid_runs[grid_runs.status != "ok"]
        reasons = failed.reason.dropna() if "reason" in failed else pd.Series(dtype=object)
        common = f"; the most common reason: {reasons.mode().iloc[0]}" if len(reasons) else ""
        where = f"results/{grid_runs.study.iloc[0]}/runs.csv" if "study" in grid_runs else "the runs table"
        raise NoPointToChoose(f"the grid arm {grid_runs.arm.iloc[0]!r} has no point with every seed finished "
                              f"({len(failed)} of {len(grid_runs)} runs failed{common}; each run's reason is in "
                              f"{where})")
    candidates = grid_runs[grid_runs.variant.isin(eligible.point)]  # every run finished ok
    shared, seeds = _on_shared_seeds(candidates)
    order = "normalized_val_loss"
    if len(shared) < len(candidates):  # points with different seeds finished: choose on the shared ones
        order = "val_loss_on_shared_seeds"
        points[order] = points.point.map(shared.groupby("variant").normalized_val_loss.mean())
        eligible = points[(points.failed == 0) & points[order].notna()]
    ranked = eligible.sort_values(order, kind="stable")
    best = ranked.iloc[0]
    points["selected"] = points.point == best.point
    points = points.sort_values(order, kind="stable").reset_index(drop=True)
    selection = GridSelection(arm=grid_runs.arm.iloc[0], points=points, selected=best.point,
                              weights=[float(best[f"weight_{t}"]) for t in tasks],
                              excluded=int((points.failed > 0).sum()),
                              unweighted=[t for t in tasks if best[f"weight_{t}"] == 0],
                              shared_seeds=seeds if len(shared) < len(candidates) else [],
                              unmatched=len(points) - len(eligible) - int((points.failed > 0).sum()),
                              held_out=_chosen_without_each_seed(shared, seeds, best.point))
    if selection.unweighted:
        weighted = ranked[ranked.all_weights_positive]
        selection.n_weighted_all = len(weighted)
        if len(weighted):
            selection.weighted_all = weighted.iloc[0].point
            selection.weighted_all_weights = [float(weighted.iloc[0][f"weight_{t}"]) for t in tasks]
            if len(weighted) > 1:  # one point: no choice to make again
                selection.weighted_all_held_out = _chosen_without_each_seed(
                    shared[shared.variant.isin(weighted.point)], seeds, selection.weighted_all)
    return selection


def _chosen_without_each_seed(shared: pd.DataFrame, seeds: list[int], selected: str) -> pd.DataFrame:
    """For each seed, the variant (a grid's point, or an alpha) that the other seeds' mean
    validation loss chooses, its test loss on the seed left out, and the selected variant's there.
    The selected variant was chosen on the very networks whose test loss the tables report, and
    validation and test loss share each network's luck (its initialisation, its data): the best of
    many on validation is partly the luckiest. Judged on a seed its choice never saw, a choice has
    no such help (leave-one-seed-out; each choice sees one seed fewer, so if anything it is judged
    harshly). `shared`: the finished runs of the variants compared, on `seeds`, which they all have."""
    if len(seeds) < 2:
        return pd.DataFrame(columns=HELD_OUT_COLUMNS)
    order = shared.variant.unique()  # the points' own order: ties go to the first, as in _select
    val = shared.pivot_table(index="variant", columns="seed", values="normalized_val_loss").reindex(order)
    test = shared.pivot_table(index="variant", columns="seed", values="normalized_test_loss").reindex(order)
    rows = []
    for seed in seeds:
        point = val.drop(columns=seed).mean(axis=1).idxmin()
        rows.append({"seed": seed, "point": point, "normalized_test_loss": float(test.loc[point, seed]),
                     "selected_test_loss": float(test.loc[selected, seed])})
    return pd.DataFrame(rows, columns=HELD_OUT_COLUMNS)


def weights_words(weights: list[float]) -> str:
    """Weights as the sentences write them: "w=2.81,0.176,0.011"."""
    return "w=" + ",".join(f"{w:.3g}" for w in weights)


def point_words(point: str, weights: list[float]) -> str:
    """A grid point as readers know it: its weights (an Optuna trial's name, then its weights)."""
    return point if point.startswith("w=") else f"{point}: {weights_words(weights)}"


def static_words(arm: str, weights: list[float], evidence: str = "") -> str:
    """A study's own static arm as the sentences name it: its name and weights (and the evidence
    of a verdict, in the same parentheses)."""
    return f"the static weights of {arm} ({weights_words(weights)}" + (f"; {evidence}" if evidence else "") + ")"


def _weights_of(g: pd.DataFrame, tasks: list[str]) -> list[float]:
    """The weights a label trained with, mean over its finished runs: static weights (a grid
    point's are the same on every seed; a GradNorm-static retrain's are its own seed's GradNorm
    average), or time-averaged adaptive ones."""
    ok = g[g.status == "ok"]
    if ok.empty:
        return [math.nan] * len(tasks)
    varying = ok.balancer.iloc[0] in VARYING_WEIGHTS
    weights = []
    for t in tasks:
        column = ok[f"mean_weight_{t}"] if varying or ok[f"weight_{t}"].isna().any() else ok[f"weight_{t}"]
        # Equal weights are kept exactly as stored (a mean could move them in the last bit).
        weights.append(float(column.iloc[0]) if column.nunique() == 1 else float(column.mean()))
    return weights


def _main_table(runs: pd.DataFrame, chosen: pd.DataFrame, grids: dict[str, GridSelection], tasks: list[str],
                manifest: dict[str, Any]) -> pd.DataFrame:
    rows = []
    sources = manifest.get("gradnorm_static_sources", {})
    for label, g in chosen.groupby("label", sort=False):
        arm = g.arm.iloc[0]
        own = g
        if arm in grids:  # a grid costs every point it trained; its every-task row, only those points
            own = runs[runs.arm == arm]
            if label == grids[arm].weighted_all_label:
                own = own[(own[[f"weight_{t}" for t in tasks]] > 0).all(axis=1)]
        ok = g[g.status == "ok"]
        test = stats.summarize(ok.normalized_test_loss.tolist())
        row = {
            "arm": label, "kind": g.kind.iloc[0], "runs": len(own),
            "failed": int((own.status != "ok").sum()),
            "normalized_test_loss": test.mean, "test_std": test.std,
            "test_ci95_low": test.ci_low, "test_ci95_high": test.ci_high,
            "normalized_val_loss": ok.normalized_val_loss.mean(),
            "normalized_train_loss": ok.normalized_train_loss.mean(),
            "normalized_overfitting_gap": ok.normalized_overfitting_gap.mean(),
            "seeds": test.n,
            "wall_time_s": float(own.wall_time_s.sum()),
            "weights": _weights_of(g, tasks),
        }
        if arm in sources:  # GradNorm static cannot exist without its GradNorm runs
            src = runs[(runs.arm == sources[arm]) & (runs.variant == g.variant.iloc[0])]
            row["wall_time_with_source_s"] = row["wall_time_s"] + float(src.wall_time_s.sum())
        if arm in grids:
            row["selected_point"] = g.variant.iloc[0]
        rows.append(row)
    main = pd.DataFrame(rows)
    for optional in ("wall_time_with_source_s", "selected_point"):
        if optional not in main:
            main[optional] = None
    return main


def _per_task_table(chosen: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    rows = []
    metric_cols = sorted({c.split("_", 1)[1].rsplit("_", 1)[0] for c in chosen.columns
                          if c.startswith("test_") and not c.startswith(("test_loss_",))
                          and c.rsplit("_", 1)[-1] in tasks})
    for label, g in chosen.groupby("label", sort=False):
        ok = g[g.status == "ok"]
        for t in tasks:
            row = {"arm": label, "task": t,
                   "test_loss": ok[f"test_loss_{t}"].mean(),
                   "test_loss_std": ok[f"test_loss_{t}"].std(ddof=1) if len(ok) > 1 else math.nan,
                   "train_loss": ok[f"train_loss_{t}"].mean(),
                   "overfitting_gap": ok[f"overfitting_gap_{t}"].mean(),
                   "weight": _weights_of(g, tasks)[tasks.index(t)]}
            for metric in metric_cols:
                col = f"test_{metric}_{t}"
                if col in ok and ok[col].notna().any():
                    row[f"test_{metric}"] = ok[col].mean()
            rows.append(row)
    return pd.DataFrame(rows)


def _standings(runs: pd.DataFrame, grids: dict[str, GridSelection], main: pd.DataFrame) -> pd.DataFrame:
    rows = []
    weights = dict(zip(main.arm, main.weights))
    tests = dict(zip(main.arm, main.normalized_test_loss))
    for label in main.arm[main.kind.isin(["gradnorm", "gradnorm-static"])]:
        if math.isnan(tests[label]):  # every run of it failed: nothing to place
            continue
        for arm, grid in grids.items():
            value, grid_values = placing(runs, label, tests[label], grid)
            s = stats.standing(value, grid_values.tolist())
            rows.append({"arm": label, "grid": arm, **s.as_dict(),
                         "distance_to_selected": stats.l2_distance(weights[label], grid.weights),
                         "selected_point": grid.selected})
    return pd.DataFrame(rows, columns=["arm", "grid", "rank", "n_points", "n_better", "percentile",
                                       "distance_to_selected", "selected_point"])


def placing(runs: pd.DataFrame, label: str, mean_test: float, grid: GridSelection) -> tuple[float, pd.Series]:
    """Label's mean test loss and the grid's eligible points' (indexed by point), over the same
    seeds: those the point was chosen on, where the points have finished different seeds (a point
    with only the easy seeds would otherwise count as better), and of those, the ones `label`
    has finished (GradNorm with two of three seeds failed was set, on its one seed, against the
    points' means over three). Where they share every seed, or none, each over all its seeds."""
    own, on = _placed_runs(runs, label, grid)
    if on is None:
        return mean_test, grid.points[grid.points.failed == 0].set_index("point").normalized_test_loss
    return own.normalized_test_loss.mean(), on.groupby("variant").normalized_test_loss.mean()


def placing_means(runs: pd.DataFrame, label: str, grid: GridSelection,
                  columns: list[str]) -> tuple[pd.Series, pd.DataFrame]:
    """As `placing`, for any columns of the runs table that the grid's points table also has
    (the per-task test losses): label's means (a Series) and the eligible points' (a frame
    indexed by point), over the same seeds."""
    own, on = _placed_runs(runs, label, grid)
    if on is None:
        return own[columns].mean(), grid.points[grid.points.failed == 0].set_index("point")[columns]
    return own[columns].mean(), on.groupby("variant")[columns].mean()


def points_seeds(runs: pd.DataFrame, grid: GridSelection) -> list[int]:
    """The seeds a grid's eligible points are compared over: those the point was chosen on where
    the points have finished different seeds, else every seed they finished."""
    if grid.shared_seeds:
        return sorted(grid.shared_seeds)
    return sorted(set(_eligible_runs(runs, grid).seed.astype(int)))


def _eligible_runs(runs: pd.DataFrame, grid: GridSelection) -> pd.DataFrame:
    """The finished runs of the grid's points without a failed seed."""
    points = grid.points[grid.points.failed == 0]
    return runs[(runs.arm == grid.arm) & runs.variant.isin(points.point) & (runs.status == "ok")]


def _placed_runs(runs: pd.DataFrame, label: str, grid: GridSelection) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Label's finished runs and the eligible points' on the seeds `placing` compares them on;
    None for the points' runs where each is taken over all its seeds."""
    own = runs[(runs.label == label) & (runs.status == "ok")]
    grid_runs = _eligible_runs(runs, grid)
    grid_seeds = set(points_seeds(runs, grid))
    seeds = set(own.seed) & grid_seeds
    if not seeds or (seeds == grid_seeds and not grid.shared_seeds):
        return own, None
    on = grid_runs[grid_runs.seed.isin(seeds)]
    complete = on.groupby("variant").seed.nunique() == len(seeds)  # points with every one of those seeds
    return own[own.seed.isin(seeds)], on[on.variant.isin(complete.index[complete])]


def per_seed(g: pd.DataFrame) -> dict[int, float]:
    """Each seed's task-normalised test loss, from the finished runs among `g` (one label's)."""
    ok = g[g.status == "ok"]
    return dict(zip(ok.seed.astype(int), ok.normalized_test_loss))


def _paired(chosen: pd.DataFrame, grids: dict[str, GridSelection], manifest: dict[str, Any], main: pd.DataFrame,
            twins: dict[str, str], passed_over: Collection[str] = ()) -> pd.DataFrame:
    kinds = {label: kind for label, kind in zip(main.arm, main.kind) if label not in passed_over}
    weights_of = dict(zip(main.arm, main.weights))
    by_label = {label: per_seed(g) for label, g in chosen.groupby("label", sort=False)}
    variant_of = chosen.groupby("label").variant.first().to_dict()
    arm_of = chosen.groupby("label").arm.first().to_dict()
    sources = manifest.get("gradnorm_static_sources", {})
    pairs = []
    for label, kind in kinds.items():
        if kind == "gradnorm":
            for arm, grid in grids.items():
                chosen_words = ", chosen on validation" if len(grid.points) > 1 else ""
                pairs.append((label, arm, f"{_best_of(len(grid.points))} "
                              f"({point_words(grid.selected, grid.weights)}{chosen_words})"))
                if grid.weighted_all:
                    pairs.append((label, grid.weighted_all_label,
                                  f"{grid.weighted_all_words} ({point_words(grid.weighted_all, grid.weighted_all_weights)}, "
                                  "chosen on validation)"))
            # The other weighting methods, random weights among them (Lin et al.'s litmus test).
            pairs.extend((label, other, BASELINE_WORDS[k]) for other, k in kinds.items() if k in BASELINE_WORDS)
            # Static weights the study names (weights in use, or scaled by each task's loss scale):
            # the alternative to GradNorm a practitioner already has.
            pairs.extend((label, other, static_words(other, weights_of[other]))
                         for other, k in kinds.items() if k == "static")
        if kind == "gradnorm-static":
            source = [lb for lb in kinds if arm_of.get(lb) == sources.get(arm_of[label])
                      and variant_of.get(lb) == variant_of[label]]
            pairs.extend((label, s, s) for s in source)
        if kind != "equal" and kind != "grid":
            pairs.extend((label, eq, "equal weights") for eq, k in kinds.items() if k == "equal")
    rows = []
    for a, b, b_words in pairs:
        result = stats.paired(by_label[a], by_label[b])
        rows.append({"arm": a, "versus": b, **result.as_dict(),
                     "sentence": stats.describe(a, b_words, result)})
    frame = pd.DataFrame(rows, columns=["arm", "versus", "n", "wins", "losses", "mean_a", "mean_b",
                                        "mean_difference", "difference_ci_low", "difference_ci_high",
                                        "p_value", "wilcoxon_p", "effect_size", "sentence"])
    # A study reports several tests at once: Holm's adjustment over all its paired t-tests says
    # which differences survive as a family (the verdicts name it where it changes them). A twin's
    # test is its counterpart's test again (see _twins): counted once, it takes that test's p_holm.
    alone = _in_family(frame, twins)
    frame.insert(frame.columns.get_loc("p_value") + 1, "p_holm", math.nan)
    frame.loc[alone, "p_holm"] = stats.holm(frame.p_value[alone])
    adjusted = dict(zip(zip(frame.arm[alone], frame.versus[alone]), frame.p_holm[alone]))
    frame.loc[~alone, "p_holm"] = [adjusted.get((twins.get(a, a), twins.get(b, b)), math.nan)
                                   for a, b in zip(frame.arm[~alone], frame.versus[~alone])]
    return frame


def _best_of(n: int) -> str:
    """A grid's chosen point in a sentence: "the best of 66 grid points", or of a grid of one
    point, "the grid's only point"."""
    return f"the best of {n} grid points" if n > 1 else "the grid's only point"


def _in_family(comparisons: pd.DataFrame, twins: dict[str, str]) -> pd.Series:
    """The paired rows in Holm's family: those of no twin (a twin's test is its counterpart's)."""
    return ~comparisons.arm.isin(list(twins)) & ~comparisons.versus.isin(list(twins))


def family_size(comparisons: pd.DataFrame, twins: dict[str, str]) -> int:
    """The number of t-tests Holm's adjustment was over: a twin's test, which takes its
    counterpart's p_holm, is not counted again."""
    return int((comparisons.p_value.notna() & _in_family(comparisons, twins)).sum())


__all__ = ["Comparison", "GridSelection", "analyse", "placing", "placing_means"]
