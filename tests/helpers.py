"""Small builders of models and data used across the tests."""

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


def random_model(rng, n_experts=3, n_features=2, degree=1, shared_variance=False):
    """A softmax-gated Gaussian MoE with random parameters."""
    expert = GaussianExpert(degree=degree, shared_variance=shared_variance)
    spec = MixtureOfExperts(SoftmaxGate(), expert)
    design = spec.design(np.zeros((1, n_features)))
    gate_coef = rng.normal(0, 2, size=(n_experts, design.gate.shape[1]))
    gate_coef -= gate_coef[0]
    coef = rng.normal(0, 2, size=(n_experts, design.expert.shape[1]))
    var = rng.uniform(0.05, 0.5, size=n_experts)
    if shared_variance:
        var = np.full(n_experts, var[0])
    return spec.with_params(
        MoEParams(GateParams(gate_coef), GaussianExpertParams(coef, var))
    )


def two_expert_truth():
    """The well-separated 2-expert, 1-covariate model used for recovery."""
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.5, 4.0]])),
        GaussianExpertParams(
            np.array([[1.0, 2.0], [-1.0, -1.5]]), np.array([0.09, 0.25])
        ),
    )
    return MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)


def three_quadratic_truth():
    """Three quadratic experts, each dominating a third of [-1, 1]."""
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [4.0, 8.0], [0.0, 16.0]])),
        GaussianExpertParams(
            np.array([[1.0, 1.0, -2.0], [0.0, -1.0, 1.5], [-1.0, 2.0, 1.0]]),
            np.array([0.04, 0.09, 0.06]),
        ),
    )
    return MixtureOfExperts(SoftmaxGate(), GaussianExpert(degree=2), params)
