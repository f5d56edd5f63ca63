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
    assert found["c"].verdict == "supported" and "grey_fraction" in found["c"].evidence
    assert found["d"].verdict.startswith(("not supported", "undecided", "partly supported", "contradicted"))
    assert found["e"].verdict == "not tested"

    sharper_without_grey = verdicts(judge_models(*models_tables(grey_shift=+0.3)[::2]))
    assert sharper_without_grey["c"].verdict == "contradicted"

    only_two = verdicts(judge_models(trials[trials["param_preset"].isin(["model_1", "model_2"])], details))
    assert only_two["c"].verdict == only_two["d"].verdict == "not tested"

    one_seed = verdicts(judge_models(*models_tables(seeds=1)[::2]))
    assert one_seed["c"].verdict.startswith("not tested") and "too few seeds" in one_seed["c"].evidence


def test_fashion_verdicts_name_the_garment_class(models_tables):
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


def test_search_verdicts_follow_the_numbers(search_tables):
    trials, epochs = search_tables(collapse_from_start=True)
    found = verdicts(judge_search(trials, epochs))
    assert found["c"].verdict == "supported"  # grey_fraction falls with log weight
    assert "collapsed trial(s) left out" in found["c"].evidence  # a blank image must not count as sharp
    assert found["d"].verdict == "supported"  # fid falls, accuracy rises with epochs in every trial
    assert found["e"].verdict == "supported" and found["e"].evidence.startswith(
        f"{((trials['param_warmup_epochs'] == 0) & (trials['param_grey_weight'] > 0.3)).sum()}/")
    calm = verdicts(judge_search(*search_tables(collapse_from_start=False)))
    assert calm["e"].verdict.startswith("not supported")


def test_collapse_verdict_when_only_the_warm_up_was_searched(search_tables):
    trials, epochs = search_tables()
    trials, epochs = trials.drop(columns="param_grey_weight"), epochs.drop(columns="param_grey_weight")
    verdict = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame())}["e"]  # once a KeyError
    assert verdict.verdict != "not tested" and "grey weights" not in verdict.evidence


def test_more_epochs_compares_the_first_epoch_itself(search_tables):
    trials, epochs = search_tables()
    first_epoch = epochs["epoch"] == 1
    epochs.loc[first_epoch, "fid"] = np.nan  # unmeasured at epoch 1: no first-vs-last pair for any trial
    verdict = {v.claim: v for v in judge_search(trials, epochs, pd.DataFrame())}["d"]
    assert "fid improved from first to last epoch in 0/0 trials" in verdict.evidence


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
