"""Verdicts on the claims (a)-(e) of docs/design.md §1, each with the numbers behind it, from a study's tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from cvae.data import class_name
from cvae.metrics import METRICS
from study.results import (FINISHED, MODEL, STATUS_COMPLETED, STATUS_PRUNED, on_test_split, param_column, real_level,
                           split_label, with_models)

CLAIMS = {
    "a": "the thickness condition is respected",
    "b": "per-class normalisation fixed '1' being drawn thicker than other classes at the same condition value",
    "c": "the grey loss made images much sharper",
    "d": "more epochs reduce awkward images",
    "e": "grey loss from epoch 1 can collapse to black",
}
SIGNIFICANCE = 0.05  # Welch's t-test over seeds / trials; with 3 seeds only large effects pass
RESPECTED_CORRELATION = 0.8  # Spearman requested vs measured thickness that counts as "respected"
COLLAPSED = 0.5  # collapse_rate at or above which a trial counts as collapsed to black
TOO_FEW = "too few seeds"  # a comparison with fewer than 2 values on a side cannot be tested


@dataclass(frozen=True)
class Verdict:
    claim: str  # "a".."e"
    verdict: str  # supported | partly supported | not supported | contradicted | not tested
    evidence: str

    def line(self) -> str:
        return f"({self.claim}) {CLAIMS[self.claim]}: **{self.verdict}**: {self.evidence}"


@dataclass(frozen=True)
class Comparison:
    """`candidate` vs `reference` on one metric: means, Welch p-value, and whether the candidate is better."""

    metric: str
    candidate: np.ndarray
    reference: np.ndarray

    @property
    def difference(self) -> float:
        return float(np.mean(self.candidate) - np.mean(self.reference))

    @property
    def p_value(self) -> float:
        if len(self.candidate) < 2 or len(self.reference) < 2:
            return math.nan
        if np.ptp(np.concatenate([self.candidate, self.reference])) == 0:
            return 1.0
        return float(stats.ttest_ind(self.candidate, self.reference, equal_var=False).pvalue)

    def outcome(self) -> str:
        """better | worse (significant either way) | no clear difference | too few seeds"""
        if math.isnan(self.p_value):
            return TOO_FEW
        if self.p_value >= SIGNIFICANCE:
            return "no clear difference"
        lower_is_better = METRICS[self.metric].mode == "min" if self.metric in METRICS else True
        return "better" if (self.difference < 0) == lower_is_better else "worse"

    def text(self, candidate: str, reference: str) -> str:
        return (f"{self.metric} {candidate} {np.mean(self.candidate):.4g} vs {reference} {np.mean(self.reference):.4g} "
                f"(Δ {self.difference:+.3g}, p={self.p_value:.2g}, n={len(self.candidate)}/{len(self.reference)}: "
                f"{self.outcome()})")


def compare(frame: pd.DataFrame, metric: str, candidate, reference, column: str = MODEL) -> Comparison:
    values = {name: frame.loc[frame[column] == name, metric].astype(float).dropna().to_numpy()
              for name in (candidate, reference)}
    return Comparison(metric, values[candidate], values[reference])


def _combine(outcomes: list[str]) -> str:
    if outcomes and all(o == TOO_FEW for o in outcomes):
        return "not tested (fewer than 2 seeds per model)"
    if outcomes and all(o == "better" for o in outcomes):
        return "supported"
    if any(o == "worse" for o in outcomes) and not any(o == "better" for o in outcomes):
        return "contradicted"
    if any(o == "better" for o in outcomes):
        return "partly supported"
    return "not supported"


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
        does not, "not tested" where a dataset did not test it, "neither supports it" otherwise.
    """
    rows = []
    for claim, text in CLAIMS.items():
        found = {label: next((v.verdict for v in judged if v.claim == claim), "not tested")
                 for label, judged in verdicts.items()}
        values = list(found.values())
        backed = [value in ("supported", "partly supported") for value in values]
        generalises = ("not tested" if any(value.startswith("not tested") for value in values) else
                       "yes" if all(value == "supported" for value in values) else
                       "partly" if all(backed) else "no" if any(backed) else "neither supports it")
        rows.append({"claim": f"({claim}) {text}", **found, "generalises": generalises})
    return pd.DataFrame(rows).set_index("claim")


