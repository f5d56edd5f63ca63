"""CLI: python study/run.py --space grey_loss.yaml — run (or resume) a Ray Tune + Optuna study of the C-VAE."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: shipped to cluster nodes, on local workers' path

from cvae.cli import DATA_FLAGS, ArgumentParser, add_config_flags, config_overrides, error_cause, exit_with, fail
from cvae.runtime import VERBOSE_ENV
from cvae.config import MAX_EPOCHS, MAX_TRAIN_SAMPLES, MNIST
from study.space import (MAX_CONCURRENT, MAX_REPEATS, MAX_SEED, MAX_TRIALS, SpecError, StudySpec, check_name,  # light
                         load_spec)

# Uploaded to cluster nodes with the code: everything but outputs and history.
RUNTIME_EXCLUDES = [".git", "results", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]


def parse_args(argv, prog: str = "python study/run.py"):
    parser = ArgumentParser(
        prog=prog,
        description="Run a hyperparameter study of the C-VAE with Ray Tune + Optuna. Tables go to "
        "results/<name>/trials.csv and epochs.csv while it runs; checkpoints to results/<name>/tune/.",
        epilog="Examples:  python study/run.py --space smoke.yaml\n"
        "           python study/run.py --space grey_loss.yaml --num-samples 8 --max-epochs 3\n"
        "           python study/run.py --space grey_loss.yaml --address HEAD_IP:6379 --storage-path /shared/results\n"
        "           python study/run.py --space grey_loss.yaml --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--space", required=True, help="study file: a path, or a name in search_spaces/ (e.g. grey_loss.yaml)")
    parser.add_argument("--name", help="study name (default: the file's name:); results go to results/<name>")
    parser.add_argument("--num-samples", type=int, help="number of Optuna trials (overrides search.num_samples)")
    parser.add_argument("--max-epochs", type=int, help="cap every trial's epochs (and ASHA's max_t)")
    add_config_flags(parser.add_argument_group("override the study file's fixed: settings"), DATA_FLAGS)
    parser.add_argument("--max-concurrent", type=int, help="trials running at once (overrides search.max_concurrent)")
    parser.add_argument("--repeats", type=int, help="a grid study's seeds per point (overrides search.repeats)")
    parser.add_argument("--first-seed", type=int, help="a grid study's first seed (overrides search.first_seed): "
                        "more seeds for an earlier study are a new study, e.g. --first-seed 3 --repeats 7 --name "
                        "NAME_more, which study/report.py pools with it (--pool)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (TensorFlow threads follow it)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions share a GPU (e.g. 0.5)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="join an existing Ray cluster (HEAD_IP:6379; default $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--storage-path", help="where Tune keeps trials and checkpoints: a path every node can reach "
                        "or a cloud URI (default results/<name>/tune)")
    parser.add_argument("--storage", help="keep the Optuna study in a database, e.g. sqlite:///results/grey_loss.db "
                        "(readable by optuna-dashboard and the optuna CLI)")
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="parent of results/<name> (default results/)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    parser.add_argument("--mlflow", metavar="URI", help="also log every trial as an MLflow run (params, per-epoch "
                        "metrics, status, chosen checkpoint) in this tracking store, e.g. sqlite:///mlflow.db; "
                        "needs pip install -e '.[mlflow]'")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's and TensorFlow's own start-up, checkpoint and progress lines")
    parser.add_argument("--keep-checkpoints", type=int, default=1, metavar="N",
                        help="checkpoints each trial keeps, newest first (default 1: the one a resume needs, which is "
                        "the trial's result); a trial that has ended keeps its weights only, not its optimizer state")
    parser.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                        help="start a fresh worker process per trial (default: reuse, which skips TensorFlow "
                        "start-up; ASHA studies always start fresh ones, as pruned trials cannot hand theirs on)")
    return parser.parse_args(argv)


MAX_FLAG = {"num_samples": MAX_TRIALS, "max_epochs": MAX_EPOCHS, "max_concurrent": MAX_CONCURRENT,
            "max_train_samples": MAX_TRAIN_SAMPLES, "keep_checkpoints": MAX_EPOCHS, "repeats": MAX_REPEATS,
            "first_seed": MAX_SEED}
ZERO_ALLOWED = ("max_train_samples", "first_seed")  # flags whose lowest value is 0 (the others start at 1)
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C: the study is resumable, not done
CONNECT_TIMEOUT_S = 5.0  # an --address that does not answer within this is refused before ray.init waits on it


def prepare(args):
    """Everything that can be checked before Ray starts: spec, overrides, paths, data. Exits 2 on bad input."""
    try:
        spec = load_spec(args.space)
        for flag, high in MAX_FLAG.items():
            value, low = getattr(args, flag), 0 if flag in ZERO_ALLOWED else 1
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
    from study.storage import is_uri, join

    results_dir = writable_folder(Path(args.results_dir), "--results-dir") / spec.name
    storage_path = str(results_dir / "tune")
    if args.storage_path:
        storage_path = args.storage_path
        if is_uri(storage_path):
            check_store(storage_path)
        else:
            storage_path = str(writable_folder(Path(storage_path), "--storage-path"))
    experiment = join(storage_path, spec.name)
    return spec, results_dir, storage_path, experiment


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


def check_study_folder(args, spec, results_dir: Path, experiment: str) -> bool:
    """A new study must not overwrite one; --resume needs one, made from the same study name, whose Tune state a
    kill did not cut short. Returns whether Tune's tuner.pkl was cut short (the one state file rebuilt)."""
    from study.storage import TUNER_STATE, damaged_state_files, display, exists, join

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


