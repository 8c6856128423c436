"""The true models the statistical benchmarks are run at."""

from __future__ import annotations

import numpy as np

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    MixtureOfExperts,
    MoEParams,
    SoftmaxGate,
)


def two_expert_truth() -> MixtureOfExperts:
    """Two linear experts under a softmax gate on one covariate on [-1, 1].

    Gate ``(0.5, 4)``, experts ``1 + 2x`` and ``-1 - 1.5x``, variances
    0.09 and 0.25 (the truth of the test suite's recovery checks).
    """
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
        GaussianExpertParams(
            np.array([[1.0, 2.0], [-1.0, -1.5]]), np.array([0.09, 0.25])
        ),
    )
    return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
