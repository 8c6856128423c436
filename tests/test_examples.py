"""Every example runs as a script and writes what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_writes_its_table_and_plot(tmp_path):
    done = run("plot_gaussian_moe_demo.py", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "demo_parameters.csv", index_col=0)
    assert {"truth", "estimate", "error"} <= set(table.columns)
    assert table["error"].abs().max() < 0.5
    assert (tmp_path / "demo_fit.png").stat().st_size > 10_000
    assert "log-likelihood" in done.stdout


@pytest.mark.parametrize(
    "script",
    sorted(
        p.name
        for p in EXAMPLES.glob("plot_*.py")
        if p.name != "plot_gaussian_moe_demo.py"
    ),
)
def test_example_runs(script, tmp_path):
    done = run(script, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
