"""Small builders of models and data used across the tests."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    GaussianMoE,
    MixtureOfExperts,
    ModifiedSoftmaxGate,
    MoEParams,
    MultinomialLogisticMoE,
    NormalizedSigmoidGate,
    PolynomialMoE,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
)
from moestat.experts import (
    GLMExpert,
    GLMExpertParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
)


@dataclass(frozen=True)
class TemperedSoftmaxGate(SoftmaxGate):
    """``g = softmax(beta z / 2)``: a softmax gate at temperature 2.

    Its weights, gradient and M-step agree with each other, but its weights
    are not the softmax kernel's at ``beta``, while it inherits
    ``sweep_kernel = "softmax"`` from :class:`SoftmaxGate`.
    """

    #: the batched kernels are the plain softmax gate's
    runs_batched: ClassVar[bool] = False

    def _log_weights_from_scores(self, s):
        return super()._log_weights_from_scores(s / 2.0)

    def _score_gradient_and_fisher(self, params, Z, resp, log_g):
        score_grad, diag, vec = super()._score_gradient_and_fisher(
            params, Z, resp, log_g
        )
        return score_grad / 2.0, diag / 4.0, vec / 2.0


@dataclass(frozen=True)
class UndeclaredTemperedSoftmaxGate(TemperedSoftmaxGate):
    """The tempered gate declaring that no sweep kernel computes its weights."""

    sweep_kernel: ClassVar[None] = None


def random_gate_params(gate, n_experts, n_design, rng, scale=2.0):
    """Random parameters for any gate (shared experts: random omega too)."""
    params = gate.random_params(n_experts, n_design, scale, rng)
    if isinstance(gate, SharedExpertsGate):
        omega = rng.dirichlet(np.ones(gate.n_shared))
        share = 0.5 if not gate.learned else rng.uniform(0.2, 0.8)
        return SharedGateParams(params.routed, omega, share)
    return params


def random_model(
    rng, n_experts=3, n_features=2, degree=1, shared_variance=False, gate=None
):
    """A Gaussian MoE with random parameters (softmax gate by default).

    ``n_experts`` counts every expert, shared ones included.
    """
    gate = SoftmaxGate() if gate is None else gate
    expert = GaussianExpert(degree=degree, shared_variance=shared_variance)
    spec = MixtureOfExperts(gate, expert)
    design = spec.design(np.zeros((1, n_features)))
    gate_params = random_gate_params(gate, n_experts, design.gate.shape[1], rng)
    coef = rng.normal(0, 2, size=(n_experts, design.expert.shape[1]))
    var = rng.uniform(0.05, 0.5, size=n_experts)
    if shared_variance:
        var = np.full(n_experts, var[0])
    return spec.with_params(MoEParams(gate_params, GaussianExpertParams(coef, var)))


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


# Every gate the estimators accept, by a readable id (tests parametrize on it).
GATES = {
    "softmax": SoftmaxGate(),
    "modified_tanh": ModifiedSoftmaxGate("tanh"),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid_top2": NormalizedSigmoidGate(top_k=2),
    "shared_softmax": SharedExpertsGate(SoftmaxGate(), 1),
    "shared_sigmoid": SharedExpertsGate(NormalizedSigmoidGate(), 1),
    "shared_top2_learned": SharedExpertsGate(
        NormalizedSigmoidGate(top_k=2), 1, shared_weight="learned"
    ),
}


def regression_data(rng, n=400):
    # a smooth softmax gate: every maximum in the comparisons below is finite
    X = rng.uniform(-1, 1, (n, 1))
    return X, two_expert_truth().sample(X, rng)[0]


def count_data(rng, n=400):
    # two Poisson experts under the smooth gate: the maximum is finite
    truth = _glm_truth(
        GLMExpert(family="poisson"),
        GLMExpertParams(np.array([[1.0, 1.0], [0.5, -1.0]])),
    )
    X = rng.uniform(-1, 1, (n, 1))
    return X, truth.sample(X, rng)[0]


def _glm_truth(expert, expert_coef):
    gate = GateParams(np.array([[0.0, 0.0], [0.5, 4.0]]))
    return MixtureOfExperts(SoftmaxGate(), expert, MoEParams(gate, expert_coef))


def binary_data(rng, n=400):
    # two well-separated Bernoulli experts under a smooth gate
    truth = _glm_truth(
        GLMExpert(family="bernoulli"),
        GLMExpertParams(np.array([[3.0, 5.0], [-3.0, -5.0]])),
    )
    X = rng.uniform(-1, 1, (2 * n, 1))
    return X, truth.sample(X, rng)[0]


def class_data(rng, n=400):
    truth = _glm_truth(
        MultinomialLogisticExpert(n_classes=3),
        MultinomialExpertParams(
            np.array([[[2.0, 3.0], [-1.0, 0.0]], [[-2.0, 0.0], [1.0, -3.0]]])
        ),
    )
    X = rng.uniform(-1, 1, (2 * n, 1))
    return X, truth.sample(X, rng)[0].astype(int)


# (estimator, data) pairs covering every gate and expert family with batched kernels
BATCH_CASES = {
    "softmax": (GaussianMoE(2), regression_data),
    "modified_softmax": (GaussianMoE(2, gate="modified_softmax"), regression_data),
    "normalized_sigmoid": (GaussianMoE(2, gate="normalized_sigmoid"), regression_data),
    "sigmoid_top2": (
        GaussianMoE(3, gate=NormalizedSigmoidGate(top_k=2)),
        regression_data,
    ),
    "shared_fixed": (GaussianMoE(2, n_shared_experts=1), regression_data),
    "shared_learned": (
        GaussianMoE(2, n_shared_experts=1, shared_weight="learned"),
        regression_data,
    ),
    "shared_variance": (GaussianMoE(2, shared_variance=True), regression_data),
    "polynomial": (PolynomialMoE(2, degree=2), regression_data),
    "poisson": (PolynomialMoE(2, degree=1, family="poisson"), count_data),
    "bernoulli": (PolynomialMoE(2, degree=1, family="bernoulli"), binary_data),
    "multinomial": (MultinomialLogisticMoE(2), class_data),
}


def fitted_start(estimator, X, y):
    """A fitted model a few EM iterations in: the common start of both backends."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimator.set_params(n_init=1, max_iter=3, polish=False, random_state=0)
        est.fit(X, y)
    return est
