"""The comparison of a study's arms, read from the result store."""

from bench.compare.analysis import Comparison
from bench.compare.build import build_comparison, load_comparison

__all__ = ["Comparison", "build_comparison", "load_comparison"]
