"""The README's examples run as written: the user-defined problem and its study, and every
`bench` command and option it names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    """The fenced block that follows `<!-- example: NAME -->` in the README."""
    text = README.read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"no example {name} in the README"
    return match.group(1)


@pytest.mark.slow
def test_user_defined_problem_from_the_readme(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    (tmp_path / "my_problems.py").write_text(example("my_problems.py"))
    (tmp_path / "waves.toml").write_text(example("waves.toml"))
    for args in (["run", "--study", "waves.toml"], ["compare", "--study", "waves", "--format", "csv"]):
        result = subprocess.run([sys.executable, "-m", "bench", *args], cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert "gradnorm-static" in result.stdout and "grid" in result.stdout
    # The README's seaborn example, on this study's curves.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(example("curves").replace("results/gridsearch/", "results/waves/"), namespace)
    test = namespace["test"]
    assert set(test.arm) == {"gradnorm", "gradnorm-static", "equal"} and sorted(set(test.step)) == [0, 50, 100, 150, 200]
    drawn = [line for line in plt.gcf().axes[0].lines if len(line.get_xdata())]  # less the legend's handles
    assert len(drawn) == 3 and all(len(line.get_xdata()) == 5 for line in drawn)  # a mean line per arm
    plt.close("all")
    train = subprocess.run([sys.executable, "-m", "bench", "train", "--problem", "my_problems:two_waves",
                            "-p", "scale=5", "--balancer", "gradnorm", "--steps", "20", "--batch-size", "32",
                            "--eval-every", "10", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    assert '"problem": "my_problems:two_waves"' in train.stdout


def test_user_problem_errors_are_clear(tmp_path, monkeypatch):
    from bench.errors import ConfigError
    from bench.problems import build_problem

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_problems.py").write_text(example("my_problems.py"))
    with pytest.raises(ConfigError, match="importable module"):
        build_problem("no_such_module:f")
    with pytest.raises(ConfigError, match="a function 'nope'"):
        build_problem("my_problems:nope")
    with pytest.raises(ConfigError, match="problem.colour"):
        build_problem("my_problems:two_waves", {"colour": "red"})
    problem = build_problem("my_problems:two_waves", {"scale": 3.0})
    assert problem.task_names == ["sine", "cosine"] and problem.name == "my_problems:two_waves"


def test_a_network_of_torch_modules_from_the_readme_trains_each_run_as_alone(tmp_path, monkeypatch):
    """The README's StackedModule example: two runs of GradNorm stacked equal each run alone,
    to float32's tolerance for stacked runs (see Speed), and differ from each other."""
    from bench.training import Budget, RunConfig, train, train_runs
    from tests.test_engine import assert_records_close

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("my_problems", "torch_modules"):
        (tmp_path / f"{name}.py").write_text(example(f"{name}.py"))
        monkeypatch.delitem(sys.modules, name, raising=False)
    budget = Budget(steps=30, batch_size=32, lr=1e-3, eval_every=10)
    configs = [RunConfig(problem="torch_modules:two_waves", balancer="gradnorm", seed=s, problem_params={"scale": 5.0},
                         balancer_params={"alpha": 1.5}, budget=budget, device="cpu").validated() for s in (0, 1)]
    stacked = train_runs(configs)
    assert [r.batch_runs for r in stacked] == [2, 2] and stacked[0].test_loss != stacked[1].test_loss
    for config, record in zip(configs, stacked):
        assert_records_close(record, train(config), rtol=1e-4)


def test_a_problem_beside_its_study_file_imports_from_any_folder(tmp_path, monkeypatch):
    """The README's problem module sat next to its study, but a study run from another folder
    could not import it."""
    from bench.study import StudySpec

    project = tmp_path / "project"
    project.mkdir()
    (project / "waves_beside_the_study.py").write_text(example("my_problems.py"))
    (project / "waves.toml").write_text(
        example("waves.toml").replace("my_problems:two_waves", "waves_beside_the_study:two_waves"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load() adds the study's folder
    monkeypatch.delitem(sys.modules, "waves_beside_the_study", raising=False)
    spec = StudySpec.load("project/waves.toml")
    assert spec.problem == "waves_beside_the_study:two_waves" and spec.n_tasks == 2
    assert sys.path[-1] == str(project)


def test_every_bench_command_and_option_the_readme_names_exists():
    """The README's commands are what users paste: a verb or option renamed in the code and not
    in the README would fail them."""
    import shlex

    import typer

    from bench.cli.app import app

    group = typer.main.get_command(app)
    verbs = group.commands
    options = {verb: {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
               for verb, command in verbs.items()}
    options[""] = {o for p in group.params for o in p.opts} | {"--help"}  # before a verb: --version
    text = README.read_text()
    written, fence = 0, None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence in ("bash", "sh", ""):
            for command in line.split("#")[0].split("&&"):
                tokens = shlex.split(command)
                if tokens[:1] != ["bench"] or len(tokens) < 2:
                    continue
                written += 1
                if tokens[1].startswith("--"):
                    assert tokens[1] in options[""] and len(tokens) == 2, command
                    continue
                assert tokens[1] in verbs, command
                unknown = {t.split("=")[0] for t in tokens[2:] if t.startswith("--")} - options[tokens[1]]
                assert not unknown, f"{command}: {unknown}"
    assert written >= 10
    # Every option named anywhere in it, in prose too, is one of some verb's (or pip's).
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) - {"--index-url"}
    assert named and named <= set().union(*options.values()), named - set().union(*options.values())


def test_the_readmes_table_of_gradnorm_options_matches_the_code():
    """Its option names, the paper's defaults and the alternatives each option accepts."""
    import dataclasses
    import typing

    from bench.balancers.gradnorm import GradNormParams

    fields = {f.name: f for f in dataclasses.fields(GradNormParams)}
    hints = typing.get_type_hints(GradNormParams)
    text = README.read_text()
    table = text[text.index("| option | paper (default) | alternatives |"):]
    lines = table.splitlines()[2:]  # below the header and its rule, to the table's end
    rows = [line.split("|")[1:4] for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]]
    assert len(rows) >= 6
    for names_cell, defaults_cell, alternatives_cell in rows:
        names = re.findall(r"`(\w+)`", names_cell)
        defaults = [d.strip().strip("`") for d in defaults_cell.split(",")]
        assert names and set(names) <= set(fields), names
        for name, default in zip(names, defaults, strict=True):
            assert str(fields[name].default) == default or (default == "none" and fields[name].default is None), name
        hint = hints[names[0]]
        if typing.get_origin(hint) is typing.Literal:  # a choice: the alternatives are the others
            choices = set(typing.get_args(hint))
            written = {a for a in re.findall(r"`(\w+)`", alternatives_cell) if a not in fields}
            assert written and written <= choices - {fields[names[0]].default}, (names[0], written)
