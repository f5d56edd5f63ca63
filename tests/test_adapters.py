"""One test per Ray/Optuna internal that study/driver/adapters.py relies on: an upgrade that changes one fails here.
Each test observes the internal through public behaviour (Optuna's stored study, a Tuner's fit, Ray's own files)."""

from pathlib import Path

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from study.driver.adapters import (NODE_LOST, WORKER_LOST, enqueue_partial, error_message, last_failure,
                                   run_config_of, searcher_has_finished, searcher_trial, tell_searcher,
                                   worker_loss_cause)


def _searcher(storage=None):
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="loss", mode="min",
                            sampler=optuna.samplers.RandomSampler(seed=0), study_name="adapters", storage=storage)
    assert searcher.suggest("a") is not None
    return searcher


def test_optuna_search_keeps_the_optuna_trial_of_each_tune_trial():
    searcher = _searcher()
    assert isinstance(searcher_trial(searcher, "a"), optuna.trial.Trial)
    assert searcher_trial(searcher, "never-suggested") is None


def test_a_trial_told_pruned_is_pruned_in_optuna_and_finished_in_the_searcher():
    storage = optuna.storages.InMemoryStorage()
    searcher = _searcher(storage)
    states = lambda: [trial.state for trial in optuna.load_study(study_name="adapters", storage=storage).trials]  # noqa: E731
    assert not searcher_has_finished(searcher, "a")
    tell_searcher(searcher, "a", TrialState.PRUNED)
    assert searcher_has_finished(searcher, "a")
    assert states() == [TrialState.PRUNED]
    searcher.on_trial_complete("a", {"loss": 1.0})  # OptunaSearch's own path now leaves it alone
    assert states() == [TrialState.PRUNED]


def test_a_partly_enqueued_trial_takes_those_values_and_samples_the_rest():
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0), "k": optuna.distributions.IntDistribution(2, 64)}
    searcher = OptunaSearch(space=space, metric="loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0))
    enqueue_partial(searcher, {"k": 17})
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first["k"] == 17 and 0.0 <= first["x"] <= 1.0
    assert second["k"] != 17  # only one trial was enqueued (the seeded sampler draws another k)


class _Seen(tune.Callback):
    def __init__(self):
        self.results = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append(result["score"])


@pytest.mark.slow
def test_callbacks_set_on_a_tuners_run_configuration_are_the_ones_fit_calls(tmp_path, monkeypatch):
    """Tuner.restore takes no callbacks; the study sets them on run_config_of(tuner): fit() must call them."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    # "local": a new instance even where /tmp/ray/ray_current_cluster names a live one (a busy machine)
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR")
    try:
        tuner = tune.Tuner(lambda params: tune.report({"score": 7}),
                           run_config=tune.RunConfig(name="adapters", storage_path=str(tmp_path), verbose=0))
        seen = _Seen()
        run_config_of(tuner).callbacks = [seen]
        tuner.fit()
    finally:
        ray.shutdown()
    assert seen.results == [7]


def _ray_texts() -> bytes:
    """Ray's installed exceptions module and its binaries (raylet, GCS, the Python extension): where the texts of
    a dead actor are written."""
    root = Path(ray.__file__).parent
    files = [root / "exceptions.py", *root.glob("_raylet*.so"), root / "core/src/ray/raylet/raylet",
             root / "core/src/ray/gcs/gcs_server"]
    return b"".join(path.read_bytes() for path in files if path.is_file())


def test_rays_texts_for_a_lost_node_and_a_killed_worker_are_still_the_ones_looked_for():
    """A lost worker is read from Tune's error text: each marker must still be one of Ray's own texts."""
    texts = _ray_texts()
    missing = [marker for marker in (*NODE_LOST, *WORKER_LOST) if marker.encode() not in texts]
    assert not missing, f"Ray no longer writes {missing}: update study/driver/adapters.py"
    assert worker_loss_cause(str(ray.exceptions.ActorDiedError())).startswith("worker killed")
    assert worker_loss_cause("ray.exceptions.ActorDiedError: The actor died because its node has died.") == "node lost"
    assert worker_loss_cause("ValueError: bad config") is None and worker_loss_cause(None) is None


def test_tunes_error_file_is_read_newest_failure_first(tmp_path):
    """Tune appends one `Failure # N` block per failure to a trial's error file (Trial.error_file)."""
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-12-03)\nTraceback ...\nValueError: first\n\n"
                          "Failure # 2 (occurred at 2026-12-03)\nTraceback ...\nKeyError: 'second'\n")
    trial = type("Trial", (), {"error_file": str(error_file), "error_msg": None})()
    assert "KeyError" in last_failure(trial) and "first" not in last_failure(trial)
    assert error_message(trial) == "KeyError: 'second'"
    assert "error_file" in tune.experiment.Trial.__dict__ or hasattr(tune.experiment.Trial, "error_file")
