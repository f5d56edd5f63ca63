"""Study: one study — what it is (its StudySpec), where its tables and its trials live — as every command takes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from study.spec.study_file import StudySpec
from study.store.storage import is_uri, join

if TYPE_CHECKING:  # pandas loads with the tables: a refused command never reads them
    import pandas as pd

TUNE_DIR = "tune"  # under the results folder: Tune's trials and checkpoints when no --storage-path is given


def objective_text(metrics, modes) -> str:
    """Objectives as the commands print them and summary.md writes them: "fid (min), class_accuracy (max)"."""
    return ", ".join(f"{metric} ({mode})" for metric, mode in zip(metrics, modes))


@dataclass(frozen=True)
class Study:
    """A study's spec, its results folder (trials.csv, epochs.csv, study.json, figures) and its storage (where Tune
    keeps trials and checkpoints: a local folder or a URI). The facts derived from them are computed here once.

    The driver makes one from the study file and its flags (Study.create); the analysis commands and the notebook
    open one from a results folder or a storage URI (Study.open), with its tables read and checked.
    """

    spec: StudySpec
    folder: Path
    storage: str
    record: dict = field(default_factory=dict, compare=False)  # study.json as written (spec + what the start added)
    trials: pd.DataFrame | None = field(default=None, compare=False, repr=False)
    epochs: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, spec: StudySpec, results_dir: Path, storage_path: str | None = None) -> "Study":
        """The study a driver runs: results in results_dir/<name>, Tune's storage at storage_path (default: the
        results folder's tune/)."""
        folder = Path(results_dir) / spec.name
        return cls(spec, folder, storage_path or str(folder / TUNE_DIR))

    @classmethod
    def open(cls, location: str | Path) -> "Study":
        """A finished or running study from its results folder or its storage URI (STORAGE/NAME), its tables read
        and checked (tables.load_results).

        Raises:
            ValueError naming what is wrong (not a study, damaged tables, unreachable store).
        """
        from study.tables.mirror import local_study
        from study.tables.records import FLAGS_KEY, READER_STORAGE_KEY
        from study.tables.table_files import load_results

        folder = local_study(location)
        trials, epochs, record = load_results(folder)
        if is_uri(str(location)):  # its checkpoints are reached the way the reader reached the study
            record = {**record, READER_STORAGE_KEY: str(location)}
        flags = record.get(FLAGS_KEY) if isinstance(record.get(FLAGS_KEY), dict) else {}
        storage = flags.get("storage_path") if isinstance(flags.get("storage_path"), str) else None
        try:
            spec = StudySpec.from_dict(record)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{folder}/study.json does not describe a study ({str(error)[:120]})") from None
        return cls(spec, Path(folder), storage or str(Path(folder) / TUNE_DIR), record, trials, epochs)

    @property
    def experiment(self) -> str:
        """Tune's folder of this study in its storage (STORAGE/NAME)."""
        return join(self.storage, self.spec.name)

    @property
    def kept_in_storage(self) -> bool:
        """Whether the tables also live in the storage (a --storage-path outside the results folder)."""
        return is_uri(self.storage) or Path(self.storage) != self.folder / TUNE_DIR

    @property
    def objective(self) -> str:
        """The objective as printed and written: "fid (min), class_accuracy (max)"."""
        return objective_text(self.spec.metrics, self.spec.modes)

    def best(self, trials: pd.DataFrame | None = None) -> pd.Series:
        """The best trial (selection.BEST_RULE) of `trials` (default: the study's own table)."""
        from study.tables.selection import best_trial

        return best_trial(self.trials if trials is None else trials, self.spec.metrics, self.spec.modes)

    def checkpoint(self, path) -> Path:
        """A trials.csv checkpoint as a local folder: inside the results folder or the study's own storage (a
        remote one fetched once into the local cache); tables.checkpoint_within says what is refused."""
        from study.tables.table_files import checkpoint_within

        return checkpoint_within(self.folder, path, self.record)

    def incomplete(self, space: str | None = None) -> str | None:
        """The `incomplete: …` line of a study that has not run every planned trial to its end, or None."""
        from study.tables.selection import incomplete_note

        return incomplete_note(self.trials, self.record or self.spec.to_dict(), space)
