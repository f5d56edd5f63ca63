"""The metrics of docs/design.md §2: one name each, defined here, computed on fixed held-out conditions and latents."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cvae.config import MIN_FID_SAMPLES
from cvae.data import (NUM_CLASSES, Split, ThicknessStats, make_conditions, split_indices, stratified_subset,
                       thickness_of, white_ratio)


@dataclass(frozen=True)
class Metric:
    name: str
    mode: str  # "min" or "max": which direction is better
    description: str
    low: float = 0.0  # the values the metric can take; figures clip error bars to them
    high: float = float("inf")
    smallest_effect: float = float("nan")  # δ: a difference smaller than this is no difference to a reader (verdicts)
    why: str = ""  # why δ is that size


_METRICS = [
    Metric("loss", "min", "training loss (reconstruction + KL + weighted grey + L2), epoch mean",
           smallest_effect=1.0, why="about 3 % of a trained model's loss (25-30 per image)"),  # >= 0
    Metric("reconstruction", "min", "training sum of squared pixel errors per image",
           smallest_effect=1.0, why="about 3 % of a trained model's squared error per image (20-30)"),
    Metric("kl", "min", "training KL divergence per image",
           smallest_effect=1.0, why='one nat per image'),
    Metric("grey", "min", "training grey term per image (before weighting)",
           smallest_effect=1.0, why='one unit of the grey term per image'),
    Metric("val_loss", "min", "held-out loss with this epoch's grey weight and the L2 penalty",
           smallest_effect=1.0, why="about 3 % of a trained model's loss (25-30 per image)"),
    Metric("val_reconstruction", "min", "held-out sum of squared pixel errors per image",
           smallest_effect=1.0, why="about 3 % of a trained model's squared error per image (20-30)"),
    Metric("val_kl", "min", "held-out KL divergence per image",
           smallest_effect=1.0, why='one nat per image'),
    Metric("val_grey", "min", "held-out grey term per image",
           smallest_effect=1.0, why='one unit of the grey term per image'),
    Metric("val_elbo", "min", "held-out reconstruction + KL per image: the negative ELBO, comparable across trials",
           smallest_effect=1.0, why="about 3 % of a trained model's negative ELBO (25-30 per image)"),
    Metric("class_accuracy", "max", "share of generated samples classified as the requested class", 0, 1,
           smallest_effect=0.02, why='2 points: one sample in 50 more or less drawn as the wrong class'),
    Metric("fid", "min", "Frechet distance of classifier features, generated vs real held-out",
           smallest_effect=5.0, why="below FID's small-sample bias at 500 samples (~6) and one model's seed spread (1-6)"),
    Metric("kid", "min", "kernel distance (unbiased MMD², cubic kernel) of classifier features, generated vs real",
           -float("inf"), smallest_effect=0.5, why="two real splits of digits differ by |kid| 0.25 (N 500) to 0.5 (N "
           "256); 4-epoch models score 7-11"),
    Metric("thickness_corr", "max", "Spearman correlation of requested vs measured thickness (sweep)", -1, 1,
           smallest_effect=0.05, why='a correlation of 0.95 vs 0.90: both follow the condition'),
    Metric("thickness_mae", "min", "mean abs. error of requested vs measured thickness (sweep)", 0, 2,
           smallest_effect=0.05, why='2.5 % of the thickness range [-1, 1]'),
    Metric("class_parity", "min", "mean abs. difference of per-class relative stroke width, generated vs real",
           smallest_effect=0.02, why="2 % of a stroke's relative width: less than a grid of digits shows"),
    # Not an objective on its own: real digits are about half grey, so minimising it overshoots reality.
    Metric("grey_fraction", "min", "share of ink pixels (>0.1) that are grey (0.1-0.9); compare with real data's", 0, 1,
           smallest_effect=0.05, why='5 points of the ink share (real digits are about half grey)'),
    Metric("grey_gap", "min", "|grey_fraction - the real held-out images' grey_fraction|: as sharp as real data", 0, 1,
           smallest_effect=0.05, why='5 points of the ink share (real digits are about half grey)'),
    Metric("ink_w1", "min", "Wasserstein-1 distance of ink intensities, generated vs real",
           smallest_effect=0.02, why='2 % of the intensity range: an ink shade no eye tells apart'),
    Metric("collapse_rate", "min", "share of samples with max pixel < 0.5 or white ratio < 0.02", 0, 1,
           smallest_effect=0.05, why='one blank sample in 20'),
]
TRAIN_METRICS = ("loss", "reconstruction", "kl", "grey")
VALIDATION_PREFIX, TEST_PREFIX = "val_", "test_"
# Classification accuracy score (Ravuri & Vinyals 2019): a classifier trained on the model's class-conditioned samples,
# tested on the real test split, once per finished run. Not a per-epoch metric: it trains a network.
CAS = TEST_PREFIX + "cas"
VALIDATION_METRICS = tuple(VALIDATION_PREFIX + name for name in TRAIN_METRICS)
ELBO = "val_elbo"
SAMPLE_METRICS = tuple(metric.name for metric in _METRICS
                       if metric.name not in TRAIN_METRICS + VALIDATION_METRICS + (ELBO,))
# Once per finished run, on the test split: the validation metrics that do not depend on the run's own loss weights.
TEST_METRICS = tuple(TEST_PREFIX + name for name in (*SAMPLE_METRICS, "elbo"))
# Measured on the sweep's images against the requested thickness alone, no real image involved: the test columns
# repeat the validation value (class_parity, by contrast, compares with each split's real widths).
SPLIT_FREE_METRICS = ("thickness_corr", "thickness_mae")
_TEST = [Metric(TEST_PREFIX + metric.name.removeprefix(VALIDATION_PREFIX), metric.mode,
                f"{metric.description} (test split, once at the end)", metric.low, metric.high, metric.smallest_effect,
                metric.why)
         for metric in _METRICS if metric.name in (*SAMPLE_METRICS, ELBO)]
METRICS: dict[str, Metric] = {metric.name: metric for metric in _METRICS + _TEST}
METRICS[CAS] = Metric(CAS, "max", "accuracy on the real test split of a classifier trained on the model's class-"
                      "conditioned samples (test split, once at the end)", 0, 1, smallest_effect=0.02,
                      why="2 points, as class_accuracy: one test image in 50")
# Not objectives: they add the run's own grey weight and L2 penalty, so two runs' values measure different things.
WEIGHT_DEPENDENT = ("loss", "val_loss")
CLASSIFIER_ACCURACY = "classifier_accuracy"  # the reference classifier's test accuracy, reported with every epoch
CLASSIFIER_SHA256 = "classifier_sha256"  # which classifier measured an epoch: one per study (report.py checks)
# The real validation images' own value of a sample metric, reported with every epoch, so a figure can mark where
# real data sits (real digits are about half grey: "sharper" can overshoot reality).
REAL_PREFIX = "real_"
REAL_METRICS = ("grey_fraction", "collapse_rate")
# Sample metrics whose better value is the real images' own, not an end of the scale (grey_gap measures the distance).
REAL_TARGET_METRICS = ("grey_fraction",)
# What else an epoch's report carries by name: its status and, when checkpointing, the checkpoint folder.
STATUS_RUNNING, STATUS_COMPLETED, STATUS_DIVERGED = "running", "completed", "diverged"
CHECKPOINT_KEY = "checkpoint"
# How many generated and real samples fid and kid compared (the split may hold fewer than eval_samples). FID's bias
# shrinks with N (~6 at 500, ~3 at 1000 for two sets from one distribution), so fids compare only at equal N.
FID_SAMPLES = "fid_samples"

INK_LEVEL = 0.1
WHITE_LEVEL = 0.9
SWEEP_THICKNESS = np.linspace(-1.0, 1.0, 9).astype(np.float32)


# ---------------------------------------------------------------- per-image measurements


def stroke_width(images: np.ndarray) -> np.ndarray:
    """Ink area / skeleton length per image (pixels); NaN where there is no ink."""
    from skimage.morphology import skeletonize

    ink = images > 0.5
    area = ink.reshape(len(ink), -1).sum(axis=1).astype(np.float64)
    length = np.array([skeletonize(mask).sum() if mask.any() else 0 for mask in ink], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(length > 0, area / np.maximum(length, 1), np.nan)


def relative_widths(widths: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class: median stroke width / median of the other classes' medians (NaN if undefined)."""
    medians = np.full(NUM_CLASSES, np.nan)
    for digit in range(NUM_CLASSES):
        values = widths[(labels == digit) & np.isfinite(widths)]
        if len(values):
            medians[digit] = np.median(values)
    relative = np.full(NUM_CLASSES, np.nan)
    for digit in range(NUM_CLASSES):
        others = np.delete(medians, digit)
        others = others[np.isfinite(others)]
        if len(others) and np.median(others) > 0:
            relative[digit] = medians[digit] / np.median(others)
    return relative


