"""The arithmetic behind a verdict: Welch's interval and test, equivalence (TOST), seeds needed at δ, Holm, rank and
proportion effects, and how a claim is decided."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cvae.metrics import METRICS
from study.analysis.claims import _combine, compare, decided, judge_models
from study.analysis.evidence import (PartialRankCorrelation, ProportionDifference, RankCorrelation, WelchDifference,
                                     holm, mean_interval)


def test_welch_difference_matches_scipy_and_the_hand_computed_interval():
    candidate, reference = np.array([0.21, 0.71, 0.25]), np.array([-0.04, -0.14, -0.10])
    found = WelchDifference(candidate, reference)
    assert found.effect == pytest.approx(0.4833333)
    assert found.p_value == pytest.approx(stats.ttest_ind(candidate, reference, equal_var=False).pvalue)
    a, b = candidate.var(ddof=1) / 3, reference.var(ddof=1) / 3
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(a + b)
    assert (found.low, found.high) == pytest.approx((0.4833333 - half, 0.4833333 + half))
    needed = found.needed(0.3)  # at δ, not at the observed effect
    assert needed is not None and found.power(n=needed, effect=0.3) >= 0.8 > found.power(n=needed - 1, effect=0.3)
    assert found.needed(0.3, alpha=0.05 / 5) > needed  # more tests in the family need more seeds
    assert found.needed(0.6) < needed  # a larger smallest effect needs fewer
    assert WelchDifference(candidate, np.r_[reference, 0.0, -0.2]).n_text() == "n=3 vs 5"  # both sizes, not the min


def test_power_grows_with_seeds_and_reaches_the_normal_limit_far_out():
    found = WelchDifference(np.array([1.0, 1.4, 0.6, 1.1]), np.array([0.0, 0.5, -0.3, 0.2]))
    powers = [found.power(n=n) for n in (2, 3, 5, 10, 50, 400)]
    assert all(b >= a for a, b in zip(powers, powers[1:])) and powers[-1] == pytest.approx(1.0)
    assert not any(math.isnan(p) for p in powers)  # scipy's noncentral t gives NaN far out: the fallback holds


def test_equivalence_is_two_one_sided_tests_at_the_given_alpha():
    rng = np.random.default_rng(3)
    found = WelchDifference(rng.normal(0, 1, 40), rng.normal(0, 1, 40))
    low, high = found.interval(0.90)  # TOST at alpha 0.05 is the 90 % interval inside ±δ
    for delta in (0.2, 0.5, 1.0):
        assert found.equivalent(delta, 0.05) == (-delta < low and high < delta)
    one_sided = [stats.ttest_ind(found.candidate - bound, found.reference, equal_var=False,
                                 alternative=side).pvalue for bound, side in ((-1.0, "greater"), (1.0, "less"))]
    assert found.equivalent(1.0, 0.05) == (max(one_sided) < 0.05)  # the same decision as scipy's two t tests


def test_seeds_that_agree_exactly_are_not_testable_and_say_why():
    same = WelchDifference(np.array([0.2, 0.2, 0.2]), np.array([0.3, 0.3, 0.3]))
    assert not same.testable and "zero variance" in same.untestable and math.isnan(same.p_value)
    finding = compare(pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "fid": [1.0] * 3 + [2.0] * 3}), "fid", "a", "b")
    assert finding.outcome() == "not testable" and "zero variance" in finding.text()
    assert "fewer than 2" in WelchDifference(np.array([1.0]), np.array([1.0, 2.0])).untestable


def test_a_known_effect_is_found_a_null_one_is_ruled_out_with_enough_seeds_and_undecided_with_few():
    rng = np.random.default_rng(0)
    rows = [{"model": "model_1", "class_parity": v} for v in rng.normal(0.30, 0.02, 5)]
    rows += [{"model": "model_2", "class_parity": v} for v in rng.normal(0.10, 0.02, 5)]
    known = compare(pd.DataFrame(rows), "class_parity", "model_2", "model_1")
    assert known.outcome() == "better" and known.effect.high < 0  # lower parity is better: found, interval below 0
    delta = METRICS["class_parity"].smallest_effect
    rows = [{"model": m, "class_parity": v} for m in ("model_1", "model_2") for v in rng.normal(0.2, delta / 4, 10)]
    null = compare(pd.DataFrame(rows), "class_parity", "model_2", "model_1")
    assert null.outcome() == "no effect larger than δ" and -delta < null.effect.low < null.effect.high < delta
    rows = [{"model": m, "class_parity": v} for m, v in
            (("model_1", 0.20), ("model_1", 0.26), ("model_1", 0.17), ("model_2", 0.19), ("model_2", 0.25),
             ("model_2", 0.15))]
    few = compare(pd.DataFrame(rows), "class_parity", "model_2", "model_1")
    assert few.outcome() == "undecided" and few.needed == few.effect.needed(delta, 0.05)
    assert re.search(r"undecided: \d+ seeds per model would decide it", few.text()), few.text()


def test_holm_adjusts_step_down_and_ignores_untested():
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, math.nan])[1])
    family = decided({"b": [compare(pd.DataFrame({"model": ["a", "a", "b", "b"], "fid": [1.0, 1.1, 2.0, 2.2]}),
                                    "fid", "a", "b")] * 3})
    assert all(f.family == 3 and f.p_adjusted == pytest.approx(min(1, 3 * f.p_value)) for f in family["b"])
    assert all(f.alpha == pytest.approx(0.05 / 3) for f in family["b"])  # equivalence and seeds at the family's α


def test_rank_effects_have_intervals_and_a_partial_one_holds_the_others_fixed():
    x = np.arange(12.0)
    noisy = -x + np.random.default_rng(1).normal(0, 2, 12)
    rank = RankCorrelation(x, noisy)
    assert rank.low < rank.effect < rank.high < 0 and rank.p_value == pytest.approx(stats.spearmanr(x, noisy).pvalue)
    rng = np.random.default_rng(2)
    other = rng.normal(size=60)  # a second searched setting drives both
    weight, grey = other + rng.normal(0, 0.3, 60), other + rng.normal(0, 0.3, 60)
    assert RankCorrelation(weight, grey).effect > 0.7  # confounded
    partial = PartialRankCorrelation(weight, grey, covariates=other[:, None])
    assert abs(partial.effect) < 0.3 and partial.low < 0 < partial.high  # held fixed: nothing left
    assert "too few" in PartialRankCorrelation(x[:7], noisy[:7], covariates=rng.normal(size=(7, 4))).untestable
    assert mean_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - stats.t.ppf(0.975, 2) / math.sqrt(3),
                                                             2 + stats.t.ppf(0.975, 2) / math.sqrt(3)))


def test_a_difference_of_proportions_has_newcombes_interval_and_fishers_test():
    found = ProportionDifference((4, 2), (6, 6))  # grey_warmup: 4/6 collapses without warm-up vs 2/6 with one
    assert found.effect == pytest.approx(1 / 3) and found.n_text() == "4/6 vs 2/6"
    assert found.p_value == pytest.approx(stats.fisher_exact([[4, 2], [2, 4]]).pvalue)  # ~0.57
    # Newcombe 1998, method 10, by hand: Wilson 4/6 = [0.300, 0.903], 2/6 = [0.097, 0.700], so
    # 1/3 - hypot(0.667 - 0.300, 0.700 - 0.333) and 1/3 + hypot(0.903 - 0.667, 0.333 - 0.097)
    assert (found.low, found.high) == pytest.approx((-0.1852, 0.6679), abs=2e-3)
    assert ProportionDifference((0, 0), (10, 10)).interval(0.95)[1] > 0  # an interval even at 0 of 10
    assert not ProportionDifference((1, 0), (1, 5)).testable


def test_a_claims_words_follow_its_tests():
    def finding(outcome_values, delta=1.0):
        return compare(pd.DataFrame({"model": ["a"] * len(outcome_values[0]) + ["b"] * len(outcome_values[1]),
                                     "fid": [*outcome_values[0], *outcome_values[1]]}), "fid", "a", "b", delta=delta)

    rng = np.random.default_rng(4)
    better = finding((rng.normal(0, 0.1, 10), rng.normal(5, 0.1, 10)))  # lower fid is better
    worse = finding((rng.normal(5, 0.1, 10), rng.normal(0, 0.1, 10)))
    none = finding((rng.normal(0, 0.1, 10), rng.normal(0, 0.1, 10)))
    open_ = finding(([0.0, 1.0, 2.0], [0.5, 1.5, 2.5]))  # Δ -0.5, far from significant, interval wider than ±δ
    assert [f.outcome() for f in (better, worse, none, open_)] == ["better", "worse", "no effect larger than δ",
                                                                      "undecided"]
    assert _combine([better, better]) == "supported" and _combine([none, none]) == "not supported"
    assert _combine([worse, none]) == "contradicted" and _combine([better, none]) == "partly supported"
    assert _combine([better, worse]) == "partly supported"
    assert _combine([better, open_]).startswith("undecided (")  # not "partly": a test is still open
    untestable = finding(([1.0, 1.0], [2.0, 2.0]))
    assert _combine([better, untestable]) == "undecided" and _combine([untestable]).startswith("too little evidence (")


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
