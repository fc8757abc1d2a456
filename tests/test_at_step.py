"""`bench compare --at-step`: a study's runs as they stood at one of their evaluations."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.compare import build_comparison, load_comparison
from bench.compare.at_step import entries_at_step, evaluation_steps
from bench.errors import ConfigError
from bench.report import figures
from bench.store import ResultStore
from tests.test_study_spec import TINY


def entry(status: str = "ok", *, steps=(0, 5, 10), failed_step: int | None = None) -> dict:
    """A stored run whose losses at evaluation j are (j + 1) * (1, 2, 3) for train, val and test
    on task a, and 10 times that on task b."""
    curves: dict = {"step": list(steps)}
    for split, factor in (("train", 1.0), ("val", 2.0), ("test", 3.0)):
        curves[split] = [[(j + 1) * factor, (j + 1) * factor * 10] for j in range(len(steps))]
    record = {"status": status, "normalisers": [1.0, 10.0], "curves": curves, "failed_step": failed_step,
              "metrics": {"test": {"accuracy": [0.9, 0.8]}}, "mean_weights": [1.5, 0.5],
              "normalized_test_loss": 99.0, "test_loss": [99.0, 990.0]}
    return {"arm": "a", "run_key": "seed=0", "status": status, "value": 99.0 if status == "ok" else None,
            "reason": None if status == "ok" else "loss diverged", "record": record, "params": {}, "user_attrs": {}}


def test_a_run_at_a_step_reads_its_losses_there_and_keeps_the_rest_of_the_whole_run():
    [at] = entries_at_step([entry()], 5, "s")
    record = at["record"]
    assert (record["train_loss"], record["val_loss"], record["test_loss"]) == ([2.0, 20.0], [4.0, 40.0], [6.0, 60.0])
    # Normalised by each task's normaliser: 2/1 + 20/10.
    assert (record["normalized_train_loss"], record["normalized_val_loss"], record["normalized_test_loss"]) == (
        4.0, 8.0, 12.0)
    assert record["overfitting_gap"] == [4.0, 40.0] and record["normalized_overfitting_gap"] == 8.0
    assert at["value"] == 8.0  # the selection value is validation's, at the step
    assert record["metrics"] == {}  # measured at the end only
    assert record["mean_weights"] == [1.5, 0.5] and record["curves"] == entry()["record"]["curves"]
    # At its last evaluation a finished run is as stored, its final losses at full precision.
    last = entries_at_step([entry(), entry(steps=(0, 5, 10, 15))], 10, "s")[0]
    assert last["record"].pop("read_at_step") == 10 and last == entry()
    assert entries_at_step([entry(steps=(0, 5, 10, 15))], 10, "s")[0]["record"]["test_loss"] == [9.0, 90.0]


def test_a_loss_stored_as_null_is_read_as_nan():
    """A test loss that was not finite at an evaluation (the run went on: only the training
    split's is checked) is stored as JSON null."""
    run = entry()
    run["record"]["curves"]["test"][1] = [None, 60.0]
    record = entries_at_step([run], 5, "s")[0]["record"]
    assert math.isnan(record["test_loss"][0]) and math.isnan(record["normalized_test_loss"])
    assert record["normalized_val_loss"] == 8.0


def test_a_run_that_failed_after_the_step_counts_there_and_one_that_failed_at_it_does_not():
    later = entry("failed", steps=(0, 5), failed_step=8)
    at_it = entry("failed", steps=(0, 5), failed_step=5)
    never = {**entry("failed"), "record": None}
    _, ok, still_failed, still_never = entries_at_step([entry(), later, at_it, never], 5, "s")
    assert ok["status"] == "ok" and ok["reason"] is None
    assert ok["record"]["failed_step"] is None and ok["record"]["normalized_test_loss"] == 12.0
    assert still_failed is at_it and still_never is never


def test_a_step_that_some_finished_run_lacks_is_refused_with_the_steps_every_run_has():
    entries = [entry(steps=range(0, 701, 100)), entry(steps=range(0, 651, 50)), entry("failed", steps=(0, 100))]
    assert evaluation_steps(entries) == [100, 200, 300, 400, 500, 600]
    for step in (0, 650, 700, 150, -100):
        with pytest.raises(ConfigError) as err:
            entries_at_step(entries, step, "s")
        assert str(err.value) == (f"--at-step: expected best-val or an evaluation step that every finished run "
                                  f"of s has: 100, 200, ..., 600 (every 100), got {step}")


def tiny_study(tmp_path: Path, monkeypatch) -> ResultStore:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0
    return ResultStore(create=False)


def test_compare_at_a_step_chooses_and_reports_on_the_losses_there(tmp_path, monkeypatch, capsys):
    store = tiny_study(tmp_path, monkeypatch)
    assert main(["compare", "--study", "tiny"]) == 0
    end_page = (tmp_path / "reports" / "tiny" / "index.html").read_text()
    capsys.readouterr()
    assert main(["compare", "--study", "tiny", "--at-step", "5", "--format", "json"]) == 0
    study = json.loads(capsys.readouterr().out)["tiny"]
    assert study["at_step"] == 5 and study["summary"][0].startswith("Compared at step 5 of 10: ")
    # Each grid point's mean losses at step 5, from the stored curves, computed here.
    at_five = []
    for e in store.records("tiny"):
        curves, normalisers = e["record"]["curves"], e["record"]["normalisers"]
        j = curves["step"].index(5)
        at_five.append({"arm": e["arm"], "key": e["run_key"].rsplit("/seed=", 1)[0],
                        **{split: sum(v / n for v, n in zip(curves[split][j], normalisers))
                           for split in ("val", "test")}})
    points = pd.DataFrame(at_five).query("arm == 'grid'").groupby("key")[["val", "test"]].mean()
    grid = study["grids"]["grid"]
    assert grid["selected_point"] == points.val.idxmin()
    arms = {row["arm"]: row for row in study["arms"]}
    assert arms["grid"]["normalized_test_loss"] == pytest.approx(points.test[points.val.idxmin()], abs=1e-4)
    # The study's own report stays as it was; the one at step 5 has a folder of its own.
    assert (tmp_path / "reports" / "tiny" / "index.html").read_text() == end_page
    page = (tmp_path / "reports" / "tiny@step5" / "index.html").read_text()
    assert "<h1>GradNorm Bench: tiny at step 5</h1>" in page and "bench compare --study tiny --at-step 5" in page
    assert 'href="tiny%40step5/index.html"' in (tmp_path / "reports" / "index.html").read_text()
    assert main(["compare", "--study", "tiny", "--at-step", "5", "--format", "csv", "--no-report"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert (table.at_step == 5).all() and table.normalized_test_loss.tolist() == pytest.approx(
        [row["normalized_test_loss"] for row in study["arms"]], rel=1e-3)
    # At the runs' last evaluation the comparison is the one at their end, every digit.
    end, last = load_comparison(store, "tiny"), load_comparison(store, "tiny", at_step=10)
    pd.testing.assert_frame_equal(end.main, last.main)
    pd.testing.assert_frame_equal(end.comparisons, last.comparisons)
    assert last.headline == ["Compared at step 10 of 10, the runs' end: as `bench compare` compares them without "
                             "--at-step.", *end.headline]
    # Before it, the losses are the curves', to their 4 significant digits, and the final
    # metrics are left out (measured at the end only).
    five = load_comparison(store, "tiny", at_step=5)
    assert "test_rms" in end.per_task and "test_rms" not in five.per_task


def test_the_test_loss_figure_marks_the_step_compared_at(tmp_path, monkeypatch):
    store = tiny_study(tmp_path, monkeypatch)
    fig = figures.test_loss_curves(load_comparison(store, "tiny", at_step=5))
    marks = [line for line in fig.axes[0].get_lines() if list(line.get_xdata()) == [5, 5]]
    assert len(marks) == 1 and "dashed: step 5" in fig.axes[0].get_title()
    plt.close(fig)
    fig = figures.test_loss_curves(load_comparison(store, "tiny"))
    assert not [line for line in fig.axes[0].get_lines() if list(line.get_xdata()) == [5, 5]]
    plt.close(fig)


def test_compare_at_a_step_no_run_was_evaluated_at_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    tiny_study(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["compare", "--study", "tiny", "--at-step", "7"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: --at-step: expected best-val or an evaluation step that every finished run of "
                           "tiny has: 5, 10, got 7")
    assert main(["compare", "--study", "tiny", "--at-step", "late"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --at-step: expected an evaluation step (a whole number) or "
                                               "best-val, got 'late'")
    assert not (tmp_path / "reports" / "tiny@step7").exists()


def test_the_verdict_over_training_is_the_comparison_at_each_step(tmp_path, monkeypatch):
    """The report's GradNorm-against-the-grid figure and over_steps.csv: at each evaluation step,
    the paired test that `--at-step` makes there, for the alpha that validation chooses there."""
    store = tiny_study(tmp_path, monkeypatch)
    end = load_comparison(store, "tiny")
    over = end.over_steps
    assert sorted(set(over.step)) == [5, 10]
    for step in (5, 10):
        at = load_comparison(store, "tiny", at_step=step)
        spoken_for = at.choices["gradnorm"].chosen
        rows = over[over.step == step].set_index("versus")
        assert set(rows.arm) == {spoken_for} and set(rows.index) == {"grid", "grid (all weights > 0)"}
        assert set(rows.gradnorm) == {"gradnorm"}
        tests = at.comparisons.set_index(["arm", "versus"])
        for versus, row in rows.iterrows():
            assert row.mean_difference == tests.loc[(spoken_for, versus), "mean_difference"]
            assert row.p_value == tests.loc[(spoken_for, versus), "p_value"]
        assert rows.loc["grid", "grid_point"] == at.grids["grid"].selected
    # The last step's differences are the end's: the figure ends where the tables are.
    last = over[over.step == 10].set_index("versus").mean_difference
    at_end = end.comparisons.set_index(["arm", "versus"]).mean_difference
    assert last["grid"] == at_end[(end.choices["gradnorm"].chosen, "grid")]
    fig = figures.verdict_over_steps(load_comparison(store, "tiny", at_step=5))
    ax = fig.axes[0]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "GradNorm − grid", "GradNorm − grid (all weights > 0)"]
    assert [list(line.get_xdata()) for line in ax.get_lines()].count([5, 5]) == 1  # the step compared at
    plt.close(fig)
    # Without a grid, or with one evaluation, there is nothing to draw.
    no_grid = build_comparison("tiny", end.manifest, end.runs[end.runs.arm != "grid"].drop(
        columns=["variant", "kind", "label"]), end.records)
    assert no_grid.over_steps.empty and figures.verdict_over_steps(no_grid) is None


def test_the_report_draws_the_verdict_over_training_and_links_its_table(tmp_path, monkeypatch, capsys):
    tiny_study(tmp_path, monkeypatch)
    assert main(["compare", "--study", "tiny"]) == 0
    folder = tmp_path / "reports" / "tiny"
    page = (folder / "index.html").read_text()
    assert 'id="fig-over-steps"' in page and 'download="over_steps.csv"' in page
    assert "<p class=\"note\">At 2 evaluation steps (5 to 10; paired t-test, p &lt; 0.05): gradnorm " in page
    table = pd.read_csv(folder / "over_steps.csv")
    assert table.columns.tolist()[:5] == ["step", "gradnorm", "arm", "versus", "grid_point"]
    assert sorted(set(table.step)) == [5, 10] and set(table.gradnorm) == {"gradnorm"}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_run_at_any_of_its_steps_reads_that_evaluation_and_keeps_its_sums(data):
    """Whatever the losses, normalisers and steps: at a step before the last, the losses are that
    evaluation's, the normalised losses their sums over tasks of loss / normaliser, the gaps test
    minus train; at the last, the run is as stored; every other step is refused."""
    tasks = data.draw(st.integers(1, 4))
    steps = sorted(data.draw(st.sets(st.integers(1, 10_000), min_size=1, max_size=8)))
    losses = st.lists(st.floats(0, 1e6), min_size=tasks, max_size=tasks)
    curves = {"step": [0, *steps], **{split: [data.draw(losses) for _ in range(len(steps) + 1)]
                                      for split in ("train", "val", "test")}}
    normalisers = data.draw(st.lists(st.floats(1e-3, 1e3), min_size=tasks, max_size=tasks))
    run = {"status": "ok", "value": 1.0, "reason": None,
           "record": {"curves": curves, "normalisers": normalisers, "test_loss": [1.0] * tasks, "metrics": {"x": 1}}}
    step = data.draw(st.sampled_from(steps))
    at = entries_at_step([run], step, "s")[0]
    assert at["record"]["read_at_step"] == step
    if step == steps[-1]:
        assert {**at, "record": {k: v for k, v in at["record"].items() if k != "read_at_step"}} == run
    else:
        j = curves["step"].index(step)
        record = at["record"]
        for split in ("train", "val", "test"):
            assert record[f"{split}_loss"] == curves[split][j]
            assert record[f"normalized_{split}_loss"] == pytest.approx(
                sum(v / n for v, n in zip(curves[split][j], normalisers)))
        assert record["overfitting_gap"] == [t - r for t, r in zip(curves["test"][j], curves["train"][j])]
        assert record["normalized_overfitting_gap"] == pytest.approx(
            record["normalized_test_loss"] - record["normalized_train_loss"])
        assert at["value"] == record["normalized_val_loss"] and record["metrics"] == {}
    other = data.draw(st.integers(-5, 10_005).filter(lambda s: s not in steps))
    with pytest.raises(ConfigError, match="^--at-step: expected best-val or an evaluation step"):
        entries_at_step([run], other, "s")


def test_best_val_reads_each_run_at_its_lowest_validation_after_the_first_evaluation():
    def run(val_sums, status="ok", failed_step=None):
        e = entry(status, steps=[0, 5, 10, 15][:len(val_sums)], failed_step=failed_step)
        e["record"]["curves"]["val"] = [[v / 2, v * 10 / 2] for v in val_sums]  # normalised: v
        return e

    lowest_mid, lowest_at_start, tie, lowest_last = (run([0.5, 3, 1, 2]), run([0.1, 3, 2, 4]), run([9, 2, 2, 3]),
                                                     run([9, 3, 2, 1]))
    failed = run([9, 3, 1, 0.5], "failed", failed_step=15)  # its step 15 is where it failed
    never = {**entry("failed"), "record": None}
    at = entries_at_step([lowest_mid, lowest_at_start, tie, lowest_last, failed, never], "best-val", "s")
    # Step 0, before training, is never taken, whatever its loss.
    assert [e["record"]["read_at_step"] for e in at[:5]] == [10, 10, 5, 15, 10]
    assert at[0]["record"]["normalized_val_loss"] == pytest.approx(1) and at[0]["value"] == pytest.approx(1)
    assert at[0]["record"]["test_loss"] == [9.0, 90.0]  # evaluation 2's, as entry() makes them
    assert at[4]["status"] == "ok" and at[4]["record"]["normalized_val_loss"] == pytest.approx(1)
    assert at[5] is never
    # At its last evaluation a run is as stored, but no run keeps the final metrics: a mean of
    # them would mix runs read at their end with runs read earlier.
    assert at[3]["record"]["normalized_test_loss"] == 99.0 and at[3]["record"]["metrics"] == {}
    assert all(e["record"]["metrics"] == {} for e in at[:5])


def test_compare_at_best_val_chooses_each_runs_step_on_its_own_validation(tmp_path, monkeypatch, capsys):
    store = tiny_study(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["compare", "--study", "tiny", "--at-step", "best-val", "--format", "json"]) == 0
    study = json.loads(capsys.readouterr().out)["tiny"]
    assert study["at_step"] == "best-val"
    assert study["summary"][0].startswith("Compared at each run's best step on validation, as early stopping keeps it")
    assert "(each arm's median step of 10: grid " in study["summary"][0]
    c = load_comparison(store, "tiny", at_step="best-val")
    for e in store.records("tiny"):
        curves, normalisers = e["record"]["curves"], e["record"]["normalisers"]
        sums = [sum(v / n for v, n in zip(val, normalisers)) for val in curves["val"]]
        best = min(range(1, len(sums)), key=sums.__getitem__)
        row = c.runs[(c.runs.arm == e["arm"]) & (c.runs.run_key == e["run_key"])].iloc[0]
        assert row.read_at_step == curves["step"][best]
        assert row.normalized_val_loss == pytest.approx(sums[best], rel=5e-4)  # at the end: every digit
    assert c.title == "tiny at each run's best step on validation" and c.report_name == "tiny@best-val"
    assert "test_rms" not in c.per_task
    assert main(["compare", "--study", "tiny", "--at-step", "best-val"]) == 0
    page = (tmp_path / "reports" / "tiny@best-val" / "index.html").read_text()
    assert "bench compare --study tiny --at-step best-val" in page


@settings(max_examples=60, deadline=None)
@given(sums=st.lists(st.floats(0, 1e6), min_size=2, max_size=10))
def test_best_val_takes_the_first_lowest_validation_after_the_start(sums):
    steps = [0, *range(7, 7 * len(sums), 7)]
    run = entry(steps=steps)
    run["record"]["curves"]["val"] = [[v, 0.0] for v in sums]  # normalised: v, exactly
    step = entries_at_step([run], "best-val", "s")[0]["record"]["read_at_step"]
    later = sums[1:]
    assert step == steps[1 + later.index(min(later))]
