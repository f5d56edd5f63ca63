"""Verdicts on the claims (a)-(e) of docs/design.md §1, each with the numbers behind it, from a study's tables."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cvae.data import class_name
from cvae.metrics import METRICS
from study.tables.records import (FINISHED, MODEL, PARAM_PREFIX, SEED_PARAMETER, STATUS_COMPLETED, STATUS_PRUNED,
                                  param_column, with_models)
from study.tables.selection import on_test_split, real_level, split_label
from study.analysis.evidence import (ALPHA, CONFIDENCE, MAX_SAMPLES, Effect, PartialRankCorrelation,
                                     ProportionDifference, WelchDifference, holm)

CLAIMS = {
    "a": "the thickness condition is respected",
    "b": "per-class normalisation fixed '1' being drawn thicker than other classes at the same condition value",
    "c": "the grey loss made images much sharper",
    "d": "more epochs reduce awkward images",
    "e": "grey loss from epoch 1 can collapse to black",
}
RESPECTED_CORRELATION = 0.8  # Spearman requested vs measured thickness that counts as "respected"
COLLAPSED = 0.5  # collapse_rate at or above which a trial counts as collapsed to black
TOO_FEW = "not testable"  # a comparison with fewer than 2 values on a side, or zero variance, cannot be tested
UNDECIDED = "undecided"  # neither significant nor shown smaller than δ: more samples would decide it
NO_EFFECT = "no effect larger than δ"  # the (1 - 2α) interval lies inside ±δ (two one-sided tests)
SMALLEST_CORRELATION = 0.3  # δ of a rank correlation: weaker than this is no association a reader would act on
# δ of one class's stroke width over real (relative width): a "1" 10 % wider than real digits' is what a grid of
# samples shows; class_parity averages ten classes, so its δ (0.02) would ask one class for a tenth of that.
SMALLEST_WIDTH_EXCESS = 0.1
SMALLEST_COLLAPSE_SHARE = 0.2  # δ of (e): one trial in five more (or fewer) collapsing is a difference worth a warm-up
# Below these a verdict is "too little evidence", whatever the numbers say (a 4-trial x 2-epoch study decides
# nothing): seeds per model for a grid, finished trials and epochs for a search.
MIN_SEEDS, MIN_TRIALS, MIN_EPOCHS = 3, 8, 3


@dataclass(frozen=True)
class Verdict:
    claim: str  # "a".."e"
    # supported | not supported (every effect smaller than δ) | contradicted | undecided (N would decide it) |
    # partly supported (decided tests that disagree) | not tested | too little evidence
    verdict: str
    evidence: str

    def line(self) -> str:
        return f"({self.claim}) {CLAIMS[self.claim]}: **{self.verdict}**: {self.evidence}"


@dataclass(frozen=True)
class Finding:
    """One test behind a verdict: an effect with its interval and p-value, which sign supports the claim, the
    smallest effect of interest δ (the metric's, cvae/metrics.py), and the Holm-adjusted p-value across the study's
    whole family of tests (set by `decided`)."""

    what: str  # how the effect reads, e.g. "class_parity model_2 (per_class) 0.21 vs model_1 (global) 0.25"
    effect: Effect
    supports: int  # +1: a positive effect supports the claim; -1: a negative one does
    delta: float  # δ: the smallest effect a reader would care about, in the effect's units
    p_adjusted: float = math.nan
    family: int = 1  # tests in the family: equivalence and samples needed use ALPHA / family (Bonferroni, >= Holm)
    looks: int = 1  # verdicts already seen on this data (a pool of studies run after looking): each at ALPHA / looks

    @property
    def p_value(self) -> float:
        return self.effect.p_value

    @property
    def alpha(self) -> float:
        """The α of this one test's equivalence check and sample count: the family's, split over the looks."""
        return ALPHA / max(self.family, 1) / self.looks

    def outcome(self) -> str:
        """better | worse (significant after Holm) | no effect larger than δ (the (1 - 2α/family) interval inside
        ±δ) | undecided (neither) | not testable (too few values, zero variance)"""
        if not self.effect.testable:
            return TOO_FEW
        p = self.p_adjusted if math.isfinite(self.p_adjusted) else self.p_value
        if p < ALPHA / self.looks:
            return "better" if self.effect.effect * self.supports > 0 else "worse"
        return NO_EFFECT if self.effect.equivalent(self.delta, self.alpha) else UNDECIDED

    @functools.cached_property
    def needed(self) -> int | None:
        """Samples that would decide it: 80 % power to find an effect of δ at the family's α (computed once, read by
        text and verdict)."""
        return self.effect.needed(self.delta, alpha=self.alpha)

    def text(self) -> str:
        effect = self.effect
        if not effect.testable:
            return f"{self.what} ({effect.n_text()}: {TOO_FEW}, {effect.untestable})"
        adjusted = f", Holm {self.p_adjusted:.2g}" if math.isfinite(self.p_adjusted) else ""
        outcome = self.outcome()
        if outcome == UNDECIDED:
            needed = self.needed
            outcome += (f": {needed} {effect.unit} would decide it" if needed else
                        f": no {effect.unit} count up to {MAX_SAMPLES} would decide it")
        return (f"{self.what}: {effect.symbol} {effect.effect:+.3g}, {CONFIDENCE:.0%} CI {effect.interval_text()}, "
                f"δ {self.delta:g}, p={self.p_value:.2g}{adjusted}, {effect.n_text()}: {outcome}")


def compare(frame: pd.DataFrame, metric: str, candidate, reference, column: str = MODEL,
            labels: tuple[str, str] | None = None, unit: str = "seeds per model", name: str | None = None,
            delta: float | None = None) -> Finding:
    """Welch's difference of `metric` between the rows whose `column` is `candidate` and those that are `reference`
    (lower is better for a "min" metric), against the metric's smallest effect of interest (or `delta`)."""
    values = {name: frame.loc[frame[column] == name, metric].astype(float).dropna().to_numpy()
              for name in (candidate, reference)}
    names = labels or (str(candidate), str(reference))
    means = [f"{np.mean(values[name]):.4g}" if len(values[name]) else "–" for name in (candidate, reference)]
    lower_is_better = METRICS[metric].mode == "min" if metric in METRICS else True
    return Finding(f"{name or metric} {names[0]} {means[0]} vs {names[1]} {means[1]}",
                   WelchDifference(values[candidate], values[reference], unit), -1 if lower_is_better else 1,
                   delta if delta is not None else METRICS[metric].smallest_effect)


