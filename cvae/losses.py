"""The C-VAE loss terms of docs/design.md §1, per image, and the grey-loss warm-up schedule."""

from keras import ops


def reconstruction_loss(images, reconstructions):
    """Sum over pixels of (x - y)^2 per image (= 784 x MSE); shape (batch,)."""
    return ops.sum(ops.square(images - reconstructions), axis=(1, 2, 3))


def kl_loss(z_mean, z_log_var):
    """KL(q(z|x,c) || N(0, I)) per image; shape (batch,)."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)


def grey_loss(reconstructions, threshold):
    """Sum over pixels of max(0, y(1-y) - threshold) per image: penalises grey, not black or white."""
    greyness = reconstructions * (1.0 - reconstructions)
    return ops.sum(ops.relu(greyness - threshold), axis=(1, 2, 3))


def grey_weight_for_epoch(epoch: int, grey_weight: float, warmup_epochs: int) -> float:
    """Weight of the grey term in 1-based `epoch`: 0 during the warm-up, `grey_weight` after it."""
    return 0.0 if epoch <= warmup_epochs else float(grey_weight)
