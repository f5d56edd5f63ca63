"""The shipped reference results regenerate from the code: each summary.md, rewritten from its tables by report.py
--no-details on a copy, is the committed file byte for byte (a change to a verdict or a table shows up here)."""

import shutil
from pathlib import Path

import pytest

from study.report import main as report

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
SHIPPED = sorted(path.parent.name for path in REFERENCE.glob("*/summary.md"))


def test_every_reference_study_is_checked():
    assert len(SHIPPED) >= 10, SHIPPED


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_summary_regenerates_byte_for_byte(name, tmp_path, capsys):
    copy = tmp_path / name
    shutil.copytree(REFERENCE / name, copy, ignore=shutil.ignore_patterns("summary.md", "figures"))
    assert report([str(copy), "--no-details"]) == 0, capsys.readouterr().err[-2000:]
    assert (copy / "summary.md").read_bytes() == (REFERENCE / name / "summary.md").read_bytes()
