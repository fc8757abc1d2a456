"""Statistics and tables of the comparison, on hand-made results with known answers."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bench.compare import build_comparison
from bench.compare.analysis import VariantChoice, family_size, run_command
from bench.compare.stats import describe, difference, holm, l2_distance, paired, significant, standing, summarize
from bench.errors import BenchError
from bench.store.results import StudyProgress
from bench.store.storage import shareable_url
from bench.report import figures
from bench.report.figures import _loss_scale, arm_colours

TASKS = ["a", "b"]


def test_summary_mean_std_and_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) / math.sqrt(3)
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.ci_low == pytest.approx(2 - half) and s.ci_high == pytest.approx(2 + half)
    assert math.isnan(summarize([4.0]).ci_low)
    # A run with no value (None, NaN or inf) counts in none of them.
    assert summarize([1.0, None, 2.0, math.nan, 3.0, math.inf]) == s


def test_standing_among_grid_points():
    s = standing(1.5, [1.0, 2.0, 3.0, 4.0])
    assert (s.rank, s.n_better, s.n_points, s.percentile) == (2, 1, 4, 75.0)
    best = standing(0.5, [1.0, 2.0])
    assert (best.rank, best.n_better, best.percentile) == (1, 0, 100.0)
    # A point tied with the value is neither better nor worse.
    tied = standing(2.0, [1.0, 2.0, 3.0, 4.0])
    assert (tied.rank, tied.n_better, tied.percentile) == (2, 1, 50.0)


def test_l2_distance():
    assert l2_distance([3.0, 0.0], [1.0, 1.0]) == pytest.approx(math.sqrt(5))


@pytest.mark.parametrize("value, digits, text", [
    (2.4, 4, "2.400"), (2.478, 4, "2.478"), (237.84, 4, "237.8"), (9249.4, 4, "9249"),
    (123456.7, 4, "123457"), (0.30412, 3, "0.304"), (9.99996, 4, "10.00"), (-6.0, 2, "-6.0"),
    (0.0090, 2, "0.0090"), (0.00045, 2, "0.00045"), (1.2e-7, 3, "1.20e-07"), (0.0, 4, "0"), (math.nan, 4, "nan"),
    (999999.4, 4, "999999"), (321065144.0, 4, "3.211e+08"),
])
def test_figures_in_sentences_keep_their_significant_digits(value, digits, text):
    # 2.400 next to 2.478 says the figure is as precise as its neighbour; 2.4 would not.
    assert significant(value, digits) == text


def test_paired_comparison_and_its_sentence():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 2.0, 1: 3.0, 2: 5.0, 3: 9.0}  # seed 3 has no partner: left out
    r = paired(a, b)
    assert (r.n, r.wins) == (3, 3)
    # A seed without a finite value on either side is no pair either.
    assert paired({**a, 4: math.nan, 5: 1.0, 6: None}, {**b, 4: 1.0, 5: math.inf, 6: 1.0}) == r
    assert r.mean_difference == pytest.approx(-4 / 3)
    assert r.p_value == pytest.approx(sps.ttest_rel([1, 2, 3], [2, 3, 5]).pvalue)
    assert r.p_value == pytest.approx(0.0572, abs=1e-3)  # t = -4 with 2 degrees of freedom
    assert r.effect_size == pytest.approx((-4 / 3) / math.sqrt(1 / 3))
    # Student's interval of the mean difference: -4/3 -/+ t(0.975, 2 df) x sd / sqrt(3), sd = sqrt(1/3).
    half = sps.t.ppf(0.975, 2) * math.sqrt(1 / 3) / math.sqrt(3)
    assert (r.difference_ci_low, r.difference_ci_high) == (pytest.approx(-4 / 3 - half), pytest.approx(-4 / 3 + half))
    sentence = describe("GradNorm", "the best of 66 grid points", r)
    assert sentence.startswith("GradNorm has a lower test loss than the best of 66 grid points on 3/3 seeds")
    assert "vs 3.333, difference -1.3, 95% CI -2.8 to +0.10, paired t-test p = 0.057" in sentence
    worse = paired({0: 2.0, 1: 3.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})  # two losses, one tie
    assert (worse.wins, worse.losses) == (0, 2)
    assert describe("GradNorm", "the grid", worse).startswith("GradNorm has a higher test loss than the grid on 2/3 seeds")
    # The grid's selected point can be equal weights themselves: the same runs, the same losses.
    same = paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert describe("equal", "the grid", same).startswith(
        "equal is level with the grid, lower on 0 and higher on 0 of 2 seeds (")
    assert "no test (equal on every seed)" in describe("equal", "the grid", same)
    assert math.isnan(same.p_value) and math.isnan(same.wilcoxon_p)  # SciPy's Wilcoxon says 1.0, and warns
    alone = paired({0: 1.0}, {0: 2.0})
    assert math.isnan(alone.difference_ci_low) and math.isnan(alone.difference_ci_high)
    # One seed: its two losses are the whole comparison, with no interval to add.
    assert describe("a", "b", alone).endswith(
        "(mean task-normalised test loss 1.000 vs 2.000, no test (too few seeds)).")
    # Lower by the same amount on every seed: no spread, so t is infinite and p is 0.
    steady = paired({0: 1.0, 1: 2.0, 2: 4.0}, {0: 1.5, 1: 2.5, 2: 4.5})
    assert (steady.p_value, steady.effect_size, steady.wins) == (0.0, -math.inf, 3)
    assert "paired t-test p < 0.0001, effect size d = -inf" in describe("a", "b", steady)
    assert (steady.difference_ci_low, steady.difference_ci_high) == (-0.5, -0.5)
    assert "difference -0.50 on every seed, paired t-test" in describe("a", "b", steady)
    clear = dataclasses.replace(steady, p_value=0.00052, effect_size=-3.14159)
    assert "paired t-test p = 0.00052, effect size d = -3.1)" in describe("a", "b", clear)
    # Lower on most seeds, higher on the mean (one seed far off): both are said.
    mixed = paired({0: 1.0, 1: 1.0, 2: 5.0}, {0: 2.0, 1: 2.0, 2: 2.0})
    assert describe("mine", "equal weights", mixed).startswith(
        "mine has a lower test loss than equal weights on 2/3 seeds, though a higher mean (mean "
        "task-normalised test loss 2.333 vs 2.000, ")
    assert describe("equal", "mine", paired({0: 2.0, 1: 2.0, 2: 2.0}, {0: 1.0, 1: 1.0, 2: 5.0})).startswith(
        "equal has a higher test loss than mine on 2/3 seeds, though a lower mean (")
    assert "though" not in describe("GradNorm", "the grid", worse) + sentence


def test_the_wilcoxon_p_value_is_exact_for_few_seeds_even_with_a_tied_seed():
    """A seed on which both arms tie is left out (Wilcoxon's rule) and the rest are tested
    exactly. SciPy before 1.15 warned and switched to a normal approximation, at n = 2: 0.18."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tied = paired({0: 1.0, 1: 2.0, 2: 3.5}, {0: 1.0, 1: 3.0, 2: 5.0})
        assert tied.wilcoxon_p == pytest.approx(0.5)  # two differences, one sign: 2 x 1/4
        assert paired({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0},
                      {0: 1.5, 1: 2.5, 2: 3.5, 3: 4.2}).wilcoxon_p == pytest.approx(0.125)  # 2 x 1/16


def _run(arm, key, seed, val, test, train, weights=None, mean_weights=None, balancer="static",
         status="ok", tasks=TASKS):
    row = {"arm": arm, "run_key": key, "seed": seed, "status": status, "balancer": balancer,
           "normalized_val_loss": val, "normalized_test_loss": test, "normalized_train_loss": train,
           "normalized_overfitting_gap": test - train, "wall_time_s": 1.0, "device": "cpu"}
    for i, t in enumerate(tasks):
        row[f"weight_{t}"] = weights[i] if weights else None
        row[f"mean_weight_{t}"] = (mean_weights or weights)[i]
        row[f"test_loss_{t}"] = test / len(tasks)
        row[f"train_loss_{t}"] = train / len(tasks)
        row[f"overfitting_gap_{t}"] = (test - train) / len(tasks)
    return row


def hand_made(seeds: int = 3):
    rows = []
    # Three grid points; the middle one is best on validation, the first is best on test.
    grid = {(2.0, 0.0): (1.30, 1.00), (1.0, 1.0): (1.00, 1.20), (0.0, 2.0): (1.50, 1.60)}
    for w, (val, test) in grid.items():
        for seed in range(seeds):
            rows.append(_run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, val + 0.01 * seed,
                             test + 0.01 * seed, test - 0.3, weights=w))
    for seed, test in zip(range(seeds), (1.10, 1.12, 1.13, 1.11, 1.14)):
        rows.append(_run("gradnorm", f"alpha=0.12/seed={seed}", seed, 1.05, test, test - 0.1,
                         mean_weights=(1.5, 0.5), balancer="gradnorm"))
        rows.append(_run("equal", f"seed={seed}", seed, 1.4, 1.4 + 0.01 * seed, 1.2, weights=(1.0, 1.0)))
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"},
                "gradnorm_static_sources": {}}
    return build_comparison("hand", manifest, pd.DataFrame(rows), [])


def test_grid_point_is_selected_on_validation_not_test():
    c = hand_made()
    grid = c.grids["grid"]
    assert grid.selected == "w=1,1" and grid.weights == [1.0, 1.0]
    main = c.main.set_index("arm")
    assert main.loc["grid", "normalized_test_loss"] == pytest.approx(1.21)
    assert main.loc["grid", "runs"] == 9


def test_the_per_task_table_by_hand():
    """Each label's per-task test loss (mean and sample std over seeds), train loss,
    overfitting gap (test minus train) and weight, from its representative runs."""
    table = hand_made().per_task.set_index(["arm", "task"])
    # The selected point w=1,1: test losses 1.20, 1.21, 1.22 and train 0.9, split over 2 tasks.
    grid = table.loc[("grid", "a")]
    assert (grid.test_loss, grid.test_loss_std) == (pytest.approx(0.605), pytest.approx(0.005))
    assert (grid.train_loss, grid.overfitting_gap, grid.weight) == (pytest.approx(0.45), pytest.approx(0.155), 1.0)
    equal = table.loc[("equal", "b")]  # test 1.40, 1.41, 1.42 against train 1.2
    assert (equal.train_loss, equal.overfitting_gap) == (pytest.approx(0.6), pytest.approx(0.105))
    gradnorm = table.loc[("gradnorm", "b")]  # test 0.1 above train on every seed; mean weight 0.5
    assert (gradnorm.overfitting_gap, gradnorm.weight) == (pytest.approx(0.05), pytest.approx(0.5))


def test_gradnorm_standing_distance_and_paired_tests():
    c = hand_made()
    s = c.standings.set_index("arm").loc["gradnorm"]
    # GradNorm's mean test 1.1167: one grid point (mean 1.01) is better, two are worse.
    assert (s["rank"], s["n_better"], s["n_points"]) == (2, 1, 3)
    assert s["percentile"] == pytest.approx(200 / 3)
    assert s["distance_to_selected"] == pytest.approx(l2_distance([1.5, 0.5], [1.0, 1.0]))
    versus_grid = c.comparisons[(c.comparisons.arm == "gradnorm") & (c.comparisons.versus == "grid")].iloc[0]
    assert (versus_grid.n, versus_grid.wins) == (3, 3)
    assert "the best of 3 grid points" in versus_grid.sentence
    versus_equal = c.comparisons[(c.comparisons.arm == "gradnorm") & (c.comparisons.versus == "equal")].iloc[0]
    assert versus_equal.wins == 3
    # On how many seeds, as the other verdicts say: a mean carried by one runaway seed reads
    # otherwise as a riddle ("does not differ significantly": 3.2e+08 vs 2.640).
    assert " for the point chosen on validation, lower on 3 of 3 seeds; 1 of 3 grid points has a lower test loss. " in c.headline[0]  # not "1 of 3 ... have"
    assert "Cost: 3 runs (3.0 s) against 9 runs (9.0 s)." in c.headline[0]  # not "(3 s)", "(0 s)" for 0.4
    one = c.runs.drop(columns=["variant", "kind", "label"])
    one = one[(one.seed == 0) | (one.arm == "grid")]
    assert "Cost: 1 run (1.0 s) against 9 runs" in build_comparison("one", c.manifest, one, []).headline[0]
    main = c.main.set_index("arm")
    assert main.loc["gradnorm", "normalized_overfitting_gap"] == pytest.approx(0.1)
    assert main.loc["gradnorm", "weights"] == [1.5, 0.5]
    verdict = "beats" if versus_grid.p_value < 0.05 else "does not differ significantly from"
    assert c.headline[0].startswith(
        f"gradnorm {verdict} the grid search (grid; paired over 3 seeds, {difference(versus_grid)}, "
        f"p = {versus_grid.p_value:.2g}): "
        f"test loss {significant(versus_grid.mean_a)} vs {significant(versus_grid.mean_b)}")


def test_gradnorm_is_put_to_the_random_weighting_litmus_test():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    # Random weights drawn at every step average to about 1 each; these runs lose on every seed.
    rlw = [_run("rlw", f"seed={seed}", seed, 1.3, test, test - 0.2, mean_weights=(0.98, 1.02),
                balancer="rlw") for seed, test in zip((0, 1, 2), (1.31, 1.35, 1.30))]
    uncertainty = [_run("uncertainty", f"seed={seed}", seed, 1.0, test, test - 0.1, mean_weights=(1.2, 0.8),
                        balancer="uncertainty") for seed, test in zip((0, 1, 2), (1.05, 1.15, 1.10))]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "rlw": "rlw", "uncertainty": "uncertainty"}}
    again = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(rlw + uncertainty)]), [])
    pairs = again.comparisons.set_index(["arm", "versus"])
    row = pairs.loc[("gradnorm", "rlw")]
    assert (row.n, row.wins) == (3, 3)
    assert row.sentence.startswith("gradnorm has a lower test loss than random loss weighting on 3/3 seeds")
    assert ("rlw", "equal") in pairs.index and ("rlw", "gradnorm") not in pairs.index
    # GradNorm is paired with the other weighting methods too, but only rlw makes the summary.
    assert pairs.loc[("gradnorm", "uncertainty")].sentence.startswith(
        "gradnorm has a higher test loss than uncertainty weighting on 2/3 seeds")
    assert not any("uncertainty" in line for line in again.headline)
    assert again.main.set_index("arm").loc["rlw", "weights"] == [0.98, 1.02]  # time-averaged
    assert again.headline[-1] == (
        f"gradnorm beats random loss weighting (rlw; paired over 3 seeds, {difference(row)}, p = {row.p_value:.2g}), "
        "Lin et al.'s litmus test for a weighting method: test loss "
        f"{significant(row.mean_a)} vs {significant(row.mean_b)}, lower on 3 of 3 seeds.")
    assert row.p_value < 0.05
    # Without an rlw arm, no such line.
    assert not any("random loss weighting" in line for line in c.headline)


def test_gradnorm_is_set_against_every_static_arm_the_study_names():
    """A static arm (weights in use, or each task's loss scale) is the alternative to GradNorm a
    practitioner already has: it is paired with GradNorm and makes the summary, said from the side
    that wins more seeds."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    scaled = [_run("scaled", f"seed={seed}", seed, 0.9, test, test - 0.2, weights=(1.8, 0.2))
              for seed, test in zip((0, 1, 2), (1.00, 1.03, 1.01))]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "scaled": "static"}}
    again = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(scaled)]), [])
    pairs = again.comparisons.set_index(["arm", "versus"])
    row = pairs.loc[("gradnorm", "scaled")]
    assert (row.n, row.wins, row.losses) == (3, 0, 3)
    assert row.sentence.startswith(
        "gradnorm has a higher test loss than the static weights of scaled (w=1.8,0.2) on 3/3 seeds")
    assert ("scaled", "equal") in pairs.index
    line = next(line for line in again.headline if "static weights of scaled" in line)
    verdict = "is beaten by" if row.p_value < 0.05 else "does not differ significantly from"
    assert line == (f"gradnorm {verdict} the static weights of scaled (w=1.8,0.2; paired over 3 seeds, "
                    f"{difference(row)}, p = {row.p_value:.2g}): test loss "
                    f"{significant(row.mean_a)} vs {significant(row.mean_b)}, "
                    "higher on 3 of 3 seeds. Overfitting gap (test - train): 0.100 vs 0.200.")
    assert not any("static weights of" in line for line in c.headline)  # no static arm, no line


def test_a_gradnorm_static_arm_shows_the_mean_of_its_seeds_weights_not_the_first_seeds():
    """Each seed's retrain uses its own seed's GradNorm average, so the seeds' weights differ.
    The arm was shown with seed 0's weights (1.00, 1.00 on multifashion, where the mean is
    0.974, 1.026), in the tables, the landscape figure and the distance to the grid's point."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    per_seed = {0: (1.0, 1.0), 1: (1.4, 0.6), 2: (1.8, 0.2)}
    static = [_run("gradnorm-static", f"seed={seed}", seed, 1.0, 1.1, 1.0, weights=w) for seed, w in per_seed.items()]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "gradnorm-static": "gradnorm-static"},
                "gradnorm_static_sources": {"gradnorm-static": "gradnorm"}}
    again = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(static)]), [])
    assert again.main.set_index("arm").loc["gradnorm-static", "weights"] == pytest.approx([1.4, 0.6])
    per_task = again.per_task.set_index(["arm", "task"])
    assert per_task.loc[("gradnorm-static", "b"), "weight"] == pytest.approx(0.6)
    standing = again.standings.set_index("arm").loc["gradnorm-static"]
    assert standing.distance_to_selected == pytest.approx(l2_distance([1.4, 0.6], [1.0, 1.0]))
    # Weights that are the same on every seed stay exactly as stored.
    assert again.main.set_index("arm").loc["equal", "weights"] == [1.0, 1.0]


def test_a_gradnorm_static_arm_costs_its_own_runs_and_with_them_its_gradnorm_runs():
    """GradNorm static cannot exist without the GradNorm runs it averages: its cost with them is
    its own wall time plus theirs (the runs of the alpha it retrains, each run 1 s here)."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    other_alpha = runs[runs.arm == "gradnorm"].assign(run_key=lambda r: r.run_key.str.replace("0.12", "0.5"),
                                                      normalized_val_loss=2.0)
    static = [_run("gradnorm-static", f"alpha=0.12/seed={seed}", seed, 1.0, 1.1, 1.0, weights=(1.5, 0.5))
              for seed in range(3)]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "gradnorm-static": "gradnorm-static"},
                "gradnorm_static_sources": {"gradnorm-static": "gradnorm"}}
    again = build_comparison("hand", manifest, pd.concat([runs, other_alpha, pd.DataFrame(static)]), [])
    row = again.main.set_index("arm").loc["gradnorm-static"]
    assert (row.wall_time_s, row.wall_time_with_source_s) == (3.0, 6.0)


def test_gradnorm_is_set_against_loss_scale_weights_in_the_summary():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    scaled = [_run("loss-scale", f"seed={seed}", seed, 0.9, test, test - 0.2, mean_weights=(1.7, 0.3),
                   balancer="loss-scale") for seed, test in zip((0, 1, 2), (1.00, 1.13, 1.02))]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "loss-scale": "loss-scale"}}
    again = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(scaled)]), [])
    row = again.comparisons.set_index(["arm", "versus"]).loc[("gradnorm", "loss-scale")]
    assert (row.n, row.wins, row.losses) == (3, 1, 2)
    assert row.sentence.startswith("gradnorm has a higher test loss than weights scaled by 1 / L_i(0) on 2/3 seeds")
    assert again.main.set_index("arm").loc["loss-scale", "weights"] == [1.7, 0.3]  # as trained
    assert (f"gradnorm does not differ significantly from static weights scaled by each task's first-step "
            f"loss, 1 / L_i(0) (loss-scale; paired over 3 seeds, {difference(row)}, "
            f"p = {row.p_value:.2g}): test loss "
            f"{significant(row.mean_a)} vs {significant(row.mean_b)}, higher on 2 of 3 seeds.") in again.headline[-2]
    assert again.headline[-1].startswith("gradnorm beats equal weights")


def test_a_study_without_a_grid_still_has_a_verdict_against_equal_weights():
    """The paper's baseline: a study of GradNorm against equal weights and DWA had a summary of
    GradNorm's weight counts only."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    manifest = {**c.manifest, "kinds": {"gradnorm": "gradnorm", "equal": "equal"}}
    no_grid = build_comparison("hand", manifest, runs[runs.arm != "grid"], [])
    row = no_grid.comparisons.set_index(["arm", "versus"]).loc[("gradnorm", "equal")]
    # Differences -0.30, -0.29, -0.29: mean -0.2933, sd 0.00577, and t(0.975, 2 df) = 4.303 gives
    # -0.2933 -/+ 4.303 x 0.00577 / sqrt(3) = -0.308 to -0.279.
    assert no_grid.headline == [
        "gradnorm beats equal weights (equal; paired over 3 seeds, difference -0.29, 95% CI -0.31 to -0.28, "
        f"p = {row.p_value:.2g}): test loss 1.117 vs 1.410, "
        "lower on 3 of 3 seeds. Overfitting gap (test - train): 0.100 vs 0.210."]


