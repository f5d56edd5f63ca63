"""A study's vocabulary: its files, its table columns, its trial statuses, and one trial's record and rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cvae.metrics import (CLASSIFIER_ACCURACY, CLASSIFIER_SHA256, FID_SAMPLES, METRICS, STATUS_COMPLETED, STATUS_DIVERGED,
                          STATUS_RUNNING, REAL_METRICS, REAL_PREFIX, TEST_PREFIX)

TRIALS_FILE, EPOCHS_FILE, SPEC_FILE, LOCK_FILE = "trials.csv", "epochs.csv", "study.json", ".driver.lock"
# What study/report.py draws from the checkpoints once (so a folder stays reportable without them), and writes.
DETAILS_FILE, SAMPLES_FILE, SUMMARY_FILE, FIGURES_DIR = "details.csv", "samples.npz", "summary.md", "figures"
PARAM_PREFIX = "param_"
FLAGS_KEY = "flags"  # study.json: the command-line flags a --resume must repeat
READER_STORAGE_KEY = "reader_storage"  # never written: the URI a reader opened the study by (its endpoint)
STARTED_AT = "started_at"  # trials.csv column: when the trial first started (unix seconds)
ERROR_KEY = "error"  # a trial's error message: a column of trials.csv, a key of the trainable's failure report
RETRIES_KEY = "retries"  # trials.csv: why Tune restarted a trial from its checkpoint (a lost worker or node), "; "-joined
# A trial's status in trials.csv. Epoch rows carry cvae.train's own (running / completed / diverged); the
# study adds what only it knows. Nothing else is ever written, and nothing is relabelled.
STATUS_PRUNED = "pruned"  # the scheduler (ASHA) stopped it; never anything else
STATUS_ERROR = "error"  # an exception ended it; the `error` column says which
STATUS_INTERRUPTED = "interrupted"  # running when the driver was stopped (Ctrl-C, SIGTERM); --resume continues it
STATUS_PENDING = "pending"  # created, no epoch reported yet
FINISHED = (STATUS_COMPLETED, STATUS_PRUNED)  # trials a best trial may be chosen from (see best_trial)
ENDED = (STATUS_COMPLETED, STATUS_PRUNED, STATUS_DIVERGED, STATUS_ERROR)  # nothing more will happen to these
UNFINISHED = (STATUS_RUNNING, STATUS_INTERRUPTED, STATUS_PENDING)
STATUSES = ENDED + UNFINISHED  # everything trials.csv may say


@dataclass
class TrialRecord:
    """What is known about one trial: its params, every epoch it reported, and how it ended."""

    trial_id: str
    params: dict
    rows: list = field(default_factory=list)
    error: str | None = None
    checkpoint: str | None = None
    pruned: bool = False  # the scheduler decided to stop it (Tune marks the result that carried the decision)
    interrupted: bool = False  # it was running when the driver stopped
    planned_epochs: int | None = None
    started_at: float | None = None  # unix time Tune first started it (kept across resumes): the start order
    retries: list = field(default_factory=list)  # why each restart from a checkpoint happened (worker_loss_cause)


def trial_status(record: TrialRecord) -> str:
    """The one status of a trial, from what it reported and what the study decided (see the STATUS_ names)."""
    if record.error:
        return STATUS_ERROR
    last = record.rows[-1].get("status") if record.rows else None
    if last in (STATUS_DIVERGED, STATUS_COMPLETED):
        return last
    if record.pruned:
        return STATUS_PRUNED
    if record.interrupted:
        return STATUS_INTERRUPTED
    return STATUS_RUNNING if record.rows else STATUS_PENDING


def param_column(name: str) -> str:
    """The trials.csv / epochs.csv column of a searched or grid parameter."""
    return PARAM_PREFIX + name


def trial_params(row) -> dict:
    """{parameter: value} of a trials.csv row (a Series or dict)."""
    return {key[len(PARAM_PREFIX):]: row[key] for key in row.keys() if str(key).startswith(PARAM_PREFIX)}


def _param_columns(record: TrialRecord) -> dict:
    return {param_column(name): value for name, value in record.params.items()}


def epoch_row(record: TrialRecord, row: dict) -> dict:
    """One line of epochs.csv: the trial, its params, then what the epoch reported."""
    return {"trial_id": record.trial_id, **_param_columns(record),
            **{k: v for k, v in row.items() if not isinstance(v, dict)}}


def trial_row(record: TrialRecord) -> dict:
    """One line of trials.csv: params, status, and the metrics of the trial's last epoch.

    The last epoch is the trial's result (the model it ended with, the checkpoint it keeps, the value ASHA and
    Optuna saw): validation metrics under their own names, and for a completed trial the test split's as test_*.
    """
    last = record.rows[-1] if record.rows else {}
    summary = {
        "trial_id": record.trial_id, **_param_columns(record), "status": trial_status(record),
        STARTED_AT: record.started_at,
        "epochs_run": int(last.get("epoch", 0)), "epochs_planned": record.planned_epochs,
        "wall_time_s": last.get("time_total_s"), "node_id": last.get("node_id"),
        "nodes_used": len({row.get("node_id") for row in record.rows if row.get("node_id")}),
        "dataset_source": last.get("dataset_source"), CLASSIFIER_ACCURACY: last.get(CLASSIFIER_ACCURACY, np.nan),
        CLASSIFIER_SHA256: last.get(CLASSIFIER_SHA256),
        "checkpoint": record.checkpoint, ERROR_KEY: record.error.splitlines()[0][:300] if record.error else None,
        RETRIES_KEY: "; ".join(record.retries) or None,
    }
    summary.update({name: last.get(name, np.nan) for name in METRICS})
    summary.update({name: last.get(name, np.nan) for name in (FID_SAMPLES, TEST_PREFIX + FID_SAMPLES, "cas_seconds")})
    summary.update({REAL_PREFIX + name: last.get(REAL_PREFIX + name, np.nan) for name in REAL_METRICS})
    return summary


MODEL = "model"  # the column naming a trial's group: its preset, or its grid point without the seed
SEED_PARAMETER = PARAM_PREFIX + "seed"


def label_models(frame: pd.DataFrame) -> pd.Series:
    """A group label per row: the preset if the study varied presets, else its parameters without the seed."""
    if param_column("preset") in frame:
        return frame[param_column("preset")].astype(str)
    columns = [c for c in frame.columns if c.startswith(PARAM_PREFIX) and c != SEED_PARAMETER]
    if not columns:
        return frame["trial_id"].astype(str)
    return frame[columns].apply(
        lambda row: ", ".join(f"{c[len(PARAM_PREFIX):]}={short_text(v)}" for c, v in row.items()), axis=1)


def short_text(value) -> str:
    """A value as the console and the model labels show it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def with_models(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with the MODEL column added (if missing)."""
    frame = frame.copy()
    if MODEL not in frame:
        frame[MODEL] = label_models(frame)
    return frame
