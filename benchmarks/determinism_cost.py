"""What reproducibility costs per training step: this project's deterministic pipeline vs the same model with
TensorFlow's op determinism switched on, and vs the previous pipeline (tf.data shuffle buffer).

Each variant trains model_4 on the embedded digits in its own process (op determinism is process-wide),
interleaved over `--rounds`, and reports the median ms per training step (batch 32, one epoch per round
after a warm-up epoch); the best round is compared, the median shown beside it.

    python benchmarks/determinism_cost.py            # 3 rounds, about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, math, sys, time
import tensorflow as tf
variant = sys.argv[1]
if variant == "op-determinism":
    tf.config.experimental.enable_op_determinism()
from cvae.config import TrialConfig
from cvae.data import prepare_data_for
from cvae.model import build_cvae
from cvae.train import training_batches

config = TrialConfig(dataset="mnist-5k", epochs=2)
data = prepare_data_for(config)
model = build_cvae(config)
if variant == "shuffle-buffer":  # the pipeline before: tf.data's stateful shuffle, reshuffled every epoch
    pairs = tf.data.Dataset.from_tensor_slices((data.train.images, data.train.conditions()))
    batches = pairs.shuffle(len(data.train), seed=0).batch(32).repeat().prefetch(tf.data.AUTOTUNE)
    steps = math.ceil(len(data.train) / 32)
else:
    batches, steps = training_batches(data, config, 0)
model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)  # warm-up: tracing
started = time.perf_counter()
model.fit(batches, steps_per_epoch=steps, epochs=2, initial_epoch=1, verbose=0)
print("STEP_MS " + json.dumps((time.perf_counter() - started) / steps * 1000))
"""

VARIANTS = ("this project", "op-determinism", "shuffle-buffer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    timings: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_number in range(args.rounds):
        for variant in VARIANTS:
            done = subprocess.run([sys.executable, "-c", CHILD, variant], capture_output=True, text=True,
                                  env=environment, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-2000:]}")
            timings[variant].append(json.loads(done.stdout.split("STEP_MS ", 1)[1]))
            print(f"round {round_number + 1}: {variant}: {timings[variant][-1]:.1f} ms/step", flush=True)
    # A shared machine's slow phases hit whichever process runs then: the best of the rounds compares the code.
    base = min(timings["this project"])
    for variant in VARIANTS:
        best, median = min(timings[variant]), statistics.median(timings[variant])
        print(f"{variant:<16} best {best:6.1f} ms/step = {best / base:.3f} x this project "
              f"(median of {args.rounds}: {median:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
