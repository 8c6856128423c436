"""Responses outside a family's support are refused, at fit and at scoring alike.

Bernoulli experts model ``y`` in ``[0, 1]`` and Poisson experts ``y >= 0``
(non-integers give the quasi-Poisson fit); a boolean ``y`` is read as 0/1.
The log-likelihood of a value the model cannot produce is not a number to
compare models by, so ``score_samples``, ``bic`` and ``aic`` refuse it with
the rule ``fit`` applies.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from moestat import (
    GateParams,
    GaussianMoE,
    GLMExpert,
    GLMExpertParams,
    MixtureOfExperts,
    MoEParams,
    MultinomialLogisticMoE,
    PolynomialMoE,
    SoftmaxGate,
)

N_SAMPLES = 300


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(0).uniform(-2.0, 2.0, size=(N_SAMPLES, 1))


@pytest.fixture(scope="module")
def labels(X) -> np.ndarray:
    """Boolean responses, ``True`` more often for larger x."""
    u = np.random.default_rng(1).random(N_SAMPLES)
    return u < 1.0 / (1.0 + np.exp(-2.0 * X[:, 0]))


@pytest.fixture(scope="module")
def counts(X) -> np.ndarray:
    """Poisson counts whose mean falls with |x| (one expert per side)."""
    rate = np.exp(2.0 - np.abs(X[:, 0]))
    return np.random.default_rng(2).poisson(rate).astype(float)


def fit_quietly(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(X, y)


def glm_moe(family: str) -> PolynomialMoE:
    return PolynomialMoE(2, degree=1, family=family, n_init=1, random_state=0)


@pytest.fixture(scope="module")
def bernoulli_fit(X, labels) -> PolynomialMoE:
    return fit_quietly(glm_moe("bernoulli"), X, labels.astype(float))


@pytest.fixture(scope="module")
def poisson_fit(X, counts) -> PolynomialMoE:
    return fit_quietly(glm_moe("poisson"), X, counts)


SCORERS = ["score_samples", "bic", "aic", "predict_posterior"]


# -- Bernoulli: 0 <= y <= 1 ----------------------------------------------------
@pytest.mark.parametrize("scorer", SCORERS)
def test_bernoulli_scoring_refuses_y_above_one(bernoulli_fit, X, scorer):
    y = np.full(5, 2.0)
    with pytest.raises(ValueError, match=r"family='bernoulli'.*got 2\b") as error:
        getattr(bernoulli_fit, scorer)(X[:5], y)
    assert "np." not in str(error.value)


def test_bernoulli_scoring_refuses_negative_y_as_fit_does(bernoulli_fit, X):
    y = np.array([0.0, 1.0, -1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"family='bernoulli'.*got -1\b"):
        bernoulli_fit.score_samples(X[:6], y)
    with pytest.raises(ValueError, match=r"family='bernoulli'.*got -1\b"):
        glm_moe("bernoulli").fit(X[:6], y)


def test_bernoulli_scoring_accepts_labels_and_proportions(bernoulli_fit, X):
    log_lik = bernoulli_fit.score_samples(X[:4], [0.0, 1.0, 0.25, 1.0])
    assert np.all(np.isfinite(log_lik)) and np.all(log_lik <= 0.0)


# -- Poisson: y >= 0, non-integers quasi-Poisson -----------------------------
@pytest.mark.parametrize("bad", [-1.0, -0.5])
@pytest.mark.parametrize("scorer", SCORERS)
def test_poisson_scoring_refuses_negative_y(poisson_fit, X, scorer, bad):
    y = np.array([0.0, 3.0, bad])
    with pytest.raises(ValueError, match=rf"family='poisson'.*got {bad:g}\b"):
        getattr(poisson_fit, scorer)(X[:3], y)


@pytest.mark.parametrize("bad", [-1.0, -0.5])
def test_poisson_fit_refuses_negative_y(X, counts, bad):
    y = counts.copy()
    y[7] = bad
    with pytest.raises(ValueError, match=rf"family='poisson'.*got {bad:g}\b"):
        glm_moe("poisson").fit(X, y)


def test_poisson_accepts_non_integer_y_at_fit_and_at_scoring(poisson_fit, X, counts):
    y = counts + 0.5
    quasi = fit_quietly(glm_moe("poisson"), X, y)
    assert np.isfinite(quasi.log_likelihood_)
    for fitted in (quasi, poisson_fit):
        assert np.all(np.isfinite(fitted.score_samples(X[:3], [0.5, 2.5, 0.0])))
        assert np.isfinite(fitted.bic(X, y))


def test_the_refusal_lists_the_offending_values_plainly(poisson_fit, X):
    y = np.array([-3.0, 1.0, -0.25, -3.0])
    with pytest.raises(ValueError) as error:
        poisson_fit.score_samples(X[:4], y)
    message = str(error.value)
    assert "-3.0, -0.25" in message
    assert "np." not in message and "array(" not in message


# -- boolean responses are 0/1 -------------------------------------------------
REGRESSORS = {
    "GaussianMoE": lambda: GaussianMoE(2, n_init=1, random_state=0),
    "PolynomialMoE-gaussian": lambda: PolynomialMoE(
        2, degree=1, n_init=1, random_state=0
    ),
    "PolynomialMoE-poisson": lambda: glm_moe("poisson"),
    "PolynomialMoE-bernoulli": lambda: glm_moe("bernoulli"),
}


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_a_boolean_y_is_fitted_as_zero_one(name, X, labels):
    on_bool = fit_quietly(REGRESSORS[name](), X, labels)
    on_float = fit_quietly(REGRESSORS[name](), X, labels.astype(float))
    assert on_bool.log_likelihood_ == pytest.approx(on_float.log_likelihood_)
    np.testing.assert_allclose(on_bool.expert_coef_, on_float.expert_coef_)
    np.testing.assert_allclose(
        on_bool.score_samples(X, labels), on_float.score_samples(X, labels * 1.0)
    )
    assert on_bool.bic(X, labels) == pytest.approx(on_float.bic(X, labels * 1.0))
    assert np.isfinite(on_bool.score(X, labels))


def test_a_boolean_y_is_two_classes_for_the_classifier(X, labels):
    clf = fit_quietly(MultinomialLogisticMoE(2, n_init=1, random_state=0), X, labels)
    assert clf.classes_.tolist() == [False, True]
    assert set(clf.predict(X).tolist()) <= {False, True}
    assert np.all(np.isfinite(clf.score_samples(X, labels)))
    assert 0.5 < clf.score(X, labels) <= 1.0


def test_the_classifier_names_unseen_labels_plainly(X, labels):
    clf = fit_quietly(MultinomialLogisticMoE(2, n_init=1, random_state=0), X, labels)
    with pytest.raises(ValueError, match="labels not seen in fit") as error:
        clf.score_samples(X[:2], [2, 2])
    assert "np." not in str(error.value) and "array(" not in str(error.value)


# -- Poisson predictions stay finite under extrapolation ---------------------
def test_poisson_predict_never_gives_nan_far_from_the_data(poisson_fit, X):
    far = np.vstack([X * 1e3, [[1e6]], [[-1e6]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        mean = poisson_fit.predict(far)
    assert not np.any(np.isnan(mean)) and np.all(mean >= 0.0)


def poisson_model(gate_coef, expert_coef) -> MixtureOfExperts:
    params = MoEParams(
        GateParams(np.array(gate_coef)), GLMExpertParams(np.array(expert_coef))
    )
    return MixtureOfExperts(SoftmaxGate(), GLMExpert("poisson"), params)


def predict_strictly(model, x):
    """``model.predict`` with every floating-point warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return model.predict(np.asarray(x, dtype=float)[:, None])


def test_poisson_predict_ignores_an_exploding_expert_the_gate_switches_off():
    # expert 1 grows as exp(10 x) where the gate gives it weight exp(-50 x)
    model = poisson_model([[0.0, 0.0], [0.0, -50.0]], [[1.0, 0.0], [0.0, 10.0]])
    mean = predict_strictly(model, [20.0, 100.0, 1e4])
    np.testing.assert_allclose(mean, np.e, rtol=1e-12)


def test_poisson_predict_is_plus_inf_only_beyond_the_float_range():
    model = poisson_model(np.zeros((2, 2)), [[0.0, 1.0], [0.0, -1.0]])
    mean = predict_strictly(model, [700.0, -700.0, 800.0])
    np.testing.assert_allclose(mean[:2], 0.5 * np.exp(700.0), rtol=1e-12)
    assert mean[2] == np.inf
