"""Ray for a study: the environment Ray reads, joining a cluster (or starting a local Ray), and what the driver
hands every trial: the data and the reference classifier."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from cvae.environment import (PYTHONPATH_ENV, RAY_AUTH_MODE_ENV, RAY_AUTH_TOKEN_ENVS, RAY_JOB_ENV, RAY_LOOPBACK_ENV,
                              TF_LOG_LEVEL_ENV, TUNE_NEW_OUTPUT_ENV, TUNE_TRIAL_ERRORS_ENV, VERBOSE_ENV)
from cvae.runtime import error_cause
from study.errors import Refusal

REPO = Path(__file__).resolve().parents[2]  # the checkout: shipped to cluster nodes, on local workers' path


# Uploaded to cluster nodes with the code: everything but outputs and history.
RUNTIME_EXCLUDES = [".git", "results", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]


def default_results_dir() -> Path:
    """Where results/<name> go by default: the checkout's results/, or, for a driver run as a Ray job, a folder in
    the home directory (Ray unpacks the job's working folder again when the driver joins, which would take the
    tables with it; a study with --storage-path keeps them in its storage as well)."""
    return Path.home() / "cvae-study-results" if os.environ.get(RAY_JOB_ENV) else REPO / "results"


def repo_pythonpath() -> str:
    """PYTHONPATH for processes this driver starts on this machine: the checkout first, then the user's."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get(PYTHONPATH_ENV)]))


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
        os.environ[RAY_LOOPBACK_ENV] = "0"
    if address and not os.environ.get(RAY_AUTH_MODE_ENV) and any(map(os.environ.get, RAY_AUTH_TOKEN_ENVS)):
        # A token given for a cluster is only sent in token mode: giving one is asking for it.
        os.environ[RAY_AUTH_MODE_ENV] = "token"
    if not verbose:
        os.environ.setdefault(TUNE_NEW_OUTPUT_ENV, "0")  # with verbose=0: no tables, hints or boxes from Tune
        # A failed or lost trial is one line of ours (with its cause), not Tune's traceback as well
        os.environ.setdefault(TUNE_TRIAL_ERRORS_ENV, "0")
    # Tune's experiment snapshots: every trial checkpoint forces one (CheckpointConfig.num_to_keep=1, see
    # study.driver.tuner.run_config), so a killed driver's resume knows every epoch that was checkpointed; between
    # checkpoints Tune's own "auto" period keeps snapshots under ~5 % of the driver's time. (A snapshot every
    # controller step, TUNE_GLOBAL_CHECKPOINT_S=0, is O(trials) per step: benchmarks/study_scale.py measured
    # 1.5 instead of 4 trials/s at 1,000 trials.)


PROBE = ("import json, sys, ray\n"
         "ray.init(address=sys.argv[1], _node_ip_address=sys.argv[2] or None, logging_level='ERROR', "
         "log_to_driver=False)\nprint('RESOURCES ' + json.dumps(ray.cluster_resources()), flush=True)\n"
         "ray.shutdown()\n")


PROBE_TIMEOUT_S = 60


AUTH_REFUSALS = ("InvalidAuthToken", "Unauthenticated", "no authentication token")  # in Ray's client output


