"""The `bench` command line: small verbs over the package (train, run, compare, status, perf)."""

from bench.cli.app import app, main

__all__ = ["app", "main"]
