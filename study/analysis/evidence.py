"""The evidence behind a verdict: an effect, its 95 % interval, its p-value, Holm's correction, power, samples needed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # family-wise error rate of one study's claims (Holm)
CONFIDENCE = 0.95  # of every interval
TARGET_POWER = 0.8  # "N seeds would decide it": the chance of p < alpha if the observed effect is the true one
MAX_SAMPLES = 1000  # beyond this a sample count is reported as "> 1000"


class Effect:
    """What every test below offers a verdict: effect, interval, p-value, power and the sample size for a power.

    Subclasses set `effect`, `low`, `high`, `p_value`, `n` and implement `power(alpha, n)`.
    """

    effect: float
    low: float
    high: float
    p_value: float
    n: int  # the sample size that `needed` counts in (seeds per model, pairs, trials)
    unit: str = "seeds per model"
    symbol: str = "Δ"  # how the effect is written

    def power(self, alpha: float = ALPHA, n: int | None = None) -> float:
        raise NotImplementedError

    @property
    def testable(self) -> bool:
        return math.isfinite(self.p_value)

    def needed(self, alpha: float = ALPHA, power: float = TARGET_POWER) -> int | None:
        """The smallest sample size whose power at the observed effect reaches `power`; None if no effect was seen
        (no sample size decides a difference of zero) or more than MAX_SAMPLES would be needed."""
        if not self.testable or self.effect == 0 or not math.isfinite(self.effect):
            return None
        return next((n for n in range(2, MAX_SAMPLES + 1) if self.power(alpha, n) >= power), None)

    def interval_text(self) -> str:
        return f"[{self.low:+.3g}, {self.high:+.3g}]"


@dataclass(frozen=True)
class WelchDifference(Effect):
    """mean(candidate) - mean(reference), Welch's t interval and test (unequal variances), power at that effect."""

    candidate: np.ndarray
    reference: np.ndarray
    unit: str = "seeds per model"

    def __post_init__(self):
        c, r = np.asarray(self.candidate, float), np.asarray(self.reference, float)
        object.__setattr__(self, "n", min(len(c), len(r)))
        effect = float(np.mean(c) - np.mean(r)) if len(c) and len(r) else math.nan
        object.__setattr__(self, "effect", effect)
        if len(c) < 2 or len(r) < 2:
            for name in ("low", "high", "p_value"):
                object.__setattr__(self, name, math.nan)
            return
        _set_t_test(self, *_welch(np.var(c, ddof=1), len(c), np.var(r, ddof=1), len(r)))

    def power(self, alpha: float = ALPHA, n: int | None = None) -> float:
        """Two-sided Welch test's power with n seeds per side (default: the ones measured) at the observed effect and
        the observed variances."""
        c, r = np.asarray(self.candidate, float), np.asarray(self.reference, float)
        if len(c) < 2 or len(r) < 2:
            return math.nan
        n_c, n_r = (len(c), len(r)) if n is None else (n, n)
        se, df = _welch(np.var(c, ddof=1), n_c, np.var(r, ddof=1), n_r)
        return _t_power(self.effect, se, df, alpha)


@dataclass(frozen=True)
class PairedDifference(Effect):
    """Mean of paired differences (e.g. last epoch - first epoch of each trial) with its t interval and test."""

    differences: np.ndarray
    unit: str = "trials"

    def __post_init__(self):
        d = np.asarray(self.differences, float)
        object.__setattr__(self, "n", len(d))
        object.__setattr__(self, "effect", float(np.mean(d)) if len(d) else math.nan)
        if len(d) < 2:
            for name in ("low", "high", "p_value"):
                object.__setattr__(self, name, math.nan)
            return
        _set_t_test(self, float(np.std(d, ddof=1) / math.sqrt(len(d))), len(d) - 1)

    def power(self, alpha: float = ALPHA, n: int | None = None) -> float:
        d = np.asarray(self.differences, float)
        if len(d) < 2:
            return math.nan
        n = len(d) if n is None else n
        return _t_power(self.effect, float(np.std(d, ddof=1)) / math.sqrt(n), n - 1, alpha)


@dataclass(frozen=True)
class RankCorrelation(Effect):
    """Spearman's correlation with a Fisher-z interval (standard error sqrt(1.06 / (n - 3)), Fieller et al.) and
    the power of its test at the observed correlation."""

    x: np.ndarray
    y: np.ndarray
    unit: str = "trials"
    symbol: str = "ρ"

    def __post_init__(self):
        x, y = np.asarray(self.x, float), np.asarray(self.y, float)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        object.__setattr__(self, "n", len(x))
        if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
            for name in ("effect", "low", "high", "p_value"):
                object.__setattr__(self, name, math.nan)
            return
        result = stats.spearmanr(x, y)
        rho = float(np.clip(result.statistic, -0.999999, 0.999999))
        half = float(stats.norm.ppf(0.5 + CONFIDENCE / 2)) * math.sqrt(1.06 / (len(x) - 3))
        object.__setattr__(self, "effect", float(result.statistic))
        object.__setattr__(self, "low", math.tanh(math.atanh(rho) - half))
        object.__setattr__(self, "high", math.tanh(math.atanh(rho) + half))
        object.__setattr__(self, "p_value", float(result.pvalue))

    def power(self, alpha: float = ALPHA, n: int | None = None) -> float:
        n = self.n if n is None else n
        if not math.isfinite(self.effect) or n < 4:
            return math.nan
        shift = abs(math.atanh(float(np.clip(self.effect, -0.999999, 0.999999)))) / math.sqrt(1.06 / (n - 3))
        critical = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(critical - shift) + stats.norm.cdf(-critical - shift))


def _set_t_test(found: Effect, se: float, df: float) -> None:
    """`found`'s t interval and two-sided p-value for its effect with standard error `se` (0: the seeds agree
    exactly, so the difference is exact)."""
    effect = found.effect
    if se == 0:
        low = high = effect
        p = 1.0 if effect == 0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
        low, high, p = effect - half, effect + half, float(2 * stats.t.sf(abs(effect) / se, df))
    for name, value in (("low", low), ("high", high), ("p_value", p)):
        object.__setattr__(found, name, value)


def _welch(var_c: float, n_c: int, var_r: float, n_r: int) -> tuple[float, float]:
    """(standard error of the difference of means, Welch-Satterthwaite degrees of freedom)."""
    a, b = var_c / n_c, var_r / n_r
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / (n_c - 1) + b**2 / (n_r - 1)) if a + b > 0 else float(n_c + n_r - 2)
    return se, df


def _t_power(effect: float, se: float, df: float, alpha: float) -> float:
    """Power of a two-sided t test at `effect` with standard error `se` (noncentral t)."""
    if not math.isfinite(effect):
        return math.nan
    if se == 0:
        return 1.0 if effect != 0 else alpha
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = effect / se
    power = float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))
    if math.isfinite(power):
        return power
    # scipy's noncentral t gives NaN far in its tails, where the normal approximation is exact enough
    return float(stats.norm.sf(critical - abs(shift)) + stats.norm.cdf(-critical - abs(shift)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test): reject where < ALPHA."""
    tested = sorted((p, index) for index, p in enumerate(p_values) if math.isfinite(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def mean_interval(values) -> tuple[float, float]:
    """The t-based 95 % interval of the mean of `values` (NaN with fewer than 2)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)) * float(np.std(values, ddof=1)) / math.sqrt(
        len(values))
    return float(np.mean(values)) - half, float(np.mean(values)) + half
