"""Every figure and table of study.plots, and the claim verdicts, on small tables made here (no training)."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
import pytest  # noqa: E402

from cvae.metrics import METRICS, SAMPLE_METRICS, TEST_PREFIX  # noqa: E402
from study import plots  # noqa: E402
from study.claims import Verdict, judge_models, judge_search, side_by_side  # noqa: E402
from study.space import load_spec  # noqa: E402

PRESETS = ("model_1", "model_2", "model_3", "model_4", "model_5")
EPOCHS = {"model_1": 8, "model_2": 8, "model_3": 40, "model_4": 9, "model_5": 41}


def metric_values(rng, **shift):
    values = {name: float(rng.uniform(0.4, 0.6)) for name in METRICS}
    values.update(fid=float(rng.uniform(40, 60)), thickness_corr=float(rng.uniform(0.9, 0.95)))
    for name, offset in shift.items():
        values[name] += offset
    for name in SAMPLE_METRICS:  # the test split agrees with validation here
        values[TEST_PREFIX + name] = values[name]
    return values


def models_tables(grey_shift=-0.3, seeds=3):
    """trials, epochs, details of a fake Model 1-5 study; model_4/5 get grey_fraction shifted by grey_shift."""
    rng = np.random.default_rng(0)
    trials, epochs, details = [], [], []
    for preset in PRESETS:
        for seed in range(seeds):
            trial_id = f"{preset}-{seed}"
            shift = {"grey_fraction": grey_shift} if preset in ("model_4", "model_5") else {}
            final = metric_values(rng, **shift)
            trials.append({"trial_id": trial_id, "param_preset": preset, "param_seed": seed, "status": "completed",
                           "epochs_run": EPOCHS[preset], "wall_time_s": 60.0, "dataset_source": "embedded-mnist-5k",
                           **final})
            for epoch in range(1, 4):
                epochs.append({"trial_id": trial_id, "param_preset": preset, "param_seed": seed, "epoch": epoch,
                               **metric_values(rng)})
            for digit in range(10):
                for requested in np.linspace(-1, 1, 9):
                    # global (model_1) draws "1" wider than real; per_class matches
                    excess = 0.4 if (preset == "model_1" and digit == 1) else 0.0
                    details.append({"trial_id": trial_id, "digit": digit, "requested_thickness": requested,
                                    "measured_thickness": requested * 0.9 + rng.normal(0, 0.01),
                                    "relative_width": 1.0 + excess + rng.normal(0, 0.01),
                                    "real_relative_width": 1.0})
    return pd.DataFrame(trials), pd.DataFrame(epochs), pd.DataFrame(details)


def search_tables(collapse_from_start=True):
    """A fake grey_loss study: 12 trials; warm-up 0 with a big weight collapses if collapse_from_start."""
    rng, settings = np.random.default_rng(1), np.random.default_rng(2)  # settings do not move when metrics are added
    trials, epochs = [], []
    for number in range(12):
        weight, warmup = float(10 ** settings.uniform(-2, 0.5)), int(number % 3)
        mode = ("global", "per_class")[number % 2]
        final = metric_values(rng, grey_fraction=-0.3 * np.log10(weight))
        collapses = collapse_from_start and warmup == 0 and weight > 0.3
        final["collapse_rate"] = 0.9 if collapses else 0.01
        trial_id = f"t{number:02d}"
        params = {"param_grey_weight": weight, "param_grey_threshold": float(settings.uniform(0, 0.2)),
                  "param_warmup_epochs": warmup, "param_condition_mode": mode,
                  "param_latent_dim": int(settings.integers(2, 64))}
        trials.append({"trial_id": trial_id, **params, "status": "completed" if number % 4 else "pruned",
                       "epochs_run": 6, "wall_time_s": 30.0, "dataset_source": "embedded-mnist-5k", **final})
        for epoch in range(1, 7):
            row = metric_values(rng, fid=-2.0 * epoch, class_accuracy=0.02 * epoch)
            row["collapse_rate"] = 0.9 if collapses else 0.01
            epochs.append({"trial_id": trial_id, **params, "epoch": epoch, **row})
    return pd.DataFrame(trials), pd.DataFrame(epochs)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def grey_spec():
    spec = load_spec("grey_loss.yaml").to_dict()
    spec["parameters"] = [dict(p, values=list(p["values"])) for p in spec["parameters"]]
    return spec


def test_model_table_means_stds_and_intervals_per_model():
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
    assert list(plots.label_models(frame)) == ["latent_dim=8", "latent_dim=16"]


def test_model_metrics_has_one_panel_per_sample_metric():
    trials, _, _ = models_tables()
    figure = plots.plot_model_metrics(trials)
    assert len(figure.axes) == len(SAMPLE_METRICS)
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == list(PRESETS)
    assert figure.axes[0].get_title().startswith(SAMPLE_METRICS[0])


def test_epoch_curves_have_one_line_per_model():
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


def test_thickness_sweeps_one_panel_per_model_with_ten_digits():
    trials, _, details = models_tables()
    details = details.merge(plots.with_models(trials)[["trial_id", "model"]], on="trial_id")
    figure = plots.plot_thickness_sweeps(details)
    assert [axis.get_title() for axis in figure.axes] == list(PRESETS)
    assert len(figure.axes[0].get_lines()) == 10 + 1  # one per digit + the diagonal
    x, y = figure.axes[0].get_lines()[0].get_data()
    assert np.allclose(x, np.linspace(-1, 1, 9)) and np.allclose(y, x * 0.9, atol=0.03)


def test_class_parity_bars_for_real_and_each_group():
    trials, _, details = models_tables()
    details = details.merge(plots.with_models(trials)[["trial_id", "model"]], on="trial_id")
    figure = plots.plot_class_parity(details)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ["real digits", *PRESETS]
    heights = [bar.get_height() for container in axis.containers for bar in container]
    assert len(heights) == 10 * 6
    model_1_digit_1 = axis.containers[1][1].get_height()
    assert model_1_digit_1 == pytest.approx(1.4, abs=0.02)


def test_search_figures(grey_spec):
    trials, _ = search_tables()
    history = plots.plot_objective_history(trials, grey_spec)
    best_line = history.axes[0].get_lines()[-1].get_ydata()
    assert np.all(np.diff(best_line) <= 0) and best_line[-1] == trials["fid"].min()

    importance = plots.parameter_importance(trials, grey_spec)
    assert set(importance.index) == {p["name"] for p in grey_spec["parameters"]}
    assert importance.sum() == pytest.approx(1.0)
    assert len(plots.plot_parameter_importance(trials, grey_spec).axes[0].patches) == len(importance)

    parallel = plots.plot_parallel_coordinates(trials, grey_spec)
    assert len(parallel.axes[0].get_lines()) == len(trials)
    assert [t.get_text() for t in parallel.axes[0].get_xticklabels()] == [p["name"] for p in grey_spec["parameters"]]

    effects = plots.plot_grey_effects(trials)
    assert len(effects.axes) == 3 * 3 and effects.axes[0].get_xscale() == "log"
    assert effects.axes[3].get_ylabel() == "grey_fraction"
    assert "x: pruned, fewer epochs" in effects._suptitle.get_text()  # mixed fidelity is marked, not hidden
    legend = [text.get_text() for text in effects.axes[2].get_legend().get_texts()]
    assert {"completed", "pruned"} <= set(legend)


def test_parallel_coordinates_label_every_axis_in_its_own_units(grey_spec):
    trials, _ = search_tables()
    figure = plots.plot_parallel_coordinates(trials, grey_spec)
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"global", "per_class"} <= texts  # categories by name
    for name in ("grey_weight", "latent_dim", "warmup_epochs"):
        column = trials[f"param_{name}"].astype(float)
        assert {f"{column.min():.3g}", f"{column.max():.3g}"} <= texts, name
    assert "low" not in texts and "high" not in texts


def test_history_follows_the_start_order_not_the_row_order(grey_spec):
    trials, _ = search_tables()
    trials["started_at"] = np.arange(len(trials), dtype=float)
    shuffled = trials.sample(frac=1.0, random_state=3)  # as a resume may leave trials.csv
    figure = plots.plot_objective_history(shuffled, grey_spec)
    best_line = figure.axes[0].get_lines()[-1].get_ydata()
    np.testing.assert_allclose(best_line, trials["fid"].cummin().to_numpy())


def test_error_bars_stay_inside_each_metrics_range():
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


def test_grey_effects_needs_a_grey_parameter():
    with pytest.raises(ValueError, match="searched none of"):
        plots.plot_grey_effects(pd.DataFrame({"param_latent_dim": [4], "fid": [1.0]}))


# ---------------------------------------------------------------- verdicts


def verdicts(items):
    return {v.claim: v for v in items}


def test_model_verdicts_follow_the_numbers():
    trials, _, details = models_tables(grey_shift=-0.3)
    found = verdicts(judge_models(trials, details))
    assert found["a"].verdict == "supported"  # thickness_corr 0.9-0.95 everywhere
    # digit 1 fixed, but class_parity random over 3 seeds: not "partly supported", undecided with a seed count
    assert re.fullmatch(r"undecided \(\d+ seeds per model would decide it\)", found["b"].verdict), found["b"]
    assert "+0.4" in found["b"].evidence and "95% CI [" in found["b"].evidence and "Holm" in found["b"].evidence
    assert found["c"].verdict == "supported" and "grey_fraction" in found["c"].evidence
    assert found["d"].verdict.startswith(("not supported", "undecided", "partly supported", "contradicted"))
    assert found["e"].verdict == "not tested"

    sharper_without_grey = verdicts(judge_models(*models_tables(grey_shift=+0.3)[::2]))
    assert sharper_without_grey["c"].verdict == "contradicted"

    only_two = verdicts(judge_models(trials[trials["param_preset"].isin(["model_1", "model_2"])], details))
    assert only_two["c"].verdict == only_two["d"].verdict == "not tested"

    one_seed = verdicts(judge_models(*models_tables(seeds=1)[::2]))
    assert one_seed["c"].verdict.startswith("not tested") and "too few seeds" in one_seed["c"].evidence


def test_fashion_verdicts_name_the_garment_class():
    trials, _, details = models_tables()
    trials["dataset_source"] = "system:fashion-mnist"
    found = verdicts(judge_models(trials, details))
    assert "class 1 (Trouser) drawn +0.4" in found["b"].evidence and "digit 1" not in found["b"].evidence
    assert re.search(r"per class \(sweep, all trials\) the largest mean abs. error is class \d \(\w", found["a"].evidence)
    trials["real_grey_fraction"] = 0.878
    assert "(real images: grey_fraction 0.878)" in verdicts(judge_models(trials, details))["c"].evidence


def test_side_by_side_says_which_claims_generalise():
    mnist = [Verdict("a", "supported", ""), Verdict("b", "supported", ""), Verdict("c", "supported", ""),
             Verdict("d", "partly supported", ""), Verdict("e", "not tested", "")]
    fashion = [Verdict("a", "supported", ""), Verdict("b", "not supported", ""), Verdict("c", "partly supported", ""),
               Verdict("d", "contradicted", ""), Verdict("e", "not tested", "")]
    table = side_by_side({"MNIST": mnist, "Fashion-MNIST": fashion})
    assert list(table.columns) == ["MNIST", "Fashion-MNIST", "generalises"]
    assert list(table["generalises"]) == ["yes", "no", "partly", "no", "not tested"]
    assert table.loc[table.index[1], "Fashion-MNIST"] == "not supported"
    assert side_by_side({"MNIST": mnist[:1], "Fashion-MNIST": fashion[:1]}).loc[
        table.index[1], "generalises"] == "not tested"  # a claim a study did not judge


def test_search_verdicts_follow_the_numbers():
    trials, epochs = search_tables(collapse_from_start=True)
    found = verdicts(judge_search(trials, epochs))
    assert found["c"].verdict == "supported"  # grey_fraction falls with log weight
    assert "collapsed trial(s) left out" in found["c"].evidence  # a blank image must not count as sharp
    assert found["d"].verdict == "supported"  # fid falls, accuracy rises with epochs in every trial
    assert found["e"].verdict == "supported" and found["e"].evidence.startswith(
        f"{((trials['param_warmup_epochs'] == 0) & (trials['param_grey_weight'] > 0.3)).sum()}/")
    calm = verdicts(judge_search(*search_tables(collapse_from_start=False)))
    assert calm["e"].verdict.startswith("not supported")


def test_collapse_verdict_when_only_the_warm_up_was_searched():
    trials, epochs = search_tables()
    trials, epochs = trials.drop(columns="param_grey_weight"), epochs.drop(columns="param_grey_weight")
    verdict = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame())}["e"]  # once a KeyError
    assert verdict.verdict != "not tested" and "grey weights" not in verdict.evidence


def test_more_epochs_compares_the_first_epoch_itself():
    trials, epochs = search_tables()
    first_epoch = epochs["epoch"] == 1
    epochs.loc[first_epoch, "fid"] = np.nan  # unmeasured at epoch 1: no first-vs-last pair for any trial
    verdict = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame())}["d"]
    assert "fid improved from first to last epoch in 0/0 trials" in verdict.evidence


def test_search_verdicts_compare_at_equal_fidelity_or_say_so():
    trials, epochs = search_tables(collapse_from_start=False)
    equal = verdicts(judge_search(trials, epochs))
    assert "9 completed trials, test numbers" in equal["c"].evidence and "MIXED" not in equal["c"].evidence
    few = trials.copy()
    few.loc[few.index[3:], "status"] = "pruned"  # 2 completed (t01, t02), 10 pruned after 2 epochs
    few.loc[few["status"] == "pruned", "epochs_run"] = 2
    mixed = verdicts(judge_search(few, epochs))
    assert "MIXED FIDELITY: 10 of 12 trials were pruned after 2–2 epochs" in mixed["c"].evidence
    assert "MIXED FIDELITY" in mixed["b"].evidence


def test_figures_read_at_print_size(grey_spec):
    """Integer trial axes, 1-2-5 ticks on a log axis, grey_fraction against real data, importances that say what
    they rest on."""
    trials, _ = search_tables(collapse_from_start=False)
    history = plots.plot_objective_history(trials, grey_spec)
    ticks = history.axes[0].get_xticks()
    assert len(ticks) and all(float(tick).is_integer() for tick in ticks)
    effects = plots.plot_grey_effects(trials)
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


def test_model_table_of_a_single_model_and_of_one_seed():
    """A study read while its first trial runs: one model, one seed (pandas once turned the intervals into a frame)."""
    trials, _, _ = models_tables(seeds=1)
    table = plots.model_table(trials[trials["param_preset"] == "model_1"])
    assert list(table.index) == ["model_1"] and np.isnan(table.loc["model_1", "fid_low"])
    assert plots.format_model_table(table).loc["fid", "model_1"] == f"{table.loc['model_1', 'fid_mean']:.4g}"
