"""A checked study started: recorded (a new one: study.json with its classifier), announced, Ray joined or started."""

from __future__ import annotations

from pathlib import Path

from study.driver.checks import RunRequest, check_free_space, run_flags
from study.driver.inputs import check_classifier
from study.driver.ray_cluster import probe_cluster, quiet_console, set_ray_environment, start_ray
from study.store.patient_store import OUTAGES
from study.store.storage import is_uri
from study.tables.mirror import StoreMirror
from study.tables.records import FLAGS_KEY
from study.tables.studies import Study
from study.tables.table_files import save_spec


def placement(spec) -> str:
    """How the study's trials take the machine, for its first lines."""
    if spec.fuse > 1:
        return (f"{spec.cpu:g} CPU / {spec.gpu:g} GPU per fused program of up to {spec.fuse} trials (JAX), up to "
                f"{spec.max_concurrent} program{'s' if spec.max_concurrent > 1 else ''} at once")
    return f"{spec.cpu:g} CPU / {spec.gpu:g} GPU per trial, up to {spec.max_concurrent} at once"


def start_study(request: RunRequest, study: Study, trial_env: dict):
    """Ray joined or started (every worker gets `trial_env`), the study recorded (a new one) and announced; returns
    its StoreMirror (or None)."""
    spec = study.spec
    set_ray_environment(request.address, request.verbose)
    if request.address:
        probe_cluster(request.address, spec)
    mirror = StoreMirror(study.experiment, study.folder) if study.kept_in_storage else None
    OUTAGES.console = True  # this driver says when its store stops answering and when it is back
    if not request.resume:
        save_spec(study.folder, spec, {**check_classifier(spec, trial_env), FLAGS_KEY: run_flags(request)})
        if mirror:
            mirror.snapshot()
    print(f"study {spec.name}: {spec.description}\n  {spec.algorithm}"
          f"{'/' + spec.sampler if spec.algorithm == 'optuna' else ''}, objective {study.objective}, scheduler "
          f"{spec.scheduler}, {placement(spec)}\n"
          f"  results: {study.folder}; trials and checkpoints: {study.experiment}", flush=True)
    if not is_uri(study.storage):
        check_free_space(spec, Path(study.storage), request.keep_checkpoints)
    start_ray(request.address, trial_env, request.verbose)
    if not request.verbose:
        quiet_console()
    return mirror
