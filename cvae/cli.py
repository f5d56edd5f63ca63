"""Shared command-line behaviour: a bad flag is one line on stderr and exit code 2, never a usage dump."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys

EXIT_BAD_INPUT = 2  # argparse's own code for a usage error; every CLI uses it for every refused input

# The one mapping from command-line flags to TrialConfig fields: field -> (type, help). `--data-path` sets
# data_path, and so on; cvae.train applies them to its preset, study/run.py to the study's `fixed:`.
CONFIG_FLAGS = {
    "dataset": (str, "mnist (full MNIST; the embedded 5k sample when offline), mnist-5k or fashion-mnist"),
    "data_path": (str, "a folder of MNIST IDX files (.gz or not) or a keras mnist.npz, relative to where you run"),
    "max_train_samples": (int, "train on a stratified subset of this many images (0 = all)"),
    "epochs": (int, "epochs to train"),
    "seed": (int, "seed of weights, dropout, noise and shuffling"),
}
DATA_FLAGS = ("dataset", "data_path", "max_train_samples")  # the ones a study's command line may set


def add_config_flags(parser: argparse.ArgumentParser, names) -> None:
    """--flag-name for each TrialConfig field in `names` (see CONFIG_FLAGS); unset flags stay None."""
    from cvae.config import DATASETS

    for name in names:
        kind, help_text = CONFIG_FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=help_text,
                            choices=DATASETS if name == "dataset" else None)


def config_overrides(args: argparse.Namespace, names) -> dict:
    """The TrialConfig fields among `names` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (the problem and where to read what is allowed)."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\w*(: .*)?$")
MAX_CAUSE = 300  # characters of a cause kept in a table cell or a one-line message


def error_cause(text: str, default: str) -> str:
    """The line of a traceback or log that names the cause (`ValueError: ...`, the last such line), without
    colour codes; else the text's last line; else `default`."""
    lines = [line.strip() for line in ANSI_CODES.sub("", text or "").splitlines() if line.strip()]
    causes = [line for line in lines if EXCEPTION_LINE.match(line)]
    return ((causes or lines or [default])[-1])[:MAX_CAUSE]


def fail(message: str) -> None:
    """Print `error: message` on stderr and exit 2 (bad input the user can fix)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


VERBOSE_ENV = "CVAE_VERBOSE"  # "1": show TensorFlow's and Ray's own start-up and bookkeeping lines


@contextlib.contextmanager
def native_stderr_to(path: str | os.PathLike):
    """Send the process's file descriptor 2 to `path` for a while (unless CVAE_VERBOSE=1).

    TensorFlow's C++ start-up lines (oneDNN, CUDA probing, absl) are written there before any log level
    applies, so no environment variable silences them; they are kept in the file instead of the console.
    """
    if os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