def decided(findings: dict[str, list[Finding]], looks: int = 1) -> dict[str, list[Finding]]:
    """The same findings with Holm-adjusted p-values across all of them (one study's claims are one family), each
    tested at ALPHA / looks when the data were extended after earlier verdicts had been seen (optional stopping:
    Bonferroni over the looks, a conservative alpha spending)."""
    flat = [finding for group in findings.values() for finding in group]
    adjusted = iter(holm([finding.p_value for finding in flat]))
    family = sum(finding.effect.testable for finding in flat)
    return {claim: [dataclasses.replace(finding, p_adjusted=next(adjusted), family=family, looks=looks)
                    for finding in group] for claim, group in findings.items()}


def _combine(findings: list[Finding]) -> str:
    """A claim's verdict from its tests: `supported` (all better), `not supported` (every effect smaller than δ),
    `contradicted` (worse, none better), `partly supported` (decided tests that disagree), `undecided (N would decide
    it)` while a test is neither, `too little evidence (why)` when none could be tested."""
    outcomes = [finding.outcome() for finding in findings]
    if outcomes and all(o == TOO_FEW for o in outcomes):
        return f"too little evidence ({findings[0].effect.untestable})"
    decided_outcomes = {o for o in outcomes if o not in (TOO_FEW, UNDECIDED)}
    if "better" in decided_outcomes and len(decided_outcomes) > 1:
        return "partly supported"
    if "worse" in decided_outcomes and "better" not in decided_outcomes:
        return "contradicted"
    if UNDECIDED in outcomes or TOO_FEW in outcomes:  # a part that more evidence could still turn either way
        needed = sorted({f.needed for f in findings if f.outcome() == UNDECIDED}, key=lambda n: n or math.inf)
        unit = findings[0].effect.unit
        if TOO_FEW in outcomes or None in needed or not needed:
            return "undecided"
        return (f"undecided ({needed[0]} {unit} would decide it)" if len(needed) == 1 else
                f"undecided ({needed[0]} to {needed[-1]} {unit} would decide its tests)")
    return "supported" if decided_outcomes == {"better"} else "not supported"


