"""One test per Ray/Optuna internal that study/driver/adapters.py relies on: an upgrade that changes one fails here.
Each test observes the internal through public behaviour (Optuna's stored study, a Tuner's fit, Ray's own files)."""

import shutil
from pathlib import Path

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from study.driver.adapters import (NODE_LOST, PROGRAM_LOST, WORKER_DIED_NOTICE, WORKER_LOST, enqueue_partial,
                                   error_message, last_failure, run_config_of, searcher_has_finished, searcher_trial,
                                   tell_searcher, worker_loss_cause)


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
    missing = [marker for marker in (*NODE_LOST, *WORKER_LOST, WORKER_DIED_NOTICE) if marker.encode() not in texts]
    assert not missing, f"Ray no longer writes {missing}: update study/driver/adapters.py"
    assert worker_loss_cause(str(ray.exceptions.ActorDiedError())).startswith("worker killed")
    assert worker_loss_cause("ray.exceptions.ActorDiedError: The actor died because its node has died.") == "node lost"
    assert worker_loss_cause("ValueError: bad config") is None and worker_loss_cause(None) is None
    # a fused member whose program actor died (study/driver/trainable.run_member) names the program, not its worker
    program = f"ProgramLost: {PROGRAM_LOST}: {ray.exceptions.ActorDiedError()}"
    assert worker_loss_cause(program) == "fused program killed (signal 9; out of memory?)"
    node = f"{PROGRAM_LOST}: The actor died because its node has died."
    assert worker_loss_cause(node) == "fused program's node lost"


def test_tunes_error_file_is_read_newest_failure_first(tmp_path):
    """Tune appends one `Failure # N` block per failure to a trial's error file (Trial.error_file)."""
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-12-03)\nTraceback ...\nValueError: first\n\n"
                          "Failure # 2 (occurred at 2026-12-03)\nTraceback ...\nKeyError: 'second'\n")
    trial = type("Trial", (), {"error_file": str(error_file), "error_msg": None})()
    assert "KeyError" in last_failure(trial) and "first" not in last_failure(trial)
    assert error_message(trial) == "KeyError: 'second'"
    assert "error_file" in tune.experiment.Trial.__dict__ or hasattr(tune.experiment.Trial, "error_file")


@pytest.mark.slow
def test_a_trial_whose_named_checkpoint_was_deleted_resumes_from_its_newest_whole_one(tmp_path, monkeypatch):
    """The window a killed driver can leave: Tune deleted the checkpoint its experiment state names (a newer one was
    registered) before that state was uploaded. The trial is pointed at the newer one and goes on from there;
    without the repair Tune's resume fails with "does not exist on storage anymore"."""
    from cvae.checkpoint import STATE_FILE
    from study.driver.adapters import point_trials_at_kept_checkpoints
    from study.store.storage import tune_storage

    def _epochs_with_checkpoints(params):
        """Resumes from its checkpoint's epoch and writes a checkpoint of the files a resume needs each epoch; fails
        after epoch `fail_after` (its trial stays unfinished) and records where it began. (Defined here: Ray's
        workers cannot import a test module, so the function travels by value.)"""
        import json
        import tempfile

        from cvae.checkpoint import RESUME_FILES, STATE_FILE

        start = 0
        restored = tune.get_checkpoint()
        if restored is not None:
            start = json.loads((Path(restored.path) / STATE_FILE).read_text())["epoch"]
        with open(Path(params["log"]) / "began", "a") as log:
            log.write(f"{start}\n")
        for epoch in range(start + 1, 5):
            with tempfile.TemporaryDirectory() as folder:
                for name in RESUME_FILES:
                    (Path(folder) / name).write_text(json.dumps({"epoch": epoch}))
                tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))
            if epoch == params["fail_after"]:
                raise RuntimeError("stopped here")

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR")
    try:
        params = {"log": str(tmp_path), "fail_after": 2}
        path, filesystem = tune_storage(str(tmp_path / "storage"))
        tune.Tuner(_epochs_with_checkpoints, param_space=params, run_config=tune.RunConfig(
            name="window", storage_path=path, storage_filesystem=filesystem, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1))).fit()
        experiment = tmp_path / "storage" / "window"
        trial_folder = next(experiment.glob("_epochs_with_checkpoints_*"))
        assert sorted(p.name for p in trial_folder.glob("checkpoint_*")) == ["checkpoint_000001"]  # epoch 2's
        # as if epoch 3's checkpoint had been registered (epoch 2's deleted) and the driver killed before the upload
        shutil.copytree(trial_folder / "checkpoint_000001", trial_folder / "checkpoint_000002")
        (trial_folder / "checkpoint_000002" / STATE_FILE).write_text('{"epoch": 3}')
        shutil.copytree(trial_folder / "checkpoint_000001", trial_folder / "checkpoint_000003")  # one cut short:
        (trial_folder / "checkpoint_000003" / STATE_FILE).unlink()  # a killed worker's upload, not whole
        shutil.rmtree(trial_folder / "checkpoint_000001")

        experiment_path, filesystem = tune_storage(str(experiment))
        changed = point_trials_at_kept_checkpoints(experiment_path, filesystem)
        assert len(changed) == 1 and changed[0].endswith(
            "its checkpoint checkpoint_000001 was deleted; it resumes from checkpoint_000002 (epoch 3)"), changed
        assert point_trials_at_kept_checkpoints(experiment_path, filesystem) == []  # written back: nothing more
        grid = tune.Tuner.restore(experiment_path, trainable=_epochs_with_checkpoints, resume_errored=True,
                                  storage_filesystem=filesystem).fit()
    finally:
        ray.shutdown()
    assert not grid.errors, grid.errors
    began = (tmp_path / "began").read_text().split()
    assert began == ["0", "3"], began  # the first run from scratch, the resume from the newer checkpoint's epoch 3
    assert (grid[0].metrics["epoch"], grid[0].metrics["training_iteration"]) == (4, 4)  # Tune's count goes on


def test_the_raylets_dead_worker_notice_is_kept_off_the_console_and_other_lines_are_not(capsys):
    """The driver prints what the raylet sends through ray._private.worker.print_to_stdstream, looked up by name when
    an error arrives (listen_error_messages): the study's one line says it instead."""
    import inspect

    from ray._private import worker

    from study.driver.adapters import hide_worker_death_notices

    assert "print_to_stdstream(" in inspect.getsource(worker.listen_error_messages)
    original = worker.print_to_stdstream
    try:
        hide_worker_death_notices()
        wrapped = worker.print_to_stdstream
        hide_worker_death_notices()
        assert worker.print_to_stdstream is wrapped  # not wrapped twice (a second study in one process)
        notice = f"{WORKER_DIED_NOTICE} by an unexpected system error. To troubleshoot the problem, ..."
        worker.print_to_stdstream({"lines": [notice], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["the node is out of disk"], "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)
        worker.print_to_stdstream({"lines": [notice], "pid": 1234, "is_err": False}, ignore_prefix=False)
    finally:
        worker.print_to_stdstream = original
    printed = capsys.readouterr().out
    assert "the node is out of disk" in printed and printed.count(WORKER_DIED_NOTICE) == 1  # a worker's own line stays
