"""The Ray wrapper's worker-side settings, in a plain process (no Ray cluster needed for what they change)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvae.environment import VERBOSE_ENV

REPO = Path(__file__).resolve().parents[1]

# What a trial worker sees when Ray ends it inside a weakref callback (its SystemExit cannot be raised there), beside
# a real error in another callback.
SCRIPT = """
import weakref
import study.driver.trainable

class Thing:
    pass

def exit_now(_):
    raise SystemExit(1)

def fail_now(_):
    raise ValueError("a real error")

first, second = Thing(), Thing()
refs = weakref.ref(first, exit_now), weakref.ref(second, fail_now)
del first, second
print("still running")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_worker_ended_by_ray_leaves_no_traceback_unless_verbose(verbose):
    environment = {key: value for key, value in os.environ.items() if key != VERBOSE_ENV}
    if verbose:
        environment[VERBOSE_ENV] = "1"
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "still running\n", result.stderr[-2000:]
    assert "ValueError: a real error" in result.stderr  # other unraisable errors are still shown
    assert ("SystemExit" in result.stderr) == verbose, result.stderr[-2000:]


def _checkpoint_folder(folder: Path, *, whole: bool) -> Path:
    from cvae.checkpoint import ARRAYS_FILE, RESUME_FILES

    folder.mkdir(parents=True)
    for name in RESUME_FILES:
        if whole or name != ARRAYS_FILE:
            (folder / name).write_text(name)
    return folder


@pytest.mark.parametrize("damage", ["half deleted", "gone"])
def test_a_resume_pointing_at_a_checkpoint_tune_was_deleting_continues_from_the_newer_whole_one(tmp_path, damage):
    """A driver killed after Tune deleted a trial's old checkpoint but before it saved the state naming the new one
    (CI: FileNotFoundError for training_state.npz in the restored copy)."""
    import pyarrow.fs
    from ray import tune

    from study.driver.trainable import download_whole_checkpoint
    from study.store.storage import tune_storage

    trial = tmp_path / "tune" / "trial"
    old = trial / "checkpoint_000002"
    if damage == "half deleted":
        _checkpoint_folder(old, whole=False)
    _checkpoint_folder(trial / "checkpoint_000001", whole=False)
    newer = _checkpoint_folder(trial / "checkpoint_000003", whole=True)
    (newer / "training_state.npz").write_text("the newer one")
    filesystem = tune_storage(str(tmp_path / "tune"))[1]  # what Tune reads a local study's storage through
    folder = download_whole_checkpoint(tune.Checkpoint(str(old), filesystem), str(tmp_path / "scratch" / "restored"))
    assert (Path(folder) / "training_state.npz").read_text() == "the newer one"
    assert tmp_path / "scratch" in Path(folder).parents  # a private copy, not Tune's shared temporary folder

    whole = download_whole_checkpoint(tune.Checkpoint(str(newer), pyarrow.fs.LocalFileSystem()),
                                      str(tmp_path / "again" / "restored"))
    assert whole == str(tmp_path / "again" / "restored") and Path(whole, "training_state.npz").is_file()
