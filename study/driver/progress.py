"""A running study's tables and console: Tune's events become epochs.csv rows (appended before they are printed),
trials.csv rewrites, the storage's copy, one line per trial event and a study line with an ETA."""

from __future__ import annotations

import contextlib
import errno
import time
from pathlib import Path

import pandas as pd
from ray import tune

from study.tables.records import (ENDED, EPOCHS_FILE, ERROR_KEY, STATUS_ERROR, STATUS_PRUNED, STATUS_RUNNING,
                                  TrialRecord, epoch_row, short_text, trial_row, trial_status)
from study.tables.selection import best_trial
from study.tables.table_files import EpochLog, load_records, write_trials
from study.driver.adapters import error_message, last_failure, worker_loss_cause
from study.store.storage import DiskFull, is_disk_full, uri_of


TRIALS_WRITE_S = 2.0  # trials.csv is a summary of epochs.csv (the log), so it may lag by this much


WRITE_COST_RATIO = 20  # a trials.csv rewrite waits at least this many times the previous one's duration


STATUS_EVERY_S, STATUS_MIN_GAP_S = 60.0, 10.0  # how often the study's own progress line is printed


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

    def __init__(self, spec, ended_ids: set[str], epochs_before: int = 0):
        # Clocks start with this run: time between a stop and --resume is not study time, nor its epochs this pace.
        self.spec, self.ended_ids, self.epochs_before = spec, ended_ids, epochs_before
        self.started = self.last_status = time.time()
        self.ended_this_run = 0

    def line(self, trial, text: str) -> None:
        params = " ".join(f"{k}={short_text(v)}" for k, v in trial.config.items())  # every searched parameter
        print(f"[{time.time() - self.started:6.0f}s] {trial.trial_id} {text:<38} {params}", flush=True)

    def ended(self, record: TrialRecord, records: list[TrialRecord]) -> None:
        self.ended_ids.add(record.trial_id)
        self.ended_this_run += 1
        self.status(records, soon=True)

    def status(self, records: list[TrialRecord], soon: bool = False) -> None:
        waited = time.time() - self.last_status
        first_end = soon and self.ended_this_run == 1  # a trial's first end: worth a line now
        if not first_end and waited < (STATUS_MIN_GAP_S if soon else STATUS_EVERY_S):
            return
        self.last_status, elapsed = time.time(), time.time() - self.started
        print(f"[{elapsed:6.0f}s] {study_status(self.spec, records, self.ended_ids, self.epochs_before, elapsed)}",
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
        self.console = StudyConsole(self.spec, ended, sum(len(r.rows) for r in self.tables.records.values()))

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
        objective = ", ".join(f"{m}={short_text(row.get(m))}" for m in self.spec.metrics)
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


def study_status(spec, records: list[TrialRecord], ended_ids: set, epochs_before: int, elapsed: float) -> str:
    """`study: 10/32 trials ended (7 completed, 3 pruned), 2 running; best fid 17.9 (trial ab12); ETA ~25 min`.

    A trial counts as ended once Tune has ended it (`ended_ids`), not when its last epoch arrives. A best that
    rests on fewer epochs (pruned) says so, and a running trial already better is named beside it. The ETA counts
    epochs, not trials: the epochs still to run at this run's pace in epochs per second — a trial to come as long as
    the ended ones ran, relative to its plan (its plan before any ended), a running trial as long as the ended ones
    that got as far as it has (its plan if none did: a trial past ASHA's rungs is not about to be pruned); early
    ASHA prunes no longer swing it by the length of a trial.
    """
    statuses = [trial_status(record) for record in records if record.trial_id in ended_ids]
    planned = max(spec.planned_trials, len(records))
    ended = len(statuses)
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ENDED if statuses.count(s))
    running = len(records) - ended
    text = f"study: {ended}/{planned} trials ended" + (f" ({counts})" if counts else "") + f", {running} running"
    text += _best_text(spec, records, ended_ids)
    if ended >= planned:
        return text + "; done"
    done = sum(len(record.rows) for record in records)
    if done <= epochs_before or elapsed <= 0:
        return text + "; ETA after the first epochs"
    epochs = max(_epochs_to_run(spec, records, ended_ids, planned), 1.0)  # a running trial has one epoch at least
    remaining = epochs / ((done - epochs_before) / elapsed)
    return text + (f"; ETA ~{remaining / 60:.0f} min" if remaining >= 60 else f"; ETA ~{remaining:.0f} s")


def _best_text(spec, records: list[TrialRecord], ended_ids: set) -> str:
    metric, mode = spec.metrics[0], spec.modes[0]
    try:
        table = pd.DataFrame([trial_row(record) for record in records])
        best = best_trial(table, spec.metrics, spec.modes)
    except (ValueError, KeyError):
        return "; no best trial yet"
    text = f"; best {metric} {best[metric]:.4g} (trial {best['trial_id']}"
    text += f", pruned after {best['epochs_run']:.0f} epoch(s))" if best["status"] == STATUS_PRUNED else ")"
    running = table[~table["trial_id"].isin(ended_ids) & table[metric].notna()] if metric in table else table[:0]
    if len(running):
        leader = running.loc[running[metric].idxmin() if mode == "min" else running[metric].idxmax()]
        if (leader[metric] < best[metric]) if mode == "min" else (leader[metric] > best[metric]):
            text += f"; running trial {leader['trial_id']} at {leader[metric]:.4g} (epoch {leader['epochs_run']:.0f})"
    return text


def _epochs_to_run(spec, records: list[TrialRecord], ended_ids: set, planned: int) -> float:
    plans = {record.trial_id: planned_epochs(spec, record.params) or spec.max_epochs or 1 for record in records}
    finished = [record for record in records if record.trial_id in ended_ids]
    # the share of its plan an ended trial ran (ASHA prunes most early); 1 before any ended
    shares = [len(record.rows) / plans[record.trial_id] for record in finished]
    share = sum(len(record.rows) for record in finished) / max(1, sum(plans[r.trial_id] for r in finished)) \
        if finished else 1.0
    typical_plan = sum(plans.values()) / len(plans) if plans else (spec.max_epochs or 1)
    running = sum(_remaining(len(record.rows), plans[record.trial_id], shares)
                  for record in records if record.trial_id not in ended_ids)
    return running + share * typical_plan * max(0, planned - len(records))


def _remaining(done: int, plan: int, shares: list[float]) -> float:
    """A running trial's expected epochs still to run: as long as the ended trials that got as far as it did (a
    trial past ASHA's early rungs is no longer expected to stop at the average pruned length), else its plan."""
    survivors = [share * plan for share in shares if share * plan >= done]
    return max(0.0, (sum(survivors) / len(survivors) if survivors else plan) - done)


