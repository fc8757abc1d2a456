"""The probe scripts under docs/probes, which the README's findings cite: they run, and each
variant does what its name says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bench.balancers import build_balancer_params
from bench.problems.base import TaskSpec
from bench.problems.losses import squared_error
from tests.test_study_spec import TINY

PROBES = Path(__file__).resolve().parent.parent / "docs" / "probes"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, PROBES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uncertainty_parts_keeps_the_balance_or_the_scale_of_uncertainty_weighting(tmp_path, capsys):
    parts = load("uncertainty_parts")
    tasks = [TaskSpec(name, "regression", loss=squared_error) for name in "abc"]
    options = build_balancer_params("uncertainty", {})
    made = {cls.name: cls([options] * 2, tasks, device=torch.device("cpu"), dtype=torch.float64, steps_per_epoch=4)
            for cls in (parts.Uncertainty, parts.UncertaintyBalance, parts.UncertaintyScale)}
    for balancer in made.values():
        with torch.no_grad():
            balancer.log_variance.copy_(torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.5, 3.0]], dtype=torch.float64))
    w = made["uncertainty"].weights()
    balance, scale = made["uncertainty-balance"].weights(), made["uncertainty-scale"].weights()
    assert torch.allclose(balance.sum(dim=1), torch.full((2,), 3.0, dtype=torch.float64))
    assert torch.allclose(balance / balance[:, :1], w / w[:, :1])  # the balance kept
    assert torch.allclose(scale, w.mean(dim=1, keepdim=True).expand(-1, 3))  # the scale kept, equal balance
    # The whole probe on a tiny study: every arm on every seed, and its sentences.
    (tmp_path / "tiny.toml").write_text(TINY)
    parts.main(["--study", str(tmp_path / "tiny.toml"), "--seeds", "0-1"])
    out = capsys.readouterr().out
    table, sentences = out.split("\n")[:5], out.strip().split("\n")[5:]
    assert [line.split()[0] for line in table[1:]] == list(parts.ARMS)
    assert [s.split()[0] for s in sentences] == ["uncertainty", *["uncertainty-balance"] * 2,
                                                 *["uncertainty-scale"] * 2]
    assert all("on 2/2 seeds" in s or "of 2 seeds" in s for s in sentences)
    with pytest.raises(SystemExit, match=r"^error: .*no-such-study.*") as exit_:
        parts.main(["--study", "no-such-study"])
    assert "Traceback" not in str(exit_.value)
    runs = parts.probe(str(tmp_path / "tiny.toml"), [0])
    weights = dict(zip(runs.arm, runs.mean_weights))
    assert sum(weights["uncertainty-balance"]) == pytest.approx(2.0)
    assert weights["uncertainty-scale"][0] == pytest.approx(weights["uncertainty-scale"][1])
    assert weights["uncertainty"][0] != pytest.approx(weights["uncertainty"][1])
