"""Checkpoint folders: save, read and restore a C-VAE's weights, optimizer and RNG state, and its thickness statistics."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from cvae.config import TrialConfig
from cvae.data import ThicknessStats

CHECKPOINT_FORMAT = 1
CONFIG_FILE, STATE_FILE, ARRAYS_FILE, STATS_FILE = "config.json", "state.json", "training_state.npz", "thickness_stats.json"
ENCODER_FILE, DECODER_FILE = "encoder.keras", "decoder.keras"


class CheckpointError(ValueError):
    """A folder that is not a usable checkpoint; the message says what is wrong with it."""


def save_stats(folder: Path, stats: ThicknessStats) -> None:
    payload = {"mode": stats.mode, "mean": stats.mean.tolist(), "std": stats.std.tolist()}
    (Path(folder) / STATS_FILE).write_text(json.dumps(payload, indent=1))


def load_stats(folder: Path) -> ThicknessStats:
    payload = json.loads((Path(folder) / STATS_FILE).read_text())
    return ThicknessStats(np.array(payload["mean"]), np.array(payload["std"]), payload["mode"])


def save_checkpoint(model, folder: Path, epoch: int, history: list[dict], config: TrialConfig, stats) -> Path:
    """Weights as safe-mode-loadable .keras models, plus optimizer and RNG state for resuming."""
    folder = Path(folder)
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    model.encoder.save(scratch / ENCODER_FILE)
    model.decoder.save(scratch / DECODER_FILE)
    arrays = {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
    arrays.update({f"state_{i}": np.asarray(v) for i, v in enumerate(model.non_trainable_variables)})
    np.savez(scratch / ARRAYS_FILE, **arrays)
    (scratch / CONFIG_FILE).write_text(config.to_json())
    save_stats(scratch, stats)  # sampling from a user's image needs the training split's thickness statistics
    names = {"optimizer": [v.path for v in model.optimizer.variables],
             "state": [v.path for v in model.non_trainable_variables]}
    state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "history": history, "variables": names}
    (scratch / STATE_FILE).write_text(json.dumps(state, indent=1, default=float))
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)  # a checkpoint folder either is complete or does not exist
    return folder


def read_checkpoint_config(folder: str | Path) -> TrialConfig:
    """The TrialConfig a checkpoint was trained with."""
    path = Path(folder) / CONFIG_FILE
    try:
        return TrialConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder} is not a cvae checkpoint (cannot read {path.name}: {error})") from error


def restore_checkpoint(model, folder: str | Path) -> tuple[int, list[dict]]:
    """Load weights, optimizer and RNG state into a built model; returns (epochs done, history).

    Raises:
        CheckpointError when the saved state does not fit the model (variable count or shape differs).
    """
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder}: checkpoint format {state.get('format')} != {CHECKPOINT_FORMAT}")
    model.encoder.load_weights(folder / ENCODER_FILE)
    model.decoder.load_weights(folder / DECODER_FILE)
    model.optimizer.build(model.trainable_variables)
    with np.load(folder / ARRAYS_FILE) as arrays:
        for prefix, variables in (("optimizer", model.optimizer.variables), ("state", model.non_trainable_variables)):
            saved = sorted((key for key in arrays.files if key.startswith(prefix + "_")), key=lambda k: int(k.split("_")[1]))
            if len(saved) != len(variables):
                raise CheckpointError(f"{folder}: {len(saved)} saved {prefix} variables, the model has {len(variables)}")
            for key, variable in zip(saved, variables):
                if tuple(arrays[key].shape) != tuple(variable.shape):
                    raise CheckpointError(f"{folder}: saved {prefix} variable {variable.path} has shape "
                                          f"{arrays[key].shape}, the model's has {tuple(variable.shape)}")
                variable.assign(arrays[key])
    return int(state["epoch"]), list(state["history"])


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest complete epoch_NNNN checkpoint under a folder, or None."""
    candidates = sorted(Path(folder).glob("epoch_[0-9][0-9][0-9][0-9]"))
    return candidates[-1] if candidates else None


def read_checkpoint(folder: str | Path):
    """(encoder, decoder, config, stats) from a checkpoint folder, the models loaded with keras' safe mode on.

    Raises:
        CheckpointError naming what is missing or damaged (checked before TensorFlow starts where possible).
    """
    folder = Path(folder)
    if not (folder / DECODER_FILE).is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder (no {DECODER_FILE}); "
                              "pass e.g. RUN/checkpoints/epoch_0009")
    damaged = [name for name in (ENCODER_FILE, DECODER_FILE) if not zipfile.is_zipfile(folder / name)]
    if damaged:
        raise CheckpointError(f"checkpoint {folder} is damaged: {', '.join(damaged)} is not a .keras (zip) archive")
    import keras  # only now: a wrong folder is refused without the seconds TensorFlow takes to start

    from cvae import model as _registers_sampling_layer  # noqa: F401

    try:
        config = read_checkpoint_config(folder)
        encoder = keras.models.load_model(folder / ENCODER_FILE, safe_mode=True, compile=False)
        decoder = keras.models.load_model(folder / DECODER_FILE, safe_mode=True, compile=False)
        stats = load_stats(folder)
    except Exception as error:  # any unreadable part means an unusable checkpoint
        raise CheckpointError(f"cannot read checkpoint {folder}: {str(error).splitlines()[0][:200]}") from error
    return encoder, decoder, config, stats
