"""Every figure and table of study.analysis.plots on small tables made here (no training); the verdicts are test_claims.py's."""


import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from cvae.metrics import SAMPLE_METRICS  # noqa: E402
from study.analysis import plots  # noqa: E402
from study.tables.records import label_models, with_models  # noqa: E402

PRESETS = ("model_1", "model_2", "model_3", "model_4", "model_5")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_model_table_means_stds_and_intervals_per_model(models_tables):
    trials, _, _ = models_tables()
    table = plots.model_table(trials)
    assert list(table.index) == list(PRESETS) and (table["seeds"] == 3).all()
    model_3 = trials[trials["param_preset"] == "model_3"]
    assert table.loc["model_3", "fid_mean"] == pytest.approx(model_3["fid"].mean())
    assert table.loc["model_3", "fid_std"] == pytest.approx(model_3["fid"].std())
    assert table.loc["model_1", "reported_loss"] == 24.85 and table.loc["model_3", "epochs"] == 40
    formatted = plots.format_model_table(table)
    low, high = stats.t.interval(0.95, len(model_3) - 1, loc=model_3["fid"].mean(), scale=stats.sem(model_3["fid"]))
    assert (table.loc["model_3", "fid_low"], table.loc["model_3", "fid_high"]) == pytest.approx((low, high))
    assert list(formatted.columns) == list(PRESETS)
    assert formatted.loc["fid", "model_3"] == f"{model_3['fid'].mean():.4g} [{low:.3g}, {high:.3g}]"


def test_label_models_without_presets_drops_the_seed():
    frame = pd.DataFrame({"trial_id": ["a", "b"], "param_latent_dim": [8, 16], "param_seed": [0, 1]})
    assert list(label_models(frame)) == ["latent_dim=8", "latent_dim=16"]


def test_model_metrics_has_one_panel_per_sample_metric(models_tables):
    trials, _, _ = models_tables()
    figure = plots.plot_model_metrics(trials)
    assert len(figure.axes) == len(SAMPLE_METRICS)
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == list(PRESETS)
    assert figure.axes[0].get_title().startswith(SAMPLE_METRICS[0])


def test_epoch_curves_have_one_line_per_model(models_tables):
    _, epochs, _ = models_tables()
    figure = plots.plot_epoch_curves(epochs)
    assert len(figure.axes) == len(plots.CURVE_METRICS)
    assert [text.get_text() for text in figure.legends[0].get_texts()] == list(PRESETS)
    assert len(figure.axes[1].get_lines()) >= len(PRESETS)


def test_sample_grids_one_panel_per_model():
    grids = {name: np.full((10, 5, 28, 28), i * 40, dtype=np.uint8) for i, name in enumerate(PRESETS)}
    figure = plots.plot_sample_grids(grids, (-1, -0.5, 0, 0.5, 1))
    assert [axis.get_title() for axis in figure.axes] == list(PRESETS)
    image = figure.axes[2].get_images()[0].get_array()
    assert image.shape == (10 * 30 + 2, 5 * 30 + 2) and image[5, 5] == 80  # model_3's cells, grey gaps around


def test_thickness_sweeps_one_panel_per_model_with_ten_digits(models_tables):
    trials, _, details = models_tables()
    details = details.merge(with_models(trials)[["trial_id", "model"]], on="trial_id")
    figure = plots.plot_thickness_sweeps(details)
    assert [axis.get_title() for axis in figure.axes] == list(PRESETS)
    assert len(figure.axes[0].get_lines()) == 10 + 1  # one per digit + the diagonal
    x, y = figure.axes[0].get_lines()[0].get_data()
    assert np.allclose(x, np.linspace(-1, 1, 9)) and np.allclose(y, x * 0.9, atol=0.03)


def test_class_parity_bars_for_real_and_each_group(models_tables):
    trials, _, details = models_tables()
    details = details.merge(with_models(trials)[["trial_id", "model"]], on="trial_id")
    figure = plots.plot_class_parity(details)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ["real digits", *PRESETS]
    heights = [bar.get_height() for container in axis.containers for bar in container]
    assert len(heights) == 10 * 6
    model_1_digit_1 = axis.containers[1][1].get_height()
    assert model_1_digit_1 == pytest.approx(1.4, abs=0.02)


