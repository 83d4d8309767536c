"""What tests/test_cli.py and tests/test_commands.py share: running the command line, its one error line, and
a tiny image folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "course_utils", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def error_line(code: int, err: str) -> str:
    """The one ``error:`` line of a refused command (exit code 2, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tiny(image_tree):
    """Two classes of small JPEGs in train/ and test/."""
    return image_tree({"train/cat": 4, "train/dog": 4, "test/cat": 2, "test/dog": 2}, "tiny")


TRAIN = ["train", "--size", "32", "--steps", "2"]

