"""Seaborn figures and tables from a study's results (trials.csv, epochs.csv, details.csv, samples.npz)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter
import pandas as pd
import seaborn as sns

from cvae.config import REPORTED_TRAIN_LOSS
from cvae.metrics import METRICS, REAL_TARGET_METRICS, SAMPLE_METRICS
from study.tables import selection
from study.tables.records import MODEL, STARTED_AT, STATUS_PRUNED, param_column, with_models
from study.analysis.evidence import mean_interval
from study.spec.study_file import Parameter

MODEL_TABLE_METRICS = ("loss", *(name for name in METRICS if name.startswith("val_")), *SAMPLE_METRICS)
CURVE_METRICS = ("loss", "val_loss", "fid", "class_accuracy", "thickness_corr", "class_parity", "grey_fraction",
                 "collapse_rate")
GREY_PARAMETERS = ("grey_weight", "grey_threshold", "warmup_epochs")
GREY_METRICS = ("fid", "grey_fraction", "collapse_rate")


def clipped_band(mean: pd.Series, spread: pd.Series, metric: str) -> tuple[pd.Series, pd.Series]:
    """mean ± spread, clipped to the values the metric can take (a rate's error bar never goes below 0)."""
    spec = METRICS.get(metric)
    low, high = (spec.low, spec.high) if spec else (-np.inf, np.inf)
    return (mean - spread).clip(lower=low), (mean + spread).clip(upper=high)


def _direction(metric: str) -> str:
    if metric in REAL_TARGET_METRICS:
        return "real data's level is best"
    return "lower is better" if METRICS[metric].mode == "min" else "higher is better"


def mark_real_level(axis, frame: pd.DataFrame, metric: str, horizontal: bool = True) -> None:
    """A dashed line where the real held-out images sit on `metric`, if the frame reports their level."""
    if (level := selection.real_level(frame, metric)) is not None:
        (axis.axhline if horizontal else axis.axvline)(level, color="tab:green", linestyle="--", linewidth=1,
                                                       label=f"real data ({metric})")


def model_table(trials: pd.DataFrame, metrics=MODEL_TABLE_METRICS) -> pd.DataFrame:
    """Mean and std over seeds of each metric at every trial's last epoch, one row per model.

    Columns: `seeds`, `epochs`, then `<metric>_mean` / `_std` / `_low` / `_high` (the mean's 95 % t interval) per
    metric, and `reported_loss`
    (the final train loss the reference experiment reported on 60k MNIST) for presets.
    """
    frame = with_models(trials)
    grouped = frame.groupby(MODEL, sort=True)
    table = pd.DataFrame({"seeds": grouped.size(), "epochs": grouped["epochs_run"].max()})
    for metric in (m for m in metrics if m in frame):  # older tables lack newer metrics (e.g. val_elbo)
        table[f"{metric}_mean"] = grouped[metric].mean()
        table[f"{metric}_std"] = grouped[metric].std(ddof=1)
        table[f"{metric}_n"] = grouped[metric].count()  # seeds that measured it (a metric newer than some seeds)
        bounds = pd.DataFrame({model: mean_interval(values) for model, values in grouped[metric]},
                              index=["low", "high"]).T.reindex(table.index)
        spec = METRICS.get(metric)
        low, high = (spec.low, spec.high) if spec else (-np.inf, np.inf)
        table[f"{metric}_low"] = bounds["low"].clip(lower=low)  # an interval inside the values the metric can take
        table[f"{metric}_high"] = bounds["high"].clip(upper=high)
    table["reported_loss"] = [REPORTED_TRAIN_LOSS.get(name, np.nan) for name in table.index]
    return table


def format_model_table(table: pd.DataFrame, metrics=MODEL_TABLE_METRICS) -> pd.DataFrame:
    """model_table as 'mean [95 % interval]' strings, metrics as rows (the shape of the summary's table)."""
    cells = {}
    for model, row in table.iterrows():
        column = {"seeds": f"{row['seeds']:.0f}", "epochs": f"{row['epochs']:.0f}"}
        for metric in (m for m in metrics if f"{m}_mean" in row):
            mean, low, high = row[f"{metric}_mean"], row[f"{metric}_low"], row[f"{metric}_high"]
            if not np.isfinite(mean):
                column[metric] = "–"
                continue
            column[metric] = f"{mean:.4g}" + (f" [{low:.3g}, {high:.3g}]" if np.isfinite(low) else "")
            if row[f"{metric}_n"] < row["seeds"]:
                column[metric] += f" ({row[f'{metric}_n']:.0f} seeds)"
        column["reported loss (60k)"] = f"{row['reported_loss']:.2f}" if np.isfinite(row["reported_loss"]) else "–"
        cells[model] = column
    return pd.DataFrame(cells)


# ---------------------------------------------------------------- Model 1-5 (any grid study)


def plot_model_metrics(trials: pd.DataFrame, metrics=SAMPLE_METRICS) -> plt.Figure:
    """One panel per metric: each model's mean over seeds with the seeds' standard deviation."""
    frame = with_models(trials)
    columns = 4
    order = sorted(frame[MODEL].unique())
    metrics = [m for m in metrics if m in frame]  # tables made before a metric existed lack it
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics):
        mark_real_level(axis, frame, metric)
        stats = frame.groupby(MODEL)[metric].agg(["mean", "std"]).reindex(order)
        low, high = clipped_band(stats["mean"], stats["std"].fillna(0), metric)
        axis.errorbar(range(len(order)), stats["mean"], yerr=[stats["mean"] - low, high - stats["mean"]],
                      fmt="o", capsize=4, color="tab:blue", zorder=3)
        # The seeds as dots, jittered by a generator of the figure's own (seaborn's stripplot would draw from numpy's
        # global one): the same figure every time, and no one else's random stream moved.
        jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(frame))
        axis.scatter(frame[MODEL].map({model: i for i, model in enumerate(order)}) + jitter, frame[metric], s=9,
                     color="0.6", zorder=2)
        axis.set_xticks(range(len(order)), order)
        axis.set_title(f"{metric} ({_direction(metric)})", fontsize=9)
        axis.set_xlabel("")
        axis.set_ylabel("")
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    for axis in list(axes.flat)[len(metrics):]:
        axis.remove()
    figure.suptitle("Last-epoch metrics per model: mean ± std over seeds (dots: seeds)")
    figure.tight_layout()
    return figure