def digit_excess(details: pd.DataFrame, digit: int = 1) -> pd.DataFrame:
    """Per trial: the digit's generated relative stroke width minus the real one, averaged over thickness."""
    rows = details[details["digit"] == digit]
    excess = (rows["relative_width"] - rows["real_relative_width"]).groupby(rows["trial_id"]).mean()
    return excess.rename("digit_excess").reset_index()


# ---------------------------------------------------------------- claims on a grid of presets (Model 1-5)


def judge_models(trials: pd.DataFrame, details: pd.DataFrame | None = None) -> list[Verdict]:
    """Verdicts from a study whose trials are labelled model_1..model_5 (any subset; missing pairs -> not tested),
    on the test split's numbers of the completed trials (all presets run to their full length: equal fidelity)."""
    trials = with_models(on_test_split(trials))
    present = set(trials[MODEL])
    verdicts = [_thickness_respected(trials, details, sorted(present))]

    if {"model_1", "model_2"} <= present:
        parts = [compare(trials, "class_parity", "model_2", "model_1")]
        texts = [parts[0].text("model_2 (per_class)", "model_1 (global)")]
        if details is not None and not details.empty:
            excess = with_models(digit_excess(details).merge(trials[["trial_id", MODEL]], on="trial_id"))
            excess["abs_excess"] = excess["digit_excess"].abs()
            one_name = class_name(1, dataset_of(trials))
            one = Comparison(f"{one_name} |width excess|", *(excess.loc[excess[MODEL] == m, "abs_excess"].to_numpy()
                                                              for m in ("model_2", "model_1")))
            parts.append(one)
            global_excess = excess.loc[excess[MODEL] == "model_1", "digit_excess"].mean()
            texts.append(f"{one_name} drawn {global_excess:+.3f} relative width vs real under global; " +
                         one.text("model_2", "model_1"))
        verdicts.append(Verdict("b", _combine([p.outcome() for p in parts]), "; ".join(texts)))
    else:
        verdicts.append(Verdict("b", "not tested", "needs model_1 (global) and model_2 (per_class)"))

    pairs = [(a, b) for a, b in (("model_4", "model_2"), ("model_5", "model_3")) if {a, b} <= present]
    if pairs:
        sharper = [compare(trials, "grey_fraction", a, b) for a, b in pairs]
        side = [compare(trials, m, a, b).text(a, b) for a, b in pairs for m in ("fid", "ink_w1")]
        verdicts.append(Verdict("c", _combine([c.outcome() for c in sharper]),
                                "; ".join(c.text(a, b) for c, (a, b) in zip(sharper, pairs))
                                + _real_level(trials, "grey_fraction")
                                + ". Side effects (sharper is not automatically more realistic): " + "; ".join(side)))
    else:
        verdicts.append(Verdict("c", "not tested", "needs model_4 vs model_2 or model_5 vs model_3"))

    pairs = [(a, b) for a, b in (("model_3", "model_2"), ("model_5", "model_4")) if {a, b} <= present]
    if pairs:
        parts = [(compare(trials, m, a, b), a, b) for a, b in pairs for m in ("fid", "class_accuracy")]
        verdicts.append(Verdict("d", _combine([c.outcome() for c, _, _ in parts]),
                                "; ".join(c.text(a, b) for c, a, b in parts)))
    else:
        verdicts.append(Verdict("d", "not tested", "needs model_3 vs model_2 or model_5 vs model_4"))
    verdicts.append(Verdict("e", "not tested", "no preset applies the grey loss from epoch 1 (all use warm-up 1 or "
                                               "no grey loss); see the grey_warmup and grey_loss studies"))
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


