"""How a study chooses and stops its trials: Optuna's sampler behind Ray's searcher (told how each trial really
ended), a grid's points, ASHA or FIFO, and the Optuna database a study may keep."""

from __future__ import annotations

import logging

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from cvae.metrics import STATUS_COMPLETED
from study.tables.records import STATUS_RUNNING
from study.driver.adapters import searcher_has_finished, searcher_trial, tell_searcher

logger = logging.getLogger(__name__)


TIME_ATTR = "epoch"  # what ASHA counts: a trial reports once per epoch


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


class StudySearch(OptunaSearch):
    """OptunaSearch that tells Optuna how each trial really ended.

    Ray's OptunaSearch records a trial ASHA stopped early as COMPLETE with its last (low-fidelity) value, as if
    it had trained fully; here it is PRUNED (Optuna keeps its per-epoch values), a diverged trial FAIL, and only
    a trial that ran all its epochs COMPLETE.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        status = (result or {}).get("status")
        if (error or status == STATUS_COMPLETED or searcher_trial(self, trial_id) is None
                or searcher_has_finished(self, trial_id)):
            return super().on_trial_complete(trial_id, result, error)
        from optuna.trial import TrialState

        state = TrialState.PRUNED if status == STATUS_RUNNING else TrialState.FAIL
        try:
            tell_searcher(self, trial_id, state)
        except Exception as exc:  # noqa: BLE001 (Optuna refuses e.g. a second tell; the study goes on)
            logger.warning(exc)


def make_searcher(spec, storage: str | None):
    """OptunaSearch (seeded, warm-started with the base preset) behind a ConcurrencyLimiter; None for grids."""
    if spec.algorithm == "grid":
        return None
    multi = spec.multi_objective
    point = spec.base_point()
    searcher = StudySearch(
        space=spec.optuna_distributions(),
        metric=list(spec.metrics) if multi else spec.metrics[0],
        mode=list(spec.modes) if multi else spec.modes[0],
        points_to_evaluate=[point] if point else None,
        sampler=make_sampler(spec.sampler, spec.seed),
        study_name=spec.name,
        storage=open_storage(storage) if storage else None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)


def make_scheduler(spec):
    if spec.scheduler == "asha":
        max_t = spec.max_epochs or spec.trial_config({}).epochs
        return ASHAScheduler(time_attr=TIME_ATTR, metric=spec.metrics[0], mode=spec.modes[0], max_t=max_t,
                             grace_period=min(spec.grace_period, max_t), reduction_factor=spec.reduction_factor)
    return FIFOScheduler()


def param_space(spec) -> dict:
    """Grid studies enumerate their points (and seeds) here; Optuna studies keep the space in the searcher."""
    if spec.algorithm != "grid":
        return {}
    space = {p.name: tune.grid_search(list(p.values)) for p in spec.parameters}
    space["seed"] = tune.grid_search(sorted({point["seed"] for point in spec.grid()}))  # the seeds spec.grid() names
    return space


def open_storage(url: str):
    """An Optuna RDB storage (sqlite:///..., postgresql://...), created if missing."""
    import optuna

    return optuna.storages.RDBStorage(url=url)