def test_numbers_that_differ_print_differently_beside_the_verdict():
    """With one seed there is no test: the words follow the means, so "has a lower test loss than
    ... 1.110 vs 1.110" must show the digits that decide it."""
    c = hand_made(seeds=1)
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    scaled = [_run("loss-scale", "seed=0", 0, 0.9, 1.10004, 1.0, mean_weights=(1.7, 0.3), balancer="loss-scale")]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "loss-scale": "loss-scale"}}
    again = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(scaled)]), [])
    line = next(line for line in again.headline if "first-step loss" in line)
    assert line.startswith("gradnorm has a lower test loss than static weights scaled by each task's first-step loss")
    assert "test loss 1.10000 vs 1.10004, lower on 1 of 1 seed." in line
    row = again.comparisons.set_index(["arm", "versus"]).loc[("gradnorm", "loss-scale")]
    assert "(mean task-normalised test loss 1.10000 vs 1.10004, no test (too few seeds))" in row.sentence


def test_the_summary_says_when_gradnorms_weights_crossed_zero_or_met_their_floor():
    c = hand_made()
    assert not any("<= 0" in line or "floor" in line for line in c.headline)
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    gradnorm = runs.arm == "gradnorm"
    runs["steps_done"] = 400
    runs.loc[gradnorm, "nonpositive_weight_steps"] = [0, 29, 241]
    runs.loc[gradnorm, "floor_binding_steps"] = 0
    again = build_comparison("hand", c.manifest, runs, [])
    assert again.headline[-1].startswith("gradnorm: a task weight was <= 0 on 29 to 241 of 400 steps in 2 of 3 "
                                         "runs. The paper imposes no floor")
    assert "`floor`" in again.headline[-1] and "`weight_lr`" in again.headline[-1]
    runs.loc[gradnorm, "nonpositive_weight_steps"] = 0
    runs.loc[gradnorm, "floor_binding_steps"] = [12, 12, 12]
    floored = build_comparison("hand", c.manifest, runs, [])
    assert floored.headline[-1] == "gradnorm: the floor held a task weight up on 12 of 400 steps in 3 of 3 runs."
    assert floored.headline[:-1] == c.headline


def twin_study(floor_binding: int = 0, nudge: float = 0.0):
    """hand_made's study with a floored GradNorm arm whose runs are gradnorm's (nudged by `nudge`
    on one seed's test loss), and both arms' static retrains, alike too."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    runs["floor_binding_steps"] = 0.0
    gradnorm = runs[runs.arm == "gradnorm"]
    static = gradnorm.assign(arm="gradnorm-static", balancer="static", floor_binding_steps=math.nan,
                             normalized_test_loss=gradnorm.normalized_test_loss - 0.05)
    floored = gradnorm.assign(arm="gradnorm-floor", floor_binding_steps=float(floor_binding))
    floored.iloc[0, floored.columns.get_loc("normalized_test_loss")] += nudge
    runs = pd.concat([runs, floored, static, static.assign(arm="gradnorm-floor-static")], ignore_index=True)
    manifest = {**c.manifest,
                "kinds": {**c.manifest["kinds"], "gradnorm-floor": "gradnorm", "gradnorm-static": "gradnorm-static",
                          "gradnorm-floor-static": "gradnorm-static"},
                "gradnorm_static_sources": {"gradnorm-static": "gradnorm", "gradnorm-floor-static": "gradnorm-floor"},
                "identity": {"arms": {"gradnorm": {"kind": "gradnorm", "alpha": [0.12]},
                                      "gradnorm-floor": {"kind": "gradnorm", "alpha": [0.12], "floor": 0.05}}}}
    return build_comparison("hand", manifest, runs, [])


def test_arms_that_trained_alike_are_told_once_not_sentence_by_sentence():
    """In MultiMNIST, GradNorm's floor never binds: the floored arm and its static retrain are the
    same runs as GradNorm's and its retrain's, and the summary said every sentence twice."""
    c = twin_study()
    assert c.twins == {"gradnorm-floor": "gradnorm", "gradnorm-floor-static": "gradnorm-static"}
    assert ("gradnorm-floor trained exactly as gradnorm: the same losses, to the last bit, on each of its 3 "
            "finished runs (its weight floor never bound). What is said of gradnorm holds for it, and is not "
            "said twice.") in c.headline
    assert ("gradnorm-floor-static trained exactly as gradnorm-static: the same losses, to the last bit, on each "
            "of its 3 finished runs (they retrain the runs of gradnorm-floor and gradnorm, which were the "
            "same).") in " ".join(c.headline)
    assert not any(line.startswith(("gradnorm-floor beats", "gradnorm-floor-static does")) for line in c.headline)
    assert c.headline[0].startswith("gradnorm beats the grid search")
    sentences = c.paired_sentences
    assert sentences[0] == ("gradnorm-floor: the same runs as gradnorm, so its paired comparisons are gradnorm's "
                            "(comparisons.csv lists them all).")
    assert not any(s.startswith("gradnorm-floor has") or "than gradnorm-floor" in s for s in sentences)
    # `bench compare --format json` names them for scripts.
    from bench.cli.compare import _comparison_object
    assert _comparison_object(c, None)["same_runs"] == {"gradnorm-floor": "gradnorm",
                                                        "gradnorm-floor-static": "gradnorm-static"}
    # The tables keep every arm and every test.
    assert {"gradnorm-floor", "gradnorm-floor-static"} <= set(c.main.arm)
    assert (c.comparisons.arm == "gradnorm-floor").sum() == (c.comparisons.arm == "gradnorm").sum()
    # Differing in one seed's last bit: not alike, each told for itself.
    apart = twin_study(nudge=1e-12)
    assert apart.twins == {"gradnorm-floor-static": "gradnorm-static"}  # the retrains here are still alike
    assert any(line.startswith("gradnorm-floor beats the grid search") for line in apart.headline)
    assert ("gradnorm-floor-static trained exactly as gradnorm-static: the same losses, to the last bit, on each "
            "of its 3 finished runs. What") in " ".join(apart.headline)  # no reason given: their sources differ
    # A floor that bound is said so, with no reason the two would be alike.
    held = twin_study(floor_binding=7)
    assert "(its weight floor never bound)" not in " ".join(held.headline)
    assert ("gradnorm-floor trained exactly as gradnorm: the same losses, to the last bit, on each of its 3 "
            "finished runs. What") in " ".join(held.headline)


def test_a_twins_tests_are_its_counterparts_and_count_once_in_holms_family():
    """Each of gradnorm-floor's tests is gradnorm's again: counted twice, they made every p_holm
    larger (each twin arm doubled the family of a study like MultiMNIST's)."""
    c = twin_study()
    without = c.runs[~c.runs.arm.isin(["gradnorm-floor", "gradnorm-floor-static"])].drop(
        columns=["variant", "kind", "label"])
    alone = build_comparison("hand", c.manifest, without, []).comparisons.set_index(["arm", "versus"])
    both = c.comparisons.set_index(["arm", "versus"])
    assert len(both) > len(alone)
    pd.testing.assert_series_equal(both.p_holm.loc[alone.index], alone.p_holm)
    for (a, b), p_holm in both.p_holm.items():
        counterpart = (c.twins.get(a, a), c.twins.get(b, b))
        if counterpart in alone.index:
            assert p_holm == alone.p_holm[counterpart] or math.isnan(p_holm) and math.isnan(alone.p_holm[counterpart])
    assert family_size(c.comparisons, c.twins) == int(alone.p_value.notna().sum())


def test_a_test_against_a_twin_is_the_test_against_its_counterpart_and_counts_once():
    """A second equal-weights arm (the same runs under another name) is a twin that other arms
    are tested against: each such test is the one against equal again."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    copy = runs[runs.arm == "equal"].assign(arm="equal-again")
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "equal-again": "equal"}}
    both = build_comparison("hand", manifest, pd.concat([runs, copy], ignore_index=True), [])
    assert both.twins == {"equal-again": "equal"}
    tests = both.comparisons.set_index(["arm", "versus"])
    assert tests.p_holm[("gradnorm", "equal-again")] == tests.p_holm[("gradnorm", "equal")] == c.comparisons.set_index(
        ["arm", "versus"]).p_holm[("gradnorm", "equal")]
    assert family_size(both.comparisons, both.twins) == family_size(c.comparisons, c.twins)


def test_figures_with_a_panel_per_gradnorm_arm_draw_twins_once_and_name_them():
    """MultiMNIST's report drew gradnorm-floor's weights, gradient norms and grid distances in
    panels of their own, each the same as gradnorm's beside it."""
    c = twin_study()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    trajectory = [[0, 1.0, 1.0], [1, 1.2, 0.8], [2, 1.1, 0.9]]
    traces = {"grad_norms": [[0, 1.0, 2.0], [1, 1.5, 1.5]], "target_norms": [[0, 1.5, 1.5], [1, 1.5, 1.5]]}
    records = [{"arm": arm, "run_key": key, "record": {"weights_trajectory": trajectory, "traces": traces}}
               for arm, key in zip(runs.arm, runs.run_key) if arm in ("gradnorm", "gradnorm-floor")]
    c = build_comparison("hand", c.manifest, runs, records)
    for draw in (figures.weight_trajectories, figures.gradient_norms):
        fig = draw(c)
        titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
        assert len(titles) == 1 and titles[0].startswith("gradnorm:"), draw.__name__
        assert titles[0].endswith("(gradnorm-floor: the same runs)"), draw.__name__
        plt.close(fig)
    fig = figures.distance_to_gradnorm(c)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 1 and "(gradnorm-floor: the same runs)" in shown[0].get_xlabel().replace("\n", " ")
    plt.close(fig)
    # The landscape's lines: one per weighting, named with its twin.
    fig = figures.grid_landscape(c)
    names = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert [n.split(" (w_0")[0] for n in names if "(w_0" in n] == [
        "gradnorm = gradnorm-floor", "equal", "gradnorm-static = gradnorm-floor-static"]
    plt.close(fig)


def test_an_arm_whose_every_alpha_trained_as_another_arms_has_its_alpha_choice_told_once():
    c = twin_study()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    other_alpha = runs[runs.arm.isin(["gradnorm", "gradnorm-floor"])].assign(
        run_key=lambda r: r.run_key.str.replace("alpha=0.12", "alpha=1"),
        normalized_val_loss=lambda r: r.normalized_val_loss + 0.01)
    again = build_comparison("hand", c.manifest, pd.concat([runs, other_alpha], ignore_index=True), [])
    assert again.twins["gradnorm-floor (alpha=0.12)"] == "gradnorm (alpha=0.12)"
    assert again.twins["gradnorm-floor (alpha=1)"] == "gradnorm (alpha=1)"
    assert [line.split(":")[0] for line in again.headline if "validation chose" in line] == ["gradnorm"]
    # alpha=1, passed over on validation, has no sentence of its own, nor of its twin
    assert not any(line.startswith("gradnorm-floor (alpha=1)") for line in again.headline)
    assert any(line.startswith("gradnorm-floor (alpha=0.12) trained exactly as gradnorm (alpha=0.12)")
               for line in again.headline)


def test_the_summary_says_when_gradnorms_gradient_norms_stayed_far_from_their_targets():
    """Weights swinging across zero leave G_i far from G_bar r_i^alpha on average; nothing else in
    the tables shows that GradNorm did not balance."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    gradnorm = runs.arm == "gradnorm"
    manifest = {**c.manifest, "identity": {"budget": {"tail_fraction": 0.5}}}
    runs.loc[gradnorm, "norm_target_gap"] = [0.003, 0.012, 0.733]  # the NYUv2 rate on sigma = (1, 100)
    runs.loc[gradnorm, "nonpositive_weight_steps"] = [0, 0, 1315]
    far = build_comparison("hand", manifest, runs, [])
    assert far.headline[-1] == (
        "gradnorm: GradNorm did not reach its own targets in 1 of 3 runs: over the last 50% of the "
        "steps, their gradient norms at W were 73% away from them on average (sum_i |mean G_i/G_bar - "
        "mean r_i^alpha| / sum_i mean r_i^alpha; 0 is on target; the other runs, within 1%). A task "
        "weight crossed zero in 1 of them: weights that swing so (a `weight_lr` too large) leave the "
        "norms off target; the weight and gradient-norm figures show which.")
    # No weight near zero: too few steps (`--quick` left every run 56% away).
    runs.loc[gradnorm, "norm_target_gap"] = [0.3, 0.4, 0.5]
    runs.loc[gradnorm, "nonpositive_weight_steps"] = 0
    short = build_comparison("hand", manifest, runs, []).headline[-1]
    assert "in 3 of 3 runs" in short and "crossed zero in 3" not in short
    assert short.endswith("No task weight crossed zero in them: the weights were likely still on their way, "
                          "in too few steps for their `weight_lr`; the weight and gradient-norm figures "
                          "show which.")
    quick = build_comparison("hand-quick", {**manifest, "study_text": 'name = "hand"'}, runs, []).headline[-1]
    assert "`weight_lr` (a --quick study has a tenth of the steps); the" in quick
    runs.loc[gradnorm, "norm_target_gap"] = [0.002, 0.14, 0.004]
    assert build_comparison("hand", manifest, runs, []).headline == c.headline
    runs["norm_target_gap"] = None  # runs stored before the targets were recorded
    assert build_comparison("hand", manifest, runs, []).headline == c.headline


def test_the_gradient_norm_figure_draws_each_task_and_its_target():
    c = hand_made()
    traces = {"grad_norms": [[0, 0.1, 1.9], [1, 0.9, 1.1], [2, 1.0, 1.0]],
              "target_norms": [[0, 1.0, 1.0], [1, 1.0, 1.0], [2, 1.0, 1.0]]}
    # Seeds 1 and 2 differ at step 0 only, and their norms are twice seed 0's: G_i / G_bar is what counts.
    doubled_target = [[0, 2.0, 2.0], *traces["target_norms"][1:]]
    seed_traces = {0: traces,
                   1: {"grad_norms": [[0, 0.8, 3.2], *traces["grad_norms"][1:]], "target_norms": doubled_target},
                   2: {"grad_norms": [[0, 1.4, 2.6], *traces["grad_norms"][1:]], "target_norms": doubled_target}}
    records = [{"arm": "gradnorm", "run_key": f"alpha=0.12/seed={seed}", "record": {"traces": seed_traces[seed]}}
               for seed in (0, 1, 2)]
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    ax = figures.gradient_norms(build_comparison("hand", c.manifest, runs, records)).axes[0]
    drawn = sorted(tuple(np.round(line.get_ydata(), 6)) for line in ax.lines if len(line.get_xdata()) == 3)
    # G_i / G_bar per task, averaged over seeds (task a at step 0: 0.1, 0.4 and 0.7), then the targets at 1.
    assert drawn == [(0.4, 0.9, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.6, 1.1, 1.0)]
    assert ax.get_yscale() == "log"  # 0.1 to 1.9: more than a decade
    ax.figure.canvas.draw()
    labels = {t.get_text() for t in [*ax.get_yticklabels(), *ax.get_yticklabels(minor=True)]} - {""}
    assert {"0.1", "1"} <= labels and not any("10^" in label for label in labels), labels  # not 10^{-1}
    old = [{**r, "record": {"traces": {"grad_norms": r["record"]["traces"]["grad_norms"]}}} for r in records]
    assert figures.gradient_norms(build_comparison("hand", c.manifest, runs, old)) is None
    plt.close("all")


def test_the_alpha_figure_draws_test_loss_per_alpha_the_choice_on_validation_and_the_other_arms():
    c = hand_made()
    assert figures.setting_sensitivity(c) is None  # one alpha: nothing to draw
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    tests = {"0": (1.30, 1.32, 1.31), "1.5": (0.90, 0.93, 0.91), "3": (1.00, 1.05, 1.02)}
    extra = [_run(arm, f"alpha={a}/seed={seed}", seed, 1.2, t + shift, t - 0.1, mean_weights=(1.4, 0.6),
                  balancer="gradnorm" if arm == "gradnorm" else "static")
             for a, losses in tests.items() for seed, t in enumerate(losses)
             for arm, shift in (("gradnorm", 0.0), ("gradnorm-static", 0.05))]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "gradnorm-static": "gradnorm-static"},
                "gradnorm_static_sources": {"gradnorm-static": "gradnorm"}}
    several = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(extra)]), [])
    assert several.choices["gradnorm"].chosen_variant == "alpha=0.12"  # 1.05 on validation, the others 1.2
    fig = figures.setting_sensitivity(several)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    lines = {line.get_label(): line for line in ax.lines}
    gradnorm = lines["gradnorm"]
    assert list(gradnorm.get_xdata()) == [0.0, 0.12, 1.5, 3.0]
    assert ax.get_xscale() == "symlog"  # 0.12 to 3: the small alphas kept apart, 0 on the axis too
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.12", "1.5", "3"]  # as the study writes them
    assert ax.get_xlim()[0] < 0 < ax.get_xlim()[0] + 0.12  # alpha = 0 inside the frame, no negative decade
    assert list(gradnorm.get_ydata()) == pytest.approx([1.31, 1.1166667, 0.9133333, 1.0233333])
    assert list(lines["gradnorm-static"].get_ydata()) == pytest.approx([1.36, 0.9633333, 1.0733333])  # no 0.12 retrain
    star = next(col for col in ax.collections if col.get_label() == "gradnorm: alpha chosen on validation")
    assert star.get_offsets().tolist() == [pytest.approx([0.12, 1.1166667])]  # chosen on validation, not on test (1.5)
    main = several.main.set_index("arm").normalized_test_loss
    for level in ("grid", "equal"):
        assert lines[level].get_ydata()[0] == pytest.approx(main[level])
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["gradnorm", "gradnorm: alpha chosen on validation"]
    plt.close(fig)
    # The alphas are shades of GradNorm's one hue, light to dark; the other arms keep their hues
    # (six alphas and their retrains had taken the whole palette, and the grid's pink with it).
    colours = arm_colours(several)
    shades = [colours[f"gradnorm (alpha={a})"] for a in ("0.12", "0", "1.5", "3")]  # the tables' order
    assert [sum(rgb) for rgb in shades] == sorted((sum(rgb) for rgb in shades), reverse=True)
    assert len(set(shades)) == 4
    # equal, GradNorm, its static retrain and the grid: the palette's first four hues, in that order
    assert (colours["equal"], colours["grid"]) == (figures._ARM_PALETTE[0], figures._ARM_PALETTE[3])
    assert all(colours[f"gradnorm-static (alpha={a})"] not in shades for a in ("0", "1.5", "3"))


def test_the_alpha_figure_has_a_panel_and_legend_entries_for_each_gradnorm_arm_with_several_alphas():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    extra = [_run(arm, f"alpha={alpha}/seed={seed}", seed, 1.1, 1.0, 0.9, mean_weights=(1.4, 0.6), balancer="gradnorm")
             for arm, alphas in (("gradnorm", ("1.5",)), ("gradnorm-floor", ("0.12", "1.5"))) for alpha in alphas
             for seed in (0, 1, 2)]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "gradnorm-floor": "gradnorm"}}
    fig = figures.setting_sensitivity(build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(extra)]), []))
    assert [ax.get_title().split(":")[0] for ax in fig.axes if ax.get_visible()] == ["gradnorm", "gradnorm-floor"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"gradnorm", "gradnorm-floor", "gradnorm-floor: alpha chosen on validation", "grid", "equal"} <= set(legend)
    assert len(legend) == len(set(legend))  # the levels both panels draw, once
    plt.close(fig)


def test_with_several_alphas_the_summary_speaks_for_the_one_chosen_on_validation():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    # alpha = 1.5 is worse on validation (1.06 against 1.05) and far better on test: choosing it
    # on test would flatter GradNorm, as choosing the grid's point on test would flatter the grid.
    better_on_test = [_run("gradnorm", f"alpha=1.5/seed={seed}", seed, 1.06, test, test - 0.1,
                           mean_weights=(1.4, 0.6), balancer="gradnorm")
                      for seed, test in zip((0, 1, 2), (0.90, 0.93, 0.91))]
    again = build_comparison("hand", c.manifest, pd.concat([runs, pd.DataFrame(better_on_test)]), [])
    choice = again.choices["gradnorm"]
    assert choice.chosen == "gradnorm (alpha=0.12)"
    assert again.headline[0] == (
        "gradnorm: validation chose alpha=0.12 of 2 values (mean task-normalised validation loss 1.050; "
        "alpha=1.5: 1.060); the sentences here are for gradnorm (alpha=0.12), and the tables list every alpha. "
        "Across them, test loss runs from 0.9133 (alpha=1.5) to 1.117 (alpha=0.12), 22 % apart. Chosen again with "
        "each of seeds 0-2 left out in turn, validation picks alpha=0.12 every time.")
    assert again.headline[1].startswith("gradnorm (alpha=0.12) beats the grid search")
    assert not any("alpha=1.5" in line for line in again.headline[1:])
    assert {"gradnorm (alpha=0.12)", "gradnorm (alpha=1.5)"} <= set(again.main.arm)  # every alpha in the tables
    assert ("gradnorm (alpha=1.5)", "grid") in set(zip(again.comparisons.arm, again.comparisons.versus))
    # A failed seed leaves its alpha out of the choice, as it does a grid point.
    runs_failed = pd.concat([runs, pd.DataFrame(better_on_test)])
    runs_failed.loc[runs_failed.run_key == "alpha=0.12/seed=1", "status"] = "failed"
    failed = build_comparison("hand", c.manifest, runs_failed, [])
    assert failed.choices["gradnorm"].chosen == "gradnorm (alpha=1.5)"
    assert failed.headline[0] == (
        "gradnorm: alpha=1.5 is the only one of 2 values with every seed finished; the sentences here are for "
        "gradnorm (alpha=1.5), and the tables list every alpha. Left out for a failed seed: alpha=0.12.")
    assert c.choices == {}  # one alpha: nothing to choose


def test_alphas_alike_to_six_digits_are_printed_with_the_digits_that_tell_them_apart():
    """GradNorm at several alpha can end alike to six digits (Adam moves its weights by the sign of
    each gap); every value read 2.72760 and the choice looked arbitrary."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    close = [_run("gradnorm", f"alpha=1.5/seed={seed}", seed, 1.0500004, test + 3e-7, test - 0.1,
                  mean_weights=(1.5, 0.5), balancer="gradnorm")
             for seed, test in zip((0, 1, 2), (1.10, 1.12, 1.13))]
    line = build_comparison("hand", c.manifest, pd.concat([runs, pd.DataFrame(close)]), []).headline[0]
    assert "validation loss 1.0500000; alpha=1.5: 1.0500004)" in line
    assert "test loss runs from 1.1166667 (alpha=0.12) to 1.1166670 (alpha=1.5)" in line


