"""Tidy tables of a study's runs, for pandas, spreadsheets and the comparison.

`runs_table` has one row per finished run with its parameters and results as columns; per-task
values are columns named `<what>_<task>` (e.g. `test_loss_task0`). `write_runs_table` saves it as
CSV and Parquet under `results/<study>/`; the Parquet file names the storage it was read from.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.store.results import ResultStore, rounded
from bench.store.storage import storage_identity

RESULTS_DIR = Path("results")
# Kept in runs.parquet's pandas metadata (DataFrame.attrs): the storage the table was read from,
# and when the study was created there (a study deleted and run again is another study).
STORAGE_ATTR = "bench_storage"
CREATED_ATTR = "bench_study_created"


def runs_table(store: ResultStore, study: str, entries: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per finished run; `entries` are the study's `store.records`, if read already."""
    return runs_frame(store.require_manifest(study), store.records(study) if entries is None else entries)


def runs_frame(manifest: dict[str, Any], entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished run of the study with this manifest, from its `store.records`."""
    kinds = manifest.get("kinds", {})
    tasks = manifest.get("task_names", [])
    rows = [_row(entry, kinds.get(entry["arm"], ""), tasks) for entry in entries]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # A GradNorm static run retrains its GradNorm run's weights, under the same key: it takes that
    # run's alpha, which its own parameters (the weights) lack. Left empty, `groupby("alpha")`
    # dropped every static run.
    alphas = frame.set_index(["arm", "run_key"]).alpha
    for arm, source in manifest.get("gradnorm_static_sources", {}).items():
        static = frame.arm == arm
        frame.loc[static, "alpha"] = [alphas.get((source, key)) for key in frame.run_key[static]]
    # A run without a record (stored by a worker that failed before training): the rate its key
    # names (lr=0.002/seed=0), else its arm's.
    missing = frame.lr.isna()
    if missing.any():
        from_key = pd.to_numeric(frame.run_key[missing].str.extract(r"(?:^|/)lr=([^/]+)/")[0], errors="coerce")
        frame.loc[missing, "lr"] = from_key.fillna(frame.arm[missing].map(arm_learning_rates(manifest)))
    frame = _typed(frame)
    return in_study_order(frame.sort_values("run_key", key=_natural_order, kind="stable"), kinds)


def arm_learning_rates(manifest: dict[str, Any]) -> dict[str, float | None]:
    """Each arm's network learning rate, from the study's stored configuration: its own
    `network_lr`, its GradNorm arm's for a GradNorm static arm without one, else `[budget] lr`;
    None for an arm trained at several (each run's key names its rate).

    >>> arm_learning_rates({"identity": {"budget": {"lr": 0.001}, "arms": {"gradnorm": {"network_lr": 0.004},
    ...     "gradnorm-static": {}, "equal": {}, "dwa": {"network_lr": [0.01]}, "rlw": {"network_lr": [0.1, 0.2]}}},
    ...     "gradnorm_static_sources": {"gradnorm-static": "gradnorm"}})
    {'gradnorm': 0.004, 'gradnorm-static': 0.004, 'equal': 0.001, 'dwa': 0.01, 'rlw': None}
    """
    identity = manifest.get("identity") or {}
    arms = identity.get("arms") or {}
    study_lr = (identity.get("budget") or {}).get("lr")
    sources = manifest.get("gradnorm_static_sources", {})

    def own(arm: str) -> Any:
        return (arms.get(arm) or {}).get("network_lr")

    rates = {}
    for arm in arms:
        lr = own(arm) if own(arm) is not None else own(sources.get(arm, ""))
        if isinstance(lr, list):
            rates[arm] = lr[0] if len(lr) == 1 else None
        else:
            rates[arm] = study_lr if lr is None else lr
    return rates


# Columns of text; every other column of the runs table holds numbers.
_TEXT_COLUMNS = ("study", "arm", "kind", "run_key", "status", "reason", "balancer", "device")


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each column's type fixed by its name, not by the values this study happens
    to have: a column empty in one study (alpha, without GradNorm) was stored in Parquet as type
    null, and reading it with another study's tables failed (pyarrow cannot cast double to null)."""
    def numbers(column: pd.Series) -> bool:
        return column.map(lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool)).all()

    types = {c: "str" if c in _TEXT_COLUMNS else "float64" for c in frame
             if (frame[c].isna().all() if c in _TEXT_COLUMNS else frame[c].dtype == object and numbers(frame[c]))}
    return frame.astype(types)


def in_study_order(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """`frame`'s rows with the arms in the study file's order (the manifest's `kinds` keeps it,
    as its author listed them), each arm's rows in their order; arms unknown to it last."""
    order = {arm: i for i, arm in enumerate([*kinds, *sorted(set(frame.arm) - set(kinds))])}
    return frame.sort_values("arm", key=lambda arms: arms.map(order), kind="stable").reset_index(drop=True)


def _natural_order(column: pd.Series) -> pd.Series:
    """Run keys by their numbers' values: alpha=0, 0.12, 0.5, 1, 1.5, 3 and seed=2 before seed=10
    (as text, "alpha=0.5/" sorted before "alpha=0/" and "seed=10" before "seed=2").

    >>> keys = pd.Series(["alpha=0.5/seed=10", "alpha=0/seed=2", "alpha=0.5/seed=2"], name="run_key")
    >>> keys.sort_values(key=_natural_order).tolist()
    ['alpha=0/seed=2', 'alpha=0.5/seed=2', 'alpha=0.5/seed=10']
    """
    if column.name != "run_key":
        return column
    # Text and numbers alternate in the split, so two keys always compare text with text.
    return column.map(lambda key: tuple(float(part) if i % 2 else part
                                        for i, part in enumerate(_NUMBER.split(key))))


_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def _row(entry: dict[str, Any], kind: str, tasks: list[str]) -> dict[str, Any]:
    record = entry["record"] or {}
    config = record.get("config", {})
    attrs = entry["user_attrs"]
    row: dict[str, Any] = {
        "study": entry["study"], "arm": entry["arm"], "kind": kind, "run_key": entry["run_key"],
        "trial": entry["trial"], "status": entry["status"], "reason": entry["reason"],
        "seed": attrs.get("seed", entry["params"].get("seed")),
        "data_seed": config.get("data_seed"),
        "balancer": config.get("balancer"),
        "alpha": entry["params"].get("alpha"),
        "lr": (config.get("budget") or {}).get("lr"),
        "selection_value": entry["value"],
    }
    for name in ("normalized_train_loss", "normalized_val_loss", "normalized_test_loss",
                 "normalized_overfitting_gap", "wall_time_s", "batch_wall_time_s", "batch_runs",
                 "steps_done", "device", "failed_step"):
        row[name] = record.get(name)
    # GradNorm's health: steps with a weight <= 0 (the paper has no floor), steps a floor bound.
    balancer_stats = record.get("balancer_stats") or {}
    for name in ("nonpositive_weight_steps", "floor_binding_steps"):
        row[name] = balancer_stats.get(name)
    row["norm_target_gap"] = norm_target_gap(record)
    initial_losses = balancer_stats.get("initial_losses")
    weights = attrs.get("weights")
    for i, task in enumerate(tasks):
        row[f"weight_{task}"] = weights[i] if weights else None
        for what in ("mean_weights", "tail_mean_weights", "final_weights", "train_loss", "val_loss",
                     "test_loss", "overfitting_gap"):
            values = record.get(what)
            row[f"{what.replace('_weights', '_weight')}_{task}"] = values[i] if values else None
        if initial_losses:
            row[f"initial_loss_{task}"] = initial_losses[i]
        for split, metrics in (record.get("metrics") or {}).items():
            for metric, values in metrics.items():
                row[f"{split}_{metric}_{task}"] = values[i]
    return row


# A run's identity and parameters, repeated on each of its rows in the long table.
_RUN_COLUMNS = ("study", "arm", "kind", "run_key", "trial", "status", "seed", "data_seed", "balancer", "alpha",
                "lr")
# Not measures: text, and the selection value (the normalised validation loss, under Optuna's name).
_NOT_MEASURES = ("reason", "device", "selection_value")
SPLITS = ("train", "val", "test")


def metrics_table(runs: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """The runs table in long form, as benchopt keeps results: one row per run and measure, with
    the run's identity and parameters (a static run's weights) beside it, and the measure as
    `metric`, `split` and `task` (empty where it has none) and `value`. A measure the run lacks
    (a failed run's test loss, a static run's GradNorm counts) has no row.

    >>> runs = pd.DataFrame({"arm": ["grid"], "run_key": ["w=2,0/seed=0"], "weight_a": [2.0],
    ...                      "weight_b": [0.0], "normalized_test_loss": [1.5], "test_loss_a": [0.5],
    ...                      "test_rms_b": [1.0], "mean_weight_a": [2.0], "wall_time_s": [0.1]})
    >>> metrics_table(runs, ["a", "b"])[["weight_a", "metric", "split", "task", "value"]]
       weight_a           metric split task  value
    0       2.0  normalized_loss  test         1.5
    1       2.0             loss  test    a    0.5
    2       2.0              rms  test    b    1.0
    3       2.0      mean_weight          a    2.0
    4       2.0      wall_time_s               0.1
    """
    keep = [c for c in (*_RUN_COLUMNS, *(f"weight_{t}" for t in tasks)) if c in runs]
    measures = {c: _measure(c, tasks) for c in runs.columns if c not in keep and c not in _NOT_MEASURES}
    long = runs.reset_index(drop=True).melt(id_vars=keep, value_vars=list(measures), var_name="column",
                                            value_name="value", ignore_index=False)
    long = long.sort_index(kind="stable").reset_index(drop=True)  # each run's measures together
    parts = pd.DataFrame([measures[c] for c in long.column], columns=["metric", "split", "task"])
    long = pd.concat([long.drop(columns=["column", "value"]), parts, long.value.astype(float)], axis=1)
    return long[long.value.notna()].reset_index(drop=True)


# The per-step series of a record, as `metric` in the curves table: its losses at every
# evaluation (split by split), its weights and GradNorm's gradient norms at W and their targets.
_TRAJECTORIES = {"weight": "weights_trajectory", "grad_norm": "grad_norms", "target_norm": "target_norms"}


def task_normalised(losses: Sequence[float], normalisers: Sequence[float]) -> float:
    """One evaluation's task-normalised loss: the sum over tasks of loss / normaliser.

    >>> task_normalised([2.0, 20.0], [1.0, 10.0])
    4.0
    """
    return sum(loss / n for loss, n in zip(losses, normalisers))


def curves_table(runs: pd.DataFrame, entries: list[dict[str, Any]], tasks: Sequence[str]) -> pd.DataFrame:
    """Every run's curves in long form, one row per run, step and measure, with the run's
    identity and parameters as in the metrics table: `loss` and `normalized_loss` on each split
    at every evaluation step, and, from the steps kept of each trajectory (at most 500, a flat
    stretch by its two ends), `weight`, and GradNorm's `grad_norm` (G_i at W) and `target_norm`
    (its target G_bar r_i^alpha). The storage keeps these series to 4 significant digits (the
    runs table's final losses are exact). A failed run's curves stop where it failed. For seaborn:
    `sns.relplot(data=curves.query("metric == 'loss' and split == 'test'"), x="step", y="value",
    hue="arm", col="task", kind="line")`.

    >>> runs = pd.DataFrame({"arm": ["equal"], "run_key": ["seed=0"], "seed": [0]})
    >>> record = {"normalisers": [1.0, 4.0], "curves": {"step": [0, 10], "test": [[1.0, 8.0], [0.5, 4.0]]},
    ...           "weights_trajectory": [[0, 1.0, 1.0], [9, 1.0, 1.0]], "traces": {}}
    >>> curves_table(runs, [{"arm": "equal", "run_key": "seed=0", "record": record}], ["a", "b"])
         arm run_key  seed  step           metric split task  value
    0  equal  seed=0     0     0             loss  test    a    1.0
    1  equal  seed=0     0     0             loss  test    b    8.0
    2  equal  seed=0     0     0  normalized_loss  test         3.0
    3  equal  seed=0     0     0           weight          a    1.0
    4  equal  seed=0     0     0           weight          b    1.0
    5  equal  seed=0     0     9           weight          a    1.0
    6  equal  seed=0     0     9           weight          b    1.0
    7  equal  seed=0     0    10             loss  test    a    0.5
    8  equal  seed=0     0    10             loss  test    b    4.0
    9  equal  seed=0     0    10  normalized_loss  test         1.5
    """
    keep = [c for c in (*_RUN_COLUMNS, *(f"weight_{t}" for t in tasks)) if c in runs]
    columns: dict[str, list[Any]] = {"run": [], "step": [], "metric": [], "split": [], "task": [], "value": []}

    def add(run: int, step: int, metric: str, split: str, values: Sequence[float], named: Sequence[str]) -> None:
        for task, value in zip(named, values):
            for name, item in (("run", run), ("step", int(step)), ("metric", metric), ("split", split),
                               ("task", task), ("value", value)):
                columns[name].append(item)

    order = {key: i for i, key in enumerate(zip(runs.arm, runs.run_key))}
    for entry in entries:
        run, record = order.get((entry["arm"], entry["run_key"])), entry.get("record")
        if run is None or not record:
            continue
        curves = record.get("curves") or {}
        normalisers = record.get("normalisers") or []
        for j, step in enumerate(curves.get("step", [])):
            for split in SPLITS:
                if split in curves:
                    losses = curves[split][j]
                    add(run, step, "loss", split, losses, tasks)
                    # Rounded as the stored losses are (4 significant digits): more would be false precision.
                    normalized = task_normalised(losses, normalisers)
                    add(run, step, "normalized_loss", split, [rounded(normalized)], [""])
        traces = {**(record.get("traces") or {}), "weights_trajectory": record.get("weights_trajectory") or []}
        for metric, name in _TRAJECTORIES.items():
            for step, *values in traces.get(name) or []:
                add(run, step, metric, "", values, tasks)
    long = pd.DataFrame(columns).astype({"run": "int64", "step": "int64", "value": "float64"})
    long = long.sort_values(["run", "step"], kind="stable").reset_index(drop=True)  # each run's steps in order
    ids = runs.reset_index(drop=True)[keep].iloc[long.pop("run").to_numpy()].reset_index(drop=True)
    return pd.concat([ids, long], axis=1)


def _measure(column: str, tasks: Sequence[str]) -> tuple[str, str, str]:
    """(metric, split, task) of a runs-table column: `val_loss_task0` is ("loss", "val",
    "task0"), `normalized_test_loss` ("normalized_loss", "test", ""), `wall_time_s` itself.
    Tasks named like the end of another's columns are told apart:

    >>> _measure("train_loss_a", ["a", "loss_a"]), _measure("mean_weight_loss_a", ["a", "loss_a"])
    (('loss', 'train', 'a'), ('mean_weight', '', 'loss_a'))
    """
    for task in sorted(tasks, key=len, reverse=True):  # "loss_a" before "a"
        if column.endswith(f"_{task}") and column[:-len(task) - 1] not in SPLITS:  # "train" alone is no measure
            stem = column[:-len(task) - 1]
            split, _, metric = stem.partition("_")
            return (metric, split, task) if split in SPLITS else (stem, "", task)
    match = re.fullmatch(r"normalized_(train|val|test)_loss", column)
    return ("normalized_loss", match[1], "") if match else (column, "", "")


def norm_target_gap(record: dict[str, Any]) -> float | None:
    """How far a GradNorm run's gradient norms at W stayed from GradNorm's own targets over the
    tail window (the last `tail_fraction` of its steps): with G_i / G_bar and its target
    r_i^alpha averaged over the recorded steps there, sum_i |mean G_i/G_bar - mean r_i^alpha| /
    sum_i mean r_i^alpha; 0 means on target. Averaged before they are compared, so that
    mini-batch noise, which scatters each step's norms around their targets, does not count:
    step by step, runs that balanced read 7% away on the toy problem and 30% on another.
    None for other balancers and for runs stored without the targets."""
    traces = record.get("traces") or {}
    norms, targets = traces.get("grad_norms"), traces.get("target_norms")
    steps = record.get("steps_done") or 0
    if not norms or not targets or steps < 1:
        return None
    start = steps - max(1, math.ceil((record.get("tail_fraction") or 1.0) * steps))
    relative_norms, relative_targets = [], []
    for (step, *g), (_, *target) in zip(norms, targets):
        mean = sum(g) / len(g)
        if step >= start and mean > 0 and all(map(math.isfinite, [*g, *target])):
            relative_norms.append([v / mean for v in g])
            relative_targets.append([v / mean for v in target])
    if not relative_norms:
        return None
    norm_means = [sum(column) / len(column) for column in zip(*relative_norms)]
    target_means = [sum(column) / len(column) for column in zip(*relative_targets)]
    return sum(abs(a - b) for a, b in zip(norm_means, target_means)) / sum(target_means)


def write_runs_table(store: ResultStore, study: str, folder: Path | None = None,
                     table: pd.DataFrame | None = None,
                     entries: list[dict[str, Any]] | None = None) -> tuple[list[Path], str | None]:
    """Write a study's tables: `runs` and `metrics` (its long form) as CSV and Parquet, and
    `curves` as Parquet (`table` and the `store.records` entries, if the caller has read them);
    return their paths, and the other storage whose tables of a study of the same name they
    replaced (None if they replaced none).

    Tables of the same study with more runs are kept as they are: they come from a worker that
    read the storage after this one, and a study only gains runs."""
    table = runs_table(store, study) if table is None else table
    manifest = store.require_manifest(study)
    table.attrs = {STORAGE_ATTR: storage_identity(store.url), CREATED_ATTR: manifest.get("created")}
    folder = (folder or RESULTS_DIR) / study
    csv, parquet = folder / "runs.csv", folder / "runs.parquet"
    # The curves as Parquet only: as CSV they were 24 times larger (5.6 MB for the default study),
    # and a table of one row per run, step and measure is for pandas, not a spreadsheet.
    paths = [csv, parquet, folder / "metrics.csv", folder / "metrics.parquet", folder / "curves.parquet"]
    written, rows = _stamp(parquet)
    if written == table.attrs and rows > len(table):
        return paths, None
    folder.mkdir(parents=True, exist_ok=True)
    tasks = manifest.get("task_names", [])
    long = metrics_table(table, tasks) if len(table) else table
    curves = curves_table(table, store.records(study) if entries is None else entries, tasks) if len(table) else table
    # The long tables first: runs.parquet's stamp says the tables are whole and current.
    long.attrs = curves.attrs = table.attrs
    replace_whole(paths[2], lambda path: long.to_csv(path, index=False))
    replace_whole(paths[3], lambda path: long.to_parquet(path, index=False))
    replace_whole(paths[4], lambda path: curves.to_parquet(path, index=False))
    replace_whole(csv, lambda path: table.to_csv(path, index=False))
    replace_whole(parquet, lambda path: table.to_parquet(path, index=False))
    other = written.get(STORAGE_ATTR)
    return paths, (other if other not in (None, table.attrs[STORAGE_ATTR]) else None)


def _stamp(parquet: Path) -> tuple[dict[str, Any], int]:
    """A runs.parquet's storage and study stamp, and its rows; ({}, 0) for a missing file, an
    unreadable one, or one written before tables were stamped."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(parquet)
        attrs = json.loads((metadata.metadata or {}).get(b"PANDAS_ATTRS", b"{}"))
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return {}, 0
    if not isinstance(attrs, dict) or not isinstance(attrs.get(STORAGE_ATTR), str):
        return {}, 0
    return {k: attrs.get(k) for k in (STORAGE_ATTR, CREATED_ATTR)}, metadata.num_rows


def replace_whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write` a file beside `path`, then rename it over `path`. Workers that finish together
    each leave a whole table, never one interleaved with another's, and a write that fails (a
    full disk) leaves the previous table as it was."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as err:
        if err.filename == str(partial):  # name the file the user knows, not our hidden one
            err.filename = str(path)
        raise
    finally:
        partial.unlink(missing_ok=True)
