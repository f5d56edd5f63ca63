"""summary.md: a study's tables, its best trial, its Pareto front and a verdict on each claim, in Markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cvae.metrics import FID_SAMPLES, TEST_PREFIX
from study.tables.pooling import POOLED_KEY
from study.analysis.figures import completed_front, front_examples, is_grid, varies_presets
from study.tables.studies import objective_text
from study.tables.records import FIGURES_DIR, FINISHED, PARAM_PREFIX, SUMMARY_FILE, trial_params
from study.tables.selection import (BEST_RULE, best_trial, incomplete_note, metric_pairs, on_test_split,
                                    provisional_note, real_level, split_label)
from study.tables.table_files import replace_atomically


def markdown_table(frame: pd.DataFrame, index_name: str = "") -> str:
    """A DataFrame as a GitHub markdown table (pandas' to_markdown needs the optional tabulate package)."""
    header = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *(_cell(v) for v in row)]) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def loss_ordering(table: pd.DataFrame) -> list[str]:
    """A line comparing the order of the measured final train losses with the reported ones (presets only)."""
    reported = table["reported_loss"].dropna()
    if len(reported) < 2:
        return []
    measured = table.loc[reported.index, "loss_mean"].sort_values()
    reported = reported.sort_values()
    same = list(measured.index) == list(reported.index)
    return [f"Final train loss, lowest first: measured {' < '.join(measured.index)}; reported "
            f"{' < '.join(reported.index)} ({'the same order' if same else 'a different order'}).", ""]


def verdicts_for(trials, epochs, details, spec):
    from study.analysis.claims import judge_models, judge_search

    if varies_presets(trials):
        return judge_models(trials, details, spec.get(POOLED_KEY))
    return judge_search(trials, epochs, details, fixed_settings(spec))


def fixed_settings(spec: dict) -> dict:
    """The TrialConfig a study's trials share where they were not searched: its base preset with its fixed: settings
    (empty when the record names neither, or names a preset this version does not know)."""
    from cvae.config import PRESETS, preset

    if spec.get("base") not in PRESETS:
        return {}
    try:
        return preset(spec["base"]).replace(**(spec.get("fixed") or {})).to_dict()
    except (ValueError, TypeError):
        return {}


def write_summary(folder: Path, trials, epochs, details, spec, figure_names) -> str:
    from study.analysis.plots import format_model_table, model_table

    finished = trials[trials["status"].isin(FINISHED)]
    note = incomplete_note(trials, spec)
    lines = [f"**{note}**" if note else "", "", f"# Study `{spec['name']}`", "", spec.get("description", ""), "",
             f"- trials: {len(trials)} (" + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
             + ")",
             f"- data: {', '.join(sorted(trials['dataset_source'].dropna().astype(str).unique())) or 'unknown'}",
             "- objective: " + objective_text(spec["metrics"], spec["modes"]),
             f"- trial time: {trials['wall_time_s'].sum() / 60:.1f} min summed over trials",
             "- reference classifier: " + (f"{spec['classifier_accuracy']:.1%} test accuracy (needs "
                                           f"{spec['classifier_required']:.0%})" if "classifier_accuracy" in spec
                                           else "accuracy not recorded (a study made before it was)"),
             "- fid and kid compared " + fid_samples_text(trials), ""]
    if is_grid(spec):
        table = model_table(on_test_split(trials))
        lines += [f"## Models: final metrics on the {split_label(trials)} split, mean [95 % t interval] over seeds", "",
                  "`loss` is the final training loss (reconstruction + KL + weighted grey + L2) on this study's data; "
                  "the reference column was reported on 60k MNIST, so only the ordering is comparable. Validation "
                  "numbers are in trials.csv (the columns without `test_`).", "",
                  markdown_table(format_model_table(table), "metric"), ""]
        lines += loss_ordering(table)
    lines += best_trial_section(trials, finished, spec)
    if len(spec["metrics"]) > 1:
        lines += pareto_section(trials, spec)
    lines += ["## Claims (a)–(e) of the design, [docs/design.md](../../docs/design.md#claims)", ""]
    lines += [f"- {verdict.line()}" for verdict in verdicts_for(trials, epochs, details, spec)]
    lines += ["", verdict_rules(), ""]
    if figure_names:
        lines += ["## Figures", ""] + [f"![{name}]({FIGURES_DIR}/{name}.png)" for name in figure_names] + [""]
    text = "\n".join(lines)
    replace_atomically(text, folder / SUMMARY_FILE)  # replaces a link instead of writing through it
    return text


def best_trial_section(trials, finished, spec) -> list[str]:
    """summary.md's best trial (with its test and validation numbers) and the top trials, or why there is none."""
    lines = []
    try:
        best = None if varies_presets(trials) else best_trial(trials, tuple(spec["metrics"]), tuple(spec["modes"]))
    except ValueError as error:
        lines += ["## Best trial", "", f"none yet: {error}", ""]
        best = None
    if best is not None and (provisional := provisional_note(best)):
        lines += ["## Best trial", "", BEST_RULE, "", f"None yet: {provisional}.", ""]
        best = None
    if best is not None:
        params = trial_params(best)
        pairs = metric_pairs(best)
        lines += ["## Best trial", "", BEST_RULE, "",
                  f"`{best['trial_id']}` ({best['epochs_run']:.0f} epochs): "
                  + ", ".join(f"{k}={_cell(v)}" for k, v in params.items()), "",
                  markdown_table(pd.DataFrame({"test": [test for _, _, test in pairs],
                                               "validation": [validation for _, validation, _ in pairs]},
                                              index=[name for name, _, _ in pairs]), "metric"), "",
                  f"## Top trials by validation {spec['metrics'][0]}", ""]
        columns = ["status", "epochs_run", *[c for c in trials if c.startswith(PARAM_PREFIX)], "fid", "grey_fraction",
                   "collapse_rate", "class_accuracy"]
        top = finished.sort_values(spec["metrics"][0], ascending=spec["modes"][0] == "min").head(8)
        lines += [markdown_table(top.set_index("trial_id")[columns], "trial"), ""]
    return lines


