"""EM speed: moestat's EM against a plain numpy EM, timed in one run.

Problem: n = 100,000 samples, d = 2 covariates, m = 4 experts, softmax
gate, linear Gaussian experts. Both implementations run the same number of
iterations from the same start; the script prints milliseconds per EM
iteration for each, their ratio, and the time of a whole default fit.

The plain reference is what one writes by hand: a Python loop over the
experts for the weighted least squares, and one dense Newton step for the
gate whose Hessian is built block by block from weighted Gram matrices.

Run:  python benchmarks/bench_em.py [--n 100000] [--iters 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.special import logsumexp

from moestat import GaussianMoE
from moestat.datasets import make_moe_regression
from moestat.fit import em, initial_params
from moestat.model import MixtureOfExperts


def plain_em(X, y, gate_coef, coef, var, n_iter):
    """A straightforward numpy EM, one Python loop over experts."""
    n, d = X.shape
    m = coef.shape[0]
    Z = np.hstack([np.ones((n, 1)), X])
    p = Z.shape[1]
    lls = []
    for _ in range(n_iter):
        # E-step
        scores = Z @ gate_coef.T
        log_g = scores - logsumexp(scores, axis=1, keepdims=True)
        log_f = np.empty((n, m))
        for i in range(m):
            mu = Z @ coef[i]
            log_f[:, i] = -0.5 * (np.log(2 * np.pi * var[i]) + (y - mu) ** 2 / var[i])
        log_joint = log_g + log_f
        ll = logsumexp(log_joint, axis=1)
        lls.append(ll.sum())
        resp = np.exp(log_joint - ll[:, None])
        # expert M-step: weighted least squares, one expert at a time
        for i in range(m):
            w = resp[:, i]
            sw = np.sqrt(w)
            coef[i] = np.linalg.lstsq(Z * sw[:, None], y * sw, rcond=None)[0]
            var[i] = np.sum(w * (y - Z @ coef[i]) ** 2) / w.sum()
        # gate M-step: one dense Newton step on the free rows 1..m-1
        g = np.exp(log_g)
        grad = ((resp - g)[:, 1:].T @ Z).ravel()
        q = (m - 1) * p
        hessian = np.zeros((q, q))
        for i in range(1, m):
            for j in range(1, m):
                w = g[:, i] * ((i == j) - g[:, j])
                block = (Z * w[:, None]).T @ Z
                hessian[(i - 1) * p : i * p, (j - 1) * p : j * p] = block
        step = np.linalg.solve(hessian + 1e-9 * np.eye(q), grad)
        gate_coef[1:] += step.reshape(m - 1, p)
    return np.array(lls)


def time_it(fn, repeats):
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    X, y, truth = make_moe_regression(
        n_samples=args.n, n_experts=4, n_features=2, random_state=0
    )
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design = spec.design(X)
    rng = np.random.default_rng(1)
    start = initial_params(spec, design, X, y, 4, "kmeans", rng)
    model = spec.with_params(start)

    def run_moestat():
        return em(model, design, y, tol=0.0, max_iter=args.iters)

    def run_plain():
        return plain_em(
            X,
            y,
            start.gate.coef.copy(),
            start.expert.coef.copy(),
            start.expert.var.copy(),
            args.iters,
        )

    t_moestat = time_it(run_moestat, args.repeats) / args.iters
    t_plain = time_it(run_plain, args.repeats) / args.iters
    ll_moestat = run_moestat().trace[-1]
    ll_plain = run_plain()[-1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est = GaussianMoE(4, n_init=1, random_state=0).fit(X, y)
        t_fit1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        est10 = GaussianMoE(4, random_state=0).fit(X, y)
        t_fit10 = time.perf_counter() - t0

    print(f"EM, n={args.n}, d=2, m=4, softmax gate, linear Gaussian experts")
    print(f"  moestat EM       : {1e3 * t_moestat:8.2f} ms / iteration")
    print(f"  plain numpy EM   : {1e3 * t_plain:8.2f} ms / iteration")
    print(f"  ratio plain/moestat: {t_plain / t_moestat:6.2f}x")
    print(
        f"  log-lik after {args.iters} iters: moestat {ll_moestat:.4f}, "
        f"plain {ll_plain:.4f}"
    )
    print(
        f"  whole fit, n_init=1 : {t_fit1:7.2f} s ({est.n_iter_} iterations, "
        f"converged={est.converged_})"
    )
    print(
        f"  whole fit, default n_init=10: {t_fit10:7.2f} s "
        f"(best log-lik {est10.log_likelihood_:.3f})"
    )


if __name__ == "__main__":
    main()
