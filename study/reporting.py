"""A study's report as a library: details drawn from checkpoints, figures, summary.md with claim verdicts (report.py
and analysis.ipynb both use it)."""

from __future__ import annotations

import functools
import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cvae.metrics import TEST_PREFIX
from study.studies import objective_text
from study.records import (DETAILS_FILE, FIGURES_DIR, FINISHED, MODEL, PARAM_PREFIX, SAMPLES_FILE, SEED_PARAMETER,
                           STATUS_COMPLETED, SUMMARY_FILE, param_column, trial_params, with_models)
from study.selection import (BEST_RULE, best_trial, incomplete_note, metric_pairs, on_test_split, pareto_front,
                             provisional_note, real_level, split_label)
from study.tables import checkpoint_within, load_details, replace_atomically

FINAL, BEST = "final", "best"  # samples.npz keys: "<kind>__<trial_id>"


# ---------------------------------------------------------------- details from checkpoints


def final_checkpoint(best_checkpoint: Path) -> Path | None:
    """The newest checkpoint of the trial that wrote `best_checkpoint` (Tune keeps the best and the newest)."""
    path = Path(best_checkpoint)
    trial_dir = next((p.parent for p in (path, *path.parents) if p.name.startswith("checkpoint_")), None)
    if trial_dir is None or not trial_dir.is_dir():
        return path if (path / "decoder.keras").is_file() else None
    candidates = sorted(trial_dir.glob("checkpoint_[0-9]*"))
    return _model_folder(candidates[-1]) if candidates else None


def _model_folder(checkpoint: Path) -> Path | None:
    found = sorted(Path(checkpoint).rglob("decoder.keras"))
    return found[-1].parent if found else None


def sample_key(kind: str, trial_id: str) -> str:
    return f"{kind}__{trial_id}"


def collect_details(folder: Path, trials: pd.DataFrame, spec: dict, refresh: bool = False, log=print):
    """Sweep profiles and sample grids from the trials' checkpoints, saved so the results need no checkpoints later.

    Trials already in details.csv are kept unless `refresh`; a trial whose checkpoint is gone is skipped (said so).
    """
    folder = Path(folder)
    details, grids = (pd.DataFrame(), {}) if refresh else load_details(folder)
    done = set(details["trial_id"]) if not details.empty else set()
    finished = trials[trials["status"].isin(FINISHED) & trials["checkpoint"].notna() & ~trials["trial_id"].isin(done)]
    todo, missing = [], []
    for _, trial in finished.iterrows():
        checkpoint = final_checkpoint(checkpoint_within(folder, trial["checkpoint"], spec))
        if checkpoint is None:
            missing.append(trial["trial_id"])
        else:
            todo.append((trial["trial_id"], checkpoint))
    if missing:
        log(f"no checkpoint on disk for {len(missing)} trial(s) ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); their sweeps and samples are left out")
    try:
        best = best_trial(trials, tuple(spec["metrics"]), tuple(spec["modes"]))
        best_folder = (None if sample_key(BEST, best["trial_id"]) in grids
                       else _model_folder(checkpoint_within(folder, best["checkpoint"], spec)))
    except (ValueError, TypeError):  # no finished trial yet, or no checkpoint recorded
        best_folder = None
    if not todo and best_folder is None:
        return details, grids
    from cvae.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()  # TensorFlow: only when there is something to draw
    from cvae.diagnostics import describe_checkpoint

    rows = []
    with warnings.catch_warnings(record=True) as caught:  # e.g. the data's fallback, met once per checkpoint
        warnings.simplefilter("always")
        for number, (trial_id, checkpoint) in enumerate(todo, 1):
            log(f"[{number}/{len(todo)}] {trial_id}: sweep and samples from {checkpoint}")
            profile, grid = describe_checkpoint(checkpoint)
            rows += [{"trial_id": trial_id, "checkpoint_epoch": _epoch_of(checkpoint), **row} for row in profile]
            grids[sample_key(FINAL, trial_id)] = grid
        if best_folder is not None:
            log(f"best trial {best['trial_id']}: samples from its best checkpoint {best_folder}")
            grids[sample_key(BEST, best["trial_id"])] = describe_checkpoint(best_folder)[1]
    for message in dict.fromkeys(str(warning.message).split(". ")[0] for warning in caught):
        log(f"note: {message}")  # each once, as a line of the report's own
    if rows:
        details = pd.concat([details, pd.DataFrame(rows)], ignore_index=True)
    details.to_csv(folder / DETAILS_FILE, index=False)
    np.savez_compressed(folder / SAMPLES_FILE, **grids)
    return details, grids


