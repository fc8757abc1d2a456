"""What a reader needs to reproduce a result: software versions, commit, machine and device."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("gradnorm-bench", "torch", "optuna", "numpy", "pandas", "scipy", "seaborn", "matplotlib",
            "joblib")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the source tree the package runs from, with '+dirty' for local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def environment(*, device: bool = True) -> dict[str, Any]:
    """Versions, commit, platform and host; and the device, which loads torch (a report, which
    trains nothing, leaves it out: torch took 2 to 4 s of `bench compare`)."""
    return {
        "versions": package_versions(),
        "commit": git_commit(),
        "platform": platform.platform(),
        "host": platform.node(),
        **({"device": device_description()} if device else {}),
    }
