"""Shared command-line behaviour: a bad flag is one line on stderr and exit code 2, never a usage dump."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2  # argparse's own code for a usage error; every CLI uses it for every refused input


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (the problem and where to read what is allowed)."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: str) -> None:
    """Print `error: message` on stderr and exit 2 (bad input the user can fix)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)
