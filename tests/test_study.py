"""The Ray study end to end: smoke study, NaN trial, driver killed + --resume, two-node cluster with a lost node."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvae.environment import LEASE_ENV

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from


pytestmark = pytest.mark.slow

def listening_addresses(pid: int) -> set[str]:
    """IP addresses on which the process `pid` and everything it started listen (TCP)."""
    import psutil

    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for process in processes:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_smoke_study_end_to_end(tmp_path, study_cli, noise_in):
    database, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    driver = subprocess.Popen([sys.executable, "study/run.py", "--space", "smoke.yaml", "--storage", database,
                               "--mlflow", tracking, "--results-dir", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    addresses = set()
    while driver.poll() is None:  # Ray's servers and the trials' workers, sampled while the study runs
        addresses |= listening_addresses(driver.pid)
        time.sleep(0.5)
    stdout, stderr = driver.communicate()
    result = subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert addresses and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in addresses), addresses
    console = result.stdout + result.stderr  # the study's story, without Ray's, Optuna's or TensorFlow's noise
    assert not noise_in(console), noise_in(console)
    assert re.search(r"study: 1/2 trials ended \(1 completed\), \d running; best fid [\d.]+ \(trial \w+\)"
                     r"(; running trial \w+ at [\d.]+ \(epoch \d+\))?; ETA ~\d+ (s|min)", console), console
    trials = pd.read_csv(tmp_path / "smoke" / "trials.csv")
    epochs = pd.read_csv(tmp_path / "smoke" / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert len(epochs) == 2 and set(epochs["trial_id"]) == set(trials["trial_id"])
    # Optuna's warm start: the base preset (model_4: latent 40, grey 0.32) was one of the trials
    assert ((trials["param_latent_dim"] == 40) & np.isclose(trials["param_grey_weight"], 0.32)).any()
    for column in ("fid", "test_fid", "test_elbo", "val_elbo", "class_accuracy", "classifier_accuracy", "wall_time_s",
                   "checkpoint", "dataset_source", "node_id"):
        assert trials[column].notna().all(), column
    recorded = json.loads((tmp_path / "smoke" / "study.json").read_text())
    assert recorded["classifier_accuracy"] == trials["classifier_accuracy"][0] >= recorded["classifier_required"] == 0.97
    assert set(trials["dataset_source"]) == {"embedded-mnist-5k"}
    import optuna  # the Optuna study is in the database, readable by optuna-dashboard and the optuna CLI

    stored = optuna.load_study(study_name="smoke", storage=database)
    assert len([t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2

    best = subprocess.run([sys.executable, "study/best.py", tmp_path / "smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert best.returncode == 0 and "checkpoint:" in best.stdout
    out = tmp_path / "best.png"
    sample = subprocess.run([sys.executable, "study/sample.py", tmp_path / "smoke", "--out", out, "--digits", "3", "8"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr
    assert Image.open(out).size[1] > 2 * 58 + 2  # two rows at scale 2, and the column labels above them

    import mlflow  # every trial is an MLflow run with its params, per-epoch metrics, status and checkpoint

    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(experiment_names=["smoke"]).set_index("tags.cvae.trial_id").loc[trials["trial_id"]]
    assert list(runs["status"]) == ["FINISHED"] * 2 and list(runs["tags.cvae.status"]) == ["completed"] * 2
    np.testing.assert_allclose(runs["metrics.fid"].to_numpy(), trials["fid"].to_numpy())
    assert list(runs["params.latent_dim"]) == [str(v) for v in trials["param_latent_dim"]]
    assert all(str(tmp_path / "smoke" / "tune") in path for path in runs["tags.cvae.checkpoint"])

    import tensorflow as tf  # Tune's TensorBoard event files: tensorboard --logdir results/<name>

    assert len(list((tmp_path / "smoke" / "tune").rglob("tensorflow_startup.log"))) == 2  # the noise, kept aside
    events = sorted((tmp_path / "smoke" / "tune").rglob("events.out.tfevents.*"))
    assert len(events) == 2
    tags = {value.tag for event in tf.compat.v1.train.summary_iterator(str(events[0])) for value in event.summary.value}
    assert {"ray/tune/fid", "ray/tune/loss", "ray/tune/class_accuracy"} <= tags

    again = study_cli("--space", "smoke.yaml", results=tmp_path, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites a finished study


def test_nan_trial_ends_diverged_and_study_goes_on(tmp_path, study_cli, write_space, tiny_fixed):
    space = write_space(tmp_path, "nan", f"""
        name: nan
        base: model_4
        fixed: {tiny_fixed}
        parameters:
          learning_rate: {{values: [0.001, 10000.0]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 2}}
        scheduler: {{type: fifo, max_epochs: 2}}
    """)
    result = study_cli("--space", space, results=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "nan" / "trials.csv").set_index("param_learning_rate")
    assert trials.loc[10000.0, "status"] == "diverged"
    assert trials.loc[0.001, "status"] == "completed" and trials.loc[0.001, "epochs_run"] == 2


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _read(path):
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


EPOCH_LINE = re.compile(r"\] (\w+) epoch (\d+)/")


def _start(space, tmp_path, log_name, *extra, results=None, hidden=(), env=None):
    """A driver in its own session, its console in tmp_path/log_name, its results under `results` (tmp_path); with
    `hidden`, on a machine of its own (_own_machine)."""
    log = open(tmp_path / log_name, "w")
    command = [sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(results or tmp_path), *extra]
    return subprocess.Popen(_own_machine(command, hidden) if hidden else command, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _own_machine(command, hidden):
    """`command` in a mount namespace of its own in which each `hidden` folder is an empty tmpfs (another machine's
    disk, and its own /tmp/ray); the same process id (unshare and sh exec it). Needs root, as CI has."""
    assert shutil.which("unshare"), "needs util-linux's unshare (root)"
    script = ('while [ "$1" != -- ]; do mkdir -p "$1" && mount -t tmpfs tmpfs "$1" || exit 97; shift; done; shift; '
              'exec "$@"')
    return ["unshare", "--mount", "sh", "-c", script, "sh", *map(str, hidden), "--", *command]


def _printed_epochs(path):
    return {(trial, int(epoch)) for trial, epoch in EPOCH_LINE.findall(path.read_text())}


def test_interrupt_and_kill_then_resume(tmp_path, study_cli, write_space, noise_in):
    """Ctrl-C, then SIGKILL of driver and Ray, then --resume: nothing pruned under FIFO, every printed epoch kept
    exactly once, no new trial ids, running trials continued from their checkpoints, no orphan trial folders; a
    state file cut short is refused by name, or rebuilt where it can be (tuner.pkl)."""
    space = write_space(tmp_path, "resumable", """
        name: resumable
        base: model_4
        fixed: {dataset: mnist-5k, max_train_samples: 600, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5, latent_dim: 8}
        parameters:
          grey_weight: {distribution: log_uniform, low: 0.05, high: 1.0}
        search: {algorithm: optuna, sampler: random, seed: 1, num_samples: 3, max_concurrent: 2}
        scheduler: {type: fifo, max_epochs: 5}
    """)
    folder = tmp_path / "resumable"

    def epochs_at_least(log, count):
        def check():
            assert driver.poll() is None, (tmp_path / log).read_text()[-4000:]
            return True if len(_printed_epochs(tmp_path / log)) >= count else None
        return check

    driver = _start(space, tmp_path, "first.log")
    try:
        _wait_for(epochs_at_least("first.log", 3), 300, "three epochs")
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
        assert driver.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    trials = pd.read_csv(folder / "trials.csv")
    assert "pruned" not in set(trials["status"]) and "interrupted" in set(trials["status"]), trials
    assert "incomplete: " in (tmp_path / "first.log").read_text()
    best = subprocess.run([sys.executable, "study/best.py", folder], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert best.stdout.startswith("incomplete: ") and best.returncode == 2, best  # no trial finished yet

    changed = study_cli("--space", space, "--resume", "--max-epochs", "3", results=tmp_path, timeout=60)
    assert changed.returncode == 2 and "--resume with a different study: max_epochs was 5, now 3" in changed.stderr
    flag = study_cli("--space", space, "--resume", "--no-reuse-actors", results=tmp_path, timeout=60)
    assert flag.returncode == 2 and "--reuse-actors was True, now False" in flag.stderr
    edited = write_space(tmp_path, "edited", space.read_text().replace("high: 1.0", "high: 2.0"))
    file_changed = study_cli("--space", edited, "--name", "resumable", "--resume", results=tmp_path, timeout=60)
    assert file_changed.returncode == 2 and "parameters was" in file_changed.stderr

    driver = _start(space, tmp_path, "second.log", "--resume")
    try:
        _wait_for(epochs_at_least("second.log", 3), 300, "three more epochs")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-epoch
        driver.wait()
    before_kill = pd.read_csv(folder / "epochs.csv")
    ids_before = set(before_kill["trial_id"])  # every trial that had measured something

    # What a kill mid-write left before Tune's folder was written atomically: a state file cut short. An
    # experiment state cannot be rebuilt (refused, named); tuner.pkl can (the study file and flags are checked).
    experiment = folder / "tune" / "resumable"
    newest = max(experiment.glob("experiment_state-*.json"))
    cut = experiment / "experiment_state-2999-01-01_00-00-00.json"
    cut.write_bytes(newest.read_bytes()[:-1])
    refused = study_cli("--space", space, "--resume", results=tmp_path, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"Tune's {cut.name} in {experiment} is cut short" in refused.stderr
    cut.unlink()
    (experiment / "tuner.pkl").write_bytes(b"")  # the file CI once found empty: resume died with EOFError

    result = study_cli("--space", space, "--resume", results=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "note: Tune's tuner.pkl was cut short by a killed driver; rebuilt" in result.stdout
    assert not noise_in(result.stdout + result.stderr), noise_in(result.stdout + result.stderr)  # e.g. "Restored on"
    assert not list(experiment.rglob("*.partial"))  # what the kill caught mid-write is gone
    trials = pd.read_csv(folder / "trials.csv")
    epochs = pd.read_csv(folder / "epochs.csv")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status"]]
    assert ids_before <= set(trials["trial_id"])  # nothing measured was re-created under a new id
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted) == pd.Series([[1, 2, 3, 4, 5]] * 3,
                                                                            index=sorted(trials["trial_id"]))).all()
    printed = _printed_epochs(tmp_path / "first.log") | _printed_epochs(tmp_path / "second.log")
    assert printed <= set(zip(epochs["trial_id"], epochs["epoch"]))  # every epoch a user saw is in the table
    # continued from checkpoints: an epoch older than a trial's newest one before the kill was not run again
    for trial_id, group in before_kill.groupby("trial_id"):
        group = group.drop_duplicates("epoch", keep="last")  # the log's last report of an epoch is the one kept
        older = group[group["epoch"] < group["epoch"].max()].set_index("epoch")["timestamp"]
        after = epochs[epochs["trial_id"] == trial_id].set_index("epoch")["timestamp"]
        assert (after.reindex(older.index) == older).all(), (trial_id, older, after)
    trial_folders = {path.name.split("_")[2] for path in (folder / "tune" / "resumable").glob("run_trial_*")}
    assert trial_folders == set(trials["trial_id"])  # no orphan checkpoint folders


def test_asha_prunes_trials_and_the_study_finishes(tmp_path, write_space):
    """A pruned trial frees its slot for the next one (reusing its busy worker once hung the whole study). One trial
    at a time: the trials reach each rung in a fixed order, so which ones ASHA prunes does not depend on which
    finished first on a busy machine (seeds fix the values)."""
    space = write_space(tmp_path, "pruned", """
        name: pruned
        base: model_4
        fixed: {dataset: mnist-5k, max_train_samples: 600, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5}
        parameters:
          grey_weight: {distribution: log_uniform, low: 0.05, high: 1.0}
          latent_dim: {distribution: int, low: 2, high: 40}
        search: {algorithm: optuna, sampler: random, seed: 2, num_samples: 5, max_concurrent: 1}
        scheduler: {type: asha, max_epochs: 3, grace_period: 1, reduction_factor: 3}
    """)
    log = open(tmp_path / "driver.log", "w")
    # Tune waits 2 s for a stopped trial's thread before reusing its worker; 0 makes every such reuse fail, so
    # the old hang (slow epochs outlasting those 2 s) reproduces at test sizes if reuse ever returns under ASHA.
    environment = {**os.environ, "TUNE_FUNCTION_THREAD_TIMEOUT_S": "0"}
    driver = subprocess.Popen([sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(tmp_path)],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=environment)
    try:
        returncode = driver.wait(timeout=360)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and every process it started
            driver.wait()
    assert returncode == 0, (tmp_path / "driver.log").read_text()[-4000:]
    trials = pd.read_csv(tmp_path / "pruned" / "trials.csv")
    assert len(trials) == 5 and set(trials["status"]) == {"completed", "pruned"}, trials[["trial_id", "status"]]
    assert (trials.loc[trials["status"] == "pruned", "epochs_run"] < 3).all()


@pytest.mark.private_network
def test_two_node_cluster_survives_losing_a_worker(tmp_path, write_space):
    from ray.cluster_utils import Cluster

    space = write_space(tmp_path, "cluster", """
        name: cluster
        base: model_4
        fixed: {dataset: mnist-5k, max_train_samples: 2000, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5, latent_dim: 8}
        parameters:
          grey_weight: {values: [0.1, 0.5]}
        search: {algorithm: grid, repeats: 1, max_concurrent: 2}
        scheduler: {type: fifo, max_epochs: 5}
        resources: {cpu: 1, gpu: 0}
    """)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                           "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "study/run.py", "--space", str(space), "--address", cluster.address,
                               "--results-dir", str(tmp_path)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    epochs_csv = tmp_path / "cluster" / "epochs.csv"
    try:
        def worker_trial_checkpointed():
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            epochs = _read(epochs_csv)
            if epochs is None or "node_id" not in epochs:
                return None
            on_worker = epochs[epochs["node_id"] == worker.node_id]
            return on_worker["trial_id"].iloc[0] if len(on_worker) and on_worker["epoch"].max() < 4 else None
        lost_trial = _wait_for(worker_trial_checkpointed, 400, "a trial with a checkpoint on the worker node")
        cluster.remove_node(worker, allow_graceful=False)  # the node dies mid-trial
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")  # capacity comes back as a fresh node
        assert driver.wait(timeout=500) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        cluster.shutdown()
    trials = pd.read_csv(tmp_path / "cluster" / "trials.csv")
    epochs = pd.read_csv(epochs_csv)
    assert set(trials["status"]) == {"completed"} and len(trials) == 2, trials[["trial_id", "status", "error"]]
    lost = epochs[epochs["trial_id"] == lost_trial]
    assert lost["node_id"].nunique() >= 2  # it ran on the lost worker, then elsewhere
    assert lost["epoch"].is_unique and lost["epoch"].max() == 5
    after = sorted(lost[lost["node_id"] != worker.node_id]["epoch"])
    # resumed from its checkpoint instead of restarting at epoch 1, then ran every remaining epoch once;
    # the epochs it ran on the lost node stay in the table (Tune's own history of the retry starts after them).
    assert after[0] > 1 and after == list(range(after[0], 6))
    assert epochs["node_id"].nunique() >= 2  # trials ran on more than one node


def test_a_second_driver_on_the_same_study_is_refused(tmp_path, study_cli, write_space, tiny_fixed):
    space = write_space(tmp_path, "twice", f"""
        name: twice
        base: model_4
        fixed: {tiny_fixed}
        parameters:
          grey_weight: {{values: [0.1]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 1}}
        scheduler: {{type: fifo, max_epochs: 1}}
    """)
    first = _start(space, tmp_path, "first.log")
    try:
        _wait_for(lambda: True if (tmp_path / "twice" / "study.json").exists() else None, 120, "the first driver")
        for extra in ([], ["--resume"]):
            second = study_cli("--space", space, *extra, results=tmp_path, timeout=60)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"in use by a running driver (pid {first.pid} on" in second.stderr
            assert len(second.stderr.strip().splitlines()) == 1 and not second.stdout
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-4000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    trials = pd.read_csv(tmp_path / "twice" / "trials.csv")
    assert list(trials["status"]) == ["completed"]


def test_lock_of_a_killed_driver_is_taken_over(tmp_path):
    from study.driver.lock import StudyLock, StudyLocked

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from study.driver.lock import StudyLock; "
                               f"StudyLock({str(tmp_path / 'lock')!r}).acquire(); print('held', flush=True); "
                               "time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked, match=f"pid {holder.pid} on "):
            StudyLock(tmp_path / "lock").acquire()
    finally:
        holder.kill()
        holder.wait()
    with StudyLock(tmp_path / "lock") as lock:  # the dead holder's lock is free again
        assert lock.holder()["pid"] == os.getpid()


def write_idx(folder, images, labels):
    """The four MNIST IDX files (uncompressed) holding `images` as train and none as t10k."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in (("train", (images, labels)), ("t10k", (images[:0], labels[:0]))):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + struct.pack(">III", len(x), 28, 28) + x.astype(np.uint8).tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + struct.pack(">I", len(y)) + y.astype(np.uint8).tobytes())


