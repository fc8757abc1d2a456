"""The package's layers: imports go one way, from the CLI down to the core, and the report reads
results and never trains. Every import of a `bench` module counts, those inside functions too.
And the package type-checks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bench"
BASICS = {"errors", "params", "formatting", "environment"}
# What each part may import, besides itself: study file -> study manager -> training runs ->
# result store -> comparison -> report, with the CLI on top of them all.
ALLOWED = {
    "cli": {"study", "training", "balancers", "problems", "store", "compare", "report", "perf"} | BASICS,
    "perf": {"study", "training", "problems"} | BASICS,
    "report": {"compare", "store"} | BASICS,
    "compare": {"store"} | BASICS,
    "study": {"training", "balancers", "problems", "store"} | BASICS,
    "training": {"balancers", "problems"} | BASICS,
    "store": BASICS,
    "balancers": {"problems"} | BASICS,
    "problems": BASICS,
    "params": {"errors"},
    "formatting": set(),
    "errors": set(),
    "environment": set(),
}


def bench_imports(path: Path) -> set[str]:
    """The parts of `bench` (its first-level modules and packages) that `path` imports."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        parts |= {name.split(".")[1] for name in names if name.startswith("bench.")}
    # `from bench import __version__` names an attribute of the package, not a part of it.
    return {part for part in parts if (PACKAGE / part).is_dir() or (PACKAGE / f"{part}.py").is_file()}


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) not in ("__init__", "__main__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way_from_the_cli_down_to_the_core(path):
    part = part_of(path)
    assert part in ALLOWED, f"bench/{part} is a new part of the package: give it its place in ALLOWED"
    wrong = bench_imports(path) - ALLOWED[part] - {part}
    assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports bench.{', bench.'.join(sorted(wrong))}"


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from bench.training import train_runs\n    import bench.cli.app\n")
    assert bench_imports(module) == {"training", "cli"}


@pytest.mark.slow
def test_an_installed_wheel_carries_the_shipped_studies_and_finds_them_by_name(tmp_path):
    """A wheel had no studies/ beside its package, so `bench run --study gridsearch`, the README's
    first command, failed from an installed package."""
    import os
    import subprocess
    import sys
    import zipfile

    import shutil

    pytest.importorskip("setuptools")  # the build backend, used from this environment
    root = PACKAGE.parent
    # Built from a copy: setuptools writes build/ into the tree it builds, and the checkout is not ours.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, source / name)
    for folder in ("bench", "studies"):  # bench/shipped_studies is a link to ../studies: kept as one
        shutil.copytree(root / folder, source / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = sorted(p.name for p in (root / "studies").glob("*.toml"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert sorted(n.removeprefix("bench/shipped_studies/") for n in names
                  if n.startswith("bench/shipped_studies/")) == shipped
    assert "bench/report/templates/report.html.j2" in names
    # The package as installed, run from a folder with no studies/ of its own.
    work = tmp_path / "elsewhere"
    work.mkdir()
    found = subprocess.run([sys.executable, "-c", "from bench.study.spec import find_study_file; "
                            "print(find_study_file('gridsearch'))"], cwd=work, check=True, text=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}).stdout
    assert Path(found.strip()) == tmp_path / "site" / "bench" / "shipped_studies" / "gridsearch.toml"


def test_every_dependency_floor_is_the_version_the_lowest_versions_test_installs():
    """`make test-lowest` runs the tests on tests/lowest-versions.txt: a floor raised or lowered
    in pyproject.toml without it would again be a floor that nothing tests (optuna>=4.0 and
    pandas>=2.0 were, and neither ran)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = PACKAGE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in ("data", "postgres", "dask", "test")
                                          for r in project["optional-dependencies"][extra]]
    floors = {}
    for text in declared:
        requirement = Requirement(text)
        if requirement.name == "gradnorm-bench":  # the test extra names the others
            continue
        (floor,) = [s.version for s in requirement.specifier if s.operator in (">=", "==")]  # ==: mypy's pin
        floors[requirement.name.lower()] = Version(floor)
    pinned = {}
    for line in (root / "tests" / "lowest-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.strip().lower()] = Version(version)
    assert floors.pop("torch") == Version("2.4")  # tested by hand (see lowest-versions.txt)
    assert pinned == floors


@pytest.mark.slow
def test_the_package_type_checks(tmp_path):
    """mypy, with pyproject.toml's settings (`make typecheck`), finds nothing in `bench/`: an
    Optional used as if always set, a function called with the wrong types, a `# type: ignore`
    no longer needed. About 20 s, from a cache of its own (not the checkout's .mypy_cache)."""
    found = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")],
                           cwd=PACKAGE.parent, capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr
