"""The benchmark scripts still run (on tiny problems; timings are not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
)
def test_benchmark_runs(script):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / script),
            "--n",
            "3000",
            "--iters",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ms" in done.stdout
