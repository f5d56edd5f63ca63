"""A study's tables kept in its storage as it runs, so that the study can be resumed or read from any machine."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

from study.tables.records import EPOCHS_FILE, SPEC_FILE, TRIALS_FILE
from study.tables.table_files import read_table, replace_atomically
from study.store.storage import display, filesystem_of, is_uri, join, list_names, read_bytes, write_bytes

TABLES_DIR = "tables"  # under the study's folder in its storage (beside Tune's own state)
ROWS_DIR = "epochs"  # one object per epoch reported since the last snapshot: the store's append-only log
SNAPSHOT = (EPOCHS_FILE, TRIALS_FILE, SPEC_FILE)  # uploaded in this order: a table never newer than the log
CLASSIFIER_FILE, CLASSIFIER_RECORD = "classifier.keras", "classifier.json"  # the classifier that measures the study


class StoreMirror:
    """The driver's copy of a study's tables in the storage (objects are replaced whole, never half written).

    Every reported epoch becomes one small object before its line is printed (an object store cannot append);
    each snapshot uploads the three tables and then deletes the epoch objects it covers. A reader merges the
    snapshot with the epoch objects, so a driver lost at any moment loses no epoch it printed.
    """

    def __init__(self, experiment: str, results_dir: Path):
        self.root = join(experiment, TABLES_DIR)
        self.results_dir = Path(results_dir)
        self.failing = False  # a store that stopped answering is said once, not at every epoch

    def append(self, row: dict) -> None:
        name = f"{row['trial_id']}_{int(row.get('epoch') or 0):06d}.json"
        self._try(write_bytes, join(self.root, ROWS_DIR, name), json.dumps(row, default=_plain).encode())

    def snapshot(self) -> None:
        self._try(self._snapshot)

    def _snapshot(self) -> None:
        covered = list_names(join(self.root, ROWS_DIR))  # listed first: every one is in the local log by now
        for name in SNAPSHOT:
            path = self.results_dir / name
            if path.is_file():
                write_bytes(join(self.root, name), path.read_bytes())
        filesystem, rows = filesystem_of(join(self.root, ROWS_DIR))
        for name in covered:
            filesystem.delete_file(f"{rows}/{name}")

    def save_classifier(self, classifier) -> None:
        """The study's reference classifier (cvae.classifier.ClassifierFile) beside its tables: a driver that
        resumes the study elsewhere measures with these bytes, not a classifier of its own."""
        self._try(write_bytes, join(self.root, CLASSIFIER_FILE), classifier.content)
        record = {"sha256": classifier.sha256, "accuracy": classifier.accuracy, "required": classifier.required}
        self._try(write_bytes, join(self.root, CLASSIFIER_RECORD), json.dumps(record).encode())

    def load_classifier(self):
        """The ClassifierFile saved by save_classifier, or None when the storage holds none (or a damaged one)."""
        from cvae.classifier import ClassifierFile

        try:
            record = json.loads(read_bytes(join(self.root, CLASSIFIER_RECORD)))
            content = read_bytes(join(self.root, CLASSIFIER_FILE))
        except (FileNotFoundError, ValueError):
            return None
        if hashlib.sha256(content).hexdigest() != record.get("sha256"):
            return None
        return ClassifierFile(content, record["sha256"], float(record["accuracy"]), float(record["required"]))

    def _try(self, write, *args) -> None:
        """A store that fails is a warning, not a stop: the local tables stay whole and the next snapshot
        sends everything again."""
        try:
            write(*args)
            self.failing = False
        except OSError as error:
            from study.store.lease import FencedOut

            if not self.failing:
                print(f"warning: the study's tables could not be copied to {display(self.root)} "
                      f"({' '.join(str(error).split())[:160]}); the local tables are whole"
                      + ("" if isinstance(error, FencedOut) else ", the next copy retries"),
                      file=sys.stderr, flush=True)
            self.failing = True


def restore_tables(experiment: str, folder: Path) -> bool:
    """Write a study's tables from its storage into `folder` (the snapshot plus every epoch reported after it);
    False when the storage holds no tables of this study."""
    root = join(experiment, TABLES_DIR)
    try:
        spec = read_bytes(join(root, SPEC_FILE))
    except FileNotFoundError:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    for name in (EPOCHS_FILE, TRIALS_FILE):
        (folder / name).unlink(missing_ok=True)  # an older copy of these tables must not mix with this one
        try:
            replace_atomically(read_bytes(join(root, name)).decode(), folder / name)
        except FileNotFoundError:
            pass  # a study stopped before its first snapshot of them
    replace_atomically(spec.decode(), folder / SPEC_FILE)
    rows = [json.loads(read_bytes(join(root, ROWS_DIR, name))) for name in list_names(join(root, ROWS_DIR))]
    if rows:
        logged = read_table(folder / EPOCHS_FILE) if (folder / EPOCHS_FILE).is_file() else pd.DataFrame()
        epochs = pd.concat([logged, pd.DataFrame(rows)], ignore_index=True)
        epochs = epochs.drop_duplicates(["trial_id", "epoch"], keep="last").sort_values(["trial_id", "epoch"],
                                                                                        kind="stable")
        replace_atomically(epochs, folder / EPOCHS_FILE)
    return True


def local_study(location: str | Path) -> Path:
    """A study's results folder, or, for a study given by its storage URI, a fresh local copy of its tables (in
    CVAE_CACHE_DIR/studies) that the analysis commands read and write into.

    Raises:
        ValueError when the storage holds no study there.
    """
    if not is_uri(str(location)):
        return Path(location)
    from cvae.environment import cache_dir

    location = str(location)
    digest = hashlib.sha256(location.encode()).hexdigest()[:12]
    folder = cache_dir() / "studies" / f"{Path(display(location).rstrip('/')).name}-{digest}"
    try:
        found = restore_tables(location, folder)
    except OSError as error:
        raise ValueError(f"{display(location)}: cannot read the study's tables "
                         f"({' '.join(str(error).split())[:160]})") from None
    if not found:
        raise ValueError(f"{display(location)} holds no study's tables (it is the folder that --storage-path and "
                         "--name make: STORAGE/NAME)")
    return folder


def _plain(value):
    """numpy scalars and other values json cannot write, as plain numbers or text."""
    return value.item() if hasattr(value, "item") else str(value)
