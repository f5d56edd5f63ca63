"""train(config, report, checkpoint): one C-VAE training run with per-epoch metrics and resumable checkpoints."""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from cvae.command_line import (DATA_FLAGS, ArgumentParser, add_config_flags, add_verbose_flag, config_overrides,
                      exit_with)
from cvae.config import PRESETS, TrialConfig, preset
from cvae.metrics import CHECKPOINT_KEY, STATUS_COMPLETED
from cvae.checkpoint import latest_checkpoint, read_checkpoint_config, restore_checkpoint



# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class TrialInputs:
    """What a study's driver loads and checks once and hands every trial, so that no node looks for data or trains
    a classifier of its own: every trial of a study, on any node, sees the same digits and the same classifier."""

    dataset: Any  # cvae.data.Dataset: the raw images and labels (each trial splits and conditions them)
    classifier: Any  # cvae.classifier.ClassifierFile: the reference classifier's bytes and SHA-256
    data_fields: tuple  # data_fields() of the config they were loaded for

    def fit(self, config: TrialConfig) -> bool:
        """Whether these inputs are the ones `config` asks for (a study that searches a data field ships none)."""
        return self.data_fields == data_fields(config)


def data_fields(config: TrialConfig) -> tuple:
    """The fields that choose a run's data and its classifier."""
    return config.dataset, config.data_path, config.validation_fraction, config.test_fraction


def epoch_order(seed: int, epoch: int, count: int):
    """The order of the training images in 1-based `epoch`: a function of (seed, epoch) alone, so a run resumed at
    any epoch sees the same batches as one that never stopped."""
    import tensorflow as tf

    keys = tf.random.stateless_uniform([count], seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return tf.argsort(keys)


def training_batches(data, config: TrialConfig, start_epoch: int):
    """Batches of epochs start_epoch+1 .. config.epochs back to back (fit reads steps_per_epoch of them each epoch)."""
    import tensorflow as tf

    from cvae.data import prefetched

    images = tf.constant(data.train.images)
    conditions = tf.constant(data.train.conditions())
    count = len(data.train)

    def one_epoch(epoch):
        order = epoch_order(config.seed, epoch, count)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(config.batch_size)
        return batches.map(lambda index: (tf.gather(images, index), tf.gather(conditions, index)))

    epochs = tf.data.Dataset.range(start_epoch + 1, config.epochs + 1)
    return prefetched(epochs.flat_map(one_epoch)), steps_per_epoch(data, config)


def steps_per_epoch(data, config: TrialConfig) -> int:
    """Batches in one epoch (the last one may be smaller): every training image once."""
    return math.ceil(len(data.train) / config.batch_size)


@dataclass
class TrainingRun:
    """What one training run prepares once and its epochs share (the callback reads and updates it)."""

    config: TrialConfig
    data: Any  # cvae.data.PreparedData
    classifier: Any  # cvae.classifier.Classifier
    evaluation: Any  # cvae.metrics.EvaluationSet on the validation split: fixed latents and conditions
    model: Any  # cvae.model.CVAE
    start_epoch: int = 0
    history: list = field(default_factory=list)
    setup_seconds: float = 0.0  # imports, data, classifier, model: paid once per run
    status: str = STATUS_COMPLETED
    checkpoint: str | None = None

    def test_evaluation(self):
        """The same fixed latents on the test split (built only when a run finishes: pruned runs never need it)."""
        from cvae.metrics import evaluation_set_for

        return evaluation_set_for(self.config, self.data.test, self.data.stats, self.classifier)


def train(
    config: TrialConfig,
    report: Callable[[dict], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    verbose: int = 0,
    inputs: TrialInputs | None = None,
) -> dict:
    """Train one C-VAE, reporting every epoch.

    Args:
        config: the trial's settings.
        report: called once per epoch with a flat dict: the train and val_ loss terms, every sample
            metric of cvae.metrics.METRICS, `epoch`, `grey_weight`, `status`, `dataset_source`, and
            `checkpoint` (folder) when checkpoint_dir is given.
        checkpoint: a checkpoint folder to resume from (weights, optimizer, epoch, RNG state).
        checkpoint_dir: where to write each epoch's checkpoint (only the newest is kept there).
        verbose: keras progress bar (1) or silence (0).
        inputs: the dataset and classifier a study's driver shipped; without them both are found on this machine.
    Returns:
        {"status", "epochs_run", "final" (last epoch's metrics), "history", "checkpoint", "dataset_source"}.
    """
    entered = time.perf_counter()
    check_resumable(config, checkpoint)
    run = prepare(config, checkpoint, inputs if inputs is not None and inputs.fit(config) else None)
    run.setup_seconds = time.perf_counter() - entered
    fit(run, report, checkpoint_dir, verbose)
    return outcome(run)


def check_resumable(config: TrialConfig, checkpoint: str | Path | None) -> None:
    """A checkpoint continues only the run it came from; only the length may change (model_4 -> model_5)."""
    if checkpoint is None:
        return
    trained_with = read_checkpoint_config(checkpoint).to_dict()
    changed = sorted(k for k, v in config.to_dict().items() if trained_with[k] != v and k != "epochs")
    if changed:
        raise ValueError(f"checkpoint {checkpoint} was trained with different settings: {', '.join(changed)}")


def prepare(config: TrialConfig, checkpoint: str | Path | None, inputs: TrialInputs | None = None) -> TrainingRun:
    """Data, the frozen classifier, the fixed evaluation latents and the model (restored if resuming).

    Nothing here reads global random state: the model's initializers and RNG layers are seeded from the config
    (cvae.model), so what ran before in this process does not change the run.
    """
    import keras

    from cvae.classifier import classifier_for, weak_classifier_message
    from cvae.data import prepare_data_for
    from cvae.metrics import evaluation_set_for
    from cvae.model import build_cvae

    keras.backend.clear_session()  # a reused worker process must not carry the previous trial's graph state
    data = prepare_data_for(config, inputs.dataset if inputs else None)
    classifier = classifier_for(config, inputs.classifier if inputs else None)
    if message := weak_classifier_message(classifier.accuracy, classifier.required, config.dataset):
        warnings.warn(message, stacklevel=3)
    evaluation = evaluation_set_for(config, data.validation, data.stats, classifier)
    model = build_cvae(config, steps_per_execution=steps_per_epoch(data, config))
    run = TrainingRun(config, data, classifier, evaluation, model)
    if checkpoint is not None:
        run.start_epoch, run.history = restore_checkpoint(run.model, checkpoint)
    return run


def fit(run: TrainingRun, report, checkpoint_dir, verbose: int) -> None:
    """The remaining epochs; after each, EpochEnd measures, checkpoints and reports (cvae/callbacks.py)."""
    import keras

    from cvae.callbacks import EpochEnd
    from cvae.data import evaluation_batches

    if run.start_epoch >= run.config.epochs:
        return
    batches, steps = training_batches(run.data, run.config, run.start_epoch)
    run.model.fit(batches, steps_per_epoch=steps, validation_data=evaluation_batches(run.data.validation),
                  epochs=run.config.epochs, initial_epoch=run.start_epoch,
                  # the progress bar first: its epoch line ends before EpochEnd's report prints one of its own
                  callbacks=[keras.callbacks.TerminateOnNaN(), *([keras.callbacks.ProgbarLogger()] if verbose else []),
                             EpochEnd(run, report, checkpoint_dir)],
                  verbose=verbose, shuffle=False)


def outcome(run: TrainingRun) -> dict:
    return {
        "status": run.status,
        "epochs_run": len(run.history),
        "final": run.history[-1] if run.history else {},
        "history": run.history,
        "checkpoint": run.checkpoint,
        "dataset_source": run.data.source,
    }


# ---------------------------------------------------------------- command line


def parse_assignment(text: str) -> tuple[str, object]:
    """--set KEY=VALUE: the value as JSON, else as a plain string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # plain strings need no quotes: --set condition_mode=global


TRAIN_FLAGS = (*DATA_FLAGS, "epochs", "seed")
METRICS_FILE = "metrics.csv"  # a run folder's table: one row per epoch


def metrics_writer(csv_path: Path, epochs: int, label: str = "") -> Callable[[dict], None]:
    """A report that appends each epoch's row to csv_path and prints one line (`label` first)."""
    import pandas as pd

    def write_row(metrics: dict) -> None:
        # Appended every epoch, so an interrupted run keeps what it measured.
        row = pd.DataFrame([{k: v for k, v in metrics.items() if k != CHECKPOINT_KEY}])
        row.to_csv(csv_path, mode="a", header=not csv_path.exists(), index=False)
        shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "val_loss", "fid", "class_accuracy") if k in metrics)
        print(f"{label}epoch {metrics['epoch']}/{epochs}: {shown}", flush=True)

    return write_row


