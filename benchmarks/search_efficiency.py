"""Is the search any good? ASHA + TPE against an exhaustive grid over the same small space, in epochs.

The space: grey_weight in {0.03, 0.1, 0.32, 1.0} x condition_mode in {global, per_class} (8 configurations), a
few hundred embedded digits, `--epochs` epochs per full trial, objective validation fid. The baseline trains all
8 configurations to full length (FIFO grid); ASHA + TPE gets the same 8 trials over the same values (Optuna TPE,
ASHA grace period 1, reduction factor 2), once per searcher seed. Every run goes through study/run.py.

For each run: how many epochs were trained (in the order they were reported) before some reported epoch came
within 5 % of the baseline's best objective, and how many epochs the whole run took.

    python benchmarks/search_efficiency.py                 # 3 searcher seeds, 4 epochs: about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.05
SPACE = """
    name: {name}
    base: model_4
    fixed: {{dataset: mnist-5k, max_train_samples: 600, eval_samples: 256, cas_samples: 200, cas_epochs: 1, sweep_latents: 2, width: 0.5,
            latent_dim: 8, warmup_epochs: 1}}
    parameters:
      grey_weight: {{values: [0.03, 0.1, 0.32, 1.0]}}
      condition_mode: {{values: [global, per_class]}}
    objective: {{metric: fid, mode: min}}
    search: {search}
    scheduler: {scheduler}
"""


def epochs_to_reach(epochs: pd.DataFrame, target: float, metric: str = "fid", mode: str = "min") -> int | None:
    """Epochs trained, counted in the order they were reported (`timestamp`, then epoch), up to and including the
    first report whose `metric` is within TOLERANCE of `target`; None if no report gets there."""
    ordered = epochs.sort_values(["timestamp", "epoch"], kind="stable").reset_index(drop=True)
    values = ordered[metric].astype(float).to_numpy()
    bound = target * (1 + TOLERANCE) if mode == "min" else target * (1 - TOLERANCE)
    reached = np.flatnonzero(values <= bound if mode == "min" else values >= bound)
    return int(reached[0]) + 1 if len(reached) else None


def best_value(epochs: pd.DataFrame, metric: str = "fid", mode: str = "min") -> float:
    """The baseline's best objective: over its trials' last epochs (each trial's result)."""
    last = epochs.sort_values("epoch").drop_duplicates("trial_id", keep="last")[metric].astype(float)
    return float(last.min() if mode == "min" else last.max())


def summary_line(baseline_epochs: int, runs: list[int | None]) -> str:
    """The last line: the median share of the baseline's epochs that ASHA+TPE needed; runs that never got within
    the tolerance are left out of the median and counted."""
    reached = [r for r in runs if r is not None]
    if not reached:
        return f"ASHA+TPE: never within {100 * TOLERANCE:.0f} % of the best in {len(runs)} run(s)"
    share = 100 * float(np.median(reached)) / baseline_epochs
    missed = len(runs) - len(reached)
    return (f"ASHA+TPE: within {100 * TOLERANCE:.0f} % of the best after {share:.0f} % of the baseline's epochs"
            + (f" ({missed} of {len(runs)} runs never got there)" if missed else ""))


def run_study(folder: Path, name: str, search: str, scheduler: str) -> pd.DataFrame:
    space = folder / f"{name}.yaml"
    space.write_text(textwrap.dedent(SPACE.format(name=name, search=search, scheduler=scheduler)))
    done = subprocess.run([sys.executable, "study/run.py", "--space", str(space), "--results-dir", str(folder)],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return pd.read_csv(folder / name / "epochs.csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="searcher seeds for ASHA + TPE")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a full-length trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cvae-search-") as scratch:
        folder = Path(scratch)
        baseline = run_study(folder, "exhaustive", "{algorithm: grid, max_concurrent: 2}",
                             f"{{type: fifo, max_epochs: {args.epochs}}}")
        target = best_value(baseline)
        baseline_epochs = len(baseline)
        print(f"exhaustive grid: 8 trials, {baseline_epochs} epochs, best fid {target:.4g}; "
              f"within {100 * TOLERANCE:.0f} % after {epochs_to_reach(baseline, target)} epochs", flush=True)
        runs = []
        for seed in range(args.seeds):
            epochs = run_study(folder, f"asha_tpe_{seed}",
                               f"{{algorithm: optuna, sampler: tpe, seed: {seed}, num_samples: 8, max_concurrent: 2}}",
                               f"{{type: asha, max_epochs: {args.epochs}, grace_period: 1, reduction_factor: 2}}")
            runs.append(epochs_to_reach(epochs, target))
            print(f"ASHA+TPE seed {seed}: {len(epochs)} epochs in all; within {100 * TOLERANCE:.0f} % after "
                  f"{runs[-1] if runs[-1] is not None else 'never'} epochs", flush=True)
    print(summary_line(baseline_epochs, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
