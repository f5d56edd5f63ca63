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

from cvae.datasets import DATASET_INFO, Recipe
from cvae.data import NUM_CLASSES, load_dataset, split_indices
from cvae.environment import cache_dir

FEATURES_LAYER = "features"
CACHE_FORMAT = 2  # bump when the architecture, recipe or splits change, so old caches are retrained


def required_accuracy(dataset: str, num_images: int) -> float:
    """The test accuracy a classifier needs before its fid / class_accuracy mean anything (docs/design.md §2;
    each dataset's bar is in its cvae.datasets entry): 97 % on the embedded 5k digits, 99 % on full MNIST, 90 % on
    Fashion-MNIST (whose classes overlap: shirt / T-shirt / pullover / coat)."""
    return DATASET_INFO[dataset].required(num_images)


@dataclass
class Classifier:
    """A frozen classifier; `features` is its penultimate layer (the FID feature space)."""

    model: object  # keras.Model with outputs [features, probabilities]
    accuracy: float  # on the test split, which it never trained on
    required: float  # required_accuracy of its dataset
    path: Path
    sha256: str = ""  # of its .keras file: the same bytes measure every trial of a study

    def predict(self, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(features, predicted labels) for float images in [0, 1] of shape (N, 28, 28)."""
        features, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype=np.float32)[..., None]
            f, p = self.model.predict_on_batch(batch)  # compiled: bitwise the eager call's outputs, faster
            features.append(np.asarray(f))
            probabilities.append(np.asarray(p))
        if not features:
            return np.zeros((0, 128), np.float32), np.zeros((0,), np.int64)
        return np.concatenate(features), np.concatenate(probabilities).argmax(axis=1)


def recipe_for(dataset: str) -> Recipe:
    """How a dataset's classifier is trained (its cvae.datasets entry's recipe; part of its cache key)."""
    return DATASET_INFO[dataset].recipe


def build_classifier(seed: int = 0, augment: bool = True):
    """A small CNN; its 128-unit `features` layer is the space FID is measured in."""
    import keras
    from keras import layers

    image = keras.Input(shape=(28, 28, 1), name="image")
    x = image
    if augment:
        x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed)(x)
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


def train_classifier(train_images, train_labels, test_images, test_labels, seed: int = 0, verbose: int = 0,
                     recipe: Recipe = Recipe()):
    """Train the reference classifier; returns (model, test accuracy)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_classifier(seed, recipe.augment)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=[None, "sparse_categorical_crossentropy"],
    )
    # ~80k image presentations is enough for 5k digits; full MNIST gets a few passes.
    epochs = int(np.clip(round(80_000 / len(train_images)), recipe.min_epochs, max(20, recipe.min_epochs)))
    model.fit(
        train_images[..., None], train_labels, batch_size=64, epochs=epochs, verbose=verbose, shuffle=True,
        callbacks=[keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2)],
    )
    _, probabilities = model.predict(test_images[..., None], batch_size=1000, verbose=0)
    return model, float((probabilities.argmax(axis=1) == test_labels).mean())


def classification_accuracy_score(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                                  test_labels: np.ndarray, seed: int, epochs: int) -> float:
    """CAS (Ravuri & Vinyals 2019): the reference architecture, trained from scratch on generated images for the
    labels they were drawn for, scored on real test images. A model that draws each class recognisably and with its
    real variety scores near a classifier trained on real data; one that draws a single prototype per class does not."""
    import keras

    keras.utils.set_random_seed(seed)  # the run is over: its own generators are not read again
    model = build_classifier(seed, augment=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=[None, "sparse_categorical_crossentropy"])
    order = np.random.default_rng(seed).permutation(len(images))
    model.fit(images[order][..., None], labels[order], batch_size=64, epochs=epochs, verbose=0, shuffle=False)
    _, probabilities = model.predict(test_images[..., None], batch_size=1000, verbose=0)
    return float((probabilities.argmax(axis=1) == test_labels).mean())


def _fingerprint(images: np.ndarray, labels: np.ndarray, validation_fraction: float, test_fraction: float,
                 recipe: Recipe) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels).tobytes())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(f"{validation_fraction}:{test_fraction}:{CACHE_FORMAT}:{recipe}".encode())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_info(model_path: Path, info_path: Path, fingerprint: str) -> dict:
    """The cache's record if it belongs to these data and its file is intact; ValueError/OSError otherwise."""
    info = json.loads(info_path.read_text())
    if info.get("fingerprint") != fingerprint or info.get("sha256") != _file_sha256(model_path):
        raise ValueError("checksum or dataset fingerprint mismatch")
    return info


def _cache_paths(dataset: str, data_path: str, validation_fraction: float, test_fraction: float):
    """(raw dataset, model file, record file, fingerprint) of a dataset's cached classifier."""
    raw = load_dataset(dataset, data_path)
    fingerprint = _fingerprint(raw.images, raw.labels, validation_fraction, test_fraction, recipe_for(raw.name))
    model_path = cache_dir() / f"classifier-{fingerprint}.keras"  # same digits, same classifier (mnist fallback = mnist-5k)
    return raw, model_path, model_path.with_suffix(".json"), fingerprint


def _load_cached(model_path: Path, info_path: Path, fingerprint: str):
    """The cached model if every check passes, else None (with the reason as a warning)."""
    import keras

    if not model_path.exists() or not info_path.exists():
        return None
    try:
        info = _cache_info(model_path, info_path, fingerprint)
        model = keras.models.load_model(model_path, safe_mode=True, compile=False)
        return model, float(info["test_accuracy"]), str(info["sha256"])
    except Exception as error:  # a corrupt cache is rebuilt, never trusted
        warnings.warn(f"reference classifier cache {model_path} is unusable ({error}); retraining it", stacklevel=3)
        return None


