"""cvae-study: the project's commands under one name (run, best, sample, report, train)."""

from __future__ import annotations

import importlib
import sys

from cvae.command_line import EXIT_BAD_INPUT, exit_with, run_command

# subcommand -> (module whose main(argv, prog) runs it, what it does)
COMMANDS = {
    "run": ("study.run", "run or resume a study from a study file (python study/run.py)"),
    "best": ("study.best", "the best trial of a study and its checkpoint (python study/best.py)"),
    "sample": ("study.sample", "draw digits from a study's best (or any) trial (python study/sample.py)"),
    "report": ("study.report", "figures, summary.md and claim verdicts for a study (python study/report.py)"),
    "train": ("cvae.train", "one training run without Ray (python -m cvae.train)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: cvae-study COMMAND [options]   (cvae-study COMMAND --help for its options)\n\ncommands:\n"
            + "\n".join(lines) + "\n\nexample: cvae-study run --space grey_loss.yaml\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(), end="")
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "a command is needed"
        print(f"cvae-study: error: {given}; allowed: {', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return run_command(lambda: module.main(argv[1:], prog=f"cvae-study {argv[0]}"))


if __name__ == "__main__":
    exit_with(main)
