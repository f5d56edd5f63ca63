"""Build the Ray Tune Tuner for a StudySpec (searcher, scheduler, resources, checkpoints, failures, the progress
callback), restore it, and read back what it ended with."""

from __future__ import annotations

import shutil
from pathlib import Path

from ray import tune

from cvae.runtime import error_cause
from study.tables.records import STATUS_PENDING, STATUS_RUNNING, TrialRecord, trial_status
from study.driver.adapters import run_config_of
from study.driver.progress import StudyProgress, planned_epochs
from study.driver.search import make_scheduler, make_searcher, param_space
from study.spec.study_file import FUSED_MEMBER_CPU
from study.store.storage import is_uri, remove_partial_files, tune_storage, uri_of
from study.driver.trainable import run_trial

TRIAL_FOLDER_PREFIX = "run_trial_"  # Tune names a trial's folder run_trial_<trial id>_<params>_<time>


def make_trainable(spec, trainable=run_trial, inputs=None):
    """The trial function with its spec, the driver's data and classifier (`inputs`, put once into Ray's object
    store, fetched by each node) and its resources (benchmarks/study_scale.py passes a trivial trainable). A fused
    study's trial is a member of a program actor that holds the resources (study/driver/fused_groups.py)."""
    extra = {"inputs": inputs} if inputs is not None else {}
    resources = {"cpu": spec.cpu, "gpu": spec.gpu}
    if spec.fuse > 1 and trainable is run_trial:  # run_trial hands the trial to its program
        resources = {"cpu": FUSED_MEMBER_CPU}
    return tune.with_resources(tune.with_parameters(trainable, spec=spec, **extra), resources)


def build_tuner(spec, storage_path: str, results_dir: Path, optuna_storage: str | None = None,
                reuse_actors: bool = True, trackers: tuple = (), keep_checkpoints: int = 1,
                trainable=run_trial, inputs=None, mirror=None) -> tune.Tuner:
    """A fresh Tuner for the study, with the live-progress callback (and any trackers, e.g. MLflow) attached."""
    progress = StudyProgress(spec, results_dir, storage_path, mirror)
    scheduler = make_scheduler(spec)
    searcher = make_searcher(spec, optuna_storage)
    tuner = tune.Tuner(
        make_trainable(spec, trainable, inputs),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=1 if spec.algorithm == "grid" else spec.num_samples,
            max_concurrent_trials=spec.concurrent_trials if spec.algorithm == "grid" else None,
            # Reuse keeps TensorFlow imported and the classifier loaded between trials, but not under ASHA:
            # a pruned trial's thread is mid-epoch, Tune's reset gives up after 2 s, the next trial errors
            # before it starts and the ConcurrencyLimiter never frees its slot (the study hangs).
            reuse_actors=reuse_actors and spec.scheduler != "asha",
        ),
        run_config=run_config(spec, storage_path, [progress, *trackers], keep_checkpoints),
    )
    return tuner


def run_config(spec, storage_path: str, callbacks: list, keep_checkpoints: int = 1) -> tune.RunConfig:
    path, filesystem = tune_storage(storage_path)  # atomic local files, or a store reached patiently
    return tune.RunConfig(
        name=spec.name,
        storage_path=path,
        storage_filesystem=filesystem,
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(
            # The newest: a trial's result is its last epoch (selection.BEST_RULE) and a resume needs it. Keeping
            # one also makes every checkpoint push the experiment state to the storage folder at once.
            num_to_keep=keep_checkpoints,
        ),
        failure_config=tune.FailureConfig(max_failures=2),
    )


def restore_tuner(spec, experiment_path: str, results_dir: Path, trackers: tuple = (), inputs=None,
                  mirror=None) -> tune.Tuner:
    """Continue an interrupted study: finished trials are kept, unfinished ones resume from checkpoints.

    The searcher's state comes back from the experiment folder; the callbacks are this run's (a tracker given
    only now, e.g. --mlflow, takes part too). Tuner.restore takes no callbacks, so they are set on the
    restored run configuration (Ray 2.60: Tuner._local_tuner._run_config). Files a killed driver was still
    writing are removed first; the versions they would have replaced are whole.
    """
    remove_partial_files(experiment_path)
    path, filesystem = tune_storage(experiment_path)
    tuner = tune.Tuner.restore(
        path, trainable=make_trainable(spec, inputs=inputs), resume_unfinished=True, resume_errored=True,
        param_space=param_space(spec) or None, storage_filesystem=filesystem,
    )
    restored = run_config_of(tuner)
    restored.callbacks = [StudyProgress(spec, results_dir, experiment_path, mirror), *trackers]
    return tuner


def finish_records(grid, spec, records: list[TrialRecord], storage_path: str) -> list[TrialRecord]:
    """The study's records after tuner.fit(): each trial's chosen checkpoint from Tune, and every trial that
    was still running marked interrupted (fit() returns early only when the driver was stopped).

    The records come from the tables (the live log), not from Tune's history: that history of a trial retried
    on a new node starts at its checkpoint, and a scheduler's decision to prune is not in it.
    """
    by_id = {record.trial_id: record for record in records}
    known = set()
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        known.add(trial_id)
        record = by_id.get(trial_id)
        if record is None:  # never reported (e.g. failed at once): Tune is all we have
            params = dict(result.config or {})
            record = by_id[trial_id] = TrialRecord(trial_id, params, planned_epochs=planned_epochs(spec, params))
        if result.error and not record.error:
            record.error = error_cause(str(result.error), type(result.error).__name__)
        if result.checkpoint is not None:  # the last epoch's: the trial's result
            record.checkpoint = uri_of(storage_path, result.checkpoint.path)
    # A trial started in the moment before a driver was killed, before Tune's experiment state reached the
    # storage folder, is unknown to the resumed Tune, which starts its configuration afresh. Such a trial
    # measured nothing (each epoch's checkpoint sends that state out at once), so its row goes.
    kept = [record for record in by_id.values() if record.trial_id in known or record.rows]
    for record in kept:
        record.interrupted = trial_status(record) in (STATUS_RUNNING, STATUS_PENDING)
    return kept


def remove_orphan_folders(experiment_path: str, trial_ids: set) -> list[str]:
    """Delete Tune trial folders (run_trial_<id>_...) of trials the tables do not hold; returns their names.

    Only such never-measured trials (see finish_records) leave them. Remote storage (a URI) is left alone.
    """
    if is_uri(experiment_path) or not Path(experiment_path).is_dir():
        return []
    removed = []
    prefixes = tuple(f"{TRIAL_FOLDER_PREFIX}{trial_id}_" for trial_id in trial_ids)  # ids may hold "_" (grids)
    for folder in Path(experiment_path).glob(TRIAL_FOLDER_PREFIX + "*"):
        if folder.is_dir() and not folder.name.startswith(prefixes):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
