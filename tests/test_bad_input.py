"""Bad input, one case each: one clear line on stderr, a non-zero exit, nothing stored lost."""

from __future__ import annotations

import importlib.util
import json
import sys
import zlib
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError, StorageError
from bench.report.html import report_storage
from bench.store import ResultStore, export
from bench.study.spec import StudySpec
from tests.test_study_spec import TINY


def run(args, capsys) -> tuple[int, str]:
    code = main(args)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("training")]
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert "Traceback" not in err
    return code, error_lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def study(workdir: Path, text: str = TINY, name: str = "tiny.toml") -> str:
    path = workdir / name
    path.write_text(text)
    return str(path)


def test_unknown_study(workdir, capsys):
    code, line = run(["run", "--study", "no-such-study"], capsys)
    assert code == 2 and "--study" in line and "no-such-study" in line


def test_a_study_file_saved_in_latin_1_is_one_line_naming_where(workdir, capsys):
    """TOML is UTF-8: a file saved as Latin-1 ended in a UnicodeDecodeError traceback."""
    path = workdir / "latin.toml"
    text = TINY.replace('name = "tiny"', 'name = "tiny"\ndescription = "café"')
    path.write_bytes(text.encode("latin-1"))
    code, line = run(["run", "--study", str(path)], capsys)
    line_number = text[:text.index("é")].count("\n") + 1
    assert code == 2 and "latin.toml: encoding: expected UTF-8" in line
    assert f"byte 0xe9 on line {line_number}, column 19" in line


def test_a_study_file_from_a_windows_editor_runs_or_says_it_is_utf_16(workdir, capsys):
    """Notepad's "UTF-8 with BOM" was refused as "Invalid statement (at line 1, column 1)", a line
    that looks right; its "Unicode" (UTF-16) as "byte 0xff on line 1"."""
    path = workdir / "bom.toml"
    path.write_bytes(TINY.replace("\n", "\r\n").encode("utf-8-sig"))
    assert main(["run", "--study", str(path)]) == 0
    capsys.readouterr()
    path.write_bytes(TINY.encode("utf-16"))
    code, line = run(["run", "--study", str(path)], capsys)
    assert code == 2 and line.endswith("bom.toml: encoding: expected UTF-8 text, as TOML requires (the file is "
                                       "UTF-16, as its first two bytes say: save it as UTF-8)")


@pytest.mark.parametrize("field,name", [("name", ".."), ("name", "."), ("name", " "), ("name", "a/b"),
                                        ("name", "x" * 101), ("name", "tab\\tbed"), ("arms", ".."),
                                        ("arms", " equal")])
def test_a_name_that_is_no_folder_or_study_name_is_refused_before_training(workdir, capsys, field, name):
    """A study named '..' wrote its runs.csv and runs.parquet beside results/, in the working
    folder, and its report's index.html beside reports/."""
    text = TINY.replace('name = "tiny"', f'name = "{name}"') if field == "name" else TINY.replace(
        "[arms.equal]", f'[arms."{name}"]\nkind = "equal"')
    code, line = run(["run", "--study", study(workdir, text)], capsys)
    what = "arms." + name.replace("\\t", "\t") if field == "arms" else "name"
    assert code == 2 and f"tiny.toml: {what}: expected a" in line and "name of 1 to 100 characters" in line
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]


def test_unknown_problem(workdir, capsys):
    path = study(workdir, TINY.replace('name = "toy"', 'name = "imagenet"'))
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and Path(path).name in line and "problem" in line and "imagenet" in line


def test_unknown_balancer(workdir, capsys):
    code, line = run(["train", "--balancer", "magic", "--steps", "1"], capsys)
    assert code == 2 and "balancer" in line and "magic" in line
    path = study(workdir, TINY + '\n[arms.mine]\nkind = "magic"\n')
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "arms.mine.kind" in line


def test_malformed_toml(workdir, capsys):
    path = study(workdir, "name = 'x\n[problem\n")
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and Path(path).name in line and "TOML" in line


@pytest.mark.parametrize("weights,expected", [("[1, 2, 3]", "2 weights"), ("[1, -1]", "non-negative"),
                                              ("[0, 0]", "all equal zero")])
def test_bad_weights(workdir, capsys, weights, expected):
    path = study(workdir, TINY + f'\n[arms.mine]\nkind = "static"\nweights = {weights}\n')
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "arms.mine.weights" in line and expected in line


def test_negative_alpha(workdir, capsys):
    path = study(workdir, TINY.replace("alpha = [0.5, 1.0]", "alpha = [-1.0]"))
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "arms.gradnorm.alpha" in line and ">= 0" in line
    code, line = run(["train", "--balancer", "gradnorm", "--alpha", "-0.5", "--steps", "1"], capsys)
    assert code == 2 and "alpha" in line


@pytest.mark.parametrize("balancer,options,field", [
    ("loss-scale", ["-b", "steps=20"], "-b steps"),
    ("gradnorm", ["-b", "initial_loss=mean_first_steps", "-b", "initial_loss_steps=20"], "-b initial_loss_steps"),
    ("dwa", ["-b", "period=10"], "-b period"),
])
def test_a_warm_up_as_long_as_the_run_is_refused_not_trained_as_equal_weights(workdir, capsys, balancer, options,
                                                                                field):
    code, line = run(["train", "--balancer", balancer, *options, "--steps", "20"], capsys)
    assert code == 2 and field in line and "the budget's 20 steps" in line


@pytest.mark.parametrize("option,value,expected", [
    ("sigmas", "1,a", "-p sigmas: expected a list of numbers"),
    ("tasks", "three", "-p tasks: expected an integer"),
])
def test_problem_options_of_the_wrong_type(workdir, capsys, option, value, expected):
    code, line = run(["train", "--steps", "1", "-p", f"{option}={value}"], capsys)
    assert code == 2 and expected in line and value in line


@pytest.mark.parametrize("args,expected", [
    # The run configuration's field names (problem.tasks, balancer.weights, eval_every) are not
    # what the user typed.
    (["--problem", "diamonds", "--tasks", "3"], "--tasks: expected a list of strings, got 3"),
    (["-p", "n_train=0"], "-p n_train: expected an integer >= 1, got 0"),
    (["--balancer", "static", "--weights", "1,2,3"], "--weights: expected 2 weights, one per task"),
    (["--balancer", "gradnorm", "--alpha", "-1"], "--alpha: expected a finite number >= 0, got -1.0"),
    (["--balancer", "gradnorm", "-b", "alpha=-1"], "-b alpha: expected a finite number >= 0, got -1.0"),
    (["--balancer", "gradnorm", "-b", "initial_loss=log_classes"],
     "-b initial_loss: expected 'first_step' or 'mean_first_steps' for a problem without classification tasks"),
    (["--eval-every", "0"], "--eval-every: expected an integer >= 1, got 0"),
    (["--dtype", "float16"], "--dtype: expected 'float32' or 'float64', got 'float16'"),
    (["--problem", "my_problems:"], "--problem: expected package.module:function, got 'my_problems:'"),
    (["--problem", ":two_waves"], "--problem: expected package.module:function, got ':two_waves'"),
    # Checked when the data loads, after the configuration: said of the same option.
    (["--problem", "nyuv2", "-p", "root=nowhere"], "-p root: expected the preprocessed NYUv2 data"),
])
def test_bench_train_errors_name_the_option_that_was_typed(workdir, capsys, args, expected):
    code, line = run(["train", "--steps", "1", *args], capsys)
    assert code == 2 and line.startswith(f"error: bench train: {expected}")


@pytest.mark.parametrize("value", ["-1", "4294967296"])
@pytest.mark.parametrize("option", ["--seed", "--data-seed"])
def test_a_seed_out_of_range(workdir, capsys, option, value):
    code, line = run(["train", "--steps", "1", option, value], capsys)
    assert code == 2 and line.startswith(f"error: bench train: {option}:") and "from 0 to 4,294,967,295" in line


@pytest.mark.parametrize("where", ["file", "flag"])
def test_a_seed_past_32_bits_is_refused_before_training(workdir, capsys, where):
    """Seeds are kept to 32 bits where runs draw their streams, so seed 2**32 trained seed 0's runs
    again, and 2**63 - 1 ended in Optuna's ValueError traceback."""
    if where == "file":
        args = ["run", "--study", study(workdir, TINY.replace("seeds = [0, 1]", f"seeds = [0, {2**63 - 1}]"))]
        field = "tiny.toml: seeds"
    else:
        args = ["run", "--study", study(workdir), "--seeds", f"0,{2**32}"]
        field = "--seeds"
    code, line = run(args, capsys)
    assert code == 2 and f"{field}: expected" in line and "integers from 0 to 4,294,967,295" in line
    assert not (workdir / "results").exists()


BROKEN_PROBLEM = """
import dataclasses
from torch import nn
from bench.problems import Split, build_problem

class Broken(type(build_problem("toy"))):
    def __init__(self, params, change):
        super().__init__(params)
        self.change = change

    def _load(self, data_seed):
        data = super()._load(data_seed)
        if self.change == "empty":
            return dataclasses.replace(data, val=Split(data.val.inputs[:0], tuple(t[:0] for t in data.val.targets)))
        if self.change == "":
            return dataclasses.replace(data, val=Split(data.val.inputs, data.val.targets[:1]))
        if self.change == "short target":
            return dataclasses.replace(data, val=Split(data.val.inputs, (data.val.targets[0][1:], data.val.targets[1])))
        if self.change == "tuple":
            return data.train, data.val, data.test
        return data

    def build_model(self, init_seeds):
        if self.change == "plain model":
            return nn.Linear(250, 100)
        model = super().build_model([*init_seeds, 99] if self.change == "extra run" else init_seeds)
        if self.change.startswith("plain heads"):  # torch's own, unstacked: one head for every run
            outputs = 1 if self.change == "plain heads of one output" else 100
            model.heads = nn.ModuleList(nn.Linear(100, outputs) for _ in model.heads)
        if self.change == "mixed runs":
            model.body = MixedRuns(model.body)
        return model

    def _tasks(self):
        tasks = super()._tasks()
        if self.change != "mixed loss":
            return tasks

        def across_runs(loss):
            def mixed(prediction, target):  # each run's loss, half of it the mean over the runs
                value = loss(prediction, target)
                return 0.5 * (value + value.mean())
            return mixed

        return [dataclasses.replace(t, loss=across_runs(t.loss)) for t in tasks]

class MixedRuns(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):  # centred over every row of every run: the runs of a stack meet
        y = self.body(x)
        return y - y.mean(dim=(0, 1), keepdim=True)

def broken(change=""):
    return Broken(build_problem("toy", {"n_train": 50, "n_val": 10, "n_test": 10}).params, change)
"""


