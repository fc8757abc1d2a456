"""Study files and the weight simplex: grids, the sampler's parametrisation, and clear errors."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.errors import ConfigError
from bench.study.simplex import cube_to_simplex, grid_size, simplex_grid, simplex_to_cube
from bench.study.spec import StudySpec

STUDIES = Path(__file__).resolve().parents[1] / "studies"

TINY = """
name = "tiny"
seeds = [0, 1]

[problem]
name = "toy"
tasks = 2
sigmas = [1.0, 10.0]
input_dim = 8
output_dim = 3
hidden = 6
depth = 2
n_train = 64
n_val = 32
n_test = 32

[budget]
steps = 10
batch_size = 16
lr = 0.01
eval_every = 5

[arms.grid]
method = "exhaustive"
resolution = 0.5

[arms.gradnorm]
alpha = [0.5, 1.0]

[arms.gradnorm-static]

[arms.equal]
"""


@settings(max_examples=40, deadline=None)
@given(tasks=st.integers(1, 5), n=st.integers(1, 12))
def test_exhaustive_grid_matches_the_closed_form_and_sums_to_T(tasks, n):
    points = simplex_grid(tasks, 1 / n)
    assert len(points) == math.comb(n + tasks - 1, tasks - 1) == grid_size(tasks, 1 / n)
    assert len(set(points)) == len(points)
    for p in points:
        assert len(p) == tasks and min(p) >= 0
        assert math.isclose(sum(p), tasks, rel_tol=1e-12)


def test_documented_grid_sizes():
    assert grid_size(2, 0.05) == 21
    assert grid_size(3, 0.1) == 66
    assert grid_size(4, 0.05) == 1771


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.001, 0.999), min_size=1, max_size=5))
def test_cube_to_simplex_lands_on_the_simplex_and_inverts(u):
    tasks = len(u) + 1
    w = cube_to_simplex(u, tasks)
    assert len(w) == tasks and min(w) >= 0
    assert math.isclose(sum(w), tasks, rel_tol=1e-12)
    assert simplex_to_cube(w) == pytest.approx(u, abs=1e-9)


def test_uniform_cube_points_are_uniform_on_the_simplex():
    # Under Dirichlet(1, 1, 1), each coordinate p_i ~ Beta(1, 2): mean 1/3, variance 1/18.
    rng = random.Random(0)
    samples = [cube_to_simplex([rng.random(), rng.random()], 3) for _ in range(20000)]
    for i in range(3):
        p = [s[i] / 3 for s in samples]
        mean = sum(p) / len(p)
        var = sum((x - mean) ** 2 for x in p) / len(p)
        assert mean == pytest.approx(1 / 3, abs=0.01)
        assert var == pytest.approx(1 / 18, abs=0.003)


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_studies_load(path):
    spec = StudySpec.load(str(path))
    assert spec.runs()
    assert len({(r.arm, r.key) for r in spec.runs()}) == len(spec.runs())


def test_gridsearch_study_is_the_66_point_grid_with_gradnorm_static_and_equal():
    spec = StudySpec.load("gridsearch")
    kinds = {arm.kind for arm in spec.arms.values()}
    assert {"grid", "gradnorm", "gradnorm-static", "equal"} <= kinds
    assert len(spec.arms["grid"].points) == 66


def test_the_alpha_sweep_is_the_default_study_with_gradnorm_at_six_alphas():
    sweep, default = StudySpec.load("alpha-sweep"), StudySpec.load("gridsearch")
    for same in ("problem", "problem_params", "budget", "seeds", "selection", "dtype"):
        assert getattr(sweep, same) == getattr(default, same), same
    assert sweep.arms["grid"].points == default.arms["grid"].points
    assert sweep.arms.keys() == default.arms.keys()
    alphas = sorted({r.balancer_params["alpha"] for r in sweep.runs() if r.arm == "gradnorm"})
    assert alphas == [0.0, 0.12, 0.5, 1.0, 1.5, 3.0]

    def other_options(spec):
        return {tuple(sorted((k, v) for k, v in r.balancer_params.items() if k != "alpha"))
                for r in spec.runs() if r.arm == "gradnorm"}
    assert other_options(sweep) == other_options(default)  # weight_lr = 0.002 and the rest


def test_runs_of_a_tiny_study(tmp_path):
    spec = StudySpec.from_dict(__import__("tomllib").loads(TINY), source="tiny.toml")
    runs = spec.runs()
    by_arm = {}
    for r in runs:
        by_arm.setdefault(r.arm, []).append(r)
    assert len(by_arm["grid"]) == 3 * 2 and len(by_arm["gradnorm"]) == 2 * 2
    assert len(by_arm["equal"]) == 2
    statics = by_arm["gradnorm-static"]
    assert [r.depends_on for r in statics] == [("gradnorm", r.key) for r in by_arm["gradnorm"]]
    assert spec.config_hash() == spec.with_seeds([0, 1, 2, 3]).config_hash()
    assert spec.config_hash() != spec.quick(0.1).config_hash()
    assert spec.quick(0.1).name == "tiny-quick"  # stored as a study of its own, beside the full one


@pytest.mark.parametrize("old,new", [
    ('seeds = [0, 1]', 'seeds = [0, 1]\ndtype = "float64"'), ("sigmas = [1.0, 10.0]", "sigmas = [1.0, 11.0]"),
    ("hidden = 6", "hidden = 7"), ("steps = 10", "steps = 11"), ("batch_size = 16", "batch_size = 8"),
    ("lr = 0.01", "lr = 0.02"), ("eval_every = 5", "eval_every = 2"),
    ("eval_every = 5", "eval_every = 5\ntail_fraction = 0.4"),
    ("resolution = 0.5", "resolution = 0.25"), ("alpha = [0.5, 1.0]", "alpha = [0.5, 1.5]"),
    ("[arms.gradnorm-static]", '[arms.gradnorm-static]\nwindow = "tail"'), ("[arms.equal]", "[arms.dwa]"),
    ("[arms.equal]", "[arms.equal]\nnetwork_lr = 0.02"),
])
def test_every_setting_that_changes_results_changes_the_configuration(old, new):
    """A stored study continues only under the configuration it was run with: a setting left out
    of the hash would mix, say, float32 and float64 runs in one study without a word."""
    def spec_of(text):
        return StudySpec.from_dict(__import__("tomllib").loads(text), source="tiny.toml")

    assert TINY.count(old) == 1
    assert spec_of(TINY).config_hash() != spec_of(TINY.replace(old, new)).config_hash()


def write(tmp_path, text: str) -> str:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return str(path)


BAD = [
    ("malformed", "name = [\n", "TOML"),
    ("unknown field", TINY.replace('seeds = [0, 1]', 'seeds = [0, 1]\ncolour = "red"'), "colour"),
    ("unknown arm kind", TINY + '\n[arms.x]\nkind = "magic"\n', "arms.x.kind"),
    ("unknown problem", TINY.replace('name = "toy"', 'name = "nope"'), "problem"),
    ("weights of the wrong length", TINY + '\n[arms.mine]\nkind = "static"\nweights = [1, 2, 3]\n', "arms.mine.weights"),
    ("negative weights", TINY + '\n[arms.mine]\nkind = "static"\nweights = [1, -2]\n', "arms.mine.weights"),
    ("weights summing to zero", TINY + '\n[arms.mine]\nkind = "static"\nweights = [0, 0]\n', "arms.mine.weights"),
    ("negative alpha", TINY.replace("alpha = [0.5, 1.0]", "alpha = [-0.5]"), "arms.gradnorm.alpha"),
    ("one alpha twice (two runs under one key)",
     TINY.replace("alpha = [0.5, 1.0]", "alpha = [1.0, 1]"), "arms.gradnorm.alpha"),
    ("bad resolution", TINY.replace("resolution = 0.5", "resolution = 0.3"), "arms.grid.resolution"),
    ("a resolution whose inverse is nearly whole (3.03 divisions)", TINY.replace("resolution = 0.5", "resolution = 0.33"),
     "arms.grid.resolution"),
    ("bad gradnorm option", TINY.replace("alpha = [0.5, 1.0]", "alpha = 1.0\nweight_lr = -1"), "arms.gradnorm.weight_lr"),
    ("static without gradnorm", TINY.replace("[arms.gradnorm]\nalpha = [0.5, 1.0]\n", ""), "arms.gradnorm-static.source"),
    ("bad seeds", TINY.replace("seeds = [0, 1]", "seeds = [0, 0]"), "seeds"),
    ("bad budget", TINY.replace("steps = 10", "steps = 0"), "budget.steps"),
    ("batch larger than the data", TINY.replace("batch_size = 16", "batch_size = 1000"), "batch_size"),
    ("one task", TINY.replace("tasks = 2\nsigmas = [1.0, 10.0]", "tasks = 1"), "problem"),
    ("bad sampler", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nsampler = "magic"\nn_trials = 3'), "arms.grid.sampler"),
    ("CMA-ES on one dimension (it sampled at random, silently)", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nsampler = "cmaes"\nn_trials = 3'), "arms.grid.sampler"),
    ("negative sampler seed (a numpy traceback)", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nsampler = "qmc"\nn_trials = 3\nsampler_seed = -1'), "arms.grid.sampler_seed"),
    ("sampler seed past 32 bits", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nsampler = "random"\nn_trials = 3\nsampler_seed = 4294967296'), "arms.grid.sampler_seed"),
    ("parallel points a boolean", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nn_trials = 3\nparallel_points = true'), "arms.grid.parallel_points"),
    ("boundary not a boolean", TINY.replace("resolution = 0.5", 'resolution = 0.5\nboundary = "no"'), "arms.grid.boundary"),
    ("one listed point twice (announced as 3 points a seed, trained as 2)", TINY.replace("resolution = 0.5", "points = [[1, 1], [2, 2], [1, 3]]"), "arms.grid.points[1]"),
    ("one ratio written two ways, its rescaled weights a bit apart (one run key)",
     TINY.replace("resolution = 0.5", "points = [[1, 2], [0.3, 0.6]]"), "arms.grid.points[1]"),
    ("boundary with listed points", TINY.replace("resolution = 0.5", "points = [[1, 1]]\nboundary = false"), "arms.grid.boundary"),
    ("boundary with a sampler", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nn_trials = 3\nboundary = false'), "arms.grid.boundary"),
    ("no point inside", TINY.replace("resolution = 0.5", "resolution = 1\nboundary = false"), "arms.grid.resolution"),
    ("a grid past max_points", TINY.replace("resolution = 0.5", "resolution = 0.0001"), "arms.grid.resolution"),
    ("sampled points past max_points", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nn_trials = 10001'), "arms.grid.n_trials"),
    ("max_points not a number", TINY.replace("resolution = 0.5", 'resolution = 0.5\nmax_points = "many"'), "arms.grid.max_points"),
    ("loss-scale warm-up past the budget", TINY + "\n[arms.loss-scale]\nsteps = 10\n", "arms.loss-scale.steps"),
    ("GradNorm warm-up past the budget", TINY.replace("alpha = [0.5, 1.0]", 'alpha = 1.0\ninitial_loss = "mean_first_steps"\ninitial_loss_steps = 12'), "arms.gradnorm.initial_loss_steps"),
    ("GradNorm's log C initial losses without a classification task (first_step in disguise)", TINY.replace("alpha = [0.5, 1.0]", 'alpha = 1.0\ninitial_loss = "log_classes"'), "arms.gradnorm.initial_loss"),
    ("GradNorm warm-up under another rule", TINY.replace("alpha = [0.5, 1.0]", "alpha = 1.0\ninitial_loss_steps = 3"), "arms.gradnorm.initial_loss_steps"),
    ("DWA periods past the budget", TINY + "\n[arms.dwa]\nperiod = 5\n", "arms.dwa.period"),
    ("DWA's default period past the budget", TINY.replace("steps = 10", "steps = 8") + "\n[arms.dwa]\n", "arms.dwa.period"),
    # Values of the wrong type, found by fuzzing study files: each raised a TypeError.
    ("a problem name that is a number", TINY.replace('name = "toy"', "name = 1.5"), "problem"),
    ("a problem name that is a list", TINY.replace('name = "toy"', 'name = ["toy"]'), "problem"),
    ("an arm kind that is a list", TINY + '\n[arms.x]\nkind = ["equal"]\n', "arms.x.kind"),
    ("a source that is a table", TINY.replace("[arms.gradnorm-static]", "[arms.gradnorm-static.source]"),
     "arms.gradnorm-static.source"),
    ("a size past 64 bits (torch's overflow)", TINY.replace("hidden = 6", "hidden = 100000000000000000000"),
     "problem.hidden"),
    # Lines no other case reached.
    ("an arm that is a number, not a table", TINY + "\n[arms]\nmine = 3\n", "arms.mine"),
    ("a static arm without weights", TINY + '\n[arms.mine]\nkind = "static"\n', "arms.mine.weights"),
    ("static weights that are not numbers", TINY + '\n[arms.mine]\nkind = "static"\nweights = [1, nan]\n',
     "arms.mine.weights"),
    ("no listed point", TINY.replace("resolution = 0.5", "points = []"), "arms.grid.points"),
    ("no sampled point", TINY.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nn_trials = 0'),
     "arms.grid.n_trials"),
    ("no alpha", TINY.replace("alpha = [0.5, 1.0]", "alpha = []"), "arms.gradnorm.alpha"),
    ("a learning rate of zero", TINY.replace("[arms.equal]", "[arms.equal]\nnetwork_lr = 0"), "arms.equal.network_lr"),
    ("a learning rate that is text", TINY.replace("[arms.equal]", '[arms.equal]\nnetwork_lr = "fast"'),
     "arms.equal.network_lr"),
    ("a learning rate that is a boolean", TINY.replace("alpha = [0.5, 1.0]", "alpha = 1.0\nnetwork_lr = true"),
     "arms.gradnorm.network_lr"),
    ("an averaging window of neither kind",
     TINY.replace("[arms.gradnorm-static]", '[arms.gradnorm-static]\nwindow = "last"'), "arms.gradnorm-static.window"),
]


@pytest.mark.parametrize("case,text,field", BAD, ids=[b[0] for b in BAD])
def test_bad_study_files_get_errors_naming_file_and_field(tmp_path, case, text, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        StudySpec.load(path)
    message = str(err.value)
    assert path in message and field in message and "expected" in message


def test_an_arm_trains_at_its_own_learning_rate_and_gradnorm_static_at_its_source_s(tmp_path):
    spec = StudySpec.load(write(tmp_path, TINY.replace("alpha = [0.5, 1.0]", "alpha = [0.5, 1.0]\nnetwork_lr = 0.03")
                                + '\n[arms.equal-fast]\nkind = "equal"\nnetwork_lr = 0.05\n'
                                + '\n[arms.static-slow]\nkind = "gradnorm-static"\nnetwork_lr = 0.002\n'))
    rates = {run.arm: {spec.run_config(r).budget.lr for r in spec.runs() if r.arm == run.arm} for run in spec.runs()}
    assert rates == {"grid": {0.01}, "gradnorm": {0.03}, "gradnorm-static": {0.03}, "equal": {0.01},
                     "equal-fast": {0.05}, "static-slow": {0.002}}
    # Only the rest of the budget is the study's, and only an arm's own value enters the configuration.
    config = spec.run_config(next(r for r in spec.runs() if r.arm == "equal-fast"))
    assert config.budget == spec.budget.__class__(**{**spec.budget.__dict__, "lr": 0.05})
    arms = spec.identity()["arms"]
    assert [arm for arm, described in arms.items() if "network_lr" in described] == [
        "gradnorm", "equal-fast", "static-slow"]
    assert "network_lr" not in str(StudySpec.load(write(tmp_path, TINY)).identity())
    # Runs at different rates never share a stacked model (its Adam has one rate).
    keys = {spec.run_config(r).batch_key() for r in spec.runs() if r.arm in ("equal", "equal-fast")}
    assert len(keys) == 2


def test_several_learning_rates_train_under_keys_of_their_own_and_one_is_just_a_rate(tmp_path):
    spec = StudySpec.load(write(tmp_path, TINY.replace("alpha = [0.5, 1.0]", "alpha = [0.5, 1.0]\nnetwork_lr = [0.01, 0.1]")
                                .replace("[arms.equal]", "[arms.equal]\nnetwork_lr = [0.02]")
                                + '\n[arms.slow-static]\nkind = "gradnorm-static"\nnetwork_lr = 0.001\n'))
    runs = {(r.arm, r.key): r for r in spec.runs()}
    assert {k for a, k in runs if a == "gradnorm"} == {f"alpha={a}/lr={lr}/seed={s}" for a in ("0.5", "1")
                                                      for lr in ("0.01", "0.1") for s in (0, 1)}
    assert runs[("gradnorm", "alpha=1/lr=0.1/seed=1")].params["lr"][0] == 0.1
    assert spec.run_config(runs[("gradnorm", "alpha=1/lr=0.1/seed=1")]).budget.lr == 0.1
    # GradNorm static: each run at its GradNorm run's rate, or at the one rate its own table gives.
    assert spec.run_config(runs[("gradnorm-static", "alpha=1/lr=0.1/seed=1")]).budget.lr == 0.1
    assert {spec.run_config(r).budget.lr for (a, _), r in runs.items() if a == "slow-static"} == {0.001}
    assert runs[("gradnorm-static", "alpha=1/lr=0.1/seed=1")].params["lr"][0] == 0.1
    assert not any("lr" in r.params for (a, _), r in runs.items() if a == "slow-static")  # its one rate is no choice
    # A list of one rate is that rate: no key of its own, nothing to choose.
    assert {k for a, k in runs if a == "equal"} == {"seed=0", "seed=1"}
    assert {spec.run_config(r).budget.lr for (a, _), r in runs.items() if a == "equal"} == {0.02}


@pytest.mark.parametrize("change,field,expected", [
    (("resolution = 0.5", "resolution = 0.5\nnetwork_lr = [0.01, 0.1]"), "arms.grid.network_lr",
     "give each rate a grid arm of its own"),
    (("[arms.gradnorm-static]", "[arms.gradnorm-static]\nnetwork_lr = [0.01, 0.1]"), "arms.gradnorm-static.network_lr",
     "to train GradNorm at several, give its arm the list"),
    (("[arms.equal]", "[arms.equal]\nnetwork_lr = [0.01, 0.0100000001]"), "arms.equal.network_lr",
     "distinct values (in their first 6 significant digits"),
    (("[arms.equal]", "[arms.equal]\nnetwork_lr = []"), "arms.equal.network_lr", "a non-empty list"),
    (("[arms.equal]", "[arms.equal]\nnetwork_lr = [0.01, -1]"), "arms.equal.network_lr", "positive number"),
])
def test_learning_rates_that_cannot_be_trained_or_told_apart_are_refused(tmp_path, change, field, expected):
    with pytest.raises(ConfigError, match=re.escape(f"{field}: expected")) as err:
        StudySpec.load(write(tmp_path, TINY.replace(*change)))
    assert expected in str(err.value)


@pytest.mark.parametrize("arm,option,hint", [
    ("equal", "lr", "the network's learning rate for this arm's runs is network_lr"),
    ("gradnorm", "lr", "the network's learning rate for this arm's runs is network_lr"),
    ("equal", "network_rate", "did you mean 'network_lr'?"),
])
def test_a_learning_rate_under_another_name_points_to_network_lr(tmp_path, arm, option, hint):
    text = TINY.replace("alpha = [0.5, 1.0]", "alpha = 1.0") if arm == "gradnorm" else TINY
    text = text.replace(f"[arms.{arm}]", f"[arms.{arm}]\n{option} = 0.01", 1)
    with pytest.raises(ConfigError, match=f"arms.{arm}.{option}: expected an option of the '{arm}' arm") as err:
        StudySpec.load(write(tmp_path, text))
    assert "network_lr" in str(err.value).split("arm (")[1] and hint in str(err.value)


def test_a_gradnorm_static_arm_without_a_source_names_the_gradnorm_arms_it_could_retrain(tmp_path):
    """It said "(the study has 0)" or "(the study has 2)", and left the reader to find them."""
    none = TINY.replace("[arms.gradnorm]\nalpha = [0.5, 1.0]\n", "")
    with pytest.raises(ConfigError, match=r"the study has none: add a \[arms.gradnorm\]"):
        StudySpec.load(write(tmp_path, none))
    two = TINY.replace("[arms.gradnorm-static]", '[arms.floored]\nkind = "gradnorm"\nfloor = 0.05\n\n[arms.gradnorm-static]')
    with pytest.raises(ConfigError, match="the study has 2: gradnorm, floored"):
        StudySpec.load(write(tmp_path, two))


def test_a_grid_without_its_boundary_keeps_the_points_that_weight_every_task(tmp_path):
    full = StudySpec.load(write(tmp_path, TINY))
    inside = StudySpec.load(write(tmp_path, TINY.replace("resolution = 0.5", "resolution = 0.5\nboundary = false")))
    def grid_keys(spec):
        return [r.key for r in spec.runs() if r.arm == "grid"]
    assert grid_keys(full) == [f"w={w}/seed={s}" for w in ("2,0", "1,1", "0,2") for s in (0, 1)]
    assert grid_keys(inside) == ["w=1,1/seed=0", "w=1,1/seed=1"]
    assert inside.config_hash() != full.config_hash()
    # Studies stored before the option existed keep their configuration hash.
    assert "boundary" not in full.identity()["arms"]["grid"]
    finer = simplex_grid(3, 0.1)
    assert len([p for p in finer if min(p) > 0]) == math.comb(9, 2) == 36  # the default study's


def test_listed_weights_are_rescaled_to_sum_to_the_number_of_tasks(tmp_path):
    """As the paper's grid: only the weights' ratios are chosen, their sum is T."""
    listed = TINY.replace("resolution = 0.5", "points = [[1, 3], [6, 2]]") + '\n[arms.mine]\nkind = "static"\nweights = [3, 1]\n'
    spec = StudySpec.load(write(tmp_path, listed))
    assert spec.arms["grid"].points == [(0.5, 1.5), (1.5, 0.5)]
    assert [r.key for r in spec.runs() if r.arm == "grid" and r.seed == 0] == ["w=0.5,1.5/seed=0", "w=1.5,0.5/seed=0"]
    assert [r.balancer_params["weights"] for r in spec.runs() if r.arm == "mine"] == [[1.5, 0.5], [1.5, 0.5]]


def test_every_run_can_be_queued_with_its_parameters(tmp_path):
    """Each run's parameters lie in their distributions, which Optuna checks (raising
    ValueError) when it stores a trial: an alpha above 10 widens its range beyond [0, 10]."""
    text = TINY.replace("alpha = [0.5, 1.0]", "alpha = [0.5, 12.0]") + '\n[arms.mine]\nkind = "static"\nweights = [3, 1]\n'
    for run in StudySpec.load(write(tmp_path, text)).runs():
        optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                  params={name: value for name, (value, _) in run.params.items()},
                                  distributions={name: d for name, (_, d) in run.params.items()})


def test_gradnorm_static_retrains_the_averaged_weights_of_its_window(tmp_path):
    record = {"mean_weights": [1.2, 0.8], "tail_mean_weights": [1.5, 0.5]}
    whole = StudySpec.load(write(tmp_path, TINY)).arms["gradnorm-static"]
    tail = StudySpec.load(write(tmp_path, TINY.replace("[arms.gradnorm-static]", '[arms.gradnorm-static]\nwindow = "tail"')))
    assert whole.weights_from(record) == [1.2, 0.8]
    assert tail.arms["gradnorm-static"].weights_from(record) == [1.5, 0.5]


def test_a_sampled_grid_has_the_documented_defaults(tmp_path):
    sampled = StudySpec.load(write(tmp_path, TINY.replace('method = "exhaustive"\nresolution = 0.5',
                                                          'method = "optuna"\nn_trials = 3')))
    grid = sampled.arms["grid"]
    assert (grid.sampler_name, grid.parallel_points, grid.sampler_seed) == ("tpe", 8, 0)  # as the README says
    assert sampled.identity()["arms"]["grid"]["parallel_points"] == 8


def test_a_sampled_grid_can_draw_its_points_as_the_paper_did(tmp_path):
    """`mapping = "renormalised"`: T uniform numbers rescaled to sum to T (the paper's grid), one
    cube coordinate per task, named apart from stick breaking's; a study without the option keeps
    the configuration (and hash) it was stored with."""
    sampled = TINY.replace('method = "exhaustive"\nresolution = 0.5',
                           'method = "optuna"\nsampler = "random"\nn_trials = 3')
    default = StudySpec.load(write(tmp_path, sampled))
    grid = default.arms["grid"]
    assert grid.mapping == "stick-breaking" and list(grid.cube_distributions()) == ["z0"]
    assert "mapping" not in default.identity()["arms"]["grid"]
    paper = StudySpec.load(write(tmp_path, sampled.replace('n_trials = 3', 'n_trials = 3\nmapping = "renormalised"')))
    grid = paper.arms["grid"]
    assert list(grid.cube_distributions()) == ["u0", "u1"]
    assert grid.weights_from_cube({"u0": 0.6, "u1": 0.2}) == pytest.approx((1.5, 0.5))
    assert paper.identity()["arms"]["grid"]["mapping"] == "renormalised"
    assert paper.config_hash() != default.config_hash()
    # CMA-ES needs two dimensions: two tasks have two under the paper's map, one under stick breaking
    cmaes = sampled.replace('sampler = "random"', 'sampler = "cmaes"')
    with pytest.raises(ConfigError, match="arms.grid.sampler"):
        StudySpec.load(write(tmp_path, cmaes))
    assert StudySpec.load(write(tmp_path, cmaes.replace('n_trials = 3', 'n_trials = 3\nmapping = "renormalised"')))


@pytest.mark.parametrize("change, field, expected", [
    ('method = "optuna"\nsampler = "random"\nn_trials = 3\nmapping = "paper"', "arms.grid.mapping",
     "'stick-breaking' (uniform on the simplex) or 'renormalised'"),
    ('method = "optuna"\nsampler = "grid"\nn_trials = 3\nmapping = "renormalised"', "arms.grid.sampler",
     "tpe, random, qmc or cmaes with mapping = 'renormalised'"),
    ('method = "exhaustive"\nresolution = 0.5\nmapping = "renormalised"', "arms.grid.mapping",
     "no sampler option with method = 'exhaustive'"),
])
def test_a_mapping_that_cannot_apply_is_refused_naming_the_field(tmp_path, change, field, expected):
    with pytest.raises(ConfigError) as err:
        StudySpec.load(write(tmp_path, TINY.replace('method = "exhaustive"\nresolution = 0.5', change)))
    assert f"study.toml: {field}: expected {expected}" in str(err.value)


def test_a_grid_is_counted_before_it_is_listed_and_max_points_lets_a_large_one_through(tmp_path):
    three = TINY.replace("tasks = 2\nsigmas = [1.0, 10.0]", "tasks = 3\nsigmas = [1.0, 10.0, 100.0]")
    with pytest.raises(ConfigError, match="501,501"):  # listing these points would take half a minute
        StudySpec.load(write(tmp_path, three.replace("resolution = 0.5", "resolution = 0.001")))
    with pytest.raises(ConfigError, match="max_points = 20"):  # 21 points
        StudySpec.load(write(tmp_path, three.replace("resolution = 0.5", "resolution = 0.2\nmax_points = 20")))
    spec = StudySpec.load(write(tmp_path, three.replace("resolution = 0.5", "resolution = 0.2\nmax_points = 21")))
    assert len(spec.arms["grid"].points) == 21
    inside = three.replace("resolution = 0.5", "resolution = 0.2\nboundary = false\nmax_points = 6")
    assert len(StudySpec.load(write(tmp_path, inside)).arms["grid"].points) == 6  # only the interior counts
    sampled = three.replace('method = "exhaustive"\nresolution = 0.5', 'method = "optuna"\nn_trials = 30\nmax_points = 30')
    assert StudySpec.load(write(tmp_path, sampled)).arms["grid"].n_trials == 30
    # The cap only guards; it does not change what the study trains.
    assert spec.config_hash() == StudySpec.load(write(tmp_path, three.replace("resolution = 0.5", "resolution = 0.2"))).config_hash()


def test_a_warm_up_that_fits_the_budget_but_not_a_quick_look_is_refused_for_quick_only(tmp_path):
    spec = StudySpec.load(write(tmp_path, TINY.replace("steps = 10", "steps = 40") + "\n[arms.loss-scale]\nsteps = 5\n"))
    assert spec.arms["loss-scale"].balancer_params == {"steps": 5}
    assert spec.quick(0.5).budget.steps == 20
    with pytest.raises(ConfigError, match="arms.loss-scale.steps: expected fewer than the budget's 4 steps.*--quick"):
        spec.quick(0.1)


def test_dwa_default_period_of_one_epoch_is_checked_against_the_budget(tmp_path):
    # 64 training examples in batches of 16: an epoch is 4 steps, and DWA's weights stay 1 for
    # its first two periods, so 8 steps would train equal weights under DWA's name.
    assert StudySpec.load(write(tmp_path, TINY + "\n[arms.dwa]\n")).budget.steps == 10
    with pytest.raises(ConfigError, match="arms.dwa.period: expected a period of fewer than 4 steps, "
                       "or a budget of more than 8 steps: the default period, one epoch, is 4 steps"):
        StudySpec.load(write(tmp_path, TINY.replace("steps = 10", "steps = 8") + "\n[arms.dwa]\n"))
    assert StudySpec.load(write(tmp_path, TINY.replace("steps = 10", "steps = 8") + "\n[arms.dwa]\nperiod = 3\n"))


def test_unknown_study_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        StudySpec.load("no-such-study")
    assert "gridsearch" in str(err.value)


def test_without_a_studies_folder_the_error_says_where_the_shipped_studies_are(tmp_path, monkeypatch):
    """A wheel installed without the repository has no studies/ beside the package."""
    import bench.study.spec as spec_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(spec_module, "studies_dirs", lambda: [tmp_path / "studies"])
    with pytest.raises(ConfigError, match="none found: the shipped studies are in the repository's studies/ folder"):
        StudySpec.load("gridsearch")


def test_a_study_name_finds_its_file_in_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text(TINY.replace('name = "tiny"', 'name = "mine"'))
    monkeypatch.chdir(tmp_path)
    assert StudySpec.load("mine").name == "mine"  # as `bench run --study mine` beside mine.toml


# Where a user may write a value: every field of TINY, and the options it leaves out.
FIELDS = [
    ("name",), ("seeds",), ("selection",), ("dtype",), ("description",), ("problem",), ("budget",), ("arms",),
    *[("problem", key) for key in ("name", "tasks", "sigmas", "input_dim", "output_dim", "hidden", "depth",
                                   "n_train", "n_val", "n_test", "shared_scale", "scale_kind")],
    *[("budget", key) for key in ("steps", "batch_size", "lr", "eval_every", "tail_fraction")],
    *[("arms", "grid", key) for key in ("kind", "method", "resolution", "boundary", "points", "max_points",
                                        "sampler", "n_trials", "parallel_points", "sampler_seed", "mapping")],
    *[("arms", "gradnorm", key) for key in ("kind", "alpha", "floor", "grad_params", "initial_loss",
                                            "initial_loss_steps", "parametrisation", "weight_optimizer",
                                            "weight_lr", "reduction")],
    *[("arms", "gradnorm-static", key) for key in ("kind", "source", "window")],
    *[("arms", arm, key) for arm, key in (("equal", "kind"), ("mine", "weights"), ("dwa", "period"),
                                          ("dwa", "temperature"), ("uncertainty", "lr"), ("loss-scale", "steps"))],
]
WORDS = ["toy", "gradnorm", "gradnorm-static", "static", "exhaustive", "optuna", "tpe", "qmc", "cmaes", "all",
         "tail", "softmax", "sgd", "mean", "float64", "mean_first_steps", "log_classes", "representation",
         "renormalised", "stick-breaking", "random", "grid", ""]
SCALARS = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 40), st.floats(), st.booleans(),
                    st.sampled_from(WORDS), st.text(max_size=6))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.lists(st.lists(st.integers(-1, 3), max_size=4), max_size=3),
                   st.dictionaries(st.sampled_from(["a", "name", "kind", "weights"]), SCALARS, max_size=2))


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(st.none(), VALUES)), min_size=1, max_size=3))
def test_any_value_anywhere_in_a_study_file_is_loaded_or_refused_with_the_file_and_field(changes):
    """A study file, with any field set to a value of any type or removed, loads and lists its
    runs, or is refused with a ConfigError naming the file, the field and what was expected.
    Fuzzing this way found a TypeError for a problem name that was a number, an arm kind that was
    a list, a source that was a table, and torch's overflow for a size past 64 bits."""
    import tomllib

    data = tomllib.loads(TINY)
    for field, value in changes:
        node = data
        for key in field[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value is None:  # removed
            node.pop(field[-1], None)
        else:
            node[field[-1]] = value
    try:
        spec = StudySpec.from_dict(data, source="fuzz.toml")
        assert spec.runs()
        spec.quick(0.5)
    except ConfigError as err:
        assert "fuzz.toml: " in str(err) and ": expected " in str(err), str(err)
