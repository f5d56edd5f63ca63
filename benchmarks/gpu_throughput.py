"""Training images/s of the reference C-VAE on an accelerator: one trial alone, and k trials sharing it.

Each trial is a separate process (as Ray runs trials with fractional GPUs): it builds model_4 with
cvae.model, loads the embedded digits with cvae.data, trains one untimed epoch (compilation, kernel
autotuning), says it is ready and waits; when all k are ready they start together and each counts the images
of the epochs it finishes in `--seconds`. Their sum is what the accelerator gives k concurrent trials.

Backends (Keras 3 runs the same model and loss terms, cvae.model.CVAE.compute_losses, on each):
  tensorflow  the trial itself: CVAE.fit over cvae.train.training_batches, each epoch one compiled loop
              (--xla adds jit_compile=True);
  jax         one XLA-compiled epoch (jax.lax.scan over the epoch's batches, value_and_grad of the same
              loss, Keras' Adam through stateless_apply): what XLA makes of the step;
  torch       one eagerly dispatched step per batch (autograd, cuDNN/cuBLAS kernels, no XLA).
Precisions: float32, mixed_bfloat16 (Keras policy: bf16 compute, float32 variables and losses).

Each worker also prints its first timed epoch's mean loss, so a precision or backend that trains a different
model shows up next to its speed.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16")
READY = "READY"  # a worker's line once its untimed epoch is done


# ---------------------------------------------------------------- one trial (a worker process)


def build_model(precision: str):
    """model_4 on the embedded digits, under `precision`; returns (config, data, compiled CVAE)."""
    import keras

    from cvae.config import MNIST_5K, preset
    from cvae.data import prepare_data_for
    from cvae.model import build_cvae
    from cvae.train import steps_per_epoch

    keras.mixed_precision.set_global_policy(precision)
    config = preset("model_4").replace(dataset=MNIST_5K)
    data = prepare_data_for(config)
    model = build_cvae(config, steps_per_execution=steps_per_epoch(data, config))  # as a trial compiles it
    return config, data, model


def epoch_arrays(data, batch_size: int, seed: int):
    """The training images and conditions, shuffled once (the split is sorted by class), as (steps, batch, ...)
    float32 arrays, the ragged tail dropped. Every epoch reuses this order: the speed is the same."""
    import numpy as np

    steps = len(data.train) // batch_size
    order = np.random.default_rng(seed).permutation(len(data.train))[:steps * batch_size]
    images = np.asarray(data.train.images[order], np.float32).reshape(steps, batch_size, 28, 28)
    conditions = np.asarray(data.train.conditions()[order], np.float32).reshape(steps, batch_size, -1)
    return images, conditions


def jax_epoch_runner(model, images, conditions, per_step: bool = False):
    """run(grey_weight) trains one epoch per call and returns its mean loss: one XLA program for the whole epoch,
    or (per_step) one XLA program per batch, dispatched from Python."""
    import jax
    import keras

    trainable, non_trainable = model.trainable_variables, model.non_trainable_variables
    model.optimizer.build(trainable)

    def loss_and_state(trainable_values, non_trainable_values, batch_images, batch_conditions):
        mapping = list(zip(trainable, trainable_values)) + list(zip(non_trainable, non_trainable_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss = model.compute_losses(batch_images, batch_conditions, training=True)["loss"]
        return loss, [scope.get_current_value(variable) for variable in non_trainable]  # RNG states move on

    gradient_of = jax.value_and_grad(loss_and_state, has_aux=True)

    def step(state, batch):
        trainable_values, non_trainable_values, optimizer_values = state
        (loss, non_trainable_values), gradients = gradient_of(trainable_values, non_trainable_values, *batch)
        trainable_values, optimizer_values = model.optimizer.stateless_apply(optimizer_values, gradients,
                                                                             trainable_values)
        return (trainable_values, non_trainable_values, optimizer_values), loss

    @jax.jit
    def whole_epoch(state, epoch_images, epoch_conditions):
        state, losses = jax.lax.scan(step, state, (epoch_images, epoch_conditions))
        return state, losses.mean()

    one_step = jax.jit(step)

    def step_by_step(state, epoch_images, epoch_conditions):
        losses = []
        for batch in zip(epoch_images, epoch_conditions):
            state, loss = one_step(state, batch)
            losses.append(loss)
        return state, jax.numpy.stack(losses).mean()

    epoch = step_by_step if per_step else whole_epoch

    state = ([v.value for v in trainable], [v.value for v in non_trainable],
             [v.value for v in model.optimizer.variables])
    images, conditions = jax.device_put(images), jax.device_put(conditions)
    grey_index = [id(variable) for variable in non_trainable].index(id(model.grey_weight))

    def run(grey_weight: float) -> float:
        nonlocal state
        state[1][grey_index] = jax.numpy.asarray(grey_weight, state[1][grey_index].dtype)
        state, loss = epoch(state, images, conditions)
        return float(loss)  # waits for the device

    return run


def torch_epoch_runner(model, images, conditions):
    """run(grey_weight) trains one epoch per call, one eager autograd step per batch, and returns its mean loss."""
    import torch
    from keras import ops

    trainable = model.trainable_variables
    model.optimizer.build(trainable)
    images, conditions = ops.convert_to_tensor(images), ops.convert_to_tensor(conditions)

    def run(grey_weight: float) -> float:
        model.grey_weight.assign(grey_weight)
        total = torch.zeros((), device=images.device)
        for batch_images, batch_conditions in zip(images, conditions):
            model.zero_grad()
            loss = model.compute_losses(batch_images, batch_conditions, training=True)["loss"]
            loss.backward()
            with torch.no_grad():
                model.optimizer.apply([variable.value.grad for variable in trainable], trainable)
            total += loss.detach()
        return float(total) / len(images)  # waits for the device

    return run


def tensorflow_epoch_runner(model, config, data, xla: bool):
    """run(grey_weight) runs one epoch of the trial's own fit() per call and returns its mean loss."""
    from cvae.model import compile_cvae
    from cvae.train import steps_per_epoch, training_batches

    if xla:
        compile_cvae(model, config.learning_rate, steps_per_epoch(data, config), jit_compile=True)
    batches, steps = training_batches(data, config, 0)  # each call starts a fresh pass: its first epoch's order

    def run(grey_weight: float) -> float:
        model.grey_weight.assign(grey_weight)
        history = model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        return float(history.history["loss"][-1])

    return run