def plot_epoch_curves(epochs: pd.DataFrame, metrics=CURVE_METRICS) -> plt.Figure:
    """Per-epoch curves, one panel per metric, one line per model (band: std over seeds)."""
    frame = with_models(epochs)
    metrics = [m for m in metrics if m in frame]
    columns = 4
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.0 * rows), squeeze=False)
    models = sorted(frame[MODEL].unique())
    colours = dict(zip(models, sns.color_palette(n_colors=len(models))))
    for axis, metric in zip(axes.flat, metrics):
        sns.lineplot(data=frame, x="epoch", y=metric, hue=MODEL, hue_order=models, palette=colours,
                     errorbar=None, ax=axis, legend=axis is axes.flat[0])
        for model, group in frame.groupby(MODEL):  # the band: std over seeds, inside the metric's range
            stats = group.groupby("epoch")[metric].agg(["mean", "std"])
            low, high = clipped_band(stats["mean"], stats["std"].fillna(0), metric)
            axis.fill_between(stats.index, low, high, color=colours[model], alpha=0.2, linewidth=0)
        if metric in REAL_TARGET_METRICS:
            mark_real_level(axis, frame, metric)
        axis.set_title(f"{metric} ({_direction(metric)})", fontsize=9)
        axis.set_ylabel("")
    for axis in list(axes.flat)[len(metrics):]:
        axis.remove()
    legend = axes.flat[0].get_legend()
    if legend is not None:  # one legend for the figure, above the panels, so every panel keeps its size
        handles, labels = legend.legend_handles, [text.get_text() for text in legend.get_texts()]
        legend.remove()
        figure.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    return figure


def plot_sample_grids(grids: dict[str, np.ndarray], thickness) -> plt.Figure:
    """One panel per model: digits 0-9 (rows) x requested thickness (columns), the same latents in every panel.

    Args:
        grids: label -> uint8 array (10, len(thickness), 28, 28), as stored in samples.npz.
        thickness: the requested thickness of each column.
    """
    from cvae.drawing import tile

    figure, axes = plt.subplots(1, len(grids), figsize=(3.0 * len(grids), 6.0), squeeze=False)  # 450 x 900 px at 150 dpi
    for axis, (label, grid) in zip(axes.flat, grids.items()):
        axis.imshow(tile(np.asarray(grid, dtype=np.float32) / 255.0, scale=1), cmap="gray", vmin=0, vmax=255)
        axis.set_title(label, fontsize=9)
        axis.set_xticks([2 + 30 * i + 14 for i in range(len(thickness))], [f"{t:g}" for t in thickness], fontsize=7)
        axis.set_yticks([2 + 30 * i + 14 for i in range(grid.shape[0])], [str(d) for d in range(grid.shape[0])],
                        fontsize=7)
        axis.set_xlabel("requested thickness", fontsize=8)
    figure.tight_layout()
    return figure


