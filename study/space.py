"""YAML study file -> validated StudySpec -> TrialConfigs, Optuna distributions or a grid."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvae.config import PRESETS, TrialConfig, preset
from cvae.metrics import METRICS

REPO = Path(__file__).resolve().parents[1]
SPACES_DIR = REPO / "search_spaces"
PRESET_PARAMETER = "preset"  # a grid parameter naming presets; every other parameter is a TrialConfig field

TOP_KEYS = ("name", "description", "base", "fixed", "parameters", "objective", "search", "scheduler", "resources")
DISTRIBUTIONS = ("uniform", "log_uniform", "int", "categorical")
ALGORITHMS = ("optuna", "grid")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
SCHEDULERS = ("asha", "fifo")
SECTION_KEYS = {
    "objective": ("metric", "mode"),
    "search": ("algorithm", "sampler", "seed", "num_samples", "max_concurrent", "repeats"),
    "scheduler": ("type", "max_epochs", "grace_period", "reduction_factor"),
    "resources": ("cpu", "gpu"),
}
PARAMETER_KEYS = ("distribution", "low", "high", "log", "values", "step")


class SpecError(ValueError):
    """A mistake in a study file; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Parameter:
    name: str
    distribution: str  # uniform | log_uniform | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple = ()
    step: int | None = None


@dataclass(frozen=True)
class StudySpec:
    """A validated study: what to vary, what to optimise, how to search, schedule and place trials."""

    name: str
    path: str
    description: str = ""
    base: str = "model_4"
    fixed: dict = field(default_factory=dict)
    parameters: tuple[Parameter, ...] = ()
    metrics: tuple[str, ...] = ("fid",)
    modes: tuple[str, ...] = ("min",)
    algorithm: str = "optuna"
    sampler: str = "tpe"
    seed: int = 0
    num_samples: int = 8
    max_concurrent: int = 2
    repeats: int = 1
    scheduler: str = "fifo"
    max_epochs: int | None = None
    grace_period: int = 1
    reduction_factor: int = 3
    cpu: float = 1.0
    gpu: float = 0.0

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def trial_config(self, params: dict[str, Any]) -> TrialConfig:
        """base preset (or the trial's `preset`) <- fixed <- sampled params, epochs capped at max_epochs."""
        params = dict(params)
        start = preset(params.pop(PRESET_PARAMETER, self.base))
        config = start.replace(**{**self.fixed, **params})
        if self.max_epochs is not None and config.epochs > self.max_epochs:
            config = config.replace(epochs=self.max_epochs)
        return config

    def with_overrides(self, **overrides: Any) -> "StudySpec":
        """Command-line overrides (None = keep); the result is validated again."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        fixed_changes = {key: changes.pop(key) for key in ("dataset", "max_train_samples", "data_path") if key in changes}
        spec = dataclasses.replace(self, fixed={**self.fixed, **fixed_changes}, **changes)
        _check_semantics(spec, spec.path)
        return spec

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point (for algorithm: grid), each repeated with seeds 0..repeats-1."""
        names = [p.name for p in self.parameters]
        points = itertools.product(*[p.values for p in self.parameters])
        return [{**dict(zip(names, point)), "seed": seed} for point in points for seed in range(self.repeats)]

    def base_point(self) -> dict[str, Any] | None:
        """The base preset's value of every searched parameter (Optuna evaluates it first), if inside the space."""
        config = self.trial_config({})
        point = {}
        for parameter in self.parameters:
            value = getattr(config, parameter.name)
            inside = (value in parameter.values) if parameter.distribution == "categorical" else (
                parameter.low <= value <= parameter.high)
            if not inside:
                return None
            point[parameter.name] = value
        return point

    def optuna_distributions(self) -> dict:
        import optuna.distributions as distributions

        result = {}
        for p in self.parameters:
            if p.distribution == "categorical":
                result[p.name] = distributions.CategoricalDistribution(list(p.values))
            elif p.distribution == "int":
                result[p.name] = distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=p.step or 1)
            else:
                result[p.name] = distributions.FloatDistribution(p.low, p.high, log=p.distribution == "log_uniform" or p.log)
        return result

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudySpec":
        """The inverse of to_dict (a results folder's study.json back to a spec)."""
        parameters = tuple(Parameter(**{**p, "values": tuple(p.get("values") or ())}) for p in data.get("parameters", ()))
        tuples = {key: tuple(data[key]) for key in ("metrics", "modes") if key in data}
        return cls(**{**data, "parameters": parameters, **tuples})


