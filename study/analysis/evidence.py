"""The evidence behind a verdict: an effect, its 95 % interval, its p-value, Holm's correction, an equivalence test
against the smallest effect of interest (TOST), and the samples that would decide it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # family-wise error rate of one study's claims (Holm)
CONFIDENCE = 0.95  # of every interval
TARGET_POWER = 0.8  # "N seeds would decide it": the chance of p < alpha if the true effect is the smallest of interest
MAX_SAMPLES = 1000  # beyond this a sample count is reported as "> 1000"


class Effect:
    """What every test below offers a verdict: effect, interval, p-value, an equivalence test against a smallest
    effect of interest δ, power and the sample size that would decide it.

    Subclasses set `effect`, `low`, `high`, `p_value`, `n` (and `untestable`, why not, when they cannot test) and
    implement `power(alpha, n, effect)` and `interval(confidence)`.
    """

    effect: float
    low: float
    high: float
    p_value: float
    n: int  # the sample size that `needed` counts in (seeds per model, pairs, trials)
    unit: str = "seeds per model"
    symbol: str = "Δ"  # how the effect is written
    untestable: str = ""  # why there is no test (too few values, zero variance), "" when there is one

    def power(self, alpha: float = ALPHA, n: int | None = None, effect: float | None = None) -> float:
        """Two-sided power at `effect` (default: the observed one) with n per side (default: as measured)."""
        raise NotImplementedError

    def interval(self, confidence: float) -> tuple[float, float]:
        raise NotImplementedError

    @property
    def testable(self) -> bool:
        return not self.untestable and math.isfinite(self.p_value)

    def n_text(self) -> str:
        return f"n={self.n}"

    def equivalent(self, delta: float, alpha: float = ALPHA) -> bool:
        """Two one-sided tests at `alpha`: the (1 - 2 alpha) interval lies inside (-delta, +delta), so no effect as
        large as delta is left (Schuirmann 1987)."""
        if not self.testable or not delta > 0:
            return False
        low, high = self.interval(1 - 2 * alpha)
        return -delta < low and high < delta

    def needed(self, delta: float, alpha: float = ALPHA, power: float = TARGET_POWER) -> int | None:
        """The smallest sample size whose power to find an effect of `delta` (the smallest of interest) reaches
        `power` at the observed variance; None without a test or a delta, or when more than MAX_SAMPLES would be
        needed."""
        if not self.testable or not delta > 0 or not self.power(alpha, MAX_SAMPLES, delta) >= power:
            return None
        low, high = 2, MAX_SAMPLES  # power grows with n: the first n that reaches it, by bisection
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if self.power(alpha, middle, delta) >= power else (middle + 1, high)
        return low

    def interval_text(self) -> str:
        return f"[{self.low:+.3g}, {self.high:+.3g}]"


def _finite(values) -> np.ndarray:
    values = np.asarray(values, float)
    return values[np.isfinite(values)]


class _TInterval:
    """The t interval of an effect with standard error `se` and `df` degrees of freedom (set by _set_t_test)."""

    def interval(self, confidence: float) -> tuple[float, float]:
        half = float(stats.t.ppf(0.5 + confidence / 2, self.df)) * self.se
        return self.effect - half, self.effect + half


@dataclass(frozen=True)
class WelchDifference(_TInterval, Effect):
    """mean(candidate) - mean(reference), Welch's t interval and test (unequal variances), power at that effect."""

    candidate: np.ndarray
    reference: np.ndarray
    unit: str = "seeds per model"

    def __post_init__(self):
        c, r = _finite(self.candidate), _finite(self.reference)
        object.__setattr__(self, "n", min(len(c), len(r)))
        effect = float(np.mean(c) - np.mean(r)) if len(c) and len(r) else math.nan
        object.__setattr__(self, "effect", effect)
        se, df = _welch(np.var(c, ddof=1), len(c), np.var(r, ddof=1), len(r)) if min(len(c), len(r)) >= 2 else (0, 0)
        _set_t_test(self, se, df, f"fewer than 2 {self.unit.split(' per ')[0]} on a side" if self.n < 2 else "")

    def n_text(self) -> str:
        c, r = len(_finite(self.candidate)), len(_finite(self.reference))
        return f"n={c}" if c == r else f"n={c} vs {r}"

    def power(self, alpha: float = ALPHA, n: int | None = None, effect: float | None = None) -> float:
        """Two-sided Welch test's power with n seeds per side (default: the ones measured) at `effect` (default: the
        observed one) and the observed variances."""
        c, r = _finite(self.candidate), _finite(self.reference)
        if not self.testable:
            return math.nan
        n_c, n_r = (len(c), len(r)) if n is None else (n, n)
        se, df = _welch(np.var(c, ddof=1), n_c, np.var(r, ddof=1), n_r)
        return _t_power(self.effect if effect is None else effect, se, df, alpha)


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
            object.__setattr__(self, "untestable", f"fewer than 4 {self.unit}" if len(x) < 4 else "a constant variable")
            return
        result = stats.spearmanr(x, y)
        object.__setattr__(self, "effect", float(result.statistic))
        object.__setattr__(self, "p_value", float(result.pvalue))
        low, high = self.interval(CONFIDENCE)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def interval(self, confidence: float) -> tuple[float, float]:
        rho = float(np.clip(self.effect, -0.999999, 0.999999))
        half = float(stats.norm.ppf(0.5 + confidence / 2)) * self._scale(self.n)
        return math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)

    def _scale(self, n: int) -> float:
        """Standard error of Fisher's z at n pairs (Fieller et al.'s 1.06 for Spearman)."""
        return math.sqrt(1.06 / (n - 3))

    def power(self, alpha: float = ALPHA, n: int | None = None, effect: float | None = None) -> float:
        n = self.n if n is None else n
        effect = self.effect if effect is None else effect
        if not math.isfinite(effect) or not self.testable or n - 3 - getattr(self, "kept", 0) < 1:
            return math.nan
        shift = abs(math.atanh(float(np.clip(effect, -0.999999, 0.999999)))) / self._scale(n)
        critical = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(critical - shift) + stats.norm.cdf(-critical - shift))


