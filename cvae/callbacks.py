"""The per-epoch work of a training run: grey-loss schedule, measurement, checkpoint and report."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import keras

from cvae.checkpoint import latest_checkpoint, save_checkpoint
from cvae.losses import grey_weight_for_epoch
from cvae.metrics import (CHECKPOINT_KEY, SAMPLE_METRICS, STATUS_COMPLETED, STATUS_DIVERGED, STATUS_RUNNING,
                          TRAIN_METRICS, VALIDATION_METRICS, evaluate_decoder)


class EpochEnd(keras.callbacks.Callback):
    """Sets the grey weight before each epoch; measures, checkpoints and reports after it.

    Args:
        run: the cvae.train.TrainingRun (config, data, classifier, evaluation set; history and status are updated).
        report: called with each epoch's flat metrics dict, or None.
        checkpoint_dir: where each epoch's checkpoint goes (the previous one is removed), or None.
    """

    def __init__(self, run, report=None, checkpoint_dir=None):
        super().__init__()
        self.run, self.report, self.checkpoint_dir = run, report, checkpoint_dir
        self.started, self.train_seconds = 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.train_seconds = time.perf_counter(), None
        config = self.run.config
        self.model.grey_weight.assign(grey_weight_for_epoch(epoch + 1, config.grey_weight, config.warmup_epochs))

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:  # fit() validates after the epoch's training steps
            self.train_seconds = time.perf_counter() - self.started

    def on_epoch_end(self, epoch, logs=None):
        metrics = self.measure(epoch + 1, logs or {})
        self.run.history.append(metrics)
        reported = dict(metrics)
        if self.checkpoint_dir is not None and metrics["status"] != STATUS_DIVERGED:
            saving_started = time.perf_counter()
            self.run.checkpoint = reported[CHECKPOINT_KEY] = str(self.save(epoch + 1))
            reported["checkpoint_seconds"] = time.perf_counter() - saving_started
        if self.report is not None:
            self.report(reported)

    def measure(self, epoch: int, logs: dict) -> dict:
        """The epoch's loss terms, timings and (unless the loss diverged) every sample metric."""
        run = self.run
        metrics = {name: float(logs.get(name, math.nan)) for name in TRAIN_METRICS + VALIDATION_METRICS}
        metrics.update(epoch=epoch, grey_weight=float(self.model.grey_weight.numpy()),
                       dataset_source=run.data.source, epoch_seconds=time.perf_counter() - self.started,
                       train_seconds=self.train_seconds, setup_seconds=run.setup_seconds)
        if not all(math.isfinite(metrics[name]) for name in TRAIN_METRICS):
            run.status = STATUS_DIVERGED
            self.model.stop_training = True
            # Every metric is present in every report (schedulers and searchers expect the keys).
            return {**metrics, **{name: math.nan for name in SAMPLE_METRICS}, "status": STATUS_DIVERGED}
        evaluation_started = time.perf_counter()
        metrics.update(evaluate_decoder(self.model.decoder, run.evaluation, run.classifier))
        metrics["eval_seconds"] = time.perf_counter() - evaluation_started
        metrics["status"] = STATUS_RUNNING if epoch < run.config.epochs else STATUS_COMPLETED
        return metrics

    def save(self, epoch: int) -> Path:
        """This epoch's checkpoint; the previous one goes (only the newest is needed to resume)."""
        previous = latest_checkpoint(self.checkpoint_dir)
        path = save_checkpoint(self.model, Path(self.checkpoint_dir) / f"epoch_{epoch:04d}", epoch,
                               self.run.history, self.run.config, self.run.data.stats)
        if previous is not None and previous != path:
            shutil.rmtree(previous, ignore_errors=True)
        return path
