"""The Ray study end to end: smoke study, NaN trial, driver killed + --resume, two-node cluster with a lost node."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY = "{dataset: mnist-5k, max_train_samples: 300, eval_samples: 200, sweep_latents: 2, width: 0.5, latent_dim: 8}"


def study_cli(*args, results, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "study/run.py", *map(str, args), "--results-dir", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def write_space(tmp_path, name, body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_smoke_study_end_to_end(tmp_path):
    database = f"sqlite:///{tmp_path}/optuna.db"
    result = study_cli("--space", "smoke.yaml", "--storage", database, results=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "best trial" in result.stdout and "python study/sample.py" in result.stdout
    trials = pd.read_csv(tmp_path / "smoke" / "trials.csv")
    epochs = pd.read_csv(tmp_path / "smoke" / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert len(epochs) == 2 and set(epochs["trial_id"]) == set(trials["trial_id"])
    # Optuna's warm start: the base preset (model_4: latent 40, grey 0.32) was one of the trials
    assert ((trials["param_latent_dim"] == 40) & np.isclose(trials["param_grey_weight"], 0.32)).any()
    for column in ("fid", "best_fid", "class_accuracy", "wall_time_s", "checkpoint", "dataset_source", "node_id"):
        assert trials[column].notna().all(), column
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
    assert Image.open(out).size[1] == 2 * 58 + 2  # two rows at scale 2

    again = study_cli("--space", "smoke.yaml", results=tmp_path, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites a finished study


def test_nan_trial_ends_diverged_and_study_goes_on(tmp_path):
    space = write_space(tmp_path, "nan", f"""
        name: nan
        base: model_4
        fixed: {TINY}
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


def test_resume_after_driver_killed(tmp_path):
    space = write_space(tmp_path, "resumable", f"""
        name: resumable
        base: model_4
        fixed: {TINY}
        parameters:
          grey_weight: {{distribution: log_uniform, low: 0.05, high: 1.0}}
        search: {{algorithm: optuna, sampler: random, seed: 1, num_samples: 3, max_concurrent: 1}}
        scheduler: {{type: fifo, max_epochs: 2}}
    """)
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen([sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(tmp_path)],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    trials_csv = tmp_path / "resumable" / "trials.csv"
    try:
        def one_done():
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            trials = _read(trials_csv)
            return trials if trials is not None and (trials["status"] == "completed").sum() >= 1 else None
        finished_before = _wait_for(one_done, 400, "a finished trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and every process it started
        driver.wait()
    done_ids = set(finished_before.loc[finished_before["status"] == "completed", "trial_id"])
    result = study_cli("--space", space, "--resume", results=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pd.read_csv(trials_csv)
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status"]]
    assert done_ids <= set(trials["trial_id"])  # nothing finished was lost or rerun under a new id
    epochs = pd.read_csv(tmp_path / "resumable" / "epochs.csv")
    assert (epochs.groupby("trial_id")["epoch"].max() == 2).all()


def test_asha_prunes_trials_and_the_study_finishes(tmp_path):
    """A pruned trial frees its slot for the next one (reusing its busy worker once hung the whole study)."""
    space = write_space(tmp_path, "pruned", """
        name: pruned
        base: model_4
        fixed: {dataset: mnist-5k, max_train_samples: 2000, eval_samples: 200, sweep_latents: 2, width: 0.5}
        parameters:
          grey_weight: {distribution: log_uniform, low: 0.05, high: 1.0}
          latent_dim: {distribution: int, low: 2, high: 40}
        search: {algorithm: optuna, sampler: random, seed: 2, num_samples: 5, max_concurrent: 2}
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


def test_two_node_cluster_survives_losing_a_worker(tmp_path):
    from ray.cluster_utils import Cluster

    space = write_space(tmp_path, "cluster", f"""
        name: cluster
        base: model_4
        fixed: {{dataset: mnist-5k, max_train_samples: 2000, eval_samples: 200, sweep_latents: 2, width: 0.5, latent_dim: 8}}
        parameters:
          grey_weight: {{values: [0.1, 0.5]}}
        search: {{algorithm: grid, repeats: 1, max_concurrent: 2}}
        scheduler: {{type: fifo, max_epochs: 5}}
        resources: {{cpu: 1, gpu: 0}}
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


def test_more_cpus_per_trial_than_the_machine_has_is_an_error(tmp_path):
    result = study_cli("--space", "smoke.yaml", "--cpus-per-trial", "64", results=tmp_path, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "a trial asks for 64 CPUs but the cluster has" in result.stderr and "Traceback" not in result.stderr