@pytest.mark.parametrize("change,expected", [
    ("", "expected Broken._load to return one target tensor per task (2) in every split, got '1 in val'"),
    ("empty", "expected Broken._load to return splits of at least one example, got '0 in val'"),
    ("extra run", "expected Broken.build_model to return a model with one head per task (2) for 1 stacked run, "
                  "got '2 heads for 2 runs'"),
    ("short target", "expected Broken._load to return target tensors with one row per input, got 'task0 in val: "
                     "(9, 100) for 10 inputs'"),
    ("tuple", "expected Broken._load to return a DataSplits of train, val and test Splits, got 'tuple'"),
    ("plain model", "expected Broken.build_model to return a bench.problems.MultiTaskModel, got 'Linear'"),
    ("plain heads", "expected Broken.build_model to return a model whose every parameter has a leading run "
                    "dimension, one slice per run (1 here): the stacked layers of bench.problems.layers, or torch's "
                    "own modules in a StackedModule, got 'heads.0.weight of shape (100, 100)'"),
])
def test_a_problem_of_ones_own_whose_data_or_model_is_not_what_it_must_be(workdir, capsys, monkeypatch, change,
                                                                        expected):
    (workdir / "broken_problem.py").write_text(BROKEN_PROBLEM)
    monkeypatch.syspath_prepend(str(workdir))
    code, line = run(["train", "--problem", "broken_problem:broken", "-p", f"change={change}", "--steps", "1",
                      "--batch-size", "10"], capsys)
    assert code == 2 and expected in line


@pytest.mark.parametrize("change,expected", [
    # A layer left unstacked of one output has a first dimension of 1, as a lone run's stacked
    # layer does: `bench run` builds a model of two runs.
    ("plain heads of one output", "Broken.build_model to return a model whose every parameter has a leading run "
                                  "dimension, one slice per run (2 here): the stacked layers of bench.problems.layers, "
                                  "or torch's own modules in a StackedModule, got 'heads.0.weight of shape (1, 100)'"),
    ("mixed runs", "a model whose stacked runs stay apart: run 0's predictions must not change when run 1's "
                   "parameters and rows do (a layer that mixes a stack's runs, such as a batch norm over every run's "
                   "rows, trains them together, not as each would train alone), got \"run 0's predictions of task0 "
                   "changed\""),
    ("mixed loss", "task task0's loss to keep the stacked runs apart: run 0's loss must not change when run 1's "
                   "predictions and targets do (a loss averaged across the runs trains them together), got \"run 0's "
                   "loss changed\""),
])
def test_a_model_or_loss_that_mixes_a_stacks_runs_is_refused_before_anything_is_stored(workdir, capsys, monkeypatch,
                                                                                      change, expected):
    """Each run of a stack must train as it would alone. A head left unstacked trained one head
    for every run; a layer centred over every run's rows has no parameter to give it away, and a
    loss averaged across the runs returns one value per run, as it must: all three made the
    stacked runs train together, silently."""
    (workdir / "broken_problem.py").write_text(BROKEN_PROBLEM)
    monkeypatch.syspath_prepend(str(workdir))
    text = TINY.split("[problem]")[0] + (f'[problem]\nname = "broken_problem:broken"\nchange = "{change}"\n\n[budget]'
                                         + TINY.split("[budget]")[1])
    code, line = run(["run", "--study", study(workdir, text)], capsys)
    assert code == 2 and line == f"error: tiny.toml: problem: expected {expected}"
    assert not (workdir / "results").exists()


MISFIT_PROBLEM = """
from torch import nn
from bench.problems import DataSplits, Split, build_problem



class Misfit(type(build_problem("toy"))):
    def __init__(self, params, change):
        super().__init__(params)
        self.change = change

    def _load(self, data_seed):
        data = super()._load(data_seed)
        def changed(split):
            if self.change == "integers":  # token ids, say, into a model without an embedding
                return Split((split.inputs * 10).long(), split.targets)
            if self.change == "features":  # 3 columns fewer than the model's first layer takes
                return Split(split.inputs[:, 3:], split.targets)
            if self.change == "numpy":
                return Split(split.inputs.numpy(), split.targets)
            return split
        return DataSplits(changed(data.train), changed(data.val), changed(data.test))

    def build_model(self, init_seeds):
        model = super().build_model(init_seeds)
        if self.change == "own layer":
            model.body = OwnLayer()
        return model

class OwnLayer(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1, 7)  # a bug of one's own

def misfit(change: str = "", **options):
    options = {"n_train": 50, "n_val": 10, "n_test": 10, **options}
    return Misfit(build_problem("toy", options).params, change)
"""


@pytest.mark.parametrize("change,expected", [
    ("integers", "expected Misfit.build_model to return a model that takes _load's inputs (torch.int64 rows of "
                 "shape ({width},)), got 'RuntimeError: expected scalar type "),
    ("features", "expected Misfit.build_model to return a model that takes _load's inputs (torch.float32 rows of "
                 "shape ({fewer},)), got 'RuntimeError: "),
    ("numpy", "expected Misfit._load to return a Split of tensors as train, got 'a Split of numpy.ndarray inputs"),
    ("own layer", "error: RuntimeError: shape '[1, -1, 7]' is invalid"),
])
@pytest.mark.parametrize("verb", ["train", "run"])
def test_a_model_that_does_not_take_its_problems_inputs_is_one_line_before_training(workdir, capsys, verb,
                                                                                    change, expected):
    """Integer inputs, or inputs of another width, failed inside this package's layers, in a
    traceback that read as a bug of ours; numpy inputs were told as 'got Split'."""
    module = f"misfit_{verb}"
    (workdir / f"{module}.py").write_text(MISFIT_PROBLEM)
    if verb == "train":
        args = ["train", "--problem", f"{module}:misfit", "-p", f"change={change}", "--steps", "1", "--batch-size", "10"]
    else:
        args = ["run", "--study", study(workdir, TINY.replace('name = "toy"', f'name = "{module}:misfit"\nchange = "{change}"'))]
    code, line = run(args, capsys)
    width = 250 if verb == "train" else 8  # the toy's default input_dim, and the tiny study's
    assert code in (1, 2) and expected.format(width=width, fewer=width - 3) in line
    if change == "own layer":  # the user's own code: its file and line; checked before storing
        bug = next(n for n, text in enumerate(MISFIT_PROBLEM.splitlines(), 1) if "a bug of one's own" in text)
        assert f"{module}.py, line {bug}, in forward (" in line
        assert ("(nothing was stored; " in line) == (verb == "run") and "queued again" not in line
    assert not (workdir / "results").exists()


GAPPY_PROBLEM = """
import dataclasses
import torch
from bench.problems import Split, build_problem
from bench.problems.losses import squared_error

def where_masked(pred, target):  # finite, but NaN gradients from the branch torch.where drops
    ok = torch.isfinite(target)
    return torch.where(ok, (pred - target) ** 2, torch.zeros_like(pred)).flatten(1).mean(1)

def left_out(pred, target):
    ok = torch.isfinite(target)
    return torch.where(ok, pred - torch.nan_to_num(target), torch.zeros_like(pred)).pow(2).flatten(1).mean(1)

LOSSES = {"plain": squared_error, "where": where_masked, "left_out": left_out}

class Gappy(type(build_problem("toy"))):
    def __init__(self, params, gap, loss):
        super().__init__(params)
        self.gap, self.loss = gap, loss

    def _tasks(self):
        tasks = super()._tasks()
        return [dataclasses.replace(tasks[0], loss=LOSSES[self.loss]), *tasks[1:]]

    def _load(self, data_seed):
        data = super()._load(data_seed)
        inputs, targets = data.train.inputs.clone(), [t.clone() for t in data.train.targets]
        (inputs if self.gap == "input" else targets[0])[7, 0] = float("nan")
        return dataclasses.replace(data, train=Split(inputs, tuple(targets)))

def gappy(gap: str = "target", loss: str = "plain", **options):
    options = {"n_train": 50, "n_val": 10, "n_test": 10, **options}
    return Gappy(build_problem("toy", options).params, gap, loss)
"""


@pytest.mark.parametrize("gap,loss,expected", [
    ("input", "plain", "Gappy._load to return finite inputs (no NaN or inf), got '1 of 64 rows in train hold some, "
                       "the first row 7'"),
    ("target", "plain", "finite targets for task task0, or a loss that leaves NaN and inf targets out (missing "
                        "labels) with a finite gradient: on row 7 of train its loss is not finite, got 'NaN or inf "
                        "in 1 of 64 rows of train'"),
    ("target", "where", "on row 7 of train its gradient is not finite"),
    ("target", "left_out", None),
])
def test_data_holding_nan_stops_the_study_before_anything_is_stored(workdir, capsys, gap, loss, expected):
    """A NaN in the data made every run's loss NaN: 210 runs stored as 'diverged', which reads as
    the balancing's fault, and settled, so the mended data would not retrain them. Missing labels
    that the task's loss leaves out (with a finite gradient) are fine."""
    module = f"gappy_{gap}_{loss}"
    (workdir / f"{module}.py").write_text(GAPPY_PROBLEM)
    path = study(workdir, TINY.replace('name = "toy"', f'name = "{module}:gappy"\ngap = "{gap}"\nloss = "{loss}"'))
    if expected is None:
        assert main(["run", "--study", path]) == 0
        assert {r["status"] for r in ResultStore("results/bench.journal").records("tiny")} == {"ok"}
        return
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and line.startswith(f"error: {Path(path).name}: problem: expected ") and expected in line
    assert not Path("results").exists()  # nothing stored