def _too_little(verdict: Verdict, basis: str) -> Verdict:
    """A verdict below the evidence minimum keeps its numbers but decides nothing."""
    if verdict.verdict.startswith(("not tested", "too little evidence")):
        return verdict
    return Verdict(verdict.claim, "too little evidence", f"{basis}; the numbers, for what they are worth: "
                                                          f"{verdict.evidence}")


def still_drawing(trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The one rule every claim uses for which trials still draw digits: collapse_rate measured and below COLLAPSED.
    A blank image has no grey pixels, no stroke width and no thickness, so a collapsed trial would count as
    "sharp" or as ignoring the condition; it is counted and named instead, never averaged in. A trial whose
    collapse_rate was not measured (NaN) is left out too, and named as unmeasured, not as collapsed.

    Returns:
        (the trials that draw digits, "; N collapsed trial(s) left out (ids); M unmeasured (ids)" or "").
    """
    if "collapse_rate" not in trials:  # tables from before the metric: nothing to tell them apart by
        return trials, "; collapse_rate not in the tables: every trial counted as drawing digits"
    rate = trials["collapse_rate"].astype(float)
    collapsed, unmeasured = trials[rate >= COLLAPSED], trials[rate.isna()]
    note = ""
    for frame, what in ((collapsed, "collapsed"), (unmeasured, "with collapse_rate unmeasured")):
        if len(frame):
            ids = ", ".join(map(str, frame["trial_id"].head(6))) + (", …" if len(frame) > 6 else "")
            note += f"; {len(frame)} trial(s) {what} left out ({ids})"
    return trials[rate < COLLAPSED], note


def dataset_of(trials: pd.DataFrame) -> str | None:
    """The data the trials trained on, as recorded (e.g. "system:fashion-mnist"), or None if not recorded."""
    sources = trials["dataset_source"].dropna().unique() if "dataset_source" in trials else []
    return str(sources[0]) if len(sources) else None


def side_by_side(verdicts: dict[str, list[Verdict]]) -> pd.DataFrame:
    """Claim x dataset: each dataset's verdict, and whether the claim generalises.

    Args:
        verdicts: dataset label -> its study's verdicts (e.g. {"MNIST": judge_models(...), "Fashion-MNIST": ...}).
    Returns:
        One row per claim: its text, a verdict column per dataset and `generalises`: "yes" where every dataset
        supports it, "partly" where every dataset at least partly supports it, "no" where one does and another
        does not, "not tested" where a dataset did not test it, "undecided" where one needs more evidence,
        "neither supports it" otherwise.
    """
    rows = []
    for claim, text in CLAIMS.items():
        found = {label: next((v.verdict for v in judged if v.claim == claim), "not tested")
                 for label, judged in verdicts.items()}
        values = list(found.values())
        backed = [value in ("supported", "partly supported") for value in values]
        generalises = ("not tested" if any(value.startswith("not tested") for value in values) else
                       "undecided" if any(value.startswith(("undecided", "too little")) for value in values) else
                       "yes" if all(value == "supported" for value in values) else
                       "partly" if all(backed) else "no" if any(backed) else "neither supports it")
        rows.append({"claim": f"({claim}) {text}", **found, "generalises": generalises})
    return pd.DataFrame(rows).set_index("claim")


def with_claim_from(verdicts: list[Verdict], other: list[Verdict], claim: str) -> list[Verdict]:
    """`verdicts` with `claim`'s verdict taken from another study of the same data (e.g. (e) from grey_warmup, since
    no Model 1-5 preset applies the grey loss from epoch 1)."""
    taken = [v for v in other if v.claim == claim]
    return [v for v in verdicts if v.claim != claim] + taken if taken else verdicts


def digit_excess(details: pd.DataFrame, digit: int = 1) -> pd.DataFrame:
    """Per trial: the digit's generated relative stroke width minus the real one, averaged over thickness."""
    rows = details[details["digit"] == digit]
    excess = (rows["relative_width"] - rows["real_relative_width"]).groupby(rows["trial_id"]).mean()
    return excess.rename("digit_excess").reset_index()


