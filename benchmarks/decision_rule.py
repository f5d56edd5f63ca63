"""Print how the verdicts' decision rule behaves in simulated studies whose truth is known: the share of claims it
calls supported / not supported / undecided / contradicted with no effect and with an effect of 2δ, at 3, 10 and
30 seeds per model, and the family-wise rate of a false `supported` across a family of three claims.

    python benchmarks/decision_rule.py [--studies 2000]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.analysis.simulation import WORDS, simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000, help="simulated studies per row (default 2000)")
    studies = parser.parse_args().studies
    print(f"δ = 1, spread of one seed σ = 1, {studies} simulated studies per row; shares of claims")
    print(f"{'truth':<16}{'seeds':>6}{'claims':>7}  " + "".join(f"{word:>18}" for word in WORDS) + "   any supported")
    for effect, label in ((0.0, "no effect"), (2.0, "effect 2δ")):
        for seeds in (3, 10, 30):
            for claims in (1, 3):
                rates = simulate(effect, 1.0, seeds, claims=claims, studies=studies)
                print(f"{label:<16}{seeds:>6}{claims:>7}  " + "".join(f"{rates[word]:>18.1%}" for word in WORDS)
                      + f"{rates['any supported']:>16.1%}", flush=True)


if __name__ == "__main__":
    main()
