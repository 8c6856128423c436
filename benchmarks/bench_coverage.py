"""Coverage of 95% Wald intervals from the three covariances, in finite samples.

Data sets of ``--n`` rows are drawn from a two-expert truth (softmax gate
``(0.5, 4)``, experts ``1 + 2x`` and ``-1 - 1.5x`` with variances 0.09 and
0.25, ``x`` uniform on [-1, 1]). Each is fitted from the truth (the test is
of the intervals, not of the search for the maximum), its labels aligned to
the truth, and the 95% intervals of every parameter are taken from
``inference(cov_type=...)``: the observed information (``"oim"``), the
sandwich (``"robust"``) and the nonparametric bootstrap with ``--n-boot``
refits (``"bootstrap"``). Reported per covariance: the share of intervals
covering the true value, over all parameters and by block (gate, expert
coefficients, variances), and the time per data set.

Run:  python benchmarks/bench_coverage.py [--reps 100] [--n 300]
      [--n-boot 50]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from _truths import two_expert_truth
from threadpoolctl import threadpool_limits

from moestat import (
    GaussianMoE,
    MixtureOfExperts,
)

COV_TYPES = ("oim", "robust", "bootstrap")


def true_values(truth: MixtureOfExperts, names: pd.Index) -> pd.Series:
    """The truth's parameters in the order of the inference's names."""
    p = truth.params
    values = np.r_[p.gate.coef[1:].ravel(), p.expert.coef.ravel(), p.expert.var]
    return pd.Series(values, index=names)


def block(name: str) -> str:
    """The parameter's block: gate, expert coefficient or variance."""
    if name.startswith("gate"):
        return "gate"
    return "variance" if "variance" in name else "expert coef"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--n-boot", type=int, default=50)
    args = parser.parse_args()
    truth = two_expert_truth()
    rng = np.random.default_rng(0)
    covered = {cov_type: [] for cov_type in COV_TYPES}
    start = time.perf_counter()
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rep in range(args.reps):
            X = rng.uniform(-1, 1, size=(args.n, 1))
            y, _ = truth.sample(X, rng)
            fit = GaussianMoE(2, init=truth.params, n_init=1).fit(X, y)
            fit = fit.align_to(truth)
            for cov_type in COV_TYPES:
                options = (
                    {"n_boot": args.n_boot, "random_state": rep}
                    if cov_type == "bootstrap"
                    else {}
                )
                result = fit.inference(cov_type=cov_type, **options)
                values = true_values(truth, result.params.index)
                ci = result.conf_int(0.05)
                covered[cov_type].append((ci[0] <= values) & (values <= ci[1]))
    seconds = time.perf_counter() - start
    print(
        f"{args.reps} data sets of n = {args.n}, two experts, "
        f"bootstrap with {args.n_boot} refits; share of 95% intervals covering"
    )
    rows = {}
    for cov_type, hits in covered.items():
        frame = pd.DataFrame(hits)
        by_block = frame.mean().groupby(block).mean()
        rows[cov_type] = {"all": frame.to_numpy().mean(), **by_block.to_dict()}
    print(pd.DataFrame(rows).T.round(3).to_string())
    print(f"(binomial se of one share about {np.sqrt(0.0475 / args.reps):.3f})")
    print(f"{1e3 * seconds / args.reps:.0f} ms per data set")


if __name__ == "__main__":
    main()
