"""The reference classifier: its cache is trusted only when whole, and the bytes a driver ships load as the same
classifier on a node that has no cache (its SHA-256 checked)."""

import pytest


@pytest.mark.slow
def test_the_driver_reads_a_valid_cache_without_tensorflow(tmp_path, monkeypatch):
    """read_cached_classifier (what a study's driver calls before Ray starts, and again to ship the classifier) agrees
    with the loaded classifier and trusts no cache that load_classifier would not."""
    import shutil

    from cvae.classifier import load_classifier
    from cvae.config import TrialConfig
    from study.driver.inputs import read_cached_classifier

    classifier = load_classifier("mnist-5k")
    config = TrialConfig(dataset="mnist-5k")

    def read(config=config):
        found = read_cached_classifier(config)
        return None if found is None else (found.accuracy, found.required, found.sha256)

    assert read() == (classifier.accuracy, classifier.required, classifier.sha256)
    assert read(config.replace(test_fraction=0.2)) is None  # other splits: a classifier not trained yet
    copy = tmp_path / "cache"
    shutil.copytree(classifier.path.parent, copy)
    monkeypatch.setenv("CVAE_CACHE_DIR", str(copy))
    assert read() == (classifier.accuracy, classifier.required, classifier.sha256)
    with open(copy / classifier.path.name, "ab") as tampered:
        tampered.write(b"!")
    assert read() is None  # the checksum no longer matches: the child retrains it


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


@pytest.mark.slow
def test_a_shipped_classifier_loads_on_a_node_without_a_cache_and_its_sha_is_checked(tmp_path, monkeypatch):
    """What a study's driver hands its trials: the cached classifier's bytes and SHA-256 (read without TensorFlow);
    a node with an empty cache writes them under their SHA and predicts exactly as the driver's copy does."""
    import dataclasses

    import numpy as np

    from cvae.classifier import cached_classifier_file, classifier_from_file, load_classifier
    from cvae.data import load_dataset

    original = load_classifier("mnist-5k")
    shipped = cached_classifier_file("mnist-5k")
    assert shipped.sha256 == original.sha256 and shipped.accuracy == original.accuracy
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "empty-node-cache"))
    received = classifier_from_file(shipped)
    assert received.path.parent == tmp_path / "empty-node-cache" and received.sha256 == shipped.sha256
    images = load_dataset("mnist-5k").images[:64] / 255.0
    np.testing.assert_array_equal(received.predict(images)[0], original.predict(images)[0])
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        classifier_from_file(dataclasses.replace(shipped, sha256="0" * 64))


@pytest.mark.slow
def test_cas_scores_real_training_images_high_and_unrelated_labels_at_chance(embedded_digits):
    """CAS trains the reference architecture on the images it is given and scores the real test split: real digits
    must score like a classifier, the same digits under shuffled labels like chance."""
    import numpy as np

    from cvae.classifier import classification_accuracy_score

    images, labels = embedded_digits
    order = np.random.default_rng(0).permutation(len(labels))  # the sample is sorted by class
    images, labels = images[order].astype(np.float32) / 255.0, labels[order]
    train, test = slice(0, 2000), slice(4000, 5000)
    real = classification_accuracy_score(images[train], labels[train], images[test], labels[test], seed=0, epochs=2)
    shuffled = np.random.default_rng(0).permutation(labels[train])
    chance = classification_accuracy_score(images[train], shuffled, images[test], labels[test], seed=0, epochs=2)
    assert real > 0.85 and chance < 0.3, (real, chance)
