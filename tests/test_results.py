"""The results tables keep every epoch a trial reported, also across a retry on another node."""

from study.results import TrialRecord, add_missing_epochs


def test_epochs_before_a_retry_are_put_back_in_order():
    live = [TrialRecord("a", {}, rows=[{"epoch": 1, "node_id": "lost"}, {"epoch": 2, "node_id": "lost"}])]
    tune_history = [TrialRecord("a", {}, rows=[{"epoch": 3, "node_id": "new"}, {"epoch": 2, "node_id": "new"}]),
                    TrialRecord("b", {}, rows=[{"epoch": 1, "node_id": "x"}])]
    merged = add_missing_epochs(tune_history, live)
    assert [(row["epoch"], row["node_id"]) for row in merged[0].rows] == [(1, "lost"), (2, "new"), (3, "new")]
    assert merged[1].rows == [{"epoch": 1, "node_id": "x"}]
