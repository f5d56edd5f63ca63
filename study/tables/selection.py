"""Choosing from a study's tables: the best trial, the Pareto front, the test split's numbers, what is unfinished."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cvae.metrics import REAL_PREFIX, STATUS_COMPLETED, TEST_METRICS, TEST_PREFIX, VALIDATION_PREFIX
from study.tables.records import ENDED, STATUS_PRUNED


def planned_trials(spec: dict) -> int:
    """How many trials a study.json's study asks for (StudySpec.planned_trials: counted where the grid is made)."""
    from study.spec.study_file import StudySpec

    try:
        return StudySpec.from_dict({"path": "", **spec}).planned_trials
    except (TypeError, ValueError) as error:
        raise ValueError(f"study.json does not describe a study's trials ({str(error)[:120]})") from None


def incomplete_note(trials: pd.DataFrame, spec: dict, space: str | None = None) -> str | None:
    """'incomplete: N of M trials unfinished — resume with ...', or None when every planned trial has ended."""
    ended = int(trials["status"].isin(ENDED).sum()) if len(trials) else 0
    planned = max(planned_trials(spec), len(trials))
    if ended >= planned:
        return None
    space = space or Path(str(spec.get("path", spec["name"]))).name  # a bare name is found in search_spaces/
    return (f"incomplete: {planned - ended} of {planned} trials unfinished — resume with "
            f"python study/run.py --space {space} --name {spec['name']} --resume")


def metric_pairs(row) -> list[tuple[str, float, float]]:
    """(name, validation value, test value) for every metric measured on both splits, from a trials.csv row
    (test is NaN for trials that did not complete and for tables made before the test split existed)."""
    pairs = []
    for test_name in TEST_METRICS:
        name = test_name.removeprefix(TEST_PREFIX)
        validation_name = name if name in row else VALIDATION_PREFIX + name
        pairs.append((name, float(row.get(validation_name, np.nan)), float(row.get(test_name, np.nan))))
    return pairs


def has_test_numbers(trials: pd.DataFrame) -> bool:
    """Whether a trials table carries test-split numbers (tables made before the test split do not)."""
    return any(name in trials and trials[name].notna().any() for name in TEST_METRICS)


def real_level(trials: pd.DataFrame, metric: str) -> float | None:
    """Where real data sits on a sample metric: the median of the trials' real_<metric> (their real validation
    images' own value), or None when the table does not report it."""
    column = REAL_PREFIX + metric
    if column not in trials or not trials[column].notna().any():
        return None
    return float(trials[column].median())


def on_test_split(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed trials with every sample metric column holding its test-split value (test_<metric>), so tables
    and verdicts state numbers no selection saw; unchanged (validation) for tables without test numbers."""
    completed = trials[trials["status"] == STATUS_COMPLETED].copy()
    if not has_test_numbers(trials):
        return completed
    for test_name in TEST_METRICS:
        name = test_name.removeprefix(TEST_PREFIX)
        if name in completed:  # a metric newer than the table was not measured on the test split: not validation's
            completed[name] = completed[test_name] if test_name in completed else np.nan
    return completed


def split_label(trials: pd.DataFrame) -> str:
    """'test' or 'validation': which split on_test_split's numbers come from."""
    return "test" if has_test_numbers(trials) else "validation (made before the test split existed)"


def pareto_mask(trials: pd.DataFrame, columns, modes) -> np.ndarray:
    """True for rows not dominated on `columns` (each minimised or maximised per `modes`); NaN rows never are."""
    values = np.column_stack([trials[c].astype(float).to_numpy() * (1 if mode == "min" else -1)
                              for c, mode in zip(columns, modes)])
    finite = np.isfinite(values).all(axis=1)
    return np.array([ok and not any(np.all(other <= row) and np.any(other < row) for other in values[finite])
                     for row, ok in zip(values, finite)], dtype=bool)


def pareto_front(trials: pd.DataFrame, metrics, modes) -> pd.DataFrame:
    """Trials not dominated on the objective metrics (validation, last epoch)."""
    return trials[pareto_mask(trials, list(metrics), modes)]


BEST_RULE = ("A trial's result is its last epoch. The best trial is the completed trial with the best validation "
             "objective at its last epoch (multi-objective: on the Pareto front, then best in the first metric); "
             "pruned trials count only when none completed. Its test_* columns are the study's headline numbers: "
             "the test split was measured once per completed trial and never used to choose.")


def provisional_note(best: pd.Series) -> str | None:
    """What a best trial that did not complete is (best_trial falls back on pruned trials when none completed), or
    None for a completed one: its numbers are validation numbers at lower fidelity, and it has no test numbers."""
    if best["status"] == STATUS_COMPLETED:
        return None
    return (f"no trial completed: {best['trial_id']} is only the best {best['status']} trial so far (stopped after "
            f"{best['epochs_run']:.0f} epoch(s); validation numbers at lower fidelity, no test numbers)")


def best_trial(trials: pd.DataFrame, metrics, modes) -> pd.Series:
    """The study's best trial (BEST_RULE): among completed trials, the best validation objective at the last
    epoch (multi-objective: the Pareto front, then the first metric). Pruned trials stopped at lower fidelity, so
    they are candidates only when no trial completed; running, interrupted, diverged and failed trials never are.
    """
    objective = trials[list(metrics)].astype(float)
    usable = np.isfinite(objective).all(axis=1)
    candidates = trials[usable & (trials["status"] == STATUS_COMPLETED)]
    if candidates.empty:
        candidates = trials[usable & (trials["status"] == STATUS_PRUNED)]
    if candidates.empty:
        raise ValueError("no completed or pruned trial with finite objective values yet")
    # The best in the first metric, ties broken by the next ones: a member of the Pareto front by construction.
    ranked = candidates.sort_values(list(metrics), ascending=[mode == "min" for mode in modes], kind="stable")
    return ranked.iloc[0]