def plot_thickness_sweeps(details: pd.DataFrame, column: str = MODEL) -> plt.Figure:
    """Requested vs measured thickness per class, one panel per value of `column` (mean over its trials)."""
    frame = with_models(details)
    groups = sorted(frame[column].unique())
    figure, axes = plt.subplots(1, len(groups), figsize=(max(3.2 * len(groups), 7), 3.4), squeeze=False,
                             sharey=True)
    for axis, group in zip(axes.flat, groups):
        sns.lineplot(data=frame[frame[column] == group], x="requested_thickness", y="measured_thickness",
                     hue="digit", palette="tab10", errorbar=None, marker="o", markersize=3, ax=axis,
                     legend=axis is axes.flat[-1])
        axis.plot([-1, 1], [-1, 1], color="black", linestyle="--", linewidth=1)
        axis.set_title(str(group), fontsize=9)
        axis.set_xlabel("requested")
    axes.flat[0].set_ylabel("measured (trial's normalisation)")
    if axes.flat[-1].get_legend() is not None:
        sns.move_legend(axes.flat[-1], "upper left", bbox_to_anchor=(1, 1), fontsize=7, title="digit")
    figure.suptitle("Thickness sweep: requested vs measured per class (dashed: perfect agreement)")
    figure.tight_layout()
    return figure


def plot_class_parity(details: pd.DataFrame, column: str = MODEL) -> plt.Figure:
    """Per class: generated stroke width relative to the other classes, per value of `column`, next to real digits.

    The real digits' bars are the target; global vs per_class normalisation shows as distance from them.
    """
    frame = with_models(details)
    frame["relative_width"] = frame["relative_width"].fillna(0.0)  # no measurable stroke counts as 0, as in the metric
    generated = frame.groupby([column, "digit"], as_index=False)["relative_width"].mean()
    generated[column] = generated[column].astype(str)
    real = frame.groupby("digit", as_index=False)["real_relative_width"].mean().rename(
        columns={"real_relative_width": "relative_width"})
    real[column] = "real digits"
    bars = pd.concat([real, generated], ignore_index=True)
    order = ["real digits", *sorted(generated[column].unique())]
    figure, axis = plt.subplots(figsize=(10, 3.6))
    palette = ["0.2", *sns.color_palette("tab10", len(order) - 1)]
    sns.barplot(data=bars, x="digit", y="relative_width", hue=column, hue_order=order, palette=palette, ax=axis)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_ylabel("stroke width / other classes'")
    axis.set_title("Class parity: relative stroke width per class, averaged over requested thickness")
    sns.move_legend(axis, "upper left", bbox_to_anchor=(1, 1), fontsize=8, title=None)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- searched studies


def _objective(spec: dict) -> list[tuple[str, str]]:
    return list(zip(spec["metrics"], spec["modes"]))


def _searched(spec: dict) -> list[str]:
    return [p["name"] for p in spec["parameters"]]


