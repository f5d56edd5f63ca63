"""Build the Ray Tune Tuner for a StudySpec: searcher, scheduler, resources, checkpoints, failures, live tables."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from study.results import TrialRecord, load_records, trial_status, write_tables
from study.space import open_storage
from study.trainable import run_trial

TIME_ATTR = "epoch"
KEY_PARAMS_SHOWN = 4


def make_sampler(name: str, seed: int, multi_objective: bool):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def make_searcher(spec, storage: str | None):
    """OptunaSearch (seeded, warm-started with the base preset) behind a ConcurrencyLimiter; None for grids."""
    if spec.algorithm == "grid":
        return None
    multi = spec.multi_objective
    point = spec.base_point()
    searcher = OptunaSearch(
        space=spec.optuna_distributions(),
        metric=list(spec.metrics) if multi else spec.metrics[0],
        mode=list(spec.modes) if multi else spec.modes[0],
        points_to_evaluate=[point] if point else None,
        sampler=make_sampler(spec.sampler, spec.seed, multi),
        study_name=spec.name,
        storage=open_storage(storage) if storage else None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)


def make_scheduler(spec):
    if spec.scheduler == "asha":
        max_t = spec.max_epochs or spec.trial_config({}).epochs
        return ASHAScheduler(time_attr=TIME_ATTR, metric=spec.metrics[0], mode=spec.modes[0], max_t=max_t,
                             grace_period=min(spec.grace_period, max_t), reduction_factor=spec.reduction_factor)
    return FIFOScheduler()


def make_trainable(spec):
    return tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"cpu": spec.cpu, "gpu": spec.gpu})


def param_space(spec) -> dict:
    """Grid studies enumerate their points (and seeds) here; Optuna studies keep the space in the searcher."""
    if spec.algorithm != "grid":
        return {}
    space = {p.name: tune.grid_search(list(p.values)) for p in spec.parameters}
    space["seed"] = tune.grid_search(list(range(spec.repeats)))
    return space


def planned_epochs(spec, params: dict) -> int | None:
    """How many epochs a trial with these params is meant to run (None if the params are not valid)."""
    try:
        return spec.trial_config(params).epochs
    except ValueError:
        return None


class StudyProgress(tune.Callback):
    """Prints one line per trial event and keeps trials.csv / epochs.csv current while the study runs."""

    def __init__(self, spec, results_dir: Path):
        self.spec = spec
        self.results_dir = results_dir
        self.records: dict[str, TrialRecord] = {}
        self.started = time.time()
        self.last_write = 0.0

    def setup(self, **info):
        # A resumed study starts from the tables already written, so a second interruption loses nothing.
        if not self.records:
            self.records = {r.trial_id: r for r in load_records(self.results_dir)}

    def _record(self, trial) -> TrialRecord:
        record = self.records.get(trial.trial_id)
        if record is None:
            params = dict(trial.config)
            record = self.records[trial.trial_id] = TrialRecord(
                trial.trial_id, params, planned_epochs=planned_epochs(self.spec, params))
        return record

    def _line(self, trial, text: str) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in list(trial.config.items())[:KEY_PARAMS_SHOWN])
        elapsed = time.time() - self.started
        print(f"[{elapsed:6.0f}s] {trial.trial_id} {text:<38} {params}", flush=True)

    def _write(self, force: bool = False) -> None:
        if force or time.time() - self.last_write > 1:
            write_tables(self.results_dir, list(self.records.values()), self.spec.metrics, self.spec.modes)
            self.last_write = time.time()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._record(trial)
        self._line(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self._record(trial)
        row = {k: v for k, v in result.items() if k != "config"}
        record.rows = [r for r in record.rows if r.get("epoch") != row.get("epoch")] + [row]
        objective = ", ".join(f"{m}={_short(row.get(m))}" for m in self.spec.metrics)
        planned = f"/{record.planned_epochs}" if record.planned_epochs else ""
        self._line(trial, f"epoch {row.get('epoch')}{planned} {objective} [{row.get('status')}]")
        self._write()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._record(trial).checkpoint = getattr(checkpoint, "path", None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self._record(trial)
        record.finished = True
        self._line(trial, f"ended: {trial_status(record)} after {len(record.rows)} epoch(s)")
        self._write(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._record(trial)
        record.finished = True
        record.error = str(getattr(trial, "error_file", None) or "error")
        self._line(trial, f"error (retried up to the failure limit): {record.error}")
        self._write(force=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(trial, "lost its worker; retrying from its last checkpoint")


def _short(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def build_tuner(spec, storage_path: str, results_dir: Path, optuna_storage: str | None = None,
                reuse_actors: bool = True) -> tune.Tuner:
    """A fresh Tuner for the study, with the live-progress callback attached."""
    progress = StudyProgress(spec, results_dir)
    scheduler = make_scheduler(spec)
    searcher = make_searcher(spec, optuna_storage)
    tuner = tune.Tuner(
        make_trainable(spec),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=1 if spec.algorithm == "grid" else spec.num_samples,
            max_concurrent_trials=spec.max_concurrent if spec.algorithm == "grid" else None,
            # Reuse keeps TensorFlow imported and the classifier loaded between trials, but not under ASHA:
            # a pruned trial's thread is mid-epoch, Tune's reset gives up after 2 s, the next trial errors
            # before it starts and the ConcurrencyLimiter never frees its slot (the study hangs).
            reuse_actors=reuse_actors and spec.scheduler != "asha",
        ),
        run_config=run_config(spec, storage_path, progress),
    )
    return tuner


def run_config(spec, storage_path: str, progress: StudyProgress) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name,
        storage_path=storage_path,
        callbacks=[progress],
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2,  # the best epoch by the objective plus the newest (needed to resume)
            checkpoint_score_attribute=spec.metrics[0],
            checkpoint_score_order=spec.modes[0],
        ),
        failure_config=tune.FailureConfig(max_failures=2),
    )


def restore_tuner(spec, experiment_path: str) -> tune.Tuner:
    """Continue an interrupted study: finished trials are kept, unfinished ones resume from checkpoints.

    The searcher's state and the progress callback come back from the experiment folder.
    """
    return tune.Tuner.restore(
        experiment_path, trainable=make_trainable(spec), resume_unfinished=True, resume_errored=True,
        param_space=param_space(spec) or None,
    )


def records_from_grid(grid, spec) -> list[TrialRecord]:
    """TrialRecords from a finished (or interrupted) ResultGrid, with each trial's best checkpoint."""
    analysis = getattr(grid, "_experiment_analysis", None)  # trial states are not public on ResultGrid
    states = {t.trial_id: t.status for t in getattr(analysis, "trials", None) or []}
    records = []
    for result in grid:
        frame = result.metrics_dataframe
        rows = [] if frame is None else [
            {k: v for k, v in row.items() if not str(k).startswith("config/")} for row in frame.to_dict("records")]
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        try:
            chosen = result.get_best_checkpoint(spec.metrics[0], spec.modes[0])
        except (RuntimeError, ValueError, KeyError):  # no scored checkpoint (e.g. diverged at once)
            chosen = None
        chosen = chosen or result.checkpoint
        record = TrialRecord(trial_id, dict(result.config or {}), rows, error=str(result.error) if result.error else None,
                             checkpoint=chosen.path if chosen else None,
                             finished=states.get(trial_id, "TERMINATED") in ("TERMINATED", "ERROR"))
        record.planned_epochs = planned_epochs(spec, record.params)
        records.append(record)
    return records