# ---------------------------------------------------------------- claims on a grid of presets (Model 1-5)


def judge_models(trials: pd.DataFrame, details: pd.DataFrame | None = None,
                 pooled: list[str] | None = None) -> list[Verdict]:
    """Verdicts from a study whose trials are labelled model_1..model_5 (any subset; missing pairs -> not tested),
    on the test split's numbers of the completed trials (all presets run to their full length: equal fidelity).

    Every difference is Welch's over seeds with its 95 % t interval; the p-values of all the comparisons behind
    (b), (c) and (d) are one family, Holm-corrected; a difference that is not significant at low power is
    `undecided`, with the seeds per model that would decide it.
    """
    trials, excluded = still_drawing(with_models(on_test_split(trials)))
    present = set(trials[MODEL])
    findings, notes = {}, {}

    if {"model_1", "model_2"} <= present:
        findings["b"] = [compare(trials, "class_parity", "model_2", "model_1",
                                 labels=("model_2 (per_class)", "model_1 (global)"))]
        if details is not None and not details.empty:
            finding, notes["b"] = _width_excess(trials, details)
            findings["b"].append(finding)
    pairs_c = [(a, b) for a, b in (("model_4", "model_2"), ("model_5", "model_3")) if {a, b} <= present]
    findings["c"] = [compare(trials, "grey_fraction", a, b) for a, b in pairs_c]
    pairs_d = [(a, b) for a, b in (("model_3", "model_2"), ("model_5", "model_4")) if {a, b} <= present]
    findings["d"] = [compare(trials, m, a, b) for a, b in pairs_d for m in ("fid", "class_accuracy")]
    looks = len(pooled) if pooled else 1
    findings = decided({claim: found for claim, found in findings.items() if found}, looks)
    if looks > 1:  # each pooled study after the first was run after the verdicts on the ones before it
        excluded += (f"; a pool of {looks} studies ({', '.join(pooled)}), each added after the verdicts on the "
                     f"ones before: every test at α/{looks} = {ALPHA / looks:.3g} (Bonferroni over the looks)")

    verdicts = [_thickness_respected(trials, details, sorted(present)),
                *_model_verdicts(trials, findings, notes, pairs_c, excluded),
                Verdict("e", "not tested", "no preset applies the grey loss from epoch 1 (all use warm-up 1 or no "
                                           "grey loss); see the grey_warmup and grey_loss studies")]
    seeds = trials.groupby(MODEL).size()
    if len(seeds) and seeds.min() < MIN_SEEDS:
        basis = (f"rests on {seeds.min()}–{seeds.max()} seeds per model (fewer than {MIN_SEEDS}: too little "
                 "evidence)")
        verdicts = [_too_little(v, basis) for v in verdicts]
    return verdicts


def _width_excess(trials: pd.DataFrame, details: pd.DataFrame) -> tuple[Finding, str]:
    """Claim (b) in the digit it is about: |digit 1's width excess over real| per seed, model_2 vs model_1, and a
    note of the global model's signed excess, seed by seed."""
    keys = ["trial_id", MODEL, *([SEED_PARAMETER] if SEED_PARAMETER in trials else [])]
    excess = with_models(digit_excess(details).merge(trials[keys], on="trial_id"))
    if SEED_PARAMETER in excess:  # listed in seed order, whichever study (or pool) ran them
        excess = excess.sort_values(SEED_PARAMETER, kind="stable")
    excess["abs_excess"] = excess["digit_excess"].abs()
    one_name = class_name(1, dataset_of(trials))
    global_excess = excess.loc[excess[MODEL] == "model_1", "digit_excess"]
    note = (f"{one_name} drawn {global_excess.mean():+.3f} relative width vs real under global "
            f"(seeds {', '.join(f'{v:+.2f}' for v in global_excess)})")
    return compare(excess, "abs_excess", "model_2", "model_1", name=f"|{one_name} width excess|",
                   delta=SMALLEST_WIDTH_EXCESS), note