@pytest.mark.parametrize("stored, seeds, command", [
    ("grid", [0, 1, 2], "bench run --study studies/grid.toml"),
    ("grid", [0, 1], "bench run --study studies/grid.toml"),  # unfinished: the file's seeds
    ("grid", list(range(10)), "bench run --study studies/grid.toml --seeds 0-9"),
    ("grid", [0, 1, 2, 3, 7, 8], "bench run --study studies/grid.toml --seeds 0-3,7,8"),
    ("grid-quick", [0, 1, 2], "bench run --study studies/grid.toml --quick"),
    ("grid-v2", [0, 1, 2], "bench run --study studies/grid.toml --new-version"),
    ("grid-quick-v3", [0, 4], "bench run --study studies/grid.toml --quick --seeds 0-2,4 --new-version"),
])
def test_the_run_command_recreates_the_stored_study_not_just_its_file(stored, seeds, command):
    manifest = {"study_file": "studies/grid.toml", "study_text": 'name = "grid"\nseeds = [0, 1, 2]\n'}
    assert run_command(stored, manifest, seeds) == command


def test_an_unfinished_study_says_so_before_anything_else():
    c = hand_made()
    assert c.unfinished is None  # built from runs alone: nothing known of runs still queued
    c.manifest = {**c.manifest, "study_file": "hand.toml", "study_text": 'name = "hand"\nseeds = [0, 1, 2]\n'}
    c.progress = StudyProgress(total=20, done=15, failed=0, running=3, waiting=2)
    assert c.unfinished == (
        "hand is not finished: 15 of 20 runs are stored (3 running, 2 waiting). The tables, tests and figures "
        "cover the finished runs only; a grid's choice and the verdicts can change. `bench run --study hand.toml` "
        "finishes it (or helps, if it is running elsewhere).")
    c.progress = StudyProgress(total=20, done=18, failed=1, running=0, waiting=2)
    assert "(2 waiting)" in c.unfinished
    c.progress = StudyProgress(total=20, done=20, failed=1, running=0, waiting=0)
    assert c.unfinished is None


def test_figures_with_a_panel_per_alpha_put_at_most_two_in_a_row():
    """Three alphas drew three panels side by side, shrunk to unreadable text in the report."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    gradnorm = runs[runs.arm == "gradnorm"]
    alphas = pd.concat([gradnorm.assign(run_key=gradnorm.run_key.str.replace("0.12", a)) for a in ("0.12", "1.5", "3")])
    records = [{"arm": "gradnorm", "run_key": key, "record": {"weights_trajectory": [[0, 1.0, 1.0], [1, 1.5, 0.5]]}}
               for key in alphas.run_key]
    three = build_comparison("hand", c.manifest, pd.concat([runs[runs.arm != "gradnorm"], alphas]), records)
    for fig in (figures.weight_trajectories(three), figures.distance_to_gradnorm(three)):
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 3
        columns = {round(ax.get_position().x0, 3) for ax in visible}
        rows = {round(ax.get_position().y0, 3) for ax in visible}
        assert (len(columns), len(rows)) == (2, 2)
    plt.close("all")


def test_the_report_explains_verdicts_only_where_gradnorm_meets_a_grid(tmp_path):
    from bench.report import write_report

    c = hand_made()
    html = write_report(c, tmp_path).read_text()
    assert "Verdicts (" in html and "no GradNorm arm compared with a grid" not in html
    # No grid, but a summary line all the same (GradNorm's weights crossed zero).
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    runs = runs[runs.arm != "grid"].assign(nonpositive_weight_steps=5, steps_done=100)
    manifest = {**c.manifest, "kinds": {"gradnorm": "gradnorm", "equal": "equal"}}
    no_grid = build_comparison("hand", manifest, runs, [])
    assert no_grid.headline and not no_grid.grids
    html = write_report(no_grid, tmp_path / "no-grid").read_text()
    assert "a task weight was &lt;= 0 on 5 of 100 steps" in html
    assert "no GradNorm arm compared with a grid;" in html and "Verdicts (" not in html
    plt.close("all")


def test_a_report_shows_and_says_only_what_its_study_has(tmp_path):
    """A study of baselines only had a "Grid" link to a section that was not there, the grid's
    paragraph above its table of arms, empty selected_point and wall_time_with_source_s columns,
    and the lead "GradNorm against a grid search over static task weights"; one seed had columns
    of spread with nothing in them."""
    import re

    from bench.report import write_report

    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    manifest = {**c.manifest, "kinds": {"gradnorm": "gradnorm", "equal": "equal"}}
    no_grid = build_comparison("hand", manifest, runs[runs.arm.isin(["gradnorm", "equal"])], [])
    for comparison, folder in ((c, tmp_path / "grid"), (no_grid, tmp_path / "no-grid")):
        html = write_report(comparison, folder).read_text()
        ids = set(re.findall(r'id="([^"]+)"', html))
        assert set(re.findall(r'href="#([^"]+)"', html)) <= ids  # every link in the page leads somewhere
        main_table = html.split("<h3>Arms</h3>")[1].split("</table>")[0]
        has_grid = comparison is c
        assert ('href="#grid"' in html) == has_grid
        assert ("A grid is represented by its point" in main_table) == has_grid
        assert ("selected_point" in main_table) == has_grid
        assert "wall_time_with_source_s" not in main_table  # neither has a GradNorm static arm
    assert "selected_point" in (tmp_path / "no-grid" / "hand" / "main.csv").read_text().splitlines()[0]
    assert "selected_point" not in (tmp_path / "no-grid" / "hand" / "main.md").read_text()  # for reading, as the page
    assert "selected_point" in (tmp_path / "grid" / "hand" / "main.md").read_text()
    # Without a description, the page's lead names the arms, not "GradNorm against a grid search".
    assert '<p class="lead">Arms: gradnorm, equal.<br>' in (tmp_path / "no-grid" / "hand" / "index.html").read_text()
    # The grid's choice made again without each seed: a table under the grid's, and its CSV (grid first).
    html = (tmp_path / "grid" / "hand" / "index.html").read_text()
    assert "<h4>grid: the choice made again without each seed</h4>" in html and 'download="held_out.csv"' in html
    assert (tmp_path / "grid" / "hand" / "held_out.csv").read_text().splitlines()[:2] == [
        "grid,seed,point,normalized_test_loss,selected_test_loss", "grid,0,\"w=1,1\",1.2,1.2"]
    assert not (tmp_path / "no-grid" / "hand" / "held_out.csv").exists() and "held_out" not in (
        tmp_path / "no-grid" / "hand" / "index.html").read_text()
    # One seed: no spread to show, in any table of the page, and no choice to make again.
    html = write_report(hand_made(seeds=1), tmp_path / "one-seed").read_text()
    assert "test_loss_std" not in html and "test_std" not in html
    assert "test_loss_std" in (tmp_path / "one-seed" / "hand" / "per_task.csv").read_text()
    assert "held_out" not in html and not (tmp_path / "one-seed" / "hand" / "held_out.csv").exists()
    plt.close("all")


@pytest.mark.parametrize("failing", ["index.html", "main.md"])
def test_a_report_cut_short_by_a_full_disk_leaves_the_previous_one_whole(tmp_path, monkeypatch, failing):
    """index.html was written in place: a write that failed midway left half a page."""
    import errno

    from bench.report import write_report

    c = hand_made()
    path = write_report(c, tmp_path)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    real_write_text = Path.write_text

    def disk_full(self, data, *args, **kwargs):
        if failing not in self.name:
            return real_write_text(self, data, *args, **kwargs)
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError) as raised:
        write_report(c, tmp_path)
    assert raised.value.filename == str(path.parent / failing)  # not the hidden partial file's
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
    plt.close("all")


def test_a_correlation_that_rounds_to_zero_reads_0_00_not_minus_0_00():
    text = figures._correlations(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, -0.001]))
    assert text.startswith("Pearson r = 0.00 (p = 1), Spearman rho = -0.50")


def test_the_weight_figure_marks_zero_only_where_a_weight_reached_it():
    c = hand_made()

    def records(lowest: float) -> list[dict]:
        return [{"arm": "gradnorm", "run_key": f"alpha=0.12/seed={seed}",
                 "record": {"weights_trajectory": [[0, 1.0, 1.0], [1, 2.0 - lowest, lowest], [2, 1.5, 0.5]]}}
                for seed in (0, 1, 2)]

    def zero_lines(lowest: float) -> int:
        with_records = build_comparison("hand", c.manifest, c.runs.drop(columns=["variant", "kind", "label"]),
                                        records(lowest))
        ax = figures.weight_trajectories(with_records).axes[0]
        return sum(1 for line in ax.lines if list(line.get_ydata()) == [0, 0])

    assert zero_lines(-0.05) == 1
    assert zero_lines(0.05) == 0
    plt.close("all")


def test_more_arms_than_the_palette_has_colours_still_get_a_colour_each():
    """The palette has ten; an eleventh arm took the first arm's colour."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    extra = [_run(f"static{k}", "seed=0", 0, 1.1, 1.2, 1.0, weights=(1.0, 1.0)) for k in range(10)]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], **{f"static{k}": "static" for k in range(10)}}}
    colours = arm_colours(build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(extra)]), []))
    assert len(colours) == 13 and len(set(colours.values())) == 13


def test_the_weight_figure_draws_every_adaptive_method_beside_gradnorm():
    """The paper finds uncertainty weighting's weights grow "too large too fast": only GradNorm's
    were drawn, so the report could not show it."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    # Losses of their own: runs alike to the last bit would be drawn once (see the twins' test).
    extra = [_run(arm, f"seed={seed}", seed, 1.1, 1.2 + 0.01 * i, 1.0, mean_weights=(0.5, 0.1), balancer=arm)
             for i, arm in enumerate(("uncertainty", "dwa", "rlw")) for seed in (0, 1, 2)]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "uncertainty": "uncertainty", "dwa": "dwa",
                                        "rlw": "rlw"}}
    trajectory = [[0, 0.5, 0.5], [1, 0.6, 0.2], [2, 0.55, 0.1]]
    records = [{"arm": arm, "run_key": key, "record": {"weights_trajectory": trajectory}}
               for arm, key in [("gradnorm", f"alpha=0.12/seed={s}") for s in (0, 1, 2)]
               + [(arm, f"seed={s}") for arm in ("uncertainty", "dwa", "rlw") for s in (0, 1, 2)]]
    fig = figures.weight_trajectories(build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(extra)]), records))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [t.split(":")[0] for t in titles] == ["gradnorm", "uncertainty", "dwa"]  # random weights are noise
    assert titles[1].endswith("(not rescaled to sum to T)") and "rescaled" not in titles[0] + titles[2]
    plt.close(fig)


@pytest.mark.parametrize("static_tests,verdict", [
    # lower on every seed, but by a margin the paired t-test cannot tell from noise
    ((1.099, 1.118, 1.05), "does not differ significantly from"),
    ((1.00, 1.03, 1.02), "beats"),
])
def test_the_headline_claims_static_beats_gradnorm_only_when_the_test_says_so(static_tests, verdict):
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    static = [_run("gradnorm-static", f"alpha=0.12/seed={seed}", seed, 1.0, test, test - 0.1,
                   weights=(1.5, 0.5)) for seed, test in zip((0, 1, 2), static_tests)]
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "gradnorm-static": "gradnorm-static"},
                "gradnorm_static_sources": {"gradnorm-static": "gradnorm"}}
    again = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(static)]), [])
    row = again.comparisons[again.comparisons.arm == "gradnorm-static"].iloc[0]
    assert row.versus == "gradnorm" and row.wins == 3
    assert (row.p_value < 0.05) == (verdict == "beats")
    assert again.headline[2].startswith(  # after the grid's verdict and its choice made again without each seed
        f"gradnorm-static {verdict} gradnorm (paired over 3 seeds, {difference(row)}, "
        f"p = {row.p_value:.2g}): test loss "
        f"{significant(row.mean_a)} vs {significant(row.mean_b)}, lower on 3 of 3 seeds.")


def test_failed_seeds_keep_a_grid_point_out_of_the_selection():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    runs.loc[(runs.run_key == "w=1,1/seed=2"), "status"] = "failed"
    manifest = c.manifest
    again = build_comparison("hand", manifest, runs, [])
    assert again.grids["grid"].selected == "w=2,0"
    assert again.grids["grid"].excluded == 1
    # The grid's row counts every run it trained, and fails, not only its chosen point's.
    grid = again.main.set_index("arm").loc["grid"]
    assert (grid.runs, grid.failed, grid.seeds) == (9, 1, 3)


def luck_study(gradnorm_tests=(1.5, 1.6, 1.4), seeds=(0, 1, 2)):
    """A grid whose point chosen on every seed is not the one seed 2's left-out choice makes: w=2,0
    is best on validation on seeds 0 and 1 and bad on seed 2, on test as on validation (a network's
    luck shows on both splits); w=1,1 is steady and chosen on all three seeds together."""
    val = {(2.0, 0.0): (1.0, 1.0, 2.0), (1.0, 1.0): (1.2, 1.2, 1.2), (0.0, 2.0): (1.9, 1.9, 1.9)}
    test = {(2.0, 0.0): (1.1, 1.1, 3.0), (1.0, 1.0): (1.3, 1.3, 1.3), (0.0, 2.0): (2.0, 2.0, 2.0)}
    rows = [_run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, val[w][seed], test[w][seed], 0.5, weights=w)
            for w in val for seed in seeds]
    rows += [_run("gradnorm", f"seed={seed}", seed, 1.4, gradnorm_tests[seed], 0.5, mean_weights=(1.2, 0.8),
                  balancer="gradnorm") for seed in seeds]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    return build_comparison("luck", manifest, pd.DataFrame(rows), [])


def test_the_grids_choice_is_made_again_without_each_seed_and_gradnorm_set_against_it():
    """The grid's point is chosen on validation over the very networks whose test loss is
    reported, and a network's luck shows on both splits: each seed's choice is made again on the
    other seeds (leave-one-seed-out) and judged on the seed left out, which it never saw."""
    c = luck_study()
    grid = c.grids["grid"]
    assert grid.selected == "w=1,1"  # mean validation 1.2 against 1.333 for w=2,0
    held = grid.held_out
    # Without seed 2, w=2,0 (1.0 on seeds 0 and 1) beats w=1,1; without seed 0 or 1, it does not (1.5).
    assert held.seed.tolist() == [0, 1, 2] and held.point.tolist() == ["w=1,1", "w=1,1", "w=2,0"]
    assert held.normalized_test_loss.tolist() == [1.3, 1.3, 3.0]  # w=2,0's test on seed 2: 3.0
    assert held.selected_test_loss.tolist() == [1.3, 1.3, 1.3]
    assert ("grid: chosen again on validation with each of seeds 0-2 left out in turn, the grid's point moves "
            "(w=2,0 for seed 2). Judged on the seed each choice left out, its test loss is 1.867 vs 1.300 for w=1,1, "
            "whose choice saw the very networks it is tested on.") in c.headline
    # GradNorm (1.5, 1.6, 1.4) against that grid (1.3, 1.3, 3.0): higher on two seeds, lower on the mean.
    assert ("gradnorm has a higher test loss than the grid's left-out choices on 2/3 "
            "seeds, though a lower mean (mean task-normalised test loss 1.500 vs 1.867") in " ".join(c.headline)
    line = next(i for i, s in enumerate(c.headline) if s.startswith("grid: chosen again"))
    assert c.headline[0].startswith("gradnorm does not differ significantly from the grid search") and line > 0


def test_a_grid_whose_choice_never_moves_says_so_and_one_seed_makes_no_such_check():
    c = hand_made()  # w=1,1 is best on validation on every seed
    assert c.grids["grid"].held_out.point.tolist() == ["w=1,1"] * 3
    said = [s for s in c.headline if s.startswith("grid: chosen again")]
    assert said == [("grid: chosen again on validation with each of seeds 0-2 left out in turn, the grid's point is "
                     "w=1,1 every time, so its test loss owes nothing to choosing the point on the networks it is "
                     "tested on.")]
    assert not [s for s in c.headline if "left-out choices" in s]  # the same test as the verdict's
    one = luck_study(seeds=(0,))
    assert one.grids["grid"].held_out.empty and not [s for s in one.headline if "left out in turn" in s]


def test_the_best_point_that_weights_every_task_is_chosen_again_without_each_seed_too():
    """A grid whose chosen point gives a task up is also shown by its best point that weights
    every task, chosen on the same networks: that choice is made again without each seed too."""
    val = {(2.0, 0.0): (0.5, 0.5, 0.5), (1.5, 0.5): (1.0, 1.0, 2.0), (1.0, 1.0): (1.2, 1.2, 1.2),
           (0.5, 1.5): (1.9, 1.9, 1.9)}
    test = {(2.0, 0.0): (0.5, 0.5, 0.5), (1.5, 0.5): (1.1, 1.1, 3.0), (1.0, 1.0): (1.3, 1.3, 1.3),
            (0.5, 1.5): (2.0, 2.0, 2.0)}
    rows = [_run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, val[w][seed], test[w][seed], 0.4, weights=w)
            for w in val for seed in range(3)]
    rows += [_run("gradnorm", f"seed={seed}", seed, 1.4, t, 0.4, mean_weights=(1.2, 0.8), balancer="gradnorm")
             for seed, t in enumerate((1.5, 1.6, 1.4))]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    c = build_comparison("boundary", manifest, pd.DataFrame(rows), [])
    grid = c.grids["grid"]
    assert (grid.selected, grid.weighted_all, grid.n_weighted_all) == ("w=2,0", "w=1,1", 3)
    assert grid.held_out.point.tolist() == ["w=2,0"] * 3
    assert grid.weighted_all_held_out.point.tolist() == ["w=1,1", "w=1,1", "w=1.5,0.5"]
    assert ("grid: chosen again on validation with each of seeds 0-2 left out in turn, the grid's point is w=2,0 "
            "every time, so its test loss owes nothing to choosing the point on the networks it is tested on."
            ) in c.headline
    assert ("grid: chosen again on validation with each of seeds 0-2 left out in turn, its best point that weights "
            "every task moves (w=1.5,0.5 for seed 2). Judged on the seed each choice left out, its test loss is 1.867 "
            "vs 1.300 for w=1,1, whose choice saw the very networks it is tested on.") in c.headline
    rivals = [line for line in c.headline if "left-out choices" in line]
    assert len(rivals) == 1 and rivals[0].startswith(  # the grid's own point never moved: no rival for it
        "gradnorm has a higher test loss than the left-out choices among the grid points that weight every task on "
        "2/3 seeds, though a lower mean (mean task-normalised test loss 1.500 vs 1.867, ")
    table = grid.held_out_table
    assert table.grid.tolist() == ["grid"] * 3 + ["grid (all weights > 0)"] * 3
    assert table.columns.tolist() == ["grid", "seed", "point", "normalized_test_loss", "selected_test_loss"]
    # One point that weights every task: no choice to make again.
    only = pd.DataFrame([r for r in rows if not r["run_key"].startswith(("w=1.5,0.5/", "w=0.5,1.5/"))])
    alone = build_comparison("boundary", manifest, only, []).grids["grid"]
    assert alone.n_weighted_all == 1 and alone.weighted_all_held_out.empty
    assert alone.held_out_table.grid.tolist() == ["grid"] * 3


def test_gradnorms_alpha_choice_is_made_again_without_each_seed_as_the_grids_is():
    """GradNorm's best alpha on validation is partly its luckiest too: where its choice moves
    without a seed, GradNorm is set against the grid's left-out choices at the alphas each
    left-out choice picked, though the grid's own point never moves."""
    c = hand_made()  # the grid's w=1,1 wins on every seed's validation
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    # alpha=1.5: best on validation on seeds 0 and 1 (1.00 against 1.05), worst on seed 2, on test as on validation
    lucky = [_run("gradnorm", f"alpha=1.5/seed={seed}", seed, val, test, test - 0.1, mean_weights=(1.4, 0.6),
                  balancer="gradnorm") for seed, val, test in zip((0, 1, 2), (1.0, 1.0, 1.2), (0.9, 0.9, 1.5))]
    again = build_comparison("hand", c.manifest, pd.concat([runs, pd.DataFrame(lucky)]), [])
    choice = again.choices["gradnorm"]
    assert choice.chosen_variant == "alpha=0.12"  # 1.05 against 1.067 over the three seeds
    assert choice.held_out.point.tolist() == ["alpha=0.12", "alpha=0.12", "alpha=1.5"]
    assert choice.held_out.normalized_test_loss.tolist() == [1.10, 1.12, 1.5]
    assert again.headline[0].endswith(
        "Chosen again with each of seeds 0-2 left out in turn, validation picks another alpha (alpha=1.5 for seed 2); "
        "judged on the seed each choice left out, test loss is 1.240 vs 1.117 for alpha=0.12.")
    grid_line = next(i for i, s in enumerate(again.headline) if s.startswith("grid: chosen again"))
    assert "every time" in again.headline[grid_line]
    # GradNorm (1.10, 1.12, 1.50) against the grid's left-out choices (1.20, 1.21, 1.22).
    assert again.headline[grid_line + 1].startswith(
        "gradnorm, at the alpha each seed's left-out choice picked, has a lower test loss than the grid's left-out "
        "choices on 2/3 seeds, though a higher mean (mean task-normalised test loss 1.240 vs 1.210, ")


