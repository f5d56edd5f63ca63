"""YAML study file -> validated StudySpec -> TrialConfigs, Optuna distributions or a grid."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvae.command_line import DATA_FLAGS
from cvae.config import MAX_EPOCHS, PRESETS, TrialConfig, preset
from cvae.metrics import METRICS, TEST_PREFIX, WEIGHT_DEPENDENT
from study.errors import Refusal

REPO = Path(__file__).resolve().parents[2]
SPACES_DIR = REPO / "search_spaces"
PRESET_PARAMETER = "preset"  # a grid parameter naming presets; every other parameter is a TrialConfig field

TOP_KEYS = ("name", "description", "base", "fixed", "parameters", "objective", "search", "scheduler", "resources",
            "allow_weak_classifier")
DISTRIBUTIONS = ("uniform", "log_uniform", "int", "categorical")
ALGORITHMS = ("optuna", "grid")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
SCHEDULERS = ("asha", "fifo")
SECTION_KEYS = {
    "objective": ("metric", "mode"),
    "search": ("algorithm", "sampler", "seed", "num_samples", "max_concurrent", "repeats", "first_seed"),
    "scheduler": ("type", "max_epochs", "grace_period", "reduction_factor"),
    "resources": ("cpu", "gpu", "fuse"),
}
PARAMETER_KEYS = ("distribution", "low", "high", "log", "values", "step")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a folder name on every OS, never '.', '..' or ''
MAX_FILE_BYTES = 256 * 1024  # a study file is a screenful; anything larger is not one
MAX_TRIALS = 10_000  # num_samples, and grid points x repeats
MAX_REPEATS = 1_000
MAX_SEED = 2**31 - 1
MAX_CONCURRENT = 1_024
MAX_FUSE = 64  # members of one fused program (benchmarks/README.md measures up to 16)
# A fused trial's own Tune actor only waits for its program, which holds the rest of `cpu`: a full program and its
# members take `cpu` together, so as many programs fit as unfused trials would.
FUSED_MEMBER_CPU = 0.01
MAX_VALUES = 1_000  # categorical values of one parameter
MAX_TEXT = 2_000  # characters of the description
# The whole-number settings of a study and their ranges: study-file keys and run.py's flags alike are checked here.
LIMITS = {"seed": (0, 2**32 - 1), "num_samples": (1, MAX_TRIALS), "max_concurrent": (1, MAX_CONCURRENT),
          "repeats": (1, MAX_REPEATS), "first_seed": (0, MAX_SEED), "grace_period": (1, MAX_EPOCHS),
          "reduction_factor": (2, 100), "max_epochs": (1, MAX_EPOCHS), "fuse": (1, MAX_FUSE)}
# Where each section key of a study file goes in StudySpec (its defaults are written there, once).
SECTION_FIELDS = {
    "search": {key: key for key in SECTION_KEYS["search"]},
    "scheduler": {"type": "scheduler", "max_epochs": "max_epochs", "grace_period": "grace_period",
                  "reduction_factor": "reduction_factor"},
    "resources": {"cpu": "cpu", "gpu": "gpu", "fuse": "fuse"},
}


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without the surprises: duplicate keys and anchors/aliases are refused, not resolved.

    A duplicate key would silently keep the last value; aliases allow exponential "billion laughs" documents.
    """

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SpecError(f"line {event.start_mark.line + 1}: anchors and aliases (&, *) are not allowed in a study file")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecError(f"line {key_node.start_mark.line + 1}: keys must be plain names, got {key!r}")
            if key in seen:
                raise SpecError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (each key may appear once)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A study file's YAML: UTF-8, at most MAX_FILE_BYTES, strict (see _StrictLoader). SpecError otherwise."""
    where = path.name
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # never more, whatever stat() claims
        if len(data) > MAX_FILE_BYTES:
            raise SpecError(f"{where}: too large for a study file (at most {MAX_FILE_BYTES} bytes)")
        if b"\0" in data:
            raise SpecError(f"{where}: a binary file, not a study file (YAML text)")
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{where}: not a UTF-8 text file (byte {error.start}); a study file is YAML text") from None
    except OSError as error:
        raise SpecError(f"{where}: cannot read it ({error.strerror})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except SpecError as error:
        raise SpecError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(f"{where}:{line} is not valid YAML ({problem})") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply to be a study file") from None


def check_name(name: Any, what: str) -> str:
    """A study name (folder under results/): 1-100 letters, digits, '.', '_' or '-', not starting with '.', '-'."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(f"{what} {name!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


class SpecError(Refusal):
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

    @property
    def log_scaled(self) -> bool:
        """Searched on a log scale (log_uniform, or log: true): figures draw its axis on one too."""
        return self.distribution == "log_uniform" or self.log

    @classmethod
    def from_dict(cls, data: dict) -> "Parameter":
        """A parameter as study.json records it (dataclasses.asdict) back to a Parameter."""
        return cls(**{**data, "values": tuple(data.get("values") or ())})


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
    first_seed: int = 0  # a grid's seeds are first_seed..first_seed+repeats-1: more seeds later are a new study
    scheduler: str = "fifo"
    max_epochs: int | None = None
    grace_period: int = 1
    reduction_factor: int = 3
    cpu: float = 1  # cores per trial (fractions share a core); with fuse > 1, per fused program
    gpu: float = 0
    fuse: int = 1  # trials of one shape trained as one JAX program (cvae/fused.py); 1: each trial on its own (TensorFlow)
    allow_weak_classifier: bool = False  # run even when the reference classifier misses its accuracy bar

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
        if "name" in changes:
            check_name(changes["name"], "--name")
        fixed_changes = {key: changes.pop(key) for key in DATA_FLAGS if key in changes}
        spec = dataclasses.replace(self, fixed={**self.fixed, **fixed_changes}, **changes)
        _check_semantics(spec, spec.path)
        return spec

    @property
    def concurrent_trials(self) -> int:
        """Trials running at once: max_concurrent programs of `fuse` members each (one trial each when not fused)."""
        return self.max_concurrent * self.fuse

    @property
    def planned_trials(self) -> int:
        """How many trials the study asks for: every grid point with each of its seeds, or num_samples."""
        return len(self.grid()) if self.algorithm == "grid" else self.num_samples

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point (for algorithm: grid), each repeated with seeds first_seed..first_seed+repeats-1."""
        names = [p.name for p in self.parameters]
        points = itertools.product(*[p.values for p in self.parameters])
        seeds = range(self.first_seed, self.first_seed + self.repeats)
        return [{**dict(zip(names, point)), "seed": seed} for point in points for seed in seeds]

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
                result[p.name] = distributions.FloatDistribution(p.low, p.high, log=p.log_scaled)
        return result

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudySpec":
        """The inverse of to_dict (a results folder's study.json back to a spec; what the start recorded besides
        the spec, e.g. the classifier's accuracy, is left out)."""
        data = {key: value for key, value in data.items() if key in {f.name for f in dataclasses.fields(cls)}}
        parameters = tuple(Parameter.from_dict(p) for p in data.get("parameters", ()))
        tuples = {key: tuple(data[key]) for key in ("metrics", "modes") if key in data}
        return cls(**{**data, "parameters": parameters, **tuples})


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
    raw = _read_mapping(path, where)
    values = {"path": str(path), **_top_level_values(raw, where)}
    for section, fields in SECTION_FIELDS.items():
        values.update({fields[key]: value for key, value in raw.get(section, {}).items()})
    values["metrics"], values["modes"] = _parse_objective(raw.get("objective", {}), where)
    values["parameters"] = _parse_parameters(raw, where, values.get("algorithm", StudySpec.algorithm))
    spec = StudySpec(**values)
    _check_semantics(spec, where)
    return spec


def _read_mapping(path: Path, where: str) -> dict:
    """A study file's top-level mapping, its keys and sections known and none of them empty."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: the file must be a mapping with keys {', '.join(TOP_KEYS)}")
    _check_keys(raw, TOP_KEYS, where)
    _refuse_empty(raw, where)
    for section, keys in SECTION_KEYS.items():
        value = raw.get(section, {})
        if not isinstance(value, dict):
            raise SpecError(f"{where}: '{section}' must be a mapping with keys {', '.join(keys)}")
        _check_keys(value, keys, f"{where}: {section}")
    return raw


def _top_level_values(raw: dict, where: str) -> dict:
    """name, description, base, fixed and allow_weak_classifier as given (absent ones keep StudySpec's defaults)."""
    if "name" not in raw:
        raise SpecError(f"{where}: 'name' is required (a short folder-safe study name)")
    values = {"name": check_name(raw["name"], f"{where}: name")}
    description = raw.get("description", StudySpec.description)
    if not isinstance(description, str) or len(description) > MAX_TEXT:
        raise SpecError(f"{where}: description must be text of at most {MAX_TEXT} characters")
    base = raw.get("base", StudySpec.base)
    if not isinstance(base, str) or base not in PRESETS:
        raise SpecError(f"{where}: base: unknown preset {base!r}; allowed: {', '.join(PRESETS)}")
    fixed = raw.get("fixed", {})
    if not isinstance(fixed, dict):
        raise SpecError(f"{where}: 'fixed' must be a mapping of TrialConfig fields to values")
    fields = set(TrialConfig.__dataclass_fields__)
    for key in fixed:
        if key not in fields:
            raise SpecError(f"{where}: fixed: {key!r} is not a TrialConfig field; allowed: {', '.join(sorted(fields))}")
    values.update(description=description, base=base, fixed=dict(fixed))
    if "allow_weak_classifier" in raw:
        values["allow_weak_classifier"] = raw["allow_weak_classifier"]
    return values


def _parse_parameters(raw: dict, where: str, algorithm) -> tuple[Parameter, ...]:
    if algorithm not in ALGORITHMS:
        raise SpecError(f"{where}: search: algorithm {algorithm!r} is unknown; allowed: {', '.join(ALGORITHMS)}")
    raw_parameters = raw.get("parameters", {})
    if not isinstance(raw_parameters, dict):
        raise SpecError(f"{where}: 'parameters' must be a mapping of field names to "
                        "{distribution: ..., low: ..., high: ...} or {values: [...]}")
    fields = set(TrialConfig.__dataclass_fields__)
    return tuple(_parse_parameter(name, body, where, fields, algorithm) for name, body in raw_parameters.items())


def _refuse_empty(mapping: dict, where: str, at: str = "") -> None:
    """A key written with no value (`search:`, `num_samples:`) is YAML null, and `{}`/`[]` hold nothing: refused,
    never read as "defaults".

    An empty section silently ran a whole study on defaults (3 GB before it was stopped); leaving a key out is
    how a study file asks for the default.
    """
    for key, value in mapping.items():
        path = f"{at}.{key}" if at else str(key)
        if value is None or (isinstance(value, (dict, list)) and not value):
            raise SpecError(f"{where}: {path} is empty ({'null' if value is None else repr(value)}); give it a value "
                            "or leave the key out for its default")
        if isinstance(value, dict):
            _refuse_empty(value, where, path)
        elif isinstance(value, list) and any(item is None for item in value):
            raise SpecError(f"{where}: {path} holds an empty (null) item; list values only")


def _parse_objective(objective: dict, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    metrics = objective.get("metric", list(StudySpec.metrics))
    if isinstance(metrics, list):
        if not metrics or len(set(map(str, metrics))) != len(metrics):
            raise SpecError(f"{where}: objective: metric must be a metric name or a non-empty list of distinct names")
        metrics = tuple(metrics)
    else:
        metrics = (metrics,)
    allowed = [name for name in METRICS if name not in WEIGHT_DEPENDENT and not name.startswith(TEST_PREFIX)]
    for metric in metrics:
        if metric in WEIGHT_DEPENDENT:
            raise SpecError(f"{where}: objective: {metric} adds each trial's own grey weight and L2 penalty, so two "
                            "trials' values measure different things; use val_elbo (reconstruction + KL) or a sample "
                            "metric such as fid")
        if isinstance(metric, str) and metric.startswith(TEST_PREFIX) and metric in METRICS:
            raise SpecError(f"{where}: objective: {metric} is measured on the test split, which no selection may "
                            f"see; optimise {metric.removeprefix(TEST_PREFIX)} (validation) instead")
        if not isinstance(metric, str) or metric not in METRICS:
            raise SpecError(f"{where}: objective: metric {metric!r} is unknown; allowed: {', '.join(allowed)}")
    modes = objective.get("mode")
    if modes is None:
        modes = tuple(METRICS[m].mode for m in metrics)
    else:
        modes = tuple(modes) if isinstance(modes, list) else (modes,) * len(metrics)
    if len(modes) != len(metrics) or any(mode not in ("min", "max") for mode in modes):
        raise SpecError(f"{where}: objective: mode must be min or max, one per metric (got {list(modes)!r})")
    return metrics, modes


def _check_keys(mapping: dict, allowed, where: str) -> None:
    unknown = [key for key in mapping if key not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{what} must be a finite number, got {value!r}")
    return value


def _parse_parameter(name: str, body, where: str, fields: set, algorithm: str) -> Parameter:
    at = f"{where}: parameters.{name}"
    if name != PRESET_PARAMETER and name not in fields:
        raise SpecError(f"{at}: {name!r} is not a TrialConfig field; allowed: {PRESET_PARAMETER}, {', '.join(sorted(fields))}")
    if not isinstance(name, str):
        raise SpecError(f"{where}: parameters: {name!r} is not a TrialConfig field name")
    if not isinstance(body, dict):
        raise SpecError(f"{at}: must be a mapping like {{distribution: uniform, low: 0, high: 1}} or {{values: [...]}}")
    _check_keys(body, PARAMETER_KEYS, at)
    if "values" in body:
        return _parse_values(name, body, at)
    if name == PRESET_PARAMETER:
        raise SpecError(f"{at}: the preset parameter takes values: [model_1, ...]")
    if algorithm == "grid":
        raise SpecError(f"{at}: a grid study needs values: [...] for every parameter, not a distribution")
    return _parse_range(name, body, at)


def _parse_values(name: str, body: dict, at: str) -> Parameter:
    """A parameter given as values: [...] (a grid's axis, or an Optuna categorical), each a valid field value."""
    values = body["values"]
    if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
        raise SpecError(f"{at}: values must be a non-empty list of at most {MAX_VALUES} values")
    if any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in values):
        raise SpecError(f"{at}: values must be numbers or names, not lists, mappings or booleans")
    if len(set(values)) != len(values):
        raise SpecError(f"{at}: values must be distinct")
    distribution = body.get("distribution", "categorical")
    if distribution != "categorical" or set(body) - {"values", "distribution"}:
        raise SpecError(f"{at}: values go alone (with distribution categorical at most), not with "
                        f"{', '.join(sorted(set(body) - {'values'}))}")
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


def _parse_range(name: str, body: dict, at: str) -> Parameter:
    """A parameter given as a distribution between low and high, both valid field values."""
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
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{at}: log must be true or false, got {log!r}")
    if distribution == "log_uniform" and "log" in body:
        raise SpecError(f"{at}: log_uniform is already on a log scale; drop log:")
    if (distribution == "log_uniform" or log) and low <= 0:
        raise SpecError(f"{at}: a log scale needs low > 0 (got {low})")
    if distribution == "int" and (int(low) != low or int(high) != high):
        raise SpecError(f"{at}: int needs integer low and high")
    step = body.get("step")
    if step is not None:
        _check_step(step, distribution, low, high, log, at)
    for bound in (low, high):
        try:
            TrialConfig.from_dict({name: int(bound) if distribution == "int" else float(bound)})
        except ValueError as error:
            raise SpecError(f"{at}: {error}") from None
    return Parameter(name, distribution, low=low, high=high, log=log, step=step)


def _check_step(step, distribution: str, low: float, high: float, log: bool, at: str) -> None:
    """A range's step: positive, within the range, whole for int, a whole number of steps, never on a log scale."""
    _number(step, f"{at}: step")
    if distribution == "int" and (not isinstance(step, int) or step < 1):
        raise SpecError(f"{at}: step of an int range must be an integer >= 1, got {step!r}")
    if step <= 0 or step > high - low:
        raise SpecError(f"{at}: step must be > 0 and at most high - low ({high - low}), got {step!r}")
    if log or distribution == "log_uniform":
        raise SpecError(f"{at}: step cannot be combined with a log scale (Optuna forbids it)")
    ratio = (high - low) / step
    if not math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-9):
        raise SpecError(f"{at}: high - low ({high - low}) must be a whole number of steps ({step})")


def _check_semantics(spec: StudySpec, where: str) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise SpecError(f"{where}: {message}")

    need(spec.algorithm in ALGORITHMS, f"search: algorithm {spec.algorithm!r} is unknown; allowed: {', '.join(ALGORITHMS)}")
    need(spec.sampler in SAMPLERS, f"search: sampler {spec.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    need(spec.scheduler in SCHEDULERS, f"scheduler: type {spec.scheduler!r} is unknown; allowed: {', '.join(SCHEDULERS)}")
    for key, (low, high) in LIMITS.items():
        value = getattr(spec, key)
        need((value is None and key == "max_epochs")  # no cap: each trial runs its config's epochs
             or (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high),
             f"{key} must be an integer in [{low}, {high}], got {value!r}")
    for key, high in (("cpu", 1024), ("gpu", 64)):
        value = getattr(spec, key)
        need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= high,
             f"resources: {key} must be a number in [0, {high}], got {value!r}")
    need(isinstance(spec.allow_weak_classifier, bool),
         f"allow_weak_classifier must be true or false, got {spec.allow_weak_classifier!r}")
    need(spec.cpu > 0, "resources: cpu must be > 0 (each trial runs TensorFlow on at least part of a core)")
    need(spec.fuse == 1 or spec.cpu >= 2 * spec.fuse * FUSED_MEMBER_CPU,
         f"resources: cpu {spec.cpu:g} is too little for fuse {spec.fuse} (each member takes {FUSED_MEMBER_CPU:g} CPU "
         f"of its program's); give at least {2 * spec.fuse * FUSED_MEMBER_CPU:g}")
    if spec.algorithm == "grid":
        points = math.prod(len(p.values) for p in spec.parameters) * spec.repeats
        need(points <= MAX_TRIALS, f"search: the grid has {points} trials (values x repeats); at most {MAX_TRIALS}")
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