def judge_search(trials: pd.DataFrame, epochs: pd.DataFrame, details: pd.DataFrame | None = None) -> list[Verdict]:
    """Verdicts from a searched study over grey_weight / warmup_epochs / condition_mode (whatever it varied).

    Trials are compared at equal fidelity: the completed ones, on their test numbers, when at least
    MIN_EQUAL_FIDELITY completed; otherwise completed and pruned trials together on validation numbers, and the
    verdict says so (a pruned trial's numbers come from fewer epochs).
    """
    finished = trials[trials["status"].isin(FINISHED)].copy()
    completed_all = on_test_split(trials)
    if len(completed_all) >= MIN_EQUAL_FIDELITY:
        compared = completed_all
        fidelity = f"; {len(compared)} completed trials, {split_label(trials)} numbers"
    else:
        compared = finished
        pruned = finished[finished["status"] == STATUS_PRUNED]
        fidelity = (f"; MIXED FIDELITY: {len(pruned)} of {len(finished)} trials were pruned after "
                    f"{pruned['epochs_run'].min():.0f}–{pruned['epochs_run'].max():.0f} epochs, validation numbers"
                    if len(pruned) else f"; {len(finished)} trials, validation numbers")
    # A blank image has no grey pixels and no measurable thickness: collapsed trials would count as "sharp" in (c)
    # and as ignoring the condition in (a), so (a), (c) and (d) look only at trials that still draw digits.
    drawing = compared[compared["collapse_rate"].astype(float) < COLLAPSED]
    excluded = f"; {len(compared) - len(drawing)} collapsed trial(s) left out" if len(drawing) < len(compared) else ""
    completed = drawing[drawing["status"] == STATUS_COMPLETED]
    verdicts = []
    if len(completed):
        corr = completed["thickness_corr"].astype(float)
        verdicts.append(Verdict(
            "a", "supported" if corr.median() >= RESPECTED_CORRELATION else "not supported",
            f"thickness_corr over {len(completed)} completed trials ({split_label(trials)} numbers): median "
            f"{corr.median():.3f}, range {corr.min():.3f}–{corr.max():.3f} (threshold {RESPECTED_CORRELATION})"
            f"{excluded}"))
    else:
        verdicts.append(Verdict("a", "not tested", "no completed trial that draws digits"))

    if param_column("condition_mode") in compared and compared[param_column("condition_mode")].nunique() == 2:
        parity = compare(compared, "class_parity", "per_class", "global", column=param_column("condition_mode"))
        verdicts.append(Verdict("b", _combine([parity.outcome()]),
                                parity.text("per_class", "global") + " (trials differ in the other searched "
                                "parameters too, so this is confounded; the Model 1–5 study isolates it)" + fidelity))
    else:
        verdicts.append(Verdict("b", "not tested", "condition_mode was not searched (or not in the compared trials)"))

    if param_column("grey_weight") in drawing and len(drawing) >= 3:
        applied = drawing[param_column("grey_weight")].astype(float).where(
            drawing["epochs_run"] > drawing.get(param_column("warmup_epochs"), 0), 0.0)
        rho = stats.spearmanr(applied, drawing["grey_fraction"].astype(float), nan_policy="omit")
        verdict = "supported" if rho.statistic < -0.3 and rho.pvalue < SIGNIFICANCE else (
            "contradicted" if rho.statistic > 0.3 and rho.pvalue < SIGNIFICANCE else "not supported")
        fid_rho = stats.spearmanr(applied, drawing["fid"].astype(float), nan_policy="omit")
        verdicts.append(Verdict("c", verdict, f"Spearman(grey weight applied, grey_fraction) = {rho.statistic:.3f} "
                                f"(p={rho.pvalue:.2g}, {len(drawing)} trials; weight counted as 0 where the trial "
                                f"stopped before its warm-up ended); with fid: {fid_rho.statistic:.3f} "
                                f"(p={fid_rho.pvalue:.2g}){excluded}{fidelity}"))
    else:
        verdicts.append(Verdict("c", "not tested", "grey_weight was not searched (or < 3 compared trials draw digits)"))

    finished_drawing = finished[finished["collapse_rate"].astype(float) < COLLAPSED]
    verdicts.append(_more_epochs(epochs, finished_drawing))
    verdicts.append(_collapse(epochs, finished))
    return verdicts


