"""Shared command-line behaviour: a bad flag is one line on stderr and exit code 2, never a usage dump; a closed pipe
is a quiet exit; --verbose."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from cvae.datasets import DATASET_INFO

EXIT_BAD_INPUT = 2  # argparse's own code for a usage error; every CLI uses it for every refused input

# The one mapping from command-line flags to TrialConfig fields: field -> (type, help). `--data-path` sets
# data_path, and so on; cvae.train applies them to its preset, study/run.py to the study's `fixed:`.
CONFIG_FLAGS = {
    "dataset": (str, "; ".join(f"{name}: {info.description}" for name, info in DATASET_INFO.items())),
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


def fail(message: str) -> NoReturn:
    """A command's way out on input the user can fix: `error: message` on stderr and exit 2 (commands only: library
    code raises, and its command calls `refuse`)."""
    raise SystemExit(refuse(message))


def refuse(error: Exception) -> int:
    """A command's refusal of input the user can fix: `error: ...` on stderr (one line), and its exit code, 2."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """--verbose: show the libraries' own start-up lines and warnings (the command passes args.verbose on)."""
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and the other libraries' own start-up lines and warnings")


EXIT_CLOSED_PIPE = 141  # the shell's code for a writer whose reader went away (128 + SIGPIPE), as `yes | head` gives


def run_command(main: Callable[[], int]) -> int:
    """main()'s exit code, except that a closed pipe (`cvae-study best ... | head`) ends the command quietly, the way
    Unix tools end, instead of with a BrokenPipeError traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail again
        code = EXIT_CLOSED_PIPE
    return code


def exit_with(main: Callable[[], int]) -> NoReturn:
    """sys.exit(run_command(main)): every command's `if __name__ == "__main__"`."""
    sys.exit(run_command(main))
