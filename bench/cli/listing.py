"""`bench list`: the studies at hand, and the problems and balancing methods the registries offer,
with their options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from bench.cli.common import console


def _default(field: dataclasses.Field) -> str:
    """A default as Python writes it, without spaces, so that a line breaks between options
    and never inside one: a default is what a user copies into a study file."""
    value = field.default if field.default is not dataclasses.MISSING else None
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _entry(description: str, params_cls: type) -> Text:
    """The description, then the options and their defaults on the lines below it."""
    text = Text(description)
    options = [f"{f.name}={_default(f)}" for f in dataclasses.fields(params_cls)]
    text.append("\n" + ("  ".join(options) if options else "no options"), style="cyan")
    return text


def _table(title: str, second_column: str, rows: list[tuple[str, Text]]) -> Table:
    # Two columns and no vertical rules: at 80 columns a third squeezed the descriptions to a
    # word a line, cut with ellipses.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("name", no_wrap=True)
    table.add_column(second_column)
    for i, (name, entry) in enumerate(rows):
        if i:
            table.add_row()
        table.add_row(name, entry)
    return table


def _study_entry(path: Path) -> Text:
    """A study file's description, then what `bench run` would train; or why it cannot be loaded."""
    from bench.errors import BenchError, UserCodeError
    from bench.formatting import count
    from bench.study import StudySpec

    try:
        spec = StudySpec.load(str(path))
    except Exception as err:  # a study of one's own that does not load is listed, with why
        located = err if isinstance(err, BenchError) else UserCodeError.located(err)
        if located is None:  # not the user's input or code: a bug of ours keeps its traceback
            raise
        return Text(f"cannot be loaded: {located}", style="red")
    text = Text(" ".join(spec.description.split()) or "(no description)")
    text.append(f"\n{count(len(spec.runs()), 'run')} over {count(len(spec.seeds), 'seed')}, "
                f"{spec.budget.steps} steps each: {spec.path}", style="cyan")
    return text


def list_command() -> None:
    """List the studies at hand, and the problems and balancing methods with their options."""
    from bench.balancers import BALANCERS
    from bench.problems import PROBLEMS
    from bench.study.spec import studies_dirs

    # As `bench run --study NAME` finds them: ./studies first, then the shipped ones.
    studies: dict[str, Path] = {}
    for folder in studies_dirs():
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            studies.setdefault(path.stem, path)
    if studies:
        console.print(_table("studies (bench run --study NAME)", "description, then its runs",
                             [(name, _study_entry(path)) for name, path in sorted(studies.items())]))
    for title, registry in (("problems", PROBLEMS), ("balancers", BALANCERS)):
        console.print(_table(title, "description, then options (defaults)",
                             [(name, _entry(cls.description, cls.Params)) for name, cls in registry.items()]))
