"""Draw digits from a checkpoint: class x thickness grids, and "the other nine digits in this handwriting"."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cvae.checkpoint import CheckpointError, read_checkpoint
from cvae.cli import ArgumentParser, fail
from cvae.data import NUM_CLASSES, ThicknessStats, make_conditions, thickness_of

class SampleError(ValueError):
    """Bad input for sampling; the message is meant for the user as is."""


# ---------------------------------------------------------------- loading


def load_generator(checkpoint: str | Path):
    """(encoder, decoder, config, stats) from a checkpoint folder; SampleError with the reason otherwise."""
    try:
        return read_checkpoint(checkpoint)
    except CheckpointError as error:
        raise SampleError(str(error)) from None


# ---------------------------------------------------------------- drawing


def check_request(digits, thickness) -> None:
    bad_digits = [d for d in digits if not 0 <= d <= 9]
    if bad_digits:
        raise SampleError(f"digit(s) {bad_digits} outside 0-9")
    bad_thickness = [t for t in thickness if not -1.0 <= t <= 1.0]
    if bad_thickness:
        raise SampleError(f"thickness value(s) {bad_thickness} outside [-1, 1]")


def draw_grid(decoder, digits=range(NUM_CLASSES), thickness=(0.0, 0.5, 1.0), seed: int = 0,
              samples_per_digit: int = 1) -> np.ndarray:
    """Images of shape (rows, columns, 28, 28): one row per (digit, latent), one column per thickness.

    Every row keeps one latent across its thickness values, so only the thickness changes along a row;
    with a fixed seed the same latents are used for every digit (and every checkpoint of a latent size).
    """
    digits, thickness = list(digits), [float(t) for t in thickness]
    check_request(digits, thickness)
    latent_dim = decoder.inputs[0].shape[-1]
    latents = np.random.default_rng(seed).standard_normal((samples_per_digit, latent_dim)).astype(np.float32)
    row_latents = np.tile(latents, (len(digits), 1))
    row_digits = np.repeat(digits, samples_per_digit)
    z = np.repeat(row_latents, len(thickness), axis=0)
    labels = np.repeat(row_digits, len(thickness))
    values = np.tile(np.array(thickness, np.float32), len(row_digits))
    images = np.asarray(decoder([z, make_conditions(labels, values)], training=False))[..., 0]
    return np.clip(images, 0, 1).reshape(len(row_digits), len(thickness), 28, 28)


def tile(images: np.ndarray, gap: int = 2, scale: int = 2) -> np.ndarray:
    """(rows, columns, 28, 28) in [0, 1] -> one uint8 picture with grey gaps between cells."""
    rows, columns = images.shape[:2]
    size = 28 * scale
    canvas = np.full((rows * (size + gap) + gap, columns * (size + gap) + gap), 96, dtype=np.uint8)
    for r in range(rows):
        for c in range(columns):
            cell = np.kron(images[r, c], np.ones((scale, scale)))
            top, left = gap + r * (size + gap), gap + c * (size + gap)
            canvas[top : top + size, left : left + size] = np.round(cell * 255).astype(np.uint8)
    return canvas


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return path


# ---------------------------------------------------------------- "my handwriting"


def read_digit_image(path: str | Path) -> np.ndarray:
    """Any PNG/JPG -> MNIST-like 28x28 float image (white ink on black, digit centred in a 20x20 box)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            grey = np.asarray(opened.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise SampleError(f"{path} is not a readable image ({type(error).__name__}); give a PNG or JPG file") from error
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 0.5:  # white paper, dark ink: MNIST is the other way round
        grey, border = 1.0 - grey, 1.0 - border
    background = np.median(border)
    grey = np.clip((grey - background) / max(grey.max() - background, 1e-6), 0, 1)
    rows, columns = np.nonzero(grey > 0.2)
    if not len(rows):
        raise SampleError(f"{path} shows no digit (no ink found after background removal)")
    crop = grey[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = crop.shape
    factor = 20.0 / max(height, width)
    resized = Image.fromarray(np.uint8(crop * 255)).resize(
        (max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.LANCZOS
    )
    digit = np.asarray(resized, dtype=np.float32) / 255.0
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - digit.shape[0]) // 2, (28 - digit.shape[1]) // 2
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    # MNIST centres by centre of mass, not by bounding box.
    mass_rows, mass_columns = np.indices(canvas.shape)
    total = canvas.sum()
    shift_r = int(round(13.5 - (mass_rows * canvas).sum() / total))
    shift_c = int(round(13.5 - (mass_columns * canvas).sum() / total))
    return np.clip(np.roll(canvas, (shift_r, shift_c), axis=(0, 1)), 0, 1)


def redraw_in_style(encoder, decoder, stats: ThicknessStats, image: np.ndarray, digit: int) -> np.ndarray:
    """Encode `image` (class `digit`) and decode all ten digits with its latent and thickness.

    Returns:
        (10, 28, 28) images; entry `digit` is the reconstruction of the input.
    """
    thickness = thickness_of(image[None], np.array([digit]), stats)
    z_mean, _, _ = encoder([image[None, ..., None], make_conditions(np.array([digit]), thickness)], training=False)
    z = np.repeat(np.asarray(z_mean), NUM_CLASSES, axis=0)
    conditions = make_conditions(np.arange(NUM_CLASSES), np.repeat(thickness, NUM_CLASSES))
    return np.clip(np.asarray(decoder([z, conditions], training=False))[..., 0], 0, 1)


# ---------------------------------------------------------------- command line


MAX_SAMPLES, MAX_SCALE, MAX_THICKNESS_VALUES = 100, 16, 41  # a grid of at most 1,000 rows x 41 columns of 28 px x 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sampling options, every one checked (exit 2 with one line) before a model is loaded."""
    parser = ArgumentParser(
        prog="python -m cvae.sample",
        description="Draw digits from a checkpoint folder (e.g. RUN/checkpoints/epoch_0009). Without --style: "
        "a grid, one row per digit (and latent), one column per thickness, same latent along a row. With --style "
        "IMAGE: your digit (any PNG/JPG, white or black background) followed by all ten digits in its style.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder holding encoder.keras / decoder.keras")
    parser.add_argument("--out", default="samples.png", help="PNG to write (default samples.png)")
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)), help="digits 0-9 (default all)")
    parser.add_argument("--thickness", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                        help=f"thickness values in [-1, 1], at most {MAX_THICKNESS_VALUES} (default 0 0.5 1)")
    parser.add_argument("--samples", type=int, default=1, help=f"latents (rows) per digit, 1-{MAX_SAMPLES} (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed; the same seed gives the same latents")
    parser.add_argument("--style", metavar="IMAGE", help="redraw all digits in the handwriting of this image")
    parser.add_argument("--scale", type=int, default=2, help=f"pixel magnification in the PNG, 1-{MAX_SCALE} (default 2)")
    args = parser.parse_args(argv)
    try:
        if not 1 <= args.samples <= MAX_SAMPLES:
            raise SampleError(f"--samples must be in [1, {MAX_SAMPLES}], got {args.samples}")
        if not 1 <= args.scale <= MAX_SCALE:
            raise SampleError(f"--scale must be in [1, {MAX_SCALE}], got {args.scale}")
        if not 0 <= args.seed < 2**32:
            raise SampleError(f"--seed must be in [0, 2**32), got {args.seed}")
        if len(args.thickness) > MAX_THICKNESS_VALUES or len(args.digits) > 10 * MAX_SAMPLES:
            raise SampleError(f"at most {MAX_THICKNESS_VALUES} --thickness values and {10 * MAX_SAMPLES} --digits")
        if Path(args.out).suffix.lower() != ".png":
            raise SampleError(f"--out {args.out!r} must name a .png file")
        if Path(args.out).is_dir():
            raise SampleError(f"--out {args.out!r} is a folder; name a .png file")
        check_request(args.digits, args.thickness)
    except SampleError as error:
        fail(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        style = read_digit_image(args.style) if args.style else None
        encoder, decoder, config, stats = load_generator(args.checkpoint)
        if style is None:
            images = draw_grid(decoder, args.digits, args.thickness, args.seed, args.samples)
            path = save_png(tile(images, scale=args.scale), args.out)
            print(f"wrote {path}: {images.shape[0]} rows (digits {args.digits}) x thickness {args.thickness}")
        else:
            from cvae.classifier import load_classifier

            classifier = load_classifier(config.dataset, config.data_path, config.validation_fraction)
            _, predicted = classifier.predict(style[None])
            digit = int(predicted[0])
            redrawn = redraw_in_style(encoder, decoder, stats, style, digit)
            row = np.concatenate([style[None], redrawn])[None]
            path = save_png(tile(row, scale=args.scale), args.out)
            print(f"wrote {path}: your image (read as a {digit}) then digits 0-9 in its style")
    except SampleError as error:
        fail(str(error))
    except OSError as error:  # e.g. --out in a folder that cannot be written
        fail(f"cannot write {args.out}: {error.strerror or error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
