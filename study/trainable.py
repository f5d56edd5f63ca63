"""The Ray Tune wrapper around cvae.train: thread limits, report + checkpoint, restore."""

from __future__ import annotations

import shutil
import tempfile
import time

import ray
from ray import tune

from cvae.train import CHECKPOINT_KEY, train


def limit_threads(cpus: float) -> float:
    """Give TensorFlow as many threads as the trial has CPUs (it would otherwise use every core).

    Returns:
        Seconds spent importing TensorFlow (0 in a reused worker).
    """
    started = time.perf_counter()
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


def _reporter(extra: dict):
    def report(metrics: dict) -> None:
        folder = metrics.pop(CHECKPOINT_KEY, None)
        metrics.update(extra, node_id=ray.get_runtime_context().get_node_id())  # retries may move nodes
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    return report


def run_trial(params: dict, spec) -> None:
    """Ray Tune function trainable: one TrialConfig from the study spec and the sampled params."""
    config = spec.trial_config(params)
    report = _reporter({"tensorflow_import_seconds": limit_threads(spec.cpu)})
    scratch = tempfile.mkdtemp(prefix="cvae-trial-")
    restored = tune.get_checkpoint()
    try:
        if restored is None:
            train(config, report=report, checkpoint_dir=scratch)
        else:
            with restored.as_directory() as folder:
                train(config, report=report, checkpoint=folder, checkpoint_dir=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