def open_storage(url: str):
    """An Optuna RDB storage (sqlite:///..., postgresql://...), created if missing."""
    import optuna

    return optuna.storages.RDBStorage(url=url)


def resolve_path(space: str | Path) -> Path:
    """A path as given, else a bare name looked up in search_spaces/ (with or without .yaml)."""
    candidates = [Path(space), SPACES_DIR / space, SPACES_DIR / f"{space}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.name for p in SPACES_DIR.glob("*.yaml")))
    raise SpecError(f"{space}: no such study file (looked in . and search_spaces/); available: {available}")


def load_spec(space: str | Path) -> StudySpec:
    """Read and validate a study file.

    Args:
        space: a path, or a bare file name found in search_spaces/.
    Returns:
        The StudySpec.
    Raises:
        SpecError with one line naming the file, the key and what is allowed.
    """
    path = resolve_path(space)
    where = path.name
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{where}:{line} is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: the file must be a mapping with keys {', '.join(TOP_KEYS)}")
    _check_keys(raw, TOP_KEYS, where)
    for section, keys in SECTION_KEYS.items():
        value = raw.get(section, {})
        if section == "objective" and value is None:
            value = {}
        if not isinstance(value, dict):
            raise SpecError(f"{where}: '{section}' must be a mapping with keys {', '.join(keys)}")
        _check_keys(value, keys, f"{where}: {section}")
    if not raw.get("name") or not isinstance(raw["name"], str):
        raise SpecError(f"{where}: 'name' is required (a short folder-safe study name)")
    if not all(ch.isalnum() or ch in "-_." for ch in raw["name"]):
        raise SpecError(f"{where}: name {raw['name']!r} may only hold letters, digits, '-', '_' and '.'")
    base = raw.get("base", "model_4")
    if base not in PRESETS:
        raise SpecError(f"{where}: base: unknown preset {base!r}; allowed: {', '.join(PRESETS)}")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpecError(f"{where}: 'fixed' must be a mapping of TrialConfig fields to values")
    fields = set(TrialConfig.__dataclass_fields__)
    for key in fixed:
        if key not in fields:
            raise SpecError(f"{where}: fixed: {key!r} is not a TrialConfig field; allowed: {', '.join(sorted(fields))}")

    search = raw.get("search") or {}
    algorithm = search.get("algorithm", "optuna")
    parameters = tuple(_parse_parameter(name, body, where, fields, algorithm)
                       for name, body in (raw.get("parameters") or {}).items())
    objective = raw.get("objective") or {}
    metrics = objective.get("metric", "fid")
    metrics = tuple(metrics) if isinstance(metrics, list) else (metrics,)
    for metric in metrics:
        if metric not in METRICS:
            raise SpecError(f"{where}: objective: metric {metric!r} is unknown; allowed: {', '.join(METRICS)}")
    modes = objective.get("mode")
    if modes is None:
        modes = tuple(METRICS[m].mode for m in metrics)
    else:
        modes = tuple(modes) if isinstance(modes, list) else (modes,) * len(metrics)
    if len(modes) != len(metrics) or any(mode not in ("min", "max") for mode in modes):
        raise SpecError(f"{where}: objective: mode must be min or max, one per metric (got {list(modes)})")
    scheduler = raw.get("scheduler") or {}
    resources = raw.get("resources") or {}
    values = dict(
        name=raw["name"], path=str(path), description=str(raw.get("description", "")), base=base, fixed=dict(fixed),
        parameters=parameters, metrics=metrics, modes=modes, algorithm=algorithm,
        sampler=search.get("sampler", "tpe"), seed=search.get("seed", 0), num_samples=search.get("num_samples", 8),
        max_concurrent=search.get("max_concurrent", 2), repeats=search.get("repeats", 1),
        scheduler=scheduler.get("type", "fifo"), max_epochs=scheduler.get("max_epochs"),
        grace_period=scheduler.get("grace_period", 1), reduction_factor=scheduler.get("reduction_factor", 3),
        cpu=resources.get("cpu", 1), gpu=resources.get("gpu", 0),
    )
    spec = StudySpec(**values)
    _check_semantics(spec, where)
    return spec


def _check_keys(mapping: dict, allowed, where: str) -> None:
    unknown = [key for key in mapping if key not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{what} must be a number, got {value!r}")
    return value


def _parse_parameter(name: str, body, where: str, fields: set, algorithm: str) -> Parameter:
    at = f"{where}: parameters.{name}"
    if name != PRESET_PARAMETER and name not in fields:
        raise SpecError(f"{at}: {name!r} is not a TrialConfig field; allowed: {PRESET_PARAMETER}, {', '.join(sorted(fields))}")
    if not isinstance(body, dict):
        raise SpecError(f"{at}: must be a mapping like {{distribution: uniform, low: 0, high: 1}} or {{values: [...]}}")
    _check_keys(body, PARAMETER_KEYS, at)
    if "values" in body:
        values = body["values"]
        if not isinstance(values, list) or not values:
            raise SpecError(f"{at}: values must be a non-empty list")
        distribution = body.get("distribution", "categorical")
        if distribution != "categorical":
            raise SpecError(f"{at}: values go with distribution categorical, not {distribution!r}")
        if name == PRESET_PARAMETER:
            unknown = [v for v in values if v not in PRESETS]
            if unknown:
                raise SpecError(f"{at}: unknown preset {unknown[0]!r}; allowed: {', '.join(PRESETS)}")
        else:
            for value in values:
                try:
                    TrialConfig.from_dict({name: value})
                except ValueError as error:
                    raise SpecError(f"{at}: {error}") from None
        return Parameter(name, "categorical", values=tuple(values))
    if name == PRESET_PARAMETER:
        raise SpecError(f"{at}: the preset parameter takes values: [model_1, ...]")
    if algorithm == "grid":
        raise SpecError(f"{at}: a grid study needs values: [...] for every parameter, not a distribution")
    distribution = body.get("distribution")
    if distribution not in DISTRIBUTIONS:
        raise SpecError(f"{at}: distribution {distribution!r} is unknown; allowed: {', '.join(DISTRIBUTIONS)}")
    if distribution == "categorical":
        raise SpecError(f"{at}: a categorical parameter needs values: [...]")
    if "low" not in body or "high" not in body:
        raise SpecError(f"{at}: {distribution} needs low and high")
    low, high = _number(body["low"], f"{at}: low"), _number(body["high"], f"{at}: high")
    if low >= high:
        raise SpecError(f"{at}: low ({low}) must be < high ({high})")
    log = bool(body.get("log", False))
    if (distribution == "log_uniform" or log) and low <= 0:
        raise SpecError(f"{at}: a log scale needs low > 0 (got {low})")
    if distribution == "int" and (int(low) != low or int(high) != high):
        raise SpecError(f"{at}: int needs integer low and high")
    for bound in (low, high):
        try:
            TrialConfig.from_dict({name: int(bound) if distribution == "int" else float(bound)})
        except ValueError as error:
            raise SpecError(f"{at}: {error}") from None
    return Parameter(name, distribution, low=low, high=high, log=log, step=body.get("step"))


def _check_semantics(spec: StudySpec, where: str) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise SpecError(f"{where}: {message}")

    need(spec.algorithm in ALGORITHMS, f"search: algorithm {spec.algorithm!r} is unknown; allowed: {', '.join(ALGORITHMS)}")
    need(spec.sampler in SAMPLERS, f"search: sampler {spec.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    need(spec.scheduler in SCHEDULERS, f"scheduler: type {spec.scheduler!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    for key in ("seed", "num_samples", "max_concurrent", "repeats", "grace_period", "reduction_factor"):
        value = getattr(spec, key)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= (0 if key == "seed" else 1),
             f"{key} must be an integer >= {0 if key == 'seed' else 1}, got {value!r}")
    need(spec.reduction_factor >= 2, f"scheduler: reduction_factor must be >= 2, got {spec.reduction_factor}")
    need(spec.max_epochs is None or (isinstance(spec.max_epochs, int) and spec.max_epochs >= 1),
         f"scheduler: max_epochs must be an integer >= 1, got {spec.max_epochs!r}")
    for key in ("cpu", "gpu"):
        value = getattr(spec, key)
        need(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
             f"resources: {key} must be a number >= 0, got {value!r}")
    need(spec.cpu > 0, "resources: cpu must be > 0 (each trial runs TensorFlow on at least part of a core)")
    need(not (spec.multi_objective and spec.scheduler == "asha"),
         "objective: a list of metrics (multi-objective) cannot be used with scheduler type asha; use fifo")
    if spec.algorithm == "grid":
        need(all(p.distribution == "categorical" for p in spec.parameters), "search: grid needs values: [...] lists")
    else:
        need(bool(spec.parameters), "parameters: an optuna search needs at least one parameter")
        need(all(p.name != PRESET_PARAMETER for p in spec.parameters),
             "parameters.preset is for grid studies; an optuna study starts from 'base'")
    try:
        spec.trial_config({})  # base + fixed must make a valid TrialConfig
    except ValueError as error:
        raise SpecError(f"{where}: fixed: {error}") from None