def check_same_study(spec, args, results_dir: Path) -> None:
    """--resume continues the study that started: its study file's content and every flag as they were then.

    Tune rebuilds the trainable from what this run passes, so a changed --max-epochs or --dataset would
    silently change unfinished trials while finished ones keep the old settings.
    """
    from study.results import FLAGS_KEY, SPEC_FILE

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


def repo_pythonpath() -> str:
    """PYTHONPATH for processes this driver starts on this machine: the checkout first, then the user's."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


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
        {"classifier_accuracy", "classifier_required"} for study.json.
    """
    from cvae.classifier import cached_accuracy, weak_classifier_message

    config = spec.trial_config({})
    with warnings.catch_warnings():  # check_download has already said once which data this study uses
        warnings.simplefilter("ignore")
        cached = cached_accuracy(config.dataset, config.data_path, config.validation_fraction, config.test_fraction)
    if cached is not None:
        result = {"accuracy": cached[0], "required": cached[1]}
    else:
        result = prepare_classifier(config, extra_env)

    message = weak_classifier_message(result["accuracy"], result["required"], config.dataset)
    if message and not spec.allow_weak_classifier:
        fail(message + "; fix the data, or set allow_weak_classifier: true in the study file to run anyway")
    print(f"reference classifier for {config.dataset}: {result['accuracy']:.1%} test accuracy "
          f"(needs {result['required']:.0%}){'; BELOW ITS BAR, allowed by the study file' if message else ''}",
          flush=True)
    from cvae.classifier import cached_classifier_file
    from cvae.metrics import CLASSIFIER_SHA256
    from cvae.train import data_fields

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sha256 = cached_classifier_file(*data_fields(config)).sha256
    return {"classifier_accuracy": result["accuracy"], "classifier_required": result["required"],
            CLASSIFIER_SHA256: sha256}


def prepare_classifier(config, extra_env: dict) -> dict:
    """Train (or load and repair) the classifier in a child process: {"accuracy", "required"}; exit 2 if it fails."""
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
    return json.loads(found[-1].split(" ", 1)[1])


def check_data(spec) -> None:
    """Read the study's data once in the driver, so bad data is one line now instead of failing every trial."""
    from cvae.data import DatasetError, load_dataset

    config = spec.trial_config({})
    if not config.data_path and config.dataset == MNIST:
        return  # the lookup order ends at the embedded sample, which check_download reports on
    try:
        load_dataset(config.dataset, config.data_path)
    except DatasetError as error:
        fail(str(error))


