"""Which figures a study gets (a grid of models, a search, a Pareto front), drawn from its tables into figures/."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd

from study.analysis.details import BEST, FINAL, sample_key
from study.tables.records import FINISHED, MODEL, SEED_PARAMETER, STATUS_COMPLETED, param_column, with_models
from study.tables.selection import pareto_front


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
    from study.analysis import plots

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


