"""The reference C-VAE: functional encoder/decoder and a CVAE keras.Model with its own train/test steps."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops, regularizers

from cvae.data import CONDITION_DIM, IMAGE_SHAPE
from cvae.losses import grey_loss, kl_loss, reconstruction_loss
from cvae.metrics import TRAIN_METRICS

LOSS_TERMS = TRAIN_METRICS  # the tracked loss terms are the reported training metrics (named in cvae.metrics)


@keras.saving.register_keras_serializable(package="cvae")
class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, with its own seed generator (saved and restored with the model)."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        noise = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * noise

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def _scaled(units: int, width: float) -> int:
    return max(1, int(round(units * width)))


def build_encoder(latent_dim=40, width=1.0, dropout=0.45, l2=0.001, seed=0) -> keras.Model:
    """Image (28, 28, 1) + condition (11) -> [z_mean, z_log_var, z], as in docs/design.md §1."""
    image = keras.Input(shape=(*IMAGE_SHAPE, 1), name="image")
    condition = keras.Input(shape=(CONDITION_DIM,), name="condition")
    conv = dict(kernel_size=3, padding="same", activation="relu", kernel_regularizer=regularizers.L2(l2))
    x = layers.Conv2D(_scaled(32, width), strides=2, **conv)(image)
    x = layers.Dropout(dropout, seed=seed)(x)
    x = layers.Conv2D(_scaled(64, width), strides=2, **conv)(x)
    x = layers.Dropout(dropout, seed=seed + 1)(x)
    x = layers.Conv2D(_scaled(128, width), strides=1, **conv)(x)
    x = layers.Flatten()(x)
    x = layers.Concatenate()([x, condition])
    x = layers.Dense(_scaled(256, width), activation="relu")(x)
    shortcut = layers.Dense(_scaled(64, width), activation="relu")(layers.Flatten()(image))
    x = layers.Concatenate()([x, shortcut])
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling(seed=seed + 2, name="z")([z_mean, z_log_var])
    return keras.Model([image, condition], [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim=40, width=1.0, dropout=0.45, l2=0.001, output_activation="relu", seed=0) -> keras.Model:
    """Latent (latent_dim) + condition (11) -> image (28, 28, 1), as in docs/design.md §1."""
    z = keras.Input(shape=(latent_dim,), name="z")
    condition = keras.Input(shape=(CONDITION_DIM,), name="condition")
    channels = _scaled(160, width)
    conv = dict(kernel_size=3, padding="same", kernel_regularizer=regularizers.L2(l2))
    x = layers.Concatenate()([z, condition])
    x = layers.Dense(_scaled(320, width), activation="relu")(x)
    x = layers.Dense(7 * 7 * channels, activation="relu")(x)
    x = layers.Reshape((7, 7, channels))(x)
    x = layers.Conv2DTranspose(_scaled(80, width), strides=2, activation="relu", **conv)(x)
    x = layers.Dropout(dropout, seed=seed + 3)(x)
    x = layers.Conv2DTranspose(_scaled(40, width), strides=2, activation="relu", **conv)(x)
    x = layers.Dropout(dropout, seed=seed + 4)(x)
    image = layers.Conv2DTranspose(1, strides=1, activation=output_activation, name="image", **conv)(x)
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

    def compute_losses(self, images, conditions, training):
        """Batch means of every loss term; `loss` adds the weighted grey term and the L2 penalties."""
        images = ops.expand_dims(ops.cast(images, "float32"), -1)
        conditions = ops.convert_to_tensor(conditions, "float32")
        z_mean, z_log_var, z = self.encoder([images, conditions], training=training)
        reconstructions = self.decoder([z, conditions], training=training)
        reconstructions = ops.cast(reconstructions, "float32")  # mixed precision: losses in float32
        terms = {
            "reconstruction": ops.mean(reconstruction_loss(images, reconstructions)),
            "kl": ops.mean(kl_loss(ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32"))),
            "grey": ops.mean(grey_loss(reconstructions, self.grey_threshold)),
        }
        penalty = ops.sum(self.encoder.losses) + ops.sum(self.decoder.losses)
        terms["loss"] = terms["reconstruction"] + terms["kl"] + self.grey_weight * terms["grey"] + penalty
        return terms

    def _update_trackers(self, terms):
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
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


def build_cvae(config) -> CVAE:
    """A compiled CVAE for a TrialConfig (architecture, grey threshold, optimizer)."""
    encoder = build_encoder(config.latent_dim, config.width, config.dropout, config.l2, config.seed * 10)
    decoder = build_decoder(
        config.latent_dim, config.width, config.dropout, config.l2, config.output_activation, config.seed * 10
    )
    return compile_cvae(CVAE(encoder, decoder, config.grey_threshold), config.learning_rate)


def compile_cvae(model: CVAE, learning_rate: float, steps_per_execution: int = 1) -> CVAE:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), steps_per_execution=steps_per_execution)
    return model