def plot_objective_history(trials: pd.DataFrame, spec: dict) -> plt.Figure:
    """Each objective at every trial's last epoch in the order the trials started, with the best so far."""
    objectives = _objective(spec)
    if STARTED_AT in trials and trials[STARTED_AT].notna().all():  # tables of old studies lack it: row order
        trials = trials.sort_values(STARTED_AT, kind="stable")
    figure, axes = plt.subplots(1, len(objectives), figsize=(5.5 * len(objectives), 3.6), squeeze=False)
    order = np.arange(1, len(trials) + 1)
    for axis, (metric, mode) in zip(axes.flat, objectives):
        values = trials[metric].astype(float).to_numpy()
        best = pd.Series(values).cummin() if mode == "min" else pd.Series(values).cummax()
        sns.scatterplot(x=order, y=values, hue=trials["status"].to_numpy(), ax=axis)
        axis.plot(order, best.to_numpy(), color="black", drawstyle="steps-post", label=f"best so far ({mode})")
        axis.set_xlabel("trial (in start order)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted, never halved
        axis.set_ylabel(f"{metric} at last epoch")
        axis.legend(fontsize=8)
    figure.suptitle("Objective history")
    figure.tight_layout()
    return figure


def parameter_importance(trials: pd.DataFrame, spec: dict) -> pd.Series:
    """Optuna's fANOVA importance of each searched parameter for the first objective (finished trials)."""
    import optuna

    from study.spec.study_file import StudySpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # an in-memory study per call: no "study created" lines
    distributions = StudySpec.from_dict(spec).optuna_distributions()
    metric, mode = _objective(spec)[0]
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for _, row in trials.iterrows():
        value = float(row[metric])
        if not math.isfinite(value):
            continue
        params = {name: _param_value(row[param_column(name)], distributions[name]) for name in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    if len(study.trials) < 2:
        raise ValueError(f"parameter importance needs at least 2 finished trials with a finite {metric}")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return pd.Series(optuna.importance.get_param_importances(study, evaluator=evaluator), name=metric)


def _param_value(value, distribution):
    import optuna

    if isinstance(distribution, optuna.distributions.IntDistribution):
        return int(value)
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return float(value)
    return value


def plot_parameter_importance(trials: pd.DataFrame, spec: dict) -> plt.Figure:
    """fANOVA importances, titled with the trials they rest on (and "too little evidence" below MIN_TRIALS)."""
    from study.analysis.claims import MIN_TRIALS

    importance = parameter_importance(trials, spec)
    figure, axis = plt.subplots(figsize=(6, 0.5 * len(importance) + 1.8))
    sns.barplot(x=importance.to_numpy(), y=importance.index, color="tab:blue", ax=axis)
    axis.set_xlabel(f"fANOVA importance for {importance.name} (Optuna)")
    axis.set_ylabel("")
    rests_on = f"from {len(trials)} finished trials"
    if "epochs_run" in trials and trials["epochs_run"].nunique() > 1:  # pruned trials were measured earlier
        rests_on += (f", measured after {trials['epochs_run'].min():.0f}–{trials['epochs_run'].max():.0f} epochs "
                     "(pruned ones earlier)")
    axis.set_title(rests_on + (f": too little evidence (fewer than {MIN_TRIALS})" if len(trials) < MIN_TRIALS else ""),
                   fontsize=9)
    figure.tight_layout()
    return figure


def plot_parallel_coordinates(trials: pd.DataFrame, spec: dict) -> plt.Figure:
    """One line per trial across the searched parameters (scaled to [0, 1]), coloured by the first objective."""
    metric, mode = _objective(spec)[0]
    names = _searched(spec)
    frame = trials[np.isfinite(trials[metric].astype(float))]
    scaled = {}
    for name in names:
        column = frame[param_column(name)]
        if not pd.api.types.is_numeric_dtype(column):
            codes = {value: i for i, value in enumerate(sorted(column.unique()))}
            scaled[name] = column.map(codes).astype(float) / max(len(codes) - 1, 1)
        else:
            values = column.astype(float)
            values = np.log(values) if name in log_scaled(spec) and (values > 0).all() else values
            span = values.max() - values.min()
            scaled[name] = (values - values.min()) / span if span > 0 else values * 0 + 0.5
    figure, axis = plt.subplots(figsize=(2.2 * len(names) + 2, 4.4))
    values = frame[metric].astype(float)
    norm = plt.Normalize(values.min(), values.max())
    cmap = plt.get_cmap("viridis_r" if mode == "min" else "viridis")
    pruned = (frame["status"] == STATUS_PRUNED).to_numpy() if "status" in frame else np.zeros(len(frame), bool)
    for position in range(len(frame)):  # a pruned trial's value is from fewer epochs: dashed
        axis.plot(range(len(names)), [scaled[n].iloc[position] for n in names],
                  color=cmap(norm(values.iloc[position])), alpha=0.8, linestyle="--" if pruned[position] else "-")
    axis.vlines(range(len(names)), 0, 1, color="0.3", linewidth=0.8)
    for index, name in enumerate(names):  # each axis labelled in its own units (categories by name)
        for where, label in axis_labels(frame[param_column(name)], scaled[name]):
            axis.text(index + 0.03, where, label, fontsize=7, va="center", ha="left",
                      bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})
    axis.set_xticks(range(len(names)), names)
    axis.set_yticks([])
    axis.set_xlim(-0.2, len(names) - 0.4)
    figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axis, label=f"{metric} (last epoch)")
    axis.set_title("Parallel coordinates (log-scaled where searched on a log scale)"
                   + ("; dashed: pruned, fewer epochs" if pruned.any() else ""))
    figure.tight_layout()
    return figure


