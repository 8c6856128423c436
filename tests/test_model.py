"""MixtureOfExperts: the conditional density, sampling and relabelling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from moestat import GaussianExpert, MixtureOfExperts, SoftmaxGate
from tests.helpers import random_model


@pytest.fixture
def model(rng):
    return random_model(rng, n_experts=3, n_features=2)


@pytest.fixture
def data(rng, model):
    X = rng.uniform(-1, 1, size=(500, 2))
    y, _ = model.sample(X, rng)
    return X, y


def test_log_pdf_is_the_gate_weighted_sum_of_normal_densities(model, data):
    X, y = data
    weights = model.gate_weights(X)
    means = model.expert_means(X)
    sd = np.sqrt(model.params.expert.var)
    density = np.sum(weights * norm.pdf(y[:, None], means, sd), axis=1)
    np.testing.assert_allclose(model.log_pdf(X, y), np.log(density), rtol=1e-10)


def test_responsibilities_sum_to_one(model, data):
    X, y = data
    resp = model.responsibilities(X, y)
    assert np.all(resp >= 0)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0)


def test_predict_is_the_gate_weighted_mean(model, data):
    X, _ = data
    expected = np.sum(model.gate_weights(X) * model.expert_means(X), axis=1)
    np.testing.assert_allclose(model.predict(X), expected)


def test_likelihood_is_unchanged_when_experts_are_permuted(model, data):
    X, y = data
    permuted = model.permute([1, 2, 0])
    np.testing.assert_allclose(permuted.log_pdf(X, y), model.log_pdf(X, y))
    np.testing.assert_allclose(
        permuted.responsibilities(X, y), model.responsibilities(X, y)[:, [1, 2, 0]]
    )


def test_match_experts_undoes_a_permutation(model):
    shuffled = model.permute([2, 0, 1])
    aligned = shuffled.align_to(model)
    np.testing.assert_allclose(aligned.params.expert.coef, model.params.expert.coef)
    np.testing.assert_allclose(aligned.params.gate.coef, model.params.gate.coef)


def test_samples_follow_the_conditional_mean_and_variance(rng, model):
    x = np.full((40_000, 2), 0.3)
    y, labels = model.sample(x, rng)
    weights = model.gate_weights(x[:1])[0]
    means = model.expert_means(x[:1])[0]
    var = (
        np.sum(weights * (model.params.expert.var + means**2))
        - np.sum(weights * means) ** 2
    )
    np.testing.assert_allclose(
        np.bincount(labels, minlength=3) / len(y), weights, atol=0.01
    )
    assert abs(y.mean() - model.predict(x[:1])[0]) < 4 * np.sqrt(var / len(y))
    np.testing.assert_allclose(y.var(), var, rtol=0.05)


def test_sampling_is_repeatable_with_a_seed(model, data):
    X, _ = data
    np.testing.assert_array_equal(model.sample(X, 7)[0], model.sample(X, 7)[0])


def test_free_parameter_count(model):
    # gate: (m - 1)(d + 1); experts: m (d + 1) coefficients + m variances
    assert model.n_free_parameters(2) == 2 * 3 + 3 * 3 + 3


def test_a_specification_without_parameters_says_so():
    spec = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    with pytest.raises(ValueError, match="no parameter values"):
        spec.predict(np.zeros((2, 1)))


def test_match_experts_needs_equal_sizes(rng, model):
    other = random_model(rng, n_experts=2, n_features=2)
    with pytest.raises(ValueError, match="Cannot match 3 experts to 2"):
        model.match_experts(other)


def test_equal_designs_are_held_once():
    """An affine gate with linear experts: one [1, x] array serves both."""
    X = np.random.default_rng(0).uniform(-1, 1, size=(50, 2))
    linear = MixtureOfExperts(SoftmaxGate(), GaussianExpert()).design(X)
    assert linear.gate is linear.expert
    quadratic = MixtureOfExperts(SoftmaxGate(), GaussianExpert(degree=2)).design(X)
    assert quadratic.gate is not quadratic.expert
    np.testing.assert_array_equal(quadratic.gate, np.column_stack([np.ones(50), X]))
    assert quadratic.expert.shape == (50, 6)
