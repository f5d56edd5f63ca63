"""Metric sanity on real held-out digits versus blurred and blank ones."""

import numpy as np
import pytest
from scipy import ndimage

from cvae import metrics
from cvae.data import load_dataset, split_indices


@pytest.fixture(scope="module")
def halves():
    dataset = load_dataset("mnist-5k")
    _, held, _ = split_indices(dataset.labels, 0.2, 0.1)
    images, labels = dataset.images[held] / 255.0, dataset.labels[held]
    even, odd = np.arange(0, len(held), 2), np.arange(1, len(held), 2)
    return (images[even], labels[even]), (images[odd], labels[odd])


def blurred(images):
    return np.stack([ndimage.gaussian_filter(image, 1.5) for image in images]) * 1.6


def test_collapse_rate_and_sharpness_extremes(halves):
    (real, _), _ = halves
    blank = np.zeros_like(real)
    assert metrics.collapse_rate(blank) == 1.0
    assert metrics.collapse_rate(real) == 0.0
    assert 0.3 < metrics.grey_fraction(real) < 0.7  # docs/design.md: about half of real ink pixels are grey
    assert metrics.grey_fraction((real > 0.5).astype(np.float32)) == 0.0
    assert metrics.ink_w1(real, real) == 0.0 and metrics.ink_w1(blank, real) == 1.0


def test_parity_prefers_real_over_blurred_and_blank(halves):
    (real, labels), (reference, reference_labels) = halves
    real_relative = metrics.relative_widths(metrics.stroke_width(reference), reference_labels)
    groups = np.zeros(len(labels))
    score = {name: metrics.class_parity(images, labels, groups, real_relative)
             for name, images in (("real", real), ("blurred", blurred(real)), ("blank", np.zeros_like(real)))}
    assert score["real"] < score["blurred"] and score["real"] < score["blank"], score
    assert score["real"] < 0.1
    # digit 1 really is drawn with a different relative stroke width (the effect claim (b) is about)
    assert abs(real_relative[1] - 1) > 0.05


@pytest.mark.slow
def test_fid_and_accuracy_prefer_real_over_blurred_and_blank(halves):
    from cvae.classifier import load_classifier, required_accuracy

    (real, labels), (reference, _) = halves
    classifier = load_classifier("mnist-5k")
    assert classifier.accuracy >= classifier.required == required_accuracy("mnist-5k", 5000) == 0.97
    reference_features, _ = classifier.predict(reference)
    fid = {}
    for name, images in (("real", real), ("blurred", blurred(real)), ("blank", np.zeros_like(real))):
        features, predicted = classifier.predict(images)
        fid[name] = metrics.frechet_distance(features, reference_features)
        if name == "real":
            assert metrics.class_accuracy(predicted, labels) > 0.95
    assert fid["real"] < fid["blurred"] < fid["blank"], fid


@pytest.mark.slow
def test_the_driver_reads_a_valid_cache_without_tensorflow(tmp_path, monkeypatch):
    """cached_accuracy (what a study's driver calls before Ray starts) agrees with the loaded classifier and trusts
    no cache that load_classifier would not."""
    import shutil

    from cvae.classifier import cached_accuracy, load_classifier

    classifier = load_classifier("mnist-5k")
    assert cached_accuracy("mnist-5k") == (classifier.accuracy, classifier.required)
    assert cached_accuracy("mnist-5k", test_fraction=0.2) is None  # other splits: a classifier not trained yet
    copy = tmp_path / "cache"
    shutil.copytree(classifier.path.parent, copy)
    monkeypatch.setenv("CVAE_CACHE_DIR", str(copy))
    assert cached_accuracy("mnist-5k") == (classifier.accuracy, classifier.required)
    with open(copy / classifier.path.name, "ab") as tampered:
        tampered.write(b"!")
    assert cached_accuracy("mnist-5k") is None  # the checksum no longer matches: the child retrains it


def test_thickness_agreement():
    requested = np.linspace(-1, 1, 20)
    assert metrics.thickness_agreement(requested, requested) == (1.0, 0.0)
    correlation, error = metrics.thickness_agreement(requested, np.zeros(20))
    assert correlation == 0.0 and error == pytest.approx(np.abs(requested).mean())


def test_metric_names_are_defined_once_with_directions():
    assert set(metrics.METRICS) >= {"val_loss", "class_accuracy", "fid", "thickness_corr", "thickness_mae",
                                     "class_parity", "grey_fraction", "ink_w1", "collapse_rate"}
    assert metrics.METRICS["class_accuracy"].mode == "max" and metrics.METRICS["fid"].mode == "min"
    assert all(m.mode in ("min", "max") for m in metrics.METRICS.values())


def test_corrupt_classifier_cache_is_not_trusted(tmp_path):
    import hashlib
    import json

    from cvae.classifier import _load_cached

    model, info = tmp_path / "classifier.keras", tmp_path / "classifier.json"
    model.write_bytes(b"not a keras archive")
    good_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    # checksum matches but the file is no model: rejected
    info.write_text(json.dumps({"fingerprint": "abc", "sha256": good_sha, "test_accuracy": 0.99}))
    with pytest.warns(UserWarning, match="unusable"):
        assert _load_cached(model, info, "abc") is None
    # tampered file (checksum mismatch) and a cache for other digits (fingerprint mismatch): rejected
    for sha, fingerprint in (("0" * 64, "abc"), (good_sha, "other-digits")):
        info.write_text(json.dumps({"fingerprint": "abc", "sha256": sha, "test_accuracy": 0.99}))
        with pytest.warns(UserWarning, match="checksum or dataset fingerprint mismatch"):
            assert _load_cached(model, info, fingerprint) is None
    info.write_text("{ truncated")
    with pytest.warns(UserWarning, match="unusable"):
        assert _load_cached(model, info, "abc") is None
