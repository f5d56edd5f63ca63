"""Build the Ray Tune Tuner for a StudySpec: searcher, scheduler, resources, checkpoints, failures, live tables."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import shutil
import time
from pathlib import Path

import pandas as pd

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from cvae.runtime import error_cause
from cvae.metrics import STATUS_COMPLETED
from study.records import (ENDED, EPOCHS_FILE, ERROR_KEY, STATUS_ERROR, STATUS_PENDING, STATUS_RUNNING, TrialRecord,
                           epoch_row, trial_row, trial_status)
from study.selection import best_trial
from study.tables import EpochLog, load_records, write_trials
from study.space import open_storage
from study.adapters import run_config_of, searcher_has_finished, searcher_trial, tell_searcher
from study.storage import DiskFull, is_disk_full, is_uri, remove_partial_files, storage_filesystem, uri_of
from study.trainable import run_trial

logger = logging.getLogger(__name__)
TIME_ATTR = "epoch"
TRIAL_FOLDER_PREFIX = "run_trial_"  # Tune names a trial's folder run_trial_<trial id>_<params>_<time>
KEY_PARAMS_SHOWN = 4
TRIALS_WRITE_S = 2.0  # trials.csv is a summary of epochs.csv (the log), so it may lag by this much
WRITE_COST_RATIO = 20  # a trials.csv rewrite waits at least this many times the previous one's duration
STATUS_EVERY_S, STATUS_MIN_GAP_S = 60.0, 10.0  # how often the study's own progress line is printed


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


class StudySearch(OptunaSearch):
    """OptunaSearch that tells Optuna how each trial really ended.

    Ray's OptunaSearch records a trial ASHA stopped early as COMPLETE with its last (low-fidelity) value, as if
    it had trained fully; here it is PRUNED (Optuna keeps its per-epoch values), a diverged trial FAIL, and only
    a trial that ran all its epochs COMPLETE.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        status = (result or {}).get("status")
        if (error or status == STATUS_COMPLETED or searcher_trial(self, trial_id) is None
                or searcher_has_finished(self, trial_id)):
            return super().on_trial_complete(trial_id, result, error)
        from optuna.trial import TrialState

        state = TrialState.PRUNED if status == STATUS_RUNNING else TrialState.FAIL
        try:
            tell_searcher(self, trial_id, state)
        except Exception as exc:  # noqa: BLE001 (Optuna refuses e.g. a second tell; the study goes on)
            logger.warning(exc)