def test_search_figures(grey_spec, search_tables):
    trials, _ = search_tables()
    history = plots.plot_objective_history(trials, grey_spec)
    best_line = history.axes[0].get_lines()[-1].get_ydata()
    assert np.all(np.diff(best_line) <= 0) and best_line[-1] == trials["fid"].min()

    importance = plots.parameter_importance(trials, grey_spec)
    assert set(importance.index) == {p["name"] for p in grey_spec["parameters"]}
    assert importance.sum() == pytest.approx(1.0)
    assert len(plots.plot_parameter_importance(trials, grey_spec).axes[0].patches) == len(importance)
    mixed = trials.assign(epochs_run=np.where(trials["status"] == "pruned", 2, 6))
    title = plots.plot_parameter_importance(mixed, grey_spec).axes[0].get_title()
    assert "measured after 2–6 epochs (pruned ones earlier)" in title, title

    parallel = plots.plot_parallel_coordinates(trials, grey_spec)
    assert len(parallel.axes[0].get_lines()) == len(trials)
    dashed = [line for line in parallel.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == (trials["status"] == "pruned").sum() > 0  # pruned trials told from completed ones
    assert [t.get_text() for t in parallel.axes[0].get_xticklabels()] == [p["name"] for p in grey_spec["parameters"]]

    effects = plots.plot_grey_effects(trials, grey_spec)
    assert len(effects.axes) == 3 * 3 and effects.axes[0].get_xscale() == "log"
    assert effects.axes[3].get_ylabel() == "grey_fraction"
    assert "x: pruned, fewer epochs" in effects._suptitle.get_text()  # mixed fidelity is marked, not hidden
    legend = [text.get_text() for text in effects.axes[2].get_legend().get_texts()]
    assert {"completed", "pruned"} <= set(legend)
    assert not any(text.startswith("param_") for text in legend), legend  # parameter names, not table columns


def test_parallel_coordinates_label_every_axis_in_its_own_units(grey_spec, search_tables):
    trials, _ = search_tables()
    figure = plots.plot_parallel_coordinates(trials, grey_spec)
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"global", "per_class"} <= texts  # categories by name
    for name in ("grey_weight", "latent_dim", "warmup_epochs"):
        column = trials[f"param_{name}"].astype(float)
        assert {f"{column.min():.3g}", f"{column.max():.3g}"} <= texts, name
    assert "low" not in texts and "high" not in texts


def test_history_follows_the_start_order_not_the_row_order(grey_spec, search_tables):
    trials, _ = search_tables()
    trials["started_at"] = np.arange(len(trials), dtype=float)
    shuffled = trials.sample(frac=1.0, random_state=3)  # as a resume may leave trials.csv
    figure = plots.plot_objective_history(shuffled, grey_spec)
    best_line = figure.axes[0].get_lines()[-1].get_ydata()
    np.testing.assert_allclose(best_line, trials["fid"].cummin().to_numpy())


def test_error_bars_stay_inside_each_metrics_range(models_tables):
    trials, epochs, _ = models_tables()
    trials.loc[trials["param_preset"] == "model_1", "collapse_rate"] = [0.0, 0.0, 0.9]  # mean 0.3, std 0.52
    figure = plots.plot_model_metrics(trials, metrics=("collapse_rate", "thickness_corr"))
    segments = np.concatenate([collection.get_segments() for collection in figure.axes[0].containers[0].lines[2]])
    assert segments[:, :, 1].min() == 0.0 and segments[:, :, 1].max() <= 1.0
    epochs.loc[epochs["param_preset"] == "model_2", "collapse_rate"] = np.repeat([0.0, 0.0, 0.9], 3)  # per epoch
    curves = plots.plot_epoch_curves(epochs, metrics=("collapse_rate",))
    bands = [collection for collection in curves.axes[0].collections if collection.get_paths()]
    assert bands and min(path.vertices[:, 1].min() for band in bands for path in band.get_paths()) >= 0.0


