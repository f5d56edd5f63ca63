"""The Ray Tune wrapper around cvae.train: thread limits, report + checkpoint, restore."""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time

import ray
from ray import tune

from cvae.checkpoint import missing_resume_files
from cvae.environment import VERBOSE_ENV
from cvae.runtime import native_stderr_to
from cvae.metrics import CHECKPOINT_KEY, SAMPLE_METRICS, TRAIN_METRICS, VALIDATION_METRICS
from cvae.train import train
from study.driver.adapters import PROGRAM_LOST
from study.tables.records import ERROR_KEY, STATUS_ERROR
from study.store.storage import checkpoints_beside, is_disk_full


VERBOSE = os.environ.get(VERBOSE_ENV) == "1"  # the driver runs with --verbose (it sets this in Ray's worker environment)
STARTUP_LOG = "tensorflow_startup.log"  # in the trial's folder under tune/ (its working folder on remote storage)


def startup_log() -> str:
    trial_dir = tune.get_context().get_trial_dir()
    return os.path.join(trial_dir, STARTUP_LOG) if trial_dir and os.path.isdir(trial_dir) else STARTUP_LOG


def limit_threads(cpus: float) -> float:
    """Give TensorFlow as many threads as the trial has CPUs (it would otherwise use every core).

    Returns:
        Seconds spent importing TensorFlow (0 in a reused worker).
    """
    started = time.perf_counter()
    with native_stderr_to(startup_log(), VERBOSE):  # device probing happens here too, not only at import
        import tensorflow as tf

        imported = time.perf_counter() - started
        threads = max(1, int(cpus))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads + 1))
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)  # fractional GPUs share one card
        except RuntimeError:
            pass  # already initialised in this worker (a reused actor): the first trial's limits stay
    return imported


def _reporter(extra: dict, progress: dict):
    def report(metrics: dict) -> None:
        folder = metrics.pop(CHECKPOINT_KEY, None)
        metrics.update(extra, node_id=ray.get_runtime_context().get_node_id())  # retries may move nodes
        progress["epoch"] = metrics.get("epoch", progress["epoch"])
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    return report


def report_failure(error: Exception, epoch: int, message: str | None = None) -> None:
    """End the trial as `error` with its cause instead of raising.

    A raised exception makes Tune retry the trial as if its node had died; bad data, a bad config or a bug fail
    the same way every time, so the retries would only triple the cost and bury the cause. Every metric is
    present (NaN) because searchers and schedulers expect their keys in every result.
    """
    message = (message or f"{type(error).__name__}: {error}").splitlines()[0][:300]
    tune.report({**{name: math.nan for name in TRAIN_METRICS + VALIDATION_METRICS + SAMPLE_METRICS},
                 "epoch": epoch, "status": STATUS_ERROR, ERROR_KEY: message})


