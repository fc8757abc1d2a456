"""The typer application and the entry point that turns user errors into one clear line."""

from __future__ import annotations

import sys
import warnings

import click
import optuna
import typer

from bench.cli.common import err_console
from bench.cli.compare import compare_command
from bench.cli.listing import list_command
from bench.cli.perf import perf_command
from bench.cli.run import run_command
from bench.cli.train import train_command
from bench.errors import BenchError
from bench.training.allocator import keep_freed_memory

app = typer.Typer(
    name="bench",
    help="GradNorm Bench: run grid searches over static task weights next to GradNorm, and compare.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("run")(run_command)
app.command("compare")(compare_command)
app.command("train")(train_command)
app.command("list")(list_command)
app.command("perf")(perf_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a BenchError prints `error: ...` on one line and exits with its code."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    keep_freed_memory()
    try:
        app(args=argv, standalone_mode=False)
    except BenchError as err:
        err_console.print(f"[red]error:[/] {err}", soft_wrap=True)
        return err.exit_code
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def console_main() -> None:
    """The `bench` console script."""
    sys.exit(main())
