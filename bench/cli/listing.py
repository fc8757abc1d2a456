"""`bench list`: the problems and balancing methods the registries offer, with their options."""

from __future__ import annotations

import dataclasses

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


def list_command() -> None:
    """List the problems and balancing methods, with their options and defaults."""
    from bench.balancers import BALANCERS
    from bench.problems import PROBLEMS

    for title, registry in (("problems", PROBLEMS), ("balancers", BALANCERS)):
        # Two columns and no vertical rules: at 80 columns a third squeezed the descriptions to
        # a word a line, cut with ellipses.
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      collapse_padding=True)
        table.add_column("name", no_wrap=True)
        table.add_column("description, then options (defaults)")
        for i, (name, cls) in enumerate(registry.items()):
            if i:
                table.add_row()
            table.add_row(name, _entry(cls.description, cls.Params))
        console.print(table)
