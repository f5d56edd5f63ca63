"""Send a study to MLflow: one MLflow run per trial (params, per-epoch metrics, status, chosen checkpoint)."""

from __future__ import annotations

import math
import time

from ray import tune

from cvae.metrics import METRICS
from study.tables.records import ENDED, STATUS_ERROR, TrialRecord, trial_status
from study.tables.table_files import resolve_path

TRIAL_TAG, STUDY_TAG, STATUS_TAG, CHECKPOINT_TAG = "cvae.trial_id", "cvae.study", "cvae.status", "cvae.checkpoint"
EXTRA_METRICS = ("epoch_seconds", "train_seconds", "eval_seconds", "grey_weight")  # logged beside METRICS


def check_mlflow(uri: str) -> str | None:
    """None when `uri` can be used as an MLflow tracking store, else the reason (a one-line message)."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return "--mlflow needs MLflow: pip install -e '.[mlflow]' (mlflow-skinny)"
    try:
        client = _client(uri)
        client.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 (a bad URI fails in many ways inside MLflow)
        return f"--mlflow {uri}: cannot open the tracking store ({str(error).splitlines()[0][:160]})"
    return None


def _client(uri: str):
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    return MlflowClient(tracking_uri=uri)


class MlflowTracker(tune.Callback):
    """Logs every trial of a study as an MLflow run of the experiment named after the study.

    A resumed study finds its trials' runs again by their `cvae.trial_id` tag, so a trial stays one run.
    """

    def __init__(self, uri: str, study: str):
        self.uri, self.study = uri, study
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.client, self.experiment_id = None, None

    def __getstate__(self):  # Tune pickles its callbacks; the client is rebuilt where it is used
        return {**self.__dict__, "client": None}

    def setup(self, **info):
        self._connect()

    def _connect(self):
        if self.client is None:
            self.client = _client(self.uri)
            found = self.client.get_experiment_by_name(self.study)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.study)
        return self.client

    def run_for(self, trial_id: str, params: dict) -> str:
        """The MLflow run of a trial: known, found by tag (after a resume), or created with its params."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        client = self._connect()
        found = client.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'",
                                   max_results=1)
        if found:
            self.runs[trial_id] = found[0].info.run_id
            return self.runs[trial_id]
        run = client.create_run(self.experiment_id, run_name=trial_id,
                                tags={TRIAL_TAG: trial_id, STUDY_TAG: self.study, STATUS_TAG: "running"})
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in sorted(params.items())])
        self.runs[trial_id] = run.info.run_id
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        step, now = int(result.get("epoch") or 0), int(time.time() * 1000)
        metrics = [Metric(key, float(result[key]), now, step) for key in (*METRICS, *EXTRA_METRICS)
                   if isinstance(result.get(key), (int, float)) and math.isfinite(result[key])]
        if metrics:
            self._connect().log_batch(self.run_for(trial.trial_id, dict(trial.config)), metrics=metrics)

    def finish(self, records: list[TrialRecord], results_dir) -> None:
        """At the end of a driver's run: every trial's status and chosen checkpoint; ended trials' runs closed."""
        client = self._connect()
        for record in records:
            run_id = self.run_for(record.trial_id, record.params)
            status = trial_status(record)
            client.set_tag(run_id, STATUS_TAG, status)
            checkpoint = resolve_path(results_dir, record.checkpoint)
            if checkpoint is not None:
                client.set_tag(run_id, CHECKPOINT_TAG, str(checkpoint))
            if status == STATUS_ERROR:
                client.set_terminated(run_id, "FAILED")
            elif status in ENDED:
                client.set_terminated(run_id, "FINISHED")
            else:  # interrupted, running, pending: resumable
                client.set_terminated(run_id, "KILLED")
