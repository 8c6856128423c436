"""The held-out log-likelihood scorer in scikit-learn's model selection."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from moestat import GaussianMoE, MultinomialLogisticMoE
from moestat.datasets import make_moe_classification, make_moe_regression
from moestat.metrics import log_likelihood_scorer


@pytest.fixture(scope="module")
def data():
    X, y, _ = make_moe_regression(n_samples=900, random_state=0)
    return X, y


def test_scorer_is_the_mean_log_density_of_the_held_out_samples(data):
    X, y = data
    est = GaussianMoE(2, random_state=0).fit(X[:600], y[:600])
    expected = np.mean(est.score_samples(X[600:], y[600:]))
    assert log_likelihood_scorer(est, X[600:], y[600:]) == pytest.approx(expected)


def test_weighted_scorer_is_the_weighted_mean(data):
    X, y = data
    est = GaussianMoE(2, random_state=0).fit(X[:600], y[:600])
    weight = np.linspace(0.5, 2.0, 300)
    expected = np.average(est.score_samples(X[600:], y[600:]), weights=weight)
    score = log_likelihood_scorer(est, X[600:], y[600:], sample_weight=weight)
    assert score == pytest.approx(expected)


def test_pipeline_scores_are_the_final_estimator_on_transformed_x(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), GaussianMoE(2, random_state=0))
    pipe.fit(X[:600], y[:600])
    inner = pipe[-1].score_samples(pipe[0].transform(X[600:]), y[600:])
    assert log_likelihood_scorer(pipe, X[600:], y[600:]) == pytest.approx(
        np.mean(inner)
    )


def test_cross_validation_through_a_pipeline_gives_finite_scores(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), GaussianMoE(2, random_state=0))
    scores = cross_val_score(
        pipe, X, y, scoring=log_likelihood_scorer, cv=3, error_score="raise"
    )
    assert scores.shape == (3,)
    assert np.all(np.isfinite(scores))


def test_scaling_x_leaves_the_cross_validated_log_likelihood_unchanged(data):
    X, y = data
    cv = KFold(3, shuffle=True, random_state=0)
    bare = cross_val_score(
        GaussianMoE(2, random_state=0), X, y, scoring=log_likelihood_scorer, cv=cv
    )
    scaled = cross_val_score(
        make_pipeline(StandardScaler(), GaussianMoE(2, random_state=0)),
        X,
        y,
        scoring=log_likelihood_scorer,
        cv=cv,
    )
    assert_allclose(scaled, bare, rtol=1e-5)


def test_grid_search_picks_two_experts_on_a_two_expert_truth(data):
    X, y = data
    search = GridSearchCV(
        make_pipeline(StandardScaler(), GaussianMoE(random_state=0)),
        {"gaussianmoe__n_experts": [1, 2]},
        scoring=log_likelihood_scorer,
        cv=3,
        error_score="raise",
    ).fit(X, y)
    assert search.best_params_ == {"gaussianmoe__n_experts": 2}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


# the fit itself is not the subject here: whether EM reaches its tolerance on
# every fold does not change what is scored
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_classifiers_are_scored_by_their_label_log_likelihood():
    X, y, _ = make_moe_classification(240, n_classes=3, random_state=0)
    scores = cross_val_score(
        make_pipeline(
            StandardScaler(),
            MultinomialLogisticMoE(2, alpha=1.0, n_init=1, random_state=0),
        ),
        X,
        y,
        scoring=log_likelihood_scorer,
        cv=3,
        error_score="raise",
    )
    assert np.all(np.isfinite(scores))
    assert np.all(scores < 0)


def test_estimators_without_a_conditional_density_are_refused(data):
    X, y = data
    fitted = make_pipeline(StandardScaler(), LinearRegression()).fit(X, y)
    with pytest.raises(TypeError, match="score_samples\\(X, y\\)"):
        log_likelihood_scorer(fitted, X, y)
