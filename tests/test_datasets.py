"""make_moe_regression: data drawn from a true model it returns."""

from __future__ import annotations

import numpy as np
import pytest

from moestat import MixtureOfExperts, NormalizedSigmoidGate, SharedExpertsGate
from moestat.datasets import make_moe_regression


def test_shapes_and_the_true_model():
    X, y, truth = make_moe_regression(
        n_samples=300, n_experts=3, n_features=2, degree=2, random_state=0
    )
    assert X.shape == (300, 2) and y.shape == (300,)
    assert isinstance(truth, MixtureOfExperts) and truth.n_experts == 3
    assert truth.params.expert.coef.shape == (3, 6)
    assert np.all(truth.params.gate.coef[0] == 0)
    assert X.min() >= -1 and X.max() <= 1


def test_a_seed_repeats_the_data():
    first = make_moe_regression(n_samples=50, random_state=3)
    second = make_moe_regression(n_samples=50, random_state=3)
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize(
    "gate",
    [
        "softmax",
        "modified_softmax",
        "normalized_sigmoid",
        NormalizedSigmoidGate(top_k=1),
    ],
)
@pytest.mark.parametrize("n_shared", [0, 2])
def test_every_gate_with_and_without_shared_experts(gate, n_shared):
    X, y, truth = make_moe_regression(
        n_samples=200, n_experts=3, gate=gate, n_shared_experts=n_shared, random_state=1
    )
    assert truth.n_experts == 3 + n_shared
    assert isinstance(truth.gate, SharedExpertsGate) == bool(n_shared)
    weights = truth.gate_weights(X)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    if n_shared:
        np.testing.assert_allclose(weights[:, :n_shared].sum(axis=1), 0.5)
    assert np.all(np.isfinite(y))


def test_the_responses_follow_the_truth():
    X, y, truth = make_moe_regression(n_samples=20_000, random_state=2)
    residual = y - truth.predict(X)
    assert abs(residual.mean()) < 0.03
