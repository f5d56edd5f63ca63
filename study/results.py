"""The results tables (trials.csv: one row per trial; epochs.csv: one row per trial-epoch) and the best trial."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cvae.metrics import METRICS

TRIALS_FILE, EPOCHS_FILE, SPEC_FILE = "trials.csv", "epochs.csv", "study.json"
BEST_PREFIX = "best_"
FINISHED = ("completed", "pruned")


@dataclass
class TrialRecord:
    """What is known about one trial: its params, every epoch it reported, and how it ended."""

    trial_id: str
    params: dict
    rows: list = field(default_factory=list)
    error: str | None = None
    checkpoint: str | None = None
    finished: bool = False  # Tune stopped it (completed, pruned or diverged), as opposed to still running
    planned_epochs: int | None = None


def trial_status(record: TrialRecord) -> str:
    if record.error:
        return "error"
    if not record.rows:
        return "pending"
    last = record.rows[-1].get("status")
    if last in ("diverged", "completed"):
        return last
    return "pruned" if record.finished else "running"


def _is_better(value: float, best: float, mode: str) -> bool:
    return value < best if mode == "min" else value > best


def build_tables(records: list[TrialRecord], metrics: tuple[str, ...], modes: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) DataFrames; best-epoch metrics are chosen by the first objective metric."""
    trial_rows, epoch_rows = [], []
    objective, mode = metrics[0], modes[0]
    for record in records:
        params = {f"param_{k}": v for k, v in record.params.items()}
        best_row = None
        for row in record.rows:
            epoch_rows.append({"trial_id": record.trial_id, **params,
                               **{k: v for k, v in row.items() if not isinstance(v, dict)}})
            value = row.get(objective)
            if value is not None and math.isfinite(value) and (
                    best_row is None or _is_better(value, best_row[objective], mode)):
                best_row = row
        last = record.rows[-1] if record.rows else {}
        summary = {
            "trial_id": record.trial_id, **params, "status": trial_status(record),
            "epochs_run": int(last.get("epoch", 0)), "epochs_planned": record.planned_epochs,
            "wall_time_s": last.get("time_total_s"), "node_id": last.get("node_id"),
            "nodes_used": len({row.get("node_id") for row in record.rows if row.get("node_id")}),
            "dataset_source": last.get("dataset_source"), "checkpoint": record.checkpoint,
            "error": (record.error or "").splitlines()[0][:300] if record.error else None,
        }
        summary.update({name: last.get(name, np.nan) for name in METRICS})
        summary["best_epoch"] = best_row["epoch"] if best_row else np.nan
        summary.update({BEST_PREFIX + name: (best_row or {}).get(name, np.nan) for name in METRICS})
        trial_rows.append(summary)
    return pd.DataFrame(trial_rows), pd.DataFrame(epoch_rows)


def write_tables(folder: Path, records: list[TrialRecord], metrics, modes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write trials.csv and epochs.csv atomically (a reader never sees half a file)."""
    trials, epochs = build_tables(records, metrics, modes)
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in ((trials, TRIALS_FILE), (epochs, EPOCHS_FILE)):
        scratch = folder / f".{name}.tmp"
        frame.to_csv(scratch, index=False)
        scratch.replace(folder / name)
    return trials, epochs


def load_records(folder: Path) -> list[TrialRecord]:
    """TrialRecords back from a results folder's tables (a resumed driver keeps what was already written)."""
    trials, epochs = (read_table(Path(folder) / name) for name in (TRIALS_FILE, EPOCHS_FILE))
    records = []
    for _, trial in trials.iterrows():
        params = {k[len("param_"):]: _plain(v) for k, v in trial.items() if k.startswith("param_")}
        rows = [] if epochs.empty else [
            {k: _plain(v) for k, v in row.items() if not k.startswith("param_") and k != "trial_id"}
            for _, row in epochs[epochs["trial_id"] == trial["trial_id"]].iterrows()]
        records.append(TrialRecord(
            str(trial["trial_id"]), params, rows, error=trial["error"] if isinstance(trial.get("error"), str) else None,
            checkpoint=trial["checkpoint"] if isinstance(trial.get("checkpoint"), str) else None,
            finished=trial["status"] != "running", planned_epochs=_plain(trial.get("epochs_planned"))))
    return records


def add_missing_epochs(records: list[TrialRecord], earlier: list[TrialRecord]) -> list[TrialRecord]:
    """`records` with any epoch only `earlier` holds put back, in epoch order.

    Tune's own history of a trial retried on a new node starts at its checkpoint; the epochs before it were
    reported live (and written to the tables) but would vanish if the final tables came from Tune alone.
    """
    by_id = {record.trial_id: record for record in earlier}
    for record in records:
        seen = {row.get("epoch") for row in record.rows}
        extra = [row for row in getattr(by_id.get(record.trial_id), "rows", []) if row.get("epoch") not in seen]
        if extra:
            record.rows = sorted(record.rows + extra, key=lambda row: row.get("epoch") or 0)
    return records


def read_table(path: Path) -> pd.DataFrame:
    """A CSV table of a results folder; empty if missing or empty."""
    try:
        return pd.read_csv(path, dtype={"trial_id": str})  # an all-digit id must not turn into a number
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _plain(value):
    """numpy scalars from CSV back to Python values (ints stay ints) so params rebuild a TrialConfig."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def save_spec(folder: Path, spec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1, default=list))


def load_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(trials, epochs, study spec dict) of a results folder; ValueError if it is not one."""
    folder = Path(folder)
    missing = [name for name in (TRIALS_FILE, SPEC_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a study results folder (missing {', '.join(missing)}); "
                         f"run python study/run.py --space FILE first")
    spec = json.loads((folder / SPEC_FILE).read_text())
    return read_table(folder / TRIALS_FILE), read_table(folder / EPOCHS_FILE), spec


def pareto_mask(trials: pd.DataFrame, columns, modes) -> np.ndarray:
    """True for rows not dominated on `columns` (each minimised or maximised per `modes`); NaN rows never are."""
    values = np.column_stack([trials[c].astype(float).to_numpy() * (1 if mode == "min" else -1)
                              for c, mode in zip(columns, modes)])
    finite = np.isfinite(values).all(axis=1)
    return np.array([ok and not any(np.all(other <= row) and np.any(other < row) for other in values[finite])
                     for row, ok in zip(values, finite)], dtype=bool)


def pareto_front(trials: pd.DataFrame, metrics, modes) -> pd.DataFrame:
    """Trials not dominated on the best-epoch objective metrics."""
    return trials[pareto_mask(trials, [BEST_PREFIX + m for m in metrics], modes)]


def best_trial(trials: pd.DataFrame, metrics, modes) -> pd.Series:
    """The best finished trial by its best epoch (multi-objective: Pareto front, then first metric)."""
    candidates = trials[trials["status"].isin(FINISHED)]
    candidates = candidates[np.isfinite(candidates[[BEST_PREFIX + m for m in metrics]].astype(float)).all(axis=1)]
    if candidates.empty:
        raise ValueError("no finished trial with finite objective values yet")
    if len(metrics) > 1:
        candidates = pareto_front(candidates, metrics, modes)
    column = BEST_PREFIX + metrics[0]
    order = candidates[column].astype(float)
    return candidates.loc[order.idxmin() if modes[0] == "min" else order.idxmax()]
