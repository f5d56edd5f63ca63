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
from dataclasses import dataclass
from pathlib import Path

from cvae.command_line import DATA_FLAGS
from cvae.config import MAX_EPOCHS, MAX_TRAIN_SAMPLES
from cvae.environment import CUDA_DEVICES_ENV
from study.errors import Refusal
from study.tables.studies import Study
from study.spec.study_file import LIMITS, StudySpec, check_name, load_spec
from study.store.storage import is_uri

# run.py's whole-number flags: the study's own settings keep the study file's ranges
FLAG_LIMITS = {**{key: LIMITS[key] for key in ("num_samples", "max_epochs", "max_concurrent", "repeats", "first_seed",
                                               "fuse")},
               "max_train_samples": (0, MAX_TRAIN_SAMPLES), "keep_checkpoints": (1, MAX_EPOCHS)}


CONNECT_TIMEOUT_S = 5.0  # an --address that does not answer within this is refused before ray.init waits on it


@dataclass(frozen=True)
class RunRequest:
    """What run.py's command line asks for (its flags, by name): the one thing the driver's functions take from it."""

    space: str  # the study file: a path, or a name in search_spaces/
    results_dir: str  # parent of results/<name>
    name: str | None = None  # None: the study file's name
    num_samples: int | None = None  # None: each keeps the study file's value
    max_epochs: int | None = None
    max_concurrent: int | None = None
    repeats: int | None = None
    first_seed: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    fuse: int | None = None
    dataset: str | None = None  # the data flags override the study file's fixed: settings
    data_path: str | None = None
    max_train_samples: int | None = None
    address: str | None = None  # a Ray head to join; None: a local Ray of the study's own
    storage_path: str | None = None  # where Tune keeps trials and checkpoints (a folder or a URI)
    optuna_storage: str | None = None  # an Optuna database URL
    mlflow: str | None = None  # an MLflow tracking URI
    resume: bool = False
    take_over: bool = False  # take a storage study's lease from a driver that holds it (one known to be gone)
    verbose: bool = False
    keep_checkpoints: int = 1
    reuse_actors: bool = True

    def data_overrides(self) -> dict:
        """The TrialConfig data fields given on the command line."""
        return {name: getattr(self, name) for name in DATA_FLAGS if getattr(self, name) is not None}


def prepare(request: RunRequest) -> Study:
    """The Study a command line asks for, with everything checked that can be before Ray starts: the study file and
    overrides, this machine's resources (or the cluster's address), paths and the storage. Raises Refusal."""
    spec = load_spec(request.space)
    for flag, (low, high) in FLAG_LIMITS.items():
        value = getattr(request, flag)
        if value is not None and not low <= value <= high:
            raise Refusal(f"--{flag.replace('_', '-')} must be in [{low}, {high}], got {value}")
    if request.name is not None:
        check_name(request.name, "--name")
    fixed = request.data_overrides()
    data_path = fixed.get("data_path", spec.fixed.get("data_path"))
    if data_path:  # trials run in Ray workers elsewhere: a relative path means "from where the command runs"
        fixed["data_path"] = str(Path(data_path).expanduser().resolve())
    spec = spec.with_overrides(
        name=request.name, num_samples=request.num_samples, max_epochs=request.max_epochs,
        max_concurrent=request.max_concurrent, repeats=request.repeats, first_seed=request.first_seed,
        cpu=request.cpus_per_trial, gpu=request.gpus_per_trial, fuse=request.fuse, **fixed)
    if spec.fuse > 1 and importlib.util.find_spec("jax") is None:
        raise Refusal(f"fuse {spec.fuse}: fused trials run on JAX, which is not installed: pip install -e '.[fused]' "
                      "(or fuse 1: each trial on its own)")
    if spec.sampler == "gp" and spec.algorithm == "optuna" and importlib.util.find_spec("torch") is None:
        raise Refusal(f"{Path(spec.path).name}: search: sampler gp needs PyTorch (pip install torch); "
                      "without it use tpe, random, cmaes or nsga2")
    if request.optuna_storage:
        check_optuna_storage(request.optuna_storage, spec)
    if request.address:
        check_address(request.address)
    else:
        check_local_resources(spec)
    if request.mlflow:
        from study.driver.tracking import check_mlflow

        if reason := check_mlflow(request.mlflow):
            raise Refusal(reason)
    storage_path = request.storage_path
    if storage_path and is_uri(storage_path):
        check_store(storage_path)
    elif storage_path:
        storage_path = str(writable_folder(Path(storage_path), "--storage-path"))
    return Study.create(spec, writable_folder(Path(request.results_dir), "--results-dir"), storage_path)


