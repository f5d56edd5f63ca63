"""How a study chooses and stops its trials: Optuna's sampler behind Ray's searcher (told how each trial really
ended), a grid's points, ASHA or FIFO, and the Optuna database a study may keep."""

from __future__ import annotations

import logging

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from cvae.fused import SHAPE_FIELDS
from cvae.metrics import STATUS_COMPLETED
from study.tables.records import STATUS_RUNNING
from study.driver.adapters import enqueue_partial, searcher_has_finished, searcher_trial, tell_searcher

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
    """OptunaSearch that tells Optuna how each trial really ended, and in a fused study fills programs' free slots.

    Ray's OptunaSearch records a trial ASHA stopped early as COMPLETE with its last (low-fidelity) value, as if
    it had trained fully; here it is PRUNED (Optuna keeps its per-epoch values), a diverged trial FAIL, and only
    a trial that ran all its epochs COMPLETE.

    Fused (`fuse` > 1, and a searched parameter fixes a program's shape, e.g. latent_dim): shapes come in blocks
    of `fuse` trials. A trial whose shape Optuna chose freely opens a block; while a block of a running shape is
    not full, the next trial takes that shape and Optuna samples only the other parameters. A full block's freed
    slots are not refilled with its shape, so the search keeps proposing new shapes rather than one forever.
    """

    def __init__(self, *args, fuse: int = 1, shape_parameters: tuple = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fuse, self.shape_parameters = fuse, tuple(shape_parameters)
        self.running_shapes: dict[str, tuple] = {}  # trial id -> its values of shape_parameters, while it runs
        self.shape_counts: dict[tuple, int] = {}  # trials suggested so far with each shape

    def suggest(self, trial_id: str):
        steering = self.fuse > 1 and bool(self.shape_parameters)
        if steering and searcher_trial(self, trial_id) is None and (shape := self.shape_with_free_slot()):
            enqueue_partial(self, dict(zip(self.shape_parameters, shape)))
        params = super().suggest(trial_id)
        if steering and isinstance(params, dict):
            shape = self.running_shapes[trial_id] = tuple(params[name] for name in self.shape_parameters)
            self.shape_counts[shape] = self.shape_counts.get(shape, 0) + 1
        return params

    def shape_with_free_slot(self) -> tuple | None:
        """A running shape whose block of `fuse` trials is not full yet."""
        running = set(self.running_shapes.values())
        return next((shape for shape, count in self.shape_counts.items() if count % self.fuse and shape in running),
                    None)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.running_shapes.pop(trial_id, None)
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
        fuse=spec.fuse, shape_parameters=tuple(p.name for p in spec.parameters if p.name in SHAPE_FIELDS),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrent_trials)


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