# ---------------------------------------------------------------- metrics on image sets


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    from scipy import linalg  # scipy loads when a metric is computed: the commands' early refusals never need it

    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # a near-singular product: regularised below
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # near-singular product: regularise, as common FID code does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    # The square root of a product of two covariances is real up to round-off; a large imaginary part means the
    # estimate is broken (too few samples for the features), not something to drop.
    imaginary = float(np.abs(np.imag(np.diagonal(root))).max())
    if imaginary > 1e-3 * max(1.0, float(np.abs(np.real(np.diagonal(root))).max())):
        raise ValueError(f"FID: the covariance product's square root has an imaginary part of {imaginary:.3g}")
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root)))


def kernel_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Kernel inception distance: the unbiased estimate of MMD² with the cubic kernel (x·y / d + 1)³ (Bińkowski et
    al. 2018). Unlike FID it has no small-sample bias, so its expected value does not depend on N."""
    dimension = features_a.shape[1]
    a, b = features_a.astype(np.float64), features_b.astype(np.float64)
    kernel_aa, kernel_bb = (a @ a.T / dimension + 1) ** 3, (b @ b.T / dimension + 1) ** 3
    kernel_ab = (a @ b.T / dimension + 1) ** 3
    m, n = len(a), len(b)
    within_a = (kernel_aa.sum() - np.trace(kernel_aa)) / (m * (m - 1))
    within_b = (kernel_bb.sum() - np.trace(kernel_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * kernel_ab.mean())


def grey_fraction(images: np.ndarray) -> float:
    """Share of ink pixels (> 0.1) that are grey (< 0.9); NaN when there is no ink at all (a blank image is not
    "perfectly sharp": it has no stroke to be sharp)."""
    ink = images > INK_LEVEL
    grey = ink & (images < WHITE_LEVEL)
    return float(grey.sum() / ink.sum()) if ink.any() else float("nan")


def ink_w1(images: np.ndarray, real_images: np.ndarray) -> float:
    """Wasserstein-1 between ink-pixel intensities; 1.0 (the maximum on [0, 1]) if one side has no ink."""
    generated, real = images[images > INK_LEVEL], real_images[real_images > INK_LEVEL]
    if not len(generated) or not len(real):
        return 1.0
    from scipy import stats

    return float(stats.wasserstein_distance(generated, real))


def collapse_rate(images: np.ndarray) -> float:
    """Share of images that are effectively blank: max pixel < 0.5 or white ratio < 0.02."""
    flat = images.reshape(len(images), -1)
    return float(((flat.max(axis=1) < 0.5) | (white_ratio(images) < 0.02)).mean())


def class_accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
    return float((predicted == requested).mean())


def class_parity(images: np.ndarray, labels: np.ndarray, groups: np.ndarray, real_relative: np.ndarray) -> float:
    """Mean over groups (thickness values) and classes of |relative width generated - real|.

    A class with no measurable stroke counts as relative width 0, so blank images score badly.
    """
    widths = stroke_width(images)
    differences = []
    for group in np.unique(groups):
        members = groups == group
        relative = np.nan_to_num(relative_widths(widths[members], labels[members]), nan=0.0)
        present = np.isin(np.arange(NUM_CLASSES), labels[members]) & np.isfinite(real_relative)
        differences.append(np.abs(relative - real_relative)[present])
    return float(np.mean(np.concatenate(differences)))


def thickness_agreement(requested: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """(Spearman correlation, mean abs. error); the correlation is NaN when either side is constant (undefined: a
    model that draws the same stroke whatever it is asked has no rank order to agree with)."""
    if np.ptp(measured) == 0 or np.ptp(requested) == 0:
        correlation = float("nan")
    else:
        from scipy import stats

        correlation = float(stats.spearmanr(requested, measured).statistic)
    return correlation, float(np.mean(np.abs(requested - measured)))


# ---------------------------------------------------------------- the fixed evaluation set


@dataclass(frozen=True)
class EvaluationSet:
    """Fixed conditions, latents and real references, identical for every trial with the same sizes."""

    conditions: np.ndarray  # (eval_samples, 11) from held-out images
    labels: np.ndarray
    latents: np.ndarray  # (eval_samples, latent_dim)
    sweep_conditions: np.ndarray  # (10 * 9 * sweep_latents, 11)
    sweep_labels: np.ndarray
    sweep_thickness: np.ndarray
    sweep_latents: np.ndarray
    real_images: np.ndarray  # the held-out images behind `conditions`
    real_features: np.ndarray | None  # None when built without a classifier (sweeps only)
    real_relative: np.ndarray
    stats: ThicknessStats

    def real_values(self) -> dict[str, float]:
        """REAL_METRICS measured on the real images behind the conditions (real_grey_fraction, ...)."""
        functions = {"grey_fraction": grey_fraction, "collapse_rate": collapse_rate}
        return {REAL_PREFIX + name: functions[name](self.real_images) for name in REAL_METRICS}


def make_evaluation_set(held_out: Split, stats: ThicknessStats, classifier, latent_dim: int,
                        eval_samples: int, sweep_latents: int, eval_seed: int) -> EvaluationSet:
    """Pick held-out conditions and draw latents with fixed seeds; measure the real references once.

    `classifier` may be None where only the thickness sweep is needed (no fid, no class accuracy).
    """
    chosen = stratified_subset(held_out.labels, eval_samples, seed=eval_seed)
    if classifier is not None and len(chosen) < MIN_FID_SAMPLES:
        raise ValueError(f"fid and kid would compare {len(chosen)} samples (the split holds {len(held_out.labels)}); "
                         f"they need at least {MIN_FID_SAMPLES}: raise validation_fraction / test_fraction")
    labels = held_out.labels[chosen]
    real_images = held_out.images[chosen]
    rng = np.random.default_rng(eval_seed)
    latents = rng.standard_normal((len(chosen), latent_dim)).astype(np.float32)
    # Sweep: each (class, latent) row is drawn at every thickness value, same latent across the row.
    sweep_rng = np.random.default_rng(eval_seed + 1)
    row_latents = sweep_rng.standard_normal((NUM_CLASSES * sweep_latents, latent_dim)).astype(np.float32)
    row_labels = np.repeat(np.arange(NUM_CLASSES), sweep_latents)
    sweep_labels = np.repeat(row_labels, len(SWEEP_THICKNESS))
    sweep_thickness = np.tile(SWEEP_THICKNESS, len(row_labels))
    real_features = classifier.predict(real_images)[0] if classifier is not None else None
    return EvaluationSet(
        conditions=make_conditions(labels, held_out.thickness[chosen]),
        labels=labels,
        latents=latents,
        sweep_conditions=make_conditions(sweep_labels, sweep_thickness),
        sweep_labels=sweep_labels,
        sweep_thickness=sweep_thickness,
        sweep_latents=np.repeat(row_latents, len(SWEEP_THICKNESS), axis=0),
        real_images=real_images,
        real_features=real_features,
        real_relative=relative_widths(stroke_width(held_out.images), held_out.labels),
        stats=stats,
    )


def fid_sample_problem(labels: np.ndarray, config) -> str | None:
    """Why a dataset with these labels cannot give fid its MIN_FID_SAMPLES under `config`'s splits, or None; the N
    that fid will compare is min(eval_samples, the validation split, the test split)."""
    _, validation, test = split_indices(labels, config.validation_fraction, config.test_fraction)
    if min(len(validation), len(test)) >= MIN_FID_SAMPLES:
        return None
    return (f"the validation and test splits hold {len(validation)} and {len(test)} images; fid and kid need at least "
            f"{MIN_FID_SAMPLES} each: raise validation_fraction / test_fraction, or use more data")


def evaluation_set_for(config, split: Split, stats: ThicknessStats, classifier) -> EvaluationSet:
    """make_evaluation_set with a TrialConfig's sizes and seed (the same latents on any split)."""
    return make_evaluation_set(split, stats, classifier, config.latent_dim, config.eval_samples, config.sweep_latents,
                               config.eval_seed)


