"""EM time per iteration for every gate, beside the softmax gate, in one run.

n = 100,000 samples, d = 2 covariates, m = 4 routed experts, linear Gaussian
experts. Each gate runs the same number of EM iterations from a k-means
start on data drawn from a model with that gate; the script prints
milliseconds per iteration and the ratio to the softmax gate.

Run:  python benchmarks/bench_gates.py [--n 100000] [--iters 40] [--repeats 3]
"""

from __future__ import annotations

import argparse

from _timing import em_ms_per_iteration

from moestat import (
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SoftmaxGate,
)
from moestat.datasets import make_moe_regression

GATES = {
    "softmax": SoftmaxGate(),
    "modified_softmax (tanh)": ModifiedSoftmaxGate("tanh"),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid top_k=2": NormalizedSigmoidGate(top_k=2),
    "softmax + 1 shared expert": SharedExpertsGate(SoftmaxGate(), 1),
    "normalized_sigmoid + 1 shared": SharedExpertsGate(NormalizedSigmoidGate(), 1),
}


def ms_per_iteration(gate, n, iters, repeats):
    n_shared = getattr(gate, "n_shared", 0)
    routed = getattr(gate, "routed", gate)
    X, y, truth = make_moe_regression(
        n_samples=n,
        n_experts=4,
        n_features=2,
        gate=routed,
        n_shared_experts=n_shared,
        random_state=0,
    )
    return em_ms_per_iteration(X, y, truth, iters, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = {
        name: ms_per_iteration(gate, args.n, args.iters, args.repeats)
        for name, gate in GATES.items()
    }
    base = times["softmax"]
    print(f"EM per iteration, n={args.n}, d=2, m=4 routed experts")
    print(f"{'gate':32s} {'ms/iter':>8s} {'vs softmax':>11s}")
    for name, value in times.items():
        print(f"{name:32s} {value:8.2f} {value / base:10.2f}x")


if __name__ == "__main__":
    main()
