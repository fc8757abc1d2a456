"""Study files: a TOML file in `studies/` that names a problem, a budget, seeds and arms.

    name = "gridsearch"              # default: the file's name
    description = "..."
    seeds = [0, 1, 2]                # each seed fixes initialisation, batch order and data, for every arm
    selection = "normalized_val_loss"  # how the best grid point is chosen: mean over seeds

    [problem]
    name = "toy"                     # a registered problem, or "package.module:function"
    tasks = 3                        # ... the problem's options

    [budget]                         # bench.training.Budget
    steps = 1500

    [arms.grid]                      # the arm's kind is its name, or `kind = "..."`
    method = "exhaustive"
    resolution = 0.1
    network_lr = 0.002               # any arm: its runs' learning rate, if not [budget] lr

Every value is checked when the file is read; an error names the file, the field and what was
expected.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, did_you_mean
from bench.params import build_params
from bench.problems import build_problem
from bench.study.arms import ARM_KINDS, Arm, GradNormStaticArm, RunSpec
from bench.training import Budget, RunConfig
from bench.training.config import MAX_SEED, config_hash, valid_seed

SELECTIONS = ("normalized_val_loss",)
TOP_LEVEL = ("name", "description", "seeds", "selection", "dtype", "problem", "budget", "arms")


def studies_dirs() -> list[Path]:
    """Where study names are looked up: ./studies, then the repository's studies/ beside the
    package, then the copy of it an installed wheel carries (`bench/shipped_studies`, in the
    repository a link to studies/); each folder once."""
    package = Path(__file__).resolve().parents[1]
    folders: dict[Path, Path] = {}
    for folder in (Path.cwd() / "studies", package.parent / "studies", package / "shipped_studies"):
        folders.setdefault(folder.resolve(), folder)
    return list(folders.values())


def find_study_file(name: str) -> Path:
    """A path, or the name of a file here or in studies/ (with or without .toml)."""
    for candidate in [Path(name), Path(f"{name}.toml")] + [c for folder in studies_dirs()
                                                           for c in (folder / name, folder / f"{name}.toml")]:
        if candidate.is_file():
            # Shown in reports as the command to reproduce: relative to here when it can be.
            try:
                return candidate.resolve().relative_to(Path.cwd())
            except ValueError:
                return candidate
    known = sorted({p.stem for d in studies_dirs() if d.is_dir() for p in d.glob("*.toml")})
    found = ", ".join(known) or "none found: the shipped studies are in the repository's studies/ folder"
    raise ConfigError("--study", f"a study file, or the name of one here or in studies/ ({found})", name,
                      hint=did_you_mean(name.removesuffix(".toml"), known))


def read_toml_text(path: Path) -> str:
    r"""The text of a study file, which TOML requires to be UTF-8; a file saved in another
    encoding, or one that cannot be read, is a ConfigError naming it and where.

    >>> import tempfile; latin1 = Path(tempfile.mkdtemp()) / "s.toml"
    >>> _ = latin1.write_bytes('name = "x"\ndescription = "café"\n'.encode("latin-1"))
    >>> read_toml_text(latin1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    bench.errors.ConfigError: .../s.toml: encoding: expected UTF-8 text, as TOML requires (byte 0xe9 on line 2, column 19 is not: save the file as UTF-8)
    >>> _ = latin1.write_bytes('\ufeffname = "x"\n'.encode("utf-8"))  # with a byte-order mark
    >>> read_toml_text(latin1)
    'name = "x"\n'
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError("file", f"a file that can be read ({err.strerror or err})", source=str(path)) from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Windows editors' "Unicode"
        raise ConfigError("encoding", "UTF-8 text, as TOML requires (the file is UTF-16, as its first two "
                                      "bytes say: save it as UTF-8)", source=str(path))
    try:
        # A byte-order mark (Notepad's "UTF-8 with BOM") is no TOML; tomllib's error for it,
        # "Invalid statement (at line 1, column 1)", pointed at a line that looks right.
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ConfigError("encoding", f"UTF-8 text, as TOML requires (byte 0x{data[err.start]:02x} on line "
                                      f"{line}, column {column} is not: save the file as UTF-8)",
                          source=str(path)) from None


MAX_NAME_LENGTH = 100
NAME_RULE = (f"name of 1 to {MAX_NAME_LENGTH} characters, not '.' or '..', without '/', '#', control "
             "characters or spaces at either end")


def usable_name(name: object) -> bool:
    """A study or arm name that is safe as an Optuna study name and as a folder of results/ and
    reports/: '..' wrote a study's tables beside results/, not in it.

    >>> [usable_name(n) for n in ("grid-0.25", "gradnorm static", "..", " x", "a/b", "")]
    [True, True, False, False, False, False]
    """
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and name not in (".", "..")
            and name == name.strip() and not any(c in "/#" or not c.isprintable() for c in name))