def make_searcher(spec, storage: str | None):
    """OptunaSearch (seeded, warm-started with the base preset) behind a ConcurrencyLimiter; None for grids."""
    if spec.algorithm == "grid":
        return None
    multi = spec.multi_objective
    point = spec.base_point()
    searcher = StudySearch(
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


def make_trainable(spec, trainable=run_trial, inputs=None):
    """The trial function with its spec, the driver's data and classifier (`inputs`, put once into Ray's object
    store, fetched by each node) and its resources (benchmarks/study_scale.py passes a trivial trainable)."""
    extra = {"inputs": inputs} if inputs is not None else {}
    return tune.with_resources(tune.with_parameters(trainable, spec=spec, **extra), {"cpu": spec.cpu, "gpu": spec.gpu})


def param_space(spec) -> dict:
    """Grid studies enumerate their points (and seeds) here; Optuna studies keep the space in the searcher."""
    if spec.algorithm != "grid":
        return {}
    space = {p.name: tune.grid_search(list(p.values)) for p in spec.parameters}
    space["seed"] = tune.grid_search(sorted({point["seed"] for point in spec.grid()}))  # the seeds spec.grid() names
    return space


def planned_epochs(spec, params: dict) -> int | None:
    """How many epochs a trial with these params is meant to run (None if the params are not valid)."""
    try:
        return spec.trial_config(params).epochs
    except ValueError:
        return None


class StudyTables:
    """The study's tables while it runs: the trial records, epochs.csv appended before an epoch is printed,
    trials.csv rewritten on trial events (rate-limited by its own cost), and their copy in the storage."""

    def __init__(self, spec, results_dir: Path, mirror=None):
        self.spec, self.results_dir, self.mirror = spec, results_dir, mirror
        # A resumed study starts from the tables already written, so a second interruption loses nothing.
        self.records: dict[str, TrialRecord] = {r.trial_id: r for r in load_records(results_dir)}
        for record in self.records.values():
            record.interrupted = False  # running again (the end of this run decides anew)
        self.epoch_log = EpochLog(results_dir / EPOCHS_FILE)
        self.last_write, self.write_seconds = 0.0, 0.0
        self.dirty = self.urgent = False  # trials.csv lags the records; urgent: a trial started or ended since

    def record(self, trial) -> TrialRecord:
        record = self.records.get(trial.trial_id)
        if record is None:
            params = dict(trial.config)
            record = self.records[trial.trial_id] = TrialRecord(
                trial.trial_id, params, planned_epochs=planned_epochs(self.spec, params))
        return record

    def append_epoch(self, record: TrialRecord, row: dict) -> None:
        with stop_if_disk_full(self.results_dir):
            self.epoch_log.append(epoch_row(record, row))
        if self.mirror:
            self.mirror.append(epoch_row(record, row))

    def write(self, soon: bool = False) -> None:
        """Rewrite trials.csv: `soon` (a trial started, ended or was pruned) as soon as allowed, else at most
        every TRIALS_WRITE_S. A rewrite is O(trials), so it is also never closer to the previous one than
        WRITE_COST_RATIO times that one's duration: the driver spends at most ~1/WRITE_COST_RATIO of its time
        on the summary however many trials there are (epochs.csv, the log, is appended O(1) per epoch)."""
        self.dirty, self.urgent = True, self.urgent or soon
        since = time.time() - self.last_write
        if since < WRITE_COST_RATIO * self.write_seconds or (not self.urgent and since < TRIALS_WRITE_S):
            return
        started = time.perf_counter()
        self.write_now()
        self.write_seconds = time.perf_counter() - started
        self.last_write, self.dirty, self.urgent = time.time(), False, False

    def write_now(self) -> None:
        with stop_if_disk_full(self.results_dir):
            write_trials(self.results_dir, list(self.records.values()))
        if self.mirror:
            self.mirror.snapshot()


class StudyConsole:
    """The study's console: one line per trial event, and a study line (progress, best so far, ETA) every
    STATUS_EVERY_S, sooner after a trial ends but not more often than STATUS_MIN_GAP_S."""

    def __init__(self, spec, ended_ids: set[str]):
        # Clocks start with this run: time between a stop and --resume is not study time.
        self.spec, self.ended_ids = spec, ended_ids
        self.started = self.last_status = time.time()
        self.ended_this_run = 0

    def line(self, trial, text: str) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in list(trial.config.items())[:KEY_PARAMS_SHOWN])
        print(f"[{time.time() - self.started:6.0f}s] {trial.trial_id} {text:<38} {params}", flush=True)

    def ended(self, record: TrialRecord, records: list[TrialRecord]) -> None:
        self.ended_ids.add(record.trial_id)
        self.ended_this_run += 1
        self.status(records, soon=True)

    def status(self, records: list[TrialRecord], soon: bool = False) -> None:
        waited = time.time() - self.last_status
        first_end = soon and self.ended_this_run == 1  # the first pace this run can measure
        if not first_end and waited < (STATUS_MIN_GAP_S if soon else STATUS_EVERY_S):
            return
        self.last_status, elapsed = time.time(), time.time() - self.started
        print(f"[{elapsed:6.0f}s] {study_status(self.spec, records, self.ended_ids, self.ended_this_run, elapsed)}",
              flush=True)


