"""study/driver without a study: what tuner.py removes from Tune's storage, what progress.py prints for a trial."""

from study.driver.tuner import remove_orphan_folders


def test_only_folders_of_unknown_trials_are_removed(tmp_path):
    names = ["run_trial_bf303_00000_0_preset=model_1,seed=0_2026-11-24_18-56-24",  # a grid trial: "_" in its id
             "run_trial_3286c70b_2_grey_weight=0.1744_2026-11-25_21-55-44",
             "run_trial_436650dc_3_grey_weight=0.4326_2026-11-25_21-56-03"]  # never recorded in the tables
    for name in names:
        (tmp_path / name / "checkpoint_000000").mkdir(parents=True)
    removed = remove_orphan_folders(str(tmp_path), {"bf303_00000", "3286c70b", "bf303_00001"})
    assert removed == [names[2]] and sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:2])
    assert remove_orphan_folders("s3://bucket/study", set()) == []  # remote storage is left alone



def test_a_trial_line_shows_every_searched_parameter(capsys):
    """grey_loss searches five parameters (fANOVA ranks latent_dim second): the console shows them all."""
    from types import SimpleNamespace

    from study.driver.progress import StudyConsole

    params = {"grey_weight": 0.4331, "grey_threshold": 0.1, "warmup_epochs": 3, "condition_mode": "global",
              "latent_dim": 4}
    StudyConsole(spec=None, ended_ids=set()).line(SimpleNamespace(trial_id="a373b508", config=params), "started")
    line = capsys.readouterr().out
    assert line.rstrip().endswith("grey_weight=0.433 grey_threshold=0.1 warmup_epochs=3 condition_mode=global "
                                  "latent_dim=4"), line


def test_the_study_line_names_a_pruned_best_and_a_better_running_trial_and_counts_epochs_for_its_eta():
    from types import SimpleNamespace

    from study.driver.progress import study_status
    from study.tables.records import TrialRecord

    spec = SimpleNamespace(planned_trials=4, metrics=("fid",), modes=("min",), max_epochs=8,
                           trial_config=lambda params: SimpleNamespace(epochs=8))

    def rows(*fids, last):
        return [{"epoch": i + 1, "fid": fid, "status": last if i == len(fids) - 1 else "running"}
                for i, fid in enumerate(fids)]

    records = [TrialRecord("cut", {"grey_weight": 0.1}, rows(90.0, 80.0, last="pruned"), pruned=True),
               TrialRecord("busy", {"grey_weight": 0.2}, rows(70.0, 50.0, 40.0, last="running"))]
    line = study_status(spec, records, {"cut"}, epochs_before=0, elapsed=25.0)
    assert "best fid 80 (trial cut, pruned after 2 epoch(s)); running trial busy at 40 (epoch 3)" in line, line
    # 5 epochs in 25 s; the ended trial ran 2 of its 8, so 2 more trials are expected to run 2 each; the running one
    # is past where that one stopped, so no ended trial says when it stops: its plan, 5 more. 9 epochs: 45 s
    assert line.endswith("; ETA ~45 s"), line
    assert study_status(spec, records, {"cut"}, epochs_before=5, elapsed=25.0).endswith("ETA after the first epochs")
    # once a trial that got as far ran 6, a trial at epoch 3 expects 3 more (not the pruned trials' length); 2 trials
    # to come at 8/16 of their plan, 4 each: 11 epochs at 11 in 55 s
    records.append(TrialRecord("far", {"grey_weight": 0.3}, rows(*[60.0] * 6, last="completed")))
    line = study_status(SimpleNamespace(**{**vars(spec), "planned_trials": 5}), records, {"cut", "far"},
                        epochs_before=0, elapsed=55.0)
    assert line.endswith("; ETA ~55 s"), line


def test_tunes_own_upload_race_is_kept_off_the_console_and_other_upload_failures_are_not():
    """Seen beside the store outage: Tune's upload listed its state's temporary file just before Tune renamed it."""
    import logging
    import sys

    from study.driver.ray_cluster import quiet_console

    def record(error: Exception) -> logging.LogRecord:
        try:
            raise error
        except Exception:  # noqa: BLE001
            return logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, __file__, 1,
                                     "Saving experiment state to storage failed with exception: ", (),
                                     sys.exc_info())

    quiet_console()
    logger = logging.getLogger("ray.tune.execution.experiment_state")
    race = FileNotFoundError(2, "Failed to open local file '/tmp/ray/session_x/artifacts/t/outage/driver_artifacts/"
                                ".d766d6d1-tmp-basic-variant-state-2026-12-07_13-39-34.json'")
    assert not logger.filter(record(race))
    assert logger.filter(record(FileNotFoundError(2, "Failed to open local file 'experiment_state.json'")))
    assert logger.filter(record(OSError("When uploading part for key 'studies/outage/x': AWS Error NETWORK_CONNECTION")))


def test_optunas_repeated_epoch_warning_is_kept_off_the_console_after_quiet_console():
    """A trial that runs an epoch again after a resume reports its step to Optuna again: Optuna warns (seen in CI's
    fused fault test); the study keeps that warning off its console, and only that one."""
    import warnings

    import optuna

    from study.driver.ray_cluster import quiet_console

    def report_twice():
        trial = optuna.create_study().ask()
        with warnings.catch_warnings(record=True) as caught:  # the filters in force, the warnings recorded
            trial.report(1.0, 1)
            trial.report(2.0, 1)
            warnings.warn("another warning", UserWarning)
        return [str(warning.message) for warning in caught]

    before = report_twice()
    assert any("is already reported" in message for message in before), before
    with warnings.catch_warnings():
        quiet_console()
        after = report_twice()
    assert not any("is already reported" in message for message in after) and "another warning" in after, after