def _model_verdicts(trials: pd.DataFrame, findings: dict, notes: dict, pairs_c: list, excluded: str) -> list[Verdict]:
    """Claims (b), (c), (d) of the Model 1–5 study from their decided findings, or `not tested` with what is missing."""
    verdicts = []
    if "b" in findings:
        texts = [finding.text() for finding in findings["b"]]
        if "b" in notes:
            texts.insert(1, notes["b"])
        verdicts.append(Verdict("b", _combine(findings["b"]), "; ".join(texts) + excluded))
    else:
        verdicts.append(Verdict("b", "not tested", "needs model_1 (global) and model_2 (per_class)"))
    if "c" in findings:
        measured = [m for m in ("fid", "ink_w1", "grey_gap") if m in trials and trials[m].notna().all()]
        side = [compare(trials, m, a, b).what for a, b in pairs_c for m in measured]
        verdicts.append(Verdict("c", _combine(findings["c"]),
                                "; ".join(f.text() for f in findings["c"]) + _real_level(trials, "grey_fraction")
                                + ". Side effects (sharper is not automatically more realistic): " + "; ".join(side)
                                + excluded))
    else:
        verdicts.append(Verdict("c", "not tested", "needs model_4 vs model_2 or model_5 vs model_3"))
    if "d" in findings:
        verdicts.append(Verdict("d", _combine(findings["d"]), "; ".join(f.text() for f in findings["d"]) + excluded))
    else:
        verdicts.append(Verdict("d", "not tested", "needs model_3 vs model_2 or model_5 vs model_4"))
    return verdicts


def _real_level(trials: pd.DataFrame, metric: str) -> str:
    """" (real images: <metric> X)" where the trials measured their real validation images, else ""."""
    level = real_level(trials, metric)
    return "" if level is None else f" (real images: {metric} {level:.3g})"


def _thickness_respected(trials: pd.DataFrame, details, groups) -> Verdict:
    per_group = trials.groupby(MODEL)[["thickness_corr", "thickness_mae"]].mean()
    if per_group.empty:
        return Verdict("a", "not tested", "no completed trial")
    worst = per_group["thickness_corr"].idxmin()
    evidence = ", ".join(f"{g} {per_group.loc[g, 'thickness_corr']:.3f}" for g in groups if g in per_group.index)
    evidence = (f"Spearman(requested, measured) per model: {evidence}; mean abs. error "
                f"{per_group['thickness_mae'].min():.3f}–{per_group['thickness_mae'].max():.3f}")
    if details is not None and not details.empty:
        error = (details["measured_thickness"] - details["requested_thickness"]).abs().groupby(details["digit"]).mean()
        evidence += (f"; per class (sweep, all trials) the largest mean abs. error is "
                     f"{class_name(int(error.idxmax()), dataset_of(trials))} at {error.max():.3f}")
    lowest = per_group.loc[worst, "thickness_corr"]
    verdict = ("supported" if lowest >= RESPECTED_CORRELATION else
               "partly supported" if per_group["thickness_corr"].max() >= RESPECTED_CORRELATION else "not supported")
    return Verdict("a", verdict, evidence + f" (threshold {RESPECTED_CORRELATION})")


# ---------------------------------------------------------------- claims on a searched study (grey_loss)


MIN_EQUAL_FIDELITY = 4  # completed trials needed before a search's verdicts use only them


