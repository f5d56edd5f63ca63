"""The arithmetic behind a verdict: Welch's interval and test, power, seeds needed, Holm, and how a claim is decided."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study.analysis.claims import compare, decided, judge_models
from study.analysis.evidence import PairedDifference, RankCorrelation, WelchDifference, holm, mean_interval


def test_welch_difference_matches_scipy_and_the_hand_computed_interval():
    candidate, reference = np.array([0.21, 0.71, 0.25]), np.array([-0.04, -0.14, -0.10])
    found = WelchDifference(candidate, reference)
    assert found.effect == pytest.approx(0.4833333)
    assert found.p_value == pytest.approx(stats.ttest_ind(candidate, reference, equal_var=False).pvalue)
    a, b = candidate.var(ddof=1) / 3, reference.var(ddof=1) / 3
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(a + b)
    assert (found.low, found.high) == pytest.approx((0.4833333 - half, 0.4833333 + half))
    assert found.low < 0 < found.high and found.power() < 0.8  # the (b) of three seeds: undecided, not "partly"
    needed = found.needed()
    assert needed is not None and found.power(n=needed) >= 0.8 > found.power(n=needed - 1)
    assert found.needed(alpha=0.05 / 5) > needed  # more tests in the family need more seeds


def test_power_grows_with_seeds_and_reaches_the_normal_limit_far_out():
    found = WelchDifference(np.array([1.0, 1.4, 0.6, 1.1]), np.array([0.0, 0.5, -0.3, 0.2]))
    powers = [found.power(n=n) for n in (2, 3, 5, 10, 50, 400)]
    assert all(b >= a for a, b in zip(powers, powers[1:])) and powers[-1] == pytest.approx(1.0)
    assert not any(math.isnan(p) for p in powers)  # scipy's noncentral t gives NaN far out: the fallback holds


def test_a_known_effect_is_found_and_a_null_one_is_undecided_with_a_seed_count():
    rng = np.random.default_rng(0)
    rows = [{"model": "model_1", "class_parity": v} for v in rng.normal(0.30, 0.02, 5)]
    rows += [{"model": "model_2", "class_parity": v} for v in rng.normal(0.10, 0.02, 5)]
    known = compare(pd.DataFrame(rows), "class_parity", "model_2", "model_1")
    assert known.outcome() == "better" and known.effect.high < 0  # lower parity is better: found, interval below 0
    rows = [{"model": m, "class_parity": v} for m, v in
            (("model_1", 0.20), ("model_1", 0.26), ("model_1", 0.17), ("model_2", 0.19), ("model_2", 0.25),
             ("model_2", 0.15))]
    null = compare(pd.DataFrame(rows), "class_parity", "model_2", "model_1")
    assert null.effect.low < 0 < null.effect.high and null.outcome() == "undecided"
    assert re.search(r"undecided: \d+ seeds per model would decide it at 80% power", null.text()), null.text()


def test_holm_adjusts_step_down_and_ignores_untested():
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, math.nan])[1])
    family = decided({"b": [compare(pd.DataFrame({"model": ["a", "a", "b", "b"], "fid": [1.0, 1.1, 2.0, 2.2]}),
                                    "fid", "a", "b")] * 3})
    assert all(f.family == 3 and f.p_adjusted == pytest.approx(min(1, 3 * f.p_value)) for f in family["b"])


def test_paired_and_rank_effects_have_intervals_around_them():
    deltas = np.array([-3.0, -2.5, -4.0, -1.0, -2.0])
    paired = PairedDifference(deltas)
    assert paired.p_value == pytest.approx(stats.ttest_1samp(deltas, 0).pvalue) and paired.high < 0
    x = np.arange(12.0)
    rank = RankCorrelation(x, -x + np.random.default_rng(1).normal(0, 2, 12))
    assert rank.low < rank.effect < rank.high < 0 and rank.p_value == pytest.approx(stats.spearmanr(
        x, -x + np.random.default_rng(1).normal(0, 2, 12)).pvalue)
    assert mean_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - stats.t.ppf(0.975, 2) / math.sqrt(3),
                                                             2 + stats.t.ppf(0.975, 2) / math.sqrt(3)))


def test_a_grid_below_three_seeds_is_too_little_evidence():
    rows = []
    for preset, parity in (("model_1", 0.30), ("model_2", 0.10)):
        for seed in range(2):
            rows.append({"trial_id": f"{preset}-{seed}", "param_preset": preset, "param_seed": seed,
                         "status": "completed", "epochs_run": 8, "class_parity": parity + 0.01 * seed,
                         "thickness_corr": 0.95, "thickness_mae": 0.1, "grey_fraction": 0.9, "fid": 50.0,
                         "class_accuracy": 0.9})
    verdicts = {v.claim: v for v in judge_models(pd.DataFrame(rows))}
    assert verdicts["b"].verdict == "too little evidence" and "rests on 2–2 seeds per model" in verdicts["b"].evidence
    assert verdicts["c"].verdict == "not tested"  # what was not tested stays so


def test_claim_e_is_taken_from_the_warm_up_study():
    from study.analysis.claims import Verdict, with_claim_from

    models = [Verdict("a", "supported", ""), Verdict("e", "not tested", "no preset")]
    warmup = [Verdict("c", "not tested", ""), Verdict("e", "supported", "4/4 collapsed")]
    combined = {v.claim: v for v in with_claim_from(models, warmup, "e")}
    assert combined["e"].verdict == "supported" and combined["a"].verdict == "supported"
    assert with_claim_from(models, [], "e") == models


def test_side_by_side_waits_for_an_undecided_dataset():
    from study.analysis.claims import Verdict, side_by_side

    table = side_by_side({"MNIST": [Verdict("d", "supported", "")],
                          "Fashion-MNIST": [Verdict("d", "undecided (6 seeds per model would decide it)", "")]})
    assert table["generalises"].iloc[3] == "undecided"
