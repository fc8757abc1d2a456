"""`python -m bench` and the `bench` console script."""

import sys


def console_main() -> None:
    """Run the CLI and exit with its code. Loading its libraries takes about half a second; a
    Ctrl-C then exits quietly, as one later does, rather than with a traceback from an import."""
    try:
        from bench.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