def _epoch_of(checkpoint: Path) -> int | None:
    name = Path(checkpoint).name
    return int(name.split("_")[-1]) if name.startswith("epoch_") else None


# ---------------------------------------------------------------- figures and summary


def is_grid(spec: dict) -> bool:
    """Grid studies repeat each point over seeds: they get the per-model table and figures."""
    return spec["algorithm"] == "grid"


def varies_presets(trials: pd.DataFrame) -> bool:
    """Model 1-5 style: the trials are presets, so claims are judged by comparing presets."""
    return param_column("preset") in trials


def model_grids(trials: pd.DataFrame, grids: dict) -> dict[str, np.ndarray]:
    """One final-checkpoint grid per model: its lowest-seed trial that has one."""
    chosen = {}
    frame = with_models(trials)
    if SEED_PARAMETER in frame:
        frame = frame.sort_values(SEED_PARAMETER)
    for _, trial in frame.iterrows():
        key = sample_key(FINAL, trial["trial_id"])
        if trial[MODEL] not in chosen and key in grids:
            chosen[trial[MODEL]] = grids[key]
    return dict(sorted(chosen.items()))


def make_figures(trials, epochs, details, grids, spec, log=print) -> dict:
    """name -> figure, for every figure this study's tables can support (one that fails is skipped, said so)."""
    from cvae.diagnostics import GRID_THICKNESS
    from study import plots

    finished = trials[trials["status"].isin(FINISHED)]
    planned = {}
    if is_grid(spec):
        planned["model_metrics"] = lambda: plots.plot_model_metrics(finished)
        if not epochs.empty:
            planned["epoch_curves"] = lambda: plots.plot_epoch_curves(epochs)
        if grids_per_model := model_grids(finished, grids):
            planned["sample_grids"] = lambda: plots.plot_sample_grids(grids_per_model, GRID_THICKNESS)
    column = MODEL
    if not varies_presets(trials):
        planned["objective_history"] = lambda: plots.plot_objective_history(trials, spec)
        planned["parameter_importance"] = lambda: plots.plot_parameter_importance(finished, spec)
        planned["parallel_coordinates"] = lambda: plots.plot_parallel_coordinates(finished, spec)
        if any(param_column(p) in trials for p in plots.GREY_PARAMETERS):
            planned["grey_effects"] = lambda: plots.plot_grey_effects(finished, spec)
        for metrics, modes in objective_pairs(spec):  # real data marked where the trials report it
            planned[f"pareto_{metrics[0]}_{metrics[1]}"] = functools.partial(plots.plot_pareto, finished, metrics,
                                                                            modes)
        if ("fid", "grey_fraction") not in itertools.combinations(spec["metrics"], 2):
            planned["pareto_fid_grey"] = lambda: plots.plot_pareto(finished)
        if examples := front_example_grids(trials, spec, grids):
            planned["front_samples"] = lambda: plots.plot_sample_grids(examples, GRID_THICKNESS)
        best = [(key.split("__", 1)[1], grid) for key, grid in grids.items() if key.startswith(BEST + "__")]
        if best:
            planned["best_samples"] = lambda: plots.plot_sample_grids({f"best trial {best[0][0]}": best[0][1]},
                                                                      GRID_THICKNESS)
        if not is_grid(spec) and param_column("condition_mode") in trials:
            column = param_column("condition_mode")  # dozens of sampled trials: group the sweeps by normalisation
    if not details.empty:
        extra = [column] if column != MODEL else []
        labelled = details.merge(with_models(trials)[["trial_id", MODEL, *extra]], on="trial_id")
        planned["thickness_sweeps"] = lambda: plots.plot_thickness_sweeps(labelled, column)
        planned["class_parity"] = lambda: plots.plot_class_parity(labelled, column)
    figures = {}
    for name, draw in planned.items():
        try:
            figures[name] = draw()
        except (ValueError, KeyError) as error:  # e.g. too few finished trials for importance
            log(f"skipped figure {name}: {error}")
    return figures


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
    from study.claims import judge_models, judge_search

    if varies_presets(trials):
        return judge_models(trials, details)
    return judge_search(trials, epochs, details)