def fid_samples_text(trials: pd.DataFrame) -> str:
    """How many generated and real samples fid and kid compared, per split: FID's bias depends on N, so two studies'
    fids compare only at equal N (pooling refuses otherwise)."""
    sizes = [f"{split} {', '.join(str(int(n)) for n in sorted(trials[column].dropna().unique()))}"
             for split, column in (("validation", FID_SAMPLES), ("test", TEST_PREFIX + FID_SAMPLES))
             if column in trials and trials[column].notna().any()]
    if not sizes:
        return "an unrecorded number of samples (a study made before it was recorded; eval_samples capped at the split)"
    return f"N generated vs N real samples, N = {'; '.join(sizes)} (fid's bias depends on N: compare fids at equal N)"


def verdict_rules() -> str:
    """How the verdicts above were decided, with the thresholds they used."""
    from study.analysis.claims import (MIN_EPOCHS, MIN_SEEDS, MIN_TRIALS, RESPECTED_CORRELATION,
                                       SMALLEST_COLLAPSE_SHARE, SMALLEST_CORRELATION, SMALLEST_WIDTH_EXCESS)
    from study.analysis.evidence import ALPHA, CONFIDENCE, TARGET_POWER

    return (f"Verdict rules: an effect is a difference of means over seeds (Welch), a Spearman correlation (in a "
            f"search: partial, the other searched parameters held fixed) or a difference of proportions, with its "
            f"{CONFIDENCE:.0%} interval (t-based; Fisher z for correlations; Newcombe for proportions, tested by "
            f"Fisher's exact test), judged against its smallest effect of interest δ (cvae/metrics.py; "
            f"{SMALLEST_CORRELATION} for a correlation; {SMALLEST_WIDTH_EXCESS} for one class's relative stroke width; "
            f"{SMALLEST_COLLAPSE_SHARE} for a share of collapsed trials). "
            f"Collapsed trials and trials whose collapse was not measured are named and left out of every other "
            f"test. The p-values behind (b), (c) and (d) are one family, Holm-corrected to {ALPHA:.0%}: an "
            f"effect significant after Holm is better or worse; one whose (1 − 2α/m) interval lies inside ±δ (two "
            f"one-sided tests, m the tests in the family) is `no effect larger than δ`; anything else is `undecided`, "
            f"with the sample size that would give {TARGET_POWER:.0%} power to find an effect of δ at α/m (the "
            f"observed variance taken as true). A claim is `supported` when all its tests are better, `not supported` "
            f"when every effect is smaller than δ, `contradicted` when a test is worse and none better, `partly "
            f"supported` when decided tests disagree. Values that agree exactly (zero variance) or fewer than two on a "
            f"side are not testable. A pool of studies, each run after the verdicts on the ones before (more seeds "
            f"because a verdict asked for them), tests everything at α divided by the number of studies (Bonferroni "
            f"over the looks). Below {MIN_SEEDS} seeds per model (a grid) or {MIN_TRIALS} finished trials or "
            f"{MIN_EPOCHS} epochs (a search) every verdict is `too little evidence`. Thickness counts as respected at "
            f"Spearman ≥ {RESPECTED_CORRELATION}. The numbers are the test split's; the per-class sweep behind (a) "
            f"and (b) draws at fixed conditions and compares with the validation split's real stroke widths (it "
            f"selects nothing).")


def pareto_section(trials: pd.DataFrame, spec: dict) -> list[str]:
    """The non-dominated completed trials of a multi-objective study, with how far each sits from real data."""
    completed, front = completed_front(trials, spec)
    front = front.copy()
    lines = [f"## Pareto front: {len(front)} of {len(completed)} completed trials are non-dominated on validation "
             + objective_text(spec["metrics"], spec["modes"]), ""]
    if front.empty:
        return lines + ["none yet", ""]
    if (level := real_level(front, "grey_fraction")) is not None:
        front["grey vs real"] = front["grey_fraction"] - level
        closest = front.loc[front["ink_w1"].astype(float).idxmin()]
        lines += [f"Real data: grey_fraction {level:.3g}; a negative `grey vs real` is sharper than real digits. "
                  f"Closest to real ink intensities (lowest ink_w1 {closest['ink_w1']:.3g}): trial "
                  f"`{closest['trial_id']}`.", ""]
    columns = [*[c for c in trials if c.startswith(PARAM_PREFIX)], *spec["metrics"],
               *[c for c in ("ink_w1", "grey vs real") if c in front and c not in spec["metrics"]],
               *[TEST_PREFIX + m for m in spec["metrics"] if TEST_PREFIX + m in front]]
    lines += [markdown_table(front.set_index("trial_id")[columns], "trial"), ""]
    examples = front_examples(trials, spec)
    if examples:
        lines += ["Samples from " + ", ".join(f"`{row['trial_id']}` ({reason})" for reason, row in examples)
                  + " are in the `front_samples` figure (same latents in every panel).", ""]
    return lines


