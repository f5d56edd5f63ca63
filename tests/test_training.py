"""One tiny training without Ray; checkpoints, resume, divergence."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvae.metrics import CAS, METRICS, TEST_METRICS, TEST_PREFIX

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from

pytestmark = pytest.mark.slow


def test_every_epoch_reports_every_metric(tiny_run, tiny_config):
    reports, result, _ = tiny_run
    assert [r["epoch"] for r in reports] == [1, 2]
    for report in reports:
        missing = set(METRICS) - set(report)
        assert not missing, missing
        measured = [name for name in METRICS if not name.startswith(TEST_PREFIX) or report is reports[-1]]
        assert all(math.isfinite(report[name]) for name in measured), report
        assert report["val_elbo"] == pytest.approx(report["val_reconstruction"] + report["val_kl"])
        assert report["classifier_accuracy"] >= 0.97
        assert 0.3 < report["real_grey_fraction"] < 0.7 and report["real_collapse_rate"] == 0  # real digits
    # the test split is measured once, after the last epoch
    assert all(math.isnan(reports[0][name]) for name in TEST_METRICS)
    assert reports[-1]["test_fid"] > 0 and 0 <= reports[-1]["test_class_accuracy"] <= 1
    assert reports[-1]["fid_samples"] == reports[-1]["test_fid_samples"] == 256  # the N fid compared, recorded
    assert 0 <= reports[-1][CAS] <= 1 and reports[-1]["cas_seconds"] > 0  # a classifier trained on its samples
    assert result["status"] == "completed" and result["epochs_run"] == 2
    assert reports[-1]["status"] == "completed" and reports[0]["status"] == "running"
    assert 0 <= reports[-1]["class_accuracy"] <= 1 and reports[-1]["fid"] > 0


def test_the_speed_work_kept_the_training(tiny_run):
    # Per-epoch train loss of this tiny config as the code gave it before the whole-epoch compiled loop
    # (one dispatch per step, recorded 2026-11-25); the same training must stay within 2 %.
    reports, _, _ = tiny_run
    assert [report["loss"] for report in reports] == pytest.approx([74.475, 82.470], rel=0.02)


def test_the_input_pipelines_run_without_the_autotuner_and_keep_the_epoch_order(tiny_config):
    # tf.data's autotuner thread held up the end of fit() by up to 31 s on busy cores (its iterator's destructor
    # waits for it); the pipelines slice in-memory tensors, so they run with it off and the same batches.
    from cvae.data import evaluation_batches, prepare_data_for
    from cvae.train import epoch_order, steps_per_epoch, training_batches

    data = prepare_data_for(tiny_config)
    batches, steps = training_batches(data, tiny_config, start_epoch=1)
    validation = evaluation_batches(data.validation)
    assert batches.options().autotune.enabled is False and validation.options().autotune.enabled is False
    received = [images.numpy() for images, _ in batches]
    assert steps == steps_per_epoch(data, tiny_config) and len(received) == steps  # epoch 2 only: it resumes at 1
    order = epoch_order(tiny_config.seed, 2, len(data.train)).numpy()
    np.testing.assert_array_equal(np.concatenate(received), data.train.images[order])
    assert sum(len(images) for images, _ in validation) == len(data.validation)


def test_grey_weight_is_zero_in_warmup_and_on_after(tiny_run, tiny_config):
    reports, _, _ = tiny_run
    assert reports[0]["grey_weight"] == 0.0
    assert reports[1]["grey_weight"] == pytest.approx(tiny_config.grey_weight)
    # the grey term is measured in both epochs, but only counts in the loss after the warm-up
    assert reports[0]["grey"] > 0 and reports[1]["grey"] > 0


def test_checkpoint_holds_everything_needed(tiny_run, tiny_config):
    _, result, checkpoint = tiny_run
    assert checkpoint.name == "epoch_0002"
    assert {p.name for p in checkpoint.iterdir()} >= {"encoder.keras", "decoder.keras", "training_state.npz",
                                                       "config.json", "state.json", "thickness_stats.json"}
    assert json.loads((checkpoint / "config.json").read_text()) == tiny_config.to_dict()
    assert not (checkpoint.parent / "epoch_0001").exists()  # only the newest is kept


def test_resume_continues_at_the_right_epoch(tiny_run, tiny_config, tmp_path):
    from cvae.checkpoint import restore_checkpoint
    from cvae.model import build_cvae
    from cvae.train import train

    reports, _, checkpoint = tiny_run
    # other settings must match the checkpoint; only the number of epochs may grow
    with pytest.raises(ValueError, match="different settings: latent_dim"):
        train(tiny_config.replace(latent_dim=9, epochs=3), checkpoint=checkpoint)
    longer = tiny_config.replace(epochs=3)
    model = build_cvae(longer)
    epoch, history = restore_checkpoint(model, checkpoint)
    assert epoch == 2 and len(history) == 2
    assert int(np.asarray(model.optimizer.iterations)) > 0  # optimizer state came back
    resumed = []
    result = train(longer, report=resumed.append, checkpoint=checkpoint, checkpoint_dir=tmp_path / "more")
    assert [r["epoch"] for r in resumed] == [3]
    assert result["epochs_run"] == 3 and result["history"][:2] == history
    assert resumed[0]["grey_weight"] == pytest.approx(longer.grey_weight)
    assert (tmp_path / "more" / "epoch_0003").is_dir()


def test_train_cli_writes_run_folder_and_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cvae.train", "--preset", "model_4", "--dataset", "mnist-5k",
               "--max-train-samples", "200", "--set", "eval_samples=256", "--set", "cas_samples=200",
               "--set", "cas_epochs=1", "--set", "sweep_latents=1", "--set", "width=0.25", "--set", "latent_dim=4",
               "--out", str(out)]
    first = subprocess.run(command + ["--epochs", "1", "--quiet"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["latent_dim"] == 4
    assert (out / "checkpoints" / "epoch_0001" / "decoder.keras").is_file()
    again = subprocess.run(command + ["--epochs", "1", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds a run; pass --resume" in again.stderr
    resumed = subprocess.run(command + ["--epochs", "2", "--resume"], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # with the progress bar on, the epoch line is a line of its own, not glued to the bar's end
    assert re.search(r"^epoch 2/2: loss=", resumed.stdout, re.M), resumed.stdout[-2000:]
    import pandas as pd

    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0002"]
    mismatch = subprocess.run(command + ["--epochs", "3", "--quiet", "--resume", "--set", "latent_dim=5"], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert mismatch.returncode == 2 and "different settings: latent_dim" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr


def test_nan_loss_ends_as_diverged(tiny_config):
    from cvae.train import train

    reports = []
    result = train(tiny_config.replace(learning_rate=1e4, epochs=2, l2=0.0), report=reports.append)
    assert result["status"] == "diverged"
    assert reports[-1]["status"] == "diverged" and not math.isfinite(reports[-1]["loss"])


DETERMINISM = """
import json, os, sys
import numpy as np
from cvae.config import TrialConfig
from cvae.data import read_embedded
from cvae.train import train

