"""DataFrames in and out, and fits from formulas (statsmodels' engel data)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from statsmodels.datasets import engel

from moestat import GaussianMoE, MultinomialLogisticMoE, PolynomialMoE


@pytest.fixture(scope="module")
def food():
    """Engel's food expenditure data (shipped with statsmodels)."""
    return engel.load_pandas().data


def test_a_formula_fit_equals_the_array_fit(food):
    formula = GaussianMoE.from_formula("foodexp ~ income", food, random_state=0)
    arrays = GaussianMoE(random_state=0).fit(
        food[["income"]].to_numpy(), food["foodexp"].to_numpy()
    )
    np.testing.assert_allclose(formula.gate_coef_, arrays.gate_coef_, atol=1e-10)
    np.testing.assert_allclose(formula.expert_coef_, arrays.expert_coef_, rtol=1e-10)
    np.testing.assert_allclose(formula.expert_var_, arrays.expert_var_, rtol=1e-10)
    np.testing.assert_allclose(formula.log_likelihood_, arrays.log_likelihood_, 1e-10)
    assert formula.expert_feature_names_ == ["const", "income"]
    assert formula.response_name_ == "foodexp"


def test_a_gate_formula_gives_the_gate_its_own_terms(food):
    est = GaussianMoE.from_formula(
        "foodexp ~ income",
        food,
        gate_formula="~ np.log(income)",
        n_init=2,
        random_state=0,
    )
    X = np.column_stack([food["income"], np.log(food["income"])])
    arrays = GaussianMoE(
        gate_features=[1], expert_features=[0], n_init=2, random_state=0
    ).fit(X, food["foodexp"].to_numpy())
    np.testing.assert_allclose(est.gate_coef_, arrays.gate_coef_, rtol=1e-10)
    np.testing.assert_allclose(est.expert_coef_, arrays.expert_coef_, rtol=1e-10)
    assert est.gate_feature_names_ == ["const", "np.log(income)"]
    assert est.expert_feature_names_ == ["const", "income"]
    names = est.inference().params.index
    assert "gate2[np.log(income)]" in names and "expert1[income]" in names
    text = est.summary().as_text()
    assert "np.log(income)" in text and "foodexp" in text
    assert (est.formula_, est.gate_formula_) == ("foodexp ~ income", "~ np.log(income)")


def test_prediction_on_new_data_goes_through_the_formulas(food):
    est = GaussianMoE.from_formula(
        "foodexp ~ center(income)",
        food,
        gate_formula="~ np.log(income)",
        n_init=1,
        random_state=0,
    )
    new = food[["income"]].iloc[:5]  # no response, no design columns
    centred = food["income"].iloc[:5] - food["income"].mean()  # the fit's mean
    X = pd.DataFrame(
        {"center(income)": centred, "np.log(income)": np.log(new["income"])}
    )
    np.testing.assert_allclose(est.predict(new), est.predict(X), rtol=1e-12)
    np.testing.assert_allclose(
        est.score_samples(food.iloc[:5], food["foodexp"].iloc[:5]),
        est.score_samples(X, food["foodexp"].iloc[:5]),
        rtol=1e-12,
    )
    assert est.predict_gate(new).shape == (5, 2)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(new), est.predict(new))


def test_a_classifier_from_a_formula_keeps_its_labels(rng):
    data = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600)})
    # b chooses the expert, whose odds of "yes" rise or fall with a
    slope = np.where(data["b"] > 0, 3.0, -3.0)
    yes = rng.random(600) < 1 / (1 + np.exp(-slope * data["a"]))
    data["kind"] = np.where(yes, "yes", "no")
    clf = MultinomialLogisticMoE.from_formula(
        "kind ~ a", data, gate_formula="~ b", n_init=1, alpha=1.0, random_state=0
    )
    assert clf.classes_.tolist() == ["no", "yes"]
    assert set(clf.predict(data)) <= {"no", "yes"}
    assert clf.gate_feature_names_ == ["const", "b"]


@pytest.mark.parametrize(
    ("formula", "gate_formula", "message"),
    [
        ("~ income", None, "has no response"),
        ("foodexp ~ income - 1", None, "has no intercept"),
        ("foodexp ~ income", "foodexp ~ income", "gate formula .* has a response"),
    ],
)
def test_formulas_that_cannot_work_are_refused(food, formula, gate_formula, message):
    with pytest.raises(ValueError, match=message):
        GaussianMoE.from_formula(formula, food, gate_formula=gate_formula, n_init=1)


def test_from_formula_refuses_feature_selections(food):
    with pytest.raises(ValueError, match="takes the covariates from the formulas"):
        GaussianMoE.from_formula("foodexp ~ income", food, gate_features=["income"])


def test_a_later_array_fit_forgets_the_formulas(food):
    est = GaussianMoE.from_formula("foodexp ~ income", food, n_init=1)
    est.fit(food[["income"]].to_numpy(), food["foodexp"].to_numpy())
    assert not hasattr(est, "formula_")
    assert est.predict(food[["income"]].to_numpy()).shape == (len(food),)


def test_data_frame_names_reach_the_summary_and_the_table(food):
    est = PolynomialMoE(2, degree=2, n_init=1, random_state=0)
    est.fit(food[["income"]], food["foodexp"])
    assert est.feature_names_in_.tolist() == ["income"]
    table = est.inference().to_frame()
    assert "expert1[income^2]" in table.index
    assert "gate2[income]" in table.index
    text = est.summary().as_text()
    assert "Response:" in text and "foodexp" in text


def test_an_unnamed_response_is_called_y(food):
    est = GaussianMoE(n_init=1).fit(food[["income"]], food["foodexp"].to_numpy())
    assert est.response_name_ == "y"


def test_a_categorical_terms_name_keeps_its_brackets_in_the_summary(food):
    """``C(rich)[T.True]`` is printed whole, not cut at its closing bracket."""
    data = food.assign(rich=food["income"] > food["income"].median())
    est = GaussianMoE.from_formula(
        "foodexp ~ income + C(rich)", data, n_init=1, random_state=0
    )
    text = str(est.summary())
    assert "C(rich)[T.True] " in text
    assert "C(rich)[T.True\n" not in text
