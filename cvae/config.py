"""TrialConfig: every knob of one training run, its defaults, and the Model 1-5 presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

MNIST, MNIST_5K, FASHION_MNIST = "mnist", "mnist-5k", "fashion-mnist"  # dataset names, used everywhere
DATASETS = (MNIST, MNIST_5K, FASHION_MNIST)
CONDITION_MODES = ("global", "per_class")
OUTPUT_ACTIVATIONS = ("relu", "sigmoid", "linear")
MAX_EPOCHS = 10_000  # far beyond any study here; bounds a typo's cost
MAX_EVAL_SAMPLES = 100_000  # generated images held in memory at once for the metrics
MIN_FID_SAMPLES = 256  # twice the reference classifier's 128 features: fewer leave fid's covariance rank-deficient
MAX_TRAIN_SAMPLES = 10_000_000


@dataclass(frozen=True)
class TrialConfig:
    """One training run. Defaults are the reference model of docs/design.md §1 (preset model_4)."""

    # --- data ---
    dataset: str = MNIST  # full MNIST when reachable, else the embedded 5k sample (with a warning)
    data_path: str = ""  # user's IDX .gz folder or mnist.npz; empty = keras cache / download / embedded
    max_train_samples: int = 0  # 0 = whole training split; smaller trades fidelity for speed
    validation_fraction: float = 0.1  # validation share: drives ASHA, Optuna and the best trial; fixed for every trial
    test_fraction: float = 0.1  # test share: measured once per finished trial, never seen by any selection
    condition_mode: str = "per_class"  # per_class fixed "1" drawn thicker than other digits (model_2+)

    # --- architecture ---
    latent_dim: int = 40  # reference latent size
    width: float = 1.0  # multiplies every conv/dense width; 1.0 = reference (32/64/128, 256, 320, 160/80/40)
    dropout: float = 0.45  # reference dropout after each strided conv
    l2: float = 0.001  # reference L2 on conv kernels
    output_activation: str = "relu"  # reference used relu, so outputs may exceed 1

    # --- optimisation ---
    learning_rate: float = 1e-3  # Adam, reference
    batch_size: int = 32  # reference; the grey-loss faithfulness note depends on it
    epochs: int = 9  # model_4: 1 warm-up epoch + 8 with grey loss
    seed: int = 0  # initial weights, dropout, latent noise and each epoch's shuffle; the splits are fixed separately

    # --- grey loss ---
    grey_weight: float = 0.32  # per image; = reference 0.01 x batch-sum over 32 images
    grey_threshold: float = 0.0  # y(1-y) below this is free; reference had none
    warmup_epochs: int = 1  # grey term off for these first epochs (from epoch 1 it can collapse)

    # --- evaluation (fixed seeds so every trial is judged on the same latents) ---
    eval_samples: int = 1000  # generated samples for fid / class_accuracy / sharpness / collapse
    sweep_latents: int = 8  # latents per class in the thickness sweep (x 10 classes x 9 thickness values)
    eval_seed: int = 1234  # noise for the generated evaluation samples; shared by all trials
    cas_samples: int = 5000  # generated images a fresh classifier trains on for CAS at the end (0: CAS not measured)
    cas_epochs: int = 3  # that classifier's epochs: ~15k presentations, about 10 s on 2 CPU cores

    def __post_init__(self) -> None:
        errors = _validate(self)
        if errors:
            raise ValueError("; ".join(errors))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Build a config from a plain dict (YAML, JSON, Ray), rejecting unknown keys.

        Args:
            values: field name -> value; missing fields keep their defaults.
        Returns:
            The validated, frozen config.
        Raises:
            ValueError naming the bad key or value and what is allowed.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"unknown TrialConfig key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(known)}"
            )
        coerced = {key: _coerce(known[key], value) for key, value in values.items()}
        return cls(**coerced)

    def replace(self, **changes: Any) -> "TrialConfig":
        """A copy with some fields changed (validated like from_dict)."""
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    """YAML/Ray hand us numpy scalars and ints-for-floats; accept those, refuse the rest."""
    expected = spec.type if isinstance(spec.type, type) else {"int": int, "float": float, "str": str}[spec.type]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, bool):  # YAML's true/false are ints to Python; no field is a flag
        raise ValueError(f"{spec.name}={value!r} must be of type {expected.__name__}, not a boolean")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected):
        raise ValueError(f"{spec.name}={value!r} must be of type {expected.__name__}")
    return value


def _validate(config: TrialConfig) -> list[str]:
    errors = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    for spec in fields(config):
        value = getattr(config, spec.name)
        if isinstance(value, float):
            check(math.isfinite(value), f"{spec.name}={value!r} must be a finite number")
    check(config.dataset in DATASETS, f"dataset={config.dataset!r}; allowed: {', '.join(DATASETS)}")
    check(
        config.condition_mode in CONDITION_MODES,
        f"condition_mode={config.condition_mode!r}; allowed: {', '.join(CONDITION_MODES)}",
    )
    check(
        config.output_activation in OUTPUT_ACTIVATIONS,
        f"output_activation={config.output_activation!r}; allowed: {', '.join(OUTPUT_ACTIVATIONS)}",
    )
    # Upper bounds keep one bad value from asking for unbounded memory or time; each says what is allowed.
    check(0 <= config.max_train_samples <= MAX_TRAIN_SAMPLES,
          f"max_train_samples={config.max_train_samples} must be in [0, {MAX_TRAIN_SAMPLES}] (0 = all)")
    check(0 < config.validation_fraction < 0.5, f"validation_fraction={config.validation_fraction} must be in (0, 0.5)")
    check(0 < config.test_fraction < 0.5, f"test_fraction={config.test_fraction} must be in (0, 0.5)")
    check(config.validation_fraction + config.test_fraction <= 0.5,
          f"validation_fraction + test_fraction = {config.validation_fraction + config.test_fraction:g} must be <= 0.5 "
          "(the rest trains)")
    check(1 <= config.latent_dim <= 1024, f"latent_dim={config.latent_dim} must be in [1, 1024]")
    check(0.05 <= config.width <= 8, f"width={config.width} must be in [0.05, 8]")
    check(0 <= config.dropout < 1, f"dropout={config.dropout} must be in [0, 1)")
    check(0 <= config.l2 <= 10, f"l2={config.l2} must be in [0, 10]")
    check(0 < config.learning_rate <= 1e6, f"learning_rate={config.learning_rate} must be in (0, 1e6]")
    check(1 <= config.batch_size <= 65536, f"batch_size={config.batch_size} must be in [1, 65536]")
    check(1 <= config.epochs <= MAX_EPOCHS, f"epochs={config.epochs} must be in [1, {MAX_EPOCHS}]")
    check(0 <= config.seed < 2**32, f"seed={config.seed} must be in [0, 2**32)")
    check(0 <= config.grey_weight <= 1e6, f"grey_weight={config.grey_weight} must be in [0, 1e6]")
    check(0 <= config.grey_threshold < 0.25, f"grey_threshold={config.grey_threshold} must be in [0, 0.25) (y(1-y) <= 0.25)")
    check(0 <= config.warmup_epochs <= MAX_EPOCHS, f"warmup_epochs={config.warmup_epochs} must be in [0, {MAX_EPOCHS}]")
    check(MIN_FID_SAMPLES <= config.eval_samples <= MAX_EVAL_SAMPLES,
          f"eval_samples={config.eval_samples} must be in [{MIN_FID_SAMPLES}, {MAX_EVAL_SAMPLES}] (fid needs at least "
          f"twice the classifier's {MIN_FID_SAMPLES // 2} features)")
    check(config.cas_samples == 0 or 100 <= config.cas_samples <= MAX_EVAL_SAMPLES,
          f"cas_samples={config.cas_samples} must be 0 (no CAS) or in [100, {MAX_EVAL_SAMPLES}]")
    check(1 <= config.cas_epochs <= 100, f"cas_epochs={config.cas_epochs} must be in [1, 100]")
    check(1 <= config.sweep_latents <= 1000, f"sweep_latents={config.sweep_latents} must be in [1, 1000]")
    check(0 <= config.eval_seed < 2**32, f"eval_seed={config.eval_seed} must be in [0, 2**32)")
    check(len(config.data_path) <= 4096 and "\0" not in config.data_path, "data_path must be a path of at most 4096 characters")
    return errors


# The five reference experiments of docs/design.md §1 (warmup_epochs + grey epochs = epochs).
PRESETS: dict[str, TrialConfig] = {
    "model_1": TrialConfig(condition_mode="global", epochs=8, grey_weight=0.0, warmup_epochs=0),
    "model_2": TrialConfig(condition_mode="per_class", epochs=8, grey_weight=0.0, warmup_epochs=0),
    "model_3": TrialConfig(condition_mode="per_class", epochs=40, grey_weight=0.0, warmup_epochs=0),
    "model_4": TrialConfig(condition_mode="per_class", epochs=9, grey_weight=0.32, warmup_epochs=1),
    "model_5": TrialConfig(condition_mode="per_class", epochs=41, grey_weight=0.32, warmup_epochs=1),
}

# Final train loss each reference experiment reported on 60k MNIST (docs/design.md §1), for comparison tables.
REPORTED_TRAIN_LOSS = {"model_1": 24.85, "model_2": 24.19, "model_3": 22.53, "model_4": 31.00, "model_5": 28.95}


def preset(name: str) -> TrialConfig:
    """The named reference preset; ValueError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]