def test_a_grid_without_gradnorm_makes_its_choice_again_without_each_seed_too():
    c = luck_study()
    runs = c.runs[c.runs.arm == "grid"].drop(columns=["variant", "kind", "label"])
    alone = build_comparison("luck", {**c.manifest, "kinds": {"grid": "grid"}}, runs, [])
    assert alone.headline[0].startswith("grid: validation chose w=1,1 of 3 points")
    assert alone.headline[1].startswith("grid: chosen again on validation with each of seeds 0-2 left out in turn, "
                                        "the grid's point moves (w=2,0 for seed 2)")
    assert len(alone.headline) == 2  # no rival to set against it


def test_the_choice_without_each_seed_is_over_the_seeds_the_points_share():
    """Points that finished different seeds are chosen on the seeds they share; so is each
    left-out choice, and a point without them takes no part."""
    c = luck_study()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    extra = runs[(runs.arm == "grid") & (runs.seed == 2)].assign(seed=3)
    extra["run_key"] = extra.run_key.str.replace("seed=2", "seed=3")
    # A fourth point, w=0.5,1.5, poor on validation, keeps three points of four on seeds 0-3.
    fourth = [_run("grid", f"w=0.5,1.5/seed={seed}", seed, 2.5, 2.5, 0.5, weights=(0.5, 1.5)) for seed in range(4)]
    # w=0,2 lacks seed 3, and its validation loss on seeds 0-2 would now win any choice.
    runs.loc[runs.run_key.str.startswith("w=0,2/"), "normalized_val_loss"] = 0.1
    runs = pd.concat([runs, extra[extra.run_key != "w=0,2/seed=3"], pd.DataFrame(fourth)], ignore_index=True)
    again = build_comparison("luck", c.manifest, runs, []).grids["grid"]
    assert again.shared_seeds == [0, 1, 2, 3] and again.unmatched == 1
    held = again.held_out
    assert held.seed.tolist() == [0, 1, 2, 3]
    # Seed 3 is a copy of seed 2: with any one seed left out, w=2,0 averages 1.33 to 1.67 on validation, w=1,1 1.2.
    assert held.point.tolist() == ["w=1,1"] * 4


def test_a_grid_without_a_point_that_weights_every_task_says_so_rather_than_blame_unfinished_seeds():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    runs = runs[~runs.run_key.str.startswith("w=1,1/")]  # T = 2 at resolution 1: the corners only
    again = build_comparison("hand", c.manifest, runs, [])
    assert again.grids["grid"].unweighted == ["b"]
    assert again.headline[1].endswith("The grid has no point that weights all 2 tasks.")
    distance = figures.distance_to_gradnorm(again)
    assert [t.get_text() for t in distance.legends[0].get_texts()] == [
        "least squares over all points (band: 95 % bootstrap)",
        "a weight of 0 (that task's head never trains)", "grid: chosen on validation"]
    plt.close(distance)
    runs.loc[runs.run_key.str.startswith("w=2,0/"), "normalized_val_loss"] = 0.5
    middle = [_run("grid", f"w=1,1/seed={seed}", seed, 1.0, 1.2, 0.9, weights=(1.0, 1.0),
                   status="failed" if seed == 2 else "ok") for seed in range(3)]  # failed on one seed
    unfinished = build_comparison("hand", c.manifest, pd.concat([runs, pd.DataFrame(middle)]), [])
    assert unfinished.headline[1].endswith("No grid point with every seed finished weights every task.")


def test_a_grid_that_wins_by_giving_a_task_up_is_also_shown_by_its_best_point_weighting_every_task():
    c = hand_made()
    assert c.grids["grid"].unweighted == [] and c.grids["grid"].weighted_all is None
    assert "grid (all weights > 0)" not in set(c.main.arm)
    assert [line.split(" (")[0].split(",")[0] for line in c.headline] == [
        "gradnorm beats the grid search", "grid: chosen again on validation with each of seeds 0-2 left out in turn",
        "gradnorm beats equal weights"]
    # The boundary point w=(2, 0) now wins on validation and test: task b, weighted 0, is left
    # at a high loss (its head never trains), while task a's loss falls further.
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    boundary = runs.run_key.str.startswith("w=2,0/")
    runs.loc[boundary, "normalized_val_loss"] -= 0.5
    runs.loc[boundary, "normalized_test_loss"] -= 0.5
    runs.loc[boundary, "test_loss_b"] = 0.9
    runs.loc[boundary, "test_loss_a"] = runs.loc[boundary, "normalized_test_loss"] - 0.9
    again = build_comparison("hand", c.manifest, runs, [])
    grid = again.grids["grid"]
    assert (grid.selected, grid.unweighted) == ("w=2,0", ["b"])
    assert (grid.weighted_all, grid.weighted_all_weights, grid.n_weighted_all) == ("w=1,1", [1.0, 1.0], 1)
    assert grid.points.set_index("point").all_weights_positive.to_dict() == {
        "w=2,0": False, "w=1,1": True, "w=0,2": False}
    assert list(again.main.arm) == ["grid", "grid (all weights > 0)", "gradnorm", "equal"]
    main = again.main.set_index("arm")
    assert main.loc["grid", "normalized_test_loss"] == pytest.approx(0.51)
    assert main.loc["grid (all weights > 0)", "normalized_test_loss"] == pytest.approx(1.21)
    assert main.loc["grid (all weights > 0)", ["runs", "selected_point"]].tolist() == [3, "w=1,1"]
    assert main.loc["grid (all weights > 0)", "weights"] == [1.0, 1.0]
    per_task = again.per_task.set_index(["arm", "task"]).test_loss
    assert per_task[("grid (all weights > 0)", "b")] == pytest.approx(1.21 / 2)
    row = again.comparisons.set_index(["arm", "versus"]).loc[("gradnorm", "grid (all weights > 0)")]
    assert (row.n, row.wins) == (3, 3) and row.mean_b == pytest.approx(1.21)
    assert "the only grid point that weights every task (w=1,1, chosen on validation)" in row.sentence
    # The grid's verdict stands, and the next line says what it cost and how GradNorm fares
    # against the grid's points that train every task.
    assert again.headline[0].startswith("gradnorm is beaten by the grid search (grid; ")
    assert again.headline[1] == (
        "The grid's chosen point (w=2,0) gives b a weight of 0, so its head never trains (test loss of "
        f"b: 0.9000 vs {significant(per_task[('gradnorm', 'b')])} for gradnorm). gradnorm beats "
        f"the only grid point that weights every task, w=1,1 (chosen on validation; paired over 3 "
        f"seeds, {difference(row)}, p = {row.p_value:.2g}): test loss {significant(row.mean_a)} vs 1.210, "
        "lower on 3 of 3 seeds.")
    assert row.p_value < 0.05
    # The figures of every arm show that row too, in a darker shade of the grid's colour.
    colours = arm_colours(again)
    assert colours["grid (all weights > 0)"] == pytest.approx(tuple(0.6 * x for x in colours["grid"]))
    gaps = figures.overfitting_gaps(again).axes[0]
    labels = [t.get_text() for t in gaps.get_yticklabels()]
    assert labels == list(again.main.arm)  # in the tables' order
    bar = gaps.patches[labels.index("grid (all weights > 0)")]
    assert bar.get_width() == pytest.approx(main.loc["grid (all weights > 0)", "normalized_overfitting_gap"])
    plt.close(gaps.figure)
    landscape = figures.grid_landscape(again)
    legend = [t.get_text() for t in landscape.axes[0].get_legend().get_texts()]
    assert "chosen on validation, all weights > 0" in legend
    plt.close(landscape)
    distance = figures.distance_to_gradnorm(again)  # the paper's figure: boundary points marked
    ax = distance.axes[0]
    assert ax.get_title().endswith("\nall weights > 0: 1 point, too few for a correlation")
    assert ax.get_legend() is None  # inside, it covered points that weight a task 0
    (legend,) = distance.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "least squares over all points (band: 95 % bootstrap)",  # one point weights every task: too few
        "all weights > 0", "a weight of 0 (that task's head never trains)", "grid: chosen on validation",
        "grid: chosen on validation, all weights > 0"]
    renderer = distance.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 < ax.get_tightbbox(renderer).y0  # below the x label
    assert legend.get_window_extent(renderer).y0 >= 0  # and within the figure
    assert [len(col.get_offsets()) for col in ax.collections if col.get_label() in ("all weights > 0",)] == [1]
    plt.close(distance)
    # A second point that weights every task, worse on validation but better on test than GradNorm.
    extra = [_run("grid", f"w=1.5,0.5/seed={seed}", seed, 1.1, 1.05, 0.8, weights=(1.5, 0.5)) for seed in (0, 1, 2)]
    two = build_comparison("hand", c.manifest, pd.concat([runs, pd.DataFrame(extra)]), [])
    assert two.grids["grid"].weighted_all == "w=1,1"
    assert "the best of the 2 grid points that weight every task, w=1,1 (chosen on validation; " in two.headline[1]
    assert two.headline[1].endswith("test loss 1.117 vs 1.210, lower on 3 of 3 seeds; 1 of the 2 has a lower test loss.")
    # GradNorm has finished only seed 4, which the chosen point has too and w=1,1 has not: the
    # line says that GradNorm and the point that weights every task share no seed.
    later = [_run("grid", f"w=2,0/seed={seed}", seed, 0.5, 0.6, 0.4, weights=(2.0, 0.0))
             for seed in (3, 4)]
    gradnorm_late = runs[(runs.arm == "gradnorm") & (runs.seed == 0)].assign(seed=4)
    apart = build_comparison("hand", c.manifest, pd.concat([runs[runs.arm != "gradnorm"], pd.DataFrame(later),
                                                            gradnorm_late]), [])
    given_up = next(line for line in apart.headline if line.startswith("The grid's chosen point"))
    assert given_up.endswith("gradnorm cannot be compared with the only grid point that weights every "
                             "task, w=1,1: no seed has finished on both.")
    # With no point that weights every task left eligible, the line says so.
    runs.loc[runs.run_key == "w=1,1/seed=2", "status"] = "failed"
    runs.loc[runs.run_key == "w=0,2/seed=0", "status"] = "failed"
    none_left = build_comparison("hand", c.manifest, runs, [])
    assert none_left.grids["grid"].weighted_all is None
    assert none_left.headline[1].endswith("No grid point with every seed finished weights every task.")
    assert "grid (all weights > 0)" not in set(none_left.main.arm)


def _pareto_rows(grid: dict[tuple[float, float], tuple[float, ...]],
                 gradnorm: tuple[float, float]) -> list[dict[str, Any]]:
    """Three seeds of each grid point, {weights: (test loss a, test loss b[, validation])}, the
    validation loss a + b unless given, and of GradNorm at the test losses `gradnorm`."""
    rows = []
    for w, losses in grid.items():
        a, b = losses[:2]
        val = losses[2] if len(losses) > 2 else a + b
        for seed in (0, 1, 2):
            row = _run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, val, a + b, a + b - 0.1, weights=w)
            rows.append({**row, "test_loss_a": a, "test_loss_b": b})
    for seed in (0, 1, 2):
        rows.append({**_run("gradnorm", f"alpha=1.5/seed={seed}", seed, 1.3, 1.5, 1.4, mean_weights=(1.1, 0.9),
                            balancer="gradnorm"), "test_loss_a": gradnorm[0], "test_loss_b": gradnorm[1]})
    return rows


def test_the_pareto_figure_frames_the_points_that_weight_every_task_and_counts_the_rest():
    """On multifashion the two points that weight a task 0 (that task's loss 3.2 and 3.6) set the
    axes, and every arm landed in one corner of them."""
    grid = {(2.0, 0.0): (0.5, 10.0), (1.5, 0.5): (0.6, 0.9), (1.0, 1.0): (0.7, 0.7), (0.5, 1.5): (0.9, 0.6),
            (0.0, 2.0): (12.0, 0.5)}
    rows = _pareto_rows(grid, gradnorm=(0.8, 0.75))
    rows += [_run("equal", f"seed={seed}", seed, math.nan, math.nan, math.nan, weights=(1.0, 1.0), status="failed")
             for seed in (0, 1, 2)]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"},
                "gradnorm_static_sources": {}}
    c = build_comparison("boundary", manifest, pd.DataFrame(rows), [])
    ax = figures.pareto_front(c).axes[0]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert 0.5 < x0 < 0.6 and 0.9 < x1 < 1.0 and 0.5 < y0 < 0.6 and 0.9 < y1 < 1.0
    assert ax.get_xscale() == ax.get_yscale() == "linear"  # the far points no longer make it a log axis
    assert ax.get_title() == "2 grid points with a weight of 0 lie beyond the axes"
    one_far = pd.DataFrame([r for r in rows if not r["run_key"].startswith("w=0,2/")])
    ax = figures.pareto_front(build_comparison("one far", manifest, one_far, [])).axes[0]
    assert ax.get_title() == "1 grid point with a weight of 0 lies beyond the axes"
    legend = {col.get_label() for col in ax.collections}
    assert "gradnorm" in legend and "equal" not in legend  # every equal run failed: nothing to draw
    plt.close("all")
    # Where every point fits, the axes take them all and say nothing.
    near = pd.DataFrame([{**r, "test_loss_a": min(r["test_loss_a"], 1.2), "test_loss_b": min(r["test_loss_b"], 1.2)}
                         if r["arm"] == "grid" else r for r in rows])
    ax = figures.pareto_front(build_comparison("near", manifest, near, [])).axes[0]
    assert ax.get_title() == "" and ax.get_xlim()[1] > 1.2
    # Past three times the frame's width (1.5 against 0.3), the far points are left beyond it.
    middle = pd.DataFrame([{**r, "test_loss_a": min(r["test_loss_a"], 2.0), "test_loss_b": min(r["test_loss_b"], 2.0)}
                           if r["arm"] == "grid" else r for r in rows])
    ax = figures.pareto_front(build_comparison("middle", manifest, middle, [])).axes[0]
    assert ax.get_title() == "2 grid points with a weight of 0 lie beyond the axes" and ax.get_xlim()[1] < 1.0
    plt.close("all")


def test_a_framed_pareto_panel_on_a_log_axis_is_padded_in_ratio_not_below_zero():
    """On QM9 with ten seeds a panel's frame spanned more than a decade: its axis was drawn in
    log, but padded by a fraction of its width, below zero, and matplotlib warned and ignored
    the limit ("Attempt to set non-positive ylim on a log-scaled axis")."""
    # Task b's losses on the points that weight both span 0.05 to 2 (a log axis); w=2,0 never
    # trains b (loss 100), so the panel is framed without it. w=0,2 gives a up too, but lands
    # inside the frame as drawn, and is not counted beyond it.
    grid = {(2.0, 0.0): (0.5, 100.0), (1.5, 0.5): (0.6, 2.0), (1.0, 1.0): (0.7, 0.5), (0.5, 1.5): (0.9, 0.05),
            (0.0, 2.0): (0.75, 2.4)}
    rows = _pareto_rows(grid, gradnorm=(0.8, 0.3))
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    c = build_comparison("log frame", manifest, pd.DataFrame(rows), [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = figures.pareto_front(c).axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    y0, y1 = ax.get_ylim()
    # A pad of the same ratio at both ends, 8 % of the frame's decades (log10(2 / 0.05) = 1.6).
    ratio = (2.0 / 0.05) ** 0.08
    assert y0 == pytest.approx(0.05 / ratio) and y1 == pytest.approx(2.0 * ratio)
    assert ax.get_title() == "1 grid point with a weight of 0 lies beyond the axes"
    x0, x1 = ax.get_xlim()  # the linear axis keeps its linear pad
    assert x0 == pytest.approx(0.6 - 0.08 * 0.3) and x1 == pytest.approx(0.9 + 0.08 * 0.3)
    plt.close("all")


def test_the_pareto_front_holds_the_points_no_other_point_beats():
    losses = np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0], [3.0, 0.5], [3.0, 3.0]])
    # Two points alike both stay on it: neither is better than the other in any task.
    assert figures._pareto_mask(losses).tolist() == [True, True, False, True, True, False]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=12))
def test_every_point_off_the_pareto_front_is_beaten_by_one_on_it(points):
    losses = np.array(points, dtype=float)
    front = figures._pareto_mask(losses)
    assert front.any()
    for i in np.flatnonzero(~front):
        assert any((losses[j] <= losses[i]).all() and (losses[j] < losses[i]).any() for j in np.flatnonzero(front))


