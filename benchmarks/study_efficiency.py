"""How much of a study's (wall time x CPUs) goes into training steps, start-up, evaluation and Tune itself.

Runs a small real study through study/run.py (default: 4 trials, 2 at once, 1 CPU each, the embedded
5k digits, 4 epochs) once with worker reuse and once without, and prints where the time went, from the
per-epoch timings every trial reports (train_seconds, validation, eval_seconds, checkpoint_seconds,
setup_seconds, tensorflow_import_seconds).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def run_study(folder: Path, trials: int, epochs: int, samples: int, reuse: bool) -> dict:
    name = "efficiency_reuse" if reuse else "efficiency_fresh"
    space = folder / f"{name}.yaml"
    space.write_text(textwrap.dedent(f"""
        name: {name}
        base: model_4
        fixed: {{dataset: mnist-5k, max_train_samples: {samples}}}
        parameters:
          grey_weight: {{distribution: log_uniform, low: 0.05, high: 1.0}}
        search: {{algorithm: optuna, sampler: random, seed: 0, num_samples: {trials}, max_concurrent: 2}}
        scheduler: {{type: fifo, max_epochs: {epochs}}}
        resources: {{cpu: 1, gpu: 0}}
    """))
    command = [sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(folder)]
    if not reuse:
        command.append("--no-reuse-actors")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"study failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    tune_wall = float(re.search(r"finished in (\d+) s", result.stdout).group(1))
    epochs_table = pd.read_csv(folder / name / "epochs.csv")
    return {"name": name, "wall": wall, "tune_wall": tune_wall, "epochs": epochs_table}


def summarise(run: dict, cpus: int) -> None:
    table = run["epochs"]
    per_trial = table.groupby("trial_id").agg(
        setup=("setup_seconds", "first"), tf_import=("tensorflow_import_seconds", "first"),
        train=("train_seconds", "sum"), epoch=("epoch_seconds", "sum"), evaluation=("eval_seconds", "sum"),
        checkpoint=("checkpoint_seconds", "sum"), total=("time_total_s", "max"))
    budget = run["wall"] * cpus
    tune_budget = run["tune_wall"] * cpus
    train = per_trial["train"].sum()
    validation = (per_trial["epoch"] - per_trial["train"]).sum()
    parts = {
        "training steps": train,
        "held-out loss (validation pass)": validation,
        "sample metrics (fid, sweep, ...)": per_trial["evaluation"].sum(),
        "checkpoint saving": per_trial["checkpoint"].sum(),
        "trial start-up: TensorFlow import": per_trial["tf_import"].sum(),
        "trial start-up: data, classifier, model": per_trial["setup"].sum(),
    }
    # Where the rest went, from each trial's span (report timestamps are whole seconds: +-1 s per trial).
    spans = table.assign(start=table["timestamp"] - table["time_total_s"]).groupby("trial_id").agg(
        start=("start", "min"), end=("timestamp", "max"))
    inside = per_trial["total"].sum()
    ends = spans["end"].sort_values().to_numpy()
    busy_span = ends[-1] - spans["start"].min()
    parts.update({
        "inside trials, none of the above": inside - sum(parts.values()),
        "no trial on a CPU between the first start and the last end": busy_span * cpus - inside,
        "before the first trial and after the last": budget - busy_span * cpus,
    })
    print(f"\n== {run['name']}: {len(per_trial)} trials, {len(table)} epochs; command wall {run['wall']:.1f} s, "
          f"tune.fit wall {run['tune_wall']:.0f} s, {cpus} CPUs")
    print(f"trial length (time_total_s): min {per_trial['total'].min():.1f} s, median {per_trial['total'].median():.1f} s")
    for label, seconds in parts.items():
        print(f"  {label:<58} {seconds:8.1f} CPU-s  {100 * seconds / budget:5.1f} % of wall x CPUs")
    if len(ends) > 1:
        print(f"  (the last trial ran alone for its final {ends[-1] - ends[-2]:.0f} s; "
              f"inside trials, none of the above = the test split's evaluation, Tune's report and checkpoint copy)")
    print(f"training-step share: {100 * train / budget:.1f} % of command wall x CPUs, "
          f"{100 * train / tune_budget:.1f} % of tune.fit wall x CPUs")
    print(f"per-trial start-up: TensorFlow import {per_trial['tf_import'].mean():.2f} s, "
          f"data+classifier+model {per_trial['setup'].mean():.2f} s (mean)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-train-samples", type=int, default=0, help="0 = the whole 4,000-digit training split")
    parser.add_argument("--only", choices=["reuse", "fresh"], help="run one variant only")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="cvae-efficiency-") as scratch:
        for reuse in (True, False):
            if args.only and args.only != ("reuse" if reuse else "fresh"):
                continue
            summarise(run_study(Path(scratch), args.trials, args.epochs, args.max_train_samples, reuse), cpus)


if __name__ == "__main__":
    main()
