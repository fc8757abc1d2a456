"""The result store: runs as trials of Optuna studies in an Optuna storage, and tidy exports."""

from bench.store.results import ResultStore
from bench.store.storage import DEFAULT_STORAGE, open_storage

__all__ = ["ResultStore", "DEFAULT_STORAGE", "open_storage"]
