"""Fits on public data that ship with scikit-learn and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.datasets import load_diabetes

from moestat import GaussianMoE


def engel():
    data = sm.datasets.engel.load_pandas().data
    return data[["income"]].to_numpy() / 1000, data["foodexp"].to_numpy() / 1000


def diabetes_bmi():
    data = load_diabetes()
    return data.data[:, [2]], data.target


@pytest.mark.parametrize("load", [engel, diabetes_bmi])
def test_one_expert_is_the_ols_fit(load):
    X, y = load()
    est = GaussianMoE(1, n_init=1).fit(X, y)
    ols = sm.OLS(y, sm.add_constant(X)).fit()
    np.testing.assert_allclose(est.log_likelihood_, ols.llf, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("load", "n_experts"), [(engel, 2), (diabetes_bmi, 2), (diabetes_bmi, 3)]
)
def test_default_restarts_find_the_best_maximum_of_a_long_search(load, n_experts):
    # The reference is the best of 60 screened random restarts, polished.
    X, y = load()
    reference = GaussianMoE(n_experts, n_init=60, init="random", random_state=123)
    reference.fit(X, y)
    default = GaussianMoE(n_experts, random_state=0).fit(X, y)
    # the same maximum: the likelihood is flat to 1e-4 along a ridge here
    assert default.log_likelihood_ >= reference.log_likelihood_ - 1e-3


def test_two_experts_describe_the_engel_heteroscedasticity():
    X, y = engel()
    one = GaussianMoE(1, n_init=1).fit(X, y)
    two = GaussianMoE(2, random_state=0).fit(X, y)
    assert two.bic(X, y) < one.bic(X, y) - 50
    # the expert that takes the rich households is the noisier one
    rich = two.predict_gate(np.array([[3.0]]))[0].argmax()
    assert two.expert_var_[rich] == two.expert_var_.max()
