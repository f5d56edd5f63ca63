"""The results tables (study/tables/records.py, study/tables/table_files.py): statuses, the append-only epoch log, reading them back,
and refusing damaged tables."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.tables.records import EPOCHS_FILE, TRIALS_FILE, TrialRecord, epoch_row, trial_status
from study.tables.table_files import EpochLog, load_records, load_results, read_table

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from


def test_statuses_come_from_what_happened_not_from_guesses(four_trials, trial_rows):
    assert [trial_status(r) for r in four_trials] == ["completed", "pruned", "interrupted", "error"]
    assert trial_status(TrialRecord("new", {})) == "pending"
    assert trial_status(TrialRecord("busy", {}, trial_rows(1.0))) == "running"
    assert trial_status(TrialRecord("nan", {}, trial_rows(1.0, last="diverged"), pruned=True)) == "diverged"


def test_epoch_log_appends_whole_lines_and_widens_once(tmp_path):
    path = tmp_path / EPOCHS_FILE
    log = EpochLog(path)
    record = TrialRecord("a", {"latent_dim": 8})
    log.append(epoch_row(record, {"epoch": 1, "fid": 10.0}))
    log.append(epoch_row(record, {"epoch": 2, "fid": 9.0}))
    log.append(epoch_row(record, {"epoch": 3, "fid": 8.0, "extra": "x"}))  # a new column: rewritten once
    EpochLog(path).append(epoch_row(record, {"epoch": 2, "fid": 7.0}))  # a resumed driver re-runs epoch 2
    frame = pd.read_csv(path)
    assert list(frame["epoch"]) == [1, 2, 3, 2] and list(frame.columns[:3]) == ["trial_id", "param_latent_dim", "epoch"]
    assert path.read_bytes().endswith(b"\n") and b"\r" not in path.read_bytes()
    (tmp_path / TRIALS_FILE).write_text("trial_id,param_latent_dim,status,epochs_run,epochs_planned,checkpoint\n"
                                        "a,8,running,3,5,\n")
    [loaded] = load_records(tmp_path)
    assert [(r["epoch"], r["fid"]) for r in loaded.rows] == [(1, 10.0), (2, 7.0), (3, 8.0)]  # the last report wins


def test_epoch_log_follows_a_table_another_writer_replaced(tmp_path):
    """The end of a run writes epochs.csv whole (its own column set and order); a row the running log appends after
    that is laid out for the new header, so a plain CSV reader reads every row right."""
    from study.tables.table_files import replace_atomically

    path = tmp_path / EPOCHS_FILE
    log = EpochLog(path)
    record = TrialRecord("a", {"latent_dim": 8})
    log.append(epoch_row(record, {"epoch": 1, "fid": 10.0, "status": "running", "extra": "x"}))
    narrower = pd.read_csv(path)[["epoch", "trial_id", "fid", "param_latent_dim", "status"]]
    replace_atomically(narrower, path)  # fewer columns, another order
    log.append(epoch_row(record, {"epoch": 2, "fid": 9.0, "status": "interrupted"}))
    frame = pd.read_csv(path)
    assert list(frame["epoch"]) == [1, 2] and list(frame["fid"]) == [10.0, 9.0], frame
    assert list(frame["status"]) == ["running", "interrupted"] and set(frame["trial_id"]) == {"a"}
    path.unlink()  # removed meanwhile: the next row starts a new table with its header
    log.append(epoch_row(record, {"epoch": 3, "fid": 8.0}))
    assert pd.read_csv(path)["epoch"].tolist() == [3]


def test_tables_of_a_study_stopped_before_any_trial_or_epoch_are_readable_csv(tmp_path, four_trials):
    """A stop before the first trial (or its first epoch) still leaves tables a plain CSV reader opens: a header,
    no rows (an empty file is refused by pandas: "No columns to parse from file")."""
    from study.tables.table_files import write_tables

    write_tables(tmp_path, [])
    assert pd.read_csv(tmp_path / TRIALS_FILE).empty and pd.read_csv(tmp_path / EPOCHS_FILE).empty
    write_tables(tmp_path, [TrialRecord("new", {"grey_weight": 0.1})])  # started, no epoch reported yet
    assert list(pd.read_csv(tmp_path / TRIALS_FILE)["trial_id"]) == ["new"]
    assert pd.read_csv(tmp_path / EPOCHS_FILE).empty


def damage(folder, how):
    trials = folder / TRIALS_FILE
    text = trials.read_text()
    if how == "cut mid-row":
        trials.write_text(text[: len(text) // 2])
    elif how == "rows lost":
        trials.write_text("\n".join(text.splitlines()[:2]) + "\n")
    elif how == "status edited":
        trials.write_text(text.replace("completed", "complet"))
    elif how == "epochs disagree":
        frame = pd.read_csv(trials)
        frame.loc[frame["trial_id"] == "done", "epochs_run"] = 7
        frame.to_csv(trials, index=False)
    elif how == "header only":
        trials.write_text(text.splitlines()[0] + "\n")
    elif how == "binary":
        trials.write_bytes(bytes(range(256)) * 8)


@pytest.mark.parametrize("how", ["cut mid-row", "rows lost", "status edited", "epochs disagree", "header only",
                                 "binary"])
def test_damaged_tables_are_refused(tmp_path, how, write_study):
    folder = write_study(tmp_path / "s")
    damage(folder, how)
    with pytest.raises(ValueError):
        load_results(folder)
    for cli in ("study/report.py", "study/best.py"):
        result = subprocess.run([sys.executable, cli, str(folder), "--no-details"][: 4 if "report" in cli else 3],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_intact_tables_load(tmp_path, write_study):
    trials, epochs, _ = load_results(write_study(tmp_path / "s"))
    assert len(trials) == 4 and len(epochs) == 4 and np.isnan(trials.set_index("trial_id").loc["broken", "fid"])


def test_shipped_results_hold_no_path_of_the_machine_that_made_them():
    """results/reference and the saved notebook move with the repository: no absolute path of this checkout or
    of a home folder may be in them (they were made by the project's own commands, so the code is checked too)."""
    shipped = [path for path in (REPO / "results" / "reference").rglob("*")
               if path.suffix in (".csv", ".json", ".md", ".txt") and "tune" not in path.parts]
    shipped.append(REPO / "analysis.ipynb")
    assert len(shipped) > 10
    forbidden = {marker for marker in (str(REPO), str(Path.home()), "/tmp/", "/work/") if len(marker) > 4}
    found = [(path.relative_to(REPO), marker) for path in shipped for marker in forbidden
             if marker in path.read_text(errors="replace")]
    assert not found


def test_a_reader_that_catches_the_log_mid_line_reads_its_complete_lines(tmp_path):
    path = tmp_path / EPOCHS_FILE
    path.write_text("trial_id,epoch,fid\n0001,1,50.5\n0001,2,4")  # the driver's write of epoch 2 under way
    table = read_table(path)
    assert list(table["epoch"]) == [1] and table["trial_id"].tolist() == ["0001"]
    path.write_text("trial_id,epoch,fid\n0001,1,50.5\n0001,2,40.25\n")
    assert list(read_table(path)["fid"]) == [50.5, 40.25]
