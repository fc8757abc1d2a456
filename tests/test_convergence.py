"""The summary's sentence on runs still improving when their budget ended
(`bench.compare.convergence`): measured on validation curves, over the budget's last fifth."""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import pytest

from bench.compare import build_comparison, load_comparison
from bench.compare.analysis import Comparison, representatives
from bench.compare.convergence import STILL_IMPROVING, late_improvement, still_improving_sentence
from bench.store import ResultStore
from bench.store.export import task_normalised
from tests.test_at_step import tiny_study


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch) -> Comparison:
    """The tiny study (10 steps, evaluated at 0, 5 and 10; two seeds), compared at its end."""
    return load_comparison(tiny_study(tmp_path, monkeypatch), "tiny")


def with_falls(c: Comparison, falls: dict[str, float], *, steps: tuple[int, ...] | None = None) -> Comparison:
    """`c` again, its records' validation losses at step 5 set so that each run of a label in
    `falls` falls by that fraction from step 5 to step 10 (task a's loss carries it all);
    `steps`: keep only these evaluations in every record."""
    records = copy.deepcopy(c.records)
    chosen = representatives(c.runs, c.grids)
    label_of = dict(zip(zip(chosen.arm, chosen.run_key), chosen.label))
    for entry in records:
        curves, normalisers = entry["record"]["curves"], entry["record"]["normalisers"]
        fall = falls.get(label_of.get((entry["arm"], entry["run_key"])))
        if fall is not None:
            five, ten = curves["step"].index(5), curves["step"].index(10)
            end = task_normalised(curves["val"][ten], normalisers)
            rest = task_normalised(curves["val"][five][1:], normalisers[1:])
            curves["val"][five][0] = (end / (1 - fall) - rest) * normalisers[0]
        if steps is not None:
            keep = [j for j, step in enumerate(curves["step"]) if step in steps]
            for key in ("step", "train", "val", "test"):
                curves[key] = [curves[key][j] for j in keep]
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    return build_comparison(c.study, c.manifest, runs, records)


def test_each_arm_falls_by_its_median_runs_fall_in_validation_loss_over_the_last_fifth(tiny):
    late = late_improvement(tiny)
    # The last evaluation at or before 80% of the 10 steps is step 5: a half, scaled to a fifth.
    assert (late.start, late.end) == (5, 10) and late.per_fifth == pytest.approx(0.4)
    chosen = representatives(tiny.runs[tiny.runs.status == "ok"], tiny.grids)
    records = {(e["arm"], e["run_key"]): e["record"] for e in tiny.records}
    expected = {}
    for label, runs in chosen.groupby("label", sort=False):
        falls = []
        for key in zip(runs.arm, runs.run_key):
            curves, normalisers = records[key]["curves"], records[key]["normalisers"]
            before, after = (task_normalised(curves["val"][curves["step"].index(s)], normalisers) for s in (5, 10))
            falls.append((before - after) / before)
        expected[label] = statistics.median(falls)
    # Only the alpha chosen on validation, and its static retrains, speak for GradNorm's arms.
    assert tiny.passed_over == {f"{arm} (alpha={other})" for arm in ("gradnorm", "gradnorm-static")
                                for other in {"0.5", "1"} - {tiny.choices["gradnorm"].chosen_variant[6:]}}
    assert set(late.falls.index) == set(expected) - set(tiny.twins) - tiny.passed_over
    for label, fall in late.falls.items():
        assert fall == pytest.approx(expected[label])
    # The tiny study's runs fall by under 2.3% over their last half: not still improving.
    assert late.improving.empty and still_improving_sentence(tiny) is None


def test_the_sentence_names_the_arms_still_improving_and_by_how_much(tiny):
    arms = list(late_improvement(tiny).falls.index)
    # 4.5% over the last half is 1.8% a fifth, short of the 2% mark; 10% (4% a fifth) is past it.
    short = 0.9 * STILL_IMPROVING / 0.4
    one = with_falls(tiny, {**dict.fromkeys(arms, short), "equal": 0.10})
    assert list(late_improvement(one).improving.index) == ["equal"]
    sentence = still_improving_sentence(one)
    assert sentence in one.headline
    assert sentence.startswith("The runs were still improving when the budget ended: over the last 5 of 10 "
                               f"steps, the median run of equal (1 of {len(arms)} arms) lowered its task-normalised "
                               "validation loss by 10.0% (more than 2% per fifth of the budget counts as still "
                               "improving).")
    every = with_falls(tiny, dict(zip(arms, [0.06 + 0.01 * i for i in range(len(arms))])))
    assert f"every arm's median run lowered its task-normalised validation loss by 6.0% to {5 + len(arms)}.0%" \
        in still_improving_sentence(every)
    # The tables and tests read the runs' ends, which the late curves do not touch.
    assert every.comparisons.drop(columns="sentence").equals(tiny.comparisons.drop(columns="sentence"))
    none = with_falls(tiny, dict.fromkeys(arms, short))
    assert still_improving_sentence(none) is None and not any("still improving" in s for s in none.headline)


def test_no_sentence_without_an_evaluation_before_the_last_fifth_or_at_an_earlier_step(tiny, tmp_path):
    arms = list(late_improvement(tiny).falls.index)
    improving = with_falls(tiny, dict.fromkeys(arms, 0.5))
    assert still_improving_sentence(improving) is not None
    # Evaluated at the start and the end only: the fall from the start is training, not its tail.
    assert late_improvement(with_falls(tiny, dict.fromkeys(arms, 0.5), steps=(0, 10))) is None
    # Read at step 5, the runs are mid-training by construction; read at step 10, at their end.
    store = ResultStore(create=False)
    assert late_improvement(load_comparison(store, "tiny", at_step=5)) is None
    assert late_improvement(load_comparison(store, "tiny", at_step=10)).falls.equals(late_improvement(tiny).falls)
    assert late_improvement(load_comparison(store, "tiny", at_step="best-val")) is None
