"""The declared contract between the fitting engines and the pieces.

Every built-in gate and expert family satisfies its protocol and exactly
the optional capabilities it declares; a gate written outside moestat is
accepted wherever a gate object is; the engines' decisions that used to
probe for attributes read the capabilities and decide as before.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moestat import (
    GateParams,
    GaussianExpert,
    GLMExpert,
    GLMExpertParams,
    MixtureOfExperts,
    ModifiedSoftmaxGate,
    MoEParams,
    MultinomialLogisticExpert,
    NormalizedSigmoidGate,
    ReLUExpert,
    SharedExpertsGate,
    SoftmaxGate,
    StackedExperts,
)
from moestat import protocols as P
from moestat.boundary import is_penalised
from moestat.datasets import (
    make_moe_classification,
    make_moe_glm,
    make_moe_regression,
)
from moestat.experts._base import expert_degrees_of_freedom
from moestat.gates import resolve_gate, with_shared_experts
from tests.custom_pieces import ConstantGate, LogisticGate, UnitGaussianExpert

GATES = {
    "softmax": SoftmaxGate(),
    "modified_softmax": ModifiedSoftmaxGate(),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid_top2": NormalizedSigmoidGate(top_k=2),
    "shared": SharedExpertsGate(SoftmaxGate(), 1),
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
    "stacked": StackedExperts(ReLUExpert(), GaussianExpert(), 1),
}

GATE_CAPABILITIES = (P.GateAtoms, P.AffineGate, P.CompositeGate, P.Penalised)
EXPERT_CAPABILITIES = (
    P.ExpertAtoms,
    P.HasLogMean,
    P.HasClassProbabilities,
    P.CountsDegreesOfFreedom,
    P.Penalised,
    P.CompositeExpertFamily,
    P.GLMFamily,
    P.MultinomialFamily,
)

# What each built-in piece declares, beside its role's required hooks.
DECLARED_GATE = {
    "softmax": {P.GateAtoms, P.AffineGate, P.Penalised},
    "modified_softmax": {P.GateAtoms, P.AffineGate, P.Penalised},
    "normalized_sigmoid": {P.GateAtoms, P.AffineGate, P.Penalised},
    "normalized_sigmoid_top2": {P.GateAtoms, P.AffineGate, P.Penalised},
    "shared": {P.GateAtoms, P.CompositeGate, P.Penalised},
}
DECLARED_EXPERT = {
    "gaussian": {P.ExpertAtoms},
    "gaussian_shared_variance": {P.ExpertAtoms},
    "gaussian_known_variance": {P.ExpertAtoms},
    "polynomial": {P.ExpertAtoms},
    "poisson": {P.ExpertAtoms, P.HasLogMean, P.Penalised, P.GLMFamily},
    "bernoulli": {P.ExpertAtoms, P.HasLogMean, P.Penalised, P.GLMFamily},
    "multinomial": {
        P.ExpertAtoms,
        P.HasClassProbabilities,
        P.Penalised,
        P.MultinomialFamily,
    },
    "relu": {P.ExpertAtoms, P.CountsDegreesOfFreedom},
    "stacked": {P.ExpertAtoms, P.CountsDegreesOfFreedom, P.CompositeExpertFamily},
}


@pytest.mark.parametrize("name", GATES)
def test_every_builtin_gate_is_a_gate_with_exactly_its_capabilities(name):
    gate = GATES[name]
    assert isinstance(gate, P.Gate)
    assert not isinstance(gate, P.ExpertFamily)
    found = {cap for cap in GATE_CAPABILITIES if isinstance(gate, cap)}
    assert found == DECLARED_GATE[name]


@pytest.mark.parametrize("name", EXPERTS)
def test_every_builtin_family_is_a_family_with_exactly_its_capabilities(name):
    expert = EXPERTS[name]
    assert isinstance(expert, P.ExpertFamily)
    assert not isinstance(expert, P.Gate)
    found = {cap for cap in EXPERT_CAPABILITIES if isinstance(expert, cap)}
    assert found == DECLARED_EXPERT[name]


def test_only_the_shared_experts_gate_is_composite():
    assert isinstance(SharedExpertsGate(NormalizedSigmoidGate(), 2), P.CompositeGate)
    assert not isinstance(SoftmaxGate(), P.CompositeGate)
    # stacked experts have a routed part too, but are not a gate
    assert not isinstance(EXPERTS["stacked"], P.CompositeGate)


@pytest.mark.parametrize(
    ("name", "signature", "invariant"),
    [
        ("softmax", "softmax", True),
        ("modified_softmax", "modified_softmax", True),
        ("normalized_sigmoid", "normalized_sigmoid", False),
        ("normalized_sigmoid_top2", "normalized_sigmoid", False),
        ("shared", "softmax", True),
    ],
)
def test_gates_declare_what_the_losses_read(name, signature, invariant):
    gate = GATES[name]
    assert isinstance(gate, P.GateDeclarations)
    assert gate.voronoi_signature == signature
    assert gate.translation_invariant is invariant


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("gaussian", "gaussian"),
        ("polynomial", "gaussian"),
        ("poisson", "poisson"),
        ("bernoulli", "bernoulli"),
        ("multinomial", "categorical"),
        ("relu", "gaussian"),
        ("stacked", "gaussian"),
    ],
)
def test_families_declare_their_response_family(name, family):
    expert = EXPERTS[name]
    assert isinstance(expert, P.ExpertDeclarations)
    assert expert.response_family == family


@pytest.mark.parametrize(
    ("gate", "kernel"),
    [
        (SoftmaxGate(), "softmax"),
        (ModifiedSoftmaxGate(), "softmax"),
        (SoftmaxGate(bound=5.0), "softmax"),
        (NormalizedSigmoidGate(), "normalized_sigmoid"),
        (NormalizedSigmoidGate(bound=None), "normalized_sigmoid"),
        (NormalizedSigmoidGate(top_k=2), None),
        (SoftmaxGate(alpha=1.0), None),
        (ModifiedSoftmaxGate(alpha=1.0), None),
        (NormalizedSigmoidGate(alpha=1.0), None),
    ],
    ids=lambda value: value if isinstance(value, str | None) else value.describe(),
)
def test_gates_declare_the_sweep_kernel_of_their_weights(gate, kernel):
    """None where the settings are not served: a top-K selection, a ridge."""
    assert isinstance(gate, P.SweepGate)
    assert gate.sweep_kernel == kernel


@pytest.mark.parametrize("name", EXPERTS)
def test_gaussian_families_alone_declare_the_gaussian_sweep_kernel(name):
    expert = EXPERTS[name]
    declared = isinstance(expert, P.SweepExpertFamily) and expert.sweep_kernel
    assert declared == ("gaussian" if isinstance(expert, GaussianExpert) else False)


def test_pieces_without_a_sweep_declaration_are_not_sweep_pieces():
    assert not isinstance(SharedExpertsGate(SoftmaxGate(), 1), P.SweepGate)
    assert not isinstance(ConstantGate(), P.SweepGate)
    assert not isinstance(UnitGaussianExpert(), P.SweepExpertFamily)
    assert P.missing_members(ConstantGate(), P.SweepGate) == ["sweep_kernel"]
    assert isinstance(LogisticGate(), P.SweepGate)


def test_the_affine_gates_say_whether_rows_are_identified_up_to_a_shift():
    """The boundary diagnostics read pairs of softmax rows, single sigmoid rows."""
    assert SoftmaxGate().translation_invariant
    assert not NormalizedSigmoidGate(top_k=2).translation_invariant


# -- user-written pieces --------------------------------------------------------
def test_a_user_written_gate_and_family_satisfy_the_protocols():
    assert isinstance(ConstantGate(), P.Gate)
    assert isinstance(UnitGaussianExpert(), P.ExpertFamily)
    assert not isinstance(ConstantGate(), P.GateAtoms)
    assert not isinstance(UnitGaussianExpert(), P.CountsDegreesOfFreedom)


def test_resolve_gate_accepts_any_gate_object_and_refuses_others():
    gate = ConstantGate()
    assert resolve_gate(gate) is gate
    assert with_shared_experts(gate, 0) is gate
    with pytest.raises(ValueError, match="moestat.protocols.Gate"):
        resolve_gate(GaussianExpert())
    with pytest.raises(ValueError, match="Unknown gate"):
        resolve_gate("constant")


def test_the_data_generators_accept_a_user_written_gate():
    X, y, truth = make_moe_regression(400, 3, gate=ConstantGate(), random_state=0)
    assert truth.gate == ConstantGate()
    assert X.shape == (400, 1) and y.shape == (400,)
    # proportions that do not depend on x, summing to one
    weights = truth.gate_weights(X)
    np.testing.assert_allclose(weights, np.tile(weights[0], (400, 1)))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    _, labels, _ = make_moe_classification(50, 2, gate=ConstantGate(), random_state=1)
    assert set(np.unique(labels)) <= {0.0, 1.0, 2.0}


def test_the_data_generators_refuse_an_object_without_the_gate_hooks():
    with pytest.raises(ValueError, match="gate"):
        make_moe_regression(50, 2, gate=object())


# -- the replaced probes decide as before ----------------------------------------
def test_degrees_of_freedom_come_from_the_hook_where_a_family_has_one():
    # ReLU experts leave out one unidentified scale per expert
    assert expert_degrees_of_freedom(ReLUExpert(), 3, 2) == 3 * 3 + 3 - 3
    # others count every free parameter
    assert expert_degrees_of_freedom(GaussianExpert(), 3, 2) == 3 * 2 + 3
    assert expert_degrees_of_freedom(UnitGaussianExpert(), 3, 1) == 3


def test_a_piece_is_penalised_only_when_it_declares_a_positive_alpha():
    assert is_penalised(SoftmaxGate(alpha=0.5))
    assert not is_penalised(SoftmaxGate())
    assert is_penalised(SharedExpertsGate(SoftmaxGate(alpha=1.0), 1))
    assert is_penalised(GLMExpert("poisson", alpha=2.0))
    assert not is_penalised(GaussianExpert())  # no alpha at all
    assert not is_penalised(ConstantGate())


def test_predict_mixes_log_means_only_for_families_that_give_them():
    X = np.random.default_rng(0).uniform(-1, 1, size=(20, 1))
    # a Poisson expert whose mean overflows where the gate gives it weight 0
    _, _, truth = make_moe_glm(10, 2, family="poisson", random_state=0)
    params = truth.params
    expert_coef = params.expert.coef.copy()
    expert_coef[1] = [800.0, 0.0]
    gate_coef = params.gate.coef.copy()
    gate_coef[1] = [-1e4, 0.0]
    far = truth.with_params(
        MoEParams(GateParams(gate_coef), GLMExpertParams(expert_coef))
    )
    assert isinstance(far.expert, P.HasLogMean)
    assert np.all(np.isfinite(far.predict(X)))
    # Gaussian experts have no log mean: their means are mixed as they are
    _, _, gaussian = make_moe_regression(5, 2, random_state=0)
    assert not isinstance(gaussian.expert, P.HasLogMean)
    np.testing.assert_allclose(
        gaussian.predict(X),
        np.sum(gaussian.gate_weights(X) * gaussian.expert_means(X), axis=1),
    )


def test_predict_proba_needs_a_family_with_class_probabilities():
    _, _, truth = make_moe_regression(5, 2, random_state=0)
    with pytest.raises(ValueError, match="has no classes"):
        truth.predict_proba(np.zeros((3, 1)))
    X, _, classes = make_moe_classification(5, 2, n_classes=3, random_state=0)
    np.testing.assert_allclose(classes.predict_proba(X).sum(axis=1), 1.0)


def test_a_model_of_user_written_pieces_counts_their_parameters():
    model = MixtureOfExperts(ConstantGate(), UnitGaussianExpert())
    assert model.n_free_parameters(n_features=2, n_experts=3) == 2 + 3


def test_protocol_members_list_every_hook_of_the_protocols_extended():
    members = P.protocol_members(P.Gate)
    for protocol in (P.GateKernel, P.GateParametrisation, P.GateNaming):
        assert set(P.protocol_members(protocol)) <= set(members)
    assert {"log_weights", "m_step", "gradient", "pack", "name"} <= set(members)
    assert set(P.protocol_members(P.CompositeGate)) == {*members, "routed", "n_shared"}


def test_a_capability_is_read_from_the_object_not_only_its_class():
    class Ridge:
        def __init__(self, alpha):
            self.alpha = alpha

    assert isinstance(Ridge(1.0), P.Penalised)
    assert not isinstance(object(), P.Penalised)


@pytest.mark.parametrize("name", GATES)
def test_every_builtin_gate_has_batched_kernels_unless_it_has_a_ridge(name):
    gate = GATES[name]
    assert isinstance(gate, P.BatchedGate) and gate.runs_batched
    if isinstance(gate, SharedExpertsGate):
        ridged = SharedExpertsGate(SoftmaxGate(alpha=1.0), gate.n_shared)
    else:
        ridged = dataclasses.replace(gate, alpha=1.0)
    assert isinstance(ridged, P.BatchedGate) and not ridged.runs_batched


def test_a_gate_written_on_the_gate_protocol_alone_has_no_batched_kernels():
    assert not isinstance(ConstantGate(), P.BatchedGate)
    assert P.missing_members(ConstantGate(), P.BatchedGate) == [
        "batch_log_weights",
        "batch_m_step",
        "batch_project",
        "runs_batched",
    ]
