"""CLI: python study/run.py --space grey_loss.yaml — run (or resume) a Ray Tune + Optuna study of the C-VAE.

Flags -> RunRequest -> Study (study/driver/checks.py checks everything it can first) -> the study folder under its
lock -> Ray (study/driver/launch.py) -> the Tuner (study/driver/tuner.py) -> the end of the run
(study/driver/ending.py). Library code raises; this command turns each ending into its line and exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings

from cvae.environment import RAY_ADDRESS_ENV
from cvae.command_line import DATA_FLAGS, ArgumentParser, add_config_flags, exit_with, refuse
from study.driver.checks import (RunRequest, check_same_study, check_study_folder, prepare, restore_from_storage,
                                 take_lease, take_lock)
from study.driver.ending import Outcome, end_run, stop_for_disk
from study.driver.inputs import DriverData, read_data, ship_inputs
from study.driver.launch import start_study
from study.driver.ray_cluster import default_results_dir
from study.errors import Refusal
from study.tables.studies import Study

EXIT_CODES = {Outcome.DONE: 0, Outcome.TRIAL_ERROR: 1,
              Outcome.DISK_FULL: 1,  # an error, not an interruption, though --resume continues once space is freed
              Outcome.INTERRUPTED: 130}  # the shell's code for a command ended by Ctrl-C: resumable, not done


def parse_args(argv, prog: str = "python study/run.py"):
    parser = ArgumentParser(
        prog=prog,
        description="Run a hyperparameter study of the C-VAE with Ray Tune + Optuna. Tables go to "
        "results/<name>/trials.csv and epochs.csv while it runs; checkpoints to results/<name>/tune/.",
        epilog="Examples:  python study/run.py --space smoke.yaml\n"
        "           python study/run.py --space grey_loss.yaml --num-samples 8 --max-epochs 3\n"
        "           python study/run.py --space grey_loss.yaml --address HEAD_IP:6379 --storage-path s3://bucket/studies\n"
        "           python study/run.py --space grey_loss.yaml --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--space", required=True, help="study file: a path, or a name in search_spaces/ (e.g. grey_loss.yaml)")
    parser.add_argument("--name", help="study name (default: the file's name:); results go to results/<name>")
    parser.add_argument("--num-samples", type=int, help="number of Optuna trials (overrides search.num_samples)")
    parser.add_argument("--max-epochs", type=int, help="cap every trial's epochs (and ASHA's max_t)")
    add_config_flags(parser.add_argument_group("override the study file's fixed: settings"), DATA_FLAGS)
    parser.add_argument("--max-concurrent", type=int, help="trials running at once (overrides search.max_concurrent)")
    parser.add_argument("--repeats", type=int, help="a grid study's seeds per point (overrides search.repeats)")
    parser.add_argument("--first-seed", type=int, help="a grid study's first seed (overrides search.first_seed): "
                        "more seeds for an earlier study are a new study, e.g. --first-seed 3 --repeats 7 --name "
                        "NAME_more, which study/report.py pools with it (--pool)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (TensorFlow threads follow it)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions share a GPU (e.g. 0.5)")
    parser.add_argument("--fuse", type=int, metavar="K", help="train up to K trials of one shape as one JAX program "
                        "(overrides resources.fuse; cpu/gpu and --max-concurrent then count programs; pays on a GPU: "
                        "benchmarks/README.md)")
    parser.add_argument("--address", default=os.environ.get(RAY_ADDRESS_ENV),
                        help="join an existing Ray cluster (HEAD_IP:6379; default $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--storage-path", help="where Tune keeps trials and checkpoints: a folder every node can "
                        "reach or a URI (s3://bucket/path, with ?endpoint_override=HOST:PORT&scheme=http or "
                        "AWS_ENDPOINT_URL for an S3-compatible store); the study's tables live there too, so --resume, "
                        "best.py, sample.py and report.py work from any machine (default results/<name>/tune)")
    parser.add_argument("--optuna-storage", "--storage", dest="optuna_storage",
                        help="keep the Optuna study in a database, e.g. sqlite:///results/grey_loss.db (readable by "
                        "the optuna CLI and optuna-dashboard); --storage is its older name")
    parser.add_argument("--results-dir", default=str(default_results_dir()),
                        help="parent of results/<name> (default results/; in a Ray job ~/cvae-study-results, as the "
                        "job's working folder is replaced while it runs)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    parser.add_argument("--take-over", action="store_true",
                        help="for a study in an object store: take its lease now from a driver you know is gone "
                        "(without it, a killed driver's lease runs out after CVAE_LEASE_SECONDS, default 60)")
    parser.add_argument("--mlflow", metavar="URI", help="also log every trial as an MLflow run (params, per-epoch "
                        "metrics, status, chosen checkpoint) in this tracking store, e.g. sqlite:///mlflow.db; "
                        "needs pip install -e '.[mlflow]'")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's and TensorFlow's own start-up, checkpoint and progress lines")
    parser.add_argument("--keep-checkpoints", type=int, default=1, metavar="N",
                        help="checkpoints each trial keeps, newest first (default 1: the one a resume needs, which is "
                        "the trial's result); a trial that has ended keeps its weights only, not its optimizer state")
    parser.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                        help="start a fresh worker process per trial (default: reuse, which skips TensorFlow "
                        "start-up; ASHA studies always start fresh ones, as pruned trials cannot hand theirs on)")
    return parser.parse_args(argv)


def main(argv=None, prog: str = "python study/run.py") -> int:
    request = RunRequest(**vars(parse_args(argv, prog)))
    if not request.verbose:  # a second Ctrl-C can leave Ray's log files to the interpreter's exit: not the user's
        warnings.simplefilter("ignore", ResourceWarning)
    try:
        return EXIT_CODES[run(request)]
    except Refusal as error:
        return refuse(error)


def run(request: RunRequest) -> Outcome:
    study = prepare(request)
    data = read_data(study.spec)  # input checks first; what depends on the study folder's state waits for its lock
    lock = take_lock(study)
    lease = None
    try:
        lease = take_lease(request, study, on_lost=stop_for_lost_lease)
        if request.resume and study.kept_in_storage:
            restore_from_storage(study)  # a resume on a machine without the tables
        rebuild_tuner_state = check_study_folder(request, study)
        if request.resume:
            check_same_study(request, study)
        return run_study(request, study, data, rebuild_tuner_state)
    finally:
        if lease is not None:
            lease.release()
        lock.release()


def stop_for_lost_lease(why: str) -> None:
    """Another driver took the study over: say so and stop as on Ctrl-C (every write to the store is refused)."""
    print(f"stopping: {why}; nothing more is written to the study's storage", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGINT)


def stop_like_ctrl_c(signum, frame) -> None:
    """SIGTERM (a scheduler's or a container's stop) ends the study the way Ctrl-C does: state saved, tables
    written, running trials marked interrupted."""
    os.kill(os.getpid(), signal.SIGINT)


def run_study(request: RunRequest, study: Study, data: DriverData, rebuild_tuner_state: bool = False) -> Outcome:
    """Start Ray, build or restore the Tuner, fit it, and end the run (a full disk stops it in one line)."""
    from study.store.storage import disk_reserve, is_disk_full

    mirror = start_study(request, study, data.env)
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    trackers = ()
    if request.mlflow:
        from study.driver.tracking import MlflowTracker

        trackers = (MlflowTracker(request.mlflow, study.spec.name),)
    if study.spec.fuse > 1:
        from study.driver.fused_groups import FusedPrograms

        trackers = (*trackers, FusedPrograms(study.spec.name))
    inputs = ship_inputs(study, data.dataset, mirror)
    tuner = make_tuner(request, study, inputs, mirror, trackers, rebuild_tuner_state)
    started = time.time()
    with disk_reserve(study.folder) as release_reserve, watch_store(study):
        try:
            grid = tuner.fit()
        except Exception as error:  # noqa: BLE001 (only a full disk is handled here; anything else is re-raised)
            if not is_disk_full(error):
                raise
            release_reserve()  # room for the rewrite that marks the running trials interrupted
            return stop_for_disk(error, study, request)
    return end_run(study, grid, mirror, trackers, time.time() - started, request.space)


def watch_store(study: Study):
    """A StoreWatch on the study's object store while it runs (nothing for a local storage folder)."""
    import contextlib

    from study.store.patient_store import StoreWatch
    from study.store.storage import filesystem_of, is_uri

    if not is_uri(study.storage):
        return contextlib.nullcontext()
    return StoreWatch(*filesystem_of(study.experiment))


