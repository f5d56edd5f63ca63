"""Fused trials (cvae/fused.py): members of one shape trained as one JAX program, each still its own run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout the subprocess runs from

# Runs under KERAS_BACKEND=jax (this test process runs tensorflow): four members through a program of three slots —
# one stopped by its scheduler after epoch 1, one diverging, one refilling a freed slot — then two of them alone.
FUSED = """
import json, sys
from dataclasses import replace
from cvae.config import TrialConfig
from cvae.fused import Member, StopMember, train_fused

base = TrialConfig(**json.loads(sys.argv[1]))
checkpoints = sys.argv[2]
configs = {"kept": base, "stopped": replace(base, seed=1, grey_weight=1.0, learning_rate=2e-3),
           "diverging": replace(base, seed=2, learning_rate=1e4),
           "refill": replace(base, seed=3, condition_mode="global", grey_threshold=0.1, warmup_epochs=0)}
reports = {name: [] for name in configs}

def member(name):
    def report(row):
        reports[name].append(row)
        if name == "stopped":
            raise StopMember
    return Member(configs[name], report, checkpoint_dir=f"{checkpoints}/{name}")

queue = [member("refill")]
ended = train_fused([member(name) for name in ("kept", "stopped", "diverging")], slots=3,
                    refill=lambda: queue.pop() if queue else None)
alone = {name: train_fused([Member(configs[name])])[0].outcome["history"] for name in ("kept", "refill")}
# "kept" stopped after epoch 1 (a killed study), then resumed from its checkpoint in a program beside another member
train_fused([Member(replace(base, epochs=1), checkpoint_dir=f"{checkpoints}/half")])
resumed = train_fused([Member(configs["refill"]), Member(base, checkpoint=f"{checkpoints}/half/epoch_0001")])
alone["resumed"] = next(m for m in resumed if m.config is base).outcome["history"]
numbers = lambda rows: [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in rows]
print("RESULT " + json.dumps({
    "ended": [[next(n for n, c in configs.items() if c is m.config), m.outcome["status"], m.outcome["epochs_run"],
               m.stopped, bool(m.outcome["checkpoint"])] for m in ended],
    "reports": {name: numbers(rows) for name, rows in reports.items()},
    "alone": {name: numbers(rows) for name, rows in alone.items()}}))
