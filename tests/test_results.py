"""The results tables: statuses, the append-only epoch log, the best trial, and refusing damaged tables."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.results import (
    EPOCHS_FILE,
    SPEC_FILE,
    TRIALS_FILE,
    EpochLog,
    TrialRecord,
    best_trial,
    epoch_row,
    incomplete_note,
    load_records,
    load_results,
    trial_status,
    write_tables,
)

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from

SPEC = {"name": "tables", "path": "search_spaces/tables.yaml", "metrics": ["fid"], "modes": ["min"],
        "algorithm": "optuna", "num_samples": 4, "parameters": []}


def rows(*fids, last="running"):
    return [{"epoch": i + 1, "fid": fid, "status": last if i == len(fids) - 1 else "running"}
            for i, fid in enumerate(fids)]


def records():
    return [TrialRecord("done", {"grey_weight": 0.1}, rows(50.0, 40.0, last="completed"), checkpoint="c1"),
            TrialRecord("cut", {"grey_weight": 0.2}, rows(30.0), pruned=True, checkpoint="c2"),
            TrialRecord("stopped", {"grey_weight": 0.3}, rows(20.0), interrupted=True),
            TrialRecord("broken", {"grey_weight": 0.4}, error="ValueError: bad")]


def test_statuses_come_from_what_happened_not_from_guesses():
    assert [trial_status(r) for r in records()] == ["completed", "pruned", "interrupted", "error"]
    assert trial_status(TrialRecord("new", {})) == "pending"
    assert trial_status(TrialRecord("busy", {}, rows(1.0))) == "running"
    assert trial_status(TrialRecord("nan", {}, rows(1.0, last="diverged"), pruned=True)) == "diverged"


def write_study(folder, trial_records=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(SPEC))
    write_tables(folder, trial_records or records())
    return folder


def test_best_trial_is_completed_even_when_an_unfinished_or_pruned_one_looks_better(tmp_path):
    trials, _, spec = load_results(write_study(tmp_path / "s"))
    best = best_trial(trials, ("fid",), ("min",))
    assert best["trial_id"] == "done" and best["fid"] == 40.0
    only_pruned = trials[trials["trial_id"] != "done"]
    assert best_trial(only_pruned, ("fid",), ("min",))["trial_id"] == "cut"  # no completed: pruned ones count
    with pytest.raises(ValueError, match="no completed or pruned trial"):
        best_trial(trials[trials["trial_id"].isin(["stopped", "broken"])], ("fid",), ("min",))


def test_a_trial_is_its_last_epoch_and_its_test_numbers_are_the_headline(tmp_path):
    from study.results import has_test_numbers, metric_pairs, on_test_split

    early_peak = rows(10.0, 30.0, last="completed")  # its best epoch is not the model it ended with
    early_peak[-1].update(test_fid=33.0, test_elbo=70.0, val_elbo=68.0)
    steady = rows(25.0, 20.0, last="completed")
    steady[-1].update(test_fid=22.0, test_elbo=65.0, val_elbo=64.0)
    trials, _, _ = load_results(write_study(tmp_path / "s", [TrialRecord("peak", {"grey_weight": 0.1}, early_peak),
                                                              TrialRecord("steady", {"grey_weight": 0.2}, steady)]))
    best = best_trial(trials, ("fid",), ("min",))
    assert best["trial_id"] == "steady"  # 20 at its last epoch beats 30; the other's epoch-1 10 does not count
    pairs = {name: (validation, test) for name, validation, test in metric_pairs(best)}
    assert pairs["fid"] == (20.0, 22.0) and pairs["elbo"] == (64.0, 65.0)
    assert has_test_numbers(trials)
    assert on_test_split(trials).set_index("trial_id")["fid"].to_dict() == {"peak": 33.0, "steady": 22.0}
    old = trials.drop(columns=[c for c in trials if c.startswith("test_")])  # a table made before the test split
    assert not has_test_numbers(old) and on_test_split(old)["fid"].tolist() == [30.0, 20.0]


def test_incomplete_note_counts_every_planned_trial(tmp_path):
    trials, _, spec = load_results(write_study(tmp_path / "s"))
    # 3 ended (completed, pruned, error) of 4 planned
    assert incomplete_note(trials, spec) == ("incomplete: 1 of 4 trials unfinished — resume with python study/run.py "
                                             "--space tables.yaml --name tables --resume")
    assert incomplete_note(trials[trials["trial_id"] != "stopped"], {**spec, "num_samples": 3}) is None


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
def test_damaged_tables_are_refused(tmp_path, how):
    folder = write_study(tmp_path / "s")
    damage(folder, how)
    with pytest.raises(ValueError):
        load_results(folder)
    for cli in ("study/report.py", "study/best.py"):
        result = subprocess.run([sys.executable, cli, str(folder), "--no-details"][: 4 if "report" in cli else 3],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_intact_tables_load(tmp_path):
    trials, epochs, _ = load_results(write_study(tmp_path / "s"))
    assert len(trials) == 4 and len(epochs) == 4 and np.isnan(trials.set_index("trial_id").loc["broken", "fid"])


def test_shipped_results_hold_no_path_of_the_machine_that_made_them():
    """results/reference and the saved notebook move with the repository: no absolute path of this checkout or
    of a home folder may be in them (they were made by the project's own commands, so the code is checked too)."""
    from pathlib import Path

    shipped = [path for path in (REPO / "results" / "reference").rglob("*")
               if path.suffix in (".csv", ".json", ".md", ".txt") and "tune" not in path.parts]
    shipped.append(REPO / "analysis.ipynb")
    assert len(shipped) > 10
    forbidden = {marker for marker in (str(REPO), str(Path.home()), "/tmp/", "/work/") if len(marker) > 4}
    found = [(path.relative_to(REPO), marker) for path in shipped for marker in forbidden
             if marker in path.read_text(errors="replace")]
    assert not found


def test_a_reader_that_catches_the_log_mid_line_reads_its_complete_lines(tmp_path):
    from study.results import EPOCHS_FILE, read_table

    path = tmp_path / EPOCHS_FILE
    path.write_text("trial_id,epoch,fid\n0001,1,50.5\n0001,2,4")  # the driver's write of epoch 2 under way
    table = read_table(path)
    assert list(table["epoch"]) == [1] and table["trial_id"].tolist() == ["0001"]
    path.write_text("trial_id,epoch,fid\n0001,1,50.5\n0001,2,40.25\n")
    assert list(read_table(path)["fid"]) == [50.5, 40.25]