def axis_labels(column: pd.Series, scaled: pd.Series) -> list[tuple[float, str]]:
    """(height, text) marks for one parallel-coordinates axis: every category, or the smallest, middle and
    largest value of a number (the middle one in the axis's own scale, log where the search was)."""
    if not pd.api.types.is_numeric_dtype(column):
        return sorted({(float(s), str(v)) for v, s in zip(column, scaled)})
    pairs = sorted(zip(scaled.astype(float), column.astype(float)))
    if not pairs:
        return []
    middle = min(pairs, key=lambda pair: abs(pair[0] - 0.5))
    chosen = {pairs[0], middle, pairs[-1]}
    return [(height, f"{value:.3g}") for height, value in sorted(chosen)]


def log_scaled(spec: dict) -> set[str]:
    """The parameters a study (its study.json) searched on a log scale: their axes are drawn on one too."""
    return {parameter.name for parameter in map(Parameter.from_dict, spec.get("parameters", []))
            if parameter.log_scaled}


def plot_grey_effects(trials: pd.DataFrame, spec: dict, metrics=GREY_METRICS) -> plt.Figure:
    """grey_weight / grey_threshold / warmup_epochs (columns) against fid, grey_fraction, collapse_rate (rows); a
    parameter searched on a log scale gets a log axis."""
    parameters = [p for p in GREY_PARAMETERS if param_column(p) in trials]
    if not parameters:
        raise ValueError(f"the study searched none of {', '.join(GREY_PARAMETERS)}")
    # the legend shows the parameter's name, not its table column (param_condition_mode)
    hue = "condition_mode" if param_column("condition_mode") in trials else None
    trials = trials.rename(columns={param_column("condition_mode"): "condition_mode"}) if hue else trials
    figure, axes = plt.subplots(len(metrics), len(parameters), figsize=(3.6 * len(parameters), 2.8 * len(metrics)),
                                squeeze=False)
    # Fidelity shown, not hidden: a pruned trial's numbers come from fewer epochs than a completed one's.
    style = "status" if "status" in trials and trials["status"].nunique() > 1 else None
    for row, metric in enumerate(metrics):
        for column, parameter in enumerate(parameters):
            axis = axes[row, column]
            sns.scatterplot(data=trials, x=param_column(parameter), y=metric, hue=hue, style=style,
                            markers={"completed": "o", "pruned": "X"} if style else True, ax=axis,
                            legend=(row, column) == (0, len(parameters) - 1))
            if parameter in log_scaled(spec):
                axis.set_xscale("log")
                axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, not one per decade
                axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
                axis.xaxis.set_minor_formatter(NullFormatter())
            axis.set_xlabel(parameter if row == len(metrics) - 1 else "")
            axis.set_ylabel(metric if column == 0 else "")
    if hue and axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1, 1), fontsize=8, title="condition_mode")
    figure.suptitle("Grey-loss settings vs last-epoch fid, grey_fraction and collapse_rate"
                    + (" (x: pruned, fewer epochs)" if style else ""))
    figure.tight_layout()
    return figure


def pareto_mask(trials: pd.DataFrame, metrics=("fid", "grey_fraction"), modes=("min", "min")) -> np.ndarray:
    """True for trials not dominated on the given last-epoch metrics (NaN rows are never on the front)."""
    return selection.pareto_mask(trials, metrics, modes)


def plot_pareto(trials: pd.DataFrame, metrics=("fid", "grey_fraction"), modes=("min", "min")) -> plt.Figure:
    """Last-epoch fid vs grey_fraction of every trial; the non-dominated ones joined as the Pareto front."""
    front = pareto_mask(trials, metrics, modes)
    figure, axis = plt.subplots(figsize=(5.5, 4))
    sns.scatterplot(x=trials[metrics[0]], y=trials[metrics[1]], color="0.6", label="trials", ax=axis)
    on_front = trials[front].sort_values(metrics[0])
    axis.plot(on_front[metrics[0]], on_front[metrics[1]], "o-", color="tab:red", label="Pareto front")
    axis.set_xlabel(f"{metrics[0]} ({_direction(metrics[0])})")
    axis.set_ylabel(f"{metrics[1]} ({_direction(metrics[1])})")
    mark_real_data(axis, trials, metrics)
    axis.legend()
    figure.tight_layout()
    return figure


def mark_real_data(axis, trials: pd.DataFrame, metrics) -> None:
    """A dashed line where real data sits on each axis whose metric the trials report a real value for
    (real_grey_fraction: real digits are about half grey, so 'sharper' can overshoot reality)."""
    for metric, horizontal in zip(metrics, (False, True)):
        mark_real_level(axis, trials, metric, horizontal)