class StudyProgress(tune.Callback):
    """Tune's events turned into the study's tables (StudyTables) and console (StudyConsole).

    Every reported epoch is appended to epochs.csv (flushed to disk) before its line is printed, so an epoch a
    user saw survives any stop; trials.csv is rewritten on trial events and at most every TRIALS_WRITE_S.
    """

    def __init__(self, spec, results_dir: Path, storage_folder: str | None = None, mirror=None):
        self.spec, self.results_dir, self.mirror = spec, results_dir, mirror
        self.storage_folder = storage_folder or results_dir  # where Tune keeps checkpoints (named if it fills up)
        self.tables: StudyTables | None = None
        self.console: StudyConsole | None = None

    def setup(self, **info):
        self.tables = StudyTables(self.spec, self.results_dir, self.mirror)
        ended = {r.trial_id for r in self.tables.records.values() if trial_status(r) in ENDED}
        self.console = StudyConsole(self.spec, ended)

    def _records(self) -> list[TrialRecord]:
        return list(self.tables.records.values())

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self.tables.record(trial)
        if record.started_at is None:  # a resumed trial keeps its first start: the history's order
            record.started_at = time.time()
        self.console.line(trial, "started")
        self.tables.write(soon=True)  # on disk at once while a rewrite is cheap; at scale, after a few events

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self.tables.record(trial)
        row = {k: v for k, v in result.items() if k != "config" and not isinstance(v, dict)}
        if row.get("status") == STATUS_ERROR:  # the trainable caught an exception: not an epoch
            record.error = str(row.get(ERROR_KEY) or "error")
            self.tables.write(soon=True)
            return
        # an epoch re-run after a resume replaces its earlier report; rows stay in epoch order
        record.rows = sorted([r for r in record.rows if r.get("epoch") != row.get("epoch")] + [row],
                             key=lambda r: r.get("epoch") or 0)
        # Tune sets done on the result that carried the scheduler's STOP; the trainable never sets it.
        if result.get("done") and row.get("status") == STATUS_RUNNING:
            record.pruned = True
        self.tables.append_epoch(record, row)
        objective = ", ".join(f"{m}={_short(row.get(m))}" for m in self.spec.metrics)
        planned = f"/{record.planned_epochs}" if record.planned_epochs else ""
        self.console.line(trial, f"epoch {row.get('epoch')}{planned} {objective} [{trial_status(record)}]")
        self.tables.write(soon=record.pruned)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        path = getattr(checkpoint, "path", None)
        self.tables.record(trial).checkpoint = uri_of(str(self.storage_folder), path) if path else None

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self.tables.record(trial)
        self.console.line(trial, f"ended: {trial_status(record)} after {len(record.rows)} epoch(s)"
                          + (f": {record.error}" if record.error else ""))
        self.tables.write(soon=True)
        self.console.ended(record, self._records())

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop_if_disk_full(trial)  # its checkpoint could not be stored: the study stops, not the trial
        record = self.tables.record(trial)
        record.error = worker_loss_cause(last_failure(trial)) or error_message(trial)
        if record.retries:
            record.error += f" (after {len(record.retries)} retr{'y' if len(record.retries) == 1 else 'ies'})"
        self.console.line(trial, f"error: {record.error}")
        self.tables.write(soon=True)
        self.console.ended(record, self._records())

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop_if_disk_full(trial)
        record = self.tables.record(trial)
        cause = worker_loss_cause(last_failure(trial)) or "its worker or node was lost"
        record.retries.append(f"{cause} after epoch {len(record.rows)}")
        self.console.line(trial, f"{cause}; retrying from its last checkpoint")
        self.tables.write(soon=True)

    def on_step_begin(self, iteration, trials, **info):
        if self.tables.dirty:  # an event whose rewrite had to wait
            self.tables.write()
        self.console.status(self._records())

    def on_experiment_end(self, trials, **info):
        self.tables.write_now()

    def _stop_if_disk_full(self, trial) -> None:
        if is_disk_full(last_failure(trial)):
            raise DiskFull(errno.ENOSPC, f"a checkpoint of trial {trial.trial_id} could not be stored",
                           str(self.storage_folder))


