"""Choosing from the tables (study/tables/selection.py): the best trial, a trial's last epoch, the test split's numbers,
what is unfinished."""

import pytest

from study.tables.records import TrialRecord
from study.tables.selection import best_trial, has_test_numbers, incomplete_note, metric_pairs, on_test_split
from study.tables.table_files import load_results


def test_best_trial_is_completed_even_when_an_unfinished_or_pruned_one_looks_better(tmp_path, write_study):
    trials, _, spec = load_results(write_study(tmp_path / "s"))
    best = best_trial(trials, ("fid",), ("min",))
    assert best["trial_id"] == "done" and best["fid"] == 40.0
    only_pruned = trials[trials["trial_id"] != "done"]
    assert best_trial(only_pruned, ("fid",), ("min",))["trial_id"] == "cut"  # no completed: pruned ones count
    with pytest.raises(ValueError, match="no completed or pruned trial"):
        best_trial(trials[trials["trial_id"].isin(["stopped", "broken"])], ("fid",), ("min",))


def test_a_trial_is_its_last_epoch_and_its_test_numbers_are_the_headline(tmp_path, write_study, trial_rows):
    early_peak = trial_rows(10.0, 30.0, last="completed")  # its best epoch is not the model it ended with
    early_peak[-1].update(test_fid=33.0, test_elbo=70.0, val_elbo=68.0)
    steady = trial_rows(25.0, 20.0, last="completed")
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


def test_incomplete_note_counts_every_planned_trial(tmp_path, write_study):
    trials, _, spec = load_results(write_study(tmp_path / "s"))
    # 3 ended (completed, pruned, error) of 4 planned
    assert incomplete_note(trials, spec) == ("incomplete: 1 of 4 trials unfinished — resume with python study/run.py "
                                             "--space tables.yaml --name tables --resume")
    assert incomplete_note(trials[trials["trial_id"] != "stopped"], {**spec, "num_samples": 3}) is None