_LOADED: dict[tuple, Classifier] = {}  # a reused worker process loads each classifier once


def load_classifier(dataset: str, data_path: str = "", validation_fraction: float = 0.1, test_fraction: float = 0.1,
                    verbose: int = 0) -> Classifier:
    """The reference classifier for a dataset: from the cache if valid, else trained and cached.

    It trains on the train split only and is scored on the test split; the validation split is left alone too.

    Args:
        dataset, data_path, validation_fraction, test_fraction: as in TrialConfig; the same lookup and splits.
        verbose: keras verbosity while training.
    Returns:
        Classifier with the frozen model, its test accuracy and its dataset's required accuracy.
    """
    from filelock import FileLock

    key = (dataset, data_path, validation_fraction, test_fraction, str(cache_dir()))
    if key in _LOADED and _LOADED[key].path.exists():
        return _LOADED[key]
    raw, model_path, info_path, fingerprint = _cache_paths(dataset, data_path, validation_fraction, test_fraction)
    required = required_accuracy(raw.name, len(raw.labels))
    recipe = recipe_for(raw.name)
    folder = model_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    # Parallel trials on one machine wait for the first one instead of all training the same network.
    with FileLock(str(model_path) + ".lock"):
        cached = _load_cached(model_path, info_path, fingerprint)
        if cached is not None:
            _LOADED[key] = Classifier(cached[0], cached[1], required, model_path, cached[2])
            return _LOADED[key]
        print(f"training the reference classifier for {raw.name} ({raw.source}); cached at {model_path}",
              file=sys.stderr, flush=True)
        train_index, _, test_index = split_indices(raw.labels, validation_fraction, test_fraction)
        scale = np.float32(1 / 255)
        model, accuracy = train_classifier(
            raw.images[train_index] * scale, raw.labels[train_index],
            raw.images[test_index] * scale, raw.labels[test_index], verbose=verbose, recipe=recipe,
        )
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            scratch_path = Path(scratch) / model_path.name
            model.save(scratch_path)
            os.replace(scratch_path, model_path)  # atomic: readers never see half a file
        info = {"fingerprint": fingerprint, "sha256": _file_sha256(model_path), "test_accuracy": accuracy,
                "dataset": raw.name, "source": raw.source}
        info_path.write_text(json.dumps(info, indent=2))
        _LOADED[key] = Classifier(model, accuracy, required, model_path, info["sha256"])
        return _LOADED[key]


@dataclass(frozen=True)
class ClassifierFile:
    """A reference classifier as its file's bytes: what a study's driver hands every trial, so that trials on any
    node are measured in one feature space and none trains a classifier of its own."""

    content: bytes
    sha256: str
    accuracy: float
    required: float


def cached_classifier_file(dataset: str, data_path: str = "", validation_fraction: float = 0.1,
                           test_fraction: float = 0.1) -> ClassifierFile:
    """The cached classifier of a dataset (made by load_classifier) as bytes, read without TensorFlow.

    Raises:
        ValueError/OSError when there is no intact cache.
    """
    raw, model_path, info_path, fingerprint = _cache_paths(dataset, data_path, validation_fraction, test_fraction)
    info = _cache_info(model_path, info_path, fingerprint)
    content = model_path.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    if sha256 != info["sha256"]:
        raise ValueError(f"{model_path} changed while it was read")
    return ClassifierFile(content, sha256, float(info["test_accuracy"]), required_accuracy(raw.name, len(raw.labels)))


def classifier_from_file(shipped: ClassifierFile) -> Classifier:
    """The Classifier a ClassifierFile holds: written once under its SHA-256 in this node's cache, loaded in safe mode."""
    import keras

    key = ("shipped", shipped.sha256, str(cache_dir()))
    if key in _LOADED and _LOADED[key].path.exists():
        return _LOADED[key]
    if hashlib.sha256(shipped.content).hexdigest() != shipped.sha256:
        raise ValueError("the reference classifier handed to this trial does not match its SHA-256")
    path = cache_dir() / f"classifier-sha256-{shipped.sha256[:32]}.keras"
    if not path.exists() or _file_sha256(path) != shipped.sha256:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            scratch_path = Path(scratch) / path.name
            scratch_path.write_bytes(shipped.content)
            os.replace(scratch_path, path)  # atomic: parallel trials on one node never read half a file
    model = keras.models.load_model(path, safe_mode=True, compile=False)
    _LOADED[key] = Classifier(model, shipped.accuracy, shipped.required, path, shipped.sha256)
    return _LOADED[key]


def classifier_for(config, shipped: ClassifierFile | None = None) -> Classifier:
    """The classifier a driver shipped, else load_classifier with a TrialConfig's data fields."""
    if shipped is not None:
        return classifier_from_file(shipped)
    return load_classifier(config.dataset, config.data_path, config.validation_fraction, config.test_fraction)


def weak_classifier_message(accuracy: float, required: float, dataset: str) -> str | None:
    """Why fid and class_accuracy cannot be trusted with a classifier of this test accuracy, or None when it meets
    its bar."""
    if accuracy >= required:
        return None
    return (f"the reference classifier for {dataset} reaches {accuracy:.1%} test accuracy, below the "
            f"{required:.0%} it needs for fid and class_accuracy to mean anything (mislabelled or unusual data?)")
