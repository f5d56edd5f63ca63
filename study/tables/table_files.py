"""The results tables on disk (trials.csv: one row per trial; epochs.csv: one row per trial-epoch; study.json):
writing them atomically, reading them back, and refusing what cannot be a study's."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from cvae.metrics import CLASSIFIER_ACCURACY, CLASSIFIER_SHA256, FID_SAMPLES, METRICS, REAL_PREFIX, TEST_PREFIX
from study.tables.records import (DETAILS_FILE, ENDED, EPOCHS_FILE, ERROR_KEY, FIGURES_DIR, FLAGS_KEY, PARAM_PREFIX,
                                   READER_STORAGE_KEY, RETRIES_KEY, SAMPLES_FILE, SPEC_FILE, STARTED_AT,
                                   STATUS_INTERRUPTED, STATUS_PRUNED, STATUSES, SUMMARY_FILE, TRIALS_FILE, TrialRecord,
                                   epoch_row, trial_params, trial_row)
from study.store.storage import display, fetch_folder, is_uri, reached_through, within


def relative_path(folder: Path, path) -> str | None:
    """`path` relative to the study folder when it lies inside it (results stay valid when the folder moves);
    other places (a cluster's shared storage, a cloud URI) are kept as they are."""
    if not isinstance(path, str) or not path or is_uri(path) or not Path(path).is_absolute():
        return path if isinstance(path, str) and path else None
    try:
        return str(Path(path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return path


def resolve_path(folder: Path, path) -> Path | str | None:
    """The inverse of relative_path: a table's path as a usable Path, a URI as its text (None when there is none)."""
    if not isinstance(path, str) or not path:
        return None
    if is_uri(path):
        return path
    return Path(path) if Path(path).is_absolute() else Path(folder) / path


def _relocatable(frame: pd.DataFrame, folder: Path) -> pd.DataFrame:
    if "checkpoint" in frame:
        frame["checkpoint"] = [relative_path(folder, value) for value in frame["checkpoint"]]
    return frame


def replace_atomically(content: pd.DataFrame | str, path: Path) -> None:
    """Write a table (as CSV) or a text to `path` in one step: a reader, or a run killed meanwhile, never sees half."""
    scratch = path.with_name(f".{path.name}.tmp")
    if isinstance(content, str):
        scratch.write_text(content)
    else:
        content.to_csv(scratch, index=False)
    scratch.replace(path)


def write_trials(folder: Path, records: list[TrialRecord]) -> pd.DataFrame:
    """Rewrite trials.csv (one row per trial) atomically."""
    # no trial yet still writes a header: an empty file is what a CSV reader refuses ("No columns to parse")
    trials = _relocatable(pd.DataFrame([trial_row(record) for record in records]) if records
                          else pd.DataFrame(columns=["trial_id", "status"]), folder)
    folder.mkdir(parents=True, exist_ok=True)
    replace_atomically(trials, folder / TRIALS_FILE)
    return trials


def write_tables(folder: Path, records: list[TrialRecord]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write trials.csv and epochs.csv whole and atomically (the end of a run: one row per trial-epoch)."""
    trials = write_trials(folder, records)
    rows = [epoch_row(record, row) for record in records for row in record.rows]
    epochs = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["trial_id", "epoch"])
    replace_atomically(epochs, folder / EPOCHS_FILE)
    return trials, epochs


class EpochLog:
    """epochs.csv while a study runs: append-only, one line per reported epoch, on disk before it is printed.

    Appending is O(1) per epoch and a single write() of a whole line, so a SIGKILL leaves no half row. A row
    with a column the file lacks rewrites it once with the wider header (rare: a study's keys are fixed). The
    header is read again whenever the file was replaced since (write_tables at the end of a run, a resume): a row
    laid out for the old header would leave a table that a CSV reader refuses or misreads.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] | None = None
        self.identity = None
        self._read_header()

    def _read_header(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            self.columns, self.identity = None, None
            return
        self.identity = (status.st_ino, status.st_dev)
        with self.path.open(newline="") as handle:
            self.columns = next(csv.reader(handle), None) if status.st_size else None

    def append(self, row: dict) -> None:
        try:
            status = self.path.stat()
            current = (status.st_ino, status.st_dev)
        except FileNotFoundError:
            current = None
        if current != self.identity:  # replaced (or removed) by another writer since the header was read
            self._read_header()
        if self.columns is None or set(row) - set(self.columns):
            self._widen(row)
            return
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow(["" if _missing(row.get(c)) else row.get(c) for c in self.columns])
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.getvalue().encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _widen(self, row: dict) -> None:
        frame = read_table(self.path)
        frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True) if len(frame) else pd.DataFrame([row])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(frame, self.path)
        self._read_header()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def load_records(folder: Path) -> list[TrialRecord]:
    """TrialRecords back from a results folder's tables (a resumed driver keeps what was already written).

    epochs.csv is the log: a trial's epoch reported twice (re-run after a resume) keeps its last report.
    """
    trials, epochs = (read_table(Path(folder) / name) for name in (TRIALS_FILE, EPOCHS_FILE))
    rows_by_trial: dict[str, list[dict]] = {}
    if not epochs.empty and "trial_id" in epochs:
        epochs = epochs.drop_duplicates(["trial_id", "epoch"], keep="last").sort_values("epoch", kind="stable")
        for trial_id, group in epochs.groupby("trial_id", sort=False):
            rows_by_trial[str(trial_id)] = [
                {k: _plain(v) for k, v in row.items()
                 if not k.startswith(PARAM_PREFIX) and k != "trial_id" and not _missing(v)}
                for row in group.to_dict("records")]
    records = []
    for trial in trials.to_dict("records"):
        trial_id = str(trial["trial_id"])
        params = {name: _plain(value) for name, value in trial_params(trial).items()}
        records.append(TrialRecord(
            trial_id, params, rows_by_trial.get(trial_id, []),
            error=trial[ERROR_KEY] if isinstance(trial.get(ERROR_KEY), str) else None,
            checkpoint=trial["checkpoint"] if isinstance(trial.get("checkpoint"), str) else None,
            pruned=trial["status"] == STATUS_PRUNED, interrupted=trial["status"] == STATUS_INTERRUPTED,
            planned_epochs=_plain(trial.get("epochs_planned")),
            started_at=None if _missing(trial.get(STARTED_AT)) else float(trial[STARTED_AT]),
            retries=trial[RETRIES_KEY].split("; ") if isinstance(trial.get(RETRIES_KEY), str) else []))
    return records


def read_table(path: Path) -> pd.DataFrame:
    """A CSV table of a results folder; empty if missing or empty.

    The epoch log grows one whole line per write while a study runs: a reader that catches a line mid-write reads
    the log up to its last complete line (the snapshot it would have read a moment earlier).
    """
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except FileNotFoundError:
        return pd.DataFrame()
    if Path(path).name == EPOCHS_FILE and text and not text.endswith(b"\n"):
        text = text[: text.rfind(b"\n") + 1]
    try:
        return pd.read_csv(io.BytesIO(text), dtype={"trial_id": str})  # an all-digit id must not become a number
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _plain(value):
    """numpy scalars from CSV back to Python values (ints stay ints) so params rebuild a TrialConfig."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def save_spec(folder: Path, spec, recorded: dict | None = None) -> None:
    """study.json: the study as it started (the study file's path relative to the folder, so it can move), plus
    what the start recorded (the classifier's accuracy, the flags under FLAGS_KEY)."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {**spec.to_dict(), "path": os.path.relpath(Path(spec.path).resolve(), Path(folder).resolve()),
              **(recorded or {})}
    replace_atomically(json.dumps(values, indent=1, default=list), folder / SPEC_FILE)


REQUIRED_TRIAL_COLUMNS = ("trial_id", "status", "epochs_run", "checkpoint")


def load_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(trials, epochs, study spec dict) of a results folder.

    Raises:
        ValueError if it is not one, or if its tables are truncated or disagree with each other.
    """
    folder = Path(folder)
    check_own_files(folder)
    missing = [name for name in (TRIALS_FILE, SPEC_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a study results folder (missing {', '.join(missing)}); "
                         f"run python study/run.py --space FILE first")
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
        check_study_record(spec)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{folder / SPEC_FILE} is damaged ({str(error)[:160]}); it is written when a study "
                         "starts") from None
    tables = {}
    for name in (TRIALS_FILE, EPOCHS_FILE):
        try:
            tables[name] = read_table(folder / name)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OverflowError) as error:
            raise ValueError(f"{folder / name} is malformed ({str(error).splitlines()[0][:120]}); "
                             "it may have been cut short or edited") from None
    trials, epochs = tables[TRIALS_FILE], tables[EPOCHS_FILE]
    check_tables(trials, epochs, folder)
    return with_derived_metrics(trials), with_derived_metrics(epochs), spec


# A results folder may come from someone else: what it may hold, at most.
MAX_TABLE_BYTES = 1 << 30  # a CSV table (10,000 trials x 50 epochs of ~1.5 KB rows is ~0.75 GB)
MAX_RECORD_BYTES = 1 << 20  # study.json
MAX_CELL = 4096  # characters in one cell of a table (an error message is cut at 300)
OWN_FILES = (TRIALS_FILE, EPOCHS_FILE, SPEC_FILE, DETAILS_FILE, SAMPLES_FILE, SUMMARY_FILE, FIGURES_DIR)


DETAIL_COLUMNS = ("trial_id", "digit", "requested_thickness", "measured_thickness", "relative_width",
                  "real_relative_width")
MAX_GRIDS = 10_000  # sample grids in samples.npz: one or two per trial


def load_details(folder: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(details.csv, samples.npz) of a results folder; empty if they were never collected.

    Raises:
        ValueError if either is not what report.py writes (a received folder is untrusted: nothing is unpickled).
    """
    folder = Path(folder)
    try:
        details = read_table(folder / DETAILS_FILE)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OverflowError) as error:
        raise ValueError(f"{folder / DETAILS_FILE} is malformed ({str(error).splitlines()[0][:120]})") from None
    if not details.empty:
        lacking = [c for c in DETAIL_COLUMNS if c not in details]
        numbers = details[[c for c in DETAIL_COLUMNS[1:] if c in details]].apply(pd.to_numeric, errors="coerce")
        if lacking or (numbers.isna() & details[numbers.columns].notna()).any().any():
            raise ValueError(f"{folder / DETAILS_FILE} is not a details table (it needs numeric "
                             f"{', '.join(DETAIL_COLUMNS[1:])}); delete it and run report.py again")
        details[numbers.columns] = numbers
    grids = {}
    if (folder / SAMPLES_FILE).is_file():
        try:
            with np.load(folder / SAMPLES_FILE, allow_pickle=False) as stored:
                if len(stored.files) > MAX_GRIDS:
                    raise ValueError(f"it holds {len(stored.files)} arrays")
                grids = {key: stored[key] for key in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise ValueError(f"{folder / SAMPLES_FILE} is not a samples archive report.py wrote "
                             f"({str(error).splitlines()[0][:120]})") from None
        for key, grid in grids.items():
            if (grid.dtype != np.uint8 or grid.ndim != 4 or grid.shape[2:] != (28, 28) or not 1 <= grid.shape[0] <= 1000
                    or not 1 <= grid.shape[1] <= 41 or "__" not in key):
                raise ValueError(f"{folder / SAMPLES_FILE}: {key[:60]!r} is not a sample grid (uint8 rows x thickness "
                                 f"x 28 x 28); delete it and run report.py again")
    return details, grids


def check_own_files(folder: Path) -> None:
    """Refuse a folder whose files are links (reading or writing them would reach outside it), not plain files (a
    pipe or a device blocks or never ends a read, a folder cannot be read or replaced), or too large to be a
    study's."""
    for name in OWN_FILES:
        path = folder / name
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; a results folder holds its own files (nothing is read or "
                             "written outside it)")
        if not path.exists():
            continue
        if name == FIGURES_DIR:
            _check_plain(path, stat.S_ISDIR, "a folder")
            for figure in path.iterdir():
                if figure.is_symlink():
                    raise ValueError(f"{path} holds symbolic links; a results folder holds its own files")
                _check_plain(figure, stat.S_ISREG, "a plain file")
            continue
        _check_plain(path, stat.S_ISREG, "a plain file")
        limit = MAX_RECORD_BYTES if name == SPEC_FILE else MAX_TABLE_BYTES
        if path.stat().st_size > limit:
            raise ValueError(f"{path} is {path.stat().st_size / 1e6:.0f} MB, larger than a study's "
                             f"{name} can be ({limit / 1e6:.0f} MB)")


def _check_plain(path: Path, is_kind, kind: str) -> None:
    mode = path.lstat().st_mode
    if not is_kind(mode):
        what = ("a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "a plain file")
        raise ValueError(f"{path} is {what}, not {kind}; a results folder holds its tables, records and figures "
                         "as plain files (delete it and run report.py, or receive the folder again)")


def check_study_record(spec) -> None:
    """study.json must describe a study: a name, objectives with modes, a known search, parameters with names."""
    from cvae.metrics import METRICS as KNOWN

    if not isinstance(spec, dict):
        raise ValueError("not a study description")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError("'name' must be text")
    metrics, modes = spec.get("metrics"), spec.get("modes")
    if (not isinstance(metrics, list) or not metrics or not isinstance(modes, list) or len(modes) != len(metrics)
            or not all(isinstance(m, str) and m in KNOWN for m in metrics)
            or not all(mode in ("min", "max") for mode in modes)):
        raise ValueError("'metrics' and 'modes' must be lists of known metrics and min/max of one length")
    if spec.get("algorithm") not in ("grid", "optuna"):
        raise ValueError(f"'algorithm' must be grid or optuna, got {str(spec.get('algorithm'))[:40]!r}")
    parameters = spec.get("parameters", [])
    if not isinstance(parameters, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str)
                                                   and isinstance(p.get("distribution"), str) for p in parameters):
        raise ValueError("'parameters' must be a list of {name, distribution, ...}")
    for key in ("repeats", "num_samples"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 0):
            raise ValueError(f"'{key}' must be a whole number")
    if not isinstance(spec.get("path", ""), str) or not isinstance(spec.get("description", ""), str):
        raise ValueError("'path' and 'description' must be text")


def checkpoint_within(folder: Path, path, spec: dict) -> Path:
    """A trials.csv checkpoint as a local folder that lies inside the results folder or the study's own recorded
    --storage-path; a received table cannot point a command elsewhere (`../`, absolute paths, links). A checkpoint
    in an object store is fetched once into the local cache (CVAE_CACHE_DIR/checkpoints) and read from there.

    Raises:
        ValueError naming the path when it leaves both, or when the store does not hold it.
    """
    resolved = resolve_path(folder, path)
    if resolved is None:
        raise ValueError("no checkpoint recorded")
    storage = (spec.get(FLAGS_KEY) or {}).get("storage_path") if isinstance(spec.get(FLAGS_KEY), dict) else None
    storage = storage if isinstance(storage, str) and storage else None
    if is_uri(resolved):
        return _fetch_checkpoint(resolved, storage, spec.get(READER_STORAGE_KEY))
    roots = [Path(folder).resolve()] + ([Path(storage).resolve()] if storage and not is_uri(storage) else [])
    real = Path(os.path.realpath(resolved))
    if not any(real == root or root in real.parents for root in roots):
        raise ValueError(f"checkpoint {str(path)[:200]!r} lies outside the results folder and the study's storage "
                         "path; a received results folder cannot point elsewhere")
    return resolved


def _fetch_checkpoint(uri: str, storage: str | None, reader_storage: str | None = None) -> Path:
    """A remote checkpoint of the study's own storage, copied into the local cache (once), reached through the
    storage the reader was given (storage.reached_through), not necessarily the endpoint it was recorded with."""
    from cvae.environment import cache_dir

    if not (storage and is_uri(storage) and within(uri, storage)):
        raise ValueError(f"checkpoint {display(uri)[:200]!r} lies outside the study's storage path; a received "
                         "results folder cannot point elsewhere")
    try:
        return fetch_folder(reached_through(uri, reader_storage), cache_dir() / "checkpoints")
    except (OSError, ValueError) as error:
        raise ValueError(f"checkpoint {display(uri)[:200]} cannot be read from its store "
                         f"({' '.join(str(error).split())[:160]})") from None


def with_derived_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """Tables made before grey_gap was measured get it from what they hold: |grey_fraction - real_grey_fraction| is
    exactly what a trial now reports for its validation images (their test value was not recorded: left out)."""
    real = REAL_PREFIX + "grey_fraction"
    if "grey_gap" not in frame and {"grey_fraction", real} <= set(frame):
        frame = frame.copy()
        frame["grey_gap"] = (frame["grey_fraction"].astype(float) - frame[real].astype(float)).abs()
    return frame


def _check_one_classifier(trials: pd.DataFrame, where: str) -> None:
    """Every trial of a study measured by the same reference classifier (tables from before it was recorded
    have no column, and are taken as they are)."""
    if CLASSIFIER_SHA256 not in trials:
        return
    hashes = sorted(set(trials[CLASSIFIER_SHA256].dropna().astype(str)))
    if len(hashes) > 1:
        counts = trials[CLASSIFIER_SHA256].astype(str).value_counts()
        raise ValueError(f"{where}: its trials were measured by {len(hashes)} different reference classifiers "
                         f"(sha256 {', '.join(h[:12] + f'… ×{counts[h]}' for h in hashes[:3])}); their fid and "
                         "class_accuracy are not comparable")


def check_tables(trials: pd.DataFrame, epochs: pd.DataFrame, folder: Path) -> None:
    """Refuse tables that cannot be a study's: missing columns, unknown statuses, duplicate or unknown trials,
    or a trial whose epoch count disagrees with epochs.csv (a table cut short or edited by hand)."""
    where = f"{folder / TRIALS_FILE}"
    if trials.empty:
        raise ValueError(f"{where} holds no trials (is the study still starting?)")
    lacking = [c for c in REQUIRED_TRIAL_COLUMNS if c not in trials]
    if lacking:
        raise ValueError(f"{where} lacks column(s) {', '.join(lacking)}: it is cut short or not a trials table")
    unknown = sorted(set(trials["status"].astype(str)) - set(STATUSES))
    if unknown:
        raise ValueError(f"{where}: unknown status {unknown[0]!r} (allowed: {', '.join(STATUSES)}); "
                         "the table is cut short or was edited")
    if trials["trial_id"].isna().any() or trials["trial_id"].duplicated().any():
        raise ValueError(f"{where}: trial ids are missing or repeated")
    _check_numbers(trials, where)
    _check_one_classifier(trials, where)
    if epochs.empty:
        return
    if "trial_id" not in epochs or "epoch" not in epochs:
        raise ValueError(f"{folder / EPOCHS_FILE} lacks trial_id/epoch columns: it is cut short or not an epochs table")
    _check_numbers(epochs, f"{folder / EPOCHS_FILE}")
    strangers = sorted(set(epochs["trial_id"].astype(str)) - set(trials["trial_id"].astype(str)))
    if strangers:
        raise ValueError(f"{where} lacks {len(strangers)} trial(s) that epochs.csv holds (e.g. {strangers[0]}): "
                         "trials.csv is cut short")
    # trials.csv may lag epochs.csv by a few seconds for a running trial (it is a summary, rewritten less often),
    # never for an ended one: its row was written when it ended.
    last_epoch = epochs.groupby("trial_id")["epoch"].max()
    table = trials.set_index("trial_id").reindex(last_epoch.index)
    runs, ended = table["epochs_run"].astype(float), table["status"].isin(ENDED)
    disagree = last_epoch.index[(ended & (runs != last_epoch)) | (~ended & (runs > last_epoch))]
    if len(disagree):
        trial = disagree[0]
        raise ValueError(f"{where}: trial {trial} ran {runs[trial]:.0f} epoch(s) but epochs.csv holds "
                         f"{last_epoch[trial]}; the tables disagree (cut short or edited)")


def _check_numbers(table: pd.DataFrame, where: str) -> None:
    """Every metric, epoch count and real-data level must be a number (NaN allowed: not measured) in its range; a
    column of text is a damaged or hand-edited table, and would fail deep inside pandas or a plot."""
    numeric = [c for c in table if c in METRICS or c.startswith(REAL_PREFIX) or c in (
        "epoch", "epochs_run", CLASSIFIER_ACCURACY, "wall_time_s", FID_SAMPLES, TEST_PREFIX + FID_SAMPLES)]
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        if (values.isna() & table[column].notna()).any():
            bad = table.loc[values.isna() & table[column].notna(), column].iloc[0]
            raise ValueError(f"{where}: column {column} holds {str(bad)[:40]!r}, not a number")
        if np.isinf(values).any():
            raise ValueError(f"{where}: column {column} holds an infinite value (NaN marks an unmeasured one)")
        if column in ("epoch", "epochs_run") and ((values < 0) | (values > 1_000_000)).any():
            raise ValueError(f"{where}: column {column} holds a value outside [0, 1000000]")
        table[column] = values
    for column in table.select_dtypes(exclude="number"):
        if table[column].dropna().astype(str).str.len().gt(MAX_CELL).any():
            raise ValueError(f"{where}: column {str(column)[:40]} holds a value longer than {MAX_CELL:,} characters")
