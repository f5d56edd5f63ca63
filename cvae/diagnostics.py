"""What one checkpoint draws beyond the scalar metrics: the per-class thickness sweep and a fixed sample grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvae.data import NUM_CLASSES, prepare_data_for
from cvae.metrics import evaluation_set_for, generate, sweep_profile

GRID_THICKNESS = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_SEED = 0  # one latent per digit row, the same for every checkpoint of a latent size


def describe_checkpoint(checkpoint: str | Path) -> tuple[list[dict], np.ndarray]:
    """Sweep profile and sample grid of a checkpoint, with the trial's own evaluation latents.

    Args:
        checkpoint: a checkpoint folder written by cvae.train (decoder.keras, config.json, ...).
    Returns:
        (rows of cvae.metrics.sweep_profile, grid of shape (10 digits, len(GRID_THICKNESS), 28, 28) as uint8).
    """
    from cvae.drawing import draw_grid, load_generator

    _, decoder, config, stats = load_generator(checkpoint)
    data = prepare_data_for(config)
    # No classifier: the sweep needs only the trial's thickness statistics and the real stroke widths.
    evaluation = evaluation_set_for(config, data.validation, stats, None)
    sweep = generate(decoder, evaluation.sweep_latents, evaluation.sweep_conditions)
    grid = draw_grid(decoder, range(NUM_CLASSES), GRID_THICKNESS, seed=GRID_SEED)
    return sweep_profile(sweep, evaluation), np.round(grid * 255).astype(np.uint8)
