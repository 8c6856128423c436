"""EM time per iteration for every expert family, softmax gate, in one run.

n = 100,000 samples, d = 2 covariates, m = 4 experts, linear predictors;
the multinomial logistic experts have K = 3 classes. Each family runs the
same number of EM iterations from a k-means start on data drawn from a
model of that family; the script prints milliseconds per iteration and the
ratio to Gaussian experts.

Run:  python benchmarks/bench_families.py [--n 100000] [--iters 30] [--repeats 3]
"""

from __future__ import annotations

import argparse

from _timing import em_ms_per_iteration

from moestat.datasets import (
    make_moe_classification,
    make_moe_glm,
    make_moe_regression,
)

DATA = {
    "gaussian": lambda n: make_moe_regression(n, 4, 2, random_state=0),
    "poisson": lambda n: make_moe_glm(n, 4, 2, family="poisson", random_state=0),
    "bernoulli": lambda n: make_moe_glm(n, 4, 2, family="bernoulli", random_state=0),
    "multinomial K=3": lambda n: make_moe_classification(n, 4, 3, 2, random_state=0),
}


def ms_per_iteration(make, n, iters, repeats):
    X, y, truth = make(n)
    return em_ms_per_iteration(X, y, truth, iters, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = {
        name: ms_per_iteration(make, args.n, args.iters, args.repeats)
        for name, make in DATA.items()
    }
    base = times["gaussian"]
    print(f"EM per iteration, n={args.n}, d=2, m=4, softmax gate")
    print(f"{'experts':20s} {'ms/iter':>8s} {'vs gaussian':>12s}")
    for name, value in times.items():
        print(f"{name:20s} {value:8.2f} {value / base:11.2f}x")


if __name__ == "__main__":
    main()
