"""What the driver hands every trial, read and checked once before Ray starts: the study's data and its reference
classifier (trained in a child process the first time, refused below its dataset's bar)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from cvae.environment import FALLBACK_NOTED_ENV, OFFLINE_ENV, PYTHONPATH_ENV, TF_LOG_LEVEL_ENV
from cvae.runtime import error_cause
from study.errors import Refusal
from study.driver.ray_cluster import REPO, repo_pythonpath


CLASSIFIER_CHECK = ("import json, sys\nfrom cvae.classifier import classifier_for\nfrom cvae.config import TrialConfig\n"
                    "c = classifier_for(TrialConfig.from_dict(json.loads(sys.argv[1])))\n"
                    "print('CLASSIFIER ' + json.dumps({'accuracy': c.accuracy, 'required': c.required}))\n")


def check_classifier(spec, extra_env: dict) -> dict:
    """Make sure the study's reference classifier exists (trained once, cached) and refuse to start (a Refusal) when
    its test accuracy is below its dataset's bar, unless the study file says allow_weak_classifier.

    A valid cache is read here without TensorFlow (its record holds the accuracy; the file's checksum is checked);
    otherwise a child trains or repairs it, which keeps TensorFlow (its memory, threads and start-up lines) out of
    the driver.
    Returns:
        {"classifier_accuracy", "classifier_required", "classifier_sha256"} for study.json.
    """
    from cvae.classifier import weak_classifier_message
    from cvae.environment import cache_dir
    from cvae.metrics import CLASSIFIER_SHA256

    config = spec.trial_config({})
    classifier = read_cached_classifier(config)
    if classifier is None:
        prepare_classifier(config, extra_env)
        classifier = read_cached_classifier(config)
    if classifier is None:
        raise Refusal(f"the reference classifier for {config.dataset} was prepared but its cache in {cache_dir()} cannot be "
             "read back")
    message = weak_classifier_message(classifier.accuracy, classifier.required, config.dataset)
    if message and not spec.allow_weak_classifier:
        raise Refusal(message + "; fix the data, or set allow_weak_classifier: true in the study file to run anyway")
    print(f"reference classifier for {config.dataset}: {classifier.accuracy:.1%} test accuracy "
          f"(needs {classifier.required:.0%}){'; BELOW ITS BAR, allowed by the study file' if message else ''}",
          flush=True)
    return {"classifier_accuracy": classifier.accuracy, "classifier_required": classifier.required,
            CLASSIFIER_SHA256: classifier.sha256}


def read_cached_classifier(config):
    """The cached reference classifier of a config's data (cvae.classifier.ClassifierFile, read without
    TensorFlow, its checksum checked), or None when there is no intact cache."""
    from cvae.classifier import cached_classifier_file
    from cvae.train import data_fields

    with warnings.catch_warnings():  # read_data has already said once which data this study uses
        warnings.simplefilter("ignore")
        try:
            return cached_classifier_file(*data_fields(config))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def prepare_classifier(config, extra_env: dict) -> None:
    """Train (or load and repair) the classifier in a child process, which caches it; a Refusal if it fails."""
    print(f"reference classifier for {config.dataset}: preparing it (the first time it trains, a minute or a few "
          "on 2 cores)", flush=True)
    env = {**os.environ, **extra_env, PYTHONPATH_ENV: repo_pythonpath(),
           TF_LOG_LEVEL_ENV: os.environ.get(TF_LOG_LEVEL_ENV, "3")}
    child = subprocess.run([sys.executable, "-c", CLASSIFIER_CHECK, config.to_json()], capture_output=True, text=True,
                           env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    found = [line for line in child.stdout.splitlines() if line.startswith("CLASSIFIER ")]
    if child.returncode != 0 or not found:
        raise Refusal(f"the reference classifier for {config.dataset} could not be prepared "
             f"({error_cause(child.stderr + child.stdout, 'no reason given')})")


@dataclass(frozen=True)
class DriverData:
    """The study's data as the driver read it, once, before Ray starts: what every trial is shipped."""

    dataset: Any  # cvae.data.Dataset
    env: dict  # for every trial: CVAE_OFFLINE / CVAE_FALLBACK_NOTED when only the embedded sample was reachable


def read_data(spec) -> DriverData:
    """Read the study's data once in the driver: bad data is one line now (a Refusal) instead of failing every trial,
    and the digits read here are the ones every trial gets. If only the embedded MNIST sample is reachable, say so
    once here and tell the trials (no download attempt, no warning each)."""
    from cvae.data import DatasetError, load_dataset
    from cvae.metrics import fid_sample_problem

    config = spec.trial_config({})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(config.dataset, config.data_path)
        except DatasetError as error:
            raise Refusal(str(error)) from None
    if problem := fid_sample_problem(dataset.labels, config):
        raise Refusal(problem)
    if "fallback" not in dataset.source:
        return DriverData(dataset, {})
    # the warning reads "full MNIST not found (tried A (why); B (why)); FALLING BACK …": keep all it tried
    reason = str(caught[0].message).split("; FALLING BACK")[0] if caught else "full MNIST not found"
    print(f"data: the embedded 5,000-digit MNIST sample ({reason}); every trial records its data source",
          flush=True)
    return DriverData(dataset, {OFFLINE_ENV: "1", FALLBACK_NOTED_ENV: "1"})


def ship_inputs(study, dataset, mirror=None):
    """The data and the reference classifier every trial gets from the driver (cvae.train.TrialInputs): the data as
    preflight.read_data read it, and the cached classifier's bytes. A node needs neither the user's data folder nor a
    classifier cache, and every trial is measured by the same classifier, whose SHA-256 each epoch records. A study
    kept in its storage keeps its classifier there too, so a driver that resumes it on another machine measures with
    the same bytes."""
    from cvae.metrics import CLASSIFIER_SHA256
    from cvae.train import TrialInputs, data_fields
    from study.tables.records import SPEC_FILE

    config = study.spec.trial_config({})
    recorded = json.loads((study.folder / SPEC_FILE).read_text()).get(CLASSIFIER_SHA256)
    classifier = stored = mirror.load_classifier() if mirror else None
    if classifier is None:
        classifier = read_cached_classifier(config)
    if classifier is None or (recorded and classifier.sha256 != recorded):
        raise Refusal(f"the reference classifier that measured this study (sha256 {str(recorded)[:12]}…) is neither in its "
             "storage nor in this machine's cache; resume where it ran, or start a new study with --name")
    if mirror and stored is None:
        mirror.save_classifier(classifier)
    print(f"trials get the driver's data ({dataset.source}, {len(dataset.labels):,} images) and reference "
          f"classifier (sha256 {classifier.sha256[:12]}…)", flush=True)
    return TrialInputs(dataset, classifier, data_fields(config))


