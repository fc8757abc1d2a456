"""Where training runs: a device string ('auto', 'cpu', 'cuda', 'cuda:N') checked against this machine."""

from __future__ import annotations

import re

import torch

from bench.errors import ConfigError

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(spec: str, *, field: str = "device", source: str | None = None) -> torch.device:
    """'auto' is CUDA when available, else the CPU. A malformed string, or a CUDA device this
    machine lacks, is a ConfigError naming `field` (torch's own errors are a traceback and a
    list of every device type it knows)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(spec, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", spec):
        raise ConfigError(field, DEVICE_CHOICES, spec, source=source)
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(field, f"a device this machine has: torch {torch.__version__} sees no CUDA "
                              "device here ('auto' picks the CPU)", spec, source=source)
        if device.index is not None and device.index >= count:
            raise ConfigError(field, f"a CUDA device this machine has: cuda:0 to cuda:{count - 1}",
                              spec, source=source)
    return device
