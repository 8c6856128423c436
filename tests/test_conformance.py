"""The public conformance checks: built-in pieces pass, broken ones are named.

``check_gate`` and ``check_expert_family`` pass for every gate and expert
family of moestat and for pieces written on the protocols alone; a piece
that breaks one rule fails with a ``ConformanceError`` naming that rule.
"""

from __future__ import annotations

import numpy as np
import pytest

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    GLMExpert,
    ModifiedSoftmaxGate,
    MultinomialLogisticExpert,
    NormalizedSigmoidGate,
    ReLUExpert,
    SharedExpertsGate,
    SoftmaxGate,
    StackedExperts,
)
from moestat.utils import ConformanceError, check_expert_family, check_gate
from tests.custom_pieces import ConstantGate, LogisticGate, UnitGaussianExpert
from tests.helpers import TemperedSoftmaxGate, UndeclaredTemperedSoftmaxGate

GATES = {
    "softmax": SoftmaxGate(),
    "modified_softmax": ModifiedSoftmaxGate(),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid_top2": NormalizedSigmoidGate(top_k=2),
    "shared_softmax": SharedExpertsGate(SoftmaxGate(), 1),
    "shared_sigmoid_top2_learned": SharedExpertsGate(
        NormalizedSigmoidGate(top_k=2), 1, "learned"
    ),
    "softmax_ridge": SoftmaxGate(alpha=1.0),
    "user_constant": ConstantGate(),
    "user_logistic_declaring_softmax": LogisticGate(),
    "softmax_newton_steps_3": SoftmaxGate(newton_steps=3),
    "tempered_declaring_no_sweep": UndeclaredTemperedSoftmaxGate(),
}
EXPERTS = {
    "gaussian": GaussianExpert(),
    "gaussian_shared_variance": GaussianExpert(shared_variance=True),
    "gaussian_known_variance": GaussianExpert(variance=0.5),
    "polynomial": GaussianExpert(degree=2),
    "poisson": GLMExpert("poisson"),
    "bernoulli": GLMExpert("bernoulli"),
    "multinomial": MultinomialLogisticExpert(3),
    "relu": ReLUExpert(),
    "relu_without_bias": ReLUExpert(bias=False),
    "stacked": StackedExperts(ReLUExpert(), GaussianExpert(), 1),
    "poisson_ridge": GLMExpert("poisson", alpha=1.0),
    "user_unit_gaussian": UnitGaussianExpert(),
}


@pytest.mark.parametrize("name", GATES)
def test_every_gate_passes_check_gate(name):
    check_gate(GATES[name])


@pytest.mark.parametrize("name", EXPERTS)
def test_every_expert_family_passes_check_expert_family(name):
    check_expert_family(EXPERTS[name])


def test_the_checks_take_other_sizes_and_seeds():
    check_gate(SharedExpertsGate(SoftmaxGate(), 2), n_experts=5, random_state=3)
    check_expert_family(GaussianExpert(degree=3), n_experts=2, n_features=1)


# -- broken gates ---------------------------------------------------------------
class GradientSignError(SoftmaxGate):
    def gradient(self, params, Z, resp, log_weights):
        return -super().gradient(params, Z, resp, log_weights)


class GradientOffByOnePerMille(SoftmaxGate):
    def gradient(self, params, Z, resp, log_weights):
        return 1.001 * super().gradient(params, Z, resp, log_weights)


class UnpackDropsAParameter(SoftmaxGate):
    def unpack(self, theta, n_experts, n_design):
        theta = np.array(theta, dtype=float)
        theta[-1] = 0.0
        return super().unpack(theta, n_experts, n_design)


class UnnormalisedWeights(SoftmaxGate):
    def log_weights(self, params, Z):
        return self.scores(params, Z)


class DescendingMStep(SoftmaxGate):
    def m_step(self, params, Z, resp, log_weights=None, *args):
        log_weights = self.log_weights(params, Z)
        grad = self.gradient(params, Z, resp, log_weights)
        theta = self.pack(params) - 0.5 * grad / np.linalg.norm(grad)
        new = self.unpack(theta, *params.coef.shape)
        return new, self.log_weights(new, Z)


class StaleLogWeights(SoftmaxGate):
    def m_step(self, params, Z, resp, log_weights=None, *args):
        new, _ = super().m_step(params, Z, resp, log_weights, *args)
        return new, self.log_weights(params, Z)


class PermuteIgnoresTheOrder(SoftmaxGate):
    def permute(self, params, perm):
        return GateParams(params.coef.copy())


class TooManyScales(SoftmaxGate):
    def pack_scales(self, column_scales, n_experts):
        return np.ones(self.n_free_parameters(n_experts, len(column_scales)) + 1)


class BatchedWeightsOffByOne(SoftmaxGate):
    """Batched kernels that disagree with the gate's own weights."""

    def batch_log_weights(self, theta, Z, n_experts):
        return super().batch_log_weights(theta, Z, n_experts) - 1.0


class BatchedGateStepStandsStill(NormalizedSigmoidGate):
    """A batched M-step that returns its start (the gate's own one moves)."""

    def batch_m_step(self, theta, Z, weight, resp, log_weights, log_f, *args):
        return theta, log_weights


class DeclaresAnUnknownKernel(SoftmaxGate):
    sweep_kernel = "sparsemax"


class SigmoidDeclaringSoftmax(NormalizedSigmoidGate):
    """Normalized sigmoid weights under the softmax kernel's name."""

    sweep_kernel = "softmax"


