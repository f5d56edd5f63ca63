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
    assert np.isnan(metrics.grey_fraction(np.zeros_like(real)))  # no ink: undefined, never "perfectly sharp"
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


def test_thickness_agreement():
    requested = np.linspace(-1, 1, 20)
    assert metrics.thickness_agreement(requested, requested) == (1.0, 0.0)
    correlation, error = metrics.thickness_agreement(requested, np.zeros(20))
    assert np.isnan(correlation) and error == pytest.approx(np.abs(requested).mean())  # constant: no rank order


def test_metric_names_are_defined_once_with_directions():
    assert set(metrics.METRICS) >= {"val_loss", "class_accuracy", "fid", "thickness_corr", "thickness_mae",
                                     "class_parity", "grey_fraction", "ink_w1", "collapse_rate"}
    assert metrics.METRICS["class_accuracy"].mode == "max" and metrics.METRICS["fid"].mode == "min"
    assert all(m.mode in ("min", "max") for m in metrics.METRICS.values())