def test_the_pareto_and_distance_figures_star_the_grids_chosen_points():
    """The grid's rows of the tables (its points chosen on validation) had no mark of their own: in
    the default study's Pareto figure one black dot among the front's, or beyond the axes without
    a word."""
    # Validation chooses w=2,0, which gives task b up; w=1,1 is chosen among the points that weight both.
    grid = {(2.0, 0.0): (0.3, 10.0, 0.5), (1.0, 1.0): (0.7, 0.7, 1.4), (0.0, 2.0): (12.0, 0.5, 12.5)}
    rows = _pareto_rows(grid, gradnorm=(0.8, 0.75))
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    c = build_comparison("boundary", manifest, pd.DataFrame(rows), [])
    assert c.grids["grid"].selected == "w=2,0" and c.grids["grid"].weighted_all == "w=1,1"
    ax = figures.pareto_front(c).axes[0]
    star = next(col for col in ax.collections if col.get_label() == "grid: chosen on validation")
    assert star.get_offsets().tolist() == [[0.3, 10.0]]
    assert ax.get_title() == "2 grid points with a weight of 0 lie beyond the axes, ★ among them"
    one_far = pd.DataFrame([r for r in rows if not r["run_key"].startswith("w=0,2/")])
    ax = figures.pareto_front(build_comparison("one far", manifest, one_far, [])).axes[0]
    assert ax.get_title() == "the chosen point ★ (a weight of 0) lies beyond the axes"
    # The distance figure stars both of the grid's rows.
    stars = {col.get_label(): col.get_offsets().tolist()[0]
             for col in figures.distance_to_gradnorm(c).axes[0].collections if col.get_label().startswith("grid:")}
    assert stars.keys() == {"grid: chosen on validation", "grid: chosen on validation, all weights > 0"}
    assert stars["grid: chosen on validation"][0] == pytest.approx(math.hypot(0.9, 0.9))
    # Its height is the paper's: the mean of the per-task changes (-12.5 and -6.7 %), not the
    # change in the summed loss (1.4 against 1.5: -6.7 %).
    assert stars["grid: chosen on validation, all weights > 0"] == pytest.approx(
        [math.hypot(0.1, 0.1), 100 * ((0.7 / 0.8 - 1) + (0.7 / 0.75 - 1)) / 2])
    plt.close("all")


def test_the_distance_figure_sets_gradnorm_against_the_points_on_the_seeds_it_finished():
    """GradNorm with seed 2 failed was set, over seeds 0 and 1, against the points' means over all
    three: on a hard seed 2 every point read 33 % worse than GradNorm, though level with it."""
    rows = []
    for w in ((1.5, 0.5), (1.0, 1.0), (0.5, 1.5)):
        for seed, test in ((0, 1.0), (1, 1.0), (2, 2.0)):
            rows.append(_run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, test, test, test - 0.1, weights=w))
    for seed in (0, 1, 2):
        loss = math.nan if seed == 2 else 1.0
        rows.append(_run("gradnorm", f"alpha=1.5/seed={seed}", seed, loss, loss, loss, mean_weights=(1.1, 0.9),
                         balancer="gradnorm", status="failed" if seed == 2 else "ok"))
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    ax = figures.distance_to_gradnorm(build_comparison("hard seed", manifest, pd.DataFrame(rows), [])).axes[0]
    points = next(col for col in ax.collections if col.get_label() == "all weights > 0")
    assert [y for _, y in points.get_offsets().tolist()] == [0.0, 0.0, 0.0]
    # The Pareto figure draws the points once, over every seed: the legend says that GradNorm's
    # marker misses the hard seed (level with the points on the seeds they share, it sat below all).
    full = build_comparison("hard seed", manifest, pd.DataFrame(rows), [])
    labels = [t.get_text() for t in figures.pareto_front(full).legends[0].get_texts()]
    assert "gradnorm (seeds 0,1; the points: seeds 0-2)" in labels
    finished = [r for r in rows if not (r["arm"] == "gradnorm" and r["seed"] == 2)]
    finished.append(_run("gradnorm", "alpha=1.5/seed=2", 2, 2.0, 2.0, 2.0, mean_weights=(1.1, 0.9), balancer="gradnorm"))
    labels = [t.get_text() for t in figures.pareto_front(
        build_comparison("hard seed", manifest, pd.DataFrame(finished), [])).legends[0].get_texts()]
    assert "gradnorm" in labels
    plt.close("all")


def test_an_arm_whose_runs_all_failed_is_reported_as_failed_not_as_nan_results():
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    gradnorm = runs.arm == "gradnorm"
    runs.loc[gradnorm, "status"] = "failed"
    runs.loc[gradnorm, "failed_step"] = [3.0, 7.0, 7.0]
    runs.loc[gradnorm, "reason"] = "diverged: non-finite task weights"
    for column in ("normalized_val_loss", "normalized_test_loss", "normalized_train_loss"):
        runs.loc[gradnorm, column] = math.nan
    again = build_comparison("hand", c.manifest, runs, [])
    assert again.headline == ["gradnorm cannot be compared with the grid search (grid): 3 of 3 runs failed "
                              "(see the failed runs)."]
    assert "gradnorm" not in set(again.standings.arm)  # NaN would rank first among the grid points
    # One sentence for the arm, not one per rival: QM9's report said "shares no finished seed" 4 times.
    assert again.paired_sentences == ["gradnorm has no finished run: no paired comparison with grid or equal.",
                                      *again.comparisons.sentence[again.comparisons.arm != "gradnorm"]]
    assert len(again.comparisons) == len(c.comparisons)  # the table keeps a row per pair
    failures = again.failures
    assert list(failures.run_key) == [f"alpha=0.12/seed={s}" for s in (0, 1, 2)]
    assert list(failures.failed_step) == [3, 7, 7] and all(type(v) is int for v in failures.failed_step)
    assert set(failures.reason) == {"diverged: non-finite task weights"}
    assert hand_made().failures.empty
    with pytest.raises(ValueError, match="NaN"):
        standing(math.nan, [1.0, 2.0])


def test_a_grid_with_no_point_finished_on_every_seed_is_left_out_and_the_other_arms_compared(tmp_path):
    """Such a grid stopped `bench compare` for the whole study: GradNorm against equal weights, and
    every other arm, went unreported. A study of that grid alone is still one clear error."""
    from bench.report import write_report

    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    grid = runs.arm == "grid"
    runs.loc[grid & runs.run_key.str.endswith("seed=1"), "status"] = "failed"
    runs.loc[grid, "reason"] = "diverged: non-finite training loss at step 0 (task b)"
    left_out = build_comparison("hand", c.manifest, runs, [])
    assert left_out.grids == {} and "grid" not in set(left_out.main.arm)
    assert left_out.headline[0] == (
        "the grid arm 'grid' has no point with every seed finished (3 of 9 runs failed; the most common reason: "
        "diverged: non-finite training loss at step 0 (task b); each run's reason is in the runs table): it is "
        "left out of the tables and tests, which compare the other arms.")
    assert any(line.startswith("gradnorm beats equal weights") for line in left_out.headline)
    assert list(left_out.comparisons.versus) == ["equal"] and len(left_out.failures) == 3
    html = write_report(left_out, tmp_path).read_text()
    assert "has no point with every seed finished" in html and 'href="#grid"' not in html
    with pytest.raises(BenchError, match=r"no point with every seed finished \(3 of 9 runs failed; the most "
                                         r"common reason: diverged: .*\), so there is nothing to compare$"):
        build_comparison("hand", c.manifest, runs[grid], [])
    plt.close("all")


def test_report_figures_use_a_log_axis_only_for_losses_spanning_a_decade():
    fig, ax = plt.subplots()
    assert _loss_scale(ax, [2.4, 2.8, 2.6]) == "linear" and ax.get_yscale() == "linear"
    assert _loss_scale(ax, [0.05, 3.0], axis="x") == "log" and ax.get_xscale() == "log"
    assert _loss_scale(ax, [float("nan"), 1.0]) == "linear"
    plt.close(fig)


def test_every_arm_keeps_one_distinct_colour_across_figures():
    colours = arm_colours(hand_made())
    assert set(colours) >= {"gradnorm", "grid", "equal"}
    assert len(set(colours.values())) == len(colours)


def test_the_overfitting_bars_take_their_arms_colours():
    c = hand_made()
    ax = figures.overfitting_gaps(c).axes[0]
    colours = arm_colours(c)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert set(labels) >= {"gradnorm", "grid", "equal"}
    # One bar per arm, in the order of the axis's labels.
    drawn = [tuple(bar.get_facecolor()[:3]) for bar in ax.patches]
    assert drawn == [pytest.approx(colours[label]) for label in labels]
    plt.close(ax.figure)


def test_the_compared_arms_keep_their_colours_whatever_other_arms_are_called():
    """Colours went by the tables' order (the store's, alphabetical): a `dwa` arm listed first took
    equal's colour and moved every other arm's, so one arm changed colour from study to study."""
    c = hand_made()
    dwa = pd.DataFrame([_run("dwa", f"seed={seed}", seed, 1.3, 1.3, 1.2, weights=(1.0, 1.0), balancer="dwa")
                        for seed in (0, 1, 2)])
    runs = pd.concat([dwa, c.runs.drop(columns=["variant", "kind", "label"])], ignore_index=True)
    manifest = {**c.manifest, "kinds": {"dwa": "dwa", **c.manifest["kinds"]}}  # listed first
    with_dwa = build_comparison("hand", manifest, runs, [])
    assert with_dwa.main.arm.iloc[0] == "dwa"  # the case: it comes before the others
    colours, before = arm_colours(with_dwa), arm_colours(c)
    for arm in ("equal", "gradnorm", "grid"):
        assert colours[arm] == before[arm]
    assert colours["dwa"] not in {before[arm] for arm in ("equal", "gradnorm", "grid")}


def with_records(c):
    """`c` with a stored record per run: test-loss curves of two points, the last one final."""
    records = []
    # Each task's raw loss at its own scale: the curves divide each by its normaliser.
    normalisers = [4.0 ** i for i in range(len(c.tasks))]
    for row in c.runs.itertuples():
        curve = [[2 * row.normalized_test_loss / len(c.tasks) * n for n in normalisers],
                 [row.normalized_test_loss / len(c.tasks) * n for n in normalisers]]
        records.append({"arm": row.arm, "run_key": row.run_key,
                        "record": {"normalisers": normalisers, "curves": {"step": [0, 10], "test": curve}}})
    return build_comparison(c.study, c.manifest, c.runs.drop(columns=["variant", "kind", "label"]),
                            records)


def test_figures_draw_the_tables_student_t_interval_not_a_bootstrap():
    c = with_records(hand_made(seeds=5))
    ok = c.runs[c.runs.status == "ok"]
    gaps = figures.overfitting_gaps(c)
    # Horizontal bars: each error bar is a line from the interval's low end to its high end.
    bars = [line for line in gaps.axes[0].lines if len(set(line.get_ydata())) == 1
            and len(line.get_xdata()) == 2]
    drawn = sorted(tuple(line.get_xdata()) for line in bars)
    equal = summarize(ok[ok.label == "equal"].normalized_overfitting_gap)  # 0.20, 0.21, ..., 0.24
    assert equal.ci_high - equal.ci_low > 0.039  # t interval; the bootstrap's is [0.20, 0.24] at most
    gradnorm = summarize(ok[ok.label == "gradnorm"].normalized_overfitting_gap)  # 0.1 on every seed
    for s in (gradnorm, equal):
        assert any(lo == pytest.approx(s.ci_low) and hi == pytest.approx(s.ci_high) for lo, hi in drawn), drawn
    curves = figures.test_loss_curves(c)
    # The band around gradnorm's final test loss spans the same interval of its 5 seeds.
    final = summarize(ok[ok.label == "gradnorm"].normalized_test_loss)
    colour = arm_colours(c)["gradnorm"]
    band = next(p for p in curves.axes[0].collections
                if tuple(p.get_facecolor()[0][:3]) == pytest.approx(colour))
    at_end = band.get_paths()[0].vertices
    at_end = at_end[at_end[:, 0] == 10, 1]
    assert (at_end.min(), at_end.max()) == (pytest.approx(final.ci_low), pytest.approx(final.ci_high))
    # The legend lists the arms as the tables do, beside the axes where it hides no curve.
    legend = curves.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [a for a in c.main.arm if a in set(ok.label)]
    curves.canvas.draw()
    assert legend.get_window_extent().x0 >= curves.axes[0].get_window_extent().x1
    plt.close("all")


@pytest.mark.parametrize("low, high, expected", [
    (1.0, 3e8, {"10⁰", "10²", "10⁴", "10⁶", "10⁸"}),  # it read 1, 100, 10000, 10⁶, 10⁸
    (0.2, 900.0, {"1", "10", "100"}),
])
def test_a_log_axis_labels_its_ticks_in_one_notation(low, high, expected):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [low, high])
    assert _loss_scale(ax, [low, high]) == "log"
    fig.canvas.draw()
    labels = {t.get_text() for t in [*ax.get_yticklabels(), *ax.get_yticklabels(minor=True)]} - {""}
    assert expected <= labels
    powers = {label for label in labels if "⁰" in label or any(c in label for c in "¹²³⁴⁵⁶⁷⁸⁹")}
    assert powers == labels if high > 1e5 else not powers, labels
    plt.close(fig)


def test_a_runaway_runs_gap_does_not_flatten_every_other_arm_to_zero():
    """A GradNorm run whose loss ran away (finite and short of a millionfold, so stored as finished) had a gap of -1e6:
    on a linear axis every other bar sat at zero, and its offset label ran into the axis label."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    first = runs.index[runs.arm == "gradnorm"][0]
    runs.loc[first, "normalized_overfitting_gap"] = -1.0e6
    ax = figures.overfitting_gaps(build_comparison("hand", c.manifest, runs, [])).axes[0]
    assert ax.get_xscale() == "symlog"
    ticks = np.asarray(ax.get_xticks())
    assert (ticks < -1).sum() <= 3 and -1e6 in ticks  # at most 3 decades a side, the farthest kept
    labels = [ax.xaxis.get_major_formatter()(t) for t in ticks]
    assert "-10⁶" in labels and "0" in labels
    assert figures.overfitting_gaps(c).axes[0].get_xscale() == "linear"  # gaps 0.1 to 0.32
    plt.close("all")


def test_with_few_seeds_the_figures_draw_the_seeds_not_an_interval_wider_than_them():
    """Over 2 seeds a 95% interval of the mean spans 18 standard deviations: a user problem's band
    reached from -6 to 9 around losses of 1 to 2.2 and hid every curve."""
    c = with_records(hand_made(seeds=3))
    ok = c.runs[c.runs.status == "ok"]
    curves = figures.test_loss_curves(c)
    ax = curves.axes[0]
    assert not [p for p in ax.collections if len(p.get_paths())]  # no band
    colour = arm_colours(c)["gradnorm"]
    drawn = [line for line in ax.lines if len(line.get_ydata()) and tuple(line.get_color()[:3]) == pytest.approx(colour)]
    ends = sorted(line.get_ydata()[-1] for line in drawn)
    seeds = sorted(ok[ok.label == "gradnorm"].normalized_test_loss)
    mean = sum(seeds) / 3
    assert len(ends) == 4 and ends == pytest.approx(sorted([*seeds, mean]))  # each seed, and the mean
    assert "thin: each seed" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [a for a in c.main.arm if a in set(ok.label)]
    gaps = figures.overfitting_gaps(c).axes[0]
    assert not [line for line in gaps.lines if len(line.get_xdata()) == 2 and len(set(line.get_ydata())) == 1]
    assert "95%" not in gaps.get_xlabel()
    plt.close("all")


def test_arms_on_one_spot_stay_visible_as_nested_markers():
    """GradNorm's averaged weights and its static retrain's weights are nearly equal by design:
    drawn the same size, the later marker hid the earlier one on the simplex and Pareto plots."""
    tasks = ["a", "b", "c"]
    rows = []
    grid = {(3.0, 0.0, 0.0): 1.3, (1.0, 1.0, 1.0): 1.0, (0.0, 3.0, 0.0): 1.5, (0.0, 0.0, 3.0): 1.6,
            (1.5, 1.5, 0.0): 1.2}
    for w, loss in grid.items():
        for seed in (0, 1, 2):
            rows.append(_run("grid", "w=" + ",".join(f"{x:g}" for x in w) + f"/seed={seed}", seed,
                             loss, loss + 0.01 * seed, loss - 0.3, weights=w, tasks=tasks))
    same = (1.2, 1.0, 0.8)
    for seed in (0, 1, 2):
        rows.append(_run("gradnorm", f"alpha=0.12/seed={seed}", seed, 1.05, 1.1, 1.0, mean_weights=same,
                         balancer="gradnorm", tasks=tasks))
        # Losses a little apart: runs alike to the last bit would be one marker (see the twins' test).
        rows.append(_run("gradnorm-static", f"seed={seed}", seed, 1.06, 1.11, 1.0, weights=same, tasks=tasks))
        rows.append(_run("equal", f"seed={seed}", seed, 1.4, 1.4, 1.2, weights=(1.0, 1.0, 1.0), tasks=tasks))
    manifest = {"task_names": tasks, "gradnorm_static_sources": {"gradnorm-static": "gradnorm"},
                "kinds": {"grid": "grid", "gradnorm": "gradnorm", "gradnorm-static": "gradnorm-static",
                          "equal": "equal"}}
    c = build_comparison("nested", manifest, pd.DataFrame(rows), [])
    arms = {"gradnorm", "gradnorm-static", "equal"}

    landscape = figures.grid_landscape(c)
    drawn = [(line.get_label(), line.get_markersize()) for line in landscape.axes[0].lines
             if line.get_label() in arms]
    assert {label for label, _ in drawn} == arms
    sizes = [size for _, size in drawn]
    assert all(a > b for a, b in zip(sizes, sizes[1:])), drawn

    pareto = figures.pareto_front(c)
    for ax in pareto.axes:
        scattered = [(p.get_label(), float(p.get_sizes()[0])) for p in ax.collections if p.get_label() in arms]
        if scattered:
            assert {label for label, _ in scattered} == arms
            sizes = [size for _, size in scattered]
            assert all(a > b for a, b in zip(sizes, sizes[1:])), scattered
    plt.close("all")


def test_no_figure_has_labels_running_into_each_other():
    """Labels carry arm names, and with GradNorm's alpha in them they get long: the distance
    figure's "L2 distance ... gradnorm (alpha=0.12)'s averaged weights" ran into the next panel's."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    second = runs[runs.arm == "gradnorm"].assign(run_key=lambda f: f.run_key.str.replace("0.12", "1.5"))
    two_alphas = build_comparison("hand", c.manifest, pd.concat([runs, second]), [])
    drawn = []
    for figure_id, _title, fig in figures.all_figures(two_alphas):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [(i, text.get_window_extent(renderer)) for i, ax in enumerate(fig.axes)
                 for text in (ax.xaxis.label, ax.yaxis.label, ax.title) if text.get_text()]
        for (i, a), (j, b) in itertools.combinations(boxes, 2):
            assert i == j or not a.overlaps(b), figure_id
        drawn.append(figure_id)
    assert {"distance", "landscape", "pareto", "gaps"} <= set(drawn)
    plt.close("all")


def test_the_simplex_landscape_spends_its_colours_where_the_points_are():
    """Boundary points several times worse took most of an even (log) colour scale and left the
    interior, where the grid's choice is made, in one colour."""
    tasks = ["a", "b", "c"]
    rows = []
    n = 6  # exhaustive, resolution 1/6: 28 points, 15 on the boundary
    for i in range(n + 1):
        for j in range(n + 1 - i):
            w = (3 * i / n, 3 * j / n, 3 * (n - i - j) / n)
            loss = 20.0 if min(w) == 0 else 2.40 + 0.01 * i + 0.003 * j  # 2.41 to 2.45 inside
            for seed in (0, 1, 2):
                rows.append(_run("grid", "w=" + ",".join(f"{x:g}" for x in w) + f"/seed={seed}", seed,
                                 loss, loss, loss - 0.3, weights=w, tasks=tasks))
    manifest = {"task_names": tasks, "kinds": {"grid": "grid"}, "gradnorm_static_sources": {}}
    fig = figures.grid_landscape(build_comparison("skewed", manifest, pd.DataFrame(rows), []))
    ax, cbar = fig.axes
    points = next(p for p in ax.collections if p.get_offsets().shape[0] == 28)
    colours = points.to_rgba(points.get_array())
    x, y = points.get_offsets().T
    interior = (y > 0.01) & (np.abs(y - math.sqrt(3) * x) > 0.01) & (np.abs(y - math.sqrt(3) * (1 - x)) > 0.01)
    assert interior.sum() == 10
    inside = {tuple(np.round(c, 6)) for c in colours[interior]}
    assert len(inside) >= 4  # the 10 interior points (a third of the grid) in several bands, not one or two
    labels = [t.get_text() for t in cbar.get_yticklabels()]
    assert labels[0] == "2.413" and labels[-1] == "20.00"  # losses, not log10 of them
    assert "log10" not in cbar.get_ylabel()
    plt.close(fig)


