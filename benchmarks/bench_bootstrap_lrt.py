"""Size of the bootstrap likelihood-ratio test of m against m + 1 experts.

Data sets of ``--n`` rows are drawn from a two-expert truth (softmax gate
``(0.5, 4)``, experts ``1 + 2x`` and ``-1 - 1.5x`` with variances 0.09 and
0.25, ``x`` uniform on [-1, 1]); on each,
:func:`moestat.selection.bootstrap_lrt` tests two experts against three
with ``--n-boot`` bootstrap data sets (one k-means start per fit). Reported:
the share of tests rejecting at each level (the test's size: about the
level if the test is calibrated), with its binomial standard error, the
mean p-value, and the time per test.

Run:  python benchmarks/bench_bootstrap_lrt.py [--reps 200] [--n-boot 19]
      [--n 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _truths import two_expert_truth
from threadpoolctl import threadpool_limits

from moestat import GaussianMoE
from moestat.selection import bootstrap_lrt

LEVELS = (0.05, 0.10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=19)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    reps, n_boot, n = args.reps, args.n_boot, args.n
    truth = two_expert_truth()
    pvalues = []
    start = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        for seed in range(reps):
            rng = np.random.default_rng(1000 + seed)
            X = rng.uniform(-1, 1, size=(n, 1))
            y = truth.sample(X, rng)[0]
            estimator = GaussianMoE(
                2, init="kmeans", n_init=1, max_iter=200, tol=1e-5, random_state=seed
            )
            result = bootstrap_lrt(estimator, X, y, n_boot=n_boot, random_state=seed)
            pvalues.append(result.pvalue)
    seconds = time.perf_counter() - start
    pvalues = np.asarray(pvalues)
    print(f"{reps} tests of 2 against 3 experts, n = {n}, n_boot = {n_boot}")
    for level in LEVELS:
        rate = float(np.mean(pvalues <= level))
        error = np.sqrt(level * (1 - level) / reps)
        print(f"  level {level:.2f}: rejected {rate:.3f} (binomial se {error:.3f})")
    print(f"  mean p-value {pvalues.mean():.3f}")
    print(f"  {1e3 * seconds / reps:.0f} ms per test")


if __name__ == "__main__":
    main()
