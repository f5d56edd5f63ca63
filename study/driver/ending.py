"""What a study run says when it ends: the disk its checkpoints take, the best trial and what to run next, or,
when a disk filled, where and how to continue."""

from __future__ import annotations

import enum
import shlex
import shutil
import sys
from pathlib import Path

from study.driver.checks import RunRequest, disk_needed_mb


class Outcome(enum.Enum):
    """How a study run ended; run.py turns each into its exit code."""

    DONE = "done"  # every trial ended and none in error
    INTERRUPTED = "interrupted"  # stopped (Ctrl-C, SIGTERM) with trials unfinished: resumable
    TRIAL_ERROR = "trial error"  # done, but a trial ended in `error`
    DISK_FULL = "disk full"  # a disk filled and the study stopped: --resume continues once space is freed


def stop_for_disk(error: Exception, study, request: RunRequest) -> Outcome:
    """The study stopped because a disk filled: one line saying which folder, how full, and how to continue."""
    from study.store.storage import is_uri

    spec, results_dir = study.spec, study.folder
    folder = getattr(error, "filename", None) or (results_dir if is_uri(study.storage) else study.storage)
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:,.0f} MB free"
    except OSError:
        free = "free space unknown"
    needed = disk_needed_mb(spec, request.keep_checkpoints)
    marked = mark_interrupted(results_dir)
    print(f"error: disk full: {folder} ({free}) could not take the study's next write, so it stopped; the tables "
          f"hold every epoch written so far{marked}. Free about {needed:,.0f} MB there, then: python study/run.py "
          f"--space {request.space} --name {spec.name} --resume", file=sys.stderr, flush=True)
    return Outcome.DISK_FULL


def mark_interrupted(results_dir: Path) -> str:
    """Mark the trials a stopped study left running as interrupted, as Ctrl-C does; returns what the stop line
    adds when that rewrite did not fit either (--resume treats running and interrupted rows alike)."""
    from study.tables.records import STATUS_PENDING, STATUS_RUNNING, trial_status
    from study.tables.table_files import load_records, write_trials

    records = load_records(results_dir)
    for record in records:
        record.interrupted = trial_status(record) in (STATUS_RUNNING, STATUS_PENDING)
    try:
        write_trials(results_dir, records)
    except OSError:
        return " (its running trials still read `running`: there was no room to mark them interrupted)"
    return ""


def report_disk(study, records, strip: bool = True) -> None:
    """Ended trials keep weights only (their optimizer state is two thirds of a checkpoint and can never be used
    again) when `strip`; then print what the study's checkpoints take on disk."""
    from study.tables.records import ENDED, trial_status
    from study.tables.table_files import resolve_path
    from study.store.storage import display, exists, folder_bytes, kept_checkpoints, strip_training_state_at

    experiment, results_dir = study.experiment, study.folder
    if not exists(experiment):
        return
    freed = 0
    for record in records:
        if strip and record.checkpoint and trial_status(record) in ENDED:
            for checkpoint in kept_checkpoints(str(resolve_path(results_dir, record.checkpoint))):
                freed += strip_training_state_at(checkpoint)
    print(f"disk: {folder_bytes(experiment) / 1e6:.0f} MB of checkpoints and logs in {display(experiment)}"
          + (f" ({freed / 1e6:.0f} MB of ended trials' optimizer state removed)" if freed else ""), flush=True)


def summarise(study, trials) -> None:
    from cvae.metrics import SPLIT_FREE_METRICS, TEST_PREFIX
    from study.store.storage import is_uri
    from study.tables.records import trial_params
    from study.tables.selection import provisional_note
    from study.tables.table_files import resolve_path

    spec, results_dir = study.spec, study.folder
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    print(f"\n{len(trials)} trial(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    try:
        best = study.best(trials)
    except ValueError as error:
        print(f"no best trial: {error}")
        return
    params = trial_params(best)
    provisional = provisional_note(best)
    if provisional:
        print(provisional)
    print(f"best trial {best['trial_id']} (chosen on validation {', '.join(spec.metrics)}): " +
          ", ".join(f"{k}={v}" for k, v in params.items()))
    shown = ("fid", "class_accuracy", "thickness_corr", "class_parity", "grey_gap", "collapse_rate")
    if not provisional:
        print("  test:       " + ", ".join(f"{m}={best.get(TEST_PREFIX + m, float('nan')):.4g}" for m in shown))
    print("  validation: " + ", ".join(f"{m}={best[m]:.4g}" for m in shown
                                       if provisional or m not in SPLIT_FREE_METRICS))  # one sweep: shown once
    print(f"  checkpoint: {resolve_path(results_dir, best['checkpoint'])}")
    print(f"tables: {results_dir / 'trials.csv'}, {results_dir / 'epochs.csv'}")
    # a study kept in an object store is read by its URI, from this machine or any other
    where = shlex.quote(study.experiment) if is_uri(study.storage) else results_dir
    print("next:\n"
          f"  python study/report.py {where}      # figures, summary.md, claim verdicts\n"
          f"  python study/best.py {where}\n"
          f"  python study/sample.py {where} --out best.png")


def end_run(study, grid, mirror, trackers: tuple, seconds: float, space: str) -> Outcome:
    """The tables written whole (and copied to the storage), the disk line, the trackers closed, the summary."""
    from study.tables.records import STATUS_ERROR
    from study.tables.selection import incomplete_note
    from study.tables.table_files import load_records, write_tables
    from study.driver.tuner import finish_records, remove_orphan_folders

    records = finish_records(grid, study.spec, load_records(study.folder), study.storage)
    trials, _ = write_tables(study.folder, records)
    if mirror:
        mirror.snapshot()
    remove_orphan_folders(study.experiment, set(trials["trial_id"]) if len(trials) else set())
    note = incomplete_note(trials, study.spec.to_dict(), space)
    # A stopped run strips nothing: a trial whose last epoch was reported as the stop came reads completed here but
    # is unfinished to Tune, which resumes it from that checkpoint (a weights-only one would end it in error). The
    # run that finishes strips every ended trial's.
    report_disk(study, records, strip=not note)
    from study.store.patient_store import OUTAGES

    if outage := OUTAGES.summary():  # the store went away and came back: said once, with how long
        print(outage, flush=True)
    for tracker in trackers:
        tracker.finish(records, study.folder)
    if note:  # e.g. Ctrl-C: Tune saved its state, the tables hold everything measured so far
        print(f"stopped after {seconds:.0f} s; {note}", flush=True)
    else:
        print(f"finished in {seconds:.0f} s")
    summarise(study, trials)
    errors = int((trials["status"] == STATUS_ERROR).sum()) if len(trials) else 0
    if errors:
        print(f"{errors} trial(s) failed with an error (the `error` column of {study.folder / 'trials.csv'})",
              file=sys.stderr)
        return Outcome.TRIAL_ERROR
    return Outcome.INTERRUPTED if note else Outcome.DONE
