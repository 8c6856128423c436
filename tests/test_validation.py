"""Bad input is refused at the door with a ValueError that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import DataConversionWarning, NotFittedError

from moestat import (
    GateParams,
    GaussianExpertParams,
    GaussianMoE,
    ModifiedSoftmaxGate,
    MoEParams,
    MultinomialLogisticMoE,
    NormalizedSigmoidGate,
    PolynomialMoE,
    SharedExpertsGate,
    SoftmaxGate,
)
from moestat._validation import plain
from moestat.datasets import make_moe_regression
from moestat.exceptions import DegenerateFitWarning


@pytest.fixture
def data(rng):
    X = rng.uniform(-1, 1, size=(100, 2))
    y = X[:, 0] + rng.normal(scale=0.2, size=100)
    return X, y


def fit(X, y, **params):
    return GaussianMoE(**{"n_init": 1, "random_state": 0, **params}).fit(X, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x(data, bad):
    X, y = data
    X = X.copy()
    X[3, 1] = bad
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        fit(X, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_y(data, bad):
    X, y = data
    y = y.copy()
    y[5] = bad
    with pytest.raises(ValueError, match="Input y contains (NaN|infinity)"):
        fit(X, y)


def test_lengths_differ(data):
    X, y = data
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        fit(X, y[:-1])


def test_y_with_several_columns(data):
    X, y = data
    with pytest.raises(ValueError, match="y should be a 1d array"):
        fit(X, np.column_stack([y, y]))


def test_y_as_a_column_vector_is_raveled_with_a_warning(data):
    # scikit-learn's convention for single-output regressors.
    X, y = data
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        column = fit(X, y[:, None])
    np.testing.assert_array_equal(column.expert_coef_, fit(X, y).expert_coef_)


def test_too_few_samples_for_the_experts(data):
    X, y = data
    with pytest.raises(
        ValueError,
        match=r"n_experts=4 needs at least 8 samples.*"
        r"n_samples = 5",
    ):
        fit(X[:5], y[:5], n_experts=4)


def test_constant_y(data):
    X, _ = data
    with pytest.raises(ValueError, match="y is constant"):
        fit(X, np.full(len(X), 2.5))


def test_empty_input():
    with pytest.raises(ValueError, match="0 sample"):
        fit(np.empty((0, 2)), np.empty(0))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_experts": 0}, "'n_experts' parameter of GaussianMoE must be an int"),
        ({"n_experts": 2.5}, "'n_experts' parameter"),
        (
            {"gate": "sparsemax"},
            "'gate' parameter of GaussianMoE must be one of 'softmax', "
            "'modified_softmax', 'normalized_sigmoid' or a gate object; "
            "got 'sparsemax'",
        ),
        (
            {"solver": "sgd"},
            "'solver' parameter of GaussianMoE must be one of 'em', 'mle'; got 'sgd'",
        ),
        ({"init": "spectral"}, "'init' parameter"),
        ({"n_init": 0}, "'n_init' parameter"),
        ({"tol": -1.0}, "'tol' parameter"),
        ({"max_iter": 0}, "'max_iter' parameter"),
        ({"reg_var": -1e-3}, "'reg_var' parameter"),
        ({"shared_variance": "yes"}, "'shared_variance' parameter"),
        ({"random_state": "seed"}, "'random_state' parameter"),
    ],
)
def test_bad_hyperparameters_are_named(data, params, message):
    with pytest.raises(ValueError, match=message):
        fit(*data, **params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_shared_experts": -1}, "'n_shared_experts' parameter of GaussianMoE"),
        ({"shared_weight": "equal"}, "'shared_weight' parameter"),
        (
            {"gate": NormalizedSigmoidGate(top_k=3), "n_experts": 2},
            r"top_k=3 is out of range for 2 routed experts",
        ),
    ],
)
def test_bad_gate_settings_are_named(data, params, message):
    with pytest.raises(ValueError, match=message):
        fit(*data, **params)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_top_k_must_be_a_positive_int(top_k):
    with pytest.raises(ValueError, match="top_k must be None or a positive int"):
        NormalizedSigmoidGate(top_k=top_k)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda X: X[:-1], r"2-D array with 100 rows; it returned shape \(99, 2\)"),
        (lambda X: X[:, 0], r"returned shape \(100,\)"),
        (lambda X: np.where(X > 0, np.inf, X), "non-finite values"),
    ],
)
def test_a_bad_gate_transform_is_refused(data, transform, message):
    with pytest.raises(ValueError, match=message):
        fit(*data, gate=ModifiedSoftmaxGate(transform=transform))


def test_unknown_transform_name():
    with pytest.raises(ValueError, match="Unknown transform 'relu'"):
        ModifiedSoftmaxGate(transform="relu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_shared": 0}, "n_shared must be at least 1"),
        ({"n_shared": -2}, "n_shared must be at least 1"),
        ({"n_shared": 1, "shared_weight": "half"}, "shared_weight must be"),
    ],
)
def test_shared_experts_gate_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SharedExpertsGate(SoftmaxGate(), **kwargs)


def test_negative_degree(data):
    with pytest.raises(ValueError, match="'degree' parameter of PolynomialMoE"):
        PolynomialMoE(degree=-1).fit(*data)


def test_a_start_of_the_wrong_shape(data):
    start = MoEParams(
        GateParams(np.zeros((3, 3))),
        GaussianExpertParams(np.zeros((3, 3)), np.ones(3)),
    )
    with pytest.raises(
        ValueError,
        match=r"init: the gate coef has shape \(3, 3\), "
        r"expected \(2, 3\)",
    ):
        fit(*data, n_experts=2, init=start)


def test_predict_before_fit(data):
    with pytest.raises(NotFittedError):
        GaussianMoE().predict(data[0])


def test_predict_with_another_number_of_features(data):
    X, y = data
    est = fit(X, y)
    with pytest.raises(
        ValueError, match="X has 3 features, but GaussianMoE is expecting 2 features"
    ):
        est.predict(np.zeros((4, 3)))


def test_score_samples_with_nan(data):
    X, y = data
    est = fit(X, y)
    y = y.copy()
    y[0] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN"):
        est.score_samples(X, y)


def test_results_are_finite_for_badly_scaled_data(rng):
    # x in the thousands and y in the millions: no overflow, no NaN.
    X = rng.uniform(0, 5000, size=(400, 1))
    y = 1e6 + 300.0 * X[:, 0] * (X[:, 0] > 2500) + rng.normal(scale=1e3, size=400)
    # the step at x = 2500 separates: the gate's maximum is at infinity
    with pytest.warns(DegenerateFitWarning, match=r"gate2\[x0\] diverges"):
        est = GaussianMoE(2, n_init=2, random_state=0).fit(X, y)
    assert np.isfinite(est.log_likelihood_)
    assert np.all(np.isfinite(est.predict(X)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 0}, "'n_samples' parameter"),
        ({"n_experts": 0}, "'n_experts' parameter"),
        ({"degree": -1}, "'degree' parameter"),
        ({"noise_var": 0.0}, "'noise_var' parameter"),
        ({"gate": "foo"}, "Unknown gate 'foo'"),
        ({"x_low": 1.0, "x_high": 0.0}, "x_low must be below x_high"),
    ],
)
def test_make_moe_regression_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_moe_regression(**kwargs)


# -- messages a user reads --------------------------------------------------------
def test_a_parameter_error_shows_numbers_not_numpy_reprs():
    with pytest.raises(ValueError) as error:
        GaussianMoE(n_experts=np.float64(1.5)).fit(np.ones((10, 1)), np.arange(10.0))
    assert "got 1.5 instead" in str(error.value) and "np." not in str(error.value)
    assert plain([np.int64(1), (np.float64(2.0),)]) == [1, (2.0,)]


@pytest.mark.parametrize(
    "estimator",
    [GaussianMoE(2), MultinomialLogisticMoE(2), PolynomialMoE(2, family="poisson")],
    ids=["gaussian", "multinomial", "poisson"],
)
def test_a_response_with_none_is_reported_as_missing_values(estimator):
    X = np.linspace(-1, 1, 40)[:, None]
    y = np.array([1, 2] * 19 + [None, 1], dtype=object)
    with pytest.raises(ValueError, match=r"y has 1 missing value.*row 38"):
        estimator.fit(X, y)


def test_a_text_response_of_a_regression_points_to_the_classifier():
    X = np.linspace(-1, 1, 40)[:, None]
    y = np.array(["a", "b"] * 20, dtype=object)
    with pytest.raises(ValueError, match="numeric response.*MultinomialLogisticMoE"):
        GaussianMoE(2).fit(X, y)


@pytest.mark.parametrize(
    "scale, advice", [(1e200, "divide it by 1e200"), (1e-200, "multiply it by 1e")]
)
def test_data_beyond_double_precision_are_refused_with_the_rescaling(scale, advice):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 1))
    y = X[:, 0] + rng.normal(size=60)
    with pytest.raises(ValueError, match=advice):
        GaussianMoE(2).fit(X, y * scale)
    with pytest.raises(ValueError, match="column 0 of X"):
        GaussianMoE(2).fit(X * scale, y)
