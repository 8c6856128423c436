"""Many starts as one numpy batch against one start at a time.

Short-run screening (:func:`moestat.fit.screened_start`) runs ``B`` short
EM runs from random starts. This script times ``B`` runs of ``--iters``
plain EM iterations on one data set three ways, in one process, each the
best of ``--repeats``:

* ``one by one``: ``em(..., accelerate=False)`` per start (what the
  batched runs must equal, step for step);
* ``batched``: :func:`moestat.fit.batched_em_fits` with all starts at once;
* ``SQUAREM one by one``: ``em(...)`` with its default acceleration per
  start (the screening of earlier versions; more work per iteration).

and reports milliseconds per screening and the ratio one-by-one / batched,
for the gates and sizes given. BLAS runs at one thread.

Run:  python benchmarks/bench_batched.py [--n 200 1000 5000] [--m 2 4]
      [--gates softmax normalized_sigmoid] [--starts 5] [--iters 10]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from moestat.datasets import make_moe_regression
from moestat.experts import GaussianExpert
from moestat.fit import batched_em_fits, em, initial_params
from moestat.gates import resolve_gate
from moestat.model import MixtureOfExperts


def _best(function, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def time_case(gate: str, n: int, m: int, starts: int, iters: int, repeats: int):
    """Milliseconds of ``starts`` short runs: one by one, batched, SQUAREM."""
    X, y, _ = make_moe_regression(n, m, 2, random_state=0)
    model = MixtureOfExperts(resolve_gate(gate), GaussianExpert(degree=1))
    design = model.design(X)
    rng = np.random.default_rng(1)
    begins = [
        initial_params(model, design, X, y, m, "random", rng) for _ in range(starts)
    ]

    def one_by_one(accelerate):
        return [
            em(
                model.with_params(b),
                design,
                y,
                tol=0.0,
                max_iter=iters,
                accelerate=accelerate,
                stop_on_ridge=False,
            )
            for b in begins
        ]

    def batched():
        return batched_em_fits(
            model, [design] * starts, [y] * starts, begins, tol=0.0, max_iter=iters
        )

    reference = [r.log_likelihood for r in one_by_one(False)]
    together = [r.log_likelihood for r in batched()]
    agree = float(np.max(np.abs(np.subtract(reference, together))))
    return {
        "one": _best(lambda: one_by_one(False), repeats),
        "batched": _best(batched, repeats),
        "squarem": _best(lambda: one_by_one(True), repeats),
        "agree": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument("--m", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--gates", nargs="+", default=["softmax", "normalized_sigmoid"])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{args.starts} starts x {args.iters} EM iterations; ms per screening "
        "(best of repeats)"
    )
    print(
        f"{'gate':<20} {'n':>6} {'m':>3} {'one by one':>11} {'batched':>9} "
        f"{'ratio':>6} {'SQUAREM':>9} {'max |dLL|':>10}"
    )
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for gate in args.gates:
            for m in args.m:
                for n in args.n:
                    row = time_case(gate, n, m, args.starts, args.iters, args.repeats)
                    print(
                        f"{gate:<20} {n:>6} {m:>3} {row['one']:>11.1f} "
                        f"{row['batched']:>9.1f} {row['one'] / row['batched']:>6.2f} "
                        f"{row['squarem']:>9.1f} {row['agree']:>10.1e}"
                    )


if __name__ == "__main__":
    main()
