"""A results folder received from someone else is untrusted input: every damaged or hostile one is refused by the
analysis commands in one line (exit 2), in bounded time and memory, reading and writing nothing outside it."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from
# slow: hundreds of subprocesses (each command's own start-up); under `-n 2 --dist loadgroup` one worker runs
# the whole module, so its module fixtures run once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile_results")]


BASE = REPO / "results" / "reference" / "grey_warmup"  # a real study's tables, details and samples (no checkpoints)
MAX_RSS_MB = 1500  # a command's peak memory on any of these folders
MAX_ADDRESS_SPACE = 6 << 30  # and a hard limit the kernel enforces (TensorFlow's import alone reserves ~2 GB)
HUNG_S = 300  # a command still running after this long (not on CPU: it waits on something) is killed
SENTINEL = "a file outside the results folder that no command may read or change\n"


def _edit_csv(name, change):
    def mutate(folder, outside):
        table = pd.read_csv(folder / name, dtype={"trial_id": str})
        change(table)
        table.to_csv(folder / name, index=False)
    return mutate


def _write(name, content):
    def mutate(folder, outside):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return mutate


def _spec(change):
    def mutate(folder, outside):
        spec = json.loads((folder / "study.json").read_text())
        change(spec)
        (folder / "study.json").write_text(json.dumps(spec))
    return mutate


def _replaced(name, make):
    """`name` (a file or a folder) replaced by what `make(path, outside)` puts there."""
    def mutate(folder, outside):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        make(path, outside)
    return mutate


def _link(name, target_name="sentinel.txt"):
    return _replaced(name, lambda path, outside: path.symlink_to(outside / target_name))


def _npz(**arrays):
    def mutate(folder, outside):
        np.savez(folder / "samples.npz", **arrays)
    return mutate


def _checkpoint(value):
    return _edit_csv("trials.csv", lambda t: t.__setitem__("checkpoint", value))


def _checkpoint_link(folder, outside):
    (folder / "tune").mkdir()
    (folder / "tune" / "escape").symlink_to(outside)
    _checkpoint("tune/escape")(folder, outside)


def _sparse(name, size):
    def mutate(folder, outside):
        with open(folder / name, "r+b") as handle:
            handle.truncate(size)  # no disk used: only its size is read before it is refused
    return mutate


def _not_plain(name, make):
    """`name` replaced by another kind of file: a named pipe (a read that never ends), a folder, a plain file."""
    return _replaced(name, lambda path, outside: make(path))


def _deep_json(folder, outside):
    (folder / "study.json").write_text("[" * 100_000 + "]" * 100_000)


REPORT, BEST, SAMPLE = ["study/report.py"], ["study/best.py"], ["study/sample.py"]
# name -> (how the folder is damaged, the command that reads it, a word the one-line refusal must contain)
CASES = {
    "study.json not json": (_write("study.json", "{"), REPORT, "study.json is damaged"),
    "study.json a list": (_write("study.json", "[1, 2]"), BEST, "study.json is damaged"),
    "study.json binary": (_write("study.json", bytes(range(256))), REPORT, "study.json is damaged"),
    "study.json deeply nested": (_deep_json, BEST, "study.json is damaged"),
    "study.json huge": (_sparse("study.json", 5 << 20), REPORT, "larger than"),
    "unknown metric": (_spec(lambda s: s.update(metrics=["nope"])), REPORT, "metrics"),
    "modes of another length": (_spec(lambda s: s.update(modes=["min", "max"])), BEST, "metrics"),
    "unknown algorithm": (_spec(lambda s: s.update(algorithm="evil")), REPORT, "algorithm"),
    "parameters not a list": (_spec(lambda s: s.update(parameters="all")), REPORT, "parameters"),
    "name a number": (_spec(lambda s: s.update(name=123)), BEST, "name"),
    "repeats text": (_spec(lambda s: s.update(repeats="many")), REPORT, "repeats"),
    "trials empty file": (_write("trials.csv", ""), REPORT, "holds no trials"),
    "trials header only": (_write("trials.csv", "trial_id,status,epochs_run,checkpoint\n"), BEST, "holds no trials"),
    "trials binary": (_write("trials.csv", bytes(range(256)) * 8), REPORT, "trials.csv"),
    "trials latin-1": (_write("trials.csv", "trial_id,status,epochs_run,checkpoint\n\xe9t\xe9,completed,1,x\n".encode(
        "latin-1")), REPORT, "malformed"),
    "trials without checkpoint column": (_edit_csv("trials.csv", lambda t: t.drop(columns="checkpoint", inplace=True)),
                                         REPORT, "lacks column"),
    "unknown status": (_edit_csv("trials.csv", lambda t: t.__setitem__("status", "hacked")), BEST, "unknown status"),
    "repeated trial ids": (_edit_csv("trials.csv", lambda t: t.__setitem__("trial_id", "same")), REPORT, "repeated"),
    "missing trial id": (_edit_csv("trials.csv", lambda t: t.loc.__setitem__((0, "trial_id"), None)), BEST,
                         "missing"),
    "fid as text": (_edit_csv("trials.csv", lambda t: t.__setitem__("fid", "abc")), REPORT, "fid"),
    "infinite metric": (_edit_csv("trials.csv", lambda t: t.loc.__setitem__((1, "test_fid"), np.inf)), REPORT,
                        "infinite"),
    "negative epochs": (_edit_csv("trials.csv", lambda t: t.__setitem__("epochs_run", -4)), REPORT, "epochs_run"),
    "astronomic epochs": (_edit_csv("trials.csv", lambda t: t.__setitem__("epochs_run", 10**12)), BEST, "epochs_run"),
    "huge cell": (_edit_csv("trials.csv", lambda t: t.__setitem__("error", "x" * 5_000_000)), REPORT,
                  "longer than"),
    "trials over a gigabyte": (_sparse("trials.csv", (1 << 30) + 1), REPORT, "larger than"),
    "epochs over a gigabyte": (_sparse("epochs.csv", 3 << 30), BEST, "larger than"),
    "epoch as text": (_edit_csv("epochs.csv", lambda t: t.__setitem__("epoch", "first")), REPORT, "epoch"),
    "epochs of strangers": (_edit_csv("epochs.csv", lambda t: t.__setitem__("trial_id", "stranger")), REPORT,
                            "lacks"),
    "epochs cut short": (_edit_csv("epochs.csv", lambda t: t.drop(index=t.index[-1], inplace=True)), BEST,
                         "disagree"),
    "epochs without epoch column": (_edit_csv("epochs.csv", lambda t: t.drop(columns="epoch", inplace=True)), REPORT,
                                    "lacks"),
    "trials.csv a link outside": (_link("trials.csv"), BEST, "symbolic link"),
    "epochs.csv a link outside": (_link("epochs.csv"), REPORT, "symbolic link"),
    "study.json a link outside": (_link("study.json"), REPORT, "symbolic link"),
    "details.csv a link outside": (_link("details.csv"), REPORT, "symbolic link"),
    "samples.npz a link outside": (_link("samples.npz"), REPORT, "symbolic link"),
    "summary.md a link outside": (_link("summary.md"), REPORT, "symbolic link"),
    "figures a link outside": (_link("figures", "figures"), REPORT, "symbolic link"),
    "a figure a link outside": (lambda f, o: (f / "figures" / "model_metrics.png").unlink() or
                                (f / "figures" / "model_metrics.png").symlink_to(o / "sentinel.txt"), REPORT,
                                "symbolic links"),
    "details without columns": (_edit_csv("details.csv", lambda t: t.drop(columns="relative_width", inplace=True)),
                                REPORT, "not a details table"),
    "details with text": (_edit_csv("details.csv", lambda t: t.__setitem__("measured_thickness", "thick")), REPORT,
                          "not a details table"),
    "details binary": (_write("details.csv", bytes(range(256)) * 4), REPORT, "details.csv"),
    "samples not a zip": (_write("samples.npz", "not an archive"), REPORT, "samples.npz"),
    "samples with a pickle": (_npz(final__x=np.array([{"a": 1}], dtype=object)), REPORT, "samples.npz"),
    "samples of the wrong shape": (_npz(final__x=np.zeros((10, 5, 27, 28), np.uint8)), REPORT, "not a sample grid"),
    "samples as floats": (_npz(final__x=np.zeros((10, 5, 28, 28))), REPORT, "not a sample grid"),
    "samples without a kind": (_npz(plain=np.zeros((10, 5, 28, 28), np.uint8)), REPORT, "not a sample grid"),
    "epochs.csv a named pipe": (_not_plain("epochs.csv", os.mkfifo), BEST, "named pipe"),
    "details.csv a named pipe": (_not_plain("details.csv", os.mkfifo), REPORT, "named pipe"),
    "study.json a named pipe": (_not_plain("study.json", os.mkfifo), REPORT, "named pipe"),
    "samples.npz a named pipe": (_not_plain("samples.npz", os.mkfifo), REPORT, "named pipe"),
    "a figure a named pipe": (_not_plain("figures/model_metrics.png", os.mkfifo), REPORT, "named pipe"),
    "trials.csv a folder": (_not_plain("trials.csv", Path.mkdir), BEST, "a folder"),
    "summary.md a folder": (_not_plain("summary.md", Path.mkdir), REPORT, "a folder"),
    "figures a file": (_not_plain("figures", Path.touch), REPORT, "not a folder"),
    "checkpoint up and out": (_checkpoint("../../outside"), SAMPLE, "outside the results folder"),
    "checkpoint absolute": (_checkpoint("/etc"), SAMPLE, "outside the results folder"),
    "checkpoint through a link": (_checkpoint_link, SAMPLE, "outside the results folder"),
}


def run_case(name, root):
    """Build the case's folder beside an `outside` folder, run its command; (result, seconds, peak MB, changed)."""
    mutate, command, _ = CASES[name]
    case = root / name.replace(" ", "_").replace(".", "_")
    outside = case / "outside"
    (outside / "figures").mkdir(parents=True)
    (outside / "sentinel.txt").write_text(SENTINEL)
    folder = shutil.copytree(BASE, case / "study", ignore=shutil.ignore_patterns(".driver.lock"))
    mutate(folder, outside)
    before = {path: path.stat().st_mtime_ns for path in outside.rglob("*")}
    started = time.monotonic()
    with open(case / "stdout", "w+") as stdout, open(case / "stderr", "w+") as stderr:
        process = subprocess.Popen([sys.executable, *command, str(folder)], cwd=REPO, stdout=stdout, stderr=stderr,
                                   text=True, stdin=subprocess.DEVNULL, preexec_fn=_bounded)
        stuck = threading.Timer(HUNG_S, process.kill)  # a read that never ends (a pipe) fails the case, not the run
        stuck.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory, not the largest child's so far
        stuck.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        stdout.seek(0), stderr.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, stdout.read(), stderr.read())
    after = {path: path.stat().st_mtime_ns for path in outside.rglob("*")}
    changed = before != after or (outside / "sentinel.txt").read_text() != SENTINEL
    return result, seconds, usage.ru_maxrss / 1024, changed


