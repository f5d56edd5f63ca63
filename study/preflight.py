"""Every check of a study request that can run before Ray starts, cheapest first: flags and the study file, this
machine's resources, paths and the storage, the data, the study folder's state, the classifier, the disk."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvae.cli import DATA_FLAGS, config_overrides, fail
from cvae.config import MAX_EPOCHS, MAX_TRAIN_SAMPLES
from cvae.runtime import error_cause
from study.cluster import REPO, repo_pythonpath
from study.studies import Study
from study.space import LIMITS, SpecError, StudySpec, check_name, load_spec

# run.py's whole-number flags: the study's own settings keep the study file's ranges
FLAG_LIMITS = {**{key: LIMITS[key] for key in ("num_samples", "max_epochs", "max_concurrent", "repeats", "first_seed")},
               "max_train_samples": (0, MAX_TRAIN_SAMPLES), "keep_checkpoints": (1, MAX_EPOCHS)}


CONNECT_TIMEOUT_S = 5.0  # an --address that does not answer within this is refused before ray.init waits on it


def prepare(args) -> Study:
    """The Study a command line asks for, with everything checked that can be before Ray starts: the study file and
    overrides, this machine's resources (or the cluster's address), paths and the storage. Exits 2 on bad input."""
    try:
        spec = load_spec(args.space)
        for flag, (low, high) in FLAG_LIMITS.items():
            value = getattr(args, flag)
            if value is not None and not low <= value <= high:
                raise SpecError(f"--{flag.replace('_', '-')} must be in [{low}, {high}], got {value}")
        if args.name is not None:
            check_name(args.name, "--name")
        fixed = config_overrides(args, DATA_FLAGS)
        data_path = fixed.get("data_path", spec.fixed.get("data_path"))
        if data_path:  # trials run in Ray workers elsewhere: a relative path means "from where the command runs"
            fixed["data_path"] = str(Path(data_path).expanduser().resolve())
        spec = spec.with_overrides(
            name=args.name, num_samples=args.num_samples, max_epochs=args.max_epochs,
            max_concurrent=args.max_concurrent, repeats=args.repeats, first_seed=args.first_seed,
            cpu=args.cpus_per_trial, gpu=args.gpus_per_trial, **fixed)
    except SpecError as error:
        fail(str(error))
    if spec.sampler == "gp" and spec.algorithm == "optuna" and importlib.util.find_spec("torch") is None:
        fail(f"{Path(spec.path).name}: search: sampler gp needs PyTorch (pip install torch); "
             "without it use tpe, random, cmaes or nsga2")
    if args.storage and not args.storage.startswith(("sqlite:///", "postgresql://", "mysql://")):
        fail(f"--storage {args.storage!r} must be a database URL such as sqlite:///results/{spec.name}.db")
    if args.storage and spec.algorithm == "optuna":
        from study.space import open_storage

        try:
            open_storage(args.storage)
        except Exception as error:  # unreachable server, unwritable file, missing driver
            fail(f"--storage {args.storage}: cannot open the database ({str(error).splitlines()[0][:160]})")
    if args.address:
        check_address(args.address)
    else:
        check_local_resources(spec)
    if args.mlflow:
        from study.tracking import check_mlflow

        if reason := check_mlflow(args.mlflow):
            fail(reason)
    from study.storage import is_uri

    storage_path = args.storage_path
    if storage_path and is_uri(storage_path):
        check_store(storage_path)
    elif storage_path:
        storage_path = str(writable_folder(Path(storage_path), "--storage-path"))
    return Study.create(spec, writable_folder(Path(args.results_dir), "--results-dir"), storage_path)


def writable_folder(folder: Path, flag: str) -> Path:
    """`folder` made absolute and created, or exit 2 saying why it cannot hold results."""
    folder = folder.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        fail(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        fail(f"{flag} {folder} cannot hold results ({error.strerror or error})")
    return folder


def check_store(location: str) -> None:
    """A --storage-path URI that takes a probe object, or exit 2 saying why (before Ray or any trial starts)."""
    from study.storage import check_writable, display

    reason = check_writable(location)
    if reason:
        fail(f"--storage-path {display(location)}: cannot write there ({reason}); give a store this machine can "
             "write (for S3-compatible stores: ?endpoint_override=HOST:PORT&scheme=http or AWS_ENDPOINT_URL, and "
             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")


def local_gpus() -> int:
    """GPUs this machine offers without starting Ray: NVIDIA's, as `nvidia-smi -L` lists them (0 without it),
    limited by CUDA_VISIBLE_DEVICES as Ray limits itself."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    count = sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0
    return min(count, len(visible.split(","))) if visible is not None else count


def check_local_resources(spec) -> None:
    """A local study's trials must fit this machine: refused now, before Ray starts or a classifier trains (a trial
    that can never be placed would wait forever)."""
    for kind, wanted, have, flag in (("CPU", spec.cpu, os.cpu_count() or 1, "cpus"),
                                     ("GPU", spec.gpu, local_gpus() if spec.gpu else 0, "gpus")):
        if wanted > have:
            fail(f"a trial asks for {wanted:g} {kind}s but this machine has {have:g}; lower --{flag}-per-trial "
                 f"(or resources: {kind.lower()} in the study file), or join a cluster with --address")


