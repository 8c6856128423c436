"""The softmax gate: weights, identifiability, M-step and gradient."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.optimize import approx_fprime

from moestat import GateParams, SoftmaxGate
from moestat.gates import resolve_gate


@pytest.fixture
def gate_problem(rng):
    n, d, m = 400, 2, 3
    X = rng.normal(size=(n, d))
    gate = SoftmaxGate()
    Z = gate.design(X)
    coef = rng.normal(size=(m, d + 1))
    coef -= coef[0]
    resp = rng.dirichlet(np.ones(m), size=n)
    return gate, Z, GateParams(coef), resp


def test_weights_are_probabilities(gate_problem):
    gate, Z, params, _ = gate_problem
    weights = np.exp(gate.log_weights(params, Z))
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)


def test_weights_unchanged_when_a_constant_is_added_to_every_row(gate_problem):
    gate, Z, params, _ = gate_problem
    shifted = GateParams(params.coef + np.array([1.5, -2.0, 0.3]))
    np.testing.assert_allclose(
        gate.log_weights(shifted, Z), gate.log_weights(params, Z), atol=1e-12
    )


def test_log_weights_stay_finite_for_huge_scores():
    gate = SoftmaxGate()
    Z = gate.design(np.array([[1e3], [-1e3]]))
    params = GateParams(np.array([[0.0, 0.0], [0.0, 5.0]]))
    log_g = gate.log_weights(params, Z)
    assert np.all(np.isfinite(log_g))
    np.testing.assert_allclose(np.exp(log_g).sum(axis=1), 1.0)


def test_gradient_matches_finite_differences(gate_problem):
    gate, Z, params, resp = gate_problem
    m, p = params.coef.shape

    def objective(theta):
        candidate = gate.unpack(theta, m, p)
        return np.sum(resp * gate.log_weights(candidate, Z))

    theta = gate.pack(params)
    numeric = approx_fprime(theta, objective, 1e-6)
    analytic = gate.gradient(params, Z, resp, gate.log_weights(params, Z))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-4)


def test_m_step_never_decreases_the_objective(gate_problem):
    gate, Z, params, resp = gate_problem
    log_g = gate.log_weights(params, Z)
    for _ in range(10):
        before = np.sum(resp * log_g)
        params, log_g = gate.m_step(params, Z, resp, log_g)
        assert np.sum(resp * log_g) >= before
        np.testing.assert_allclose(log_g, gate.log_weights(params, Z))
    assert np.all(params.coef[0] == 0)


def test_fit_to_hard_labels_is_statsmodels_mnlogit(rng):
    n = 600
    X = rng.normal(size=(n, 2))
    truth = np.array([[0.0, 0.0, 0.0], [0.5, 1.0, -1.0], [-0.5, -1.0, 2.0]])
    gate = SoftmaxGate()
    Z = gate.design(X)
    probs = np.exp(gate.log_weights(GateParams(truth), Z))
    labels = (probs.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    resp = np.eye(3)[labels]
    fitted = gate.init_params(Z, resp, max_steps=100)
    reference = sm.MNLogit(labels, Z).fit(disp=0, method="newton", tol=1e-12)
    np.testing.assert_allclose(fitted.coef[1:], reference.params.T, rtol=1e-5)


def test_permute_reorders_weights_and_reanchors(gate_problem):
    gate, Z, params, _ = gate_problem
    perm = [2, 0, 1]
    permuted = gate.permute(params, perm)
    assert np.all(permuted.coef[0] == 0)
    np.testing.assert_allclose(
        gate.log_weights(permuted, Z), gate.log_weights(params, Z)[:, perm]
    )


def test_pack_unpack_round_trip(gate_problem):
    gate, _, params, _ = gate_problem
    m, p = params.coef.shape
    theta = gate.pack(params)
    assert theta.size == gate.n_free_parameters(m, p) == (m - 1) * p
    np.testing.assert_array_equal(gate.unpack(theta, m, p).coef, params.coef)


def test_check_params_refuses_a_nonzero_reference_row():
    with pytest.raises(ValueError, match="first expert's gate parameters"):
        SoftmaxGate().check_params(GateParams(np.ones((2, 2))))


def test_resolve_gate_by_name_and_object():
    assert isinstance(resolve_gate("softmax"), SoftmaxGate)
    gate = SoftmaxGate()
    assert resolve_gate(gate) is gate
    with pytest.raises(ValueError, match="Unknown gate 'sparsemax'"):
        resolve_gate("sparsemax")
    with pytest.raises(ValueError, match="gate must be one of"):
        resolve_gate(3)