def ship_inputs(spec, results_dir: Path, mirror=None):
    """The data and the reference classifier every trial gets from the driver (cvae.train.TrialInputs), read once
    here: a node needs neither the user's data folder nor a classifier cache, and every trial is measured by the
    same classifier, whose SHA-256 each epoch records. A study kept in its storage keeps its classifier there too,
    so a driver that resumes it on another machine measures with the same bytes."""
    from cvae.classifier import cached_classifier_file
    from cvae.data import load_dataset
    from cvae.metrics import CLASSIFIER_SHA256
    from cvae.train import TrialInputs, data_fields
    from study.results import SPEC_FILE

    config = spec.trial_config({})
    recorded = json.loads((results_dir / SPEC_FILE).read_text()).get(CLASSIFIER_SHA256)
    with warnings.catch_warnings():  # check_download has already said once which data this study uses
        warnings.simplefilter("ignore")
        dataset = load_dataset(config.dataset, config.data_path)
        classifier = stored = mirror.load_classifier() if mirror else None
        if classifier is None:
            try:
                classifier = cached_classifier_file(*data_fields(config))
            except (OSError, ValueError, KeyError):
                classifier = None
    if classifier is None or (recorded and classifier.sha256 != recorded):
        fail(f"the reference classifier that measured this study (sha256 {str(recorded)[:12]}…) is neither in its "
             "storage nor in this machine's cache; resume where it ran, or start a new study with --name")
    if mirror and stored is None:
        mirror.save_classifier(classifier)
    print(f"trials get the driver's data ({dataset.source}, {len(dataset.labels):,} images) and reference "
          f"classifier (sha256 {classifier.sha256[:12]}…)", flush=True)
    return TrialInputs(dataset, classifier, data_fields(config))


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def set_ray_environment(address: str | None, verbose: bool = False) -> None:
    """Environment Ray reads once, so this runs before ray is imported.

    Loopback: Ray binds every server to all interfaces and advertises the machine's routable IP unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is off; with it off a local Ray (and a cluster joined on 127.0.0.1) listens
    on loopback only. A real multi-machine cluster keeps Ray's default.
    """
    if not address or _is_loopback(address):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if address and not os.environ.get("RAY_AUTH_MODE") and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        # A token given for a cluster is only sent in token mode: giving one is asking for it.
        os.environ["RAY_AUTH_MODE"] = "token"
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, hints or boxes from Tune
        # A failed or lost trial is one line of ours (with its cause), not Tune's traceback as well
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Tune's experiment snapshots: every trial checkpoint forces one (CheckpointConfig.num_to_keep=1, see
    # study.tuner.run_config), so a killed driver's resume knows every epoch that was checkpointed; between
    # checkpoints Tune's own "auto" period keeps snapshots under ~5 % of the driver's time. (A snapshot every
    # controller step, TUNE_GLOBAL_CHECKPOINT_S=0, is O(trials) per step: benchmarks/study_scale.py measured
    # 1.5 instead of 4 trials/s at 1,000 trials.)