@pytest.mark.parametrize("case, message", [
    ("empty", "lacks train-images-idx3-ubyte"),
    ("mismatched", "holds (5000, 28, 28) but train-labels-idx1-ubyte holds (4000,) labels"),
    ("truncated", "does not match its IDX header"),
    ("one class", "no images of class(es) [1, 2, 3, 4, 5, 6, 7, 8, 9]"),
])
def test_bad_data_is_refused_before_ray_starts(tmp_path, embedded_digits, case, message):
    images, labels = embedded_digits
    folder = tmp_path / "data"
    if case == "empty":
        folder.mkdir()
    elif case == "mismatched":
        write_idx(folder, images, labels[:4000])
    elif case == "truncated":
        write_idx(folder, images, labels)
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    else:
        write_idx(folder, images[labels == 0], labels[labels == 0])
    # relative to where the command runs, as a user types it
    result = subprocess.run([sys.executable, str(REPO / "study/run.py"), "--space", "smoke.yaml", "--dataset", "mnist",
                             "--data-path", "data", "--results-dir", "results"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "results" / "smoke" / "tune").exists()  # refused before Ray or Tune started


def test_relative_data_path_reaches_the_trials(tmp_path, embedded_digits):
    write_idx(tmp_path / "digits", *embedded_digits)  # the embedded digits, so the cached classifier serves
    result = subprocess.run([sys.executable, str(REPO / "study/run.py"), "--space", "smoke.yaml", "--dataset", "mnist",
                             "--data-path", "digits", "--num-samples", "1", "--results-dir", "results"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "results" / "smoke" / "trials.csv")
    assert list(trials["status"]) == ["completed"] and trials["dataset_source"][0] == "user:digits"


def test_a_failing_trial_ends_as_error_with_its_cause_and_is_not_retried(tmp_path, study_cli, write_space):
    """A trial whose own data lookup fails (a searched data_path: the driver ships only the study's fixed data)
    raises DatasetError in train() on every attempt: it ends `error` with that cause, at once, not retried."""
    space = write_space(tmp_path, "smoke", """
        name: smoke
        base: model_4
        fixed: {dataset: mnist, max_train_samples: 300, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5, latent_dim: 8}
        parameters:
          data_path: {values: [no_such_digits]}
        search: {algorithm: grid, repeats: 1, max_concurrent: 1}
        scheduler: {type: fifo, max_epochs: 1}
    """)
    done = study_cli("--space", space, results=tmp_path / "results", timeout=300)
    stdout, stderr = done.stdout, done.stderr
    assert done.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "1 trial(s) failed with an error" in stderr
    assert "retrying" not in stdout
    trials = pd.read_csv(tmp_path / "results" / "smoke" / "trials.csv")
    assert list(trials["status"]) == ["error"]
    assert trials["error"][0].startswith("DatasetError: ") and "\x1b" not in trials["error"][0]


def test_an_unusable_classifier_cache_is_refused_before_ray_starts(tmp_path, study_cli):
    (tmp_path / "cache").write_text("a file where the classifier cache folder should be")
    environment = {**os.environ, "CVAE_CACHE_DIR": str(tmp_path / "cache")}
    result = study_cli("--space", "smoke.yaml", "--num-samples", "1", results=tmp_path, env=environment, timeout=300)
    assert result.returncode == 2 and "reference classifier for mnist-5k could not be prepared (FileExistsError" in \
        result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "smoke" / "tune").exists()


def test_a_weak_classifier_stops_the_study_unless_the_file_allows_it(tmp_path, embedded_digits, write_space):
    images, labels = embedded_digits
    images, labels = images[::2], np.random.default_rng(0).permutation(labels[::2])  # 2,500 digits, wrong labels
    np.savez(tmp_path / "mislabelled.npz", x_train=images[:2250], y_train=labels[:2250], x_test=images[2250:],
             y_test=labels[2250:])
    body = """
        name: weak
        base: model_4
        fixed: {dataset: mnist, data_path: mislabelled.npz, max_train_samples: 200, eval_samples: 256, cas_samples: 200,
                cas_epochs: 1, validation_fraction: 0.15, test_fraction: 0.15, sweep_latents: 1, width: 0.25, latent_dim: 4}
        parameters:
          grey_weight: {distribution: log_uniform, low: 0.05, high: 1.0}
        search: {algorithm: optuna, num_samples: 1, max_concurrent: 1}
        scheduler: {type: fifo, max_epochs: 1}
    """
    space = write_space(tmp_path, "weak", body)
    refused = subprocess.run([sys.executable, str(REPO / "study/run.py"), "--space", space, "--results-dir", "results"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert re.fullmatch(r"error: the reference classifier for mnist reaches \d+\.\d% test accuracy, below the 97% "
                        r"it needs .*allow_weak_classifier: true in the study file to run anyway\n", refused.stderr)
    assert not (tmp_path / "results" / "weak" / "tune").exists()
    space = write_space(tmp_path, "weak", body.replace("base: model_4", "base: model_4\n        allow_weak_classifier: true"))
    allowed = subprocess.run([sys.executable, str(REPO / "study/run.py"), "--space", space, "--results-dir", "results"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert allowed.returncode == 0 and "BELOW ITS BAR, allowed by the study file" in allowed.stdout, allowed.stderr
    trials = pd.read_csv(tmp_path / "results" / "weak" / "trials.csv")
    assert trials["classifier_accuracy"][0] < 0.5  # recorded with every trial


@pytest.mark.private_network
def test_cluster_with_token_auth_needs_the_token(tmp_path, study_cli):
    """A head started with token authentication: without the token the driver says so in one line; with
    RAY_AUTH_TOKEN it runs the study."""
    import secrets
    import socket

    from study.store.loopback_store import free_ports

    [port], token = free_ports(1), secrets.token_hex(32)
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    head = subprocess.Popen(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def answers():
            assert head.poll() is None, "ray start --head failed"
            with socket.socket() as client:
                return True if client.connect_ex(("127.0.0.1", port)) == 0 else None
        _wait_for(answers, 120, "the head node")
        user = {**os.environ, "HOME": str(user_home)}  # a user with no token of their own
        refused = study_cli("--space", "smoke.yaml", "--address", f"127.0.0.1:{port}", results=tmp_path,
                            env=user, timeout=120)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "requires its authentication token; set RAY_AUTH_TOKEN" in refused.stderr
        assert len((refused.stdout + refused.stderr).strip().splitlines()) == 1
        joined = study_cli("--space", "smoke.yaml", "--num-samples", "1", "--address", f"127.0.0.1:{port}",
                           results=tmp_path, env={**user, "RAY_AUTH_TOKEN": token},
                           timeout=400)
        assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
        assert list(pd.read_csv(tmp_path / "smoke" / "trials.csv")["status"]) == ["completed"]
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and every Ray process it started (its own session)
        head.wait()


RETRACING_SCRIPT = """
import numpy as np
from study.driver.trainable import quiet_library_logs
quiet_library_logs()
import keras
for number in range(8):  # a reused worker builds one model per trial; each traces its own functions
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.predict_on_batch(np.zeros((3, 4), np.float32))
"""


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_a_reused_workers_retracing_warning_stays_off_the_console_unless_verbose(verbose):
    environment = {**os.environ, "CVAE_VERBOSE": verbose}
    done = subprocess.run([sys.executable, "-c", RETRACING_SCRIPT], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("triggered tf.function retracing" in done.stdout + done.stderr) == (verbose == "1")


def _trial_workers(session: int, title: str = "ray::ImplicitFunc") -> list:
    """The trial worker processes (Ray's `ray::ImplicitFunc`; with `title`, other Ray workers: a fused program's is
    `ray::ProgramActor`) that a driver started in its own session."""
    import psutil

    workers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if (process.info["cmdline"] or [""])[0].startswith(title) and os.getsid(process.pid) == session:
                workers.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return workers


def test_a_killed_trial_worker_is_retried_and_a_repeated_kill_ends_the_trial(tmp_path, write_space, tiny_fixed):
    """SIGKILL of a trial's worker process while its node lives on (what the OOM killer does): the trial continues
    from its newest checkpoint and its row says why; killed again and again it ends `error` with that cause after
    Tune's retries, and the study goes on."""
    space = write_space(tmp_path, "killed", f"""
        name: killed
        base: model_4
        fixed: {tiny_fixed}
        parameters:
          grey_weight: {{values: [0.1, 0.2]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 1}}
        scheduler: {{type: fifo, max_epochs: 4}}
    """)
    log = tmp_path / "driver.log"
    driver = _start(space, tmp_path, log.name)
    kills, readings = [], []

    def read(command):
        return subprocess.run([sys.executable, *command, str(tmp_path / "killed")], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    def read_while_it_runs():  # the analysis commands, again and again, while the study writes its tables
        while driver.poll() is None:
            for command in (["study/best.py"], ["study/report.py", "--no-details"]):
                if (tmp_path / "killed" / "trials.csv").exists():
                    readings.append(read(command))
            time.sleep(1)

    import threading

    reader = threading.Thread(target=read_while_it_runs)
    reader.start()

    def kill_after(pattern):  # wait for a line, then kill the one trial worker (max_concurrent 1)
        _wait_for(lambda: True if re.search(pattern, log.read_text()) else None, 300, pattern)
        workers = _wait_for(lambda: _trial_workers(driver.pid) or None, 120, "a trial worker")
        assert len(workers) == 1, workers
        workers[0].kill()
        kills.append(workers[0].pid)

    try:
        kill_after(r"_00000 epoch 2/4")  # the first trial, once
        kill_after(r"_00001 epoch 1/4")  # the second, until Tune's retries (2) are spent
        kill_after(r"_00001 worker killed.*retrying")
        kill_after(r"_00001 worker killed.*retrying(.|\n)*_00001 worker killed.*retrying")
        returncode = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        reader.join()
    console = log.read_text()
    assert returncode == 1, console[-4000:]  # a trial ended in error: the study went on and said so
    # Readers during the run: a consistent snapshot each time (never a damaged table), unfinished work said first
    # however many the machine's pace allowed: the first began while the first trial ran (the study takes minutes)
    assert readings and readings[0].stdout.startswith("incomplete: "), readings[:1]
    for reading in readings:
        assert reading.returncode in (0, 2) and "Traceback" not in reading.stderr, reading.stderr[-2000:]
        assert reading.returncode == 0 or "no completed or pruned trial" in reading.stderr, reading.stderr
        assert reading.stdout.startswith("incomplete: ") or "incomplete" not in reading.stdout, reading.stdout
    trials = pd.read_csv(tmp_path / "killed" / "trials.csv").set_index("param_grey_weight")
    once, repeated = trials.loc[0.1], trials.loc[0.2]
    assert once["status"] == "completed" and once["retries"].startswith("worker killed (signal 9; out of memory?)"), \
        console[-4000:]
    assert repeated["status"] == "error" and repeated["error"].startswith("worker killed (signal 9; out of memory?)")
    assert "after 2 retries" in repeated["error"], repeated["error"]
    epochs = pd.read_csv(tmp_path / "killed" / "epochs.csv")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(epochs.loc[epochs["trial_id"] == once["trial_id"], "epoch"]) == [1, 2, 3, 4]  # resumed, not restarted


def test_a_fused_asha_study_survives_its_program_killed_and_ctrl_c_then_resume(tmp_path, write_space, study_cli,
                                                                              noise_in):
    """`fuse: 4`: six Optuna trials of one shape, four at a time in one JAX program actor; each is a trial of its
    own in the tables (status, epochs once each, its own checkpoint), and a trial that ASHA stopped or that ended
    frees its slot for the next. The program's process is SIGKILLed after its first epoch: its members are retried
    from their checkpoints into a new program, and say why; then Ctrl-C and --resume re-form the program. Which
    trials ASHA prunes depends on the order the members' epochs reach it, so pruning is not asserted; what a
    pruned trial must look like is."""
    from study.driver.fused_groups import FUSED_GROUP_KEY, FUSED_SLOT_KEY, GROUP_PREFIX

    space = write_space(tmp_path, "fused", """
        name: fused
        base: model_4
        fixed: {dataset: mnist-5k, max_train_samples: 128, eval_samples: 256, cas_samples: 0, sweep_latents: 1, width: 0.25, latent_dim: 4}
        parameters:
          grey_weight: {distribution: log_uniform, low: 0.05, high: 1.0}
          learning_rate: {distribution: log_uniform, low: 0.0003, high: 0.003}
        search: {algorithm: optuna, sampler: random, seed: 2, num_samples: 6, max_concurrent: 1}
        scheduler: {type: asha, max_epochs: 2, grace_period: 1, reduction_factor: 2}
        resources: {cpu: 1, fuse: 4}
    """)
    environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    log = tmp_path / "first.log"
    driver = _start(space, tmp_path, log.name, env=environment)
    try:
        _wait_for(lambda: True if _printed_epochs(log) else None, 400, "the program's first epoch")
        programs = _trial_workers(driver.pid, "ray::ProgramActor")
        assert len(programs) == 1, programs
        programs[0].kill()
        retried = re.compile(r"fused program killed \(signal 9; out of memory\?\); retrying from its last checkpoint"
                             r"(.|\n)*\] \w+ epoch ")  # ...and a member trained on in the new program
        _wait_for(lambda: True if retried.search(log.read_text()) else None, 400, "an epoch after the retry")
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    first = log.read_text()
    assert "per fused program of up to 4 trials (JAX), up to 1 program at once" in first
    assert not noise_in(first) and "(raylet)" not in first, first[-4000:]  # the study's lines only, the kill's too
    resumed = study_cli("--space", space, "--resume", results=tmp_path, env=environment, timeout=900)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert not noise_in(resumed.stdout + resumed.stderr), noise_in(resumed.stdout + resumed.stderr)

    trials = pd.read_csv(tmp_path / "fused" / "trials.csv")
    epochs = pd.read_csv(tmp_path / "fused" / "epochs.csv")
    assert len(trials) == 6 and set(trials["status"]) <= {"completed", "pruned"}, trials[["trial_id", "status"]]
    assert (trials.loc[trials["status"] == "completed", "epochs_run"] == 2).all()
    assert (trials.loc[trials["status"] == "pruned", "epochs_run"] < 2).all()
    assert trials["retries"].fillna("").str.startswith("fused program killed (signal 9; out of memory?) after "
                                                       "epoch").any(), trials["retries"]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()  # every epoch once, through the kill and the resume
    last = epochs.groupby("trial_id")["epoch"].max()
    assert (last.reindex(trials["trial_id"]).to_numpy() == trials["epochs_run"].to_numpy()).all()
    printed = _printed_epochs(log) | {(trial, int(epoch)) for trial, epoch in EPOCH_LINE.findall(resumed.stdout)}
    assert printed <= set(zip(epochs["trial_id"], epochs["epoch"]))  # every epoch a user saw is in the table
    assert epochs[FUSED_GROUP_KEY].str.startswith(f"{GROUP_PREFIX}fused-").all()
    assert set(epochs[FUSED_SLOT_KEY]) <= {0, 1, 2, 3}
    held = epochs.groupby(FUSED_SLOT_KEY)["trial_id"].nunique()
    assert held.max() >= 2, held  # six trials through four slots: a slot was refilled
    assert trials["checkpoint"].notna().all()  # each its own
    assert not _trial_workers(driver.pid, "ray::ProgramActor")  # the first driver's program ended with its Ray


def test_a_full_disk_stops_the_study_in_one_line_and_resume_continues(tmp_path, study_cli, write_space, tiny_fixed,
                                                                       noise_in):
    """The results folder on a small tmpfs: a warning before the start, a one-line stop when it fills (exit 1,
    tables whole), and after the disk grows `--resume` completes with every epoch once."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"this test mounts a tmpfs (root, as CI runs): {mounted.stderr}"
    try:
        space = write_space(tmp_path, "filling", f"""
            name: filling
            base: model_4
            fixed: {tiny_fixed}
            parameters:
              grey_weight: {{values: [0.1, 0.2, 0.3]}}
            search: {{algorithm: grid, repeats: 1, max_concurrent: 2}}
            scheduler: {{type: fifo, max_epochs: 2}}
        """)
        full = study_cli("--space", space, results=disk, timeout=300)
        console = full.stdout + full.stderr
        assert full.returncode == 1, console[-4000:]
        assert "warning: this study's checkpoints need about" in full.stderr  # said before anything ran
        stops = [line for line in full.stderr.splitlines() if line.startswith("error: disk full: ")]
        assert len(stops) == 1 and "--resume" in stops[0] and not noise_in(console), console[-4000:]
        stopped = pd.read_csv(disk / "filling" / "trials.csv")["status"]  # as after Ctrl-C: nothing left `running`
        assert "interrupted" in set(stopped) and "running" not in set(stopped), stopped.tolist()
        assert not (disk / "filling" / ".disk_reserve").exists()
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        resumed = study_cli("--space", space, "--resume", results=disk, timeout=300)
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
        trials = pd.read_csv(disk / "filling" / "trials.csv")
        epochs = pd.read_csv(disk / "filling" / "epochs.csv")
        assert len(trials) == 3 and set(trials["status"]) == {"completed"}
        assert not epochs.duplicated(["trial_id", "epoch"]).any()
        assert (epochs.groupby("trial_id")["epoch"].apply(sorted) == pd.Series(
            [[1, 2]] * 3, index=sorted(trials["trial_id"]))).all()
        printed = set(EPOCH_LINE.findall(full.stdout))
        assert {(t, int(e)) for t, e in printed} <= set(zip(epochs["trial_id"], epochs["epoch"]))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_study_in_an_object_store_resumes_from_the_store_alone(tmp_path, object_store, write_space, tiny_fixed,
                                                                  noise_in):
    """Tune's storage on a real S3-compatible store (SeaweedFS), two drivers on two "machines" (mount namespaces that
    see neither the other's results folder nor its Ray): while the first runs, the second is refused by the study's
    lease, naming the first; the first is SIGKILLed mid-study and its lease still refuses until it runs out (by the
    store's clock); then `--resume` on the second restores the tables from the store and finishes with every epoch
    once and no new trial; checkpoints are full URIs, weights-only in the store; every trial carries the study's
    classifier SHA-256; best.py, sample.py and report.py read the study by its URI."""
    storage = object_store("studies")
    space = write_space(tmp_path, "stored", f"""
        name: stored
        base: model_4
        fixed: {tiny_fixed}
        parameters:
          grey_weight: {{values: [0.1, 0.3]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 1}}
        scheduler: {{type: fifo, max_epochs: 3}}
    """)
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    lease_s = 10
    short_lease = {**os.environ, LEASE_ENV: str(lease_s)}
    driver = _start(space, tmp_path, "first.log", "--storage-path", storage, results=first_dir,
                    hidden=(second_dir, "/tmp/ray"), env=short_lease)
    second = [sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(second_dir),
              "--storage-path", storage, "--resume"]
    try:
        def second_epoch_logged():
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            epochs = _read(first_dir / "stored" / "epochs.csv")
            return True if epochs is not None and len(epochs) >= 2 else None
        _wait_for(second_epoch_logged, 400, "two epochs of the first driver")
        refused = subprocess.run(_own_machine(second, (first_dir, "/tmp/ray")), cwd=REPO, capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr[-3000:]
        line = refused.stderr.strip()
        assert "\n" not in line and f"is held by a driver (pid {driver.pid} on " in line and "--take-over" in line, line
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray: the machine is gone
        driver.wait()
    killed = time.monotonic()
    printed = _printed_epochs(tmp_path / "first.log")
    seen_ids = {trial for trial, _ in printed}
    early = subprocess.run(_own_machine(second, (first_dir, "/tmp/ray")), cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    if early.returncode == 2:  # the dead driver's lease still holds the study
        assert "runs out" in early.stderr, early.stderr[-3000:]
        time.sleep(max(0.0, killed + lease_s + 1 - time.monotonic()))
        resumed = subprocess.run(_own_machine(second, (first_dir, "/tmp/ray")), cwd=REPO, capture_output=True,
                                 text=True, timeout=600)
    else:  # only a machine so busy that the lease had run out before this driver asked for it
        assert time.monotonic() - killed > lease_s, early.stdout[-2000:] + early.stderr[-3000:]
        resumed = early
    console = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, console[-4000:]
    assert "restored the study's tables from s3://" in resumed.stdout and not noise_in(console), console[-3000:]
    assert "disk: " in resumed.stdout and " in s3://" in resumed.stdout
    study_uri = storage.replace("?", "/stored?")
    assert f"python study/best.py '{study_uri}'" in resumed.stdout  # next: the study's URI, readable anywhere
    folder = second_dir / "stored"
    trials, epochs = pd.read_csv(folder / "trials.csv"), pd.read_csv(folder / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    assert seen_ids <= set(trials["trial_id"])  # no trial started afresh under a new id
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert all(sorted(group) == [1, 2, 3] for _, group in epochs.groupby("trial_id")["epoch"])
    assert printed <= set(zip(epochs["trial_id"], epochs["epoch"]))  # every epoch the lost driver printed
    recorded = json.loads((folder / "study.json").read_text())["classifier_sha256"]
    assert set(trials["classifier_sha256"]) == {recorded} and set(epochs["classifier_sha256"]) == {recorded}
    assert trials["checkpoint"].str.startswith("s3://").all()
    best = subprocess.run([sys.executable, "study/best.py", study_uri], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert best.returncode == 0 and "checkpoint: s3://" in best.stdout, best.stdout + best.stderr
    sample = subprocess.run([sys.executable, "study/sample.py", study_uri, "--out", str(tmp_path / "best.png")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0 and (tmp_path / "best.png").stat().st_size > 1000, sample.stderr[-2000:]
    report = subprocess.run([sys.executable, "study/report.py", study_uri, "--no-details"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "summary.md" in report.stdout, report.stderr[-2000:]
    from study.store.storage import exists, join

    for checkpoint in trials["checkpoint"]:  # ended trials keep weights only, in the store too
        assert exists(join(checkpoint, "decoder.keras")) and not exists(join(checkpoint, "training_state.npz"))


def test_a_study_rides_through_its_store_going_away_for_a_minute(tmp_path, write_space, tiny_fixed):
    """The object store a study lives in stops answering for 65 s in the middle of it (its server SIGSTOPped:
    connections hang, as behind a dead network link): the trials' checkpoint uploads and the driver's writes wait
    and retry, every trial completes, every epoch is in the tables once, and the console says how long the store
    was away."""
    from study.store.loopback_store import LocalObjectStore, generate_credentials

    credentials = generate_credentials()
    space = write_space(tmp_path, "outage", f"""
        name: outage
        base: model_4
        fixed: {tiny_fixed}
        parameters:
          grey_weight: {{values: [0.1, 0.3]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 2}}
        scheduler: {{type: fifo, max_epochs: 4}}
    """)
    log = tmp_path / "driver.log"
    with LocalObjectStore(tmp_path / "store", credentials=credentials) as store:
        with open(log, "w") as console:
            driver = subprocess.Popen(
                [sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(tmp_path),
                 "--storage-path", store.uri("studies")], cwd=REPO, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **credentials})
        try:
            _wait_for(lambda: True if EPOCH_LINE.search(log.read_text()) else None, 400, "the first epoch")
            os.kill(store.process.pid, signal.SIGSTOP)
            try:
                time.sleep(65)
                still_running = driver.poll() is None  # the outage hit the study, not its aftermath
            finally:
                os.kill(store.process.pid, signal.SIGCONT)
            returncode = driver.wait(timeout=900)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    text = log.read_text()
    assert returncode == 0 and still_running, text[-4000:]
    trials, epochs = pd.read_csv(tmp_path / "outage" / "trials.csv"), pd.read_csv(tmp_path / "outage" / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert all(sorted(group) == [1, 2, 3, 4] for _, group in epochs.groupby("trial_id")["epoch"])
    assert "storage: the store stopped answering" in text, text[-4000:]
    back = re.search(r"storage: the store answers again after (\d+) s", text)
    away = re.search(r"storage: the store was away for up to (\d+) s \(\d+ time\(s\)\); every request waited or "
                     r"was retried until it went through", text)
    assert back and away and int(back.group(1)) >= 50, text[-4000:]  # the 65 s pause, give or take a probe
    assert "Traceback" not in text and "could not be copied" not in text, text[-4000:]


# Run inside `unshare --net` (a network namespace whose only interface is lo): a SeaweedFS store, a Ray head with no
# CPUs, and one worker node in its own mount namespace, where empty tmpfs cover the driver's results folder, the
# user's data folder, the classifier cache and the head's Ray session folder (/tmp/ray: a node of its own unpacks
# and deletes a job's working folder there). Everything it started is stopped by process group at the end.
PRIVATE_CLUSTER = r"""
set -u
ip link set lo up
cleanup() { for group in $WEED $HEAD $WORKER; do kill -9 -- -$group 2>/dev/null; done; }
trap cleanup EXIT
setsid weed mini -dir="$TMP/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket=cvae -admin.ui=false -webdav=false \
    -s3.port=8333 > "$TMP/weed.log" 2>&1 & WEED=$!
setsid ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=0 --dashboard-host=127.0.0.1 \
    --dashboard-port=8265 --disable-usage-stats --block > "$TMP/head.log" 2>&1 & HEAD=$!
setsid unshare --mount sh -c "for hidden in '$RESULTS' '$DATA' '$CVAE_CACHE_DIR' /tmp/ray; do mkdir -p \$hidden;
    mount -t tmpfs tmpfs \$hidden; done;
    exec ray start --address=127.0.0.1:6379 --node-ip-address=127.0.0.1 --num-cpus=2 --disable-usage-stats --block" \
    > "$TMP/worker.log" 2>&1 & WORKER=$!
python -c "
import time, ray
ray.init(address='127.0.0.1:6379', logging_level='ERROR')
deadline = time.time() + 120
while sum(node['Alive'] for node in ray.nodes()) < 2 and time.time() < deadline:
    time.sleep(1)
ray.shutdown()
" || exit 90
for attempt in $(seq 60); do curl -s -o /dev/null "http://127.0.0.1:8333/" && break; sleep 1; done
python study/run.py --space "$SPACE" --address 127.0.0.1:6379 --results-dir "$RESULTS" --data-path "$DATA" \
    --storage-path "s3://cvae/studies?endpoint_override=127.0.0.1:8333&scheme=http" > "$TMP/driver.log" 2>&1
echo "driver exit $?"
python study/best.py "s3://cvae/studies/private?endpoint_override=127.0.0.1:8333&scheme=http" > "$TMP/best.log" 2>&1
echo "best exit $?"
ray job submit --address http://127.0.0.1:8265 --working-dir . -- python study/run.py --space smoke.yaml \
    --num-samples 1 --results-dir "$TMP/job-results" \
    --storage-path "s3://cvae/jobs?endpoint_override=127.0.0.1:8333&scheme=http" > "$TMP/job.log" 2>&1
echo "job exit $?"
python study/best.py "s3://cvae/jobs/smoke?endpoint_override=127.0.0.1:8333&scheme=http" > "$TMP/job_best.log" 2>&1
echo "job best exit $?"
ip -o addr show | awk '{print $2}' | sort -u > "$TMP/interfaces.txt"
"""


def test_a_worker_node_that_shares_no_disk_with_the_driver_runs_the_study(tmp_path, write_space, embedded_digits,
                                                                           classifier_cache):
    """Inside a private network namespace (only lo): the trials run on a worker node that cannot see the driver's
    results folder, the user's IDX data or the classifier cache; the driver ships data and classifier, so every
    trial completes on the worker, on the user's data, measured by the driver's classifier (its SHA-256 in every
    row), and best.py reads the study back from the store by its URI. Then the same cluster runs a study submitted
    as a Ray job (`ray job submit --working-dir .`, the job server on 127.0.0.1), also read back from the store."""
    import secrets

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("this test needs util-linux's unshare and iproute2's ip (CI runs as root with both)")
    images, labels = embedded_digits
    data = tmp_path / "user-data"
    write_idx(data, images, labels)  # the embedded digits as a user's IDX folder: the cached classifier fits them
    space = write_space(tmp_path, "private", """
        name: private
        base: model_4
        fixed: {dataset: mnist, max_train_samples: 300, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5, latent_dim: 8}
        parameters:
          grey_weight: {values: [0.1, 0.3]}
        search: {algorithm: grid, repeats: 1, max_concurrent: 2}
        scheduler: {type: fifo, max_epochs: 2}
    """)
    results = tmp_path / "results"
    results.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    environment.update(TMP=str(tmp_path), RESULTS=str(results), DATA=str(data), SPACE=str(space),
                       CVAE_CACHE_DIR=str(classifier_cache), WEED="0", HEAD="0", WORKER="0",
                       RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),  # Ray's default for `ray start`
                       # with credentials the store decodes the SDK's chunked uploads (anonymous, weed 4.48 keeps
                       # the chunk headers inside the object)
                       AWS_ACCESS_KEY_ID="cvae-private", AWS_SECRET_ACCESS_KEY="cvae-private-secret")
    done = subprocess.run(["unshare", "--net", "bash", "-c", PRIVATE_CLUSTER], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=900)
    driver_log = (tmp_path / "driver.log").read_text() if (tmp_path / "driver.log").exists() else ""
    assert "driver exit 0" in done.stdout, done.stdout + done.stderr[-2000:] + driver_log[-4000:]
    assert "best exit 0" in done.stdout and "checkpoint: s3://cvae/studies/private/" in (
        tmp_path / "best.log").read_text(), (tmp_path / "best.log").read_text()[-2000:]
    job_log = (tmp_path / "job.log").read_text()
    assert "job exit 0" in done.stdout and "succeeded" in job_log, job_log[-4000:]  # the driver ran as a Ray job
    assert "checkpoint: s3://cvae/jobs/smoke/" in (tmp_path / "job_best.log").read_text()
    assert (tmp_path / "interfaces.txt").read_text().split() == ["lo"]  # nothing it started could reach further
    assert "Ray: 2 node(s), 2 CPUs" in driver_log and "training the reference classifier" not in driver_log
    folder = results / "private"
    trials, epochs = pd.read_csv(folder / "trials.csv"), pd.read_csv(folder / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "error"]]
    assert set(trials["dataset_source"]) == {"user:user-data"}
    recorded = json.loads((folder / "study.json").read_text())["classifier_sha256"]
    assert set(epochs["classifier_sha256"]) == {recorded} and epochs["node_id"].nunique() == 1
