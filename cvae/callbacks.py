"""The per-epoch work of a training run: grey-loss schedule, measurement, checkpoint and report."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from cvae.checkpoint import latest_checkpoint, save_checkpoint
from cvae.data import EVALUATION_BATCH, evaluation_batches
from cvae.losses import grey_weight_for_epoch
from cvae.metrics import (CAS, CHECKPOINT_KEY, CLASSIFIER_ACCURACY, CLASSIFIER_SHA256, ELBO, METRICS,
                          STATUS_COMPLETED, STATUS_DIVERGED, STATUS_RUNNING, TEST_PREFIX, TRAIN_METRICS,
                          VALIDATION_METRICS, evaluate_decoder, generate)


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
        """The epoch's loss terms, timings and (unless the loss diverged) every sample metric; after the last
        epoch also the test split's (every metric is in every report, NaN where not measured: schedulers,
        searchers and the tables expect the same keys each time)."""
        run = self.run
        metrics = {name: math.nan for name in METRICS}
        metrics.update({name: float(logs.get(name, math.nan)) for name in TRAIN_METRICS + VALIDATION_METRICS})
        metrics[ELBO] = metrics["val_reconstruction"] + metrics["val_kl"]
        metrics.update(epoch=epoch, grey_weight=float(self.model.grey_weight.numpy()),
                       dataset_source=run.data.source, epoch_seconds=time.perf_counter() - self.started,
                       train_seconds=self.train_seconds, setup_seconds=run.setup_seconds,
                       **{CLASSIFIER_ACCURACY: run.classifier.accuracy, CLASSIFIER_SHA256: run.classifier.sha256},
                       **run.evaluation.real_values())
        if not all(math.isfinite(metrics[name]) for name in TRAIN_METRICS):
            run.status = STATUS_DIVERGED
            self.model.stop_training = True
            return {**metrics, "status": STATUS_DIVERGED}
        evaluation_started = time.perf_counter()
        metrics.update(evaluate_decoder(self.model.decoder, run.evaluation, run.classifier))
        metrics["eval_seconds"] = time.perf_counter() - evaluation_started
        finished = epoch >= run.config.epochs
        if finished:
            metrics.update(self.measure_test())
        metrics["status"] = STATUS_COMPLETED if finished else STATUS_RUNNING
        return metrics

    def measure_test(self) -> dict:
        """The finished model on the test split, once: the numbers a study reports (selection never saw them)."""
        run = self.run
        terms = self.loss_terms(run.data.test)
        sample = evaluate_decoder(self.model.decoder, run.test_evaluation(), run.classifier)
        started = time.perf_counter()
        cas = self.measure_cas()
        return {TEST_PREFIX + "elbo": float(terms["reconstruction"] + terms["kl"]),
                **{TEST_PREFIX + name: value for name, value in sample.items()},
                CAS: cas, "cas_seconds": time.perf_counter() - started}

    def loss_terms(self, split) -> dict:
        """The model's loss terms on a split, the mean of its batches' means. Keras' evaluate runs the model's own
        test_step on tensorflow only (on jax, where fused members are measured, it calls a stateless step of its own
        that this model does not define), so other backends average the batches here, as evaluate does."""
        if keras.backend.backend() == "tensorflow":
            return self.model.evaluate(evaluation_batches(split), verbose=0, return_dict=True)
        conditions = split.conditions()
        batches = [self.model.compute_losses(split.images[start:start + EVALUATION_BATCH],
                                             conditions[start:start + EVALUATION_BATCH], training=False)
                   for start in range(0, len(split), EVALUATION_BATCH)]
        return {name: float(np.mean([float(batch[name]) for batch in batches])) for name in batches[0]}

    def measure_cas(self) -> float:
        """CAS: a fresh classifier trained on cas_samples images drawn for balanced classes at thickness values of
        the training split (fixed seeds), scored on the real test split; NaN when cas_samples is 0."""
        from cvae.classifier import classification_accuracy_score
        from cvae.data import NUM_CLASSES, make_conditions

        config, data = self.run.config, self.run.data
        if not config.cas_samples:
            return math.nan
        rng = np.random.default_rng(config.eval_seed + 2)
        labels = np.arange(config.cas_samples) % NUM_CLASSES
        thickness = np.empty(len(labels), np.float32)
        for label in range(NUM_CLASSES):  # each class at thickness values its real training images have
            chosen = labels == label
            thickness[chosen] = rng.choice(data.train.thickness[data.train.labels == label], chosen.sum())
        latents = rng.standard_normal((config.cas_samples, config.latent_dim)).astype(np.float32)
        images = generate(self.model.decoder, latents, make_conditions(labels, thickness))
        return classification_accuracy_score(images, labels, data.test.images, data.test.labels, config.eval_seed,
                                             config.cas_epochs)

    def save(self, epoch: int) -> Path:
        """This epoch's checkpoint; the previous one goes (only the newest is needed to resume)."""
        previous = latest_checkpoint(self.checkpoint_dir)
        path = save_checkpoint(self.model, Path(self.checkpoint_dir) / f"epoch_{epoch:04d}", epoch,
                               self.run.history, self.run.config, self.run.data.stats)
        if previous is not None and previous != path:
            shutil.rmtree(previous, ignore_errors=True)
        return path
