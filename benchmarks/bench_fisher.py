"""Time and memory of the two constructions of the Fisher information.

``moestat._math.fisher_information`` sums per-pair weights when there are
few free rows (k < 2p; memory k^2 n / 2) and uses the Khatri-Rao form
(memory n k p, in chunks) otherwise. For softmax-gate weights with
``k = m - 1`` free rows, a p-column design and BLAS limited to one thread,
the script prints, for each number of experts m, the best time of each
form, their ratio, each form's tracemalloc peak, the largest difference
between the two matrices (relative to the largest entry), the time of
``solve_spd`` on the (k p, k p) system, and the form that
``fisher_information`` picks. The pairwise form is skipped where its pair
weights alone would exceed ``--old-max-mb``.

Run:  python benchmarks/bench_fisher.py [--n 20000] [--n-large 2000] [--p 3]
      [--iters 3] [--repeats 3] [--old-max-mb 1000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

from moestat._math import (
    khatri_rao_information,
    pair_products,
    pairwise_information,
    pairwise_is_smaller,
    solve_spd,
)

EXPERTS = (4, 6, 8, 10, 12, 16, 32, 100)
EXPERTS_LARGE = (500,)


def softmax_weights(n, m, p, seed=0):
    """Design ``[1, x]``, its pair products and softmax Fisher weights."""
    rng = np.random.default_rng(seed)
    Z = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    scores = Z @ rng.normal(size=(p, m))
    g = np.exp(scores - scores.max(axis=1, keepdims=True))
    g /= g.sum(axis=1, keepdims=True)
    rho = rng.uniform(0.5, 1.0, size=n)
    return Z, pair_products(Z), rho[:, None] * g, np.sqrt(rho)[:, None] * g


def best_ms(func, iters, repeats):
    """Best over ``repeats`` of the mean milliseconds of ``iters`` calls."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            func()
        best = min(best, (time.perf_counter() - t0) / iters)
    return 1e3 * best


def peak_mb(func):
    """tracemalloc peak of one call, in MB."""
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(n, m, p, iters, repeats, old_max_mb):
    Z, features, diag, vec = softmax_weights(n, m, p)
    rows = np.arange(1, m)
    k = len(rows)
    args = (Z, features, diag, vec, rows)
    new = khatri_rao_information(*args)
    grad = np.ones(k * p)
    row = {
        "m": m,
        "n": n,
        "used": "pairwise" if pairwise_is_smaller(k, p) else "khatri-rao",
        "new_ms": best_ms(lambda: khatri_rao_information(*args), iters, repeats),
        "new_mb": peak_mb(lambda: khatri_rao_information(*args)),
        "solve_ms": best_ms(lambda: solve_spd(new, grad, 1e-9), iters, repeats),
    }
    if k * (k + 1) / 2 * n * 8 / 2**20 <= old_max_mb:
        old = pairwise_information(*args)
        row["old_ms"] = best_ms(lambda: pairwise_information(*args), iters, repeats)
        row["old_mb"] = peak_mb(lambda: pairwise_information(*args))
        row["error"] = np.abs(new - old).max() / np.abs(old).max()
    return row


def print_table(results):
    print(
        f"{'m':>5} {'n':>6} {'pairwise ms':>12} {'khatri-rao ms':>14} "
        f"{'ratio':>6} {'pairwise MB':>12} {'khatri-rao MB':>14} "
        f"{'rel. diff':>9} {'solve ms':>9} {'used':>10}"
    )
    for r in results:
        if "old_ms" in r:
            old = (
                f"{r['old_ms']:12.2f} {r['new_ms']:14.2f} "
                f"{r['old_ms'] / r['new_ms']:6.2f} {r['old_mb']:12.1f} "
                f"{r['new_mb']:14.1f} {r['error']:9.1e}"
            )
        else:
            old = (
                f"{'skipped':>12} {r['new_ms']:14.2f} {'-':>6} {'-':>12} "
                f"{r['new_mb']:14.1f} {'-':>9}"
            )
        print(f"{r['m']:5d} {r['n']:6d} {old} {r['solve_ms']:9.2f} {r['used']:>10}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--n-large", type=int, default=2_000)
    parser.add_argument("--p", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-max-mb", type=float, default=1000.0)
    args = parser.parse_args()
    cases = [(args.n, m) for m in EXPERTS]
    cases += [(args.n_large, m) for m in EXPERTS_LARGE]
    with threadpool_limits(1):
        results = [
            measure(n, m, args.p, args.iters, args.repeats, args.old_max_mb)
            for n, m in cases
        ]
    print(f"Fisher information, k = m - 1 free rows, p = {args.p}, 1 BLAS thread")
    print("ratio = pairwise / khatri-rao time; MB = tracemalloc peak")
    print_table(results)


if __name__ == "__main__":
    main()
