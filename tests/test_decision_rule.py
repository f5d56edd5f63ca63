"""The verdicts' decision rule on simulated studies whose truth is known (benchmarks/decision_rule.py prints the
full table): with no effect and enough seeds it says `not supported`, with an effect of 2δ `supported`, and across
a family of claims it calls a null effect `supported` at most α of the time."""

from study.analysis.simulation import simulate

STUDIES = 400  # per scenario: a rate's standard error is at most 2.5 points


def test_no_effect_with_enough_seeds_is_not_supported():
    rates = simulate(effect=0.0, sigma=1.0, seeds=30, claims=3, studies=STUDIES, seed=1)
    print("no effect, 30 seeds, 3 claims:", rates)
    assert rates["not supported"] >= 0.8, rates


def test_an_effect_of_twice_the_smallest_of_interest_is_supported():
    rates = simulate(effect=2.0, sigma=1.0, seeds=10, claims=3, studies=STUDIES, seed=2)
    print("effect 2δ, 10 seeds, 3 claims:", rates)
    assert rates["supported"] >= 0.8, rates


def test_a_family_of_null_claims_is_supported_at_most_alpha_of_the_time():
    for seeds in (3, 10, 30):
        rates = simulate(effect=0.0, sigma=1.0, seeds=seeds, claims=3, studies=STUDIES, seed=3 + seeds)
        print(f"no effect, {seeds} seeds, 3 claims:", rates)
        assert rates["any supported"] <= 0.05, (seeds, rates)


def test_few_seeds_and_no_effect_stay_undecided_rather_than_deciding_either_way():
    rates = simulate(effect=0.0, sigma=1.0, seeds=3, claims=1, studies=STUDIES, seed=4)
    assert rates["undecided"] >= 0.8 and rates["not supported"] <= 0.1, rates
