"""The reference C-VAE: functional encoder/decoder and a CVAE keras.Model with its own train/test steps."""

from __future__ import annotations

import keras
from keras import layers, ops, regularizers

from cvae.data import CONDITION_DIM, IMAGE_SHAPE
from cvae.losses import grey_loss, kl_loss, reconstruction_loss
from cvae.metrics import TRAIN_METRICS

LOSS_TERMS = TRAIN_METRICS  # the tracked loss terms are the reported training metrics (named in cvae.metrics)


SAMPLING_LAYER = "z"  # the encoder's Sampling layer


@keras.saving.register_keras_serializable(package="cvae")
class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, with its own seed generator (saved and restored with the model).

    Only training draws from the generator: evaluation uses fixed noise (the layer's seed), so measuring a model
    (validation every epoch, the test split at the end) neither changes the training's random stream nor
    depends on when it happens.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # The evaluation noise's seed while a fused program (cvae.fused) traces its members: each member's own, as a
        # traced value, in place of the template model's `seed`; None everywhere else.
        self.fused_evaluation_seed = None

    def call(self, inputs, training=False):
        z_mean, z_log_var = inputs
        evaluation_seed = (self.seed or 0) if self.fused_evaluation_seed is None else self.fused_evaluation_seed
        noise = keras.random.normal(ops.shape(z_mean), dtype=z_mean.dtype,  # bf16 under mixed precision
                                    seed=self.seed_generator if training else evaluation_seed)
        return z_mean + ops.exp(0.5 * z_log_var) * noise

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def _scaled(units: int, width: float) -> int:
    return max(1, int(round(units * width)))


class _Seeds:
    """Successive seeds from one base: every initializer and RNG layer gets its own, none reads global state.

    Keras draws an unseeded initializer's seed from Python's `random`, which whatever ran before in the process
    (loading a classifier, a previous trial in a reused worker) has moved; a seed per layer makes the initial
    weights a function of the config alone.
    """

    def __init__(self, base: int):
        self.next_seed = base

    def take(self) -> int:
        self.next_seed += 1
        return self.next_seed % 2**31  # keras seeds are 32-bit

    def kernel(self):
        return keras.initializers.GlorotUniform(seed=self.take())


def build_encoder(latent_dim=40, width=1.0, dropout=0.45, l2=0.001, seed=0) -> keras.Model:
    """Image (28, 28, 1) + condition (11) -> [z_mean, z_log_var, z], as in docs/design.md §1.

    Every layer is named (checkpoints restore optimizer state by variable name) and seeded from `seed`.
    """
    seeds = _Seeds(seed)
    image = keras.Input(shape=(*IMAGE_SHAPE, 1), name="image")
    condition = keras.Input(shape=(CONDITION_DIM,), name="condition")

    def conv(channels, strides, name):
        return layers.Conv2D(channels, 3, strides=strides, padding="same", activation="relu", name=name,
                             kernel_regularizer=regularizers.L2(l2), kernel_initializer=seeds.kernel())

    def dense(units, name, activation="relu"):
        return layers.Dense(units, activation=activation, name=name, kernel_initializer=seeds.kernel())

    x = conv(_scaled(32, width), 2, "encoder_conv_1")(image)
    x = layers.Dropout(dropout, seed=seeds.take(), name="encoder_dropout_1")(x)
    x = conv(_scaled(64, width), 2, "encoder_conv_2")(x)
    x = layers.Dropout(dropout, seed=seeds.take(), name="encoder_dropout_2")(x)
    x = conv(_scaled(128, width), 1, "encoder_conv_3")(x)
    x = layers.Flatten(name="encoder_flatten")(x)
    x = layers.Concatenate(name="encoder_with_condition")([x, condition])
    x = dense(_scaled(256, width), "encoder_dense")(x)
    shortcut = dense(_scaled(64, width), "encoder_shortcut")(layers.Flatten(name="image_flatten")(image))
    x = layers.Concatenate(name="encoder_with_shortcut")([x, shortcut])
    z_mean = dense(latent_dim, "z_mean", activation=None)(x)
    z_log_var = dense(latent_dim, "z_log_var", activation=None)(x)
    z = Sampling(seed=seeds.take(), name=SAMPLING_LAYER)([z_mean, z_log_var])
    return keras.Model([image, condition], [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim=40, width=1.0, dropout=0.45, l2=0.001, output_activation="relu", seed=0) -> keras.Model:
    """Latent (latent_dim) + condition (11) -> image (28, 28, 1), as in docs/design.md §1 (named, seeded)."""
    seeds = _Seeds(seed)
    z = keras.Input(shape=(latent_dim,), name="z")
    condition = keras.Input(shape=(CONDITION_DIM,), name="condition")
    channels = _scaled(160, width)

    def deconv(filters, strides, name, activation="relu"):
        return layers.Conv2DTranspose(filters, 3, strides=strides, padding="same", activation=activation, name=name,
                                      kernel_regularizer=regularizers.L2(l2), kernel_initializer=seeds.kernel())

    x = layers.Concatenate(name="decoder_with_condition")([z, condition])
    x = layers.Dense(_scaled(320, width), activation="relu", name="decoder_dense_1", kernel_initializer=seeds.kernel())(x)
    x = layers.Dense(7 * 7 * channels, activation="relu", name="decoder_dense_2", kernel_initializer=seeds.kernel())(x)
    x = layers.Reshape((7, 7, channels), name="decoder_reshape")(x)
    x = deconv(_scaled(80, width), 2, "decoder_deconv_1")(x)
    x = layers.Dropout(dropout, seed=seeds.take(), name="decoder_dropout_1")(x)
    x = deconv(_scaled(40, width), 2, "decoder_deconv_2")(x)
    x = layers.Dropout(dropout, seed=seeds.take(), name="decoder_dropout_2")(x)
    image = deconv(1, 1, "image", activation=output_activation)(x)
    return keras.Model([z, condition], image, name="decoder")


class CVAE(keras.Model):
    """Conditional VAE trained with fit(); the grey weight is a variable so warm-up needs no retracing."""

    def __init__(self, encoder, decoder, grey_threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.grey_threshold = float(grey_threshold)
        self.grey_weight = keras.Variable(0.0, trainable=False, name="grey_weight")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        images, conditions = inputs
        _, _, z = self.encoder([images, conditions], training=training)
        return self.decoder([z, conditions], training=training)

    def compute_losses(self, images, conditions, training, grey_weight=None, grey_threshold=None):
        """Batch means of every loss term; `loss` adds the weighted grey term and the L2 penalties.

        grey_weight and grey_threshold default to the model's own; a fused program (cvae.fused) passes each member's
        as traced values, so members that differ in them share one compiled program.
        """
        grey_weight = self.grey_weight if grey_weight is None else grey_weight
        grey_threshold = self.grey_threshold if grey_threshold is None else grey_threshold
        images = ops.expand_dims(ops.cast(images, "float32"), -1)
        conditions = ops.convert_to_tensor(conditions, "float32")
        z_mean, z_log_var, z = self.encoder([images, conditions], training=training)
        reconstructions = self.decoder([z, conditions], training=training)
        reconstructions = ops.cast(reconstructions, "float32")  # mixed precision: losses in float32
        terms = {
            "reconstruction": ops.mean(reconstruction_loss(images, reconstructions)),
            "kl": ops.mean(kl_loss(ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32"))),
            "grey": ops.mean(grey_loss(reconstructions, grey_threshold)),
        }
        penalty = ops.sum(self.encoder.losses) + ops.sum(self.decoder.losses)
        terms["loss"] = terms["reconstruction"] + terms["kl"] + grey_weight * terms["grey"] + penalty
        return terms

    def _update_trackers(self, terms):
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        import tensorflow as tf  # here, not at the top: the model builds on any Keras backend (gpu_throughput.py)

        images, conditions = data
        with tf.GradientTape() as tape:
            terms = self.compute_losses(images, conditions, training=True)
            scaled = self.optimizer.scale_loss(terms["loss"])
        gradients = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        return self._update_trackers(terms)

    def test_step(self, data):
        images, conditions = data
        return self._update_trackers(self.compute_losses(images, conditions, training=False))


def state_variables(model: CVAE) -> dict:
    """The non-trainable state a resumed run needs (grey weight, each RNG layer's seed state), by stable names.

    Keras names seed generators from a process-wide counter, so their own paths depend on what was built before;
    these names depend only on the (named) layers.
    """
    named = {"grey_weight": model.grey_weight}
    for part in (model.encoder, model.decoder):
        for layer in part.layers:
            generator = getattr(layer, "seed_generator", None)
            if generator is not None:
                named[f"{part.name}/{layer.name}/seed_generator_state"] = generator.state
    return named


def build_cvae(config, steps_per_execution: int = 1) -> CVAE:
    """A compiled CVAE for a TrialConfig (architecture, grey threshold, optimizer).

    steps_per_execution = the steps of one epoch makes each epoch one compiled loop (about 10 % faster per
    epoch on 2 CPU cores than one dispatch per step); it must divide the epoch, or batches would cross epochs.
    """
    # Disjoint seed ranges: the encoder takes seed*1000+1.., the decoder seed*1000+501..
    encoder = build_encoder(config.latent_dim, config.width, config.dropout, config.l2, config.seed * 1000)
    decoder = build_decoder(config.latent_dim, config.width, config.dropout, config.l2, config.output_activation,
                            config.seed * 1000 + 500)
    return compile_cvae(CVAE(encoder, decoder, config.grey_threshold), config.learning_rate, steps_per_execution)


def compile_cvae(model: CVAE, learning_rate: float, steps_per_execution: int = 1, jit_compile=False) -> CVAE:
    # named: its variables' paths (adam/<layer>_kernel_momentum, ...) are how a checkpoint restores them
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, name="adam"), steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    return model
