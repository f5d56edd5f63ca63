"""The Ray Tune and Optuna internals this project relies on (checked with Ray 2.60 and Optuna 5.x), in one place:
tests/test_adapters.py holds one test per behaviour, so an upgrade that changes one fails that test by name."""

from __future__ import annotations

from pathlib import Path

from cvae.runtime import error_cause


def searcher_trial(searcher, trial_id: str):
    """The Optuna trial Ray's OptunaSearch asked for a Tune trial (None if it did not), from OptunaSearch._ot_trials."""
    return searcher._ot_trials.get(trial_id)


def searcher_has_finished(searcher, trial_id: str) -> bool:
    """Whether OptunaSearch has already told Optuna how a Tune trial ended (OptunaSearch._completed_trials)."""
    return trial_id in searcher._completed_trials


def tell_searcher(searcher, trial_id: str, state) -> None:
    """Tell Optuna a Tune trial ended in `state` (an optuna TrialState) without a value, and mark it finished in
    OptunaSearch, which otherwise records an ASHA-stopped trial as COMPLETE (OptunaSearch._ot_study)."""
    searcher._ot_study.tell(searcher._ot_trials[trial_id], None, state=state)
    searcher._completed_trials.add(trial_id)


def enqueue_partial(searcher, params: dict) -> None:
    """Make Optuna's next trial take `params` and sample the rest (Optuna's enqueue_trial with some of the
    parameters; OptunaSearch asks its study for each new trial: OptunaSearch._ot_study)."""
    searcher._ot_study.enqueue_trial(params, skip_if_exists=False)


def run_config_of(tuner):
    """The RunConfig a Tuner (built or restored) will run with: Tuner.restore takes no callbacks, so the study sets
    its own on this object (Tuner._local_tuner._run_config)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if config is None:
        raise RuntimeError("this Ray version keeps a Tuner's run configuration elsewhere; see study/driver/adapters.py")
    return config


# What Ray writes when a trial's actor is gone (ray/_private and ray/exceptions.py in Ray 2.60): its node died, or
# its worker process died while the node lived on. Kept as text: the exception reaches Tune's error file as text.
NODE_LOST = ("its node has died", "NodeDiedError", "node died", "because its node")


WORKER_LOST = ("its worker process has died", "Worker unexpectedly exits", "ActorDiedError", "died unexpectedly")


def worker_loss_cause(text: str) -> str | None:
    """What a lost worker's error means to a user (None if the text is not about a lost worker or node).

    A worker process that dies while its node lives on was, most often, killed by the kernel's out-of-memory
    killer (signal 9), or by hand; a lost node takes its workers with it.
    """
    text = text or ""
    if any(marker in text for marker in NODE_LOST):
        return "node lost"
    if any(marker in text for marker in WORKER_LOST):
        return "worker killed (signal 9; out of memory?)"
    return None


def error_text(trial) -> str:
    """Tune's error file of a trial (one `Failure # N` block per failure), or its error message, or ""."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    return text or str(getattr(trial, "error_msg", "") or "")


def last_failure(trial) -> str:
    """The newest failure's whole text in Tune's error file."""
    return error_text(trial).rsplit("Failure # ", 1)[-1]


def error_message(trial) -> str:
    """`ExceptionType: message` of a failed trial, from Tune's error file (no colour codes, no pid/ip noise)."""
    return error_cause(error_text(trial), "unknown error (see the trial's error.txt under tune/)")