"""


def relative_gap(fused: float, alone: float) -> float:
    return abs(fused - alone) / max(abs(alone), 1e-6)


@pytest.mark.slow
def test_members_train_as_one_program_and_each_is_its_own_run(tiny_config, tmp_path):
    from cvae.classifier import classifier_for

    classifier_for(tiny_config)  # the session's classifier, trained here by tensorflow if no test did it yet
    base = {**tiny_config.to_dict(), "max_train_samples": 256, "width": 0.25, "l2": 0.0, "cas_samples": 0}
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", FUSED, json.dumps(base), str(tmp_path / "checkpoints")], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])

    # Who ended how: the diverging and the stopped member after epoch 1, their freed slot refilled.
    ended = {name: (status, epochs, stopped, checkpointed) for name, status, epochs, stopped, checkpointed in
             result["ended"]}
    assert ended["diverging"][:3] == ("diverged", 1, False)
    assert ended["stopped"][1:3] == (1, True) and len(result["reports"]["stopped"]) == 1
    assert ended["kept"] == ("completed", 2, False, True) and ended["refill"] == ("completed", 2, False, True)
    assert not math.isfinite(result["reports"]["diverging"][-1]["loss"])
    assert sorted(path.name for path in (tmp_path / "checkpoints" / "refill").iterdir()) == ["epoch_0002"]

    # A member's every epoch equals the same configuration trained alone (a program of one slot), to float32
    # reassociation: a vmapped kernel sums in another order than a single model's.
    gaps = []
    for name in ("kept", "refill"):
        fused, alone = result["reports"][name], result["alone"][name]
        assert len(fused) == len(alone) == 2
        for fused_row, alone_row in zip(fused, alone):
            for metric in ("loss", "grey", "val_loss", "val_reconstruction", "val_kl", "fid", "class_accuracy"):
                gaps.append(relative_gap(fused_row[metric], alone_row[metric]))
    assert max(gaps) < 1e-4, max(gaps)
    # A member resumed from its epoch-1 checkpoint (weights, optimizer and RNG state) into another program goes on
    # as if it had not stopped.
    resumed = result["alone"]["resumed"]
    assert [row["epoch"] for row in resumed] == [1, 2]
    for metric in ("loss", "val_loss", "fid", "test_fid"):
        assert relative_gap(resumed[1][metric], result["reports"]["kept"][1][metric]) < 1e-4, metric
    assert result["reports"]["kept"][-1]["test_fid"] == pytest.approx(result["alone"]["kept"][-1]["test_fid"],
                                                                     rel=1e-4)
    # ...and members are not copies of one another: each trained its own configuration.
    assert result["reports"]["kept"][0]["loss"] != result["reports"]["refill"][0]["loss"]


def test_member_batches_depend_on_seed_and_epoch_only():
    from cvae.fused import member_batches

    first = member_batches(seed=3, epoch=1, count=100, batch_size=32)
    assert first.shape == (3, 32) and len(set(first.ravel())) == 96  # the ragged tail of 4 left out, no repeats
    assert np.array_equal(first, member_batches(3, 1, 100, 32))
    assert not np.array_equal(first, member_batches(3, 2, 100, 32))
    assert not np.array_equal(first, member_batches(4, 1, 100, 32))


def test_only_configurations_of_one_shape_fuse(tiny_config):
    from cvae.fused import check_fusable, shape_key

    check_fusable([tiny_config, tiny_config.replace(seed=5, learning_rate=3e-3, grey_weight=1.0,
                                                    condition_mode="global")])
    with pytest.raises(ValueError, match="differ in latent_dim, batch_size"):
        check_fusable([tiny_config, tiny_config.replace(latent_dim=4, batch_size=64, seed=2)])
    assert shape_key(tiny_config) == shape_key(tiny_config.replace(seed=9))


def test_fused_training_refuses_another_backend(tiny_config):
    from cvae.fused import Member, train_fused

    with pytest.raises(ValueError, match="need KERAS_BACKEND=jax .* runs tensorflow"):
        train_fused([Member(tiny_config)])


@pytest.mark.slow
def test_fused_command_trains_each_seed_into_its_own_run_folder(tiny_config, tmp_path):
    from cvae.classifier import classifier_for

    classifier_for(tiny_config)  # the session's classifier (mnist-5k), trained by tensorflow if no test did it yet
    out = tmp_path / "fused"
    command = [sys.executable, "-m", "cvae.fused", "--dataset", "mnist-5k", "--max-train-samples", "128", "--epochs",
               "1", "--seeds", "3,5", "--set", "width=0.25", "--set", "latent_dim=4", "--set", "cas_samples=0",
               "--set", "eval_samples=256", "--set", "sweep_latents=1", "--out", str(out)]
    environment = {name: value for name, value in os.environ.items() if name not in ("KERAS_BACKEND",
                                                                                    "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert lines[0] == "training model_4 on mnist-5k at seeds 3,5 as one program"
    assert all(line.startswith("seed ") for line in lines[1:]) and len(lines) == 5, lines  # the project's lines only
    for seed in (3, 5):
        folder = out / f"seed_{seed}"
        assert json.loads((folder / "config.json").read_text())["seed"] == seed
        assert (folder / "metrics.csv").read_text().count("\n") == 2  # header and epoch 1
        assert sorted(path.name for path in (folder / "checkpoints").iterdir()) == ["epoch_0001"]

    again = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already hold a run" in again.stderr
    other = subprocess.run(command[:3] + ["--out", str(tmp_path / "other")], cwd=REPO, capture_output=True, text=True,
                           env={**environment, "KERAS_BACKEND": "tensorflow"}, timeout=120)
    assert other.returncode == 2 and other.stderr == \
        "error: fused training runs on KERAS_BACKEND=jax, not tensorflow: unset it\n"
