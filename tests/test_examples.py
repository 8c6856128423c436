"""Every gallery example runs on its own and draws what the docs show.

Each script runs in a fresh interpreter, the way sphinx-gallery runs it when
the documentation is built: matplotlib's Agg backend, ``plt.show`` a no-op,
and the figures still open at the end are the ones the gallery shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.rglob("plot_*.py"))

# Run the script as sphinx-gallery does, then save every open figure so the
# test can see that it was drawn.
RUNNER = """
import runpy, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.show = lambda *args, **kwargs: None
script, out = sys.argv[1], Path(sys.argv[2])
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
for number in plt.get_fignums():
    plt.figure(number).savefig(out / f"figure_{number}.png", dpi=60)
print("FIGURES", len(plt.get_fignums()))
"""


def run_example(script: Path, out: Path) -> subprocess.CompletedProcess:
    """Run one example in a fresh interpreter, from its own folder."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="error::RuntimeWarning")
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=script.parent,
        env=env,
    )


def test_the_gallery_has_its_sections():
    for section in ("models", "rates", "routing"):
        assert (EXAMPLES / section / "README.txt").is_file()
    assert (EXAMPLES / "README.txt").is_file()
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_runs_and_draws(script, tmp_path):
    start = time.perf_counter()
    done = run_example(script, tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-4000:]
    figures = sorted(tmp_path.glob("figure_*.png"))
    assert figures, f"{script.name} leaves no figure open for the gallery"
    assert all(f.stat().st_size > 2_000 for f in figures)
    # Examples write nothing beside themselves.
    assert not (script.parent / "results").exists()
    print(f"{script.name}: {seconds:.1f} s, {len(figures)} figures")


def test_example_header_is_a_gallery_title():
    for script in SCRIPTS:
        text = script.read_text()
        assert text.startswith('"""\n'), script.name
        title, underline = text.splitlines()[1:3]
        assert underline == "=" * len(title), script.name


def test_the_demo_example_prints_the_fit_and_its_summary(tmp_path):
    done = run_example(EXAMPLES / "models" / "plot_gaussian_moe_demo.py", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "log-likelihood" in done.stdout
    assert "std err" in done.stdout and "Log-likelihood" in done.stdout
