"""Benchmarks of the training engine (`bench perf`)."""

from bench.perf.benchmark import append_csv, run_benchmark

__all__ = ["run_benchmark", "append_csv"]