def _more_epochs(epochs: pd.DataFrame, finished: pd.DataFrame, excluded: str = "") -> Verdict:
    """Paired within trials: fid and class_accuracy at the first reported epoch vs the last, for trials run longer."""
    if epochs.empty:
        return Verdict("d", "not tested", "no epochs table")
    long_runs = finished[finished["epochs_run"] >= 4]["trial_id"]
    rows = epochs[epochs["trial_id"].isin(long_runs)].sort_values("epoch")
    if rows["trial_id"].nunique() < 3:
        return Verdict("d", "not tested", "fewer than 3 trials ran 4 or more epochs")
    # the first and last epochs themselves (groupby().first() would take each column's first non-missing value)
    first = rows.drop_duplicates("trial_id", keep="first").set_index("trial_id")
    last = rows.drop_duplicates("trial_id", keep="last").set_index("trial_id")
    outcomes, texts = [], []
    for metric in ("fid", "class_accuracy"):
        delta = (last[metric] - first[metric]).dropna()
        test = stats.wilcoxon(delta) if len(delta) >= 3 and np.ptp(delta) > 0 else None
        p = test.pvalue if test is not None else math.nan
        improved = (delta < 0) if METRICS[metric].mode == "min" else (delta > 0)
        good = improved.mean() > 0.5
        outcomes.append(("better" if good else "worse") if p < SIGNIFICANCE else "no clear difference")
        texts.append(f"{metric} improved from first to last epoch in {improved.sum()}/{len(delta)} trials "
                     f"(mean Δ {delta.mean():+.3g}, Wilcoxon p={p:.2g})")
    return Verdict("d", _combine(outcomes), "; ".join(texts) + f" (trials with ≥ 4 epochs{excluded})")


def _collapse(epochs: pd.DataFrame, finished: pd.DataFrame) -> Verdict:
    """Worst collapse_rate over each trial's epochs, grey from epoch 1 vs after a warm-up."""
    if param_column("warmup_epochs") not in finished or epochs.empty:
        return Verdict("e", "not tested", "warmup_epochs was not searched")
    worst = epochs.groupby("trial_id")["collapse_rate"].max().rename("worst_collapse")
    frame = finished.merge(worst, left_on="trial_id", right_index=True)
    grey = frame[param_column("grey_weight")].astype(float) > 0 if param_column("grey_weight") in frame else True
    from_start = frame[(frame[param_column("warmup_epochs")] == 0) & grey]
    later = frame[(frame[param_column("warmup_epochs")] > 0) & grey]
    if from_start.empty:
        return Verdict("e", "not tested", "no trial applied the grey loss from epoch 1")
    collapsed = (from_start["worst_collapse"] >= COLLAPSED).sum()
    collapsed_later = (later["worst_collapse"] >= COLLAPSED).sum()
    weights = ""
    if param_column("grey_weight") in from_start:  # searched; otherwise every trial used the study's one weight
        searched = from_start[param_column("grey_weight")].astype(float)
        weights = f", grey weights {searched.min():.3g}–{searched.max():.3g}"
    evidence = (f"{collapsed}/{len(from_start)} trials with grey from epoch 1 collapsed (collapse_rate ≥ {COLLAPSED} "
                f"at some epoch; worst {from_start['worst_collapse'].max():.3f}{weights}) vs "
                f"{collapsed_later}/{len(later)} with a warm-up")
    return Verdict("e", "supported" if collapsed else "not supported (not reproduced here)", evidence)