@dataclass(frozen=True)
class PartialRankCorrelation(RankCorrelation):
    """Spearman's correlation of x and y with the other searched settings held fixed: the correlation of the ranks'
    residuals after a least-squares fit on the covariates' ranks (categorical ones as indicator columns). Its
    Fisher-z interval and test lose one degree of freedom per covariate."""

    covariates: np.ndarray = None  # (n, k), NaN-free; k = 0 is Spearman's own

    def __post_init__(self):
        x, y = np.asarray(self.x, float), np.asarray(self.y, float)
        covariates = np.zeros((len(x), 0)) if self.covariates is None else np.asarray(self.covariates, float)
        keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(covariates).all(axis=1)
        x, y, covariates = x[keep], y[keep], covariates[keep]
        covariates = covariates[:, np.ptp(covariates, axis=0) > 0] if len(x) else covariates
        object.__setattr__(self, "n", len(x))
        object.__setattr__(self, "kept", covariates.shape[1])
        if len(x) - 3 - covariates.shape[1] < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            for name in ("effect", "low", "high", "p_value"):
                object.__setattr__(self, name, math.nan)
            object.__setattr__(self, "untestable", f"{len(x)} {self.unit} for {covariates.shape[1]} other settings "
                                                   "held fixed: too few" if np.ptp(x) and np.ptp(y) else
                                                   "a constant variable")
            return
        design = np.column_stack([np.ones(len(x)), *(stats.rankdata(column) for column in covariates.T)])

        def residual(values):
            ranks = stats.rankdata(values)
            return ranks - design @ np.linalg.lstsq(design, ranks, rcond=None)[0]

        rx, ry = residual(x), residual(y)
        rho = float(np.corrcoef(rx, ry)[0, 1]) if rx.std() > 0 and ry.std() > 0 else 0.0
        df = len(x) - 2 - covariates.shape[1]
        t_value = rho * math.sqrt(df / max(1 - rho * rho, 1e-12))
        object.__setattr__(self, "effect", rho)
        object.__setattr__(self, "p_value", float(2 * stats.t.sf(abs(t_value), df)))
        low, high = self.interval(CONFIDENCE)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def _scale(self, n: int) -> float:
        return math.sqrt(1.06 / (n - 3 - self.kept))