images, labels = read_embedded()
# a small user dataset: its classifier trains in seconds, in this process, when the cache is cold
images, labels = images[::3], labels[::3]  # 1,667 digits, every class: splits of 333, enough for fid's 256
np.savez(sys.argv[1], x_train=images[:1500], y_train=labels[:1500], x_test=images[1500:], y_test=labels[1500:])
config = TrialConfig(dataset="mnist", data_path=sys.argv[1], max_train_samples=300, epochs=2, warmup_epochs=1,
                     validation_fraction=0.2, test_fraction=0.2, eval_samples=256, cas_samples=200, cas_epochs=1,
                     sweep_latents=1, latent_dim=8, width=0.5, seed=3)
keys = ("loss", "reconstruction", "val_elbo", "fid", "kid", "class_accuracy", "thickness_mae", "grey_fraction")

def run(cfg, **kwargs):
    reports = []
    train(cfg, report=reports.append, **kwargs)
    return [[report[key] for key in keys] for report in reports]

out = {"first": run(config)}
if sys.argv[2] == "cold":
    run(config.replace(latent_dim=4, seed=9))  # another trial in the same (reused) worker
    out["after_another"] = run(config)
else:
    out["one_epoch"] = run(config.replace(epochs=1), checkpoint_dir=sys.argv[3])
    out["resumed"] = run(config, checkpoint=sys.argv[3] + "/epoch_0001")
print("RESULT " + json.dumps(out))
"""


def test_one_seed_fixes_everything(tmp_path):
    """Cold classifier cache (trained in-process), warm cache (loaded from disk), a reused worker after another
    trial, and 1 epoch + resume + 1 epoch: the same config gives bitwise the same metrics in epochs 1-2."""
    import os

    environment = {**os.environ, "CVAE_CACHE_DIR": str(tmp_path / "cache")}
    outputs = {}
    for phase in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-c", DETERMINISM, str(tmp_path / "digits.npz"), phase,
                               str(tmp_path / "checkpoints")], cwd=REPO, env=environment, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[phase] = json.loads(done.stdout.split("RESULT ", 1)[1])
    cold, warm = outputs["cold"], outputs["warm"]
    assert len(cold["first"]) == 2
    assert cold["first"] == cold["after_another"] == warm["first"]
    assert warm["one_epoch"] + warm["resumed"] == cold["first"]


FASHION_FILES = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (.ci/run installs it)


@pytest.mark.skipif(not (FASHION_FILES / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_path_on_a_few_hundred_real_images(tmp_path):
    from cvae.config import FASHION_MNIST, TrialConfig
    from cvae.data import load_dataset
    from cvae.train import train

    fashion = load_dataset(FASHION_MNIST)  # the real 70,000 IDX images, found where Debian puts them
    assert fashion.images.shape == (70000, 28, 28) and fashion.source == "system:fashion-mnist"
    chosen = np.concatenate([np.flatnonzero(fashion.labels == label)[:160] for label in range(10)])
    np.savez(tmp_path / "garments.npz", x_train=fashion.images[chosen[::2]], y_train=fashion.labels[chosen[::2]],
             x_test=fashion.images[chosen[1::2]], y_test=fashion.labels[chosen[1::2]])
    config = TrialConfig(dataset=FASHION_MNIST, data_path=str(tmp_path / "garments.npz"), epochs=1, eval_samples=256,
                         validation_fraction=0.2, test_fraction=0.2, cas_samples=200, cas_epochs=1, sweep_latents=1, latent_dim=8, width=0.5)
    reports = []
    with pytest.warns(UserWarning, match="below the 90%"):  # 960 garments cannot train a classifier worth the bar
        result = train(config, report=reports.append)
    assert result["status"] == "completed" and reports[0]["dataset_source"] == "user:garments.npz"
    assert all(math.isfinite(reports[0][name]) for name in ("fid", "ink_w1", "grey_fraction", "test_fid"))
