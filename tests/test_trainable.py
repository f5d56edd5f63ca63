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