def probe_cluster(address: str, spec) -> None:
    """Join the cluster once from a child process, or a Refusal with the reason in one line; a trial that asks for
    more CPUs or GPUs than the whole cluster has is refused here, before any classifier or trial work.

    Ray's C++ client prints a warning for every failed retry (a missing token is a dozen lines over 20 s) and
    then raises a generic ConnectionError; the child's output names the real cause, and keeps the driver's
    console clean.
    """
    loopback = "127.0.0.1" if _is_loopback(address) else ""
    # Inside a Ray job the probe must not join as part of the job: when it left, Ray would release the job's
    # runtime environment and delete the working folder the driver runs in.
    environment = {key: value for key, value in os.environ.items() if key != RAY_JOB_ENV}
    child = subprocess.Popen([sys.executable, "-c", PROBE, address, loopback], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, env=environment)
    timer = threading.Timer(PROBE_TIMEOUT_S, child.kill)  # a head that never answers must not hang the driver
    timer.start()
    output = []
    try:
        for line in child.stdout:  # the first refusal names the cause: no need to wait for Ray's retries
            output.append(line)
            if any(word in line for word in AUTH_REFUSALS):
                child.kill()
                raise Refusal(f"--address {address}: the cluster requires its authentication token; set RAY_AUTH_TOKEN (or "
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
                raise Refusal(f"a trial asks for {wanted:g} {kind}s but the cluster at {address} has "
                     f"{resources.get(kind, 0):g} in all; lower --{kind.lower()}s-per-trial or add nodes first")
        return
    if child.returncode < 0:  # killed by the timer
        raise Refusal(f"--address {address}: the Ray cluster did not accept a connection within {PROBE_TIMEOUT_S} s")
    raise Refusal(f"--address {address}: cannot join the Ray cluster ({error_cause(''.join(output), 'no reason given')})")


def start_ray(address: str | None, extra_env: dict, verbose: bool = False) -> None:
    import ray

    quiet = logging.INFO if verbose else logging.ERROR  # Ray's "Started a local Ray instance", auth notices, ...
    # quiet TensorFlow C++ logs, plus what the driver learned (e.g. no network)
    worker_env = {TF_LOG_LEVEL_ENV: os.environ.get(TF_LOG_LEVEL_ENV, "2"), **extra_env,
                  **({VERBOSE_ENV: "1"} if verbose else {})}
    if address:
        # The code reaches the other nodes through Ray's runtime environment; a Ray job's driver already has it
        # there (its --working-dir), and Ray refuses a second working_dir for the same job.
        code = {} if os.environ.get(RAY_JOB_ENV) else {"working_dir": str(REPO), "excludes": RUNTIME_EXCLUDES}
        ray.init(address=address, runtime_env={**code, "env_vars": worker_env},
                 _node_ip_address="127.0.0.1" if _is_loopback(address) else None, log_to_driver=True,
                 logging_level=quiet)
    else:
        # address="local": always a fresh instance of our own, never a leftover one; loopback only.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {PYTHONPATH_ENV: repo_pythonpath(), **worker_env}}, log_to_driver=True,
                 logging_level=quiet)
    resources = ray.cluster_resources()
    print(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs",
          flush=True)


class HideTunesRepeats(logging.Filter):
    """Tune's lines that say again, less usefully, what the study prints itself: after Ctrl-C a `Tuner.restore(...)`
    hint (the study resumes with its own command), at the end "Trials did not complete" (the error count)."""

    REPEATS = ("Tuner.restore(", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.REPEATS)


class HideTunesOwnUploadRace(logging.Filter):
    """Tune uploads its experiment folder while it rewrites its state files there (a hidden temporary file, then a
    rename): an upload that listed the temporary file just before the rename fails with FileNotFoundError for it, and
    Tune logs a traceback. Its next upload (seconds later, and the forced one at the end) carries the state; seen once,
    beside a 65 s store outage whose slow uploads widened the window. Every other failed upload is still shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FileNotFoundError) and "-tmp-" in str(error))


# Optuna's warning when a trial reports an epoch (Tune's training_iteration) it reported before: after a resume, a
# trial whose newest epoch was printed but not yet checkpointed when the driver stopped runs that epoch again (the
# tables keep the new row); Optuna keeps the first value, and the schedulers read Tune's results, not Optuna's.
OPTUNA_REPEATED_STEP = r"The reported value is ignored because this `step=\d+` is already reported"


def quiet_console() -> None:
    """Keep Tune's repeats, its own upload race, the raylet's dead-worker notice, Optuna's study-creation line and
    its repeated-epoch warning off the study's console (not with --verbose)."""
    import warnings

    from study.driver.adapters import hide_worker_death_notices

    hide_worker_death_notices()
    logging.getLogger("ray.tune.tune").addFilter(HideTunesRepeats())
    logging.getLogger("ray.tune.execution.experiment_state").addFilter(HideTunesOwnUploadRace())
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory ..."
    warnings.filterwarnings("ignore", message=OPTUNA_REPEATED_STEP, category=UserWarning)


