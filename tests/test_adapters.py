"""One test per Ray/Optuna internal that study/adapters.py relies on: an upgrade that changes one fails here."""

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from study.adapters import run_config_of, searcher_has_finished, searcher_trial, tell_searcher


def _searcher():
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="loss", mode="min",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    assert searcher.suggest("a") is not None
    return searcher


def test_optuna_search_keeps_the_optuna_trial_of_each_tune_trial():
    searcher = _searcher()
    assert isinstance(searcher_trial(searcher, "a"), optuna.trial.Trial)
    assert searcher_trial(searcher, "never-suggested") is None


def test_a_trial_told_pruned_is_pruned_in_optuna_and_finished_in_the_searcher():
    searcher = _searcher()
    assert not searcher_has_finished(searcher, "a")
    tell_searcher(searcher, "a", TrialState.PRUNED)
    assert searcher_has_finished(searcher, "a")
    assert [trial.state for trial in searcher._ot_study.trials] == [TrialState.PRUNED]
    searcher.on_trial_complete("a", {"loss": 1.0})  # OptunaSearch's own path now leaves it alone
    assert [trial.state for trial in searcher._ot_study.trials] == [TrialState.PRUNED]


def test_a_tuners_run_configuration_is_the_object_it_will_run_with(tmp_path):
    config = tune.RunConfig(name="adapters", storage_path=str(tmp_path))
    tuner = tune.Tuner(lambda params: None, run_config=config)
    assert run_config_of(tuner) is config or run_config_of(tuner).name == "adapters"
    run_config_of(tuner).callbacks = ["marker"]
    assert run_config_of(tuner).callbacks == ["marker"]  # set here, read by fit()
