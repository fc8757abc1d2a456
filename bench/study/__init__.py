"""Studies: the study file, its arms, and the manager that runs them against a result store."""

from bench.study.manager import StudyRunner, check_data, run_study
from bench.study.spec import StudySpec

__all__ = ["StudySpec", "StudyRunner", "check_data", "run_study"]