def generate(decoder, latents: np.ndarray, conditions: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Decoder outputs clipped to [0, 1], shape (N, 28, 28).

    predict_on_batch runs Keras' compiled predict function: bitwise the same images as an eager call, and about
    20 % faster for the per-epoch samples and sweep (README, "Tests and benchmarks").
    """
    outputs = [
        np.asarray(decoder.predict_on_batch([latents[i : i + batch_size], conditions[i : i + batch_size]]))
        for i in range(0, len(latents), batch_size)
    ]
    return np.clip(np.concatenate(outputs)[..., 0].astype(np.float32), 0.0, 1.0)


def image_metrics(images: np.ndarray, labels: np.ndarray, evaluation: EvaluationSet, classifier) -> dict[str, float]:
    """class_accuracy, fid, kid (and the N they compared), grey_fraction, grey_gap, ink_w1, collapse_rate for images
    drawn for `labels`."""
    features, predicted = classifier.predict(images)
    grey = grey_fraction(images)
    return {
        "class_accuracy": class_accuracy(predicted, labels),
        "fid": frechet_distance(features, evaluation.real_features),
        "kid": kernel_distance(features, evaluation.real_features),
        FID_SAMPLES: len(images),
        "grey_fraction": grey,
        "grey_gap": abs(grey - grey_fraction(evaluation.real_images)),
        "ink_w1": ink_w1(images, evaluation.real_images),
        "collapse_rate": collapse_rate(images),
    }


def sweep_profile(images: np.ndarray, evaluation: EvaluationSet) -> list[dict]:
    """One row per (digit, requested thickness) of the sweep: measured thickness and relative stroke width.

    `measured_thickness` uses the trial's own normalisation; `relative_width` is the class's median
    stroke width over the other classes' at that thickness (as in class_parity), next to the real
    digits' `real_relative_width`.
    """
    measured = thickness_of(images, evaluation.sweep_labels, evaluation.stats)
    widths = stroke_width(images)
    rows = []
    for value in np.unique(evaluation.sweep_thickness):
        members = evaluation.sweep_thickness == value
        relative = relative_widths(widths[members], evaluation.sweep_labels[members])
        for digit in range(NUM_CLASSES):
            chosen = members & (evaluation.sweep_labels == digit)
            if not chosen.any():
                continue
            rows.append({"digit": digit, "requested_thickness": float(value),
                         "measured_thickness": float(np.mean(measured[chosen])),
                         "measured_thickness_std": float(np.std(measured[chosen])),
                         "relative_width": float(relative[digit]),
                         "real_relative_width": float(evaluation.real_relative[digit])})
    return rows


def sweep_metrics(images: np.ndarray, evaluation: EvaluationSet) -> dict[str, float]:
    """thickness_corr, thickness_mae, class_parity for the thickness-sweep images."""
    measured = thickness_of(images, evaluation.sweep_labels, evaluation.stats)
    correlation, error = thickness_agreement(evaluation.sweep_thickness, measured)
    parity = class_parity(images, evaluation.sweep_labels, evaluation.sweep_thickness, evaluation.real_relative)
    return {"thickness_corr": correlation, "thickness_mae": error, "class_parity": parity}


def evaluate_decoder(decoder, evaluation: EvaluationSet, classifier) -> dict[str, float]:
    """Every sample metric of docs/design.md §2 for one decoder."""
    samples = generate(decoder, evaluation.latents, evaluation.conditions)
    sweep = generate(decoder, evaluation.sweep_latents, evaluation.sweep_conditions)
    return {**image_metrics(samples, evaluation.labels, evaluation, classifier), **sweep_metrics(sweep, evaluation)}