def write_summary(folder: Path, trials, epochs, details, spec, figure_names) -> str:
    from study.plots import format_model_table, model_table

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
                                           else "accuracy not recorded (a study made before it was)"), ""]
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


def verdict_rules() -> str:
    """How the verdicts above were decided, with the thresholds they used."""
    from study.claims import MIN_EPOCHS, MIN_SEEDS, MIN_TRIALS, RESPECTED_CORRELATION
    from study.evidence import ALPHA, CONFIDENCE, TARGET_POWER

    return (f"Verdict rules: an effect is a difference of means over seeds (Welch; within trials: paired) or a "
            f"Spearman correlation, with its {CONFIDENCE:.0%} interval (t-based; Fisher z for correlations). The "
            f"p-values behind (b), (c) and (d) are one family, Holm-corrected to {ALPHA:.0%}. A difference that is not "
            f"significant while the power at the observed effect is below {TARGET_POWER:.0%} is `undecided`, with "
            f"the sample size that would reach {TARGET_POWER:.0%} power at {ALPHA:g} / the number of tests (the "
            f"observed effect and variance taken as true). Below {MIN_SEEDS} seeds per model (a grid) or "
            f"{MIN_TRIALS} finished trials or {MIN_EPOCHS} epochs (a search) every verdict is `too little evidence`. "
            f"Thickness counts as respected at Spearman ≥ {RESPECTED_CORRELATION}.")


def objective_pairs(spec: dict) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """((metric, metric), (mode, mode)) for every pair of a multi-objective study's objectives (one Pareto figure
    each); empty for a single objective."""
    return [tuple(zip(*pair)) for pair in itertools.combinations(list(zip(spec["metrics"], spec["modes"])), 2)]


def completed_front(trials: pd.DataFrame, spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed trials, their Pareto front on the study's objectives at the last epoch)."""
    completed = trials[trials["status"] == STATUS_COMPLETED]
    return completed, pareto_front(completed, spec["metrics"], spec["modes"])


def front_examples(trials: pd.DataFrame, spec: dict) -> list[tuple[str, pd.Series]]:
    """Up to three Pareto-front members that show a multi-objective study's trade-off: the best in the first and in
    the second objective, and the one closest to real ink intensities (lowest ink_w1; else best in the third
    objective). A member picked twice is shown once. Empty for single-objective studies."""
    if len(spec["metrics"]) < 2:
        return []
    _, front = completed_front(trials, spec)
    if front.empty:
        return []
    picks = [(f"best {metric}", metric, mode) for metric, mode in zip(spec["metrics"][:2], spec["modes"][:2])]
    if "ink_w1" in front and front["ink_w1"].notna().any():
        picks.append(("closest to real ink", "ink_w1", "min"))
    elif len(spec["metrics"]) > 2:
        picks.append((f"best {spec['metrics'][2]}", spec["metrics"][2], spec["modes"][2]))
    chosen, seen = [], set()
    for reason, metric, mode in picks:
        values = front[metric].astype(float)
        row = front.loc[values.idxmin() if mode == "min" else values.idxmax()]
        if row["trial_id"] not in seen:
            seen.add(row["trial_id"])
            chosen.append((reason, row))
    return chosen


def front_example_grids(trials: pd.DataFrame, spec: dict, grids: dict) -> dict[str, np.ndarray]:
    """label -> final sample grid of each front_examples member that has one in samples.npz."""
    return {_example_label(reason, row): grids[sample_key(FINAL, row["trial_id"])]
            for reason, row in front_examples(trials, spec) if sample_key(FINAL, row["trial_id"]) in grids}


def _example_label(reason: str, row: pd.Series) -> str:
    short = {"fid": "fid", "grey_fraction": "grey", "ink_w1": "ink"}  # a panel is 2 inches wide
    numbers = " ".join(f"{label} {float(row[name]):.2g}" for name, label in short.items()
                       if name in row and pd.notna(row[name]))
    return f"{row['trial_id']}: {reason}\n{numbers}"


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
