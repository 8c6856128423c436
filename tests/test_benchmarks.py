"""The benchmark scripts still run (on tiny problems; timings are not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TINY = ["--n", "3000", "--iters", "2", "--repeats", "1"]
# scripts with their own small configuration, and what they need
OWN_ARGS = {
    "bench_routing.py": (
        ["--small", "--device", "cpu", "--n", "512", "--repeats", "1", "--warmup", "0"],
        "torch",
    ),
}


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
)
def test_benchmark_runs(script):
    args, needs = OWN_ARGS.get(script, (TINY, None))
    if needs is not None:
        pytest.importorskip(needs)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ms" in done.stdout


OWN_ARGS["bench_torch_sweep.py"] = (["--small", "--device", "cpu"], "torch")
OWN_ARGS["bench_torch_em.py"] = (
    ["--small", "--device", "cpu", "--iters", "2", "--repeats", "1"],
    "torch",
)
OWN_ARGS["bench_bootstrap_lrt.py"] = (
    ["--reps", "2", "--n-boot", "3", "--n", "60"],
    None,
)
OWN_ARGS["bench_coverage.py"] = (["--reps", "2", "--n", "200", "--n-boot", "3"], None)
OWN_ARGS["bench_large_n.py"] = (
    [*TINY, "--cases", "d2m4", "d2m4f32", "--what", "em", "fit"],
    None,
)
OWN_ARGS["bench_threads.py"] = (
    ["--n", "1000", "--n-products", "3000", "--iters", "2", "--repeats", "1"],
    None,
)
OWN_ARGS["bench_starts.py"] = (
    [
        *("--cases", "bench_em_2000", "faithful"),
        *("--strategies", "auto", "kmeans"),
        *("--seeds", "1", "--n-ref-init", "2"),
    ],
    None,
)