def worker(args) -> dict:
    """One untimed epoch, READY on stdout, wait for a line on stdin, then count the images of the epochs
    finished in args.seconds."""
    backend = os.environ["KERAS_BACKEND"]
    entered = time.perf_counter()
    config, data, model = build_model(args.precision)
    if backend == "tensorflow":
        run = tensorflow_epoch_runner(model, config, data, args.xla)
        images_per_epoch = len(data.train)
    else:
        images, conditions = epoch_arrays(data, config.batch_size, config.seed)
        if backend == "jax":
            run = jax_epoch_runner(model, images, conditions, args.per_step)
        else:
            run = torch_epoch_runner(model, images, conditions)
        images_per_epoch = images.shape[0] * images.shape[1]
    run(0.0)  # model_4's warm-up epoch; compiles (XLA) or warms the kernels (cuDNN autotuning): not timed
    ready = time.perf_counter() - entered
    print(READY, flush=True)
    sys.stdin.readline()  # the driver's go: every trial of this measurement is ready
    started, losses = time.perf_counter(), []
    while time.perf_counter() - started < args.seconds:
        losses.append(run(config.grey_weight))
    elapsed = time.perf_counter() - started
    return {"backend": backend, "precision": args.precision, "xla": args.xla or backend == "jax",
            "loop": "step" if backend == "torch" or (backend == "jax" and args.per_step) else "epoch",
            "images_per_s": len(losses) * images_per_epoch / elapsed, "epochs": len(losses),
            "ready_s": round(ready, 1),
            "first_timed_loss": losses[0], "peak_memory_mb": peak_memory_mb(backend)}


def peak_memory_mb(backend: str) -> float | None:
    """The accelerator memory this process used at most (None on the CPU)."""
    try:
        if backend == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            return round(stats.get("peak_bytes_in_use", 0) / 2**20, 1) or None
        if backend == "torch":
            import torch

            return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return round(tf.config.experimental.get_memory_info(gpus[0].name)["peak"] / 2**20, 1) if gpus else None
    except Exception:  # a memory figure is a nicety; its absence must not lose the speed figure
        return None


# ---------------------------------------------------------------- the driver


def device_name() -> str:
    """The GPU's name from nvidia-smi, else "CPU only"."""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
        return names[0].strip() or "CPU only"
    except (OSError, subprocess.SubprocessError):
        return "CPU only"