def check_address(address: str) -> None:
    """HOST:PORT of a Ray head that answers within CONNECT_TIMEOUT_S, or exit 2 (ray.init would wait minutes)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--address {address!r} must be HOST:PORT of a Ray head node, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        fail(f"--address {address}: no Ray head answers there ({error.strerror or error}); "
             "start one with `ray start --head` or fix the address")


def take_lock(study: Study):
    """The study folder's lock (one driver per study), or exit 2 naming the driver that holds it."""
    from study.lock import StudyLock, StudyLocked
    from study.records import LOCK_FILE

    try:
        return StudyLock(study.folder / LOCK_FILE).acquire()
    except StudyLocked as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot lock {study.folder} ({error.strerror or error})")


def check_study_folder(args, study: Study) -> bool:
    """A new study must not overwrite one; --resume needs one, made from the same study name, whose Tune state a
    kill did not cut short. Returns whether Tune's tuner.pkl was cut short (the one state file rebuilt)."""
    from study.storage import TUNER_STATE, damaged_state_files, display, exists, join

    spec, results_dir, experiment = study.spec, study.folder, study.experiment
    found = exists(join(experiment, TUNER_STATE))
    if args.resume and not found:
        fail(f"--resume: no study to continue at {display(experiment)}; run without --resume first")
    if not args.resume and found:
        fail(f"study {spec.name!r} already exists at {display(experiment)}; pass --resume to continue it or "
             "--name NEW")
    if not args.resume and (results_dir / "trials.csv").exists():
        fail(f"{results_dir} already holds a study's tables; pass --resume to continue it or --name NEW")
    damaged = damaged_state_files(experiment) if args.resume else []
    refused = [name for name in damaged if name != TUNER_STATE]
    if refused:
        fail(f"--resume: Tune's {', '.join(refused)} in {experiment} is cut short (a driver was killed while "
             f"Tune wrote it), so Tune cannot continue this study; its measured epochs stay in "
             f"{results_dir / 'epochs.csv'}; run it again with --name NEW")
    return TUNER_STATE in damaged


RESUME_FLAGS = ("storage", "storage_path", "reuse_actors")  # flags that change what a study is (beyond the spec)


def run_flags(args) -> dict:
    """The flags study.json records next to the spec (where a study runs, --address/--mlflow, may change)."""
    return {flag: getattr(args, flag) for flag in RESUME_FLAGS}


def check_same_study(args, study: Study) -> None:
    """--resume continues the study that started: its study file's content and every flag as they were then.

    Tune rebuilds the trainable from what this run passes, so a changed --max-epochs or --dataset would
    silently change unfinished trials while finished ones keep the old settings.
    """
    from study.records import FLAGS_KEY, SPEC_FILE

    spec, results_dir = study.spec, study.folder
    try:
        stored = json.loads((results_dir / SPEC_FILE).read_text())
    except (OSError, ValueError):
        fail(f"--resume: {results_dir / SPEC_FILE} is missing or damaged; it records the study that started")
    now = {**json.loads(json.dumps(spec.to_dict(), default=list)), FLAGS_KEY: run_flags(args)}
    stored_flags, now_flags = stored.get(FLAGS_KEY) or {}, now.pop(FLAGS_KEY)
    defaults = {field.name: field.default for field in dataclasses.fields(StudySpec)}  # keys newer than the study
    changed = [f"{key} was {stored.get(key, defaults.get(key))!r}, now {now.get(key)!r}" for key in sorted(now)
               if key != "path" and stored.get(key, defaults.get(key)) != now.get(key)]
    changed += [f"--{flag.replace('_', '-')} was {stored_flags.get(flag)!r}, now {now_flags[flag]!r}"
                for flag in RESUME_FLAGS if FLAGS_KEY in stored and stored_flags.get(flag) != now_flags[flag]]
    if changed:
        fail("--resume with a different study: " + "; ".join(changed)[:600]
             + ". Resume with the study file and flags it started with, or start a new study with --name")


CLASSIFIER_CHECK = ("import json, sys\nfrom cvae.classifier import classifier_for\nfrom cvae.config import TrialConfig\n"
                    "c = classifier_for(TrialConfig.from_dict(json.loads(sys.argv[1])))\n"
                    "print('CLASSIFIER ' + json.dumps({'accuracy': c.accuracy, 'required': c.required}))\n")