@pytest.mark.parametrize("weights", [
    [(1, 1, 1)], [(1, 1, 1), (2, 0.5, 0.5)],  # a sampled grid of 1 or 2 trials
    [(1, 1, 1), (0.5, 1.25, 1.25), (2, 0.5, 0.5)],  # listed points on one line
], ids=["one point", "two points", "three points in a line"])
def test_the_simplex_landscape_of_points_that_span_no_triangle_draws_the_points(weights):
    """Shading between points needs a triangle of them: a T = 3 sampled grid of one or two trials
    stopped `bench compare` with matplotlib's "x and y arrays must have a length of at least 3"
    (found by fuzzing studies)."""
    tasks = ["a", "b", "c"]
    rows = [_run("grid", "w=" + ",".join(f"{x:g}" for x in w) + f"/seed={seed}", seed, 2 + k, 2 + k, 1.7 + k,
                 weights=w, tasks=tasks) for k, w in enumerate(weights) for seed in (0, 1)]
    manifest = {"task_names": tasks, "kinds": {"grid": "grid"}, "gradnorm_static_sources": {}}
    fig = figures.grid_landscape(build_comparison("few", manifest, pd.DataFrame(rows), []))
    ax, _ = fig.axes
    assert any(p.get_offsets().shape[0] == len(weights) for p in ax.collections)
    plt.close(fig)


def test_every_grid_arm_gets_its_own_landscape_distance_and_pareto_figures():
    """With two grids (exhaustive and sampled, say), each is drawn; before, only the first was."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    # A second grid whose points are the first's, shifted: another chosen point and other losses.
    second = runs[runs.arm == "grid"].assign(arm="grid-tpe", normalized_test_loss=lambda f: f.normalized_test_loss + 0.5)
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "grid-tpe": "grid"}}
    two = build_comparison("hand", manifest, pd.concat([runs, second]), [])
    assert set(two.grids) == {"grid", "grid-tpe"}
    drawn = {figure_id: (title, fig) for figure_id, title, fig in figures.all_figures(two)}
    for kind in ("landscape", "distance", "pareto"):
        assert kind not in drawn
        assert {f"{kind}-grid", f"{kind}-grid-tpe"} <= set(drawn)
        assert drawn[f"{kind}-grid-tpe"][0].endswith("(grid-tpe)")
    # Each landscape plots its own grid's points.
    tops = {}
    for arm in ("grid", "grid-tpe"):
        ax = drawn[f"landscape-{arm}"][1].axes[0]
        line = next(line for line in ax.lines if line.get_label() == f"{arm} points")
        tops[arm] = line.get_ydata().max()
    assert tops["grid-tpe"] == pytest.approx(tops["grid"] + 0.5)
    # One grid: the figures keep their plain ids.
    assert {"landscape", "distance", "pareto"} <= {i for i, _, _ in figures.all_figures(c)}
    plt.close("all")


def test_holm_adjusts_a_family_of_p_values():
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    # m = 3 tests (no test is no test): 0.01 * 3, 0.03 * 2, then 0.04 * 1 raised to stay in order.
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0 and math.isnan(holm([math.nan])[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1), st.just(math.nan)), max_size=12))
def test_holm_equals_its_definition(p_values):
    """Holm: sorted p_(1) <= ... <= p_(m), adjusted p_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))."""
    adjusted = holm(p_values)
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(tested, key=lambda i: p_values[i])
    m = len(order)
    for rank, i in enumerate(order):
        expected = min(1.0, max((m - j) * p_values[order[j]] for j in range(rank + 1)))
        assert adjusted[i] == pytest.approx(expected, abs=1e-12)
        assert p_values[i] <= adjusted[i] + 1e-12
    assert all(math.isnan(adjusted[i]) for i, p in enumerate(p_values) if math.isnan(p))


@settings(max_examples=200, deadline=None)
# Whole numbers: differences that are exactly alike or clearly apart (near-alike floats make SciPy warn).
@given(st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=2, max_size=12))
def test_the_difference_interval_holds_the_mean_and_holds_zero_exactly_where_the_t_test_finds_nothing(pairs):
    """The interval and the verdict come from one t-test: "does not differ significantly" (p >= 0.05)
    must never sit beside an interval that leaves 0 out, nor "beats" beside one that holds it."""
    r = paired({s: a for s, (a, _) in enumerate(pairs)}, {s: b for s, (_, b) in enumerate(pairs)})
    assert r.difference_ci_low <= r.mean_difference <= r.difference_ci_high
    if math.isnan(r.p_value) or abs(r.p_value - 0.05) < 1e-6 or not 0 < r.difference_ci_high - r.difference_ci_low:
        return  # no test, a p on the line (rounding decides), or one difference on every seed
    assert (r.difference_ci_low <= 0 <= r.difference_ci_high) == (r.p_value >= 0.05)


def test_a_verdict_gives_the_signed_rank_tests_p_where_it_reads_the_seeds_otherwise():
    """gradnorm is higher than the grid's point on all ten seeds, by about 0.05 on nine and by 20
    on the tenth (a run that nearly diverged). That seed widens the t-test's p to 0.33, where the
    signed-rank test, which counts only the order of the differences, gives 2 / 2^10 = 0.002. The
    verdict stays the t-test's and gives the other p beside it. Equal weights, lower than gradnorm by
    0.5 to 0.59 on every seed, are found lower by both tests, and get nothing added."""
    rows = []
    for seed in range(10):
        for w, val in (((2.0, 0.0), 1.3), ((1.0, 1.0), 1.0), ((0.0, 2.0), 1.5)):
            rows.append(_run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, val, val + 0.01 * seed, 0.9,
                             weights=w))
        test = 1.0 + 0.01 * seed + (20.0 if seed == 9 else 0.05 + 0.001 * seed)
        rows.append(_run("gradnorm", f"alpha=0.12/seed={seed}", seed, 1.05, test, 0.9, mean_weights=(1.5, 0.5),
                         balancer="gradnorm"))
        rows.append(_run("equal", f"seed={seed}", seed, 1.4, test - 0.5 - 0.01 * seed, 0.9, weights=(1.0, 1.0)))
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"},
                "gradnorm_static_sources": {}}
    c = build_comparison("hand", manifest, pd.DataFrame(rows), [])
    row = c.comparisons.set_index(["arm", "versus"]).loc[("gradnorm", "grid")]
    assert (row.losses, row.p_value, row.wilcoxon_p) == (10, pytest.approx(0.33, abs=0.005), pytest.approx(2 / 2**10))
    assert c.headline[0].startswith(
        # The interval the t-test gives is as wide as that seed: mean 2.05, +/- 2.262 x 6.31 / sqrt(10).
        "gradnorm does not differ significantly from the grid search (grid; paired over 10 seeds, difference +2.0, "
        "95% CI -2.5 to +6.6, p = 0.33, though "
        "the Wilcoxon signed-rank test, which a seed far off sways less, gives p = 0.002): ")
    assert "paired t-test p = 0.33, though Wilcoxon signed-rank p = 0.002, effect size" in row.sentence
    equal = c.comparisons.set_index(["arm", "versus"]).loc[("gradnorm", "equal")]
    assert equal.p_value < 0.05 and equal.wilcoxon_p < 0.05 and "Wilcoxon" not in equal.sentence
    assert sum("Wilcoxon" in line for line in c.headline) == 1
    # The other way round: lower on five seeds by about 1, higher on a sixth by 0.1. The t-test
    # finds it (p = 0.0081); the ranks, with the one seed against ranked lowest, give 2 x 2 / 2^6.
    lower = paired({s: 2.0 + d for s, d in enumerate((-1.0, -1.1, -0.9, -1.2, -0.8, 0.1))},
                   dict.fromkeys(range(6), 2.0))
    assert "paired t-test p = 0.0081, though Wilcoxon signed-rank p = 0.062, effect size" in describe("a", "b", lower)
    # With five seeds the ranks can never reach 0.05 (2 / 2^5), so their disagreeing says nothing.
    five = paired({s: 2.0 + d for s, d in enumerate((-1.0, -1.1, -0.9, -1.2, 0.1))}, dict.fromkeys(range(5), 2.0))
    assert five.p_value < 0.05 and five.wilcoxon_p > 0.05 and "Wilcoxon" not in describe("a", "b", five)


def test_a_verdict_that_the_family_of_tests_weakens_says_so():
    """gradnorm's p against the grid is 0.034 alone, but 0.068 after Holm over the study's four
    paired tests (it is the third smallest): the verdict keeps the test's own p and shows the
    adjusted one beside it."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    runs = runs[runs.arm != "gradnorm"]
    rows = []
    for seed, test in zip((0, 1, 2), (1.10, 1.16, 1.14)):
        rows.append(_run("gradnorm", f"alpha=0.12/seed={seed}", seed, 1.05, test, test - 0.1,
                         mean_weights=(1.5, 0.5), balancer="gradnorm"))
    for seed, test in zip((0, 1, 2), (1.45, 1.38, 1.43)):  # about equal weights' 1.40, 1.41, 1.42
        rows.append(_run("static", f"seed={seed}", seed, 1.05, test, 1.2, weights=(1.5, 0.5)))
    manifest = {**c.manifest, "kinds": {**c.manifest["kinds"], "static": "static"}}
    family = build_comparison("hand", manifest, pd.concat([runs, pd.DataFrame(rows)]), [])
    table = family.comparisons.set_index(["arm", "versus"])
    assert len(table) == 4 and list(table.p_holm) == pytest.approx(list(holm(table.p_value)))
    row = table.loc[("gradnorm", "grid")]
    assert row.p_value == pytest.approx(0.034, abs=5e-4) and row.p_holm == pytest.approx(2 * row.p_value)
    assert family.headline[0].startswith(
        f"gradnorm beats the grid search (grid; paired over 3 seeds, {difference(row)}, p = {row.p_value:.2g}, "
        f"or {row.p_holm:.2g} after Holm's adjustment for the study's 4 paired tests): ")
    # Where the adjustment leaves the verdict standing, the sentence stays as it was.
    assert "Holm" not in " ".join(hand_made().headline)


def test_distance_figure_keeps_the_papers_points_readable_beside_far_outliers():
    """Boundary points hundreds of % worse flattened the points that weight every task into one
    line, and a line fitted through them predicted losses below zero: the line now follows the
    points with every weight > 0, and the axis turns logarithmic only beyond their range."""
    def study(boundary_losses, interior=(1.04, 1.02, 1.06)):
        rows = []
        grid = {(2.0, 0.0): boundary_losses[0], (1.5, 0.5): interior[0], (1.0, 1.0): interior[1],
                (0.5, 1.5): interior[2], (0.0, 2.0): boundary_losses[1]}
        for w, test in grid.items():
            for seed in (0, 1, 2):
                rows.append(_run("grid", f"w={w[0]:g},{w[1]:g}/seed={seed}", seed, test, test + 0.001 * seed,
                                 test - 0.3, weights=w))
        for seed in (0, 1, 2):
            rows.append(_run("gradnorm", f"alpha=0.12/seed={seed}", seed, 1.0, 1.0, 0.9, mean_weights=(1.2, 0.8),
                             balancer="gradnorm"))
        manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
        return build_comparison("outliers", manifest, pd.DataFrame(rows), [])

    ax = figures.distance_to_gradnorm(study((9.0, 12.0))).axes[0]
    assert ax.get_yscale() == "symlog"
    ticks = list(ax.get_yticks())
    assert 0 in ticks and 100 in ticks and 1000 in ticks  # round ticks in the linear part, decades beyond
    fit = ax.lines[0]  # the fitted line spans the interior points' distances only
    interior = [abs(1.2 - w0) * math.sqrt(2) for w0 in (1.5, 1.0, 0.5)]
    assert min(fit.get_xdata()) == pytest.approx(min(interior)) and max(fit.get_xdata()) == pytest.approx(max(interior))
    assert min(fit.get_ydata()) > 0  # every grid point is worse than GradNorm; so is the line
    assert fit.get_label() == "least squares over the points with all weights > 0 (band: 95 % bootstrap)"
    # A point just beyond the linear range, short of a decade, gets its own tick (-9.4 %).
    ticks = list(figures.distance_to_gradnorm(study((0.905, 12.0))).axes[0].get_yticks())
    assert ticks[0] == pytest.approx(-9.4) and 1000 in ticks and -10 not in ticks
    # A round tick of the linear range just short of a decade's (7.5 beside 10) printed over it.
    ax = figures.distance_to_gradnorm(study((0.98, 1.35), interior=(1.005, 1.02, 1.052))).axes[0]
    ticks = np.asarray(ax.get_yticks())
    assert 10 in ticks and 5 in ticks and 7.5 not in ticks
    gaps = np.diff(ax.yaxis.get_transform().transform(ticks))
    assert gaps.min() >= 0.5 * gaps.max()
    # Without far outliers the axis stays linear.
    assert figures.distance_to_gradnorm(study((1.1, 1.2))).axes[0].get_yscale() == "linear"
    plt.close("all")


@given(st.lists(st.tuples(st.floats(0, 1e6, allow_nan=False, allow_subnormal=False), st.integers(0, 999)),
                min_size=1, max_size=20, unique_by=lambda run: (f"{run[0]:g}", run[1])))
def test_run_keys_are_listed_in_the_order_of_their_numbers(runs):
    """Sorted as text, alpha=0.5 came before alpha=0 and seed=10 before seed=2, in every table."""
    from bench.store.export import _natural_order

    keys = pd.Series([f"alpha={alpha:g}/seed={seed}" for alpha, seed in runs], name="run_key")
    listed = keys.sort_values(key=_natural_order).tolist()
    assert listed == sorted(keys, key=lambda k: (float(k[6:].split("/")[0]), int(k.split("seed=")[1])))


def test_the_same_runs_draw_the_same_figures_and_leave_numpys_generator_alone():
    """The distance figure's band is bootstrapped and the overfitting figure's points jittered,
    both at random: every `bench compare` wrote other PNG bytes for the same study."""
    import io

    c = hand_made(seeds=5)

    def png(draw) -> bytes:
        fig = draw(c)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return buffer.getvalue()

    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    for draw in (figures.distance_to_gradnorm, figures.overfitting_gaps):
        assert png(draw) == png(draw)
    assert np.random.random() == expected  # the jitter's seeding is undone


def test_markdown_tables_keep_their_columns_whatever_the_names_and_reasons_hold(tmp_path):
    """A '|' in an arm's name started a column of its own, and a line break in a failure reason a
    row of its own, in the report's .md tables and in `bench compare --format markdown`."""
    from bench.report import write_report

    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    runs["arm"] = runs.arm.replace({"equal": "eq|ual"})
    gradnorm = runs.arm == "gradnorm"
    runs.loc[gradnorm, "status"] = "failed"
    runs.loc[gradnorm, "failed_step"] = 3.0
    runs.loc[gradnorm, "reason"] = "diverged\nat | step 3"
    manifest = {**c.manifest, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "eq|ual": "equal"}}
    folder = write_report(build_comparison("hand", manifest, runs, []), tmp_path).parent
    for name in ("main", "failed_runs", "comparisons"):
        lines = (folder / f"{name}.md").read_text().splitlines()
        header = lines[0].count("|")
        assert all(line.replace("\\|", "").count("|") == header for line in lines), name
    assert "| eq\\|ual" in (folder / "main.md").read_text()
    assert "diverged at \\| step 3" in (folder / "failed_runs.md").read_text()
    # Its runs retried and finished: no failed run now, and no table of them left from before.
    write_report(hand_made(), tmp_path)
    assert not (folder / "failed_runs.csv").exists() and not (folder / "failed_runs.md").exists()
    assert (folder / "main.md").exists()
    plt.close("all")


def test_a_report_read_from_a_database_never_carries_its_password(tmp_path):
    """A report is made to be passed on: its "Reproduce" commands carried the storage URL as given,
    password included."""
    from bench.report import write_report

    c = hand_made()
    c.storage = shareable_url("postgresql://bench:s3cret@db.lab:5432/runs")  # as load_comparison sets it
    html = write_report(c, tmp_path, "postgresql://bench:s3cret@db.lab:5432/runs").read_text()
    assert "s3cret" not in html
    assert "bench compare --study hand --storage postgresql://bench@db.lab:5432/runs" in html
    assert "--storage postgresql://bench@db.lab:5432/runs" in c.run_command
    html = write_report(c, tmp_path / "spaced", "my results/bench.journal").read_text()
    assert "--storage &#39;my results/bench.journal&#39;" in html  # quoted, as a shell needs it
    plt.close("all")


def test_an_index_html_that_is_not_a_report_is_never_replaced(tmp_path):
    """`--reports .` beside a study named like a site's folder replaced that site's index.html."""
    from bench.errors import BenchError
    from bench.report import write_report

    c = hand_made()
    site = tmp_path / "hand"
    site.mkdir()
    (site / "index.html").write_text("<html><title>My site</title></html>")
    with pytest.raises(BenchError, match="hand/index.html is not a GradNorm Bench report: it is left as it is"):
        write_report(c, tmp_path)
    assert [p.name for p in site.iterdir()] == ["index.html"]
    assert (site / "index.html").read_text() == "<html><title>My site</title></html>"
    (site / "index.html").unlink()
    path = write_report(c, tmp_path)
    assert write_report(c, tmp_path) == path  # a report of ours is replaced
    plt.close("all")


def test_the_report_carries_its_tables_csvs_so_that_a_page_sent_alone_keeps_every_digit(tmp_path):
    """The page's tables are rounded for reading, and its note sent readers to grid_points.csv,
    a file beside the page that a report sent by mail does not have."""
    import base64
    import re

    from bench.report import write_report

    page = write_report(hand_made(), tmp_path)
    links = dict(re.findall(r'<a download="([^"]+)" href="data:text/csv;charset=utf-8;base64,([^"]+)"',
                            page.read_text()))
    written = {p.name for p in page.parent.glob("*.csv")}
    assert set(links) == written >= {"main.csv", "per_task.csv", "comparisons.csv", "grid_points.csv", "held_out.csv"}
    for name, data in links.items():
        assert base64.b64decode(data) == (page.parent / name).read_bytes()
    # The grid's table highlights its chosen point's row, every cell of it.
    grid = page.read_text().split('<h2 id="grid">')[1].split("<h4>")[0]
    cells = re.findall(r'<td[^>]*class="data row(\d+) col\d+( selected)?"[^>]*>', grid)
    assert {row for row, selected in cells if selected} == {"0"} and all(selected for row, selected in cells if row == "0")
    plt.close("all")


def test_the_reports_folder_gets_an_index_of_its_reports(tmp_path):
    """Several studies, one page each: the folder's index.html links them all, each with its
    description and its summary's first line (from the report's head, not from the storage)."""
    import html
    import re

    from bench.report import write_report
    from bench.report.html import write_index

    c = hand_made()
    other = build_comparison("other <b>&", {**c.manifest, "description": 'Sigma "16" & friends'},
                             c.runs.drop(columns=["variant", "kind", "label"]), [])
    assert write_index(tmp_path) is None  # no report yet
    write_report(c, tmp_path, "results/bench.journal")
    write_report(other, tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "index.html").write_text("<html><title>my notes</title></html>")  # not a report
    index = write_index(tmp_path)
    page = index.read_text()
    links = re.findall(r'<h2><a href="([^"]+)">([^<]+)</a></h2>', page)
    assert [(href, html.unescape(name)) for href, name in links] == [
        ("hand/index.html", "hand"), ("other%20%3Cb%3E%26/index.html", "other <b>&")]  # a name is any text
    assert html.escape(c.headline[0], quote=False) in page and html.escape(other.headline[0], quote=False) in page
    assert "Sigma &#34;16&#34; &amp; friends" in page or "Sigma &quot;16&quot; &amp; friends" in page
    assert "my notes" not in page and f'<p class="note">{len(c.runs)} runs; generated ' in page
    # A study with nothing to say of GradNorm (baselines alone) gives its first paired sentence.
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    equal = runs[runs.arm == "equal"]
    uncertainty = equal.assign(arm="uncertainty", balancer="uncertainty",
                               normalized_test_loss=equal.normalized_test_loss - 0.1)
    baselines = build_comparison("baselines", {**c.manifest, "kinds": {"uncertainty": "uncertainty", "equal": "equal"}},
                                 pd.concat([uncertainty, equal]), [])
    assert not baselines.headline and baselines.paired_sentences
    write_report(baselines, tmp_path)
    assert html.escape(baselines.paired_sentences[0], quote=False) in write_index(tmp_path).read_text()
    # The studies side by side: one column each, one row per arm, its test loss as in the report.
    from bench.report.html import _across_studies

    side = _across_studies([{"study": name, "folder": tmp_path / name} for name in ("hand", "other <b>&")])
    assert list(side.columns) == ["hand", "other <b>&"] and list(side.index) == c.main.arm.tolist()
    assert side["hand"].tolist() == pytest.approx(c.main.normalized_test_loss.tolist(), rel=1e-12)
    assert "Test loss, study by study" in page
    # A page of someone else's in the index's place is left alone.
    index.write_text("<html><title>my site</title></html>")
    assert write_index(tmp_path) is None and index.read_text() == "<html><title>my site</title></html>"
    plt.close("all")


