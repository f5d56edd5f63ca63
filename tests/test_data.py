import dataclasses
import gzip
import struct
import warnings

import numpy as np
import pytest

from cvae import data


def test_embedded_sample_is_real_mnist():
    dataset = data.load_dataset("mnist-5k")
    assert dataset.images.shape == (5000, 28, 28) and dataset.images.dtype == np.uint8
    assert np.bincount(dataset.labels).tolist() == [500] * 10
    ratios = data.white_ratio(dataset.images / 255.0)
    # docs/design.md §2: white_ratio 0.131 +- 0.042, digit 1 about 0.077
    assert abs(ratios.mean() - 0.131) < 0.005 and abs(ratios.std() - 0.042) < 0.005
    assert abs(ratios[dataset.labels == 1].mean() - 0.077) < 0.005


def test_three_splits_are_stratified_deterministic_and_disjoint():
    labels = data.load_dataset("mnist-5k").labels
    train, validation, test = data.split_indices(labels, 0.1, 0.2)
    again = data.split_indices(labels, 0.1, 0.2)
    assert all(np.array_equal(a, b) for a, b in zip((train, validation, test), again))
    assert not set(train) & set(validation) and not set(train) & set(test) and not set(validation) & set(test)
    assert len(train) + len(validation) + len(test) == 5000
    assert np.bincount(labels[validation]).tolist() == [50] * 10 and np.bincount(labels[test]).tolist() == [100] * 10
    prepared = data.prepare_data("mnist-5k", "per_class", 0.1, 0.2, max_train_samples=300)
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (300, 500, 1000)


def test_stratified_subset_keeps_class_balance():
    labels = np.repeat(np.arange(10), 450)
    subset = data.stratified_subset(labels, 300)
    assert len(subset) == 300 and np.bincount(labels[subset]).tolist() == [30] * 10


def test_global_and_per_class_statistics():
    images = np.zeros((4, 28, 28), np.float32)
    images[0, :2] = 1.0  # white ratio 56/784
    images[1, :4] = 1.0  # 112/784
    images[2, :6] = 1.0
    images[3, :10] = 1.0
    labels = np.array([0, 0, 1, 1])
    ratios = data.white_ratio(images)
    global_stats = data.fit_thickness_stats(images, labels, "global")
    np.testing.assert_allclose(global_stats.mean, ratios.mean(), rtol=1e-6)
    np.testing.assert_allclose(global_stats.std[0], ratios.std(), rtol=1e-5)
    per_class = data.fit_thickness_stats(images, labels, "per_class")
    np.testing.assert_allclose(per_class.mean[:2], [ratios[:2].mean(), ratios[2:].mean()], rtol=1e-6)
    np.testing.assert_allclose(per_class.std[:2], [ratios[:2].std(), ratios[2:].std()], rtol=1e-5)
    # per class: each class's thinner image is exactly -0.5 after normalisation
    np.testing.assert_allclose(data.thickness_of(images, labels, per_class), [-0.5, 0.5, -0.5, 0.5], atol=1e-5)
    assert data.thickness_of(images, labels, global_stats)[0] < -0.5  # globally class 0 is thin


def test_per_class_mode_centres_digit_one():
    dataset = data.load_dataset("mnist-5k")
    images, labels = dataset.images / 255.0, dataset.labels
    for mode, expect_centred in (("global", False), ("per_class", True)):
        stats = data.fit_thickness_stats(images, labels, mode)
        ones = data.thickness_of(images, labels, stats)[labels == 1].mean()
        assert (abs(ones) < 0.05) == expect_centred, (mode, ones)


def test_thickness_conditions_for_all_of_mnist():
    # Full MNIST's size at once (speed is the benchmarks' business, not a timed test on a busy machine)
    images = np.random.default_rng(0).random((60000, 28, 28), dtype=np.float32)
    labels = np.random.default_rng(1).integers(0, 10, 60000)
    stats = data.fit_thickness_stats(images, labels, "per_class")
    thickness = data.thickness_of(images, labels, stats)
    conditions = data.make_conditions(labels, thickness)
    assert conditions.shape == (60000, 11) and np.all(conditions[np.arange(60000), labels] == 1)
    assert np.all(np.abs(thickness) <= 1)


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_user_idx_folder_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    dataset = data.load_dataset("mnist", str(tmp_path))
    assert dataset.images.shape == (40, 28, 28) and dataset.source.startswith("user:")
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=dataset.images[:30], y_train=dataset.labels[:30],
             x_test=dataset.images[30:], y_test=dataset.labels[30:])
    assert np.array_equal(data.load_dataset("mnist", str(npz)).images, dataset.images)
    with pytest.raises(data.DatasetError, match="neither a folder of IDX files nor an existing .npz"):
        data.load_dataset("mnist", str(tmp_path / "missing.npz"))


