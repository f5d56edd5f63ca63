"""The frozen reference classifier: trained once per dataset, cached on disk, checked before it is trusted."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.data import NUM_CLASSES, cache_dir, load_dataset, split_indices

FEATURES_LAYER = "features"
CACHE_FORMAT = 1  # bump when the architecture or training recipe changes, so old caches are retrained


def required_accuracy(num_images: int) -> float:
    """docs/design.md §2: >= 97 % on the embedded 5k set, >= 99 % on full-size datasets."""
    return 0.97 if num_images < 20000 else 0.99


@dataclass
class Classifier:
    """A frozen classifier; `features` is its penultimate layer (the FID feature space)."""

    model: object  # keras.Model with outputs [features, probabilities]
    held_out_accuracy: float
    path: Path

    def predict(self, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(features, predicted labels) for float images in [0, 1] of shape (N, 28, 28)."""
        features, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype=np.float32)[..., None]
            f, p = self.model(batch, training=False)
            features.append(np.asarray(f))
            probabilities.append(np.asarray(p))
        if not features:
            return np.zeros((0, 128), np.float32), np.zeros((0,), np.int64)
        return np.concatenate(features), np.concatenate(probabilities).argmax(axis=1)


def build_classifier(seed: int = 0):
    """A small CNN; its 128-unit `features` layer is the space FID is measured in."""
    import keras
    from keras import layers

    image = keras.Input(shape=(28, 28, 1), name="image")
    x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed)(image)
    x = layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1)(x)
    for channels in (32, 64):  # kept small: it trains once per dataset on 2 CPU cores in about a minute
        x = layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3, seed=seed + 2)(x)
    features = layers.Dense(128, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(0.3, seed=seed + 3)(features)
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(image, [features, probabilities], name="reference_classifier")


def train_classifier(train_images, train_labels, held_images, held_labels, seed: int = 0, verbose: int = 0):
    """Train the reference classifier; returns (model, held-out accuracy)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_classifier(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=[None, "sparse_categorical_crossentropy"],
    )
    # ~80k image presentations is enough for 5k digits; full MNIST gets a few passes.
    epochs = int(np.clip(round(80_000 / len(train_images)), 4, 20))
    model.fit(
        train_images[..., None], train_labels, batch_size=64, epochs=epochs, verbose=verbose, shuffle=True,
        callbacks=[keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)],
    )
    _, probabilities = model.predict(held_images[..., None], batch_size=1000, verbose=0)
    return model, float((probabilities.argmax(axis=1) == held_labels).mean())


def _fingerprint(images: np.ndarray, labels: np.ndarray, validation_fraction: float) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels).tobytes())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(f"{validation_fraction}:{CACHE_FORMAT}".encode())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_cached(model_path: Path, info_path: Path, fingerprint: str):
    """The cached model if every check passes, else None (with the reason as a warning)."""
    import keras

    if not model_path.exists() or not info_path.exists():
        return None
    try:
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") != fingerprint or info.get("sha256") != _file_sha256(model_path):
            raise ValueError("checksum or dataset fingerprint mismatch")
        model = keras.models.load_model(model_path, safe_mode=True, compile=False)
        return model, float(info["held_out_accuracy"])
    except Exception as error:  # a corrupt cache is rebuilt, never trusted
        warnings.warn(f"reference classifier cache {model_path} is unusable ({error}); retraining it", stacklevel=3)
        return None


_LOADED: dict[tuple, Classifier] = {}  # a reused worker process loads each classifier once


def load_classifier(dataset: str, data_path: str = "", validation_fraction: float = 0.1, verbose: int = 0) -> Classifier:
    """The reference classifier for a dataset: from the cache if valid, else trained and cached.

    Args:
        dataset, data_path: as in TrialConfig; the same lookup order is used.
        validation_fraction: the held-out split it must not see while training.
        verbose: keras verbosity while training.
    Returns:
        Classifier with the frozen model and its held-out accuracy.
    """
    from filelock import FileLock

    key = (dataset, data_path, validation_fraction, str(cache_dir()))
    if key in _LOADED and _LOADED[key].path.exists():
        return _LOADED[key]
    raw = load_dataset(dataset, data_path)
    fingerprint = _fingerprint(raw.images, raw.labels, validation_fraction)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / f"classifier-{fingerprint}.keras"  # same digits, same classifier (mnist fallback = mnist-5k)
    info_path = model_path.with_suffix(".json")
    # Parallel trials on one machine wait for the first one instead of all training the same network.
    with FileLock(str(model_path) + ".lock"):
        cached = _load_cached(model_path, info_path, fingerprint)
        if cached is not None:
            _LOADED[key] = Classifier(cached[0], cached[1], model_path)
            return _LOADED[key]
        print(f"training the reference classifier for {raw.name} ({raw.source}); cached at {model_path}",
              file=sys.stderr, flush=True)
        train_index, held_index = split_indices(raw.labels, validation_fraction)
        scale = np.float32(1 / 255)
        model, accuracy = train_classifier(
            raw.images[train_index] * scale, raw.labels[train_index],
            raw.images[held_index] * scale, raw.labels[held_index], verbose=verbose,
        )
        if accuracy < required_accuracy(len(raw.labels)):
            warnings.warn(f"reference classifier reached only {accuracy:.4f} held-out accuracy", stacklevel=2)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            scratch_path = Path(scratch) / model_path.name
            model.save(scratch_path)
            os.replace(scratch_path, model_path)  # atomic: readers never see half a file
        info = {"fingerprint": fingerprint, "sha256": _file_sha256(model_path), "held_out_accuracy": accuracy,
                "dataset": raw.name, "source": raw.source}
        info_path.write_text(json.dumps(info, indent=2))
        _LOADED[key] = Classifier(model, accuracy, model_path)
        return _LOADED[key]