def test_the_index_table_keeps_an_arms_labels_together_in_the_studies_order(tmp_path):
    """With one study of six alphas beside studies of one, arms sorted by first appearance put
    every alpha of the first study above the other studies' grid and equal weights."""
    from bench.report.html import _across_studies

    tables = {"sweep": ["grid", "gradnorm (alpha=0)", "gradnorm (alpha=1)", "equal"],
              "plain": ["grid", "grid (all weights > 0)", "gradnorm", "gradnorm-static", "equal", "rlw"]}
    for study, arms in tables.items():
        (tmp_path / study).mkdir()
        pd.DataFrame({"arm": arms, "normalized_test_loss": np.arange(len(arms), dtype=float)}).to_csv(
            tmp_path / study / "main.csv", index=False)
    (tmp_path / "old").mkdir()  # a report without its main.csv: left out
    side = _across_studies([{"study": s, "folder": tmp_path / s} for s in ("sweep", "plain", "old")])
    assert list(side.columns) == ["sweep", "plain"]
    assert list(side.index) == ["grid", "grid (all weights > 0)", "gradnorm (alpha=0)", "gradnorm (alpha=1)",
                                "gradnorm", "gradnorm-static", "equal", "rlw"]
    assert side.loc["equal"].tolist() == [3.0, 4.0] and math.isnan(side.loc["rlw", "sweep"])
    # Each study's lowest test loss is marked (its grid here, at 0), and nothing else.
    import re

    from bench.report.html import _html

    cells = re.findall(r'<td[^>]*class="([^"]*)"[^>]*>([^<]*)</td>', _html(side.reset_index(), lowest=side.reset_index(drop=True)))
    assert [text for classes, text in cells if "lowest" in classes.split()] == ["0.000", "0.000"]


def test_the_index_table_places_an_arm_by_its_share_of_each_table(tmp_path):
    """Halfway down a table of twelve rows comes before three quarters down a table of four."""
    from bench.report.html import _across_studies

    tables = {"short": ["grid", "gradnorm", "rlw", "equal"],
              "long": ["grid", *(f"a{i}" for i in range(5)), "dwa", *(f"b{i}" for i in range(5))]}
    for study, arms in tables.items():
        (tmp_path / study).mkdir()
        pd.DataFrame({"arm": arms, "normalized_test_loss": np.arange(len(arms), dtype=float)}).to_csv(
            tmp_path / study / "main.csv", index=False)
    order = list(_across_studies([{"study": s, "folder": tmp_path / s} for s in tables]).index)
    assert order.index("dwa") < order.index("equal") and order.index("b4") > order.index("equal")


def test_a_large_grid_shows_its_best_points_on_the_page_and_every_point_in_its_csv(tmp_path):
    from bench.report import write_report

    rows = []
    for k in range(25):
        w = (2 * k / 24, 2 - 2 * k / 24)
        rows.append(_run("grid", f"w={w[0]:g},{w[1]:g}/seed=0", 0, 1 + abs(k - 12) / 10, 1.0, 0.9, weights=w))
    rows.append(_run("equal", "seed=0", 0, 1.5, 1.5, 1.4, weights=(1.0, 1.0)))
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "equal": "equal"}, "gradnorm_static_sources": {}}
    page = write_report(build_comparison("wide", manifest, pd.DataFrame(rows), []), tmp_path)
    grid = page.read_text().split('<h2 id="grid">')[1].split("</table>")[0]
    assert "The 20 best are shown; all are in grid_points.csv" in grid
    assert len(re.findall(r"<tr>\s*<td", grid)) == 20
    assert len(pd.read_csv(page.parent / "grid_points.csv")) == 25
    plt.close("all")


def test_the_report_says_when_it_was_generated_with_its_time_zone(tmp_path):
    """"generated 2026-12-05 02:43" read differently on every continent."""
    import re
    import time

    from bench.report import write_report

    html = write_report(hand_made(), tmp_path).read_text()
    stamp = re.search(r"generated (\d{4}-\d\d-\d\d \d\d:\d\d [^.<]+)\.", html)
    assert stamp and stamp.group(1).endswith(time.strftime("%Z"))
    plt.close("all")


def test_one_seed_gives_a_difference_not_a_verdict():
    """With one seed there is no paired test, yet the summary said "beats" (the report's note says
    verdicts come from the test)."""
    c = hand_made(seeds=1)
    grid_line = next(line for line in c.headline if "the grid search" in line)
    assert grid_line.startswith("gradnorm has a lower test loss than the grid search (grid; 1 seed, no test): ")
    assert not any(" beats " in line or "does not beat" in line for line in c.headline)


def test_a_grid_whose_points_finished_different_seeds_is_chosen_on_the_seeds_they_share():
    """Seeds differ in difficulty: a point that has finished only the easy seeds (a study still
    training, or given more seeds) must not win on a mean over fewer, easier seeds."""
    c = hand_made(seeds=5)
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    hard = runs.seed >= 3  # seeds 3 and 4 draw harder data: every loss higher by 1
    runs.loc[hard, ["normalized_val_loss", "normalized_test_loss"]] += 1.0
    runs.loc[runs.run_key.str.startswith("w=2,0/"), "normalized_val_loss"] -= 0.35  # best on every seed
    runs = runs[~(runs.run_key.str.startswith("w=1,1/") & hard)]  # w=1,1: the easy seeds only
    again = build_comparison("hand", c.manifest, runs, [])
    grid = again.grids["grid"]
    # On all their seeds, w=1,1 (1.01) looks better than w=2,0 (1.37); on seeds 0-2, w=2,0 is.
    assert grid.selected == "w=2,0" and grid.shared_seeds == [0, 1, 2] and grid.unmatched == 0
    points = grid.points.set_index("point")
    assert points.loc["w=2,0", "val_loss_on_shared_seeds"] == pytest.approx(0.96)
    assert points.loc["w=2,0", "normalized_val_loss"] == pytest.approx(1.37)
    assert any(line.startswith("grid: its points have not all finished the same seeds, so its point was "
                               "chosen on the mean validation loss over seeds 0-2") for line in again.headline)
    # No seed set that three quarters of the points share: the one most points have; a point
    # without it could not be chosen yet.
    lone = runs[~(runs.run_key.str.startswith("w=0,2/") & (runs.seed < 4))]  # w=0,2: seed 4 only
    lone = lone[~(lone.run_key.str.startswith("w=2,0/") & (lone.seed == 4))]
    grid = build_comparison("hand", c.manifest, lone, []).grids["grid"]
    assert (grid.selected, grid.shared_seeds, grid.unmatched) == ("w=2,0", [0, 1, 2], 1)
    assert "1 point without seeds 0-2 could not be chosen yet" in grid.sentence()
    # A finished grid is chosen as before, with no extra column or sentence.
    assert "val_loss_on_shared_seeds" not in c.grids["grid"].points and c.grids["grid"].sentence() is None


def test_one_point_still_training_does_not_bring_a_grid_down_to_fewer_seeds():
    """An interrupted study: 8 points with seeds 0-2 and one with seed 0 only. The choice is on
    seeds 0-2 among the 8, not on seed 0 alone among the 9; points given more seeds (3 and 4)
    do not leave the others out either."""
    rows = [_run("grid", f"w={p}/seed={seed}", seed, 1.0 + 0.01 * p + 0.5 * seed, 2.0, 1.9, weights=(1.0, 1.0))
            for p in range(9) for seed in (range(3) if p else (0,))]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid"}, "gradnorm_static_sources": {}}
    grid = build_comparison("hand", manifest, pd.DataFrame(rows), []).grids["grid"]
    assert (grid.shared_seeds, grid.unmatched, grid.selected) == ([0, 1, 2], 1, "w=1")
    more = rows + [_run("grid", f"w={p}/seed={seed}", seed, 0.0, 2.0, 1.9, weights=(1.0, 1.0))
                   for p in (7, 8) for seed in (3, 4)]  # easy extra seeds for two points
    grid = build_comparison("hand", manifest, pd.DataFrame(more), []).grids["grid"]
    assert (grid.shared_seeds, grid.unmatched, grid.selected) == ([0, 1, 2], 1, "w=1")


def test_of_two_seed_sets_alike_in_size_and_share_the_choice_takes_the_lower_seeds():
    """Two points still training, one on seeds 0-1 and one on seeds 1-2, beside three with seeds
    0-2 (three of five: too few to choose on seeds 0-2): seeds 0-1 and 1-2 are each finished by
    four of the five points. The lower seeds decide, whichever order the runs come in."""
    seeds = {0: (0, 1), 1: (1, 2), 2: (0, 1, 2), 3: (0, 1, 2), 4: (0, 1, 2)}
    rows = [_run("grid", f"w={p}/seed={seed}", seed, 1.0 + 0.01 * p, 2.0, 1.9, weights=(1.0, 1.0))
            for p in seeds for seed in seeds[p]]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid"}, "gradnorm_static_sources": {}}
    for order in (rows, rows[::-1]):
        grid = build_comparison("hand", manifest, pd.DataFrame(order), []).grids["grid"]
        assert (grid.shared_seeds, grid.unmatched, grid.selected) == ([0, 1], 1, "w=0")