def judge_search(trials: pd.DataFrame, epochs: pd.DataFrame, details: pd.DataFrame | None = None,
                 fixed: dict | None = None) -> list[Verdict]:
    """Verdicts from a searched study over grey_weight / warmup_epochs / condition_mode (whatever it varied).

    Trials are compared at equal fidelity: the completed ones, on their test numbers, when at least
    MIN_EQUAL_FIDELITY completed; otherwise completed and pruned trials together on validation numbers, and the
    verdict says so (a pruned trial's numbers come from fewer epochs).
    """
    finished = trials[trials["status"].isin(FINISHED)].copy()
    compared, fidelity = _at_equal_fidelity(trials, finished)
    drawing, excluded = still_drawing(compared)
    completed = drawing[drawing["status"] == STATUS_COMPLETED]
    verdicts = [_condition_followed(completed, split_label(trials), excluded)]
    findings, texts = {}, {}
    if param_column("condition_mode") in drawing and drawing[param_column("condition_mode")].nunique() == 2:
        findings["b"] = [compare(drawing, "class_parity", "per_class", "global", column=param_column("condition_mode"),
                                 unit="trials per normalisation")]
        texts["b"] = (" (trials differ in the other searched parameters too, so this is confounded; the Model 1–5 "
                      "study isolates it)" + excluded + fidelity)
    if param_column("grey_weight") in drawing and len(drawing) >= 3:
        findings["c"], texts["c"] = _grey_weight_effect(drawing, fixed or {}, excluded + fidelity)
    findings = decided({claim: found for claim, found in findings.items() if found})

    for claim, missing in (("b", "condition_mode was not searched (or not in the compared trials)"),
                           ("c", "grey_weight was not searched (or < 3 compared trials draw digits)")):
        if claim in findings:
            verdicts.append(Verdict(claim, _combine(findings[claim]),
                                    "; ".join(f.text() for f in findings[claim]) + texts[claim]))
        else:
            verdicts.append(Verdict(claim, "not tested", missing))
    verdicts.append(Verdict("d", "not tested", "a search has no budgets at equal configuration (a trial's first "
                                               "vs last epoch tests training, not a longer schedule); the Model 1–5 "
                                               "grid compares 8 with 40 epochs"))
    verdicts.append(_collapse(epochs, finished, fixed))
    epochs_run = finished["epochs_run"].max() if len(finished) else 0
    if len(finished) < MIN_TRIALS or epochs_run < MIN_EPOCHS:
        basis = (f"rests on {len(finished)} finished trial(s) of at most {epochs_run:.0f} epoch(s) (fewer than "
                 f"{MIN_TRIALS} trials or {MIN_EPOCHS} epochs: too little evidence)")
        verdicts = [_too_little(v, basis) for v in verdicts]
    return verdicts