def _bounded():
    """The child may never take more than MAX_ADDRESS_SPACE, whatever the folder holds."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MAX_ADDRESS_SPACE, MAX_ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-results")
    with ThreadPoolExecutor(max_workers=3) as pool:  # subprocesses: mostly waiting on imports
        return dict(zip(CASES, pool.map(lambda name: run_case(name, root), CASES)))


def test_the_corpus_covers_at_least_48_damaged_or_hostile_folders():
    assert len(CASES) >= 48
    assert BASE.is_dir() and not (BASE / "tune").exists()


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_or_hostile_results_folder_is_refused_in_one_line(results, name):
    result, seconds, peak, changed = results[name]
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-2000:]
    assert "Traceback" not in output and len(result.stderr.strip().splitlines()) == 1, output[-2000:]
    assert CASES[name][2].lower() in result.stderr.lower(), result.stderr
    assert seconds < 30 and peak < MAX_RSS_MB, (seconds, peak)
    assert not changed  # nothing outside the folder was written (and the sentinel is whole)


def test_the_untouched_copy_is_accepted(tmp_path):
    folder = shutil.copytree(BASE, tmp_path / "study", ignore=shutil.ignore_patterns(".driver.lock"))
    for command in (BEST, [*REPORT, "--no-details"]):
        result = subprocess.run([sys.executable, *command, str(folder)], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.getsize(folder / "summary.md") > 0
