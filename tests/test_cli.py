"""The cvae-study command and the script entry points: help, dispatch, one-line errors."""

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from


CVAE_STUDY = Path(sysconfig.get_path("scripts")) / "cvae-study"  # installed by pip install -e .


def run(*args):
    return subprocess.run([*map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cvae_study_help_lists_every_command():
    result = run(CVAE_STUDY, "--help")
    assert result.returncode == 0
    for command in ("run", "best", "sample", "report", "train"):
        assert f"\n  {command} " in result.stdout


def test_subcommands_are_the_scripts_under_their_own_name():
    for command in ("run", "best", "sample", "report", "train"):
        result = run(CVAE_STUDY, command, "--help")
        assert result.returncode == 0 and result.stdout.startswith(f"usage: cvae-study {command} "), result.stderr


def test_unknown_command_is_one_line_exit_2():
    result = run(CVAE_STUDY, "trian")
    assert result.returncode == 2 and result.stderr.strip() == (
        "cvae-study: error: unknown command 'trian'; allowed: run, best, sample, report, train (see --help)")


def test_scripts_run_from_a_checkout_without_path_edits():
    for script in ("study/run.py", "study/best.py", "study/sample.py", "study/report.py"):
        assert "sys.path" not in (REPO / script).read_text()
        result = run(sys.executable, script, "--help")
        assert result.returncode == 0 and result.stdout.startswith(f"usage: python {script}"), result.stderr


def test_error_cause_is_the_exception_line_without_colour_codes():
    from cvae.runtime import error_cause

    traceback = ("\x1b[36mray::ImplicitFunc.train() (pid=12, ip=127.0.0.1)\x1b[0m\nTraceback (most recent call last):\n"
                 '  File "x.py", line 1\nKeyError: \'a\'\nThe above exception was the direct cause\nValueError: bad data\n')
    assert error_cause(traceback, "unknown") == "ValueError: bad data"
    assert error_cause("no exception here\nlast line", "unknown") == "last line"
    assert error_cause("", "unknown") == "unknown"
    assert len(error_cause("ValueError: " + "x" * 1000, "")) == 300


def test_no_module_shadows_the_standard_library():
    """`python study/report.py` puts study/ first on sys.path: a study/statistics.py once hid the standard library's
    statistics module from seaborn."""
    modules = {path.stem for folder in ("cvae", "study") for path in (REPO / folder).glob("*.py")}
    assert not modules & set(sys.stdlib_module_names), modules & set(sys.stdlib_module_names)