def test_a_run_failed_by_a_nan_target_says_so_rather_than_diverged(workdir, capsys):
    (workdir / "gappy_train.py").write_text(GAPPY_PROBLEM)
    assert main(["train", "--problem", "gappy_train:gappy", "--steps", "20", "--batch-size", "50", "--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "failed" and record["reason"] == (
        "non-finite training loss at step 0: the batch's targets of task0 hold NaN or inf (missing labels?); "
        "a task's loss must leave those out")


ONE_HEAD_PROBLEM = """
from bench.problems import MultiTaskModel, build_problem

class OneHead(type(build_problem("toy"))):
    def build_model(self, init_seeds):
        model = super().build_model(init_seeds)
        return MultiTaskModel(model.body, model.last_shared_layer, list(model.heads)[:1],
                              n_runs=len(init_seeds), activation=model.activation)

def one_head(**options):
    return OneHead(build_problem("toy", options).params)
"""


DEEP_LAST_LAYER_PROBLEM = """
from bench.problems import MultiTaskModel, build_problem
from bench.problems.layers import StackedMLP, seeded_generators

class DeepLast(type(build_problem("toy"))):
    def build_model(self, init_seeds):
        model = super().build_model(init_seeds)
        width = self.params.hidden
        last = StackedMLP([width, width, width], seeded_generators(init_seeds))  # two layers: no one W
        return MultiTaskModel(model.body, last, list(model.heads), n_runs=len(init_seeds),
                              activation=model.activation)

def deep_last(**options):
    return DeepLast(build_problem("toy", options).params)
"""


def test_gradnorm_on_a_last_shared_layer_without_one_weight_says_which_grad_params_work(workdir, capsys):
    """GradNorm's W is the last shared layer's weight: a last shared layer of two layers ended
    in an AttributeError traceback, even with grad_params = "all_shared", which needs no W."""
    (workdir / "deep_last.py").write_text(DEEP_LAST_LAYER_PROBLEM)
    args = ["train", "--problem", "deep_last:deep_last", "--steps", "5", "--balancer", "gradnorm", "--json"]
    code, line = run(args[:-1], capsys)
    assert code == 2 and line.startswith("error: bench train: -b grad_params: expected parameters the model's last "
                                         "shared layer has: last_layer_weight takes its weight, and StackedMLP has "
                                         "no weight")
    assert 'or set grad_params = "all_shared"' in line
    assert main([*args, "-b", "grad_params=all_shared"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"


@pytest.mark.parametrize("verb", ["run", "train"])
def test_a_model_a_head_short_is_one_line_before_anything_is_stored(workdir, capsys, verb):
    """A model with fewer heads than tasks ended in an IndexError traceback from the metrics."""
    (workdir / "one_head.py").write_text(ONE_HEAD_PROBLEM)
    if verb == "run":
        args = ["run", "--study", study(workdir, TINY.replace('name = "toy"', 'name = "one_head:one_head"'))]
    else:
        args = ["train", "--problem", "one_head:one_head", "--steps", "5"]
    code, line = run(args, capsys)
    assert code == 2 and ("expected OneHead.build_model to return a model with one head per task (2) for 1 "
                          "stacked run, got '1 head for 1 run'") in line
    assert not (workdir / "results").exists()


SCALAR_LOSS_PROBLEM = """
import dataclasses
from bench.problems import build_problem

def averaged_over_everything(pred, target):  # one number for all the stacked runs
    return ((pred - target) ** 2).mean()

def averaged_over_a_full_batch(pred, target):  # past the few rows `bench run` checks a loss on first
    return averaged_over_everything(pred, target) if pred.shape[1] > 4 else ((pred - target) ** 2).mean((1, 2))

def as_numbers(pred, target):  # detached: task0's head would never train, silently
    return ((pred - target) ** 2).flatten(1).mean(1).detach()

class OwnLoss(type(build_problem("toy"))):
    def __init__(self, params, loss):
        super().__init__(params)
        self.loss = loss

    def _tasks(self):
        tasks = super()._tasks()
        return [dataclasses.replace(tasks[0], loss=self.loss), *tasks[1:]]

def scalar(**options):
    return OwnLoss(build_problem("toy", options).params, averaged_over_everything)

def scalar_on_full_batches(**options):
    return OwnLoss(build_problem("toy", options).params, averaged_over_a_full_batch)

def detached(**options):
    return OwnLoss(build_problem("toy", options).params, as_numbers)
"""


def test_a_loss_that_returns_one_number_for_every_run_is_refused_before_anything_is_stored(workdir, capsys):
    """`bench run` tries the loss on a few rows of two runs before it opens the storage."""
    (workdir / "scalar_loss.py").write_text(SCALAR_LOSS_PROBLEM)
    code, line = run(["run", "--study", study(workdir, TINY.replace('name = "toy"', 'name = "scalar_loss:scalar"'))],
                     capsys)
    assert line == ("error: tiny.toml: problem: expected task task0's loss to return one value per stacked run, the "
                    "mean over the batch of each: shape (2,) for predictions (2, 4, 3), got 'shape ()'")
    assert code == 2 and not (workdir / "results").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_loss_that_returns_one_number_for_every_run_is_one_line_in_jobs_processes_too(workdir, capsys, jobs):
    """A loss of one's own returning a scalar ended in torch.stack's IndexError traceback; with
    --jobs 2 the ConfigError could not cross back from the process (BrokenProcessPool). This one
    does so only on a full batch, so training meets it, not `bench run`'s first check."""
    module = f"scalar_loss_{jobs}"
    (workdir / f"{module}.py").write_text(SCALAR_LOSS_PROBLEM)
    path = study(workdir, TINY.replace('name = "toy"', f'name = "{module}:scalar_on_full_batches"'))
    code, line = run(["run", "--study", path, "--jobs", jobs], capsys)
    assert code == 2 and line.startswith("error: tiny.toml: problem: expected task task0's loss to return one "
                                         "value per stacked run") and line.endswith("got 'shape ()'")
    records = ResultStore().records("tiny")
    assert records == []  # nothing stored as failed: the runs wait for the mended code
    assert all(p.waiting == p.total for p in ResultStore().stored_progress("tiny").values())


def test_a_loss_detached_from_its_predictions_is_refused_not_trained_without_its_head(workdir, capsys):
    """A detached loss trained the other tasks only, and the run was stored as ok."""
    (workdir / "detached_loss.py").write_text(SCALAR_LOSS_PROBLEM)
    code, line = run(["train", "--problem", "detached_loss:detached", "--steps", "5"], capsys)
    assert code == 2 and "expected task task0's loss to keep its predictions' gradient" in line
    assert "got 'a torch.float32 loss without a gradient'" in line


def test_a_config_error_crosses_process_boundaries_whole():
    import pickle

    err = ConfigError("arms.gn.floor", "a number in (0, 1)", torch.tensor([2.0]), source="s.toml")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ConfigError and str(again) == str(err) == (
        "s.toml: arms.gn.floor: expected a number in (0, 1), got tensor([2.])")
    assert (again.field, again.expected, again.source) == ("arms.gn.floor", "a number in (0, 1)", "s.toml")
    hinted = pickle.loads(pickle.dumps(ConfigError("arms.gn.alfa", "an option", hint="did you mean 'alpha'?")))
    assert str(hinted) == "arms.gn.alfa: expected an option; did you mean 'alpha'?"


@pytest.mark.parametrize("old,new,expected,meant", [
    ("seeds = [0, 1]", "seed = [0, 1]", "seed: expected one of the study fields", "seeds"),
    ("[problem]", "[problme]", "problme: expected one of the study fields", "problem"),
    ('name = "toy"', 'name = "tyo"', "problem: expected one of", "toy"),
    ("sigmas = ", "sigma = ", "problem.sigma: expected an option of problem 'toy'", "sigmas"),
    ("batch_size = 16", "batchsize = 16", "budget.batchsize: expected an option of [budget]", "batch_size"),
    ("resolution = 0.5", "resolutoin = 0.5", "arms.grid.resolutoin: expected an option of the 'grid' arm",
     "resolution"),
    ("alpha = ", "alfa = ", "arms.gradnorm.alfa: expected an option of the 'gradnorm' arm", "alpha"),
    ("[arms.equal]", '[arms.equal]\nkind = "eqaul"', "arms.equal.kind: expected one of", "equal"),
])
def test_a_misspelt_name_is_refused_with_the_name_it_is_close_to(workdir, capsys, old, new, expected, meant):
    assert TINY.count(old) == 1
    code, line = run(["run", "--study", study(workdir, TINY.replace(old, new))], capsys)
    assert code == 2 and line.startswith(f"error: tiny.toml: {expected}") and line.endswith(f"; did you mean '{meant}'?")
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("args,hint", [
    (["-p", "sigma=1,2"], "did you mean 'sigmas'?"), (["--balancer", "gradnorm", "-b", "alfa=1"], "did you mean 'alpha'?"),
    (["--balancer", "gradnrom"], "did you mean 'gradnorm'?"), (["--problem", "tyo"], "did you mean 'toy'?"),
])
def test_bench_train_names_the_option_a_misspelt_one_is_close_to(workdir, capsys, args, hint):
    code, line = run(["train", "--steps", "1", *args], capsys)
    assert code == 2 and line.endswith(hint)


FAILING_PROBLEM = """
from bench.problems import build_problem

class Failing(type(build_problem("toy"))):
    def build_model(self, init_seeds):
        model = super().build_model(init_seeds)
        forward, calls = model.forward, []

        def failing_forward(x):
            calls.append(1)
            if len(calls) > 3:  # a few steps in: runs have been claimed
                raise FloatingPointError("the sensor went away")
            return forward(x)

        model.forward = failing_forward
        return model

def failing(**options):
    return Failing(build_problem("toy", options).params)

def missing_data():
    return {}["data"]
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_error_in_ones_own_problem_code_is_one_line_naming_its_file_and_line(workdir, capsys, jobs):
    module = f"failing_problem_{jobs}"  # one module per test: an imported module stays cached
    (workdir / f"{module}.py").write_text(FAILING_PROBLEM)
    path = study(workdir, TINY.replace('name = "toy"', f'name = "{module}:failing"'))
    code, line = run(["run", "--study", path, "--jobs", jobs], capsys)
    assert code == 1 and line.startswith("error: FloatingPointError: the sensor went away, raised in your code at ")
    assert f"{module}.py, line 12, in failing_forward (the runs in hand were queued again; " in line
    # Nothing is left RUNNING: the runs it held wait for the next `bench run`.
    runs = StudySpec.load(path).runs()
    progress = ResultStore().progress("tiny", {a: [r.key for r in runs if r.arm == a] for a in {r.arm for r in runs}})
    assert progress.running == 0 and progress.waiting == progress.left == len(runs)


HUNGRY_PROBLEM = """
from bench.problems import build_problem

NO_MEMORY = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
             "you tried to allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)")
CALLS = []  # forward passes in this process, every model's

class Hungry(type(build_problem("toy"))):
    def build_model(self, init_seeds):
        if self.params.hidden > 6:  # a model too large to build at all
            raise RuntimeError(NO_MEMORY)
        model = super().build_model(init_seeds)
        forward = model.forward

        def hungry_forward(x):
            CALLS.append(1)
            if len(CALLS) > 60:  # later: a few batches are stored, then one does not fit
                raise RuntimeError(NO_MEMORY)
            return forward(x)

        model.forward = hungry_forward
        return model

def hungry(**options):
    return Hungry(build_problem("toy", options).params)
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_memory_running_out_is_one_line_and_the_runs_in_hand_are_queued_again(workdir, capsys, jobs):
    """torch's allocator error was a traceback, one of this package's own, as if a bug."""
    module = f"hungry_problem_{jobs}"
    (workdir / f"{module}.py").write_text(HUNGRY_PROBLEM)
    path = study(workdir, TINY.replace('name = "toy"', f'name = "{module}:hungry"'))
    code, line = run(["run", "--study", path, "--jobs", jobs, "--batch-runs", "1"], capsys)
    assert code == 1 and line.startswith("error: out of memory: this machine could not allocate 3.0 GiB more "
                                         "for torch. The runs in hand were queued again")
    assert "Fewer --jobs or a smaller --batch-runs needs less" in line
    runs = StudySpec.load(path).runs()
    progress = ResultStore().progress("tiny", {a: [r.key for r in runs if r.arm == a] for a in {r.arm for r in runs}})
    assert progress.running == progress.failed == 0 and 0 < progress.waiting == progress.left < len(runs)

    # A model that cannot be built at all: said before anything is stored; and in `bench train`.
    big = study(workdir, TINY.replace('name = "tiny"', 'name = "big"').replace(
        'name = "toy"', f'name = "{module}:hungry"').replace("hidden = 6", "hidden = 7"), "big.toml")
    code, line = run(["run", "--study", big, "--jobs", jobs], capsys)
    assert code == 1 and line == ("error: out of memory: this machine could not allocate 3.0 GiB more for torch, "
                                  "for one run of big.toml, so nothing was stored. A smaller problem (data or "
                                  "model) needs less")
    assert "big" not in ResultStore().study_names()
    code, line = run(["train", "--problem", f"{module}:hungry", "-p", "hidden=7", "--steps", "1"], capsys)
    assert code == 1 and line.endswith("3.0 GiB more for torch. A smaller problem (data or model) needs less")


def test_an_error_while_building_ones_own_problem_and_a_syntax_error(workdir, capsys, monkeypatch):
    (workdir / "failing_builder.py").write_text(FAILING_PROBLEM)
    (workdir / "unfinished.py").write_text("def problem(:\n")
    code, line = run(["train", "--problem", "failing_builder:missing_data", "--steps", "1"], capsys)
    assert code == 1 and line.startswith("error: KeyError: 'data', raised in your code at ")
    assert line.endswith("failing_builder.py, line 22, in missing_data (BENCH_TRACEBACK=1 shows the traceback)")
    code, line = run(["train", "--problem", "unfinished:problem", "--steps", "1"], capsys)
    assert code == 2 and "problem: expected a module without syntax errors (invalid syntax: " in line
    assert "unfinished.py, line 1)" in line
    monkeypatch.setenv("BENCH_TRACEBACK", "0")  # switched off, as such variables go: still one line
    code, line = run(["train", "--problem", "failing_builder:missing_data", "--steps", "1"], capsys)
    assert code == 1 and line.startswith("error: KeyError: 'data', raised in your code at ")
    monkeypatch.setenv("BENCH_TRACEBACK", "1")  # for whoever debugs it: the whole traceback
    with pytest.raises(KeyError, match="data"):
        main(["train", "--problem", "failing_builder:missing_data", "--steps", "1"])


@pytest.mark.parametrize("err, reason", [
    (MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type float64"),
     "Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type float64"),  # numpy's
    (MemoryError(), "Python could not allocate memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes."),
     "this machine could not allocate 3.0 GiB more for torch"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory"),
     "this machine could not allocate more memory for torch"),
])
def test_running_out_of_memory_is_told_with_what_could_not_be_allocated(err, reason):
    from bench.errors import memory_failure

    assert str(memory_failure(err, "; advice")) == f"out of memory: {reason}; advice"
    assert memory_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_an_error_in_ones_code_is_told_at_the_line_that_raised_it_not_the_one_that_called(tmp_path):
    from bench.errors import user_code_frame

    path = tmp_path / "nested_problem.py"
    path.write_text("def load():\n    return read()\n\n\ndef read():\n    raise KeyError('data')\n")
    spec = importlib.util.spec_from_file_location("nested_problem", path)
    nested_problem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nested_problem)

    with pytest.raises(KeyError) as err:
        nested_problem.load()
    frame = user_code_frame(err.value)
    assert (Path(frame.filename).name, frame.lineno, frame.name) == ("nested_problem.py", 6, "read")


