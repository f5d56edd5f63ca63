"""Sampling CLI: grids, handwriting redraw, and its one-line errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from


pytestmark = pytest.mark.slow


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cvae.sample", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_grid_has_a_row_per_digit_and_a_column_per_thickness(tiny_run, tmp_path):
    from cvae.drawing import draw_grid, load_generator

    _, _, checkpoint = tiny_run
    _, decoder, _, _ = load_generator(checkpoint)
    images = draw_grid(decoder, digits=[0, 1, 7], thickness=[-1, 0, 1], seed=3, samples_per_digit=2)
    assert images.shape == (6, 3, 28, 28) and images.min() >= 0 and images.max() <= 1
    again = draw_grid(decoder, digits=[0, 1, 7], thickness=[-1, 0, 1], seed=3, samples_per_digit=2)
    np.testing.assert_allclose(images, again)  # fixed latents, no dropout at inference


def test_cli_writes_grid_png(tiny_run, tmp_path):
    _, _, checkpoint = tiny_run
    out = tmp_path / "grid.png"
    result = run_cli(checkpoint, "--out", out, "--thickness", "0", "0.5", "1", "--scale", "1")
    assert result.returncode == 0, result.stderr
    picture = np.asarray(Image.open(out))
    left, top = picture.shape[1] - (3 * 30 + 2), picture.shape[0] - (10 * 30 + 2)  # the label margins
    assert left > 5 and top > 5
    for row in range(10):  # a label (white text) beside every row, above every column
        band = picture[top + 2 + row * 30: top + 30 + row * 30, :left]
        assert (band > 200).any(), row
    for column in range(3):
        assert (picture[:top, left + 2 + column * 30: left + 30 + column * 30] > 200).any(), column


def test_cli_redraws_a_white_background_photo(tiny_run, tmp_path):
    from cvae.data import load_dataset

    _, _, checkpoint = tiny_run
    digit = load_dataset("mnist-5k").images[2600]  # a real digit, scanned as dark ink on white paper, 3x larger
    photo = Image.fromarray(255 - np.kron(digit, np.ones((3, 3), np.uint8))).convert("RGB")
    photo.save(tmp_path / "mine.jpg")
    out = tmp_path / "style.png"
    result = run_cli(checkpoint, "--style", tmp_path / "mine.jpg", "--out", out, "--scale", "1")
    assert result.returncode == 0, result.stderr
    assert "read as a 5" in result.stdout  # 2600 is a 5 in the sample (500 per class, sorted)
    width, height = Image.open(out).size
    assert width > 11 * 30 + 2 and height > 32  # one row of 11 cells, with labels
    picture = np.asarray(Image.open(out))
    assert (picture[: height - 32, width - 10 * 30:] > 200).any()  # digits named above the columns

    # A run trained on "mnist" where only the embedded sample is found: the fallback is one line of ours, not Python's
    # warning with a source line
    import json
    import os
    import shutil

    copied = shutil.copytree(checkpoint, tmp_path / "mnist_run")
    config = json.loads((copied / "config.json").read_text())
    (copied / "config.json").write_text(json.dumps({**config, "dataset": "mnist"}))
    result = subprocess.run([sys.executable, "-m", "cvae.sample", str(copied), "--style", str(tmp_path / "mine.jpg"),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CVAE_OFFLINE": "1", "KERAS_HOME": str(tmp_path / "keras")})
    assert result.returncode == 0, result.stderr
    assert "note: full MNIST not found" in result.stdout and "Warning" not in result.stdout + result.stderr, result


def test_reading_a_photo_inverts_and_centres():
    from cvae.drawing import read_digit_image

    canvas = np.full((90, 60), 255, np.uint8)
    canvas[10:40, 5:15] = 0  # a dark bar near the corner of white paper
    path = "/tmp/cvae-bar.png"
    Image.fromarray(canvas).save(path)
    image = read_digit_image(path)
    assert image.shape == (28, 28) and image[0, 0] == 0 and image.max() > 0.9
    rows, columns = np.nonzero(image > 0.5)
    assert abs(rows.mean() - 13.5) <= 1.5 and abs(columns.mean() - 13.5) <= 1.5


@pytest.mark.parametrize("args, message", [
    (["--digits", "10"], "digit(s) [10] outside 0-9"),
    (["--thickness", "1.5"], "thickness value(s) [1.5] outside [-1, 1]"),
    (["--style", "README.md"], "is not a readable image"),
])
def test_cli_bad_requests_exit_2_with_one_line(tiny_run, args, message):
    _, _, checkpoint = tiny_run
    result = run_cli(checkpoint, *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_unreadable_checkpoint(tiny_run, tmp_path):
    import shutil

    _, _, checkpoint = tiny_run
    damaged = shutil.copytree(checkpoint, tmp_path / "damaged")
    (damaged / "decoder.keras").write_bytes((damaged / "decoder.keras").read_bytes()[:500])  # cut short
    result = run_cli(damaged)
    assert result.returncode == 2 and "is damaged: decoder.keras is not a .keras (zip) archive" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (damaged / "decoder.keras").write_bytes((checkpoint / "decoder.keras").read_bytes())
    (damaged / "config.json").write_text("{not json")
    result = run_cli(damaged)
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr
    result = run_cli(tmp_path / "nowhere")
    assert result.returncode == 2 and "is not a checkpoint folder" in result.stderr


def test_checkpoint_details_agree_with_the_reported_metrics(tiny_run):
    """The per-class sweep of a checkpoint is the same sweep its epoch's thickness and parity metrics came from."""
    from cvae.diagnostics import GRID_THICKNESS, describe_checkpoint
    from cvae.metrics import SWEEP_THICKNESS

    reports, _, checkpoint = tiny_run
    rows, grid = describe_checkpoint(checkpoint)
    assert len(rows) == 10 * len(SWEEP_THICKNESS)
    assert sorted({row["requested_thickness"] for row in rows}) == pytest.approx(sorted(SWEEP_THICKNESS))
    assert grid.shape == (10, len(GRID_THICKNESS), 28, 28) and grid.dtype == np.uint8
    real = np.array([row["real_relative_width"] for row in rows])
    generated = np.nan_to_num(np.array([row["relative_width"] for row in rows]), nan=0.0)
    present = np.isfinite(real)
    assert np.mean(np.abs(generated - real)[present]) == pytest.approx(reports[-1]["class_parity"], rel=1e-6)