def test_pareto_front_is_the_non_dominated_trials():
    trials = pd.DataFrame({"fid": [10, 20, 30, 15, np.nan], "grey_fraction": [0.5, 0.2, 0.1, 0.6, 0.0]})
    assert list(plots.pareto_mask(trials)) == [True, True, True, False, False]
    figure = plots.plot_pareto(trials)
    front = figure.axes[0].get_lines()[0]
    assert list(front.get_xdata()) == [10, 20, 30]
    assert not any("real data" in text.get_text() for text in figure.axes[0].get_legend().get_texts())
    trials["real_grey_fraction"] = 0.48  # what the trials report for their real validation digits
    marked = plots.plot_pareto(trials).axes[0]
    real = [line for line in marked.get_lines() if line.get_label() == "real data (grey_fraction)"]
    assert len(real) == 1 and list(real[0].get_ydata()) == [0.48, 0.48]  # a horizontal line at the real value


def test_grey_effects_needs_a_grey_parameter(grey_spec):
    with pytest.raises(ValueError, match="searched none of"):
        plots.plot_grey_effects(pd.DataFrame({"param_latent_dim": [4], "fid": [1.0]}), grey_spec)


def test_an_axis_is_log_scaled_where_the_parameter_was_searched_on_a_log_scale(grey_spec, search_tables):
    """The scale comes from the study's Parameter, not from the parameter's name."""
    trials, _ = search_tables(collapse_from_start=False)
    linear = {**grey_spec, "parameters": [dict(p, distribution="uniform") if p["name"] == "grey_weight" else p
                                          for p in grey_spec["parameters"]]}
    assert "grey_weight" in plots.log_scaled(grey_spec) and "grey_weight" not in plots.log_scaled(linear)
    assert "latent_dim" in plots.log_scaled(grey_spec)  # int with log: true
    assert plots.plot_grey_effects(trials, grey_spec).axes[0].get_xscale() == "log"
    assert plots.plot_grey_effects(trials, linear).axes[0].get_xscale() == "linear"


# ---------------------------------------------------------------- verdicts


def test_figures_read_at_print_size(grey_spec, models_tables, search_tables):
    """Integer trial axes, 1-2-5 ticks on a log axis, grey_fraction against real data, importances that say what
    they rest on."""
    trials, _ = search_tables(collapse_from_start=False)
    history = plots.plot_objective_history(trials, grey_spec)
    ticks = history.axes[0].get_xticks()
    assert len(ticks) and all(float(tick).is_integer() for tick in ticks)
    effects = plots.plot_grey_effects(trials, grey_spec)
    effects.canvas.draw()
    weight_axis = effects.axes[len(effects.axes) - len(plots.GREY_PARAMETERS)]  # bottom row, grey_weight column
    shown = [label.get_text() for label in weight_axis.get_xticklabels() if label.get_text()]
    assert weight_axis.get_xscale() == "log" and len(shown) >= 3, shown
    models, _, _ = models_tables()
    models["real_grey_fraction"] = 0.48
    panels = plots.plot_model_metrics(models)
    grey = next(axis for axis in panels.axes if axis.get_title().startswith("grey_fraction"))
    assert "lower is better" not in grey.get_title() and "real data" in grey.get_title()
    assert [line.get_ydata()[0] for line in grey.get_lines() if line.get_label() == "real data (grey_fraction)"] == [0.48]
    assert any(axis.get_title().startswith("grey_gap (lower is better)") for axis in panels.axes)
    few = plots.plot_parameter_importance(trials.head(5), grey_spec)
    assert few.axes[0].get_title() == "from 5 finished trials: too little evidence (fewer than 8)"


def test_model_table_of_a_single_model_and_of_one_seed(models_tables):
    """A study read while its first trial runs: one model, one seed (pandas once turned the intervals into a frame)."""
    trials, _, _ = models_tables(seeds=1)
    table = plots.model_table(trials[trials["param_preset"] == "model_1"])
    assert list(table.index) == ["model_1"] and np.isnan(table.loc["model_1", "fid_low"])
    assert plots.format_model_table(table).loc["fid", "model_1"] == f"{table.loc['model_1', 'fid_mean']:.4g}"
