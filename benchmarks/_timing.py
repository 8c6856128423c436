"""Shared by the benchmark scripts: EM milliseconds per iteration on a truth."""

from __future__ import annotations

import time

import numpy as np

from moestat.fit import em, initial_params
from moestat.model import MixtureOfExperts


def em_ms_per_iteration(X, y, truth, iters: int, repeats: int) -> float:
    """Best of ``repeats`` runs of ``iters`` EM iterations from a k-means start.

    The model is the truth's gate and expert family; ``tol=0`` makes every
    run take exactly ``iters`` iterations.
    """
    y = np.asarray(y, dtype=float)
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design = spec.design(X)
    start = initial_params(
        spec, design, X, y, truth.n_experts, "kmeans", np.random.default_rng(1)
    )
    model = spec.with_params(start)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        em(model, design, y, tol=0.0, max_iter=iters)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / iters
