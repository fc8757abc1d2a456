"""GradNorm Bench: compare GradNorm with grid searches over static task weights."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gradnorm-bench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