def run_trials(backend: str, precision: str, count: int, seconds: float, options: list, ready_within: float) -> list:
    """`count` worker processes sharing the machine, started together once all are ready; returns their result
    dicts (none if any worker failed or was not ready within `ready_within` seconds)."""
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1",
                   "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # k JAX processes on one GPU: allocate as used
                   "TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, __file__, "--worker", "--precision", precision, "--seconds", str(seconds)]
    with tempfile.TemporaryDirectory() as scratch:
        logs = [open(Path(scratch) / f"worker_{number}.log", "w+") for number in range(count)]
        processes = [subprocess.Popen(command + options, env=environment, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log) for log in logs]
        deadline = time.time() + ready_within
        try:
            for process in processes:
                if not _wait_for_ready(process, deadline):
                    raise TimeoutError(f"a worker was not ready within {ready_within:g} s")
            for process in processes:
                process.stdin.write("go\n")
                process.stdin.flush()
            outputs = [process.communicate(timeout=seconds + 120)[0] for process in processes]
        except (TimeoutError, subprocess.TimeoutExpired, BrokenPipeError) as error:
            for process in processes:
                process.kill()
            failed = next((log for log, process in zip(logs, processes) if process.wait()), logs[0])
            failed.seek(0)
            print(f"  {backend} {precision} trials={count}: {error}; worker's last words: "
                  f"{failed.read().strip().splitlines()[-1:]}", flush=True)
            return []
        finally:
            for log in logs:
                log.close()
    return [json.loads(next(line for line in output.splitlines() if line.startswith("{"))) for output in outputs]


def _wait_for_ready(process, deadline: float) -> bool:
    """True once the worker printed READY; False if it exited or the deadline passed first."""
    while time.time() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.time()))
        if not ready:
            return False
        line = process.stdout.readline()
        if line.strip() == READY:
            return True
        if not line:  # the worker exited
            return False
    return False


def summary_line(results: list, alone: float | None) -> str:
    """One printed line: trials, total images/s, per trial, the speed-up over one trial alone."""
    first = results[0]
    total = sum(result["images_per_s"] for result in results)
    label = (f"{first['backend']:<10} {first['precision']:<14} xla={'on ' if first['xla'] else 'off'} "
             f"loop={first['loop']:<5}")
    line = (f"{label} trials={len(results)}: {total:,.0f} images/s ({total / len(results):,.0f} per trial"
            f"{f', {total / alone:.2f}x one trial' if alone else ''}); ready after "
            f"{max(r['ready_s'] for r in results):.0f} s; first timed loss "
            f"{min(r['first_timed_loss'] for r in results):.1f}-{max(r['first_timed_loss'] for r in results):.1f}")
    memory = [r["peak_memory_mb"] for r in results if r["peak_memory_mb"]]
    return line + (f"; peak memory {max(memory):,.0f} MB per trial" if memory else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--backends", default="jax,torch,tensorflow",
                        help="comma-separated, of " + ", ".join(BACKENDS) + " (default: all; missing ones are skipped)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated, of " + ", ".join(PRECISIONS))
    parser.add_argument("--trials", default="1,2,4,8", help="numbers of concurrent trials, comma-separated (1,2,4,8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window per measurement (default 8)")
    parser.add_argument("--ready-within", type=float, default=120.0,
                        help="seconds the workers get to import, build and run their first epoch (default 120)")
    parser.add_argument("--xla", action="store_true", help="tensorflow backend: jit_compile=True")
    parser.add_argument("--per-step", action="store_true",
                        help="jax backend: one compiled program per batch instead of one per epoch")
    parser.add_argument("--out", help="also append each measurement as a JSON line to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    backends, precisions = args.backends.split(","), args.precisions.split(",")
    unknown = sorted(set(backends) - set(BACKENDS)) + sorted(set(precisions) - set(PRECISIONS))
    try:
        counts = [int(count) for count in args.trials.split(",")]
    except ValueError:
        counts = []
    problem = (f"unknown {', '.join(unknown)}" if unknown
               else f"--trials {args.trials!r} is not a list of positive integers" if not counts or min(counts) < 1
               else "--seconds and --ready-within must be positive" if min(args.seconds, args.ready_within) <= 0
               else None)
    if problem:
        parser.exit(2, f"error: {problem}; backends: {', '.join(BACKENDS)}; precisions: {', '.join(PRECISIONS)}; "
                    f"--trials: positive integers such as 1,2,4; --seconds, --ready-within: positive\n")
    print(f"device: {device_name()}; model_4, batch 32, embedded digits; {args.seconds:g} s timed per measurement",
          flush=True)
    lines = []
    for backend in backends:
        if subprocess.run([sys.executable, "-c", f"import {backend}"], capture_output=True).returncode:
            print(f"{backend}: not installed here, skipped", flush=True)
            continue
        for precision in precisions:
            alone = None
            for count in counts:
                options = ["--xla"] * args.xla + ["--per-step"] * args.per_step
                results = run_trials(backend, precision, count, args.seconds, options, args.ready_within)
                if not results:
                    break
                if count == 1:
                    alone = results[0]["images_per_s"]
                lines.append(summary_line(results, alone))
                print(lines[-1], flush=True)
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps({"device": device_name(), "trials": count, "results": results}) + "\n")
    print("\nsummary")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