def test_a_problem_of_ours_named_as_ones_own_keeps_our_errors_ours(tmp_path, monkeypatch):
    """`problem = "bench.problems.toy:..."`: an error raised in this package is still a bug of ours,
    told with its traceback, not as one raised in the user's code."""
    import bench.errors as errors

    monkeypatch.setattr(errors, "USER_CODE_PATHS", set())
    errors.mark_user_code(errors.PACKAGE_DIR / "problems")
    errors.mark_user_code(errors.PACKAGE_DIR / "problems" / "toy.py")
    assert errors.USER_CODE_PATHS == set()
    errors.mark_user_code(tmp_path / "my_problems")
    assert errors.USER_CODE_PATHS == {(tmp_path / "my_problems").resolve()}


def test_an_error_already_told_as_raised_in_ones_code_is_kept_as_it_is():
    """A `--jobs` process's error arrives told already, and without its traceback."""
    from bench.errors import UserCodeError

    told = UserCodeError("KeyError: 'data', raised in your code at my_problem.py, line 22, in load")
    assert UserCodeError.located(told) is told


@pytest.mark.parametrize("value, asked", [("", False), ("0", False), ("false", False), ("No", False),
                                          ("off", False), (" off ", False), ("1", True), ("yes", True),
                                          ("ON", True)])
def test_bench_traceback_is_a_switch_read_as_such_switches_go(monkeypatch, value, asked):
    from bench.errors import traceback_asked

    monkeypatch.setenv("BENCH_TRACEBACK", value)
    assert traceback_asked() is asked


def test_an_error_in_ones_own_problem_package_installed_in_site_packages_is_one_line(workdir, capsys,
                                                                                     monkeypatch):
    """Installed packages are library code, whose errors keep their traceback; a problem package
    of one's own installed there is still one's own code."""
    import sysconfig

    site = workdir / "site-packages"
    (site / "installed_problems").mkdir(parents=True)
    (site / "installed_problems" / "__init__.py").write_text(FAILING_PROBLEM)
    monkeypatch.syspath_prepend(str(site))
    real = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**real, "purelib": str(site), "platlib": str(site)})
    code, line = run(["train", "--problem", "installed_problems:missing_data", "--steps", "1"], capsys)
    assert code == 1 and line.startswith("error: KeyError: 'data', raised in your code at ")
    assert "installed_problems/__init__.py, line 22, in missing_data" in line


def test_unreachable_storage(workdir, capsys):
    path = study(workdir)
    code, line = run(["run", "--study", path, "--storage", "postgresql://bench@127.0.0.1:1/nowhere"], capsys)
    assert code == 2 and "cannot open the storage" in line and "127.0.0.1:1" in line


@pytest.mark.parametrize("storage", [None, "elsewhere/bench.journal", "sqlite:///bench.db"])
def test_reading_verbs_refuse_a_storage_that_does_not_exist_and_create_nothing(workdir, capsys, storage):
    """`bench compare` in the wrong folder created results/bench.journal, empty, and then said
    the storage held no study."""
    for verb in ("compare", "status"):
        code, line = run([verb, *(["--storage", storage] if storage else [])], capsys)
        assert code == 2 and f"no results at {storage or 'results/bench.journal'}" in line, line
        assert "bench run --study" in line
    assert list(workdir.iterdir()) == [], list(workdir.iterdir())


def test_results_folder_not_writable(workdir, capsys):
    (workdir / "blocked").write_text("a file where the results folder should be")
    code, line = run(["run", "--study", study(workdir), "--storage", "blocked/bench.journal"], capsys)
    assert code == 2 and "results folder" in line and "blocked" in line