def make_tuner(request: RunRequest, study: Study, inputs, mirror, trackers: tuple, rebuild_tuner_state: bool):
    """A new study's Tuner, or a resumed one's restored; both hand every trial `inputs` (the driver's data and
    classifier)."""
    from study.driver.adapters import point_trials_at_kept_checkpoints
    from study.driver.tuner import build_tuner, restore_tuner
    from study.store.storage import TUNER_STATE, tune_storage

    spec, folder = study.spec, study.folder
    if not request.resume:
        return build_tuner(spec, study.storage, folder, request.optuna_storage, request.reuse_actors, trackers,
                           request.keep_checkpoints, inputs=inputs, mirror=mirror)
    if rebuild_tuner_state:
        # It holds the Tuner as first built; check_same_study made sure the study file and flags still are.
        print(f"note: Tune's {TUNER_STATE} was cut short by a killed driver; rebuilt from the study file", flush=True)
        build_tuner(spec, study.storage, folder, request.optuna_storage, request.reuse_actors, (),
                    request.keep_checkpoints)
    for line in point_trials_at_kept_checkpoints(*tune_storage(study.experiment)):
        print(f"note: {line} (the driver was killed as Tune replaced it)", flush=True)
    return restore_tuner(spec, study.experiment, folder, trackers, inputs, mirror)


if __name__ == "__main__":
    exit_with(main)
