"""Wall time of the default study (``make demo``'s sweep) and cells per second.

The default study is SG-E with m = 2 and SG-O with m = 3 (the softmax-gated
Gaussian MoE of the NeurIPS 2023 paper) over the n grid and replications of
``moestat.cli.DEFAULT_STUDY_GRID`` / ``DEFAULT_STUDY_REPS``. Each cell draws
a sample, fits by EM from the near-truth start and computes every loss.
The script runs the sweep into a fresh temporary directory with ``--jobs``
workers (and once with one worker) of ``--parallel`` (joblib's loky worker
processes by default, or threads), and prints the wall time, cells per
second and milliseconds per cell.

Run:  python benchmarks/bench_sweep.py [--n 25600] [--reps 16] [--jobs 2]
      [--parallel loky|threading|sequential]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from moestat.cli import DEFAULT_STUDY, DEFAULT_STUDY_GRID, DEFAULT_STUDY_REPS
from moestat.simulation import load_results, simulate


def run_study(grid, reps, jobs, parallel="loky"):
    """Seconds for the whole default study and the number of cells."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for scenario, fits in DEFAULT_STUDY:
            simulate(
                scenario,
                f"{tmp}/{scenario}",
                n_grid=grid,
                n_reps=reps,
                fits=fits,
                n_jobs=jobs,
                parallel=parallel,
                progress=False,
            )
        elapsed = time.perf_counter() - start
        cells = sum(len(load_results(f"{tmp}/{s}")) for s, _ in DEFAULT_STUDY)
    return elapsed, cells


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=max(DEFAULT_STUDY_GRID))
    parser.add_argument("--reps", type=int, default=DEFAULT_STUDY_REPS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--parallel", default="loky", choices=["loky", "threading", "sequential"]
    )
    parser.add_argument("--iters", type=int, default=0, help="(unused)")
    parser.add_argument("--repeats", type=int, default=1, help="(unused)")
    args = parser.parse_args()
    grid = [n for n in DEFAULT_STUDY_GRID if n <= args.n] or [args.n]
    reps = args.reps if args.n >= max(DEFAULT_STUDY_GRID) else 2
    print(f"default study: n grid {grid}, {reps} replications, {args.parallel}")
    for jobs in sorted({1, args.jobs}):
        elapsed, cells = run_study(grid, reps, jobs, args.parallel)
        print(
            f"jobs={jobs}: {cells} cells in {elapsed:.1f} s = "
            f"{cells / elapsed:.2f} cells/s, {1e3 * elapsed / cells:.0f} ms per cell"
        )


if __name__ == "__main__":
    main()