@pytest.fixture(autouse=True)
def fresh_download_memory(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(data, "_failed_downloads", set())
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    # its own cache: another test's failed download leaves a marker that skips the next attempt for a day
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path_factory.mktemp("data-cache")))


def test_lookup_order_cache_then_download_then_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    calls = []

    def offline(name):
        calls.append(name)
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "download_keras", offline)
    # 1. nothing cached, no network -> embedded sample with a loud warning
    with pytest.warns(UserWarning, match="FALLING BACK to the embedded 5,000-digit MNIST sample"):
        fallback = data.load_dataset("mnist")
    assert calls == ["mnist"] and fallback.source == "embedded-mnist-5k (fallback)" and len(fallback.labels) == 5000
    with pytest.warns(UserWarning, match="failed earlier in this process"):
        data.load_dataset("mnist")
    assert calls == ["mnist"]  # a failed download is not retried in the same process
    # 2. a keras cache file is used before any download is attempted
    (tmp_path / "datasets").mkdir()
    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "datasets" / "mnist.npz", x_train=images[:15], y_train=np.arange(15) % 10,
             x_test=images[15:], y_test=np.arange(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = data.load_dataset("mnist")
    assert cached.source.startswith("keras-cache:") and len(cached.labels) == 20 and calls == ["mnist"]


def test_download_is_used_when_cache_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "cache"))  # no failed download remembered
    images = np.zeros((10, 28, 28), np.uint8)
    monkeypatch.setattr(data, "download_keras", lambda name: (images, np.arange(10)))
    assert data.load_dataset("mnist").source == "keras-download"
    monkeypatch.setenv(data.OFFLINE_ENV, "1")  # the study driver found no network: trials skip the attempt
    with pytest.warns(UserWarning, match="skipped: CVAE_OFFLINE=1"):
        assert data.load_dataset("mnist").source == "embedded-mnist-5k (fallback)"


def test_a_failed_download_is_remembered_for_a_day(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def offline(name):
        calls.append(name)
        raise OSError("no network")

    monkeypatch.setattr(data, "download_keras", offline)
    for _ in range(2):
        data._failed_downloads.clear()  # a new process each time
        with pytest.warns(UserWarning, match="FALLING BACK"):
            assert data.load_dataset("mnist").source == "embedded-mnist-5k (fallback)"
    assert calls == ["mnist"] and (tmp_path / "cache" / "download-failed-mnist").is_file()
    monkeypatch.setenv(data.FALLBACK_NOTED_ENV, "1")  # the study driver said it once: trials stay quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert data.load_dataset("mnist").source == "embedded-mnist-5k (fallback)"


def test_fashion_mnist_missing_everywhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    from cvae.datasets import DATASET_INFO

    monkeypatch.setitem(DATASET_INFO, "fashion-mnist", dataclasses.replace(DATASET_INFO["fashion-mnist"],
                                                                         system_dirs=(str(tmp_path / "none"),)))
    monkeypatch.setattr(data, "download_keras", lambda name: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(data.DatasetError, match="dataset 'fashion-mnist' not found; tried"):
        data.load_dataset("fashion-mnist")


def test_the_drivers_data_note_keeps_everything_the_lookup_tried(tmp_path, monkeypatch, capsys):
    """The study's one line about the fallback names every place it looked and why each failed, parentheses
    balanced (it was cut at the first "); ", dropping the failed download and its retry hint)."""
    from cvae.config import TrialConfig
    from study.driver.inputs import read_data

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(data, "download_keras", lambda name: (_ for _ in ()).throw(OSError("network is unreachable")))

    class Spec:
        def trial_config(self, params):
            return TrialConfig(dataset="mnist", eval_samples=256)

    read_data(Spec())
    note = capsys.readouterr().out
    assert note.startswith("data: the embedded 5,000-digit MNIST sample (full MNIST not found (tried keras cache ")
    assert "keras download (OSError: network is unreachable)" in note, note
    assert note.count("(") == note.count(")"), note
