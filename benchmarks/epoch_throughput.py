"""Training throughput of the reference C-VAE versus this process's dense-matmul peak, and evaluation cost.

FLOPs are counted from the layer shapes (multiply-add = 2 FLOPs):
  Conv2D           2 * H_out * W_out * k * k * C_in * C_out
  Conv2DTranspose  2 * H_in  * W_in  * k * k * C_in * C_out   (every input pixel scatters a k x k x C_out patch)
  Dense            2 * inputs * units
A training step costs the forward pass plus a backward pass that computes two products of the same size per
layer (gradient for the weights and for the layer input), i.e. 3x forward, except that layers reading the
image or the condition directly need no input gradient (2x forward). Element-wise work (activations,
dropout, losses, Adam) is not counted, so the figure is a lower bound on the work the step really does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def layer_flops(layer) -> int:
    """Forward FLOPs per sample of one conv/dense layer (0 for everything else)."""
    kind = layer.__class__.__name__
    if kind == "Conv2D":
        _, height, width, channels_out = layer.output.shape
        k_h, k_w = layer.kernel_size
        return 2 * height * width * k_h * k_w * layer.input.shape[-1] * channels_out
    if kind == "Conv2DTranspose":
        _, height, width, channels_in = layer.input.shape
        k_h, k_w = layer.kernel_size
        return 2 * height * width * k_h * k_w * channels_in * layer.filters
    if kind == "Dense":
        return 2 * layer.input.shape[-1] * layer.units
    return 0


def model_flops(model) -> tuple[int, int]:
    """(forward, training) FLOPs per sample of a CVAE, counted as the module docstring explains."""
    forward = training = 0
    for network in (model.encoder, model.decoder):
        input_names = {tensor.name for tensor in network.inputs}
        for layer in network.layers:
            flops = layer_flops(layer)
            forward += flops
            training += flops * (2 if _reads_only_inputs(layer, input_names) else 3)
    return forward, training


def _reads_only_inputs(layer, input_names: set) -> bool:
    """True when every input of `layer` is a model input (possibly flattened): no input gradient needed."""
    def is_input(tensor) -> bool:
        if tensor.name in input_names:
            return True
        producer = getattr(tensor, "_keras_history", None)
        return producer is not None and producer[0].__class__.__name__ == "Flatten" and is_input(producer[0].input)

    tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return all(is_input(tensor) for tensor in tensors)


def matmul_peak(size: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """Best-of-`trials` float32 matmul GFLOP/s in this process (same threads as training)."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            result = product(a, b)
        result.numpy()
        best = max(best, repeats * 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def graph_baseline(data, config, steps: int, chunks: int) -> list[float]:
    """Samples/s of a plain graph-mode training step of the same architecture, written here with raw TensorFlow
    ops: what the reference experiments' Keras-2 script did (one compiled step per batch of 32, fed from
    in-memory arrays, fixed batch shape, the same layers, dropout, L2, loss terms and Adam)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    batch, latent = config.batch_size, config.latent_dim

    def weight(*shape):
        fan = np.prod(shape[:-1]) + shape[-1]
        return tf.Variable((rng.uniform(-1, 1, shape) * np.sqrt(6 / fan)).astype(np.float32))

    def bias(size):
        return tf.Variable(np.zeros(size, np.float32))

    conv_kernels = [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 128)]
    deconv_kernels = [(3, 3, 80, 160), (3, 3, 40, 80), (3, 3, 1, 40)]  # (h, w, out, in) for conv2d_transpose
    params = {
        "conv": [(weight(*k), bias(k[-1])) for k in conv_kernels],
        "dense": (weight(7 * 7 * 128 + 11, 256), bias(256)), "shortcut": (weight(784, 64), bias(64)),
        "mean": (weight(320, latent), bias(latent)), "log_var": (weight(320, latent), bias(latent)),
        "decoder_1": (weight(latent + 11, 320), bias(320)), "decoder_2": (weight(320, 7 * 7 * 160), bias(7 * 7 * 160)),
        "deconv": [(weight(*k), bias(k[2])) for k in deconv_kernels],
    }
    variables = tf.nest.flatten(params)
    import keras

    optimizer = keras.optimizers.Adam(config.learning_rate)
    optimizer.build(variables)
    rate = config.dropout

    def dense(x, layer, relu=True):
        y = tf.matmul(x, layer[0]) + layer[1]
        return tf.nn.relu(y) if relu else y

    @tf.function(input_signature=[tf.TensorSpec((batch, 28, 28), tf.float32), tf.TensorSpec((batch, 11), tf.float32),
                                  tf.TensorSpec((2,), tf.int32)], jit_compile=False)
    def step(images, conditions, seed):
        with tf.GradientTape() as tape:
            x = images[..., None]
            h = x
            for number, ((kernel, offset), stride) in enumerate(zip(params["conv"], (2, 2, 1))):
                h = tf.nn.relu(tf.nn.conv2d(h, kernel, stride, "SAME") + offset)
                if number < 2:
                    h = tf.nn.experimental.stateless_dropout(h, rate, seed + number)
            h = tf.concat([tf.reshape(h, (batch, -1)), conditions], 1)
            h = tf.concat([dense(h, params["dense"]), dense(tf.reshape(x, (batch, -1)), params["shortcut"])], 1)
            mean, log_var = dense(h, params["mean"], False), dense(h, params["log_var"], False)
            z = mean + tf.exp(0.5 * log_var) * tf.random.stateless_normal((batch, latent), seed + 7)
            d = dense(dense(tf.concat([z, conditions], 1), params["decoder_1"]), params["decoder_2"])
            d = tf.reshape(d, (batch, 7, 7, 160))
            for number, ((kernel, offset), (size, channels, stride)) in enumerate(
                    zip(params["deconv"], ((14, 80, 2), (28, 40, 2), (28, 1, 1)))):
                d = tf.nn.relu(tf.nn.conv2d_transpose(d, kernel, (batch, size, size, channels), stride, "SAME")
                               + offset)
                if number < 2:
                    d = tf.nn.experimental.stateless_dropout(d, rate, seed + 3 + number)
            reconstruction = tf.reduce_mean(tf.reduce_sum(tf.square(x - d), [1, 2, 3]))
            kl = tf.reduce_mean(-0.5 * tf.reduce_sum(1 + log_var - tf.square(mean) - tf.exp(log_var), 1))
            grey = tf.reduce_mean(tf.reduce_sum(d * (1 - d), [1, 2, 3]))
            l2 = config.l2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k, _ in params["conv"] + params["deconv"]])
            loss = reconstruction + kl + config.grey_weight * grey + l2
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    images, conditions = data.train.images, data.train.conditions()
    count = len(images) - len(images) % batch
    order = rng.permutation(len(images))
    position = 0

    def run(number: int) -> None:
        nonlocal position
        for _ in range(number):
            if position + batch > count:
                position = 0
            chosen = order[position:position + batch]
            position += batch
            loss = step(images[chosen], conditions[chosen], np.array([position, 0], np.int32))  # a feed per step
        float(loss)

    run(50)
    rates = []
    chunk = max(1, steps // chunks)
    for _ in range(chunks):
        started = time.perf_counter()
        run(chunk)
        rates.append(chunk * batch / (time.perf_counter() - started))
    return rates


def fused_adam(learning_rate: float):
    """Adam whose per-variable update is TensorFlow's one fused kernel (ResourceApplyAdam, the same formula)
    instead of Keras 3's ~10 small ops: the "optimizer update" lever, measured here, not used by training."""
    import keras
    import tensorflow as tf

    class FusedAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            dtype = variable.dtype
            step = tf.cast(self.iterations + 1, dtype)
            index = self._get_variable_index(variable)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=self._momentums[index].handle,
                v=self._velocities[index].handle, beta1_power=tf.pow(beta_1, step),
                beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    return FusedAdam(learning_rate, name="adam")


def profile_step(model, data, batch_size: int, repeats: int = 60) -> None:
    """Where a training step's time goes: forward, backward, optimizer update, and fit()'s own overhead."""
    import numpy as np
    import tensorflow as tf

    images = tf.constant(data.train.images[:batch_size])
    conditions = tf.constant(data.train.conditions()[:batch_size])

    @tf.function
    def forward():
        return model.compute_losses(images, conditions, training=True)["loss"]

    @tf.function
    def backward():
        with tf.GradientTape() as tape:
            loss = model.compute_losses(images, conditions, training=True)["loss"]
        return tape.gradient(loss, model.trainable_weights)

    @tf.function
    def step():
        return model.train_step((images, conditions))

    timings = {}
    for name, function in (("forward", forward), ("forward+backward", backward), ("full train_step", step)):
        function()
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeats // 3):
                result = function()
            tf.nest.map_structure(lambda t: t.numpy(), result)
            samples.append((time.perf_counter() - started) / (repeats // 3) * 1000)
        timings[name] = float(np.median(samples))
    print("profile per step of 32 (ms, median of 3): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"  -> backward {timings['forward+backward'] - timings['forward']:.1f} ms, optimizer update + trackers "
          f"{timings['full train_step'] - timings['forward+backward']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="timed training steps (default 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="reference: 32")
    parser.add_argument("--intra-op", type=int, default=0, help="TensorFlow intra-op threads (0 = all cores)")
    parser.add_argument("--inter-op", type=int, default=2, help="TensorFlow inter-op threads (default 2)")
    parser.add_argument("--chunks", type=int, default=5,
                        help="timed epochs (and baseline chunks); median and best are reported")
    parser.add_argument("--steps-per-execution", type=int, default=0,
                        help="steps per compiled call; 0 (default) = a whole epoch, as training runs")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    parser.add_argument("--fused-adam", action="store_true",
                        help="measure the lever: Adam as one fused kernel per variable (ResourceApplyAdam)")
    parser.add_argument("--l2", type=float, default=None,
                        help="the conv kernels' L2 factor (default: the config's); --l2 0 removes the penalty and "
                             "its gradient, the most a directly added L2 gradient could save")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    cores = os.cpu_count() or 1
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op or cores)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)

    from cvae.classifier import classifier_for
    from cvae.config import TrialConfig
    from cvae.data import evaluation_batches, prepare_data_for
    from cvae.metrics import evaluate_decoder, evaluation_set_for
    from cvae.model import build_cvae, compile_cvae
    from cvae.train import training_batches

    # Timed on the training's own input pipeline (cvae.train.training_batches: in-memory tensors, a stateless
    # per-epoch permutation) one epoch at a time, as a trial trains; the first epoch traces and is not timed.
    config = TrialConfig(dataset="mnist-5k", batch_size=args.batch_size, epochs=args.chunks + 1)
    if args.l2 is not None:
        config = config.replace(l2=args.l2)
    data = prepare_data_for(config)
    batches, chunk = training_batches(data, config, 0)
    args.steps_per_execution = args.steps_per_execution or chunk
    model = compile_cvae(build_cvae(config), config.learning_rate, args.steps_per_execution, args.jit)
    if args.fused_adam:
        model.compile(optimizer=fused_adam(config.learning_rate), steps_per_execution=args.steps_per_execution,
                      jit_compile=args.jit)
    model.grey_weight.assign(config.grey_weight)
    forward, training = model_flops(model)

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    seconds = []
    peak_before = matmul_peak()
    model.fit(batches, steps_per_epoch=chunk, epochs=config.epochs, callbacks=[EpochTimer()], verbose=0,
              shuffle=False)
    rates = [len(data.train) / elapsed for elapsed in seconds[1:]]
    peak_after = matmul_peak()
    peak = max(peak_before, peak_after)
    samples_per_second = float(np.median(rates))
    achieved = samples_per_second * training / 1e9

    print(f"machine: {cores} cores; TensorFlow {tf.__version__}, Keras {keras.__version__}; "
          f"threads intra={args.intra_op or cores} inter={args.inter_op}; steps_per_execution={args.steps_per_execution}"
          f"{'; optimizer: fused Adam (ResourceApplyAdam)' if args.fused_adam else ''}; l2={config.l2:g}; "
          f"oneDNN {'off' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '0' else 'on'}")
    print(f"model FLOPs per sample: forward {forward / 1e6:.1f} M, training step {training / 1e6:.1f} M")
    print(f"matmul peak (2048x2048 float32, best of 5, before/after): {peak_before:.1f} / {peak_after:.1f} GFLOP/s")
    print(f"training epochs ({chunk} steps of the training's own pipeline each): "
          f"{' '.join(f'{r:.0f}' for r in rates)} samples/s")
    print(f"training (median epoch): {samples_per_second:.0f} samples/s ({1000 / samples_per_second:.2f} ms/image) at "
          f"batch {args.batch_size} -> {achieved:.1f} GFLOP/s = {100 * achieved / peak:.1f} % of matmul peak; "
          f"best epoch {100 * max(rates) * training / 1e9 / peak:.1f} %")
    baseline_rates = graph_baseline(data, config, args.steps, args.chunks)
    baseline = float(np.median(baseline_rates))
    print(f"graph-mode baseline (raw TensorFlow ops, one compiled step per fed batch of {args.batch_size}): "
          f"{' '.join(f'{r:.0f}' for r in baseline_rates)} samples/s; median {baseline:.0f}")
    print(f"ratio: {samples_per_second / baseline:.2f}x the graph-mode baseline's samples/s")
    profile_step(model, data, args.batch_size)

    # Evaluation cost per epoch at default sizes.
    classifier = classifier_for(config)
    evaluation = evaluation_set_for(config, data.validation, data.stats, classifier)
    evaluate_decoder(model.decoder, evaluation, classifier)  # warm-up (tracing)
    held_out = evaluation_batches(data.validation)
    model.evaluate(held_out, verbose=0)

    def median_seconds(work, rounds: int = 5) -> float:  # one round can land in a slow phase of this machine
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    sample_seconds = median_seconds(lambda: evaluate_decoder(model.decoder, evaluation, classifier))
    floor = evaluation_flops(model, classifier, evaluation, len(data.validation)) / (peak * 1e9)
    validation_seconds_5k = median_seconds(lambda: model.evaluate(held_out, verbose=0))
    per_image_validation = validation_seconds_5k / len(data.validation)
    for label, train_images, held_images in (("embedded 5k (4,000 train / 500 validation)", len(data.train),
                                              len(data.validation)),
                                             ("full MNIST (56,000 train / 7,000 validation)", 56000, 7000)):
        epoch_seconds = train_images / samples_per_second
        evaluation_seconds = sample_seconds + per_image_validation * held_images
        print(f"evaluation (median of 5), {label}: {evaluation_seconds:.2f} s per epoch "
              f"(samples+metrics {sample_seconds:.2f} s, held-out loss {per_image_validation * held_images:.2f} s) "
              f"= {100 * evaluation_seconds / epoch_seconds:.1f} % of a {epoch_seconds:.1f} s training epoch")
    print(f"evaluation at the matmul peak (its conv/dense FLOPs / {peak:.0f} GFLOP/s): {floor:.2f} s = "
          f"{100 * floor * samples_per_second / len(data.train):.1f} % of an embedded-sample epoch")
    check_same_training()


def evaluation_flops(model, classifier, evaluation, validation_images: int) -> int:
    """Conv/dense FLOPs of one epoch's evaluation: the decoder for every sample and sweep image, the classifier
    for the samples, and the whole CVAE forward for the held-out loss."""
    decoder = sum(layer_flops(layer) for layer in model.decoder.layers)
    network = sum(layer_flops(layer) for layer in classifier.model.layers)
    forward, _ = model_flops(model)
    samples = len(evaluation.latents)
    return (samples + len(evaluation.sweep_latents)) * decoder + samples * network + validation_images * forward


# model_4 on the embedded digits, seed 0: per-epoch train loss before the whole-epoch compiled loop (one
# dispatch per step; recorded 2026-11-25 after the three splits and seeding by name).
REFERENCE_LOSSES = (51.104, 55.035, 49.654)


def check_same_training() -> None:
    """Three epochs of model_4 through cvae.train.train: the speed work must not change the training (2 %)."""
    from cvae.config import preset
    from cvae.train import train

    reports = []
    train(preset("model_4").replace(dataset="mnist-5k", epochs=3), report=reports.append)
    losses = [report["loss"] for report in reports]
    worst = max(abs(loss / reference - 1) for loss, reference in zip(losses, REFERENCE_LOSSES))
    seconds = ", ".join(f"{report['train_seconds']:.2f}" for report in reports)
    print(f"same training: model_4 train loss per epoch {', '.join(f'{v:.3f}' for v in losses)} vs recorded "
          f"{', '.join(map(str, REFERENCE_LOSSES))}: largest difference {100 * worst:.2f} % "
          f"({'within' if worst <= 0.02 else 'OUTSIDE'} 2 %); epoch train seconds "
          f"{seconds}")


if __name__ == "__main__":
    main()