@dataclass(frozen=True)
class ProportionDifference(Effect):
    """share(candidate) - share(reference) of trials where something happened (e.g. a collapse), with Newcombe's
    hybrid score interval (Wilson intervals combined; good at small n and at 0 or 1), Fisher's exact test, and the
    normal approximation's power."""

    hits: tuple[int, int]  # candidate, reference
    totals: tuple[int, int]
    unit: str = "trials per group"

    def __post_init__(self):
        (k_c, k_r), (n_c, n_r) = self.hits, self.totals
        object.__setattr__(self, "n", min(n_c, n_r))
        if n_c < 2 or n_r < 2:
            for name in ("effect", "low", "high", "p_value"):
                object.__setattr__(self, name, math.nan)
            object.__setattr__(self, "untestable", "fewer than 2 trials in a group")
            return
        object.__setattr__(self, "effect", k_c / n_c - k_r / n_r)
        object.__setattr__(self, "p_value", float(stats.fisher_exact([[k_c, n_c - k_c], [k_r, n_r - k_r]]).pvalue))
        low, high = self.interval(CONFIDENCE)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def n_text(self) -> str:
        return f"{self.hits[0]}/{self.totals[0]} vs {self.hits[1]}/{self.totals[1]}"

    def interval(self, confidence: float) -> tuple[float, float]:
        (k_c, k_r), (n_c, n_r) = self.hits, self.totals
        (low_c, high_c), (low_r, high_r) = _wilson(k_c, n_c, confidence), _wilson(k_r, n_r, confidence)
        p_c, p_r = k_c / n_c, k_r / n_r
        return (self.effect - math.hypot(p_c - low_c, high_r - p_r),
                self.effect + math.hypot(high_c - p_c, p_r - low_r))

    def power(self, alpha: float = ALPHA, n: int | None = None, effect: float | None = None) -> float:
        if not self.testable:
            return math.nan
        effect = self.effect if effect is None else effect
        (k_c, k_r), (n_c, n_r) = self.hits, self.totals
        shared = min(max((k_c + k_r) / (n_c + n_r), 0.05), 0.95)  # a variance even when no trial or every one hit
        n_c, n_r = (n_c, n_r) if n is None else (n, n)
        se = math.sqrt(shared * (1 - shared) * (1 / n_c + 1 / n_r))
        critical = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.sf(critical - abs(effect) / se) + stats.norm.cdf(-critical - abs(effect) / se))


def _wilson(hits: int, total: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion."""
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    share = hits / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def _set_t_test(found: Effect, se: float, df: float, untestable: str) -> None:
    """`found`'s t interval and two-sided p-value for its effect with standard error `se`, or NaNs and why there is
    no test: too few values, or values that agree exactly (zero variance: a t test has nothing to weigh, and a
    difference between constant groups is not evidence about other seeds)."""
    if not untestable and not se > 1e-12 * max(1.0, abs(found.effect)):  # round-off of equal values is no spread
        untestable = "zero variance: the values agree exactly"
    for name, value in (("se", se), ("df", df), ("untestable", untestable)):
        object.__setattr__(found, name, value)
    if untestable:
        for name in ("low", "high", "p_value"):
            object.__setattr__(found, name, math.nan)
        return
    low, high = _TInterval.interval(found, CONFIDENCE)
    for name, value in (("low", low), ("high", high), ("p_value", float(2 * stats.t.sf(abs(found.effect) / se, df)))):
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
    if not se > 0:
        return math.nan
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