def check_optuna_storage(url: str, spec) -> None:
    """An Optuna database URL that opens (created if missing), or a Refusal naming what is wrong."""
    if not url.startswith(("sqlite:///", "postgresql://", "mysql://")):
        raise Refusal(f"--optuna-storage {url!r} must be a database URL such as sqlite:///results/{spec.name}.db")
    if spec.algorithm == "optuna":
        from study.driver.search import open_storage

        try:
            open_storage(url)
        except Exception as error:  # unreachable server, unwritable file, missing driver
            raise Refusal(f"--optuna-storage {url}: cannot open the database "
                          f"({str(error).splitlines()[0][:160]})") from None


def writable_folder(folder: Path, flag: str) -> Path:
    """`folder` made absolute and created, or a Refusal saying why it cannot hold results."""
    folder = folder.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise Refusal(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise Refusal(f"{flag} {folder} cannot hold results ({error.strerror or error})") from None
    return folder


def check_store(location: str) -> None:
    """A --storage-path URI that takes a probe object, or a Refusal saying why (before Ray or any trial starts)."""
    from study.store.storage import check_writable, display

    reason = check_writable(location)
    if reason:
        raise Refusal(f"--storage-path {display(location)}: cannot write there ({reason}); give a store this machine can "
             "write (for S3-compatible stores: ?endpoint_override=HOST:PORT&scheme=http or AWS_ENDPOINT_URL, and "
             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")


def local_gpus() -> int:
    """GPUs this machine offers without starting Ray: NVIDIA's, as `nvidia-smi -L` lists them (0 without it),
    limited by CUDA_VISIBLE_DEVICES as Ray limits itself."""
    visible = os.environ.get(CUDA_DEVICES_ENV)
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
            raise Refusal(f"a trial asks for {wanted:g} {kind}s but this machine has {have:g}; lower --{flag}-per-trial "
                 f"(or resources: {kind.lower()} in the study file), or join a cluster with --address")


def check_address(address: str) -> None:
    """HOST:PORT of a Ray head that answers within CONNECT_TIMEOUT_S, or a Refusal (ray.init would wait minutes)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Refusal(f"--address {address!r} must be HOST:PORT of a Ray head node, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise Refusal(f"--address {address}: no Ray head answers there ({error.strerror or error}); "
             "start one with `ray start --head` or fix the address") from None


def take_lock(study: Study):
    """The study folder's lock (one driver per study), or a Refusal naming the driver that holds it."""
    from study.driver.lock import StudyLock, StudyLocked
    from study.tables.records import LOCK_FILE

    try:
        return StudyLock(study.folder / LOCK_FILE).acquire()
    except StudyLocked as error:
        raise Refusal(str(error)) from None
    except OSError as error:
        raise Refusal(f"cannot lock {study.folder} ({error.strerror or error})") from None


def take_lease(request: RunRequest, study: Study, on_lost):
    """For a study kept in an object store, its lease (one driver anywhere, study.store.lease), or a Refusal naming
    the driver that holds it; None for a study on a local disk (the folder's lock is enough) or a store that cannot
    keep drivers apart (one warning says what is not protected). `on_lost(why)` is called once if another driver
    takes the study over while this one runs."""
    import urllib.parse

    from study.store.lease import Lease, LeaseHeld, honours_conditional_writes
    from study.store.storage import display, is_uri

    if not is_uri(study.storage):
        return None
    unprotected = ("two drivers on two machines are not kept apart and a driver that lost the study is not "
                   "stopped from writing to it: run one driver per storage study")
    if urllib.parse.urlsplit(study.storage).scheme != "s3":
        print(f"warning: only s3:// stores get a driver lease; {unprotected}", file=sys.stderr, flush=True)
        return None
    try:
        if not honours_conditional_writes(study.storage):
            print(f"warning: the store of {display(study.storage)} does not honour conditional writes "
                  f"(If-None-Match, If-Match); {unprotected}", file=sys.stderr, flush=True)
            return None
        return Lease(study.experiment, on_lost=on_lost).acquire(take_over=request.take_over)
    except LeaseHeld as error:
        raise Refusal(f"{display(study.experiment)} is {error}; wait for it, stop it, or pass --take-over once "
                      "you know it is gone") from None
    except ValueError as error:  # CVAE_LEASE_SECONDS
        raise Refusal(str(error)) from None
    except Exception as error:  # noqa: BLE001 (boto3's errors: credentials, bucket, endpoint)
        raise Refusal(f"cannot take the study's lease in {display(study.experiment)} "
                      f"({' '.join(str(error).split())[:160]})") from None


def check_study_folder(request: RunRequest, study: Study) -> bool:
    """A new study must not overwrite one; --resume needs one, made from the same study name, whose Tune state a
    kill did not cut short. Returns whether Tune's tuner.pkl was cut short (the one state file rebuilt)."""
    from study.store.storage import TUNER_STATE, damaged_state_files, display, exists, join
    from study.tables.table_files import check_own_files

    spec, results_dir, experiment = study.spec, study.folder, study.experiment
    try:
        check_own_files(results_dir)  # a pipe for a table would hold the driver forever, a link write elsewhere
    except ValueError as error:
        raise Refusal(str(error)) from None
    found = exists(join(experiment, TUNER_STATE))
    if request.resume and not found:
        raise Refusal(f"--resume: no study to continue at {display(experiment)}; run without --resume first")
    if not request.resume and found:
        raise Refusal(f"study {spec.name!r} already exists at {display(experiment)}; pass --resume to continue it or "
             "--name NEW")
    if not request.resume and (results_dir / "trials.csv").exists():
        raise Refusal(f"{results_dir} already holds a study's tables; pass --resume to continue it or --name NEW")
    damaged = damaged_state_files(experiment) if request.resume else []
    refused = [name for name in damaged if name != TUNER_STATE]
    if refused:
        raise Refusal(f"--resume: Tune's {', '.join(refused)} in {experiment} is cut short (a driver was killed while "
             f"Tune wrote it), so Tune cannot continue this study; its measured epochs stay in "
             f"{results_dir / 'epochs.csv'}; run it again with --name NEW")
    return TUNER_STATE in damaged


RESUME_FLAGS = ("optuna_storage", "storage_path", "reuse_actors")  # flags that change what a study is (beyond its spec)
RECORDED_BEFORE_AS = {"optuna_storage": "storage"}  # a flag's name in the study.json of studies started before a rename


def run_flags(request: RunRequest) -> dict:
    """The flags study.json records next to the spec (where a study runs, --address/--mlflow, may change)."""
    return {flag: getattr(request, flag) for flag in RESUME_FLAGS}


def check_same_study(request: RunRequest, study: Study) -> None:
    """--resume continues the study that started: its study file's content and every flag as they were then.

    Tune rebuilds the trainable from what this run passes, so a changed --max-epochs or --dataset would
    silently change unfinished trials while finished ones keep the old settings.
    """
    from study.tables.records import FLAGS_KEY, SPEC_FILE

    spec, results_dir = study.spec, study.folder
    try:
        stored = json.loads((results_dir / SPEC_FILE).read_text())
    except (OSError, ValueError):
        raise Refusal(f"--resume: {results_dir / SPEC_FILE} is missing or damaged; it records the study that started") from None
    now = {**json.loads(json.dumps(spec.to_dict(), default=list)), FLAGS_KEY: run_flags(request)}
    stored_flags, now_flags = stored.get(FLAGS_KEY) or {}, now.pop(FLAGS_KEY)
    stored_flags = {flag: stored_flags.get(flag, stored_flags.get(RECORDED_BEFORE_AS.get(flag))) for flag in RESUME_FLAGS}
    defaults = {field.name: field.default for field in dataclasses.fields(StudySpec)}  # keys newer than the study
    changed = [f"{key} was {stored.get(key, defaults.get(key))!r}, now {now.get(key)!r}" for key in sorted(now)
               if key != "path" and stored.get(key, defaults.get(key)) != now.get(key)]
    changed += [f"--{flag.replace('_', '-')} was {stored_flags.get(flag)!r}, now {now_flags[flag]!r}"
                for flag in RESUME_FLAGS if FLAGS_KEY in stored and stored_flags.get(flag) != now_flags[flag]]
    if changed:
        raise Refusal("--resume with a different study: " + "; ".join(changed)[:600]
             + ". Resume with the study file and flags it started with, or start a new study with --name")


WEIGHTS_MB = 18.0  # model_4's weights at width 1 (17.7-17.8 MB for latent 8-40); a checkpoint with Adam's state is 3x


def disk_needed_mb(spec, keep_checkpoints: int) -> float:
    """About how much a study's checkpoints take at their peak: every running trial holds its kept checkpoints
    with optimizer state plus the one being written; an ended trial keeps its weights only."""
    widths = [max(p.values) if p.values else p.high for p in spec.parameters if p.name == "width"]
    width = max(widths or [spec.trial_config({}).width])
    weights = WEIGHTS_MB * width**2
    trials = len(spec.grid()) if spec.algorithm == "grid" else spec.num_samples
    return spec.concurrent_trials * (keep_checkpoints + 1) * 3 * weights + trials * keep_checkpoints * weights


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
    from study.tables.mirror import restore_tables
    from study.tables.records import TRIALS_FILE
    from study.store.storage import display

    results_dir, experiment = study.folder, study.experiment
    if (results_dir / TRIALS_FILE).exists():
        return
    try:
        restored = restore_tables(experiment, results_dir)
    except OSError as error:
        raise Refusal(f"--resume: cannot read the study's tables from {display(experiment)} ({str(error).splitlines()[0][:160]})")
    if restored:
        print(f"restored the study's tables from {display(experiment)} into {results_dir}", flush=True)
