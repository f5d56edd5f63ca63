"""Ray for a study: the environment Ray reads, joining a cluster (or starting a local Ray), and what the driver
hands every trial: the data and the reference classifier."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from cvae.cli import fail
from cvae.runtime import VERBOSE_ENV, error_cause

REPO = Path(__file__).resolve().parents[1]  # the checkout: shipped to cluster nodes, on local workers' path
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a job's driver (ray job submit)


# Uploaded to cluster nodes with the code: everything but outputs and history.
RUNTIME_EXCLUDES = [".git", "results", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]


def default_results_dir() -> Path:
    """Where results/<name> go by default: the checkout's results/, or, for a driver run as a Ray job, a folder in
    the home directory (Ray unpacks the job's working folder again when the driver joins, which would take the
    tables with it; a study with --storage-path keeps them in its storage as well)."""
    return Path.home() / "cvae-study-results" if os.environ.get(RAY_JOB_ENV) else REPO / "results"


def repo_pythonpath() -> str:
    """PYTHONPATH for processes this driver starts on this machine: the checkout first, then the user's."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def ship_inputs(study, dataset, mirror=None):
    """The data and the reference classifier every trial gets from the driver (cvae.train.TrialInputs): the data as
    preflight.read_data read it, and the cached classifier's bytes. A node needs neither the user's data folder nor a
    classifier cache, and every trial is measured by the same classifier, whose SHA-256 each epoch records. A study
    kept in its storage keeps its classifier there too, so a driver that resumes it on another machine measures with
    the same bytes."""
    from cvae.metrics import CLASSIFIER_SHA256
    from cvae.train import TrialInputs, data_fields
    from study.preflight import read_cached_classifier
    from study.records import SPEC_FILE

    config = study.spec.trial_config({})
    recorded = json.loads((study.folder / SPEC_FILE).read_text()).get(CLASSIFIER_SHA256)
    classifier = stored = mirror.load_classifier() if mirror else None
    if classifier is None:
        classifier = read_cached_classifier(config)
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
        # The code reaches the other nodes through Ray's runtime environment; a Ray job's driver already has it
        # there (its --working-dir), and Ray refuses a second working_dir for the same job.
        code = {} if os.environ.get(RAY_JOB_ENV) else {"working_dir": str(REPO), "excludes": RUNTIME_EXCLUDES}
        ray.init(address=address, runtime_env={**code, "env_vars": worker_env},
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


def quiet_console() -> None:
    """Keep Tune's repeats and Optuna's study-creation line off the study's console (not with --verbose)."""
    logging.getLogger("ray.tune.tune").addFilter(HideTunesRepeats())
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory ..."


def start_study(args, study, trial_env: dict):
    """Ray joined or started (every worker gets `trial_env`), the study recorded (a new one) and announced; returns
    its StoreMirror (or None)."""
    from study.mirror import StoreMirror
    from study.preflight import check_classifier, check_free_space, run_flags
    from study.records import FLAGS_KEY
    from study.tables import save_spec
    from study.storage import is_uri

    spec = study.spec
    set_ray_environment(args.address, args.verbose)
    if args.address:
        probe_cluster(args.address, spec)
    mirror = StoreMirror(study.experiment, study.folder) if study.kept_in_storage else None
    if not args.resume:
        save_spec(study.folder, spec, {**check_classifier(spec, trial_env), FLAGS_KEY: run_flags(args)})
        if mirror:
            mirror.snapshot()
    print(f"study {spec.name}: {spec.description}\n  {spec.algorithm}"
          f"{'/' + spec.sampler if spec.algorithm == 'optuna' else ''}, objective {study.objective}, scheduler "
          f"{spec.scheduler}, {spec.cpu:g} CPU / {spec.gpu:g} GPU per trial, up to {spec.max_concurrent} at once\n"
          f"  results: {study.folder}; trials and checkpoints: {study.experiment}", flush=True)
    if not is_uri(study.storage):
        check_free_space(spec, Path(study.storage), args.keep_checkpoints)
    start_ray(args.address, trial_env, args.verbose)
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    if not args.verbose:
        quiet_console()
    return mirror
