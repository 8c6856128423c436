"""Does the harness reproduce the theory? Rates of every scenario, one table.

For each registered rate scenario the script runs (or resumes) a sweep into
``--out/<id>`` over the scenario's n grid clipped to ``--n`` with ``--reps``
replications, then estimates every rate with its bootstrap interval and
prints (scenario, fit, loss, expected slope, measured slope, CI, verdict).
MJ-2 (population KL against m) and MJ-3 (the m-k trade-off, on a reduced
grid) are summarised by their own functions. The table is also written to
``--out/rates.csv`` and, for the documentation, ``--out/rates.md``.

Sweeps resume, so the script can be stopped and run again.

Run:  python benchmarks/bench_rates.py [--n 100000] [--reps 40] [--jobs 2]
      [--scenarios SG-E,SG-O,...] [--out results/rates]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from moestat.simulation import (
    SCENARIOS,
    approximation_rates,
    estimate_rate,
    format_rates,
    load_results,
    simulate,
    tradeoff_summary,
)

PRIMARY = ("kl", "hellinger", "tv", "voronoi")
MJ3_FITS = [f"m={m},k={k}" for k in (0, 1, 2) for m in (1, 2, 3, 4, 6, 8)]


def markdown(frame):
    """A pipe table of ``frame`` (floats to 3 decimals)."""

    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def run_rate_scenario(sid, args):
    scenario = SCENARIOS[sid]
    grid = [n for n in scenario.n_grid if n <= args.n]
    fits = MJ3_FITS if sid == "MJ-3" else None
    reps = min(args.reps, 10) if sid == "MJ-3" else args.reps
    start = time.perf_counter()
    simulate(
        sid,
        args.out / sid,
        n_grid=grid,
        n_reps=reps,
        fits=fits,
        n_jobs=args.jobs,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    results = load_results(args.out / sid)
    return results, elapsed


def rate_table(results, x_min):
    """Rates on the whole grid and on n >= x_min, side by side."""
    keep = [
        "scenario",
        "fit",
        "loss",
        "theory",
        "slope",
        "ci_low",
        "ci_high",
        "verdict",
    ]
    whole = estimate_rate(results, n_boot=1000)
    whole = whole[whole["loss"].isin(PRIMARY) | whole["theory"].notna()][keep]
    try:
        tail = estimate_rate(results, n_boot=1000, x_min=x_min)[keep[:3] + keep[4:]]
    except ValueError:  # fewer than three sample sizes above x_min
        return whole
    tail = tail.rename(columns={c: f"{c}_{x_min:g}" for c in keep[4:]})
    return whole.merge(tail, on=["scenario", "fit", "loss"], how="left")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="largest n")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, help="default results/rates")
    parser.add_argument(
        "--n-min", type=float, default=5000, help="also fit the rates on n >= N_MIN"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--iters", type=int, default=0, help="(unused)")
    parser.add_argument("--repeats", type=int, default=0, help="(unused)")
    args = parser.parse_args()
    if args.repeats:  # the smoke test: a tiny run of two cheap scenarios
        args.reps, args.n_min = max(args.repeats, 3), 300
        args.scenarios = "SG-E,MJ-1"
        args.out = args.out or Path(tempfile.mkdtemp(prefix="bench_rates_"))
    args.out = args.out or Path("results/rates")
    tables = []
    for sid in args.scenarios.split(","):
        scenario = SCENARIOS[sid]
        if scenario.kind == "approximation":
            if args.repeats:
                continue
            start = time.perf_counter()
            simulate(
                sid,
                args.out / sid,
                n_reps=min(args.reps, 8),
                n_jobs=args.jobs,
                progress=not args.quiet,
            )
            approx = approximation_rates(load_results(args.out / sid))
            print(f"{sid} ({time.perf_counter() - start:.0f} s): KL against m")
            print(approx.to_string(index=False))
            continue
        results, elapsed = run_rate_scenario(sid, args)
        print(
            f"{sid}: {len(results)} cells, {elapsed:.0f} s "
            f"({1e3 * elapsed / max(len(results), 1):.0f} ms per cell)"
        )
        if sid == "MJ-3":
            best, slopes = tradeoff_summary(results)
            print(best[best["overall"]].to_string(index=False))
            print(slopes.to_string(index=False))
            continue
        if results["n"].nunique() < 3:
            continue
        table = rate_table(results, args.n_min)
        tables.append(table)
        print(format_rates(table))
        print(table.iloc[:, -4:].to_string())
    if tables:
        table = pd.concat(tables, ignore_index=True)
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "rates.csv", index=False)
        (args.out / "rates.md").write_text(markdown(table))
        print(f"ms per cell: see above; table in {args.out / 'rates.csv'}")


if __name__ == "__main__":
    main()
