"""Fits and thin matrix products with BLAS at one thread and at two.

moestat's fits run with BLAS at one thread (``MOESTAT_BLAS_THREADS``,
default 1). This script times, in one run, with the setting at ``1`` and at
``2``:

- ``fit``: ``GaussianMoE(3, n_init=1)`` on ``n`` samples with two
  covariates, EM then the L-BFGS-B polish;
- ``2 fits at once``: two such fits in two joblib workers (as
  ``select_model`` and the simulations run them), wall time;
- ``polish``: the polish alone, from the end of the EM run of that fit;
- ``Z @ coef.T``: the gate's scores on ``--n-products`` rows, a product
  with 3 inner columns (OpenBLAS starts its threads on products of this
  kind from about 10^5 rows);
- ``resp.T @ features``: the M-step's sufficient statistics on as many
  rows, the responsibilities times the 6 products of the 3 design columns.

Each line gives the best time of ``--repeats`` runs (the products: the mean
of ``--iters`` calls), at one thread and at two, and their ratio (above 1:
one thread is faster).

Run:  python benchmarks/bench_threads.py [--n 20000] [--n-products 200000]
      [--iters 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_info

from moestat import GaussianExpert, GaussianMoE, MixtureOfExperts, SoftmaxGate
from moestat._math import pair_products
from moestat._threads import BLAS_THREADS_ENV, limit_blas_threads
from moestat.datasets import make_moe_regression
from moestat.fit import em, initial_params, polish_fit

SETTINGS = ("1", "2")
N_EXPERTS = 3


def best_ms(func, repeats, iters):
    """Best over ``repeats`` of the mean milliseconds of ``iters`` calls, per
    setting; the settings take turns, so a busy spell slows both alike."""
    best = dict.fromkeys(SETTINGS, np.inf)
    for _ in range(repeats):
        for setting in SETTINGS:
            os.environ[BLAS_THREADS_ENV] = setting
            with limit_blas_threads():
                t0 = time.perf_counter()
                for _ in range(iters):
                    func()
                elapsed = (time.perf_counter() - t0) / iters
            best[setting] = min(best[setting], elapsed)
    return [1e3 * best[setting] for setting in SETTINGS]


def fit_with(X, y, setting):
    """A fit in a worker, with ``MOESTAT_BLAS_THREADS=setting``."""
    os.environ[BLAS_THREADS_ENV] = setting
    GaussianMoE(N_EXPERTS, n_init=1, random_state=0).fit(X, y)


def fits_at_once(X, y, n_jobs=2):
    """``n_jobs`` fits in as many joblib workers, at the current setting."""
    setting = os.environ[BLAS_THREADS_ENV]
    Parallel(n_jobs=n_jobs)(delayed(fit_with)(X, y, setting) for _ in range(n_jobs))


def cases(n, n_products, iters):
    """Name, function and calls per timing of each timed part."""
    X, y, _ = make_moe_regression(
        n_samples=n, n_experts=N_EXPERTS, n_features=2, random_state=0
    )
    estimator = GaussianMoE(N_EXPERTS, n_init=1, random_state=0)
    spec = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    design = spec.design(X)
    var_floor = spec.expert.variance_floor(y, estimator.reg_var)
    start = initial_params(
        spec, design, X, y, N_EXPERTS, "kmeans", np.random.default_rng(0)
    )
    with limit_blas_threads():
        em_result = em(spec.with_params(start), design, y, var_floor=var_floor)
    rng = np.random.default_rng(1)
    Z = spec.design(rng.normal(size=(n_products, 2))).gate
    coef = rng.normal(size=(N_EXPERTS, Z.shape[1]))
    resp = np.asfortranarray(rng.dirichlet(np.ones(N_EXPERTS), size=n_products))
    features = pair_products(Z)
    Parallel(n_jobs=2)(delayed(abs)(i) for i in range(2))  # start the workers
    return [
        ("fit", lambda: estimator.fit(X, y), 1),
        ("2 fits at once", lambda: fits_at_once(X, y), 1),
        (
            "polish",
            lambda: polish_fit(em_result, design, y, var_floor=var_floor),
            1,
        ),
        ("Z @ coef.T", lambda: Z @ coef.T, iters),
        ("resp.T @ features", lambda: resp.T @ features, iters),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--n-products", type=int, default=200_000)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    names = ", ".join(sorted({f"{i['internal_api']} {i['version']}" for i in blas}))
    print(
        f"n={args.n} (products: {args.n_products}), m={N_EXPERTS}, d=2; "
        f"{os.cpu_count()} CPUs; BLAS: {names}; "
        f"default {max(i['num_threads'] for i in blas)} threads"
    )
    print(f"{'':>20} {'1 thread':>12} {'2 threads':>12} {'2 / 1':>7}")
    saved = os.environ.get(BLAS_THREADS_ENV)
    try:
        for name, func, calls in cases(args.n, args.n_products, args.iters):
            times = best_ms(func, args.repeats, calls)
            print(
                f"{name:>20} {times[0]:>9.3f} ms {times[1]:>9.3f} ms "
                f"{times[1] / times[0]:>7.2f}"
            )
    finally:
        if saved is None:
            os.environ.pop(BLAS_THREADS_ENV, None)
        else:
            os.environ[BLAS_THREADS_ENV] = saved


if __name__ == "__main__":
    main()
