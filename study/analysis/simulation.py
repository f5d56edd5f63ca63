"""The decision rule's own error rates, from simulated studies whose truth is known (pure numpy and scipy, seconds):
how often it says `supported`, `not supported`, `undecided` or `contradicted` when there is no effect, and when
the effect is twice the smallest of interest."""

from __future__ import annotations

from collections import Counter

import numpy as np

from study.analysis.claims import Finding, _combine, decided
from study.analysis.evidence import WelchDifference

WORDS = ("supported", "not supported", "undecided", "contradicted", "partly supported")


def _word(verdict: str) -> str:
    return next(word for word in sorted(WORDS, key=len, reverse=True) if verdict.startswith(word))


def simulate(effect: float, sigma: float, seeds: int, claims: int = 1, studies: int = 1000, delta: float = 1.0,
             seed: int = 0) -> dict[str, float]:
    """The share of each verdict word over `studies` simulated studies. Each study has `claims` claims of one
    Welch comparison each (seeds per model on each side, values normal with spread `sigma`, the candidate shifted
    by `effect` in the direction the claim predicts), Holm-corrected together as one family, judged against δ.

    Returns:
        {word: share of claims}, plus "any supported": the share of studies in which some claim was supported
        (with no effect, the family-wise error rate).
    """
    rng = np.random.default_rng(seed)
    counts, any_supported = Counter(), 0
    for _ in range(studies):
        findings = {str(claim): [Finding(str(claim), WelchDifference(rng.normal(effect, sigma, seeds),
                                                                     rng.normal(0.0, sigma, seeds)), +1, delta)]
                    for claim in range(claims)}
        words = [_word(_combine(group)) for group in decided(findings).values()]
        counts.update(words)
        any_supported += "supported" in words
    total = studies * claims
    return {**{word: counts[word] / total for word in WORDS}, "any supported": any_supported / studies}
