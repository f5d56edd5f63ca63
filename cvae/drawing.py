"""Drawing digits from a decoder: class x thickness grids, labelled PNGs, "the other digits in this handwriting"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvae.checkpoint import CheckpointError, read_checkpoint
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


LABEL_GREY, TEXT_WHITE = 96, 255


def label_grid(picture: np.ndarray, row_labels, column_labels, gap: int = 2, scale: int = 2) -> np.ndarray:
    """A tiled picture (see tile) with a label left of every row and above every column, so a PNG says which
    digit each row is and which thickness each column.

    Args:
        picture: tile()'s output for len(row_labels) rows and len(column_labels) columns.
        row_labels, column_labels: short texts; gap, scale: as given to tile().
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    sizes = lambda texts: [measure.textbbox((0, 0), str(t), font=font)[2:] for t in texts]  # noqa: E731
    rows, columns = sizes(row_labels), sizes(column_labels)
    left = max(width for width, _ in rows) + 2 * gap + 4
    top = max(height for _, height in columns) + 2 * gap + 4
    canvas = Image.new("L", (picture.shape[1] + left, picture.shape[0] + top), LABEL_GREY)
    canvas.paste(Image.fromarray(picture), (left, top))
    draw, cell = ImageDraw.Draw(canvas), 28 * scale
    for index, (label, (width, height)) in enumerate(zip(row_labels, rows)):
        y = top + gap + index * (cell + gap) + (cell - height) // 2
        draw.text((left - gap - 2 - width, y), str(label), fill=TEXT_WHITE, font=font)
    for index, (label, (width, height)) in enumerate(zip(column_labels, columns)):
        x = left + gap + index * (cell + gap) + (cell - width) // 2
        draw.text((x, gap + 2), str(label), fill=TEXT_WHITE, font=font)
    return np.asarray(canvas)


def add_title(picture: np.ndarray, title: str, gap: int = 2) -> np.ndarray:
    """`picture` with `title` above it, wrapped to the picture's width, so a PNG says what drew it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = max(picture.shape[1] - 2 * gap, 1)
    lines, line = [], ""
    for word in title.split():
        candidate = f"{line} {word}".strip()
        if line and measure.textbbox((0, 0), candidate, font=font)[2] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    height = measure.textbbox((0, 0), "Ag", font=font)[3] + gap
    canvas = Image.new("L", (picture.shape[1], picture.shape[0] + len(lines) * height + 2 * gap), LABEL_GREY)
    draw = ImageDraw.Draw(canvas)
    for index, text in enumerate(lines):
        draw.text((gap, gap + index * height), text, fill=TEXT_WHITE, font=font)
    canvas.paste(Image.fromarray(picture), (0, len(lines) * height + 2 * gap))
    return np.asarray(canvas)


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