def _at_equal_fidelity(trials: pd.DataFrame, finished: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The trials a searched study's verdicts compare, and how (appended to the verdicts): the completed ones on
    their test numbers when at least MIN_EQUAL_FIDELITY completed, else every finished one on validation numbers."""
    completed = on_test_split(trials)
    if len(completed) >= MIN_EQUAL_FIDELITY:
        return completed, f"; {len(completed)} completed trials, {split_label(trials)} numbers"
    pruned = finished[finished["status"] == STATUS_PRUNED]
    return finished, (f"; MIXED FIDELITY: {len(pruned)} of {len(finished)} trials were pruned after "
                      f"{pruned['epochs_run'].min():.0f}–{pruned['epochs_run'].max():.0f} epochs, validation numbers"
                      if len(pruned) else f"; {len(finished)} trials, validation numbers")


def _condition_followed(completed: pd.DataFrame, split: str, excluded: str) -> Verdict:
    """Claim (a) in a searched study: the completed trials' median thickness correlation against the threshold."""
    if not len(completed):
        return Verdict("a", "not tested", "no completed trial that draws digits")
    corr = completed["thickness_corr"].astype(float)
    return Verdict("a", "supported" if corr.median() >= RESPECTED_CORRELATION else "not supported",
                   f"thickness_corr over {len(completed)} completed trials ({split} numbers): median "
                   f"{corr.median():.3f}, range {corr.min():.3f}–{corr.max():.3f} (threshold {RESPECTED_CORRELATION})"
                   f"{excluded}")


def _grey_weight_effect(drawing: pd.DataFrame, fixed: dict, suffix: str) -> tuple[list[Finding], str]:
    """Claim (c) in a searched study: the rank correlation of the grey weight a trial applied with its grey_fraction
    (expected negative) with every other searched setting held fixed (a partial rank correlation: the search varies
    them together, so a plain correlation would credit the grey weight with their effects), and with fid beside it."""
    warmup = (drawing[param_column("warmup_epochs")].astype(float) if param_column("warmup_epochs") in drawing
              else float(fixed.get("warmup_epochs", 0)))
    applied = drawing[param_column("grey_weight")].astype(float).where(drawing["epochs_run"] > warmup, 0.0)
    others = [column for column in drawing if column.startswith(PARAM_PREFIX)
              and column not in (param_column("grey_weight"), SEED_PARAMETER)]
    covariates = _covariate_matrix(drawing, others)
    held = ", ".join(column[len(PARAM_PREFIX):] for column in others) or "none"
    finding = Finding(f"partial Spearman(grey weight applied, grey_fraction | {held})",
                      PartialRankCorrelation(applied.to_numpy(), drawing["grey_fraction"].astype(float).to_numpy(),
                                             covariates=covariates), -1, SMALLEST_CORRELATION)
    with_fid = PartialRankCorrelation(applied.to_numpy(), drawing["fid"].astype(float).to_numpy(),
                                      covariates=covariates)
    fid_text = (f"{with_fid.effect:.3f} (p={with_fid.p_value:.2g})" if with_fid.testable else
                f"not testable ({with_fid.untestable})")
    return [finding], (f" ({len(drawing)} trials; searched together with: {held}, held fixed by the partial "
                       f"correlation; weight counted as 0 where the trial stopped before its warm-up ended); with "
                       f"fid: {fid_text}{suffix}")


def _covariate_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The searched settings as numbers: numeric columns as they are, a categorical one as indicator columns."""
    parts = []
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().all():
            parts.append(values.to_numpy(float)[:, None])
        else:
            levels = sorted(frame[column].astype(str).unique())
            parts += [(frame[column].astype(str) == level).to_numpy(float)[:, None] for level in levels[1:]]
    return np.hstack(parts) if parts else np.zeros((len(frame), 0))


def _collapse(epochs: pd.DataFrame, finished: pd.DataFrame, fixed: dict | None = None) -> Verdict:
    """Claim (e): the share of trials that collapsed (collapse_rate ≥ COLLAPSED at some epoch) with the grey loss from
    epoch 1, against the share with a warm-up (a difference of proportions with its interval, Fisher's exact test).
    A setting the study did not search is read from `fixed` (the study's resolved TrialConfig), never assumed."""
    fixed = fixed or {}
    if param_column("warmup_epochs") not in finished or epochs.empty:
        held = f" (fixed at {fixed['warmup_epochs']})" if "warmup_epochs" in fixed else ""
        return Verdict("e", "not tested", f"warmup_epochs was not searched{held}: no control to compare with")
    worst = epochs.groupby("trial_id")["collapse_rate"].max().rename("worst_collapse")
    frame = finished.merge(worst, left_on="trial_id", right_index=True)
    frame = frame[frame["worst_collapse"].notna()]  # never measured: neither collapsed nor not
    if param_column("grey_weight") in frame:
        grey = frame[param_column("grey_weight")].astype(float) > 0
    elif "grey_weight" in fixed:
        grey = pd.Series(float(fixed["grey_weight"]) > 0, index=frame.index)
    else:
        return Verdict("e", "not tested", "grey_weight was neither searched nor recorded in the study's settings")
    from_start = frame[(frame[param_column("warmup_epochs")] == 0) & grey]
    later = frame[(frame[param_column("warmup_epochs")] > 0) & grey]
    if from_start.empty:
        return Verdict("e", "not tested", "no trial applied the grey loss from epoch 1")
    collapsed = int((from_start["worst_collapse"] >= COLLAPSED).sum())
    collapsed_later = int((later["worst_collapse"] >= COLLAPSED).sum())
    weights = ""
    if param_column("grey_weight") in from_start:  # searched; otherwise every trial used the study's one weight
        searched = from_start[param_column("grey_weight")].astype(float)
        weights = f"; grey weights {searched.min():.3g}–{searched.max():.3g}"
    finding = Finding(f"collapsed (collapse_rate ≥ {COLLAPSED} at some epoch) with grey from epoch 1 vs after a "
                      f"warm-up", ProportionDifference((collapsed, collapsed_later), (len(from_start), len(later))),
                      +1, SMALLEST_COLLAPSE_SHARE)
    seen = (f"; grey from epoch 1 can collapse: {collapsed} such trial(s) did (worst collapse_rate "
            f"{from_start['worst_collapse'].max():.3f}{weights})" if collapsed else
            "; no trial with grey from epoch 1 collapsed here")
    return Verdict("e", _combine([finding]), finding.text() + seen + " (its own test, at α, outside the family)")
