"""The code is ruff clean (lint and format), as the project's style requires."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["moestat", "tests", "examples", "benchmarks", "docs"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    # ruff is a test dependency, run from the same environment as the tests.
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *PATHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("command", [("check",), ("format", "--check")])
def test_ruff(command):
    done = ruff(*command)
    assert done.returncode == 0, done.stdout + done.stderr
