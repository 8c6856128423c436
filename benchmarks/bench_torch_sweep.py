"""Wall time of a whole sweep with the torch engine, beside the numpy engine.

By default the full SG-E sweep of the registry: 20 log-spaced n from 100 to
100,000 and 40 replications, 800 cells, each drawn, fitted by EM from the
near-truth start and measured (every loss), end to end. The torch engine
(``simulate(..., engine="torch")``) fits the cells in batches on
``--device``; the numpy engine runs the same sweep with ``--jobs`` workers,
or, with ``--numpy-sample K``, K cells spread evenly over the plan are run
one at a time and the sweep's time is extrapolated from them (per-cell
time interpolated in log n). The script prints both totals, cells (fits)
per second and milliseconds per fit, the part of the torch run spent in the
fits (the records' ``fit_time``: sampling, starts and each cell's share of
its batch), and, when both engines ran every cell, how far their losses are
apart. One small torch sweep runs first and is not counted (imports, and
CUDA's start-up on a GPU).

Run:  python benchmarks/bench_torch_sweep.py [--device cuda] [--reps 40]
      [--numpy-sample 40] [--jobs 1] [--threads T] [--json OUT] [--small]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np

from moestat.simulation import get_scenario, load_results, plan_cells, run_cell
from moestat.simulation import simulate as run_sweep


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def time_sweep(scenario, grid, reps, out, **kwargs):
    """Seconds of one sweep into ``out``, and its cells as a DataFrame."""
    start = time.perf_counter()
    run_sweep(scenario, out, n_grid=grid, n_reps=reps, progress=False, **kwargs)
    return time.perf_counter() - start, load_results(out)


def numpy_sample_seconds(scenario, grid, reps, k):
    """Extrapolated seconds of the numpy sweep (and of its fits) from ``k`` cells.

    Returns the sweep's seconds, its fits' seconds, the cells run and the
    seconds they took.
    """
    cells = plan_cells(get_scenario(scenario), grid, reps)
    chosen = np.unique(np.linspace(0, len(cells) - 1, k).round().astype(int))
    seconds: dict[int, list[tuple[float, float]]] = {}
    for index in chosen:
        start = time.perf_counter()
        record = run_cell(scenario, cells[index])
        elapsed = time.perf_counter() - start
        seconds.setdefault(cells[index].n, []).append((elapsed, record["fit_time"]))
    sampled = np.log(np.array(sorted(seconds), dtype=float))
    n_all = np.log(np.array([cell.n for cell in cells], dtype=float))
    totals = []
    for part in (0, 1):
        mean = np.array(
            [np.mean([t[part] for t in seconds[n]]) for n in sorted(seconds)]
        )
        totals.append(float(np.exp(np.interp(n_all, sampled, np.log(mean))).sum()))
    spent = float(sum(t[0] for times in seconds.values() for t in times))
    return totals[0], totals[1], len(chosen), spent


def loss_agreement(numpy_cells, torch_cells):
    """Largest relative loss difference and the share of equal iteration counts."""
    a = numpy_cells.set_index("key").sort_index()
    b = torch_cells.set_index("key").sort_index().loc[a.index]
    out = {"equal_n_iter": float((a["n_iter"] == b["n_iter"]).mean())}
    for loss in ("kl", "hellinger", "voronoi"):
        if loss in a:
            x, y = a[loss].to_numpy(float), b[loss].to_numpy(float)
            out[f"max_rel_diff_{loss}"] = float(np.nanmax(np.abs(x - y) / np.abs(x)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="SG-E")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--reps", type=int, help="default: the scenario's")
    parser.add_argument("--n-max", type=int, help="keep the scenario's n <= N_MAX")
    parser.add_argument("--jobs", type=int, default=1, help="joblib workers")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--batch-cells", type=int, help="most cells per batch")
    parser.add_argument(
        "--numpy-sample",
        type=int,
        help="time K numpy cells and extrapolate instead of the whole sweep",
    )
    parser.add_argument("--no-numpy", action="store_true", help="torch only")
    parser.add_argument("--small", action="store_true", help="4 sizes, 2 reps")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or default_device()
    scenario = get_scenario(args.scenario)
    grid = [n for n in scenario.n_grid if args.n_max is None or n <= args.n_max]
    reps = args.reps or scenario.n_reps
    if args.small:
        grid, reps = list(scenario.n_grid[:4]), 2
    n_cells = len(plan_cells(scenario, grid, reps))
    print(
        f"{scenario.id}: {len(grid)} sizes {grid[0]}..{grid[-1]}, {reps} "
        f"replications = {n_cells} cells; torch on {device} ({args.dtype}, "
        f"{torch.get_num_threads()} threads), {args.jobs} joblib worker(s); "
        f"{platform.processor() or platform.machine()}"
    )
    torch_options = dict(
        engine="torch",
        device=device,
        dtype=args.dtype,
        n_jobs=args.jobs,
        batch_cells=args.batch_cells,
    )
    figures = {
        "scenario": scenario.id,
        "n_grid": grid,
        "reps": reps,
        "cells": n_cells,
        "device": device,
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "jobs": args.jobs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        warmup, _ = time_sweep(scenario, grid[:1], 1, f"{tmp}/warmup", **torch_options)
        seconds, torch_cells = time_sweep(
            scenario, grid, reps, f"{tmp}/torch", **torch_options
        )
        fit_part = float(torch_cells["fit_time"].sum())
        figures |= {
            "warmup_s": warmup,
            "torch_s": seconds,
            "torch_fits_per_s": n_cells / seconds,
            "torch_fit_part_s": fit_part,
        }
        print(f"warm-up (not counted): {warmup:.1f} s")
        print(
            f"torch: {seconds:.1f} s = {n_cells / seconds:.1f} fits/s, "
            f"{1e3 * seconds / n_cells:.1f} ms per fit (fits {fit_part:.2f} s, "
            f"losses and the rest {seconds - fit_part:.1f} s)"
        )
        if not args.no_numpy:
            if args.numpy_sample:
                estimate, numpy_fits, k, spent = numpy_sample_seconds(
                    scenario, grid, reps, args.numpy_sample
                )
                label = f"numpy, {k} cells run one by one and extrapolated"
                figures |= {"numpy_sample": k, "numpy_sample_s": spent}
            else:
                estimate, numpy_cells = time_sweep(
                    scenario, grid, reps, f"{tmp}/numpy", n_jobs=args.jobs
                )
                numpy_fits = float(numpy_cells["fit_time"].sum())
                label = f"numpy, {args.jobs} worker(s), every cell"
                figures |= loss_agreement(numpy_cells, torch_cells)
            figures |= {
                "numpy_s": estimate,
                "numpy_fit_part_s": numpy_fits,
                "speedup": estimate / seconds,
                "fit_speedup": numpy_fits / fit_part,
            }
            print(
                f"{label}: {estimate:.1f} s = {n_cells / estimate:.1f} fits/s, "
                f"{1e3 * estimate / n_cells:.1f} ms per fit (fits {numpy_fits:.2f} "
                f"s); numpy / torch = {estimate / seconds:.2f} end to end, "
                f"{numpy_fits / fit_part:.2f} for the fits"
            )
            if "equal_n_iter" in figures:
                print(
                    "agreement: equal iteration counts in "
                    f"{100 * figures['equal_n_iter']:.0f}% of cells, largest "
                    f"relative KL difference {figures['max_rel_diff_kl']:.1e}"
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
