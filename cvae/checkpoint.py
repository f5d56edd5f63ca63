"""Checkpoint folders: save, read and restore a C-VAE's weights, optimizer and RNG state, and its thickness statistics."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from cvae.config import TrialConfig
from cvae.data import ThicknessStats

CHECKPOINT_FORMAT = 2  # 2: training state by variable name; weights-only checkpoints
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


def _training_state(model) -> dict:
    """Optimizer and RNG/schedule variables by name: what a resumed run needs besides the weights."""
    from cvae.model import state_variables

    named = {f"optimizer:{v.path}": v for v in model.optimizer.variables}
    state = state_variables(model)
    covered = {id(v) for v in state.values()}
    uncovered = [v.path for v in model.non_trainable_variables if id(v) not in covered]
    if uncovered:  # a new stateful layer must be named in state_variables, or a resume would silently reset it
        raise CheckpointError(f"non-trainable variables without a checkpoint name: {', '.join(uncovered)}")
    named.update({f"state:{name}": v for name, v in state.items()})
    return named


def save_checkpoint(model, folder: Path, epoch: int, history: list[dict], config: TrialConfig, stats) -> Path:
    """Weights as safe-mode-loadable .keras models, plus optimizer and RNG state by name for resuming.

    A run that has ended needs no optimizer state (two thirds of a checkpoint's bytes): strip_training_state.
    """
    folder = Path(folder)
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    model.encoder.save(scratch / ENCODER_FILE)
    model.decoder.save(scratch / DECODER_FILE)
    named = _training_state(model)
    # npz member names are positional; state.json maps them back to variable names.
    np.savez(scratch / ARRAYS_FILE, **{f"v{i}": np.asarray(v) for i, v in enumerate(named.values())})
    (scratch / CONFIG_FILE).write_text(config.to_json())
    save_stats(scratch, stats)  # sampling from a user's image needs the training split's thickness statistics
    _write_state(scratch, {"format": CHECKPOINT_FORMAT, "epoch": epoch, "history": history, "variables": list(named)})
    shutil.rmtree(folder, ignore_errors=True)
    scratch.rename(folder)  # a checkpoint folder either is complete or does not exist
    return folder


def _write_state(folder: str | Path, state: dict) -> None:
    """state.json in one step: strip_training_state rewrites it in a finished checkpoint that must stay readable."""
    path = Path(folder) / STATE_FILE
    scratch = path.with_name(f".{STATE_FILE}.tmp")
    scratch.write_text(json.dumps(state, indent=1, default=float))
    scratch.replace(path)


def weights_only(state: dict) -> dict:
    """A checkpoint's state.json once its training state is gone: it can be sampled from, never resumed."""
    return {**state, "variables": None}


def strip_training_state(folder: str | Path) -> int:
    """Make a checkpoint weights-only (its run has ended); returns the bytes freed."""
    arrays = Path(folder) / ARRAYS_FILE
    try:
        size = arrays.stat().st_size
        state = json.loads((Path(folder) / STATE_FILE).read_text())
        _write_state(folder, weights_only(state))
        arrays.unlink()
        return size
    except (OSError, ValueError):
        return 0  # already weights-only, or not a checkpoint of ours


def read_checkpoint_config(folder: str | Path) -> TrialConfig:
    """The TrialConfig a checkpoint was trained with."""
    path = Path(folder) / CONFIG_FILE
    try:
        return TrialConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder} is not a cvae checkpoint (cannot read {path.name}: {error})") from error


def restore_checkpoint(model, folder: str | Path) -> tuple[int, list[dict]]:
    """Load weights, optimizer and RNG state (matched by name, shapes checked) into a built model.

    Returns:
        (epochs done, history).
    Raises:
        CheckpointError when the checkpoint cannot continue this model: another format, weights only, or a
        variable missing, extra or of another shape (each named).
    """
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder}: checkpoint format {state.get('format')} cannot be resumed by this version "
                              f"(format {CHECKPOINT_FORMAT}); it can still be sampled from")
    if not state.get("variables"):
        raise CheckpointError(f"{folder} is weights-only (its run had ended); it can be sampled from, not resumed")
    model.encoder.load_weights(folder / ENCODER_FILE)
    model.decoder.load_weights(folder / DECODER_FILE)
    model.optimizer.build(model.trainable_variables)
    wanted = _training_state(model)
    saved_names = list(state["variables"])
    missing, extra = sorted(set(wanted) - set(saved_names)), sorted(set(saved_names) - set(wanted))
    if missing or extra:
        def listed(names):
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        parts = [f"missing {listed(missing)}" if missing else "", f"unknown {listed(extra)}" if extra else ""]
        raise CheckpointError(f"{folder} does not fit this model: " + "; ".join(part for part in parts if part))
    with np.load(folder / ARRAYS_FILE) as arrays:
        values = {name: arrays[f"v{i}"] for i, name in enumerate(saved_names)}
    for name, variable in wanted.items():
        if tuple(values[name].shape) != tuple(variable.shape):
            raise CheckpointError(f"{folder}: saved {name} has shape {values[name].shape}, "
                                  f"the model's has {tuple(variable.shape)}")
    for name, variable in wanted.items():
        variable.assign(values[name])
    return int(state["epoch"]), list(state["history"])


RESUME_FILES = (CONFIG_FILE, STATE_FILE, ARRAYS_FILE, STATS_FILE, ENCODER_FILE, DECODER_FILE)


def missing_resume_files(folder: str | Path) -> list[str]:
    """The files a resume needs that a checkpoint folder lacks (none: it can be resumed, if its run had not ended)."""
    return [name for name in RESUME_FILES if not (Path(folder) / name).is_file()]


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