def main(argv: list[str] | None = None, prog: str = "python -m cvae.train") -> int:
    parser = ArgumentParser(
        prog=prog,
        description="Train one C-VAE from a preset; writes DIR/config.json, DIR/metrics.csv and "
        "DIR/checkpoints/epoch_NNNN (the newest epoch). Rerun with --resume to continue an interrupted run.",
    )
    parser.add_argument("--preset", default="model_4", choices=sorted(PRESETS), help="reference experiment to start from")
    add_config_flags(parser, TRAIN_FLAGS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_assignment,
                        metavar="KEY=VALUE", help="any other TrialConfig field, e.g. --set latent_dim=16 (repeatable)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)

    changes = {**dict(args.overrides), **config_overrides(args, TRAIN_FLAGS)}
    try:
        config = preset(args.preset).replace(**changes)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    out = Path(args.out)
    resume_from = latest_checkpoint(out / "checkpoints") if args.resume else None
    if args.resume and resume_from is None:
        parser.exit(2, f"error: --resume given but {out / 'checkpoints'} holds no epoch_NNNN checkpoint\n")
    if not args.resume and latest_checkpoint(out / "checkpoints") is not None:
        parser.exit(2, f"error: {out} already holds a run; pass --resume to continue it or choose another --out\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())

    csv_path = out / METRICS_FILE
    write_row = metrics_writer(csv_path, config.epochs)
    print(f"training {args.preset} on {config.dataset}; resuming from {resume_from}" if resume_from
          else f"training {args.preset} on {config.dataset}", flush=True)
    from cvae.runtime import import_tensorflow_quietly

    import_tensorflow_quietly(args.verbose)
    try:
        result = train(config, report=write_row, checkpoint=resume_from, checkpoint_dir=out / "checkpoints",
                       verbose=0 if args.quiet else 1)
    except ValueError as error:  # e.g. --resume with settings that differ from the checkpoint's
        parser.exit(2, f"error: {error}\n")
    print(f"{result['status']} after {result['epochs_run']} epoch(s) this run; data: {result['dataset_source']}; "
          f"checkpoint: {result['checkpoint']}; metrics: {csv_path}")
    return 0 if result["status"] == STATUS_COMPLETED else 1


if __name__ == "__main__":
    exit_with(main)