def check_download(spec) -> dict:
    """Look for the study's dataset once in the driver. If only the embedded fallback is reachable, say so once
    here and tell the trials (CVAE_OFFLINE=1: no download attempt; CVAE_FALLBACK_NOTED=1: no warning each)."""
    from cvae.data import FALLBACK_NOTED_ENV, OFFLINE_ENV, keras_cache_dir, load_dataset

    config = spec.trial_config({})
    if config.dataset != MNIST or config.data_path or (keras_cache_dir() / "mnist.npz").exists():
        return {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = load_dataset(config.dataset).source
    if "fallback" not in source:
        return {}
    reason = str(caught[0].message).split("); ")[0] + ")" if caught else "full MNIST not found"
    print(f"data: the embedded 5,000-digit MNIST sample ({reason}); every trial records its data source",
          flush=True)
    return {OFFLINE_ENV: "1", FALLBACK_NOTED_ENV: "1"}


PROBE = ("import json, sys, ray\n"
         "ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2] or None, logging_level='ERROR', "
         "log_to_driver=False)\nprint('RESOURCES ' + json.dumps(ray.cluster_resources()), flush=True)\n"
         "ray.shutdown()\n")
PROBE_TIMEOUT_S = 60
AUTH_REFUSALS = ("InvalidAuthToken", "Unauthenticated", "no authentication token")  # in Ray's client output


def probe_cluster(address: str, spec) -> None:
    """Join the cluster once from a child process, or exit 2 with the reason in one line; a trial that asks for
    more CPUs or GPUs than the whole cluster has is refused here, before any classifier or trial work.

    Ray's C++ client prints a warning for every failed retry (a missing token is a dozen lines over 20 s) and
    then raises a generic ConnectionError; the child's output names the real cause, and keeps the driver's
    console clean.
    """
    loopback = "127.0.0.1" if _is_loopback(address) else ""
    child = subprocess.Popen([sys.executable, "-c", PROBE, address, loopback], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    timer = threading.Timer(PROBE_TIMEOUT_S, child.kill)  # a head that never answers must not hang the driver
    timer.start()
    output = []
    try:
        for line in child.stdout:  # the first refusal names the cause: no need to wait for Ray's retries
            output.append(line)
            if any(word in line for word in AUTH_REFUSALS):
                child.kill()
                fail(f"--address {address}: the cluster requires its authentication token; set RAY_AUTH_TOKEN (or "
                     "RAY_AUTH_TOKEN_PATH, a file holding it) to the head node's token (`ray get-auth-token` there)")
        child.wait()
    finally:
        timer.cancel()
        child.stdout.close()
    if child.returncode == 0:
        found = [line for line in output if line.startswith("RESOURCES ")]
        resources = json.loads(found[-1].split(" ", 1)[1]) if found else {}
        for kind, wanted in (("CPU", spec.cpu), ("GPU", spec.gpu)):
            if wanted > resources.get(kind, 0):
                fail(f"a trial asks for {wanted:g} {kind}s but the cluster at {address} has "
                     f"{resources.get(kind, 0):g} in all; lower --{kind.lower()}s-per-trial or add nodes first")
        return
    if child.returncode < 0:  # killed by the timer
        fail(f"--address {address}: the Ray cluster did not accept a connection within {PROBE_TIMEOUT_S} s")
    fail(f"--address {address}: cannot join the Ray cluster ({error_cause(''.join(output), 'no reason given')})")


def start_ray(address: str | None, extra_env: dict, verbose: bool = False) -> None:
    import ray

    quiet = logging.INFO if verbose else logging.ERROR  # Ray's "Started a local Ray instance", auth notices, ...
    # quiet TensorFlow C++ logs, plus what the driver learned (e.g. no network)
    worker_env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), **extra_env,
                  **({VERBOSE_ENV: "1"} if verbose else {})}
    if address:
        # The code reaches the other nodes through Ray's runtime environment.
        ray.init(address=address, runtime_env={"working_dir": str(REPO), "excludes": RUNTIME_EXCLUDES,
                                               "env_vars": worker_env},
                 _node_ip_address="127.0.0.1" if _is_loopback(address) else None, log_to_driver=True,
                 logging_level=quiet)
    else:
        # address="local": always a fresh instance of our own, never a leftover one; loopback only.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"PYTHONPATH": repo_pythonpath(), **worker_env}}, log_to_driver=True,
                 logging_level=quiet)
    resources = ray.cluster_resources()
    print(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs",
          flush=True)


EXIT_DISK_FULL = 1  # an error, not an interruption: the study stopped; --resume continues once space is freed
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


def stop_for_disk(error: Exception, results_dir: Path, storage_path: str, spec, args) -> int:
    """The study stopped because a disk filled: one line saying which folder, how full, and how to continue."""
    from study.storage import is_uri

    folder = getattr(error, "filename", None) or (results_dir if is_uri(storage_path) else storage_path)
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:,.0f} MB free"
    except OSError:
        free = "free space unknown"
    needed = disk_needed_mb(spec, args.keep_checkpoints)
    marked = mark_interrupted(results_dir)
    print(f"error: disk full: {folder} ({free}) could not take the study's next write, so it stopped; the tables "
          f"hold every epoch written so far{marked}. Free about {needed:,.0f} MB there, then: python study/run.py "
          f"--space {args.space} --name {spec.name} --resume", file=sys.stderr, flush=True)
    return EXIT_DISK_FULL


def mark_interrupted(results_dir: Path) -> str:
    """Mark the trials a stopped study left running as interrupted, as Ctrl-C does; returns what the stop line
    adds when that rewrite did not fit either (--resume treats running and interrupted rows alike)."""
    from study.results import STATUS_PENDING, STATUS_RUNNING, load_records, trial_status, write_trials

    records = load_records(results_dir)
    for record in records:
        record.interrupted = trial_status(record) in (STATUS_RUNNING, STATUS_PENDING)
    try:
        write_trials(results_dir, records)
    except OSError:
        return " (its running trials still read `running`: there was no room to mark them interrupted)"
    return ""