def test_alphas_that_finished_different_seeds_are_chosen_on_the_seeds_they_share():
    rows = []
    for alpha, val in (("0.12", 1.0), ("1.5", 1.1)):
        for seed in range(5 if alpha == "0.12" else 3):  # alpha=1.5 lacks the hard seeds 3 and 4
            rows.append(_run("gradnorm", f"alpha={alpha}/seed={seed}", seed, val + (seed >= 3), 2.0 + (seed >= 3),
                             1.9, mean_weights=(1.0, 1.0), balancer="gradnorm"))
    manifest = {"task_names": TASKS, "kinds": {"gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    choice = build_comparison("hand", manifest, pd.DataFrame(rows), []).choices["gradnorm"]
    assert choice.chosen_variant == "alpha=0.12" and choice.shared_seeds == [0, 1, 2]
    assert choice.val_losses == pytest.approx({"alpha=0.12": 1.0, "alpha=1.5": 1.1})
    assert "the means here and the choice are over seeds 0-2" in choice.sentence()
    # An alpha without those seeds waits for them, and the summary says so.
    rows += [_run("gradnorm", f"alpha={alpha}/seed={seed}", seed, 0.5, 2.0, 1.9, mean_weights=(1.0, 1.0),
                  balancer="gradnorm") for alpha, seeds in (("3", range(3)), ("0.5", (0, 1))) for seed in seeds]
    choice = build_comparison("hand", manifest, pd.DataFrame(rows), []).choices["gradnorm"]
    assert choice.chosen_variant == "alpha=3" and choice.shared_seeds == [0, 1, 2] and choice.unmatched == ["alpha=0.5"]
    assert choice.sentence().endswith("which every alpha compared has finished. Left out until they finish seeds "
                                      "0-2: alpha=0.5.")


def test_the_tables_list_the_arms_in_the_study_files_order():
    """The store lists runs alphabetically; the study file's author chose an order."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"]).sort_values("arm")  # as the store gives them
    manifest = {**c.manifest, "kinds": {"gradnorm": "gradnorm", "equal": "equal", "grid": "grid"}}
    again = build_comparison("hand", manifest, runs, [])
    assert list(again.main.arm) == ["gradnorm", "equal", "grid"]
    assert list(again.runs.arm.unique()) == ["gradnorm", "equal", "grid"]


def test_names_with_dollar_signs_are_drawn_as_written_not_as_math(tmp_path):
    """Matplotlib reads text between two $ as mathtext: an arm named "eq$\\foo$" ended `bench
    compare` in a ParseFatalException, and "gn $x_1$" was drawn as math."""
    from bench.report import write_report

    c = hand_made()
    names = {"equal": "eq$\\foo$", "gradnorm": "gn $x_1$"}
    runs = c.runs.drop(columns=["variant", "kind", "label"]).replace({"arm": names})
    manifest = {**c.manifest, "kinds": {names.get(arm, arm): kind for arm, kind in c.manifest["kinds"].items()}}
    dollars = build_comparison("hand", manifest, runs, [])
    write_report(dollars, tmp_path)  # draws every figure
    ax = figures.overfitting_gaps(dollars).axes[0]
    ax.figure.canvas.draw()
    assert {"eq$\\foo$", "gn $x_1$"} <= {t.get_text() for t in ax.get_yticklabels()}
    assert not any(t._preprocess_math(t.get_text())[1] for t in ax.get_yticklabels())  # drawn as text
    plt.close("all")


def test_the_pareto_legend_lists_the_arms_as_the_tables_do():
    """pivot() sorted the arms alphabetically: the legend disagreed with every table."""
    c = hand_made()
    manifest = {**c.manifest, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"}}
    again = build_comparison("hand", manifest, c.runs.drop(columns=["variant", "kind", "label"]), [])
    labels = [t.get_text() for t in figures.pareto_front(again).legends[0].get_texts()]
    arms = [label for label in labels if label in set(again.main.arm)]
    assert arms == [a for a in again.main.arm if a != "grid"] == ["gradnorm", "equal"]
    plt.close("all")


def test_gradnorm_is_placed_among_the_grid_points_on_the_seeds_the_point_was_chosen_on():
    """A point with only the easy seed 0 finished (test loss 1.05) is not 'better than GradNorm'
    (mean 2.1 over seeds 0-2, whose seeds 1 and 2 are harder)."""
    rows = [_run("grid", f"w={p}/seed={seed}", seed, 1.0 + seed, 2.0 + 0.1 * (p - 1) + (seed - 1), 1.0,
                 weights=(1.0, 1.0)) for p in (1, 2, 3) for seed in range(3)]
    rows.append(_run("grid", "w=0/seed=0", 0, 2.0, 1.05, 1.0, weights=(1.0, 1.0)))
    rows += [_run("gradnorm", f"alpha=1/seed={seed}", seed, 1.0, 2.1 + (seed - 1), 1.0, mean_weights=(1.0, 1.0),
                  balancer="gradnorm") for seed in range(3)]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    c = build_comparison("hand", manifest, pd.DataFrame(rows), [])
    assert c.grids["grid"].shared_seeds == [0, 1, 2]
    standing = c.standings.set_index("arm").loc["gradnorm"]
    assert (standing.n_better, standing.n_points) == (1, 3)
    # The figures draw the points as the summary compares them: w=0 with its one easy seed is
    # not yet drawn (at -50 %), the others at their means over seeds 0-2 against GradNorm's.
    ax = figures.distance_to_gradnorm(c).axes[0]
    drawn = sorted(np.round(np.concatenate([col.get_offsets()[:, 1] for col in ax.collections
                                            if type(col).__name__ == "PathCollection"
                                            and not col.get_label().startswith("grid:")]), 3))
    assert drawn == pytest.approx([-4.762, 0.0, 4.762])
    assert ax.get_title() == "3 points, all at one distance: no correlation"  # SciPy warned, and gave NaN
    landscape = figures.grid_landscape(c).axes[0]
    assert sorted(np.round(landscape.lines[0].get_ydata(), 3)) == pytest.approx([2.0, 2.1, 2.2])
    plt.close("all")
    # So among the points that weight every task, when the chosen point gives a task up.
    rows += [_run("grid", f"w=9/seed={seed}", seed, 0.5 + seed, 1.5 + seed, 1.0, weights=(2.0, 0.0)) for seed in range(3)]
    c = build_comparison("hand", manifest, pd.DataFrame(rows), [])
    assert c.grids["grid"].unweighted == ["b"]
    assert "; 1 of the 3 has a lower test loss." in next(line for line in c.headline if "gives b a weight of 0" in line)


def test_a_gradnorm_arm_whose_runs_all_failed_gets_no_distance_panel():
    """Its panel was drawn empty, titled "Pearson r = nan (p = nan)"; SciPy before 1.11 raised."""
    rows = [r for r in hand_made().runs.to_dict("records") if r["arm"] != "gradnorm"]
    failed = [_run("gradnorm", f"alpha=0.12/seed={seed}", seed, math.nan, math.nan, math.nan,
                   mean_weights=(1.5, 0.5), balancer="gradnorm", status="failed") for seed in range(3)]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"},
                "gradnorm_static_sources": {}}
    runs = pd.DataFrame(rows + failed).drop(columns=["variant", "kind", "label"], errors="ignore")
    assert figures.distance_to_gradnorm(build_comparison("hand", manifest, runs, [])) is None
    finished = [_run("gradnorm-b", f"alpha=1/seed={seed}", seed, 1.05, 1.1, 1.0, mean_weights=(1.2, 0.8),
                     balancer="gradnorm") for seed in range(3)]
    manifest["kinds"]["gradnorm-b"] = "gradnorm"
    fig = figures.distance_to_gradnorm(build_comparison("hand", manifest, pd.DataFrame(rows + failed + finished)
                                                        .drop(columns=["variant", "kind", "label"], errors="ignore"), []))
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 1 and "gradnorm-b" in shown[0].get_xlabel() and "nan" not in shown[0].get_title()
    plt.close(fig)


def test_gradnorm_with_seeds_failed_is_placed_among_the_grid_points_on_the_seeds_it_finished():
    """QM9 at --quick: GradNorm finished one seed of three (an easy one), and was placed against
    the points' means over all three, harder, seeds: "0 of 3 grid points have a lower test loss",
    though two had a lower one on its seed."""
    easy = {0: 1.0, 1: 3.0, 2: 3.0}
    rows = [_run("grid", f"w={p}/seed={seed}", seed, easy[seed] + 0.01 * p, easy[seed] + offset, 1.0,
                 weights=(2.0 - p / 2, p / 2)) for p, offset in ((1, 0.00), (2, 0.02), (3, 0.10)) for seed in range(3)]
    rows.append(_run("gradnorm", "alpha=1/seed=0", 0, 1.0, 1.05, 1.0, mean_weights=(1.0, 1.0), balancer="gradnorm"))
    rows += [_run("gradnorm", f"alpha=1/seed={seed}", seed, math.nan, math.nan, math.nan, mean_weights=(1.0, 1.0),
                  balancer="gradnorm", status="failed") for seed in (1, 2)]
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    c = build_comparison("hand", manifest, pd.DataFrame(rows), [])
    standing = c.standings.set_index("arm").loc["gradnorm"]
    assert (standing.n_better, standing.n_points) == (2, 3)
    assert "2 of 3 grid points have a lower test loss" in c.headline[0]


def _any_study(data) -> pd.DataFrame:
    """A small study drawn at random: a grid of four points (two give a task up), GradNorm and
    equal weights, each run on seeds 0-2 finished, failed or not yet run, with any losses."""
    losses = st.floats(0.1, 5.0, allow_subnormal=False)
    rows = []

    def runs(arm, key, **kwargs):
        for seed in range(3):
            status = data.draw(st.sampled_from(["ok", "ok", "ok", "failed", "unfinished"]), label=f"{arm} {key} {seed}")
            if status == "unfinished":
                continue
            val, test = data.draw(losses), data.draw(losses)
            row = _run(arm, f"{key}seed={seed}", seed, val, test, test - 0.05, status=status, **kwargs)
            if status == "failed":  # a failed run has no losses
                row.update({k: math.nan for k in row if "loss" in k or "gap" in k})
            rows.append(row)

    for w in ((2.0, 0.0), (1.5, 0.5), (1.0, 1.0), (0.0, 2.0)):
        runs("grid", f"w={w[0]:g},{w[1]:g}/", weights=w)
    runs("gradnorm", "alpha=1/", mean_weights=(1.2, 0.8), balancer="gradnorm")
    runs("equal", "", weights=(1.0, 1.0))
    return pd.DataFrame(rows)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_mix_of_finished_failed_and_unfinished_runs_is_compared_by_the_rules(data):
    """Whatever runs have finished or failed, the comparison either says plainly why it cannot
    compare (no run, or a grid with no point with every seed finished and no other arm) or follows
    its rules: every arm's runs counted, the grid's point chosen on validation among the points
    without a failed run, over seeds they share (a grid without one left out, and said), and
    p-values that are probabilities, Holm's never below the raw one."""
    runs = _any_study(data)
    manifest = {"task_names": TASKS, "kinds": {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"},
                "gradnorm_static_sources": {}}
    grid = runs[runs.arm == "grid"] if len(runs) else runs
    eligible = set(grid.run_key.str.split("/").str[0]) - set(grid[grid.status == "failed"].run_key.str.split("/").str[0]) \
        if len(grid) else set()
    unselectable = len(grid) > 0 and not eligible
    if runs.empty or (unselectable and (runs.arm == "grid").all()):
        with pytest.raises(BenchError, match="no finished runs yet|has no point with every seed finished"):
            build_comparison("any", manifest, runs, [])
        return
    c = build_comparison("any", manifest, runs, [])
    main = c.main.set_index("arm")
    for arm, arm_runs in runs.groupby("arm"):
        if arm == "grid" and unselectable:  # left out of the tables, and said first
            assert "grid" not in c.grids and "grid" not in main.index
            assert c.headline[0].startswith("the grid arm 'grid' has no point with every seed finished")
            continue
        assert main.loc[arm, "runs"] == len(arm_runs)
        assert main.loc[arm, "failed"] == (arm_runs.status == "failed").sum()
    if len(grid) and not unselectable:
        selection = c.grids["grid"]
        assert selection.selected in eligible
        on = grid[grid.status == "ok"]
        if selection.shared_seeds:
            on = on[on.seed.isin(selection.shared_seeds)]
        means = on.groupby(on.run_key.str.split("/").str[0]).normalized_val_loss.mean()
        compared = [p for p in eligible if p in means.index and (
            not selection.shared_seeds
            or set(on[on.run_key.str.startswith(p + "/")].seed) == set(selection.shared_seeds))]
        assert means[selection.selected] == min(means[p] for p in compared)
        # The choices made again without each seed: on the other seeds' mean, among the same points
        # (for the best point that weights every task, among those, where there are several).
        point_of = on.run_key.str.split("/").str[0]
        seeds = sorted(set(on[point_of.isin(compared)].seed))
        assert selection.held_out.seed.tolist() == (seeds if len(seeds) > 1 else [])
        positive = set(point_of[(on.weight_a > 0) & (on.weight_b > 0)])
        weighting_all = [p for p in compared if p in positive]
        if selection.weighted_all and len(weighting_all) > 1:
            assert selection.weighted_all_held_out.seed.tolist() == (seeds if len(seeds) > 1 else [])
        else:
            assert selection.weighted_all_held_out.empty
        for held, among in ((selection.held_out, compared), (selection.weighted_all_held_out, weighting_all)):
            for row in held.itertuples():
                others = on[point_of.isin(among) & (on.seed != row.seed)]
                left_out = others.groupby(others.run_key.str.split("/").str[0]).normalized_val_loss.mean()
                assert left_out[row.point] == left_out.min()
                run = on[(point_of == row.point) & (on.seed == row.seed)]
                assert row.normalized_test_loss == run.normalized_test_loss.item()
    p = c.comparisons
    if len(p):
        finite = p.p_value.notna()
        assert p.p_value[finite].between(0, 1).all() and (p.p_holm[finite] >= p.p_value[finite] - 1e-12).all()
    # GradNorm with a run stored, finished or failed, is always spoken of; with none stored yet (every
    # seed unfinished) there is nothing to say of it, and the report says the study is unfinished.
    assert c.headline or not (runs.arm == "gradnorm").any()
    assert all(isinstance(line, str) and "nan" not in line for line in c.headline)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_an_arm_that_trained_exactly_as_another_changes_nothing_but_one_sentence(data):
    """A copy of GradNorm's (or equal weights') runs under another arm's name, as a floor that never
    binds makes them: the tables gain its rows, but every verdict, p and Holm-adjusted p of the
    study without it stands, and the summary and the paired sentences each gain one line."""
    runs = _any_study(data)
    original = data.draw(st.sampled_from(["gradnorm", "equal"]), label="copied arm")
    kinds = {"grid": "grid", "gradnorm": "gradnorm", "equal": "equal"}
    manifest = {"task_names": TASKS, "kinds": kinds, "gradnorm_static_sources": {}}
    try:
        without = build_comparison("any", manifest, runs, [])
    except BenchError:
        return  # nothing to compare, copy or not (the test above holds that case)
    copy = runs[runs.arm == original].assign(arm="copy")
    if original == "equal":
        copy = copy.assign(balancer="static")
    both = build_comparison("any", {**manifest, "kinds": {**kinds, "copy": kinds[original] if original == "gradnorm"
                                                          else "static"}},
                            pd.concat([runs, copy], ignore_index=True), [])
    if not (copy.status == "ok").any():
        assert both.twins == without.twins
        return
    same = without.twins.get(original, original)  # the drawn losses can make equal GradNorm's twin too
    assert both.twins == {**without.twins, "copy": same}
    assert len(both.main) == len(without.main) + 1
    kept = both.comparisons[~both.comparisons.arm.eq("copy") & ~both.comparisons.versus.eq("copy")]
    if without.comparisons.empty:  # no GradNorm run: the copy's test against equal weights is its only one
        assert kept.empty
    else:
        pd.testing.assert_frame_equal(kept.reset_index(drop=True), without.comparisons.reset_index(drop=True))
    assert both.headline[:-1] == without.headline
    assert both.headline[-1].startswith(f"copy trained exactly as {same}: the same losses, to the last bit")
    told = len(without.twins)
    if both.comparisons.empty:  # no rival to pair with (no grid point to choose, no equal run): nothing to list
        assert both.paired_sentences == without.paired_sentences == []
        return
    assert both.paired_sentences == [*without.paired_sentences[:told], f"copy: the same runs as {same}, so its "
                                     f"paired comparisons are {same}'s (comparisons.csv lists them all).",
                                     *without.paired_sentences[told:]]


def test_a_legend_below_the_panels_never_covers_their_labels():
    """With two tasks and eleven arms, the Pareto figure's legend below its one panel took four
    rows in the room of one and covered the x axis's label ("test loss task0")."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    kinds = dict(c.manifest["kinds"])
    extra = []
    for k in range(8):  # static arms of their own, as a study sets its practitioners' weights
        arm = f"static-{k}"
        kinds[arm] = "static"
        w = (2.0 * (k + 1) / 9, 2.0 - 2.0 * (k + 1) / 9)
        extra += [_run(arm, f"seed={seed}", seed, 1.2, 1.15 + 0.01 * k + 0.005 * seed, 1.0, weights=w)
                  for seed in range(3)]
    many = build_comparison("many", {**c.manifest, "kinds": kinds}, pd.concat([runs, pd.DataFrame(extra)]), [])
    checked = []
    for figure_id, _title, fig in figures.all_figures(many):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= fig.bbox.width, figure_id  # within the figure
            for ax in fig.axes:
                if ax.get_visible() and ax.axison:
                    assert not box.overlaps(ax.get_tightbbox(renderer)), (figure_id, ax.get_xlabel())
            checked.append(figure_id)
    assert "pareto" in checked
    plt.close("all")


def test_the_curves_title_speaks_of_grids_and_seeds_only_when_there_are_some():
    """A study without a grid read "grids: the point chosen on validation" under its curves, and
    one of a single seed "mean over seeds, thin: each seed" over one line per arm."""
    c = hand_made(seeds=1)
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    kinds = {arm: kind for arm, kind in c.manifest["kinds"].items() if kind != "grid"}
    no_grid = with_records(build_comparison("hand", {**c.manifest, "kinds": kinds}, runs[runs.arm != "grid"], []))
    title = figures.test_loss_curves(no_grid).axes[0].get_title()
    assert title == "Test loss during training (one seed)"
    title = figures.test_loss_curves(with_records(hand_made(seeds=3))).axes[0].get_title()
    assert title == "Test loss during training (mean over seeds, thin: each seed)\ngrids: the point chosen on validation"
    plt.close("all")


def test_the_index_writes_each_studys_lowest_test_loss_with_the_digits_that_tell_it_apart():
    """Two arms at 3.7070 and 3.7073 both read 3.707, one of them in bold: which was lower could
    not be read. The study's column takes the digits that tell its lowest from every other."""
    import re

    from bench.report.html import _html, told_apart

    side = pd.DataFrame({"close": [3.70702, 3.70734, 3.709], "apart": [2.5, 1.25, np.nan],
                         "tied": [1.0, 1.0, 2.0]}, index=["grid", "gradnorm", "equal"])
    shown = side.apply(told_apart)
    assert shown["close"].tolist() == ["3.7070", "3.7073", "3.7090"]
    assert shown["apart"].tolist() == ["2.500", "1.250", "-"]  # four digits are enough
    assert shown["tied"].tolist() == ["1.000", "1.000", "2.000"]  # equal: no digits tell them apart
    cells = re.findall(r'<td[^>]*class="([^"]*)"[^>]*>([^<]*)</td>', _html(shown.reset_index(), lowest=side.reset_index(drop=True)))
    assert [text for classes, text in cells if "lowest" in classes.split()] == ["3.7070", "1.000", "1.250", "1.000"]


def test_a_pareto_panel_frames_the_grid_points_that_train_both_of_its_tasks():
    """A panel of tasks a and b framed only the points that weight every task: a point weighting
    a and b but not c, whose a and b trained as well as anywhere, lay beyond its axes; and with
    5 tasks and no point weighting all 5, every panel showed the arms and no grid point at all."""
    tasks = ["a", "b", "c"]
    rows = []
    untrained = 10.0
    grid = {(3, 0, 0): (0.5, untrained, untrained), (0, 3, 0): (untrained, 0.5, untrained),
            (0, 0, 3): (untrained, untrained, 0.5), (1.5, 1.5, 0): (0.55, 0.55, untrained),
            (1.5, 0, 1.5): (0.6, untrained, 0.6), (0, 1.5, 1.5): (untrained, 0.6, 0.6), (1, 1, 1): (0.7, 0.7, 0.7)}
    for w, losses in grid.items():
        for seed in (0, 1, 2):
            row = _run("grid", "w=" + ",".join(f"{x:g}" for x in w) + f"/seed={seed}", seed, sum(losses),
                       sum(losses), sum(losses) - 0.1, weights=tuple(float(x) for x in w), tasks=tasks)
            rows.append({**row, **{f"test_loss_{t}": v for t, v in zip(tasks, losses)}})
    for seed in (0, 1, 2):
        row = _run("gradnorm", f"alpha=1.5/seed={seed}", seed, 2.3, 2.35, 2.2, mean_weights=(1.1, 0.9, 1.0),
                   balancer="gradnorm", tasks=tasks)
        rows.append({**row, "test_loss_a": 0.8, "test_loss_b": 0.75, "test_loss_c": 0.8})
    manifest = {"task_names": tasks, "kinds": {"grid": "grid", "gradnorm": "gradnorm"}, "gradnorm_static_sources": {}}
    c = build_comparison("three", manifest, pd.DataFrame(rows), [])
    ab = figures.pareto_front(c).axes[0]
    assert (ab.get_xlabel(), ab.get_ylabel()) == ("test loss a", "test loss b")
    (x0, x1), (y0, y1) = ab.get_xlim(), ab.get_ylim()
    assert x0 < 0.55 < 0.8 < x1 and y0 < 0.55 < 0.75 < y1 and x1 < untrained and y1 < untrained
    assert ab.get_title() == "5 grid points with a weight of 0 lie beyond the axes"  # a or b weighted 0
    plt.close("all")


def test_markdown_tables_keep_the_reports_digits_and_align_numbers_right():
    """The report's 1.770 read 1.77 in main.md (tabulate parsed the rounded text as a number
    again and dropped its trailing zero), so a column's decimals no longer lined up."""
    from bench.report.html import markdown_table

    text = markdown_table(pd.DataFrame({"arm": ["grid", "gradnorm"], "normalized_test_loss": [1.757, 1.77],
                                        "runs": [10, 2], "p_value": [0.5, math.nan]}))
    lines = text.splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[3] == ["gradnorm", "1.770", "2", "-"]
    assert [c.startswith(":") for c in cells[1]] == [True, False, False, False]  # text left, numbers right
    assert [c.endswith(":") for c in cells[1]] == [False, True, True, True]


def test_alphas_that_trained_alike_are_told_as_a_tie_not_as_a_range():
    """At 60 steps GradNorm at alpha = 0.5 and 1 trained bit for bit alike (Adam moves the weights
    by the sign of each gap, which both alphas shared), and the summary read "validation chose
    alpha=0.5 ... (1.850; alpha=1: 1.850)" and "test loss runs from 1.851 (alpha=0.5) to 1.851
    (alpha=0.5), 0 % apart"."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    gradnorm = runs[runs.arm == "gradnorm"]
    twin = gradnorm.assign(run_key=gradnorm.run_key.str.replace("alpha=0.12", "alpha=1.5"))
    line = build_comparison("hand", c.manifest, pd.concat([runs, twin]), []).headline[0]
    assert line == (
        "gradnorm: validation cannot tell alpha=0.12 and alpha=1.5 apart (mean task-normalised validation loss 1.050 for "
        "each); the sentences here are for the first, gradnorm (alpha=0.12), and the tables list every alpha. "
        "Across them, test loss is the same: 1.117.")
    # Two of three alike: the tie is told among those two, the range over all three.
    third = gradnorm.assign(run_key=gradnorm.run_key.str.replace("alpha=0.12", "alpha=3"),
                            normalized_val_loss=1.2, normalized_test_loss=1.3)
    line = build_comparison("hand", c.manifest, pd.concat([runs, twin, third]), []).headline[0]
    assert line.startswith(
        "gradnorm: validation chose alpha=0.12 of 3 values, tied with alpha=1.5 (mean task-normalised validation "
        "loss 1.050; alpha=3: 1.200); the sentences here are for the first, gradnorm (alpha=0.12)")
    assert "test loss runs from 1.117 (alpha=0.12, alpha=1.5) to 1.300 (alpha=3)" in line


@pytest.mark.parametrize("n_tasks", [3, 5, 10])
def test_the_pareto_figure_puts_every_task_in_a_panel(n_tasks):
    """It drew the first three pairs of tasks: with ten tasks, task 0 against tasks 1 to 3, and
    tasks 4 to 9 nowhere, without a word that pairs were left out."""
    tasks = [f"t{i}" for i in range(n_tasks)]
    rows = []
    points = [tuple(float(n_tasks * (i == k)) for i in range(n_tasks)) for k in range(n_tasks)]
    for k, w in enumerate([*points, tuple(1.0 for _ in tasks)]):
        for seed in (0, 1, 2):
            loss = 1.0 + 0.1 * k
            rows.append(_run("grid", "w=" + ",".join(f"{x:g}" for x in w) + f"/seed={seed}", seed, loss,
                             loss, loss - 0.1, weights=w, tasks=tasks))
            rows.append(_run("equal", f"seed={seed}", seed, 1.5, 1.5, 1.4, weights=(1.0,) * n_tasks, tasks=tasks))
    manifest = {"task_names": tasks, "kinds": {"grid": "grid", "equal": "equal"}, "gradnorm_static_sources": {}}
    c = build_comparison("many", manifest, pd.DataFrame(rows).drop_duplicates(["arm", "run_key"]), [])
    fig = figures.pareto_front(c)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel()]
    pairs = [(ax.get_xlabel().removeprefix("test loss "), ax.get_ylabel().removeprefix("test loss "))
             for ax in panels]
    assert len(set(pairs)) == len(pairs) == min(6, math.comb(n_tasks, 2))
    assert {task for pair in pairs for task in pair} == set(tasks)
    title = fig._suptitle.get_text()
    assert (f"({len(pairs)} of the {math.comb(n_tasks, 2)} pairs of tasks" in title) == (n_tasks > 4)
    plt.close("all")


def test_a_grid_of_one_point_is_spoken_of_as_its_only_point():
    """T = 4 at resolution 0.25 without its boundary is one point, w = (1, 1, 1, 1): the summary
    read "test loss 3.675 vs 3.690 for the point chosen on validation ...; 0 of 1 grid points have
    a lower test loss", and the paired sentence "the best of 1 grid points"."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    one = build_comparison("one", c.manifest, runs[(runs.arm != "grid") | runs.run_key.str.startswith("w=1,1/")], [])
    assert len(one.grids["grid"].points) == 1
    line = next(line for line in one.headline if "the grid search" in line)
    assert "test loss 1.117 vs 1.210 for its only point, lower on 3 of 3 seeds. Cost: " in line
    assert "grid points" not in line and "chosen on validation" not in line
    assert any(s.startswith("gradnorm has a lower test loss than the grid's only point (w=1,1) on 3/3 seeds")
               for s in one.paired_sentences)
    assert "the best of 3 grid points (w=1,1, chosen on validation)" in " ".join(c.paired_sentences)


def test_a_study_without_gradnorm_is_told_what_its_grid_found():
    """A grid set against static weights alone had no summary at all: the page said only that
    the study had no GradNorm arm. Its summary now says which point validation chose, how it
    fared on test, and what it gives up."""
    c = hand_made()
    runs = c.runs.drop(columns=["variant", "kind", "label"])
    manifest = {**c.manifest, "kinds": {"grid": "grid", "equal": "equal"}}
    no_gradnorm = runs[runs.arm != "gradnorm"]
    found = build_comparison("grid only", manifest, no_gradnorm, [])
    assert found.headline[0] == ("grid: validation chose w=1,1 of 3 points (test loss 1.210; 1 of the other 2 has a "
                                 "lower test loss).")
    assert len(found.headline) == 2 and found.headline[1].startswith("grid: chosen again on validation")
    gives_up = no_gradnorm.copy()
    gives_up.loc[gives_up.run_key.str.startswith("w=2,0/"), "normalized_val_loss"] = 0.5
    found = build_comparison("grid only", manifest, gives_up, [])
    assert found.headline[:1] == [
        "grid: validation chose w=2,0 of 3 points (test loss 1.010; 0 of the other 2 have a lower test loss). "
        "It gives b a weight of 0, so its head never trains; the only grid point that weights every task, w=1,1, "
        "has test loss 1.210."]
    assert not any(line.startswith("grid: validation chose") for line in c.headline)  # with GradNorm: its verdicts


@pytest.mark.parametrize("val_losses,excluded,said", [
    ({"lr=0.001": 1.0, "lr=0.004": 0.9}, [], "It is the highest learning rate tried: a higher one may do better still."),
    ({"lr=0.001": 0.8, "lr=0.004": 0.9}, [], "It is the lowest learning rate tried: a lower one may do better still."),
    ({"lr=0.001": 1.0, "lr=0.002": 0.8, "lr=0.004": 0.9}, [], None),  # bracketed
    ({"lr=0.001": 1.0, "lr=0.004": 0.9}, ["lr=0.008"], None),  # a higher rate was tried, and failed
    ({"alpha=0.5/lr=0.001": 1.0, "alpha=1/lr=0.004": 0.9, "alpha=0.5/lr=0.004": 0.95}, [],
     "It is the highest learning rate tried"),
    ({"alpha=0.5": 1.0, "alpha=3": 0.9}, [], None),  # alpha has no such edge to tell
])
def test_a_rate_chosen_at_the_edge_of_those_tried_is_said_to_be(val_losses, excluded, said):
    sentence = VariantChoice("equal", val_losses, excluded).sentence()
    if said is None:
        assert "rate tried" not in sentence
    else:
        assert said in sentence


def test_a_spread_of_test_losses_past_100_percent_reads_as_a_number():
    """A learning rate too high for the network more than doubled its test loss: "1.3e+02 % apart"."""
    sentence = VariantChoice("equal", {"lr=0.004": 0.5, "lr=0.016": 0.9}, test_losses={"lr=0.004": 0.5117,
                                                                                      "lr=0.016": 1.172}).sentence()
    assert "to 1.172 (lr=0.016), 129 % apart." in sentence