def quiet_library_logs(verbose: bool = VERBOSE) -> None:
    """Unless the study runs verbose, keep per-epoch library chatter off the study's console.

    Ray Train logs "Checkpoint successfully created" every epoch, Tune "Restored on ... from checkpoint" when a
    resumed trial starts; TensorFlow warns that "5 out of the last 15 calls ... triggered tf.function retracing"
    once a reused worker has built its third trial's model (each trial's model traces its own functions once:
    expected, not a slowdown).
    """
    if not verbose:
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        logging.getLogger("ray.tune.trainable").setLevel(logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def quiet_worker_exit(verbose: bool = VERBOSE) -> None:
    """Unless the study runs verbose, let a trial's worker be ended without a traceback on the study's console.

    Ray ends a worker it no longer needs (the study is over, the driver stopped) by raising SystemExit in it; when
    that lands inside a weakref callback, Python cannot raise it and prints "Exception ignored in: ... SystemExit"
    instead. An exit Ray asked for is not an error; every other unraisable exception is still printed.
    """
    if verbose:
        return
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if not issubclass(unraisable.exc_type, SystemExit):
            default(unraisable)

    sys.unraisablehook = hook


# A trial worker imports this module before Tune restores the trial (the restore logs before run_trial runs).
quiet_library_logs()
quiet_worker_exit()


def download_whole_checkpoint(restored, folder: str) -> str:
    """Copy the checkpoint Tune restores into this trial's own folder; if it is not whole, the newest whole one
    beside it instead.

    Tune deletes a trial's older checkpoint as soon as a newer one is reported, but writes the experiment state that
    names the newest only every few seconds: a driver killed in between leaves a resume pointing at a checkpoint
    that is gone or half deleted (CI saw `training_state.npz` missing). The newer checkpoint was complete before it
    was reported, and the epochs table already holds its epochs, so continuing from it loses and repeats nothing.
    A private copy, not `as_directory`'s temporary folder, which is shared by name and left behind by killed workers.
    """
    if _download_whole(restored, folder):
        return folder
    own = restored.path.rstrip("/")
    parent, _, own_name = own.rpartition("/")
    for index, name in enumerate(reversed(checkpoints_beside(restored.filesystem, own))):  # newest first
        sibling, candidate = f"{parent}/{name}", os.path.join(os.path.dirname(folder), f"sibling_{index}")
        if name != own_name and _download_whole(tune.Checkpoint(sibling, restored.filesystem), candidate):
            print(f"checkpoint {restored.path} is not whole (a driver was killed while Tune replaced it); "
                  f"continuing from {sibling}", file=sys.stderr, flush=True)
            return candidate
    return folder  # nothing whole beside it: restoring names what is missing


def _download_whole(checkpoint, folder: str) -> bool:
    try:
        checkpoint.to_directory(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return False
    return not missing_resume_files(folder)


def run_trial(params: dict, spec, inputs=None) -> None:
    """Ray Tune function trainable: one TrialConfig from the study spec and the sampled params, trained on the data
    and measured by the classifier the driver shipped (`inputs`, cvae.train.TrialInputs)."""
    if spec.fuse > 1:  # a member of its shape's fused program (the trial keeps its name, run_trial_...)
        return run_member(params, spec, inputs)
    progress = {"epoch": 0}
    quiet_library_logs()
    scratch = tempfile.mkdtemp(prefix="cvae-trial-")
    try:
        config = spec.trial_config(params)
        report = _reporter({"tensorflow_import_seconds": limit_threads(spec.cpu)}, progress)
        restored = tune.get_checkpoint()
        folder = None if restored is None else download_whole_checkpoint(restored, os.path.join(scratch, "restored"))
        train(config, report=report, checkpoint=folder, checkpoint_dir=scratch, inputs=inputs)
    except Exception as error:  # noqa: BLE001 (every deterministic failure ends the trial, named)
        if is_disk_full(error):  # not the trial's fault: Tune sees the failure and the driver stops the study
            raise
        report_failure(error, progress["epoch"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_member(params: dict, spec, inputs=None) -> None:
    """Ray Tune function trainable of a fused study: the trial's configuration trained as a member of its shape's
    program; each epoch's metrics and checkpoint come back and are reported as run_trial's."""
    from study.driver.fused_groups import MemberFailure, ProgramLost, join_program, pack_folder, unpack_folder

    progress = {"epoch": 0}
    scratch = tempfile.mkdtemp(prefix="cvae-member-")
    try:
        config = spec.trial_config(params)
        report = _reporter({}, progress)
        restored = tune.get_checkpoint()
        folder = None if restored is None else download_whole_checkpoint(restored, os.path.join(scratch, "restored"))
        trial_id = tune.get_context().get_trial_id()
        program, ended = join_program(spec, config, trial_id, pack_folder(folder) if folder else None, inputs)
        previous = None
        while not ended:
            answer = ray.get(program.next_epoch.remote(trial_id))
            if "error" in answer:
                raise MemberFailure(answer["error"])
            if answer.get("left"):
                return
            metrics, ended = answer["metrics"], answer["ended"]
            if answer["checkpoint"] is not None:
                metrics[CHECKPOINT_KEY] = unpack_folder(answer["checkpoint"],
                                                        os.path.join(scratch, f"epoch_{metrics['epoch']:04d}"))
            report(metrics)
            if previous:
                shutil.rmtree(previous, ignore_errors=True)
            previous = metrics.get(CHECKPOINT_KEY)
    except ray.exceptions.RayActorError as error:  # its program died: Tune retries the trial from its checkpoint
        raise ProgramLost(f"{PROGRAM_LOST}: {error}") from None
    except Exception as error:  # noqa: BLE001 (every deterministic failure ends the trial, named)
        report_failure(error, progress["epoch"], str(error) if isinstance(error, MemberFailure) else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
