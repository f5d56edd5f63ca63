"""A whole study fused and not: grey_loss through study/run.py with --fuse 1 (TensorFlow trials) and --fuse K (JAX
programs of K trials), on the same data, trials and machine; prints wall time, what the search ran and its best
trial's test fid (benchmarks/README.md, section 9).

Both runs take the machine alike: --max-concurrent trials of --cpus-per-trial CPUs unfused, as many programs of that
size fused (each up to K trials). Optuna's TPE sees the same number of trials either way; fused, it proposes the
shape parameter (latent_dim) in blocks of K (docs/design.md, section 7), which the distinct-values count shows.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from study.driver.fused_groups import FUSED_GROUP_KEY

REPO = Path(__file__).resolve().parents[1]


def run_study(folder: Path, fuse: int, args) -> dict:
    name = f"grey_loss_fuse{fuse}"
    command = [sys.executable, "study/run.py", "--space", "grey_loss.yaml", "--name", name, "--results-dir",
               str(folder), "--dataset", args.dataset, "--max-train-samples", str(args.max_train_samples),
               "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs), "--fuse", str(fuse),
               "--max-concurrent", str(args.max_concurrent), "--cpus-per-trial", str(args.cpus_per_trial)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"study {name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    trials = pd.read_csv(folder / name / "trials.csv")
    epochs = pd.read_csv(folder / name / "epochs.csv")
    best = re.search(r"^best trial (\w+) \(chosen", result.stdout, re.MULTILINE).group(1)  # the closing summary
    return {"fuse": fuse, "wall": wall, "trials": trials, "epochs": epochs, "best": best,
            "tune_wall": float(re.search(r"finished in (\d+) s", result.stdout).group(1))}


def line(run: dict) -> str:
    trials, epochs = run["trials"], run["epochs"]
    best = trials.set_index("trial_id").loc[run["best"]]
    counts = trials["status"].value_counts()
    statuses = ", ".join(f"{counts[status]} {status}" for status in sorted(counts.index))
    engine = "tensorflow trials" if run["fuse"] == 1 else f"jax programs of {run['fuse']}"
    programs = f", {epochs[FUSED_GROUP_KEY].nunique()} program(s)" if FUSED_GROUP_KEY in epochs else ""
    return (f"fuse {run['fuse']:<2} ({engine}): wall {run['wall']:.0f} s, {len(trials)} trials ({statuses}), "
            f"{len(epochs)} epochs{programs}, {trials['param_latent_dim'].nunique()} distinct latent_dim; best "
            f"trial test_fid {best['test_fid']:.1f} (validation fid {best['fid']:.1f}, latent_dim "
            f"{best['param_latent_dim']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuse", type=int, default=8, help="members per program of the fused run")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--max-train-samples", type=int, default=256)
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials (unfused) or programs (fused) at once")
    parser.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs of a trial (unfused) or program (fused)")
    parser.add_argument("--only", type=int, choices=(0, 1), help="run only the unfused (0) or the fused (1) study")
    parser.add_argument("--results-dir", help="where the two studies go (default: a new temporary folder, kept)")
    args = parser.parse_args()
    folder = Path(args.results_dir or tempfile.mkdtemp(prefix="cvae-fused-study-"))
    runs = [run_study(folder, fuse, args) for index, fuse in enumerate((1, args.fuse)) if args.only in (None, index)]
    print(f"grey_loss, {args.num_samples} trials, at most {args.max_epochs} epochs, {args.dataset} "
          f"({args.max_train_samples} training images), {os.cpu_count()} CPUs; the studies: {folder}")
    for run in runs:
        print(line(run))


if __name__ == "__main__":
    main()
