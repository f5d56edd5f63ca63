"""Claim verdicts (study/analysis/claims.py) follow the numbers of fake studies made to hold, or not hold, each claim."""

import re

import numpy as np
import pandas as pd

from study.analysis.claims import Verdict, judge_models, judge_search, side_by_side


def verdicts(items):
    return {v.claim: v for v in items}


def test_model_verdicts_follow_the_numbers(models_tables):
    trials, _, details = models_tables(grey_shift=-0.3)
    found = verdicts(judge_models(trials, details))
    assert found["a"].verdict == "supported"  # thickness_corr 0.9-0.95 everywhere
    # digit 1 fixed, but class_parity random over 3 seeds: not "partly supported", undecided with a seed count
    assert re.fullmatch(r"undecided \(\d+ seeds per model would decide it\)", found["b"].verdict), found["b"]
    assert "+0.4" in found["b"].evidence and "95% CI [" in found["b"].evidence and "Holm" in found["b"].evidence
    # grey_fraction -0.3 in both pairs, but model_5 vs model_3's interval still reaches inside δ at 3 seeds (Holm)
    assert re.fullmatch(r"undecided \(\d+ seeds per model would decide it\)", found["c"].verdict), found["c"]
    assert "n=3: better" in found["c"].evidence and "δ 0.05" in found["c"].evidence
    four_seeds = verdicts(judge_models(*models_tables(seeds=4)[::2]))
    assert four_seeds["c"].verdict == "supported" and "grey_fraction" in four_seeds["c"].evidence
    assert found["d"].verdict.startswith(("not supported", "undecided", "partly supported", "contradicted"))
    assert found["e"].verdict == "not tested"

    sharper_without_grey = verdicts(judge_models(*models_tables(grey_shift=+0.3)[::2]))
    assert sharper_without_grey["c"].verdict == "contradicted"

    only_two = verdicts(judge_models(trials[trials["param_preset"].isin(["model_1", "model_2"])], details))
    assert only_two["c"].verdict == only_two["d"].verdict == "not tested"

    one_seed = verdicts(judge_models(*models_tables(seeds=1)[::2]))
    assert one_seed["c"].verdict == "too little evidence (fewer than 2 seeds on a side)", one_seed["c"]
    assert "not testable, fewer than 2" in one_seed["c"].evidence


def test_fashion_verdicts_name_the_garment_class(models_tables):
    trials, _, details = models_tables()
    trials["dataset_source"] = "system:fashion-mnist"
    found = verdicts(judge_models(trials, details))
    assert re.search(r"class 1 \(Trouser\) drawn \+0\.(39|40)", found["b"].evidence), found["b"].evidence
    assert "digit 1" not in found["b"].evidence
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


def test_search_verdicts_follow_the_numbers(search_tables):
    trials, epochs = search_tables(collapse_from_start=True, count=40)
    found = verdicts(judge_search(trials, epochs))
    assert found["c"].verdict == "supported"  # grey_fraction falls with log weight, the other settings held fixed
    assert "searched together with: grey_threshold, warmup_epochs, condition_mode, latent_dim" in found["c"].evidence
    assert "trial(s) collapsed left out" in found["c"].evidence  # a blank image must not count as sharp
    assert found["d"].verdict == "not tested"  # a search has no budgets at equal configuration
    from_start = (trials["param_warmup_epochs"] == 0) & (trials["param_grey_weight"] > 0.3)
    assert found["e"].verdict == "supported" and f"{from_start.sum()}/{(trials['param_warmup_epochs'] == 0).sum()}" \
        in found["e"].evidence and "can collapse" in found["e"].evidence
    calm = verdicts(judge_search(*search_tables(collapse_from_start=False, count=40)))
    assert calm["e"].verdict.startswith(("not supported", "undecided"))  # no difference: never "supported"
    assert "no trial with grey from epoch 1 collapsed" in calm["e"].evidence


def test_a_searched_grey_weight_with_too_few_trials_for_its_covariates_is_not_tested(search_tables):
    """12 trials, 8 drawing and completed, 4 other searched settings: a partial correlation has nothing left."""
    found = verdicts(judge_search(*search_tables(collapse_from_start=True)))
    assert found["c"].verdict.startswith("too little evidence (") and "too few" in found["c"].verdict


def test_collapse_verdict_when_only_the_warm_up_was_searched(search_tables):
    trials, epochs = search_tables(count=40)
    trials, epochs = trials.drop(columns="param_grey_weight"), epochs.drop(columns="param_grey_weight")
    unknown = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame())}["e"]  # once a KeyError
    assert unknown.verdict == "not tested" and "grey_weight" in unknown.evidence  # never assumed > 0
    fixed = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame(), fixed={"grey_weight": 0.32})}["e"]
    assert fixed.verdict != "not tested" and "grey weights" not in fixed.evidence
    off = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame(), fixed={"grey_weight": 0.0})}["e"]
    assert off.verdict == "not tested" and "no trial applied the grey loss from epoch 1" in off.evidence


def test_collapsed_and_unmeasured_trials_are_named_never_averaged(models_tables):
    trials, _, details = models_tables()
    trials.loc[trials["trial_id"] == "model_4-0", "test_collapse_rate"] = 0.9
    trials.loc[trials["trial_id"] == "model_2-1", "test_collapse_rate"] = float("nan")
    found = verdicts(judge_models(trials, details))
    assert "1 trial(s) collapsed left out (model_4-0)" in found["c"].evidence
    assert "1 trial(s) with collapse_rate unmeasured left out (model_2-1)" in found["b"].evidence


def test_search_verdicts_compare_at_equal_fidelity_or_say_so(search_tables):
    trials, epochs = search_tables(collapse_from_start=False)
    equal = verdicts(judge_search(trials, epochs))
    assert "9 completed trials, test numbers" in equal["c"].evidence and "MIXED" not in equal["c"].evidence
    few = trials.copy()
    few.loc[few.index[3:], "status"] = "pruned"  # 2 completed (t01, t02), 10 pruned after 2 epochs
    few.loc[few["status"] == "pruned", "epochs_run"] = 2
    mixed = verdicts(judge_search(few, epochs))
    assert "MIXED FIDELITY: 10 of 12 trials were pruned after 2–2 epochs" in mixed["c"].evidence
    assert "MIXED FIDELITY" in mixed["b"].evidence