def check_classifier(spec, extra_env: dict) -> dict:
    """Make sure the study's reference classifier exists (trained once, cached) and refuse to start, exit 2, when
    its test accuracy is below its dataset's bar, unless the study file says allow_weak_classifier.

    A valid cache is read here without TensorFlow (its record holds the accuracy; the file's checksum is checked);
    otherwise a child trains or repairs it, which keeps TensorFlow (its memory, threads and start-up lines) out of
    the driver.
    Returns:
        {"classifier_accuracy", "classifier_required", "classifier_sha256"} for study.json.
    """
    from cvae.classifier import weak_classifier_message
    from cvae.data import cache_dir
    from cvae.metrics import CLASSIFIER_SHA256

    config = spec.trial_config({})
    classifier = read_cached_classifier(config)
    if classifier is None:
        prepare_classifier(config, extra_env)
        classifier = read_cached_classifier(config)
    if classifier is None:
        fail(f"the reference classifier for {config.dataset} was prepared but its cache in {cache_dir()} cannot be "
             "read back")
    message = weak_classifier_message(classifier.accuracy, classifier.required, config.dataset)
    if message and not spec.allow_weak_classifier:
        fail(message + "; fix the data, or set allow_weak_classifier: true in the study file to run anyway")
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
    """Train (or load and repair) the classifier in a child process, which caches it; exit 2 if it fails."""
    print(f"reference classifier for {config.dataset}: preparing it (the first time it trains, a minute or a few "
          "on 2 cores)", flush=True)
    env = {**os.environ, **extra_env, "PYTHONPATH": repo_pythonpath(),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    child = subprocess.run([sys.executable, "-c", CLASSIFIER_CHECK, config.to_json()], capture_output=True, text=True,
                           env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    found = [line for line in child.stdout.splitlines() if line.startswith("CLASSIFIER ")]
    if child.returncode != 0 or not found:
        fail(f"the reference classifier for {config.dataset} could not be prepared "
             f"({error_cause(child.stderr + child.stdout, 'no reason given')})")


@dataclass(frozen=True)
class DriverData:
    """The study's data as the driver read it, once, before Ray starts: what every trial is shipped."""

    dataset: Any  # cvae.data.Dataset
    env: dict  # for every trial: CVAE_OFFLINE / CVAE_FALLBACK_NOTED when only the embedded sample was reachable


def read_data(spec) -> DriverData:
    """Read the study's data once in the driver: bad data is one line now (exit 2) instead of failing every trial,
    and the digits read here are the ones every trial gets. If only the embedded MNIST sample is reachable, say so
    once here and tell the trials (no download attempt, no warning each)."""
    from cvae.data import FALLBACK_NOTED_ENV, OFFLINE_ENV, DatasetError, load_dataset

    config = spec.trial_config({})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(config.dataset, config.data_path)
        except DatasetError as error:
            fail(str(error))
    if "fallback" not in dataset.source:
        return DriverData(dataset, {})
    reason = str(caught[0].message).split("); ")[0] + ")" if caught else "full MNIST not found"
    print(f"data: the embedded 5,000-digit MNIST sample ({reason}); every trial records its data source",
          flush=True)
    return DriverData(dataset, {OFFLINE_ENV: "1", FALLBACK_NOTED_ENV: "1"})


WEIGHTS_MB = 18.0  # model_4's weights at width 1 (17.7-17.8 MB for latent 8-40); a checkpoint with Adam's state is 3x


def disk_needed_mb(spec, keep_checkpoints: int) -> float:
    """About how much a study's checkpoints take at their peak: every running trial holds its kept checkpoints
    with optimizer state plus the one being written; an ended trial keeps its weights only."""
    widths = [max(p.values) if p.values else p.high for p in spec.parameters if p.name == "width"]
    width = max(widths or [spec.trial_config({}).width])
    weights = WEIGHTS_MB * width**2
    trials = len(spec.grid()) if spec.algorithm == "grid" else spec.num_samples
    return spec.max_concurrent * (keep_checkpoints + 1) * 3 * weights + trials * keep_checkpoints * weights


def check_free_space(spec, folder: Path, keep_checkpoints: int) -> None:
    """Warn before anything runs when the folder that takes the checkpoints has less space than they need."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())  # tune/ is made later
    needed, free = disk_needed_mb(spec, keep_checkpoints), shutil.disk_usage(existing).free / 1e6
    if free < needed:
        print(f"warning: this study's checkpoints need about {needed:,.0f} MB in {folder}, which has "
              f"{free:,.0f} MB free; it stops when the disk fills (free space, then --resume)", file=sys.stderr,
              flush=True)


def restore_from_storage(study: Study) -> None:
    """--resume on a machine without the study's tables (the first driver's machine is gone): they come back
    from the storage, which the study has kept them in as it ran."""
    from study.mirror import restore_tables
    from study.records import TRIALS_FILE
    from study.storage import display

    results_dir, experiment = study.folder, study.experiment
    if (results_dir / TRIALS_FILE).exists():
        return
    try:
        restored = restore_tables(experiment, results_dir)
    except OSError as error:
        fail(f"--resume: cannot read the study's tables from {display(experiment)} ({str(error).splitlines()[0][:160]})")
    if restored:
        print(f"restored the study's tables from {display(experiment)} into {results_dir}", flush=True)