@dataclass
class StudySpec:
    name: str
    description: str
    path: str
    problem: str
    problem_params: dict[str, Any]
    budget: Budget
    seeds: list[int]
    selection: str
    dtype: str
    arms: dict[str, Arm]
    text: str
    problem_code: str | None = None  # a problem of one's own: its code's fingerprint

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, name_or_path: str) -> "StudySpec":
        path = find_study_file(name_or_path)
        # A problem of one's own may sit beside its study file: importable from there too (after
        # the current directory), here and in worker processes, which start with this sys.path.
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
        text = read_toml_text(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("TOML", f"a valid TOML file ({err})", source=str(path)) from None
        return cls.from_dict(data, source=str(path), text=text, default_name=path.stem)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<study>", text: str = "",
                  default_name: str = "study") -> "StudySpec":
        def error(field: str, expected: str, got: Any = None, hint: str | None = None) -> ConfigError:
            return ConfigError(field, expected, got, source=source, hint=hint)

        unknown = sorted(set(data) - set(TOP_LEVEL))
        if unknown:
            raise error(unknown[0], "one of the study fields " + ", ".join(TOP_LEVEL),
                        hint=did_you_mean(unknown[0], TOP_LEVEL))
        name = data.get("name", default_name)
        if not usable_name(name):
            raise error("name", "a " + NAME_RULE, name)
        seeds = data.get("seeds", [0, 1, 2])
        if (not isinstance(seeds, list) or not seeds or not all(valid_seed(s) for s in seeds)
                or len(set(seeds)) != len(seeds)):
            raise error("seeds", f"a non-empty list of distinct integers from 0 to {MAX_SEED:,}", seeds)
        selection = data.get("selection", SELECTIONS[0])
        if selection not in SELECTIONS:
            raise error("selection", "one of " + ", ".join(SELECTIONS), selection)
        dtype = data.get("dtype", "float32")
        if dtype not in ("float32", "float64"):
            raise error("dtype", "'float32' or 'float64'", dtype)

        problem_table = data.get("problem")
        if not isinstance(problem_table, dict) or "name" not in problem_table:
            raise error("problem", "a [problem] table with a `name`", problem_table)
        problem_params = {k: v for k, v in problem_table.items() if k != "name"}
        problem = build_problem(problem_table["name"], problem_params, source=source)
        if problem.n_tasks < 2:
            # Every arm would train the same single-task run: nothing to weigh or compare.
            raise error("problem", "a problem with at least 2 tasks (a study compares task weightings)",
                        problem.n_tasks)
        budget_table = data.get("budget", {})
        if not isinstance(budget_table, dict):
            raise error("budget", "a [budget] table", budget_table)
        budget = build_params(Budget, budget_table, source=source, prefix="budget.", owner="[budget]")

        arm_tables = data.get("arms")
        if not isinstance(arm_tables, dict) or not arm_tables:
            raise error("arms", "at least one [arms.NAME] table")
        arms: dict[str, Arm] = {}
        for arm_name, table in arm_tables.items():
            if not isinstance(table, dict):
                raise error(f"arms.{arm_name}", "a table", table)
            kind = table.get("kind", arm_name)
            if not isinstance(kind, str) or kind not in ARM_KINDS:
                raise error(f"arms.{arm_name}.kind", "one of " + ", ".join(ARM_KINDS)
                            + " (or an arm named after its kind)", kind, hint=did_you_mean(kind, ARM_KINDS))
            if not usable_name(arm_name):
                raise error(f"arms.{arm_name}", "an arm " + NAME_RULE, arm_name)
            arms[arm_name] = ARM_KINDS[kind](arm_name, table, tasks=problem.n_tasks, source=source)
        for arm in arms.values():
            if isinstance(arm, GradNormStaticArm):
                arm.bind(arms)
        try:
            steps_per_epoch = budget.steps_per_epoch(problem.train_size())
        except ConfigError as err:
            raise error("budget." + err.field, err.expected, err.got) from None
        for arm in arms.values():
            arm.check_steps(budget.steps, steps_per_epoch)
            arm.check_tasks(problem.tasks)
        spec = cls(name=name, description=str(data.get("description", "")), path=source,
                   problem=problem_table["name"], problem_params=problem_params, budget=budget,
                   seeds=list(seeds), selection=selection, dtype=dtype, arms=arms, text=text,
                   problem_code=problem.code_fingerprint)
        return spec

    # ------------------------------------------------------------------ variants
    def with_seeds(self, seeds: Sequence[int]) -> "StudySpec":
        if not seeds or len(set(seeds)) != len(seeds) or not all(valid_seed(s) for s in seeds):
            raise ConfigError("--seeds", f"distinct integers from 0 to {MAX_SEED:,}", list(seeds))
        return dataclasses.replace(self, seeds=list(seeds))

    def quick(self, factor: float) -> "StudySpec":
        """A quick look: `factor` times the steps, stored as its own study, `<name>-quick`."""
        budget = self.budget.scaled(factor)
        steps_per_epoch = budget.steps_per_epoch(build_problem(self.problem, self.problem_params).train_size())
        for arm in self.arms.values():
            try:
                arm.check_steps(budget.steps, steps_per_epoch)
            except ConfigError as err:
                raise ConfigError(err.field, f"{err.expected}; --quick runs {budget.steps} of the "
                                  f"{self.budget.steps} steps", err.got, source=err.source) from None
        return dataclasses.replace(self, name=f"{self.name}-quick", budget=budget)

    # ------------------------------------------------------------------ what it runs
    @property
    def n_tasks(self) -> int:
        return build_problem(self.problem, self.problem_params).n_tasks

    def runs(self) -> list[RunSpec]:
        return [run for arm in self.arms.values() for run in arm.runs(self.seeds)]

    def run_config(self, run: RunSpec, balancer_params: dict[str, Any] | None = None,
                   device: str = "auto") -> RunConfig:
        params = dict(run.balancer_params)
        params.update(balancer_params or {})
        budget = self.budget if run.lr is None else dataclasses.replace(self.budget, lr=run.lr)
        return RunConfig(problem=self.problem, balancer=run.balancer, seed=run.seed,
                         problem_params=self.problem_params, balancer_params=params,
                         budget=budget, dtype=self.dtype, device=device)  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        """Everything that changes results, seeds aside: a study's stored runs stay valid while
        this is unchanged (more seeds only add runs)."""
        identity = {
            "problem": self.problem, "problem_params": self.problem_params,
            "budget": dataclasses.asdict(self.budget), "selection": self.selection, "dtype": self.dtype,
            "arms": {name: arm.identity() for name, arm in self.arms.items()},
        }
        if self.problem_code is not None:  # runs trained by other code are not this study's
            identity["problem_code"] = self.problem_code
        return identity

    def config_hash(self) -> str:
        return config_hash(self.identity())

    def legacy_hashes(self) -> tuple[str, ...]:
        """This configuration's hash as versions of bench that did not fingerprint a problem's
        code wrote it: a study they stored is continued (its code is unknown). A study stored since
        has the fingerprint in its hash, so it never matches this one."""
        if self.problem_code is None:
            return ()
        identity = self.identity()
        del identity["problem_code"]
        return (config_hash(identity),)