def report_disk(experiment: str, results_dir: Path, records) -> None:
    """Ended trials keep weights only (their optimizer state is two thirds of a checkpoint and can never be used
    again); then print what the study's checkpoints take on disk."""
    from study.results import ENDED, resolve_path, trial_status
    from study.storage import display, exists, folder_bytes, kept_checkpoints, strip_training_state_at

    if not exists(experiment):
        return
    freed = 0
    for record in records:
        if record.checkpoint and trial_status(record) in ENDED:
            for checkpoint in kept_checkpoints(str(resolve_path(results_dir, record.checkpoint))):
                freed += strip_training_state_at(checkpoint)
    print(f"disk: {folder_bytes(experiment) / 1e6:.0f} MB of checkpoints and logs in {display(experiment)}"
          + (f" ({freed / 1e6:.0f} MB of ended trials' optimizer state removed)" if freed else ""), flush=True)


def summarise(trials, spec, results_dir: Path) -> None:
    from cvae.metrics import TEST_PREFIX
    from study.results import best_trial, provisional_note, resolve_path, trial_params

    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    print(f"\n{len(trials)} trial(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    try:
        best = best_trial(trials, spec.metrics, spec.modes)
    except ValueError as error:
        print(f"no best trial: {error}")
        return
    params = trial_params(best)
    provisional = provisional_note(best)
    if provisional:
        print(provisional)
    print(f"best trial {best['trial_id']} (chosen on validation {', '.join(spec.metrics)}): " +
          ", ".join(f"{k}={v}" for k, v in params.items()))
    shown = ("fid", "class_accuracy", "thickness_corr", "class_parity", "grey_gap", "collapse_rate")
    if not provisional:
        print("  test:       " + ", ".join(f"{m}={best.get(TEST_PREFIX + m, float('nan')):.4g}" for m in shown))
    print("  validation: " + ", ".join(f"{m}={best[m]:.4g}" for m in shown))
    print(f"  checkpoint: {resolve_path(results_dir, best['checkpoint'])}")
    print(f"tables: {results_dir / 'trials.csv'}, {results_dir / 'epochs.csv'}")
    print("next:\n"
          f"  python study/report.py {results_dir}      # figures, summary.md, claim verdicts\n"
          f"  python study/best.py {results_dir}\n"
          f"  python study/sample.py {results_dir} --out best.png")


class HideTunesRepeats(logging.Filter):
    """Tune's lines that say again, less usefully, what the study prints itself: after Ctrl-C a `Tuner.restore(...)`
    hint (the study resumes with its own command), at the end "Trials did not complete" (the error count)."""

    REPEATS = ("Tuner.restore(", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.REPEATS)


def stop_like_ctrl_c(signum, frame) -> None:
    """SIGTERM (a scheduler's or a container's stop) ends the study the way Ctrl-C does: state saved, tables
    written, running trials marked interrupted."""
    os.kill(os.getpid(), signal.SIGINT)


def main(argv=None, prog: str = "python study/run.py") -> int:
    args = parse_args(argv, prog)
    if not args.verbose:  # a second Ctrl-C can leave Ray's log files to the interpreter's exit: not the user's concern
        warnings.simplefilter("ignore", ResourceWarning)
    spec, results_dir, storage_path, experiment = prepare(args)
    check_data(spec)  # input checks first; what depends on the study folder's state waits for its lock
    from study.lock import StudyLock, StudyLocked
    from study.results import LOCK_FILE

    try:
        lock = StudyLock(results_dir / LOCK_FILE).acquire()
    except StudyLocked as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot lock {results_dir} ({error.strerror or error})")
    try:
        if args.resume and args.storage_path:
            restore_from_storage(results_dir, experiment)
        rebuild_tuner_state = check_study_folder(args, spec, results_dir, experiment)
        if args.resume:
            check_same_study(spec, args, results_dir)
        return run_study(args, spec, results_dir, storage_path, experiment, rebuild_tuner_state)
    finally:
        lock.release()


def restore_from_storage(results_dir: Path, experiment: str) -> None:
    """--resume on a machine without the study's tables (the first driver's machine is gone): they come back
    from the storage, which the study has kept them in as it ran."""
    from study.mirror import restore_tables
    from study.results import TRIALS_FILE
    from study.storage import display

    if (results_dir / TRIALS_FILE).exists():
        return
    try:
        restored = restore_tables(experiment, results_dir)
    except OSError as error:
        fail(f"--resume: cannot read the study's tables from {display(experiment)} ({str(error).splitlines()[0][:160]})")
    if restored:
        print(f"restored the study's tables from {display(experiment)} into {results_dir}", flush=True)


def run_study(args, spec, results_dir: Path, storage_path: str, experiment: str,
              rebuild_tuner_state: bool = False) -> int:
    set_ray_environment(args.address, args.verbose)
    if args.address:
        probe_cluster(args.address, spec)

    from study.results import FLAGS_KEY, STATUS_ERROR, incomplete_note, load_records, save_spec, write_tables
    from study.storage import TUNER_STATE, disk_reserve, is_disk_full, is_uri
    from study.mirror import StoreMirror
    from study.tuner import build_tuner, finish_records, remove_orphan_folders, restore_tuner

    extra_env = check_download(spec)
    mirror = StoreMirror(experiment, results_dir) if args.storage_path else None  # the study lives in its storage
    if not args.resume:
        recorded = {**check_classifier(spec, extra_env), FLAGS_KEY: run_flags(args)}
        save_spec(results_dir, spec, recorded)  # written once: the record of what this study is
        if mirror:
            mirror.snapshot()
    print(f"study {spec.name}: {spec.description}\n  {spec.algorithm}"
          f"{'/' + spec.sampler if spec.algorithm == 'optuna' else ''}, objective "
          f"{', '.join(f'{m} ({d})' for m, d in zip(spec.metrics, spec.modes))}, scheduler {spec.scheduler}, "
          f"{spec.cpu:g} CPU / {spec.gpu:g} GPU per trial, up to {spec.max_concurrent} at once\n"
          f"  results: {results_dir}; trials and checkpoints: {experiment}", flush=True)
    if not is_uri(storage_path):
        check_free_space(spec, Path(storage_path), args.keep_checkpoints)
    start_ray(args.address, extra_env, args.verbose)
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    if not args.verbose:
        logging.getLogger("ray.tune.tune").addFilter(HideTunesRepeats())
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory ..."
    started = time.time()
    inputs = ship_inputs(spec, results_dir, mirror)
    trackers = ()
    if args.mlflow:
        from study.tracking import MlflowTracker

        trackers = (MlflowTracker(args.mlflow, spec.name),)
    if args.resume:
        if rebuild_tuner_state:
            # It holds the Tuner as first built; check_same_study made sure the study file and flags still are.
            print(f"note: Tune's {TUNER_STATE} was cut short by a killed driver; rebuilt from the study file",
                  flush=True)
            build_tuner(spec, storage_path, results_dir, args.storage, args.reuse_actors, (), args.keep_checkpoints)
        tuner = restore_tuner(spec, experiment, results_dir, trackers, inputs, mirror)
    else:
        tuner = build_tuner(spec, storage_path, results_dir, args.storage, args.reuse_actors, trackers,
                            args.keep_checkpoints, inputs=inputs, mirror=mirror)
    with disk_reserve(results_dir) as release_reserve:
        try:
            grid = tuner.fit()
        except Exception as error:  # noqa: BLE001 (only a full disk is handled here; anything else is re-raised)
            if not is_disk_full(error):
                raise
            release_reserve()  # room for the rewrite that marks the running trials interrupted
            return stop_for_disk(error, results_dir, storage_path, spec, args)
    records = finish_records(grid, spec, load_records(results_dir), storage_path)
    trials, _ = write_tables(results_dir, records)
    if mirror:
        mirror.snapshot()
    remove_orphan_folders(experiment, set(trials["trial_id"]) if len(trials) else set())
    report_disk(experiment, results_dir, records)
    for tracker in trackers:
        tracker.finish(records, results_dir)
    note = incomplete_note(trials, spec.to_dict(), args.space)
    if note:  # e.g. Ctrl-C: Tune saved its state, the tables hold everything measured so far
        print(f"stopped after {time.time() - started:.0f} s; {note}", flush=True)
    else:
        print(f"finished in {time.time() - started:.0f} s")
    summarise(trials, spec, results_dir)
    errors = int((trials["status"] == STATUS_ERROR).sum()) if len(trials) else 0
    if errors:
        print(f"{errors} trial(s) failed with an error (the `error` column of {results_dir / 'trials.csv'})",
              file=sys.stderr)
        return 1
    return EXIT_INTERRUPTED if note else 0


if __name__ == "__main__":
    exit_with(main)
