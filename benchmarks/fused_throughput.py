"""Training images/s of K fused members (cvae/fused.py: one JAX program) against K separate trials and TensorFlow's.

Three ways to train K configurations of model_4 on the embedded digits, batch 32:
  fused     one process, one FusedProgram of K slots (members differ in seed and grey weight): each epoch one
            XLA program (lax.scan over the steps of the vmapped step), every member its own batch order;
  separate  K processes side by side, each one trial's XLA-compiled epoch on JAX (gpu_throughput.py's jax
            worker), started together once all have compiled: what Ray gives K trials sharing the machine;
  tensorflow one trial as the study runs it today (CVAE.fit on TensorFlow; gpu_throughput.py's worker).
Each measurement trains one untimed epoch (compilation), then counts the images of the epochs it finishes in
`--seconds` (at least one). Every figure is the sum over the K members or trials.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def fused_worker(members: int, seconds: float, images_per_member: int) -> dict:
    """K members of model_4 (seeds 0..K-1, grey weights spread) as one FusedProgram: untimed epoch, then timed;
    each member's epoch is its first `images_per_member` training images (0: all)."""
    import jax
    import numpy as np

    from cvae.fused import FusedProgram, member_batches
    from cvae.model import build_cvae
    from gpu_throughput import build_model

    entered = time.perf_counter()
    config, data, template = build_model("float32")
    program = FusedProgram(template, members)
    for slot in range(members):
        program.load(slot, build_cvae(config.replace(seed=slot)))
    count = images_per_member or len(data.train)
    images = jax.device_put(data.train.images[:count])
    conditions = jax.device_put(np.stack([data.train.conditions()[:count]] * members))
    grey_weights = np.linspace(0.1, 1.0, members, dtype=np.float32)
    thresholds, active = np.zeros(members, np.float32), np.ones(members, bool)

    def epoch(number: int) -> float:
        orders = np.stack([member_batches(slot, number, count, config.batch_size) for slot in range(members)])
        terms = program.train_epoch(images, conditions, orders, grey_weights, thresholds, active)
        return float(terms[:, 0].mean())  # waits for the device

    epoch(1)
    ready = time.perf_counter() - entered
    started, losses = time.perf_counter(), []
    while not losses or time.perf_counter() - started < seconds:
        losses.append(epoch(len(losses) + 2))
    elapsed = time.perf_counter() - started
    images_per_epoch = members * (count // config.batch_size) * config.batch_size
    return {"backend": "jax", "precision": "float32", "xla": True, "loop": "fused", "members": members,
            "images_per_s": len(losses) * images_per_epoch / elapsed, "epochs": len(losses),
            "ready_s": round(ready, 1), "first_timed_loss": losses[0]}


def measure_fused(members: int, seconds: float, images_per_member: int) -> dict | None:
    """fused_worker in a process of its own on KERAS_BACKEND=jax; None (said on the console) if it failed."""
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    command = [sys.executable, __file__, "--worker", "--members", str(members), "--seconds", str(seconds),
               "--images-per-member", str(images_per_member)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        print(f"  fused K={members}: failed; its last words: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(lines[-1])


def table_line(label: str, members: int, total: float, one_trial: float | None, tensorflow: float | None) -> str:
    """One row: how, K, images/s in all and per member, against one JAX trial and one TensorFlow trial."""
    against = [f"{total / base:.2f}x {name}" for name, base in (("one jax trial", one_trial),
                                                               ("the tensorflow trial", tensorflow)) if base]
    return f"{label:<9} K={members:<3} {total:>9,.0f} images/s ({total / members:,.0f} per member; {', '.join(against)})"


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(count) for count in text.split(",")]
    except ValueError:
        return []
    return counts if counts and min(counts) >= 1 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--members", default="1,2,4,8,16", help="Ks to measure, comma-separated (1,2,4,8,16)")
    parser.add_argument("--separate", default="1,2,4",
                        help="Ks to measure as separate JAX trials, comma-separated (1,2,4; empty: none)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per measurement (default 10)")
    parser.add_argument("--images-per-member", type=int, default=0,
                        help="a fused member's epoch: its first N training images (default 0: all ~4,000); a "
                             "shorter epoch keeps large K affordable on a CPU, at the same speed per image")
    parser.add_argument("--no-tensorflow", action="store_true", help="skip the TensorFlow trial")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(fused_worker(int(args.members), args.seconds, args.images_per_member)), flush=True)
        return
    members, separate = parse_counts(args.members), parse_counts(args.separate) if args.separate else []
    if not members or (args.separate and not separate) or args.seconds <= 0 or args.images_per_member < 0:
        parser.exit(2, f"error: --members {args.members!r} / --separate {args.separate!r} / --seconds "
                       f"{args.seconds:g} / --images-per-member {args.images_per_member}: Ks are positive integers "
                       "such as 1,2,4,8, --seconds is positive, --images-per-member 0 (all) or more\n")
    import gpu_throughput

    print(f"device: {gpu_throughput.device_name()}; model_4, batch 32, embedded digits; {args.seconds:g} s timed "
          "per measurement", flush=True)
    tensorflow = one_trial = None
    lines = []
    if not args.no_tensorflow:
        results = gpu_throughput.run_trials("tensorflow", "float32", 1, args.seconds, [], 300.0)
        tensorflow = results[0]["images_per_s"] if results else None
        if tensorflow:
            lines.append(f"tensorflow K=1   {tensorflow:>9,.0f} images/s (the trial as a study runs it today)")
            print(lines[-1], flush=True)
    for count in separate:
        results = gpu_throughput.run_trials("jax", "float32", count, args.seconds, [], 300.0 + 60 * count)
        if not results:
            break
        total = sum(result["images_per_s"] for result in results)
        one_trial = one_trial or (total if count == 1 else None)
        lines.append(table_line("separate", count, total, one_trial, tensorflow))
        print(lines[-1], flush=True)
    for count in members:
        result = measure_fused(count, args.seconds, args.images_per_member)
        if result is None:
            break
        lines.append(table_line("fused", count, result["images_per_s"], one_trial, tensorflow)
                     + f"; ready after {result['ready_s']:.0f} s (build, compile, one untimed epoch); "
                     f"first timed loss {result['first_timed_loss']:.1f}")
        print(lines[-1], flush=True)
    print("\nsummary")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
