"""CLI: python -m cvae.sample CHECKPOINT — draw digits from a checkpoint (grids, or digits in your handwriting)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cvae.command_line import ArgumentParser, add_verbose_flag, exit_with, fail
from cvae.data import NUM_CLASSES
from cvae.runtime import import_tensorflow_quietly, warnings_as_notes
from cvae.drawing import (SampleError, add_title, check_request, draw_grid, label_grid, load_generator,
                          read_digit_image, redraw_in_style, save_png, tile)

MAX_SAMPLES, MAX_SCALE, MAX_THICKNESS_VALUES = 100, 16, 41  # a grid of at most 1,000 rows x 41 columns of 28 px x 16
MAX_TITLE = 300


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
    parser.add_argument("--title", help="text above the picture (default: the checkpoint's folder and epoch)")
    add_verbose_flag(parser)
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
        if args.title is not None and len(args.title) > MAX_TITLE:
            raise SampleError(f"--title must be at most {MAX_TITLE} characters, got {len(args.title)}")
        if Path(args.out).suffix.lower() != ".png":
            raise SampleError(f"--out {args.out!r} must name a .png file")
        if Path(args.out).is_dir():
            raise SampleError(f"--out {args.out!r} is a folder; name a .png file")
        check_request(args.digits, args.thickness)
    except SampleError as error:
        fail(str(error))
    return args


def title_for(args: argparse.Namespace) -> str:
    """--title, or which checkpoint drew the picture (its folder's last two parts: trial and epoch)."""
    if args.title:
        return args.title
    parts = Path(args.checkpoint).resolve().parts
    return "from " + "/".join(parts[-2:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        style = read_digit_image(args.style) if args.style else None
        import_tensorflow_quietly(args.verbose)
        encoder, decoder, config, stats = load_generator(args.checkpoint)
        if style is None:
            images = draw_grid(decoder, args.digits, args.thickness, args.seed, args.samples)
            rows = [str(d) if args.samples == 1 else f"{d}.{i + 1}" for d in args.digits for i in range(args.samples)]
            columns = [f"t={t:g}" for t in args.thickness]
            picture = label_grid(tile(images, scale=args.scale), rows, columns, scale=args.scale)
            path = save_png(add_title(picture, title_for(args)), args.out)
            print(f"wrote {path}: {images.shape[0]} rows (digits {args.digits}) x thickness {args.thickness}")
        else:
            from cvae.classifier import classifier_for

            with warnings_as_notes():  # e.g. the data's fallback: one line of ours
                classifier = classifier_for(config)
            _, predicted = classifier.predict(style[None])
            digit = int(predicted[0])
            redrawn = redraw_in_style(encoder, decoder, stats, style, digit)
            row = np.concatenate([style[None], redrawn])[None]
            columns = ["yours", *map(str, range(NUM_CLASSES))]
            picture = label_grid(tile(row, scale=args.scale), [f"as {digit}"], columns, scale=args.scale)
            path = save_png(add_title(picture, title_for(args)), args.out)
            print(f"wrote {path}: your image (read as a {digit}) then digits 0-9 in its style")
    except SampleError as error:
        fail(str(error))
    except OSError as error:  # e.g. --out in a folder that cannot be written
        fail(f"cannot write {args.out}: {error.strerror or error}")
    return 0


if __name__ == "__main__":
    exit_with(main)
