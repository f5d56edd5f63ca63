"""Driver overhead at scale: thousands of trivial trials (no TensorFlow) through the study's real runner.

The same Tuner a study builds (study.driver.tuner.build_tuner: Optuna searcher, FIFO scheduler, the StudyProgress
callback that appends epochs.csv and rewrites trials.csv, checkpoint settings, Tune's experiment snapshots)
runs trials that only sleep and report. Their own time is known exactly, so

    overhead = wall / (trials x per-trial time / parallelism) - 1

is what the driver (Tune + Optuna + our bookkeeping) adds. Ray Tune documents +14 % for 10,000 one-second trials
on 16 CPUs. Trivial trials take no CPU, so parallelism can exceed the cores: each trial asks for 1 of
`--parallel` logical CPUs.

    python benchmarks/study_scale.py                      # 2,000 trials x 4 reports x 0.25 s, 4 at once
    python benchmarks/study_scale.py --trials 200         # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def trivial_trial(params: dict, spec) -> None:
    """Reports `max_epochs` epochs of `sleep` seconds each, with every key a real trial reports."""
    from ray import tune

    from cvae.metrics import METRICS, STATUS_COMPLETED, STATUS_RUNNING

    epochs, pause = spec.max_epochs, float(os.environ["SCALE_PAUSE_S"])
    for epoch in range(1, epochs + 1):
        time.sleep(pause)
        values = {name: float(params.get("grey_weight", 0.1)) * epoch for name in METRICS}
        tune.report({**values, "epoch": epoch, "status": STATUS_COMPLETED if epoch == epochs else STATUS_RUNNING})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--reports", type=int, default=4, help="epochs reported per trial")
    parser.add_argument("--pause", type=float, default=0.25, help="seconds per report")
    parser.add_argument("--parallel", type=int, default=4, help="trials at once (logical CPUs given to Ray)")
    args = parser.parse_args()
    os.environ["SCALE_PAUSE_S"] = str(args.pause)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import contextlib
    import io

    import optuna
    import ray

    from study.spec.study_file import load_spec
    from study.driver.tuner import build_tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = dataclasses.replace(load_spec("smoke.yaml"), name="scale", sampler="random", num_samples=args.trials,
                               max_concurrent=args.parallel, max_epochs=args.reports, cpu=1.0)
    ray.init(address="local", num_cpus=args.parallel, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "SCALE_PAUSE_S": str(args.pause)}},
             logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as folder:
            tuner = build_tuner(spec, str(Path(folder) / "tune"), Path(folder) / "scale", trainable=trivial_trial)
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # one line per trial event: not what is measured
                grid = tuner.fit()
            wall = time.perf_counter() - started
            import pandas as pd

            trials = pd.read_csv(Path(folder) / "scale" / "trials.csv")
            epochs = sum(1 for _ in open(Path(folder) / "scale" / "epochs.csv")) - 1
    finally:
        ray.shutdown()
    ideal = args.trials * args.reports * args.pause / args.parallel
    completed = int((trials["status"] == "completed").sum())
    print(f"trials: {len(grid)} run, {completed} completed in trials.csv, {epochs} rows in epochs.csv")
    print(f"trial time: {args.trials} x {args.reports} x {args.pause:g} s / {args.parallel} at once = {ideal:.0f} s")
    print(f"wall: {wall:.0f} s ({len(grid) / wall:.1f} trials/s)")
    print(f"driver overhead: {100 * (wall / ideal - 1):+.0f} % over the trials' own time / parallelism "
          f"(Ray Tune documents +14 % for 10,000 1-s trials on 16 CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
