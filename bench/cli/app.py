"""The typer application; user errors become one `error: ...` line and a non-zero exit."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import typer
from rich.text import Text

from bench.cli.common import err_console
from bench.cli.compare import compare_command
from bench.cli.delete import delete_command
from bench.cli.listing import list_command
from bench.cli.perf import perf_command
from bench.cli.run import run_command
from bench.cli.status import status_command
from bench.cli.train import train_command
from bench.errors import SHOW_TRACEBACK, BenchError, UserCodeError, memory_failure
from bench.store.storage import storage_failure
from bench.training.allocator import keep_freed_memory

app = typer.Typer(
    name="bench",
    help="GradNorm Bench: run grid searches over static task weights next to GradNorm, and compare.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(asked: bool) -> None:
    if not asked:
        return
    from bench.environment import git_commit, package_versions

    versions = package_versions()  # package metadata: torch is not imported for this
    commit = git_commit()
    typer.echo(f"gradnorm-bench {versions.pop('gradnorm-bench')}" + (f" (commit {commit})" if commit else ""))
    typer.echo(", ".join(f"{name} {value}" for name, value in versions.items()))
    raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version of this package and of the libraries it uses.")
             ) -> None:
    """The options given before a verb."""


def user_errors_as_one_line(command: Callable, after_user_error: str = "", after_memory_error: str = "") -> Callable:
    """Print a BenchError as `error: <message>` on stderr and exit with its code. An error raised
    in the user's own code (their problem's loading, model or loss) is one line too, naming the
    file and line, and so is memory running out; an error of this package's own keeps its
    traceback, for a bug report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as err:
            located = (err if isinstance(err, BenchError)
                       else storage_failure(err) or memory_failure(err, after_memory_error)
                       or UserCodeError.located(err))
            if located is None:
                raise
            message = str(located)
            if isinstance(located, UserCodeError):
                after = "nothing was stored; " if located.before_storing else after_user_error
                message += f" ({after}{SHOW_TRACEBACK}=1 shows the traceback)"
            err_console.print(Text.assemble(("error:", "red"), f" {message}"), soft_wrap=True)
            raise typer.Exit(located.exit_code) from None

    return wrapper


for name, command in (("run", run_command), ("compare", compare_command), ("status", status_command),
                      ("train", train_command), ("list", list_command), ("perf", perf_command),
                      ("delete", delete_command)):
    # A worker gives back the runs it holds before the error reaches here (StudyRunner.run).
    app.command(name)(user_errors_as_one_line(
        command, "the runs in hand were queued again; " if name == "run" else "",
        ". The runs in hand were queued again, and every run stored is kept. Fewer --jobs or a smaller "
        "--batch-runs needs less; if one run alone does not fit, a smaller problem (data or model) does"
        if name == "run" else ". A smaller problem (data or model) needs less"))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    keep_freed_memory()
    try:
        app(args=argv, prog_name="bench")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0
