"""The predictive distribution: quantiles, intervals and the predictive spread."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from moestat import (
    GaussianMoE,
    MixtureOfExpertsRegressor,
    MultinomialLogisticMoE,
    PolynomialMoE,
)
from moestat.datasets import make_moe_glm, make_moe_regression
from moestat.predictive import predictive_cdf, predictive_moments
from tests.custom_pieces import UnitGaussianExpert

LEVELS = np.array([1e-6, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1 - 1e-6])


@pytest.fixture(scope="module")
def gaussian_fit():
    X, y, truth = make_moe_regression(n_samples=2000, random_state=0)
    return GaussianMoE(2, random_state=0).fit(X, y), X, truth


@pytest.fixture(scope="module")
def glm_fits():
    fits = {}
    for family in ("poisson", "bernoulli"):
        X, y, _ = make_moe_glm(2000, family=family, random_state=0)
        est = PolynomialMoE(2, degree=1, family=family, random_state=0).fit(X, y)
        fits[family] = (est, X)
    return fits


def test_one_gaussian_expert_has_the_normal_quantiles():
    X, y, _ = make_moe_regression(n_samples=500, random_state=1)
    est = GaussianMoE(1, random_state=0).fit(X, y)
    expected = stats.norm.ppf(
        LEVELS[None, :],
        loc=est.predict(X[:50])[:, None],
        scale=np.sqrt(est.expert_var_[0]),
    )
    assert_allclose(est.predict_quantile(X[:50], LEVELS), expected, rtol=1e-9)


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_one_glm_expert_has_the_scipy_quantiles(family):
    X, y, _ = make_moe_glm(500, n_experts=1, family=family, random_state=1)
    est = PolynomialMoE(1, degree=1, family=family, random_state=0).fit(X, y)
    mu = est.predict(X[:50])[:, None]
    law = stats.poisson(mu) if family == "poisson" else stats.bernoulli(mu)
    levels = LEVELS[1:-1]
    assert_allclose(est.predict_quantile(X[:50], levels), law.ppf(levels[None, :]))


def test_mixture_cdf_at_the_quantile_is_the_level(gaussian_fit):
    est, X, _ = gaussian_fit
    quantiles = est.predict_quantile(X[:300], LEVELS)
    cdf = predictive_cdf(est.model_, X[:300], quantiles)
    assert_allclose(cdf, np.broadcast_to(LEVELS, cdf.shape), rtol=0, atol=1e-8)


def test_scalar_level_gives_one_quantile_per_row(gaussian_fit):
    est, X, _ = gaussian_fit
    median = est.predict_quantile(X[:10], 0.5)
    assert median.shape == (10,)
    assert_allclose(median, est.predict_quantile(X[:10], [0.5])[:, 0])


def test_quantiles_increase_with_the_level(gaussian_fit, glm_fits):
    levels = np.linspace(0.001, 0.999, 41)
    est, X, _ = gaussian_fit
    assert np.all(np.diff(est.predict_quantile(X[:200], levels), axis=1) > 0)
    for glm, X_glm in glm_fits.values():
        assert np.all(np.diff(glm.predict_quantile(X_glm[:200], levels), axis=1) >= 0)


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_discrete_quantile_is_the_smallest_value_reaching_the_level(glm_fits, family):
    est, X = glm_fits[family]
    levels = LEVELS[1:-1]
    quantiles = est.predict_quantile(X[:300], levels)
    assert np.all(quantiles == np.round(quantiles))
    assert np.all(predictive_cdf(est.model_, X[:300], quantiles) >= levels)
    assert np.all(predictive_cdf(est.model_, X[:300], quantiles - 1) < levels)


def test_interval_is_the_pair_of_equal_tail_quantiles(gaussian_fit):
    est, X, _ = gaussian_fit
    interval = est.predict_interval(X[:20], alpha=0.2)
    assert interval.shape == (20, 2)
    assert_allclose(interval, est.predict_quantile(X[:20], [0.1, 0.9]))


def test_ninety_percent_interval_covers_ninety_percent_of_fresh_draws(gaussian_fit):
    est, X, truth = gaussian_fit
    rng = np.random.default_rng(11)
    X_new = rng.uniform(X.min(axis=0), X.max(axis=0), size=(20_000, X.shape[1]))
    y_new, _ = truth.sample(X_new, rng)
    low, high = est.predict_interval(X_new, alpha=0.1).T
    coverage = np.mean((y_new >= low) & (y_new <= high))
    assert 0.87 <= coverage <= 0.93


@pytest.mark.parametrize("kind", ["gaussian", "poisson", "bernoulli"])
def test_predictive_std_matches_the_spread_of_draws_from_the_model(
    gaussian_fit, glm_fits, kind
):
    est, X = (
        (gaussian_fit[0], gaussian_fit[1]) if kind == "gaussian" else glm_fits[kind]
    )
    rows, draws = X[:5], 40_000
    mean, std = est.predict(rows, return_std=True)
    y = est.sample(np.repeat(rows, draws, axis=0), random_state=3).reshape(5, draws)
    # the standard error of a sample variance: sqrt((m4 - s^4) / N)
    centred = y - y.mean(axis=1, keepdims=True)
    variance = (centred**2).mean(axis=1)
    error = np.sqrt(((centred**4).mean(axis=1) - variance**2) / draws)
    assert np.all(np.abs(variance - std**2) <= 5 * error)
    assert np.all(np.abs(y.mean(axis=1) - mean) <= 5 * np.sqrt(variance / draws))


def test_predictive_variance_is_the_law_of_total_variance(gaussian_fit):
    est, X, _ = gaussian_fit
    g, mu = est.predict_gate(X[:50]), est.predict_experts(X[:50])
    mean = np.sum(g * mu, axis=1)
    expected = np.sum(g * (est.expert_var_ + mu**2), axis=1) - mean**2
    assert_allclose(predictive_moments(est.model_, X[:50])[1], expected, rtol=1e-10)
    assert_allclose(est.predict(X[:50], return_std=True)[1], np.sqrt(expected))


def test_return_std_false_returns_the_mean_alone(gaussian_fit):
    est, X, _ = gaussian_fit
    assert_allclose(est.predict(X[:5], return_std=False), est.predict(X[:5]))
    assert est.predict(X[:5]).shape == (5,)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, [0.5, 1.5], [[0.5]]])
def test_levels_outside_the_open_unit_interval_are_refused(gaussian_fit, q):
    est, X, _ = gaussian_fit
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        est.predict_quantile(X[:3], q)


@pytest.mark.parametrize("alpha", [0.0, 1.0, "0.1"])
def test_interval_alpha_outside_zero_one_is_refused(gaussian_fit, alpha):
    est, X, _ = gaussian_fit
    with pytest.raises(ValueError, match="alpha"):
        est.predict_interval(X[:3], alpha=alpha)


def test_experts_of_unknown_distribution_are_refused_by_name():
    X, y, _ = make_moe_regression(n_samples=300, random_state=0)
    est = MixtureOfExpertsRegressor(2, expert=UnitGaussianExpert(), random_state=0)
    est.fit(X, y)
    with pytest.raises(ValueError, match="UnitGaussianExpert"):
        est.predict_quantile(X[:3], 0.5)


def test_classifiers_give_class_probabilities_not_quantiles():
    clf = MultinomialLogisticMoE()
    assert hasattr(clf, "predict_proba")
    assert not hasattr(clf, "predict_quantile")
    assert not hasattr(clf, "predict_interval")