@contextlib.contextmanager
def stop_if_disk_full(folder: Path):
    """A write of the driver's that finds the disk full stops the study (DiskFull out of tune.fit) instead of a
    traceback from inside Tune; what is on disk stays whole (every table is replaced in one step or appended by
    whole lines), so --resume continues once space is freed."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise DiskFull(error.errno, "the study's tables could not be written", str(folder)) from None
        raise


# What Ray writes when a trial's actor is gone (ray/_private and ray/exceptions.py in Ray 2.60): its node died, or
# its worker process died while the node lived on. Kept as text: the exception reaches Tune's error file as text.
NODE_LOST = ("its node has died", "NodeDiedError", "node died", "because its node")
WORKER_LOST = ("its worker process has died", "Worker unexpectedly exits", "ActorDiedError", "died unexpectedly")


def worker_loss_cause(text: str) -> str | None:
    """What a lost worker's error means to a user (None if the text is not about a lost worker or node).

    A worker process that dies while its node lives on was, most often, killed by the kernel's out-of-memory
    killer (signal 9), or by hand; a lost node takes its workers with it.
    """
    text = text or ""
    if any(marker in text for marker in NODE_LOST):
        return "node lost"
    if any(marker in text for marker in WORKER_LOST):
        return "worker killed (signal 9; out of memory?)"
    return None


def error_text(trial) -> str:
    """Tune's error file of a trial (one `Failure # N` block per failure), or its error message, or ""."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    return text or str(getattr(trial, "error_msg", "") or "")


def last_failure(trial) -> str:
    """The newest failure's whole text in Tune's error file."""
    return error_text(trial).rsplit("Failure # ", 1)[-1]


def study_status(spec, records: list[TrialRecord], ended_ids: set, ended_this_run: int, elapsed: float) -> str:
    """`study: 10/32 trials ended (7 completed, 3 pruned), 2 running; best fid 17.9 (trial ab12); ETA ~25 min`.

    A trial counts as ended once Tune has ended it (`ended_ids`), not when its last epoch arrives.
    """
    statuses = [trial_status(record) for record in records if record.trial_id in ended_ids]
    planned = max(spec.planned_trials, len(records))
    ended = len(statuses)
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ENDED if statuses.count(s))
    running = len(records) - ended
    text = f"study: {ended}/{planned} trials ended" + (f" ({counts})" if counts else "") + f", {running} running"
    metric = spec.metrics[0]
    try:
        table = pd.DataFrame([trial_row(record) for record in records])
        best = best_trial(table, spec.metrics, spec.modes)
        text += f"; best {metric} {best[metric]:.4g} (trial {best['trial_id']})"
    except (ValueError, KeyError):
        text += "; no best trial yet"
    if ended >= planned:
        return text + "; done"
    if ended_this_run == 0:
        return text + "; ETA after the first trial ends"
    remaining = elapsed / ended_this_run * (planned - ended)
    return text + f"; ETA ~{remaining / 60:.0f} min" if remaining >= 60 else text + f"; ETA ~{remaining:.0f} s"


def _short(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def error_message(trial) -> str:
    """`ExceptionType: message` of a failed trial, from Tune's error file (no colour codes, no pid/ip noise)."""
    return error_cause(error_text(trial), "unknown error (see the trial's error.txt under tune/)")


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
            max_concurrent_trials=spec.max_concurrent if spec.algorithm == "grid" else None,
            # Reuse keeps TensorFlow imported and the classifier loaded between trials, but not under ASHA:
            # a pruned trial's thread is mid-epoch, Tune's reset gives up after 2 s, the next trial errors
            # before it starts and the ConcurrencyLimiter never frees its slot (the study hangs).
            reuse_actors=reuse_actors and spec.scheduler != "asha",
        ),
        run_config=run_config(spec, storage_path, [progress, *trackers], keep_checkpoints),
    )
    return tuner


def run_config(spec, storage_path: str, callbacks: list, keep_checkpoints: int = 1) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem(storage_path),  # a killed driver leaves no torn state file
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
    tuner = tune.Tuner.restore(
        experiment_path, trainable=make_trainable(spec, inputs=inputs), resume_unfinished=True, resume_errored=True,
        param_space=param_space(spec) or None, storage_filesystem=storage_filesystem(experiment_path),
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
