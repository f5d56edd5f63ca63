"""train(config, report, checkpoint): one C-VAE training run with per-epoch metrics and resumable checkpoints."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cvae.cli import ArgumentParser
from cvae.config import PRESETS, TrialConfig, preset
from cvae.sample import save_stats

CHECKPOINT_KEY = "checkpoint"  # key of the checkpoint folder in a reported metrics dict
CHECKPOINT_FORMAT = 1
STATUS_RUNNING, STATUS_COMPLETED, STATUS_DIVERGED = "running", "completed", "diverged"  # an epoch row's status


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model, folder: Path, epoch: int, history: list[dict], config: TrialConfig, stats) -> Path:
    """Weights as safe-mode-loadable .keras models, plus optimizer and RNG state for resuming."""
    folder = Path(folder)
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    model.encoder.save(scratch / "encoder.keras")
    model.decoder.save(scratch / "decoder.keras")
    arrays = {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
    arrays.update({f"state_{i}": np.asarray(v) for i, v in enumerate(model.non_trainable_variables)})
    np.savez(scratch / "training_state.npz", **arrays)
    (scratch / "config.json").write_text(config.to_json())
    save_stats(scratch, stats)  # sampling from a user's image needs the training split's thickness statistics
    state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "history": history}
    (scratch / "state.json").write_text(json.dumps(state, indent=1, default=float))
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)  # a checkpoint folder either is complete or does not exist
    return folder


def read_checkpoint_config(folder: str | Path) -> TrialConfig:
    """The TrialConfig a checkpoint was trained with."""
    path = Path(folder) / "config.json"
    try:
        return TrialConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder} is not a cvae checkpoint (cannot read {path.name}: {error})") from error


def restore_checkpoint(model, folder: str | Path) -> tuple[int, list[dict]]:
    """Load weights, optimizer and RNG state into a built model; returns (epochs done, history)."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{folder}: checkpoint format {state.get('format')} != {CHECKPOINT_FORMAT}")
    model.encoder.load_weights(folder / "encoder.keras")
    model.decoder.load_weights(folder / "decoder.keras")
    model.optimizer.build(model.trainable_variables)
    with np.load(folder / "training_state.npz") as arrays:
        for prefix, variables in (("optimizer", model.optimizer.variables), ("state", model.non_trainable_variables)):
            for i, variable in enumerate(variables):
                variable.assign(arrays[f"{prefix}_{i}"])
    return int(state["epoch"]), list(state["history"])


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest complete epoch_NNNN checkpoint under a folder, or None."""
    candidates = sorted(Path(folder).glob("epoch_[0-9][0-9][0-9][0-9]"))
    return candidates[-1] if candidates else None


# ---------------------------------------------------------------- training


def _datasets(data, config: TrialConfig, start_epoch: int):
    import tensorflow as tf

    train = tf.data.Dataset.from_tensor_slices((data.train.images, data.train.conditions()))
    # Shuffle seed depends on where we start, so a resumed run is reproducible too.
    train = train.shuffle(len(data.train), seed=config.seed * 1009 + start_epoch, reshuffle_each_iteration=True)
    train = train.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)
    held_out = tf.data.Dataset.from_tensor_slices((data.held_out.images, data.held_out.conditions()))
    return train, held_out.batch(500).prefetch(tf.data.AUTOTUNE)


def _is_finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def train(
    config: TrialConfig,
    report: Callable[[dict], None] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    verbose: int = 0,
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
    Returns:
        {"status", "epochs_run", "final" (last epoch's metrics), "history", "checkpoint", "dataset_source"}.
    """
    entered = time.perf_counter()
    if checkpoint is not None:
        trained_with = read_checkpoint_config(checkpoint).to_dict()
        # Only the length may change: model_4 -> model_5 is the same run continued to 41 epochs.
        changed = sorted(k for k, v in config.to_dict().items() if trained_with[k] != v and k != "epochs")
        if changed:
            raise ValueError(f"checkpoint {checkpoint} was trained with different settings: {', '.join(changed)}")
    import keras

    from cvae.classifier import load_classifier
    from cvae.data import prepare_data
    from cvae.losses import grey_weight_for_epoch
    from cvae.metrics import SAMPLE_METRICS, TRAIN_METRICS, VALIDATION_METRICS, evaluate_decoder, make_evaluation_set
    from cvae.model import build_cvae

    keras.backend.clear_session()  # a reused worker process must not carry the previous trial's graph state
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config.dataset, config.condition_mode, config.validation_fraction,
                        config.max_train_samples, config.data_path)
    classifier = load_classifier(config.dataset, config.data_path, config.validation_fraction)
    evaluation = make_evaluation_set(data.held_out, data.stats, classifier, config.latent_dim,
                                     config.eval_samples, config.sweep_latents, config.eval_seed)
    model = build_cvae(config)
    start_epoch, history = 0, []
    if checkpoint is not None:
        start_epoch, history = restore_checkpoint(model, checkpoint)
    outcome = {"status": STATUS_COMPLETED, "checkpoint": None}
    setup_seconds = time.perf_counter() - entered  # imports, data, classifier, model: paid once per run

    class EpochEnd(keras.callbacks.Callback):
        """Sets the grey weight before each epoch; measures, checkpoints and reports after it."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()
            self.train_seconds = None
            self.model.grey_weight.assign(grey_weight_for_epoch(epoch + 1, config.grey_weight, config.warmup_epochs))

        def on_test_begin(self, logs=None):
            if self.train_seconds is None:  # fit() validates after the epoch's training steps
                self.train_seconds = time.perf_counter() - self.started

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            metrics = {name: float(logs.get(name, math.nan)) for name in TRAIN_METRICS + VALIDATION_METRICS}
            metrics.update(epoch=epoch + 1, grey_weight=float(self.model.grey_weight.numpy()),
                           dataset_source=data.source, epoch_seconds=time.perf_counter() - self.started,
                           train_seconds=self.train_seconds, setup_seconds=setup_seconds)
            if not all(_is_finite(metrics[name]) for name in TRAIN_METRICS):
                outcome["status"] = STATUS_DIVERGED
                self.model.stop_training = True
                # Every metric is present in every report (schedulers and searchers expect the keys).
                metrics.update({name: math.nan for name in SAMPLE_METRICS}, status=STATUS_DIVERGED)
            else:
                evaluation_started = time.perf_counter()
                metrics.update(evaluate_decoder(self.model.decoder, evaluation, classifier))
                metrics["eval_seconds"] = time.perf_counter() - evaluation_started
                metrics["status"] = STATUS_RUNNING if epoch + 1 < config.epochs else STATUS_COMPLETED
            history.append(metrics)
            reported = dict(metrics)
            if checkpoint_dir is not None and metrics["status"] != STATUS_DIVERGED:
                saving_started = time.perf_counter()
                previous = latest_checkpoint(checkpoint_dir)
                path = save_checkpoint(self.model, Path(checkpoint_dir) / f"epoch_{epoch + 1:04d}",
                                       epoch + 1, history, config, data.stats)
                if previous is not None and previous != path:
                    shutil.rmtree(previous, ignore_errors=True)
                outcome["checkpoint"] = reported[CHECKPOINT_KEY] = str(path)
                reported["checkpoint_seconds"] = time.perf_counter() - saving_started
            if report is not None:
                report(reported)

    if start_epoch < config.epochs:
        train_data, held_out_data = _datasets(data, config, start_epoch)
        model.fit(train_data, validation_data=held_out_data, epochs=config.epochs, initial_epoch=start_epoch,
                  callbacks=[keras.callbacks.TerminateOnNaN(), EpochEnd()], verbose=verbose, shuffle=False)
    return {
        "status": outcome["status"],
        "epochs_run": len(history),
        "final": history[-1] if history else {},
        "history": history,
        "checkpoint": outcome["checkpoint"],
        "dataset_source": data.source,
    }


# ---------------------------------------------------------------- command line


def _parse_assignment(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # plain strings need no quotes: --set condition_mode=global


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m cvae.train",
        description="Train one C-VAE from a preset; writes DIR/config.json, DIR/metrics.csv and "
        "DIR/checkpoints/epoch_NNNN (the newest epoch). Rerun with --resume to continue an interrupted run.",
    )
    parser.add_argument("--preset", default="model_4", choices=sorted(PRESETS), help="reference experiment to start from")
    parser.add_argument("--dataset", help="mnist (full, falls back to the embedded sample offline), mnist-5k, fashion-mnist")
    parser.add_argument("--data-path", help="folder of IDX .gz files or a keras mnist.npz")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--max-train-samples", type=int, help="train on a stratified subset (0 = all)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_assignment,
                        metavar="KEY=VALUE", help="any other TrialConfig field, e.g. --set latent_dim=16 (repeatable)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    changes = dict(args.overrides)
    for flag, key in (("dataset", "dataset"), ("data_path", "data_path"), ("epochs", "epochs"),
                      ("max_train_samples", "max_train_samples"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            changes[key] = getattr(args, flag)
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

    import pandas as pd

    csv_path = out / "metrics.csv"

    def write_row(metrics: dict) -> None:
        # Appended every epoch, so an interrupted run keeps what it measured.
        row = pd.DataFrame([{k: v for k, v in metrics.items() if k != CHECKPOINT_KEY}])
        row.to_csv(csv_path, mode="a", header=not csv_path.exists(), index=False)
        shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "val_loss", "fid", "class_accuracy") if k in metrics)
        print(f"epoch {metrics['epoch']}/{config.epochs}: {shown}", flush=True)

    print(f"training {args.preset} on {config.dataset}; resuming from {resume_from}" if resume_from
          else f"training {args.preset} on {config.dataset}", flush=True)
    try:
        result = train(config, report=write_row, checkpoint=resume_from, checkpoint_dir=out / "checkpoints",
                       verbose=0 if args.quiet else 1)
    except ValueError as error:  # e.g. --resume with settings that differ from the checkpoint's
        parser.exit(2, f"error: {error}\n")
    print(f"{result['status']} after {result['epochs_run']} epoch(s) this run; data: {result['dataset_source']}; "
          f"checkpoint: {result['checkpoint']}; metrics: {csv_path}")
    return 0 if result["status"] == STATUS_COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
