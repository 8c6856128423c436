"""Gates: weights, identifiability, M-steps and gradients, for every gate."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.optimize import approx_fprime

from moestat import (
    GateParams,
    ModifiedSoftmaxGate,
    NormalizedSigmoidGate,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
)
from moestat.gates import gate_objective, resolve_gate
from tests.helpers import random_gate_params

GATES = {
    "softmax": SoftmaxGate(),
    "modified_tanh": ModifiedSoftmaxGate("tanh"),
    "modified_sigmoid": ModifiedSoftmaxGate("sigmoid"),
    "modified_callable": ModifiedSoftmaxGate(lambda X: np.column_stack([X, X**2])),
    "normalized_sigmoid": NormalizedSigmoidGate(),
    "normalized_sigmoid_top2": NormalizedSigmoidGate(top_k=2),
    "shared_softmax": SharedExpertsGate(SoftmaxGate(), 1),
    "shared_sigmoid_learned": SharedExpertsGate(
        NormalizedSigmoidGate(), 2, shared_weight="learned"
    ),
}


@pytest.fixture(params=list(GATES), ids=list(GATES))
def gate_problem(request, rng):
    gate = GATES[request.param]
    n, d, m = 400, 2, 4
    X = rng.normal(size=(n, d))
    Z = gate.design(X)
    params = random_gate_params(gate, m, Z.shape[1], rng)
    resp = rng.dirichlet(np.ones(m), size=n)
    # soft labels live where the gate routes (top-K: on the selected experts)
    resp = resp * (gate.log_weights(params, Z) > -np.inf)
    resp /= resp.sum(axis=1, keepdims=True)
    return gate, Z, params, resp


def test_weights_are_probabilities(gate_problem):
    gate, Z, params, _ = gate_problem
    weights = np.exp(gate.log_weights(params, Z))
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)


def test_top_k_routes_each_input_to_k_experts(rng):
    gate = NormalizedSigmoidGate(top_k=2)
    Z = gate.design(rng.normal(size=(300, 2)))
    params = GateParams(rng.normal(size=(5, 3)))
    weights = np.exp(gate.log_weights(params, Z))
    assert np.all((weights > 0).sum(axis=1) == 2)
    scores = Z @ params.coef.T
    top = np.argsort(-scores, axis=1)[:, :2]
    assert np.all(np.take_along_axis(weights, top, axis=1) > 0)


def test_dense_normalized_sigmoid_is_the_normalized_affinities(rng):
    gate = NormalizedSigmoidGate()
    Z = gate.design(rng.normal(size=(50, 1)))
    params = GateParams(rng.normal(size=(3, 2)))
    sigma = 1 / (1 + np.exp(-(Z @ params.coef.T)))
    expected = sigma / sigma.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(gate.log_weights(params, Z)), expected)


def test_shared_experts_have_constant_weights(rng):
    gate = SharedExpertsGate(SoftmaxGate(), 2)
    Z = gate.design(rng.normal(size=(50, 1)))
    params = SharedGateParams(
        GateParams(np.array([[0.0, 0.0], [1.0, 2.0]])), np.array([0.25, 0.75])
    )
    weights = np.exp(gate.log_weights(params, Z))
    np.testing.assert_allclose(weights[:, :2], [[0.125, 0.375]] * 50)
    np.testing.assert_allclose(weights[:, 2:].sum(axis=1), 0.5)


def test_softmax_is_unchanged_when_a_constant_is_added_to_every_row(rng):
    gate = SoftmaxGate()
    Z = gate.design(rng.normal(size=(100, 2)))
    params = GateParams(rng.normal(size=(3, 3)))
    shifted = GateParams(params.coef + np.array([1.5, -2.0, 0.3]))
    np.testing.assert_allclose(
        gate.log_weights(shifted, Z), gate.log_weights(params, Z), atol=1e-12
    )


def test_normalized_sigmoid_is_not_translation_invariant(rng):
    gate = NormalizedSigmoidGate()
    Z = gate.design(rng.normal(size=(100, 2)))
    params = GateParams(rng.normal(size=(3, 3)))
    shifted = GateParams(params.coef + np.array([1.5, -2.0, 0.3]))
    assert not np.allclose(gate.log_weights(shifted, Z), gate.log_weights(params, Z))


def test_modified_softmax_with_identity_is_the_softmax_gate(rng):
    X = rng.normal(size=(100, 2))
    params = GateParams(np.vstack([np.zeros(3), rng.normal(size=(2, 3))]))
    np.testing.assert_array_equal(
        ModifiedSoftmaxGate("identity").log_weights(params, affine_of(X)),
        SoftmaxGate().log_weights(params, affine_of(X)),
    )
    np.testing.assert_array_equal(
        ModifiedSoftmaxGate("identity").design(X), SoftmaxGate().design(X)
    )


def affine_of(X):
    return np.hstack([np.ones((len(X), 1)), X])


def test_modified_softmax_gates_on_the_transformed_input(rng):
    X = rng.normal(size=(20, 2))
    np.testing.assert_allclose(
        ModifiedSoftmaxGate("tanh").design(X), affine_of(np.tanh(X))
    )
    np.testing.assert_allclose(
        ModifiedSoftmaxGate("sigmoid").design(X), affine_of(1 / (1 + np.exp(-X)))
    )
    assert ModifiedSoftmaxGate("tanh").design_names(["a", "b"]) == [
        "const",
        "tanh(a)",
        "tanh(b)",
    ]


def test_gradient_matches_finite_differences(gate_problem):
    gate, Z, params, resp = gate_problem
    m, p = params.n_experts, Z.shape[1]

    def objective(theta):
        candidate = gate.unpack(theta, m, p)
        return gate_objective(resp, gate.log_weights(candidate, Z))

    theta = gate.pack(params)
    assert theta.size == gate.n_free_parameters(m, p)
    numeric = approx_fprime(theta, objective, 1e-6)
    analytic = gate.gradient(params, Z, resp, gate.log_weights(params, Z))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-3)


def test_m_step_never_decreases_the_objective(gate_problem):
    gate, Z, params, resp = gate_problem
    log_g = gate.log_weights(params, Z)
    for _ in range(8):
        before = gate_objective(resp, log_g)
        params, log_g = gate.m_step(params, Z, resp, log_g)
        assert gate_objective(resp, log_g) >= before
        np.testing.assert_allclose(log_g, gate.log_weights(params, Z))


def test_pack_unpack_round_trip(gate_problem):
    gate, Z, params, _ = gate_problem
    m, p = params.n_experts, Z.shape[1]
    back = gate.unpack(gate.pack(params), m, p)
    np.testing.assert_allclose(gate.log_weights(back, Z), gate.log_weights(params, Z))


def test_fit_to_hard_labels_is_statsmodels_mnlogit(rng):
    n = 600
    X = rng.normal(size=(n, 2))
    truth = np.array([[0.0, 0.0, 0.0], [0.5, 1.0, -1.0], [-0.5, -1.0, 2.0]])
    gate = SoftmaxGate()
    Z = gate.design(X)
    probs = np.exp(gate.log_weights(GateParams(truth), Z))
    labels = (probs.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    resp = np.eye(3)[labels]
    fitted = gate.init_params(Z, resp, max_steps=100, tol=1e-15)
    reference = sm.MNLogit(labels, Z).fit(disp=0, method="newton", tol=1e-12)
    np.testing.assert_allclose(fitted.coef[1:], reference.params.T, rtol=1e-5)


def test_shared_weights_m_step_is_exact(rng):
    gate = SharedExpertsGate(SoftmaxGate(), 2, shared_weight="learned")
    Z = gate.design(rng.normal(size=(200, 1)))
    resp = rng.dirichlet(np.ones(4), size=200)
    params = random_gate_params(gate, 4, 2, rng)
    new, _ = gate.m_step(params, Z, resp)
    mass = resp[:, :2].sum(axis=0)
    np.testing.assert_allclose(new.shared_weights, mass / mass.sum())
    assert new.shared_share == pytest.approx(mass.sum() / 200)


def test_softmax_permute_reorders_weights_and_reanchors(rng):
    gate = SoftmaxGate()
    Z = gate.design(rng.normal(size=(50, 2)))
    params = GateParams(np.vstack([np.zeros(3), rng.normal(size=(2, 3))]))
    permuted = gate.permute(params, [2, 0, 1])
    assert np.all(permuted.coef[0] == 0)
    np.testing.assert_allclose(
        gate.log_weights(permuted, Z), gate.log_weights(params, Z)[:, [2, 0, 1]]
    )


def test_shared_gate_permutes_within_blocks_only(rng):
    gate = SharedExpertsGate(SoftmaxGate(), 1)
    params = random_gate_params(gate, 3, 2, rng)
    with pytest.raises(ValueError, match="keep the shared experts"):
        gate.permute(params, [1, 0, 2])


def test_parameter_counts():
    # softmax: reference row fixed; sigmoid: every row; shared: + omega (+ lambda)
    assert SoftmaxGate().degrees_of_freedom(3, 2) == 4
    assert ModifiedSoftmaxGate().degrees_of_freedom(3, 2) == 4
    assert NormalizedSigmoidGate().degrees_of_freedom(3, 2) == 6
    assert NormalizedSigmoidGate().degrees_of_freedom(1, 2) == 0
    assert SharedExpertsGate(SoftmaxGate(), 2).degrees_of_freedom(5, 2) == 4 + 1
    learned = SharedExpertsGate(NormalizedSigmoidGate(), 1, shared_weight="learned")
    assert learned.degrees_of_freedom(4, 2) == 6 + 0 + 1


def test_check_params_refuses_a_nonzero_reference_row():
    with pytest.raises(ValueError, match="fixes the first expert.s gate parameters"):
        SoftmaxGate().check_params(GateParams(np.ones((2, 2))), 2, 2)


def test_resolve_gate_by_name_and_object():
    assert type(resolve_gate("softmax")) is SoftmaxGate
    assert resolve_gate("modified_softmax").transform == "tanh"
    assert resolve_gate("normalized_sigmoid").top_k is None
    gate = NormalizedSigmoidGate(top_k=2)
    assert resolve_gate(gate) is gate
    with pytest.raises(ValueError, match="Unknown gate 'sparsemax'"):
        resolve_gate("sparsemax")
    with pytest.raises(ValueError, match="gate must be one of"):
        resolve_gate(3)


def test_gates_describe_themselves_for_summaries():
    assert SoftmaxGate().describe() == "softmax"
    assert ModifiedSoftmaxGate("sigmoid").describe() == "modified_softmax (sigmoid)"
    assert NormalizedSigmoidGate(top_k=2).describe() == "normalized_sigmoid (top 2)"
    shared = SharedExpertsGate(NormalizedSigmoidGate(), 2)
    assert shared.describe() == "normalized_sigmoid + 2 shared"


def test_every_gate_checks_its_number_of_experts():
    SoftmaxGate().check_n_experts(1)
    with pytest.raises(ValueError, match="top_k=3 is out of range for 2 routed"):
        SharedExpertsGate(NormalizedSigmoidGate(top_k=3), 1).check_n_experts(3)


@pytest.mark.parametrize(
    "gate", [SoftmaxGate(), NormalizedSigmoidGate()], ids=["softmax", "sigmoid"]
)
def test_split_atoms_copies_experts_that_share_their_mass(gate):
    params = GateParams(np.array([[0.0, 0.0], [0.7, -1.5], [-0.3, 2.0]]))
    split = gate.split_atoms(params, [0, 1, 1, 2, 2, 2])
    masses = gate.voronoi_masses(split)
    original = gate.voronoi_masses(params)
    if isinstance(gate, SoftmaxGate):  # masses are defined up to a common factor
        masses, original = masses / masses[0], original / original[0]
    np.testing.assert_allclose(
        [masses[0], masses[1:3].sum(), masses[3:].sum()], original, rtol=1e-12
    )
    # copies keep the slopes of the expert they copy
    np.testing.assert_allclose(split.coef[:, 1], [0.0, -1.5, -1.5, 2.0, 2.0, 2.0])