def test_a_study_changed_under_the_same_name_keeps_what_is_stored(workdir, capsys):
    path = study(workdir)
    assert main(["run", "--study", path]) == 0
    capsys.readouterr()
    before = {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")}
    study(workdir, TINY.replace("lr = 0.01", "lr = 0.02"))
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "another configuration (budget.lr: 0.01 -> 0.02)" in line and "--new-version" in line
    after = {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")}
    assert after == before


OWN_PROBLEM = """
from bench.problems import build_problem

def mine(**options):
    return build_problem("toy", {**options, "sigmas": [1.0, 10.0]})
"""


def test_a_study_whose_problem_code_changed_keeps_what_is_stored(workdir, capsys, monkeypatch):
    """Runs were keyed on the study file alone: a problem of one's own, edited (its loss, its
    data), was continued with the runs its old code trained, and compared with them."""
    (workdir / "own_code.py").write_text(OWN_PROBLEM)
    path = study(workdir, TINY.replace('name = "toy"', 'name = "own_code:mine"'))
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    capsys.readouterr()
    before = {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")}

    # Comments and layout are not the code: the study goes on.
    (workdir / "own_code.py").write_text("# my problem\n" + OWN_PROBLEM.replace("**options, ", "**options,  "))
    assert main(["run", "--study", path]) == 0
    assert "trained now" in capsys.readouterr().out
    stored = {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")}
    assert len(stored) > len(before) and all(stored[k] == v for k, v in before.items())

    (workdir / "own_code.py").write_text(OWN_PROBLEM.replace("10.0", "20.0"))
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "another configuration (problem_code: 'own_code.py " in line and "--new-version" in line
    code, line = run(["compare", "--study", path, "--no-report"], capsys)
    assert code == 2 and "its configuration has not been run" in line and "problem_code" in line
    assert {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")} == stored
    assert main(["run", "--study", path, "--new-version", "--seeds", "0"]) == 0
    assert "tiny-v2" in capsys.readouterr().out
    # The report says which code trained the runs.
    fingerprint = ResultStore().manifest("tiny-v2")["identity"]["problem_code"]
    assert fingerprint.startswith("own_code.py ") and fingerprint != ResultStore().manifest("tiny")["identity"]["problem_code"]
    assert main(["compare", "--study", "tiny-v2"]) == 0
    assert f"<dt>problem code</dt><dd>{fingerprint}</dd>" in (workdir / "reports" / "tiny-v2" / "index.html").read_text()


def test_a_problem_in_a_package_is_fingerprinted_by_every_module_of_its_package(workdir):
    """The problem's function sits in one module of a package and its scale in another: an edit
    to either is an edit to the problem's code (a fingerprint of the function's module alone
    would have let the study go on with runs of the old code)."""
    from bench.problems import build_problem

    package = workdir / "own_package"
    (package / "problems").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "problems" / "__init__.py").write_text("")
    (package / "scales.py").write_text("SCALE = 10.0\n")
    (package / "problems" / "make.py").write_text(
        "from bench.problems import build_problem\nfrom own_package.scales import SCALE\n\n\n"
        "def mine(**options):\n    return build_problem('toy', {**options, 'sigmas': [1.0, SCALE]})\n\n\n"
        "NOT_A_FUNCTION = 3\n")
    first = build_problem("own_package.problems.make:mine", {}).code_fingerprint
    assert first.startswith("own_package/ (4 files) ")
    (package / "scales.py").write_text("SCALE = 20.0\n")
    assert build_problem("own_package.problems.make:mine", {}).code_fingerprint != first
    with pytest.raises(ConfigError, match="expected a function 'NOT_A_FUNCTION' in module 'own_package.problems.make'"):
        build_problem("own_package.problems.make:NOT_A_FUNCTION", {})


@pytest.mark.parametrize("function,expected", [
    ("needs_scale", "problem: expected options picky:needs_scale accepts (needs_scale() missing 1 required "
                    "positional argument: 'scale'), got {}"),
    ("not_a_problem", "problem: expected picky:not_a_problem to return a bench.problems.Problem, got 'dict'"),
])
def test_a_problem_function_called_without_what_it_needs_or_returning_no_problem(workdir, function, expected):
    from bench.problems import build_problem

    (workdir / "picky.py").write_text("def needs_scale(scale):\n    return scale\n\n\n"
                                      "def not_a_problem(**options):\n    return {'tasks': 2}\n")
    with pytest.raises(ConfigError) as err:
        build_problem(f"picky:{function}", {})
    assert str(err.value) == expected


def test_a_study_stored_before_problem_code_was_fingerprinted_is_continued(workdir, capsys, monkeypatch):
    import bench.problems.user

    (workdir / "old_code.py").write_text(OWN_PROBLEM)
    path = study(workdir, TINY.replace('name = "toy"', 'name = "old_code:mine"'))
    with monkeypatch.context() as older:  # what earlier versions of bench stored
        older.setattr(bench.problems.user, "code_fingerprint", lambda root: None)
        assert main(["run", "--study", path, "--seeds", "0"]) == 0
    assert "problem_code" not in ResultStore().manifest("tiny")["identity"]
    before = {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")}
    capsys.readouterr()
    assert main(["run", "--study", path]) == 0  # more seeds: the stored study goes on
    assert "in study tiny (" in capsys.readouterr().out and ResultStore().study_names() == ["tiny"]
    stored = {(r["arm"], r["run_key"]): r["value"] for r in ResultStore().records("tiny")}
    assert len(stored) > len(before) and all(stored[k] == v for k, v in before.items())
    assert main(["compare", "--study", path, "--no-report"]) == 0


def test_a_study_of_one_run_says_one_run(workdir, capsys):
    one = TINY.replace("seeds = [0, 1]", "seeds = [0]").split("[arms.")[0] + "[arms.equal]\n"
    assert main(["run", "--study", study(workdir, one)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("study tiny from ") and first.endswith(": 1 run (equal: 1), seeds [0], 10 steps each")


def test_a_study_named_twice_is_compared_once(workdir, capsys):
    """`--study tiny --study tiny.toml` printed every arm twice."""
    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    capsys.readouterr()
    assert main(["compare", "--study", "tiny", "--study", path, "--format", "csv", "--no-report"]) == 0
    rows = capsys.readouterr().out.splitlines()
    arms = [row.split(",")[0] for row in rows[1:]]
    assert rows[0].startswith("arm,") and "equal" in arms and len(arms) == len(set(arms))


def test_a_study_file_reads_the_stored_version_it_describes(workdir, capsys):
    path = study(workdir)
    assert main(["run", "--study", path]) == 0
    study(workdir, TINY.replace("lr = 0.01", "lr = 0.02"))
    assert main(["run", "--study", path, "--new-version"]) == 0
    capsys.readouterr()
    assert main(["status", "--study", path]) == 0
    assert capsys.readouterr().out.startswith("tiny-v2 in ")
    study(workdir)  # back to the first configuration: the file names 'tiny' again
    assert main(["status", "--study", path]) == 0
    assert capsys.readouterr().out.startswith("tiny in ")
    study(workdir, TINY.replace("lr = 0.01", "lr = 0.03"))  # never run: no stored results are its
    code, line = run(["compare", "--study", path, "--no-report"], capsys)
    assert code == 2 and "has not been run" in line and "tiny, tiny-v2" in line and "--new-version" in line
    assert "(since tiny-v2: budget.lr: 0.02 -> 0.03)" in line
    study(workdir, TINY.replace("lr = 0.01", "lr = 0.02"))  # stored as v2: the refusal says so
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "stored as 'tiny-v2'" in line
    study(workdir, TINY + "\n[arms.rlw]\n")  # an arm added to 'tiny': `bench run` adds it there
    code, line = run(["status", "--study", path], capsys)
    assert code == 2 and "arms.rlw: added" in line and f"`bench run --study {path}`," in line


def test_a_non_finite_loss(workdir, capsys):
    # sigma^2 = 1e40 overflows float32: the squared loss is infinite from the first step.
    code, line = run(["train", "--tasks", "2", "--sigmas", "1,1e20", "--steps", "5", "--device", "cpu",
                      "-p", "n_train=100", "-p", "n_val=20", "-p", "n_test=20"], capsys)
    assert code == 1 and "non-finite training loss at step 0" in line and "task1" in line


def test_a_failed_run_prints_strict_json(workdir, capsys):
    # Its losses are infinite; NaN and Infinity are not JSON (jq refuses them): they become null.
    code = main(["train", "--tasks", "2", "--sigmas", "1,1e20", "--steps", "5", "--device", "cpu", "--json",
                 "-p", "n_train=100", "-p", "n_val=20", "-p", "n_test=20"])
    out = capsys.readouterr().out

    def refuse(token):
        raise AssertionError(f"{token} in the JSON output")

    record = json.loads(out, parse_constant=refuse)
    assert code == 1 and record["status"] == "failed"
    assert record["curves"]["train"][0][1] is None  # task1's infinite loss at step 0


@pytest.mark.parametrize("device,expected", [("tpu", "'cuda:N'"), ("cuda:x", "'cuda:N'"), ("cuda:99", "CUDA device")])
def test_a_device_this_machine_lacks(workdir, capsys, device, expected):
    # Checked before anything is queued or trained, by every verb that takes --device.
    if device == "cuda:99" and not torch.cuda.is_available():
        expected = "no CUDA"
    for args in (["train", "--steps", "1"], ["run", "--study", study(workdir)], ["perf", "--steps", "1"]):
        code, line = run([*args, "--device", device], capsys)
        assert code == 2 and "device" in line and repr(device) in line and expected in line, args
    assert not (workdir / "results").exists()  # not even an empty journal (ResultStore() would make one)


@pytest.mark.parametrize("options,field", [(["--heartbeat", "0"], "--heartbeat"),
                                           (["--heartbeat", "5", "--grace", "5"], "--grace")])
def test_heartbeats_that_would_retrain_live_runs(workdir, capsys, options, field):
    code, line = run(["run", "--study", study(workdir), *options], capsys)
    assert code == 2 and line.startswith(f"error: {field}:")
    assert not (workdir / "results").exists()


def test_a_status_grace_of_no_seconds_is_refused(workdir, capsys):
    """With --grace 0, every run in flight would be called stopped between two heartbeats."""
    code, line = run(["status", "--grace", "0"], capsys)
    assert code == 2 and line == "error: --grace: expected a whole number of seconds >= 1, got 0"


@pytest.mark.parametrize("options", [["--jobs", "0"], ["--batch-runs", "0"]])
def test_run_options_out_of_range_name_their_flag(workdir, capsys, options):
    code, line = run(["run", "--study", study(workdir), *options], capsys)
    assert code == 2 and line == f"error: {options[0]}: expected an integer >= 1, got 0"
    assert not (workdir / "results").exists()  # refused before the storage is opened


@pytest.mark.parametrize("options,expected", [
    (["--backend", "dask"], "--backend dask needs --scheduler ADDRESS"),
    (["--scheduler", "tcp://10.0.0.5:8786"], "--scheduler tcp://10.0.0.5:8786 is for --backend dask"),
    (["--backend", "ray"], "--backend: expected loky or dask"),
])
def test_a_scheduler_without_the_dask_backend_is_refused_not_ignored(workdir, capsys, options, expected):
    """`--scheduler` alone trained every batch here, quietly, rather than on the cluster."""
    code, line = run(["run", "--study", study(workdir), *options], capsys)
    assert code == 2 and line.startswith(f"error: {expected}")
    assert not (workdir / "results").exists()  # refused before the storage is opened


def test_a_tables_folder_that_cannot_be_made_is_refused_before_training(workdir, capsys):
    """Every run was trained and stored, and only then did the tables' folder fail."""
    (workdir / "a-file").write_text("not a folder")
    code, line = run(["run", "--study", study(workdir), "--tables", str(workdir / "a-file" / "tables")], capsys)
    assert code == 2 and line.startswith("error: --tables: expected a folder that can be written")
    assert "a-file is not a folder" in line
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("seeds,expected", [
    ("3-1", "low <= high"), ("a", "a list such as 0,1,2"), ("0,,1", "a list such as 0,1,2"),
    ("-1", "a list such as 0,1,2"), ("0,0", "distinct"),
    ("0-100000000", "at most 1,000 seeds"),  # counted before it is listed: this must not hang
])
def test_bad_seeds_name_the_flag_and_store_nothing(workdir, capsys, seeds, expected):
    code, line = run(["run", "--study", study(workdir), "--seeds", seeds], capsys)
    assert code == 2 and line.startswith("error: --seeds:") and expected in line
    assert not (workdir / "results").exists()


def test_dwa_default_period_longer_than_half_the_run(workdir, capsys):
    code, line = run(["train", "--balancer", "dwa", "--steps", "20"], capsys)  # an epoch is 10 steps
    assert code == 2 and line == ("error: bench train: -b period: expected a period of fewer than 10 "
                                  "steps, or a budget of more than 20 steps: the default period, one epoch, "
                                  "is 10 steps here, and the weights stay 1 for the first two periods")
    assert main(["train", "--balancer", "dwa", "--steps", "20", "-b", "period=5"]) == 0


def test_a_batch_larger_than_the_training_set(workdir, capsys):
    code, line = run(["train", "--batch-size", "5000", "--steps", "1"], capsys)
    assert line == "error: bench train: --batch-size: expected at most the problem's 1000 training examples, got 5000"


def test_a_benchmark_of_no_steps(workdir, capsys):
    code, line = run(["perf", "--steps", "0"], capsys)
    assert code == 2 and "--steps" in line and ">= 1" in line


def test_a_benchmark_of_a_problem_that_trains_one_run_at_a_time(workdir, capsys):
    """`bench perf --study multimnist` ended in the engine's ValueError traceback."""
    (workdir / "alone.py").write_text("from bench.problems import build_problem\n\n"
                                      "class Alone(type(build_problem('toy'))):\n    supports_stacking = False\n\n"
                                      "def alone(**options):\n    return Alone(build_problem('toy', options).params)\n")
    path = study(workdir, TINY.replace('name = "toy"', 'name = "alone:alone"'))
    code, line = run(["perf", "--study", path, "--steps", "2", "--no-sequential"], capsys)
    assert code == 2 and line.startswith("error: --study: expected a study whose problem stacks runs")
    assert "alone:alone trains one run at a time" in line


def test_messages_that_name_a_toml_table_keep_it(workdir, capsys):
    # The error line is printed through rich: "[budget]" must not be taken for markup and dropped.
    path = study(workdir, TINY.replace("[budget]", "[budget]\nwarmup = 3"))
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "budget.warmup: expected an option of [budget] (its options:" in line
    code, line = run(["run", "--study", study(workdir, TINY.split("[arms.grid]")[0])], capsys)
    assert code == 2 and "arms: expected at least one [arms.NAME] table" in line


@pytest.mark.parametrize("storage,expected", [
    ("a_folder", "is not a file"),
    ("/dev/null", "is not a file"),  # Optuna's journal would fail on its first append, with a traceback
    ("sqlite://", "in-memory database"),
    ("sqlite:///:memory:", "in-memory database"),
    # SQLAlchemy said "Can't load plugin: sqlalchemy.dialects:journal".
    ("journal:///results/bench.journal", "journal:// is no database SQLAlchemy knows; a journal file is given "
                                         "by its path (--storage results/bench.journal)"),
    ("mysql://bench@127.0.0.1:1/db", "(the module MySQLdb); for MySQL: pip install pymysql"),
    ("postgresql+pg8000://bench@127.0.0.1:1/db", "(the module pg8000); for PostgreSQL: pip install "
                                                 "'gradnorm-bench[postgres]'"),
])
def test_storages_that_cannot_keep_results(workdir, capsys, storage, expected):
    driver = expected.split("(the module ")[-1].split(")")[0] if "(the module" in expected else None
    if driver and importlib.util.find_spec(driver) is not None:
        pytest.skip(f"the driver {driver} is installed here")
    (workdir / "a_folder").mkdir()
    for verb in ("run", "status"):
        code, line = run([verb, "--study", study(workdir), "--storage", storage], capsys)
        assert code == 2 and storage in line and expected in line, verb


def test_outputs_that_cannot_be_written(workdir, capsys):
    (workdir / "a_file").write_text("not a folder")
    path = study(workdir)
    assert main(["run", "--study", path]) == 0
    capsys.readouterr()
    # Each names the file in the way; the CSV's used to say only "File exists".
    code, line = run(["compare", "--study", "tiny", "--reports", "a_file/reports"], capsys)
    assert code == 2 and line == ("error: --reports: expected a folder that can be written (a_file is not a "
                                  "folder), or --no-report, got 'a_file/reports'")
    # Checked before the benchmark's minutes of measuring, whose figures would otherwise be lost.
    code, line = run(["perf", "--csv", "a_file/perf.csv"], capsys)
    assert code == 2 and line == ("error: --csv: expected a CSV file that can be written (a_file is not a "
                                  "folder), got 'a_file/perf.csv'")
    code, line = run(["run", "--study", path, "--tables", "a_file/tables"], capsys)
    assert code == 2 and line == ("error: --tables: expected a folder that can be written (a_file is not a "
                                  "folder), got 'a_file/tables'")
    # A report that still cannot be written (a folder of the study's name is a file) says so too.
    (workdir / "reports").mkdir()
    (workdir / "reports" / "tiny").write_text("not a folder")
    code, line = run(["compare", "--study", "tiny"], capsys)
    assert code == 2 and "cannot write the report of tiny to reports/tiny" in line and "--no-report" in line


def test_comparing_a_study_before_any_run_has_finished(workdir, capsys):
    from bench.study import StudyRunner, StudySpec

    store = ResultStore()
    StudyRunner(StudySpec.load(study(workdir)), store).prepare()  # queued, none trained
    code, line = run(["compare", "--study", "tiny"], capsys)
    assert code == 2 and line == ("error: study 'tiny' has no finished runs yet; tiny is not finished (0 of 16 "
                                  "runs are stored): `bench run --study tiny.toml` trains the rest")
    # A worker trains it now: where to watch it, not (as before) how to start a run already going.
    assert store.claim(store.arm_study("tiny", "equal").get_trials()[0], "elsewhere:41")
    code, line = run(["compare", "--study", "tiny"], capsys)
    assert code == 2 and line == ("error: study 'tiny' has no finished runs yet; tiny is being trained (0 of 16 "
                                  "runs are stored, 1 running): `bench status --study tiny` shows how far it "
                                  "has come")


@pytest.mark.parametrize("returned,expected", [
    ("[dataclasses.replace(tasks[0], normaliser=0.0), *tasks[1:]]", "a positive, finite normaliser for task task0"),
    ("[dataclasses.replace(tasks[0], normaliser='big'), *tasks[1:]]", "a positive, finite normaliser for task task0"),
    ("[dataclasses.replace(tasks[0], name='task1'), *tasks[1:]]", "tasks with distinct, non-empty names"),
    ("[dataclasses.replace(tasks[0], name=''), *tasks[1:]]", "tasks with distinct, non-empty names"),
    ("[dataclasses.replace(tasks[0], kind='ranking'), *tasks[1:]]",
     "kind 'regression', 'classification' or 'dense' for task task0, got 'ranking'"),
    ("{t.name: t for t in tasks}", "a list of TaskSpec, got 'dict'"),
])
def test_a_problem_of_ones_own_with_bad_tasks(workdir, capsys, monkeypatch, returned, expected):
    module = f"bad_tasks_{zlib.crc32(returned.encode())}"  # a module of its own: Python caches imports
    (workdir / f"{module}.py").write_text(
        "import dataclasses\nfrom bench.problems import build_problem\n\n"
        "class Bad(type(build_problem('toy'))):\n"
        "    def _tasks(self):\n"
        "        tasks = super()._tasks()\n"
        f"        return {returned}\n\n"
        "def bad():\n    return Bad(build_problem('toy').params)\n")
    monkeypatch.syspath_prepend(str(workdir))
    code, line = run(["train", "--problem", f"{module}:bad", "--steps", "1"], capsys)
    assert code == 2 and f"Bad._tasks to return {expected}" in line


@pytest.mark.parametrize("torn", [b'{"op_code": 5, "worker_id": "cut sho',
                                  # cut just before its newline: whole JSON, but no reader takes a line without one
                                  b'{"op_code": 5, "worker_id": "cut short"}'], ids=["mid-record", "before-newline"])
def test_a_write_cut_short_is_set_aside_before_an_append_buries_it(workdir, capsys, torn):
    """Optuna's reader skips a cut-short last line, and its next append glued the two into a line
    that stopped every later read with a bare JSONDecodeError (optuna/optuna#5138)."""
    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    journal = workdir / "results" / "bench.journal"
    intact = journal.read_bytes()
    journal.write_bytes(intact + torn)
    assert main(["status", "--study", "tiny"]) == 0  # reading skips the last line, as Optuna does
    assert journal.read_bytes() == intact + torn
    capsys.readouterr()

    assert main(["run", "--study", path, "--seeds", "0,1"]) == 0
    err = capsys.readouterr().err
    assert "note: the last write to results/bench.journal was cut short" in err and f"its {len(torn)} bytes" in err
    (aside,) = journal.parent.glob("bench.journal.cut-short-*")
    assert aside.read_bytes() == torn and aside.name in err
    assert journal.read_bytes().startswith(intact) and b"cut sho" not in journal.read_bytes()
    assert {r["record"]["seed"] for r in ResultStore(create=False).records("tiny")} == {0, 1}


def test_a_last_line_that_is_not_a_record_is_refused_and_left_as_it_is(workdir, capsys):
    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    capsys.readouterr()
    journal = workdir / "results" / "bench.journal"
    intact = journal.read_bytes()
    n_lines = intact.count(b"\n")
    journal.write_bytes(intact + b"edited by hand\n")
    code, line = run(["run", "--study", path, "--seeds", "0,1"], capsys)
    assert code == 2 and f"its last line, {n_lines + 1}, is not a journal record" in line
    repair = f"head -n {n_lines} results/bench.journal > results/bench-repaired.journal"
    assert repair in line and "left as it is" in line
    assert journal.read_bytes() == intact + b"edited by hand\n"

    # The repair the message gives works: the copy takes new runs.
    (workdir / "results" / "bench-repaired.journal").write_bytes(intact)
    assert main(["run", "--study", path, "--seeds", "0,1", "--storage", "results/bench-repaired.journal"]) == 0
    assert len(ResultStore("results/bench-repaired.journal").records("tiny")) > len(ResultStore(create=False).records("tiny"))


def test_a_full_disk_is_one_line_and_the_same_command_goes_on(workdir, capsys, monkeypatch):
    from optuna.storages.journal import JournalFileBackend

    path = study(workdir)
    append = JournalFileBackend.append_logs
    writes = []

    def fills_the_disk(self, logs):
        writes.append(len(logs))
        if len(writes) > 60:
            raise OSError(28, "No space left on device")
        append(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", fills_the_disk)
    # The runs it held could not be given back: the next worker waits for their grace period,
    # which the worker recorded with them (the default's 30 s made this test slow).
    command = ["run", "--study", path, "--grace", "3", "--heartbeat", "1"]
    code, line = run(command, capsys)
    assert code == 2 and "cannot write to the results storage results/bench.journal: No space left on device" in line
    assert "run the same command to go on" in line
    monkeypatch.setattr(JournalFileBackend, "append_logs", append)
    assert main(command) == 0
    assert "0 failed" in capsys.readouterr().out


def test_a_journal_damaged_mid_file_or_not_a_journal(workdir, capsys):
    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    capsys.readouterr()
    lines = (workdir / "results" / "bench.journal").read_bytes().splitlines(keepends=True)
    # Two writes run together: a cut-short line with the next one appended to it.
    (workdir / "glued.journal").write_bytes(b"".join([*lines[:3], lines[3][:20], *lines[4:]]))
    (workdir / "notes.journal").write_bytes(b"my notes\n" + b"".join(lines))
    for verb in ("status", "compare", "run"):
        code, line = run([verb, "--study", path, "--storage", "glued.journal"], capsys)
        assert code == 2 and f"glued.journal is damaged: line 4 of {len(lines) - 1} is not a journal record" in line
        assert "Lines 1 to 3 are intact: `head -n 3 glued.journal > glued-repaired.journal`" in line
        code, line = run([verb, "--study", path, "--storage", "notes.journal"], capsys)
        assert code == 2 and "notes.journal is not an Optuna journal file" in line


@pytest.mark.parametrize("content", [b"my notes\n", b"a,b\n1,2\n3,4", b"\x89PNG\r\n\x1a\n\x00\x00"],
                         ids=["one line", "csv without a last newline", "binary"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_is(workdir, capsys, content):
    """Optuna reads a lone line as a write cut short: a one-line file read as an empty journal, and
    `bench run` set the last line of a file without a final newline aside, changing the file."""
    path = study(workdir)
    mistaken = workdir / "data.csv"
    mistaken.write_bytes(content)
    for verb in ("status", "compare", "run"):
        code, line = run([verb, "--study", path, "--storage", "data.csv"], capsys)
        assert code == 2 and "data.csv is not an Optuna journal file" in line
    assert mistaken.read_bytes() == content
    assert list(workdir.glob("data.csv*")) == [mistaken]


def test_an_sqlite_database_in_a_folder_yet_to_be_made(workdir, capsys):
    """`sqlite:///results/bench.db`, as the README has it, failed on a fresh clone: SQLite creates
    its file, not the folder."""
    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0", "--storage", "sqlite:///results/bench.db"]) == 0
    assert (workdir / "results" / "bench.db").is_file()
    code, line = run(["status", "--study", "tiny", "--storage", "sqlite:///elsewhere/bench.db"], capsys)
    assert code == 2 and "no results at sqlite:///elsewhere/bench.db" in line
    assert not (workdir / "elsewhere").exists()  # reading makes nothing
    # A URL's query (SQLAlchemy's options) is no part of the file's name: the database is there.
    assert main(["status", "--study", "tiny", "--storage", "sqlite:///results/bench.db?timeout=30"]) == 0


def test_an_sqlite_database_and_a_journal_each_given_as_the_other(workdir, capsys):
    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0", "--storage", "sqlite:///bench.db"]) == 0
    capsys.readouterr()
    before = (workdir / "bench.db").read_bytes()
    for verb in ("run", "status"):
        code, line = run([verb, "--study", path, "--storage", "bench.db"], capsys)
        assert code == 2 and "bench.db is an SQLite database, not a journal file" in line
        assert "--storage sqlite:///bench.db" in line
    assert (workdir / "bench.db").read_bytes() == before
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    capsys.readouterr()
    code, line = run(["status", "--study", path, "--storage", "sqlite:///results/bench.journal"], capsys)
    assert code == 2 and "results/bench.journal is an Optuna journal file: pass it as --storage results/bench.journal" in line


def test_a_database_that_fails_mid_run_is_one_line(workdir, capsys, monkeypatch):
    import sqlite3

    import optuna
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import OperationalError

    def disk_full(*args, **kwargs):
        try:
            raise OperationalError("INSERT INTO trial_user_attributes ...", {},
                                   sqlite3.OperationalError("database or disk is full"))
        except OperationalError as err:  # as Optuna raises it: its own guess, the reason in the cause
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. "
                                                         "This typically happens due to invalid data") from err

    monkeypatch.setattr(RDBStorage, "set_trial_user_attr", disk_full)
    code, line = run(["run", "--study", study(workdir), "--storage", "sqlite:///bench.db"], capsys)
    assert code == 2 and "the results storage failed: database or disk is full" in line
    assert "invalid data" not in line and "run the same command to go on" in line


def test_a_read_only_journal_is_read_but_not_written(workdir, capsys, monkeypatch):
    """A colleague's results, shared read-only: comparing them was refused as "not writable"."""
    import os

    path = study(workdir)
    assert main(["run", "--study", path, "--seeds", "0"]) == 0
    capsys.readouterr()
    os_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: mode != os.W_OK and os_access(p, mode, **kw))
    assert main(["status", "--study", "tiny"]) == 0
    assert main(["compare", "--study", "tiny", "--no-report"]) == 0
    code, line = run(["run", "--study", path, "--seeds", "0,1"], capsys)
    assert code == 2 and "the results storage results/bench.journal is not writable" in line


def test_missing_data_stores_nothing_so_the_mended_study_file_runs_under_its_name(workdir, capsys):
    from tests.test_real_problems import make_nyuv2

    text = """name = "ny"
seeds = [0]
[problem]
name = "nyuv2"
root = "{root}"
val_fraction = 0.34
channels = [4, 8, 8]
[budget]
steps = 2
batch_size = 2
eval_every = 2
[arms.equal]
"""
    path = study(workdir, text.format(root=workdir / "nowhere"), "ny.toml")
    code, line = run(["run", "--study", path, "--storage", "r.journal"], capsys)
    assert code == 2 and line.startswith("error: ny.toml: problem.root: expected the preprocessed NYUv2 data")
    assert not (workdir / "r.journal").exists()  # checked before the storage is opened: not even an empty file
    # The data where the message says; the study file mended: no --new-version needed.
    make_nyuv2(workdir / "nyuv2")
    study(workdir, text.format(root=workdir / "nyuv2"), "ny.toml")
    assert main(["run", "--study", path, "--storage", "r.journal"]) == 0
    assert ResultStore("r.journal", create=False).study_names() == ["ny"]


def test_a_worker_that_loses_the_race_to_create_a_new_database_opens_it_again(workdir, monkeypatch):
    import sqlite3

    import bench.store.storage as storage
    from sqlalchemy.exc import IntegrityError, OperationalError

    calls = []

    def rdb(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # another worker inserted the schema's version first
            raise IntegrityError("INSERT INTO alembic_version ...", {},
                                 sqlite3.IntegrityError("UNIQUE constraint failed: alembic_version.version_num"))
        return "opened"

    monkeypatch.setattr(storage, "HeartbeatRDBStorage", rdb)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    assert storage.open_storage("sqlite:///new.db") == "opened" and len(calls) == 2

    def unreachable(url, **kwargs):
        calls.append(url)
        raise OperationalError("connect", {}, sqlite3.OperationalError("unable to open database file"))

    calls.clear()
    monkeypatch.setattr(storage, "HeartbeatRDBStorage", unreachable)
    with pytest.raises(StorageError, match="unable to open database file"):
        storage.open_storage("sqlite:///nowhere/new.db")
    assert len(calls) == 1  # any other failure is told at once


def test_a_table_write_that_fails_keeps_the_previous_table_whole(workdir, capsys, monkeypatch):
    import pandas as pd

    path = study(workdir)
    assert main(["run", "--study", path]) == 0
    tables = workdir / "results" / "tiny"
    before = {name: (tables / name).read_bytes()
              for name in ("runs.csv", "runs.parquet", "metrics.csv", "metrics.parquet", "curves.parquet")}

    def disk_full(self, target, *args, **kwargs):
        Path(target).write_bytes(b"PAR1 cut short")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    capsys.readouterr()
    code, line = run(["run", "--study", path], capsys)
    assert code == 2 and "tables could not be written" in line and "No space left on device" in line
    assert {name: (tables / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tables.iterdir()) == sorted(before)


def test_tables_and_reports_say_when_they_replace_another_storages(workdir, capsys):
    """`bench run` writes results/<study>/ and `bench compare` reports/<study>/ whatever --storage
    says: a study run in a second storage under the same name replaced the first storage's
    tables and report without a word."""
    path = study(workdir)
    journal = workdir / "results" / "bench.journal"
    assert main(["run", "--study", path]) == 0  # the default journal
    assert main(["compare", "--study", "tiny"]) == 0
    assert "note:" not in capsys.readouterr().err
    parquet, report = workdir / "results" / "tiny" / "runs.parquet", workdir / "reports" / "tiny"
    assert export._stamp(parquet)[0][export.STORAGE_ATTR] == str(journal)
    assert report_storage(report) == str(journal)

    assert main(["run", "--study", path, "--storage", "sqlite:///other.db"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"note: results/tiny held the tables of a study 'tiny' in another storage ({journal}); "
            "they now hold this storage's") in err and "pass --tables DIR" in err
    assert export._stamp(parquet)[0][export.STORAGE_ATTR] == str(workdir / "other.db")
    assert main(["compare", "--study", "tiny", "--storage", "sqlite:///other.db"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"note: reports/tiny held the report of a study 'tiny' in another storage ({journal}); "
            "it now holds this storage's") in err and "pass --reports DIR" in err
    assert report_storage(report) == str(workdir / "other.db")

    # Folders of their own keep them apart; a finished study's tables are written without training.
    assert main(["run", "--study", path, "--tables", "mine"]) == 0
    out, err = capsys.readouterr()
    assert "0 trained now" in out and "note:" not in err and (workdir / "mine" / "tiny" / "runs.csv").is_file()
    # The same storage written another way is the same storage.
    assert main(["run", "--study", path, "--storage", "sqlite:///./other.db"]) == 0
    assert main(["compare", "--study", "tiny", "--storage", f"sqlite:///{workdir}/other.db"]) == 0
    assert "note:" not in capsys.readouterr().err
    # A runs.parquet cut short (a full disk, a copy interrupted) is a view: written again whole.
    parquet.write_bytes(parquet.read_bytes()[:100])
    assert main(["run", "--study", path, "--storage", "sqlite:///other.db"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert export._stamp(parquet)[0][export.STORAGE_ATTR] == str(workdir / "other.db")
    assert export._stamp(parquet)[1] == 16  # every run's row


def test_a_report_drops_tables_it_no_longer_has(workdir):
    assert main(["run", "--study", study(workdir)]) == 0
    report = workdir / "reports" / "tiny"
    report.mkdir(parents=True)
    for suffix in (".csv", ".md"):
        (report / f"failed_runs{suffix}").write_text("left from an earlier report of a study with failed runs\n")
    assert main(["compare", "--study", "tiny"]) == 0
    assert (report / "index.html").is_file() and not list(report.glob("failed_runs.*"))


def test_a_fuller_table_of_the_same_study_is_kept(workdir, monkeypatch):
    """A worker that read the storage before another's last runs landed wrote its table last,
    leaving a table without those runs."""
    assert main(["run", "--study", study(workdir)]) == 0
    store = ResultStore()
    full = export.runs_table(store, "tiny")
    parquet = workdir / "results" / "tiny" / "runs.parquet"
    real_runs_table = export.runs_table
    older_view = lambda store, name: real_runs_table(store, name).iloc[:-2]  # noqa: E731
    monkeypatch.setattr(export, "runs_table", older_view)
    assert export.write_runs_table(store, "tiny")[1] is None  # the late worker's older view
    assert len(pd_read(parquet)) == len(full)
    # As many runs, one of them retried since (failed, now finished): the newer view is written.
    retried = full.assign(wall_time_s=full.wall_time_s.where(full.index != 0, 123.0))
    monkeypatch.setattr(export, "runs_table", lambda store, name: retried)
    export.write_runs_table(store, "tiny")
    assert pd_read(parquet).wall_time_s.iloc[0] == 123.0
    monkeypatch.setattr(export, "runs_table", older_view)
    # A study deleted and run again in the same storage is another study: its table replaces the old.
    manifest = store.require_manifest("tiny")
    monkeypatch.setattr(ResultStore, "require_manifest", lambda self, name: {**manifest, "created": 1.0})
    export.write_runs_table(store, "tiny")
    assert len(pd_read(parquet)) == len(full) - 2
    assert len(pd_read(parquet.with_suffix(".csv"))) == len(full) - 2


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("source, bug", [
    ("import math\nscale = math.tau * undefined_name\n", "NameError: name 'undefined_name' is not defined"),
    ("from bench.problems import no_such_thing\n", "ImportError: cannot import name 'no_such_thing'"),
    ("def broken(**options):\n    raise RuntimeError('no data here')\n", "RuntimeError: no data here"),
])
def test_an_error_in_ones_problem_module_or_factory_names_its_line_and_says_nothing_was_stored(
        workdir, capsys, source, bug):
    """Raised while the study file's problem was imported or built: it read "the runs in hand
    were queued again" (there were none), and an ImportError inside the module was told as the
    module itself not being importable, without its line."""
    module = f"faulty_{zlib.crc32(source.encode())}"  # one module per case: an imported one stays in sys.modules
    (workdir / f"{module}.py").write_text(source if "def broken" in source else source + "\ndef broken(**options):\n    pass\n")
    args = ["run", "--study", study(workdir, TINY.replace('name = "toy"', f'name = "{module}:broken"'))]
    code, line = run(args, capsys)
    assert code == 1 and line.startswith(f"error: {bug}") and f"{module}.py, line " in line, line
    assert "(nothing was stored; " in line and "queued again" not in line
    assert not (workdir / "results").exists()


# A problem of one's own that passes its options on to the toy problem.
TOY_BY_ANOTHER_NAME = ("from bench.problems import build_problem\n\ndef make(**options):\n"
                       "    return build_problem('toy', options)\n")


def test_a_bad_option_that_ones_own_problem_passes_on_to_one_of_ours_names_the_study_file(workdir, capsys):
    """`def make(**options): return build_problem("toy", options)`, given an option the toy problem
    does not have: the error named the field but not the file it was written in."""
    (workdir / "passing_on.py").write_text(TOY_BY_ANOTHER_NAME)
    text = TINY.replace('name = "toy"', 'name = "passing_on:make"').replace("[problem]", '[problem]\ncolour = "red"')
    code, line = run(["run", "--study", study(workdir, text, "passing.toml")], capsys)
    assert code == 2 and line.startswith("error: passing.toml: problem.colour: expected an option of problem 'toy' ")
    code, line = run(["train", "--problem", "passing_on:make", "-p", "colour=red"], capsys)
    assert code == 2 and line.startswith("error: bench train: -p colour: expected an option of problem 'toy' ")


def test_a_misspelt_study_name_is_answered_with_the_name_it_is_close_to(workdir, capsys):
    code, line = run(["run", "--study", "gridserch"], capsys)
    assert code == 2 and line.startswith("error: --study: expected a study file") and line.endswith(
        "got 'gridserch'; did you mean 'gridsearch'?")
    code, line = run(["train", "--balancer", "GradNorm"], capsys)  # case apart, the same name
    assert code == 2 and line.endswith("got 'GradNorm'; did you mean 'gradnorm'?")
    assert main(["run", "--study", study(workdir)]) == 0
    capsys.readouterr()
    for verb in ("compare", "status"):
        code, line = run([verb, "--study", "tinny"], capsys)
        assert code == 2 and line.startswith("error: no study named 'tinny' in ") and line.endswith(
            "(studies there: tiny); did you mean 'tiny'? Or run it first with `bench run --study ...`")
    code, line = run(["compare", "--study", "other"], capsys)  # nothing close: no guess
    assert code == 2 and line.endswith("(studies there: tiny); run it first with `bench run --study ...`")


def test_a_study_file_that_no_longer_loads_says_why_not_that_no_study_has_its_name(workdir, capsys, monkeypatch):
    """Its problem's module was gone: `bench compare --study up.toml` said "no study named
    'up.toml'", as if the file were not there."""
    (workdir / "wave_problem.py").write_text(TOY_BY_ANOTHER_NAME)
    text = TINY.replace('name = "toy"', 'name = "wave_problem:make"').replace('name = "tiny"', 'name = "wave"')
    path = study(workdir, text, "wave.toml")
    assert main(["run", "--study", path]) == 0
    capsys.readouterr()
    (workdir / "wave_problem.py").unlink()
    monkeypatch.delitem(sys.modules, "wave_problem")
    for verb in ("compare", "status", "delete"):
        code, line = run([verb, "--study", path], capsys)
        assert code == 2 and line.startswith("error: wave.toml: problem: expected an importable module"), line
        assert line.endswith("; a stored study can be named instead of its file (in results/bench.journal: wave)")
    assert main(["status", "--study", "wave"]) == 0  # as it says
    # The module is back but raises as it is imported: the error of one's own code, and the hint.
    (workdir / "wave_problem.py").write_text("1 / 0\n")
    for verb in ("compare", "status", "delete"):
        monkeypatch.delitem(sys.modules, "wave_problem", raising=False)
        code, line = run([verb, "--study", path], capsys)
        assert code == 1 and line.startswith("error: ZeroDivisionError: division by zero, raised in your code at "), line
        assert ("wave_problem.py, line 1, in <module>; a stored study can be named instead of its file (in "
                "results/bench.journal: wave)") in line
    # A misspelt field: the guess at what was meant, then the stored study.
    (workdir / "wave_problem.py").write_text(TOY_BY_ANOTHER_NAME)
    monkeypatch.delitem(sys.modules, "wave_problem", raising=False)
    Path(path).write_text(text.replace("steps =", "stpes ="))
    code, line = run(["compare", "--study", path], capsys)
    assert code == 2 and line.endswith("did you mean 'steps'?; a stored study can be named instead of its file "
                                       "(in results/bench.journal: wave)"), line


def test_an_interrupted_study_whose_grid_alone_finished_and_failed_says_it_is_not_finished(workdir, capsys, monkeypatch):
    """`bench compare` said only that there was nothing to compare, as of a finished study (found
    by fuzzing interrupted studies); the study's other arms had not trained yet."""
    import bench.study.manager as manager

    text = TINY.replace("lr = 0.01", "lr = 1000.0").replace("seeds = [0, 1]", "seeds = [0]")
    text = text.split("[arms.gradnorm]")[0] + "[arms.equal]\n"  # the grid (3 points), then equal
    path = study(workdir, text)
    trained = manager.train_runs

    def ctrl_c_after_the_grid(configs, *args, **kwargs):
        if configs[0].balancer != "static":
            raise KeyboardInterrupt
        return trained(configs, *args, **kwargs)

    monkeypatch.setattr(manager, "train_runs", ctrl_c_after_the_grid)
    assert main(["run", "--study", path, "--batch-runs", "3"]) == 130
    capsys.readouterr()
    code, line = run(["compare", "--study", "tiny"], capsys)
    assert code == 2 and line.startswith("error: the grid arm 'grid' has no point with every seed finished (3 of 3 runs failed")
    assert line.endswith("so there is nothing to compare; tiny is not finished (3 of 4 runs are stored): "
                         "`bench run --study tiny.toml` trains the rest")