@pytest.mark.parametrize(
    ("gate", "rule"),
    [
        (BatchedWeightsOffByOne(), "batch"),
        (BatchedGateStepStandsStill(), "batch"),
        (TemperedSoftmaxGate(), "sweep"),
        (DeclaresAnUnknownKernel(), "sweep"),
        (SigmoidDeclaringSoftmax(), "sweep"),
        (GradientSignError(), "gradient"),
        (GradientOffByOnePerMille(), "gradient"),
        (UnpackDropsAParameter(), "pack"),
        (UnnormalisedWeights(), "log_weights"),
        (DescendingMStep(), "m_step"),
        (StaleLogWeights(), "m_step"),
        (PermuteIgnoresTheOrder(), "permute"),
        (TooManyScales(), "pack_scales"),
        (GaussianExpert(), "protocol"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_check_gate_names_the_rule_a_broken_gate_breaks(gate, rule):
    with pytest.raises(ConformanceError, match=f"breaks rule '{rule}'") as info:
        check_gate(gate)
    assert info.value.rule == rule


def test_a_missing_hook_is_named():
    with pytest.raises(ConformanceError, match="missing: .*log_weights"):
        check_gate(GaussianExpert())


def test_a_conformance_error_is_an_assertion_error():
    with pytest.raises(AssertionError):
        check_gate(GradientSignError())


def test_an_exception_in_a_hook_is_reported_as_the_rule_it_breaks():
    class RaisingGradient(SoftmaxGate):
        def gradient(self, params, Z, resp, log_weights):
            raise RuntimeError("not written yet")

    with pytest.raises(ConformanceError, match="gradient raised RuntimeError"):
        check_gate(RaisingGradient())


# -- broken expert families -------------------------------------------------------
class ExpertGradientSignError(GaussianExpert):
    def gradient(self, params, Phi, y, resp, var_floor):
        return -super().gradient(params, Phi, y, resp, var_floor)


class ExpertUnpackDropsAVariance(GaussianExpert):
    def unpack(self, theta, n_experts, n_design, var_floor):
        theta = np.array(theta, dtype=float)
        theta[-1] = 0.0
        return super().unpack(theta, n_experts, n_design, var_floor)


class TransposedLogDensity(GaussianExpert):
    def log_density(self, params, Phi, y):
        return super().log_density(params, Phi, y).T


class ExpertDescendingMStep(GaussianExpert):
    def m_step(self, Phi, y, resp, var_floor, previous=None, features=None):
        if previous is None:
            return super().m_step(Phi, y, resp, var_floor)
        return GaussianExpertParams(previous.coef + 2.0, previous.var)


class PermuteForgetsTheVariances(GaussianExpert):
    def permute(self, params, perm):
        return GaussianExpertParams(params.coef[np.asarray(perm)], params.var)


class HalfwayMStep(GaussianExpert):
    """Known-variance experts whose M-step goes half way to the maximiser.

    Still an ascent step, but not the Gaussian kernel's M-step, which it
    inherits the declaration of.
    """

    runs_batched = False  # the batched M-step is the plain family's

    def m_step(self, Phi, y, resp, var_floor, previous=None, features=None):
        new = super().m_step(Phi, y, resp, var_floor, previous, features)
        if previous is None:
            return new
        return GaussianExpertParams(0.5 * (new.coef + previous.coef), new.var)


class UndeclaredHalfwayMStep(HalfwayMStep):
    sweep_kernel = None


class BatchedDensityOffByOne(ReLUExpert):
    """Batched kernels that disagree with the family's own density."""

    def batch_log_density(self, theta, Phi, y, var_floor, n_experts):
        return super().batch_log_density(theta, Phi, y, var_floor, n_experts) - 1.0


class BatchedMStepStandsStill(ReLUExpert):
    """A batched M-step that returns its start (the family's own one moves)."""

    def batch_m_step(self, theta, Phi, y, resp, var_floor, n_experts):
        return theta


@pytest.mark.parametrize(
    ("expert", "rule"),
    [
        (BatchedDensityOffByOne(), "batch"),
        (BatchedMStepStandsStill(), "batch"),
        (HalfwayMStep(variance=0.5), "sweep"),
        (ExpertGradientSignError(), "gradient"),
        (ExpertUnpackDropsAVariance(), "pack"),
        (TransposedLogDensity(), "log_density"),
        (ExpertDescendingMStep(), "m_step"),
        (PermuteForgetsTheVariances(), "permute"),
        (SoftmaxGate(), "protocol"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_check_expert_family_names_the_rule_a_broken_family_breaks(expert, rule):
    with pytest.raises(ConformanceError, match=f"breaks rule '{rule}'") as info:
        check_expert_family(expert)
    assert info.value.rule == rule


def test_a_gate_that_changes_its_weights_passes_once_it_declares_no_sweep_kernel():
    """The tempered softmax gate breaks rule 'sweep' only through its declaration."""
    with pytest.raises(ConformanceError, match="not the kernel's"):
        check_gate(TemperedSoftmaxGate())
    check_gate(UndeclaredTemperedSoftmaxGate())


def test_a_family_with_another_m_step_passes_once_it_declares_no_sweep_kernel():
    with pytest.raises(ConformanceError, match="other coef than m_step"):
        check_expert_family(HalfwayMStep(variance=0.5))
    check_expert_family(UndeclaredHalfwayMStep(variance=0.5))


def test_sizes_at_which_no_rule_can_be_checked_are_refused():
    with pytest.raises(ValueError, match="top_k=3 is out of range"):
        check_gate(NormalizedSigmoidGate(top_k=3), n_experts=2)
    with pytest.raises(ValueError, match="at least 3"):
        check_gate(SharedExpertsGate(SoftmaxGate(), 1), n_experts=2)
    with pytest.raises(ValueError, match="at least 3"):
        check_expert_family(EXPERTS["stacked"], n_experts=2)
