"""`bench list`: the problems and balancing methods the registries offer, with their options."""

from __future__ import annotations

import dataclasses

from rich.table import Table

from bench.balancers import BALANCERS
from bench.cli.common import console
from bench.problems import PROBLEMS


def _options(params_cls: type) -> str:
    parts = []
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        parts.append(f"{f.name}={default!r}")
    return "\n".join(parts) or "-"


def list_command() -> None:
    """List the problems and balancing methods, with their options and defaults."""
    for title, registry in (("problems", PROBLEMS), ("balancers", BALANCERS)):
        table = Table("name", "what", title=title, title_justify="left")
        # One option per line, kept whole (the description folds instead): a default is what
        # a user copies into a study file.
        table.add_column("options (defaults)", no_wrap=True, overflow="fold")
        for name, cls in registry.items():
            table.add_row(name, cls.description, _options(cls.Params))
        console.print(table)
