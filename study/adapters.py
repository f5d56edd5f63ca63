"""The Ray Tune and Optuna internals this project relies on (checked with Ray 2.60 and Optuna 5.x), in one place:
tests/test_adapters.py holds one test per behaviour, so an upgrade that changes one fails that test by name."""

from __future__ import annotations


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


def run_config_of(tuner):
    """The RunConfig a Tuner (built or restored) will run with: Tuner.restore takes no callbacks, so the study sets
    its own on this object (Tuner._local_tuner._run_config)."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if config is None:
        raise RuntimeError("this Ray version keeps a Tuner's run configuration elsewhere; see study/adapters.py")
    return config
