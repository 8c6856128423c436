"""GaussianMoE and PolynomialMoE as scikit-learn estimators."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import is_regressor
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from moestat import (
    ConvergenceWarning,
    DegenerateFitWarning,
    GaussianMoE,
    ModifiedSoftmaxGate,
    MultinomialLogisticMoE,
    NormalizedSigmoidGate,
    PolynomialMoE,
    SharedExpertsGate,
    SoftmaxGate,
)
from tests.helpers import two_expert_truth

# These checks call ``score_samples(X)`` with X alone, as for unconditional
# density estimators. Here ``score_samples(X, y)`` is the conditional
# log-density log p(y | x) and cannot be computed without y, so the call
# fails by design; the same methods are checked with y in this file
# (subset and order invariance: test_score_samples_is_per_sample).
SCORE_SAMPLES_NEEDS_Y = (
    "score_samples(X, y) is a conditional density and needs y; the check "
    "calls it with X alone"
)
# Integer weights and repeated rows give the same likelihood, and from the
# same start the same fit (test_integer_weights_equal_repeated_rows); the
# random starts are drawn over the rows as given, so on the check's 15 rows
# with several maxima the restarts can settle in different ones.
RANDOM_STARTS_SEE_ROWS = (
    "random starts are drawn over the rows as given: repeated rows change the "
    "draws; from one start weights equal repetition to round-off"
)
EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": SCORE_SAMPLES_NEEDS_Y,
    "check_methods_sample_order_invariance": SCORE_SAMPLES_NEEDS_Y,
    "check_sample_weight_equivalence_on_dense_data": RANDOM_STARTS_SEE_ROWS,
}


# scikit-learn's regressor checks fit real-valued y (often negative or above
# one); the Bernoulli family models responses in [0, 1] and refuses others
# with a ValueError (binary labels of any kind: MultinomialLogisticMoE).
BERNOULLI_NEEDS_Y_IN_0_1 = (
    "family='bernoulli' models y in [0, 1]; the regressor check fits "
    "real-valued y, which is refused with a ValueError"
)
BERNOULLI_REFUSED_CHECKS = [
    "check_fit_score_takes_y",
    "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self",
    "check_readonly_memmap_input",
    "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit",
    "check_estimators_dtypes",
    "check_dtype_object",
    "check_f_contiguous_array_estimator",
    "check_regressors_train",
    "check_regressor_data_not_an_array",
    "check_regressors_no_decision_function",
    "check_supervised_y_2d",
    "check_regressors_int",
    "check_non_transformer_estimators_n_iter",
    "check_fit2d_1feature",
    "check_dict_unchanged",
    "check_fit_idempotent",
    "check_fit_check_is_fitted",
    "check_n_features_in",
    "check_fit2d_predict1d",
    "check_sample_weights_pandas_series",
    "check_sample_weights_not_an_array",
    "check_sample_weights_list",
    "check_sample_weights_shape",
    "check_sample_weights_not_overwritten",
]


# check_regressors_train sets alpha=0.01 on any regressor with an alpha; the
# ridge penalty is fitted by the numpy backend only, and the torch backend
# refuses it by name.
TORCH_REFUSES_ALPHA = (
    "alpha > 0 is fitted by the numpy backend only; scikit-learn's check sets "
    "alpha=0.01"
)


def _expected_failed_checks(estimator):
    if estimator.backend == "torch" and is_regressor(estimator):
        return {**EXPECTED_FAILED_CHECKS, "check_regressors_train": TORCH_REFUSES_ALPHA}
    if getattr(estimator, "family", None) == "bernoulli":
        return {
            **EXPECTED_FAILED_CHECKS,
            **dict.fromkeys(BERNOULLI_REFUSED_CHECKS, BERNOULLI_NEEDS_Y_IN_0_1),
        }
    return EXPECTED_FAILED_CHECKS


# scikit-learn's checks shuffle with numpy's global RNG (np.random.permutation).
@pytest.mark.uses_global_rng
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::moestat.exceptions.DegenerateFitWarning")
@parametrize_with_checks(
    [
        GaussianMoE(n_init=2, random_state=0),
        PolynomialMoE(n_init=2, random_state=0),
        GaussianMoE(gate="modified_softmax", n_init=2, random_state=0),
        GaussianMoE(gate="normalized_sigmoid", n_init=2, random_state=0),
        GaussianMoE(3, gate=NormalizedSigmoidGate(top_k=2), n_init=2, random_state=0),
        GaussianMoE(n_shared_experts=1, n_init=2, random_state=0),
        MultinomialLogisticMoE(n_init=2, random_state=0),
        PolynomialMoE(family="poisson", n_init=2, random_state=0),
        PolynomialMoE(family="bernoulli", n_init=2, random_state=0),
        GaussianMoE(n_init=2, random_state=0, backend="torch"),
        MultinomialLogisticMoE(n_init=2, random_state=0, backend="torch"),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_scikit_learn_conventions(estimator, check):
    check(estimator)


@pytest.fixture
def data(rng):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(1500, 1))
    y, _ = truth.sample(X, rng)
    return X, y


@pytest.fixture
def fitted(data):
    return GaussianMoE(2, n_init=2, random_state=0).fit(*data)


def test_fitted_attributes_have_documented_shapes(fitted):
    assert fitted.gate_coef_.shape == (2, 2)
    assert np.all(fitted.gate_coef_[0] == 0)
    assert fitted.expert_coef_.shape == (2, 2)
    assert fitted.expert_var_.shape == (2,)
    assert fitted.converged_ and fitted.n_iter_ >= 1
    assert fitted.log_likelihood_ == fitted.log_likelihood_trace_[-1]
    assert fitted.restart_log_likelihoods_.shape == (2,)
    # the best restart, polished by L-BFGS-B, is at least as good as any restart
    assert fitted.log_likelihood_ >= fitted.restart_log_likelihoods_.max()
    assert fitted.gate_feature_names_ == ["const", "x0"]
    assert fitted.expert_feature_names_ == ["const", "x0"]


def test_predictions_are_consistent(fitted, data):
    X, y = data
    gate = fitted.predict_gate(X)
    np.testing.assert_allclose(gate.sum(axis=1), 1.0)
    np.testing.assert_array_equal(fitted.predict_expert_proba(X), gate)
    np.testing.assert_allclose(
        fitted.predict(X), np.sum(gate * fitted.predict_experts(X), axis=1)
    )
    posterior = fitted.predict_posterior(X, y)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0)


def test_log_likelihood_is_the_sum_of_score_samples(fitted, data):
    np.testing.assert_allclose(
        fitted.score_samples(*data).sum(), fitted.log_likelihood_, rtol=1e-12
    )


def test_score_samples_is_per_sample(fitted, data):
    X, y = data
    full = fitted.score_samples(X, y)
    np.testing.assert_allclose(fitted.score_samples(X[:10], y[:10]), full[:10])
    order = np.random.default_rng(1).permutation(len(y))
    np.testing.assert_allclose(fitted.score_samples(X[order], y[order]), full[order])


def test_score_is_r_squared(fitted, data):
    X, y = data
    residual = np.sum((y - fitted.predict(X)) ** 2)
    expected = 1 - residual / np.sum((y - y.mean()) ** 2)
    assert fitted.score(X, y) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("estimator", "n_features", "expected"),
    [
        # gate (m-1)(d+1) + experts m(d+1) + m variances
        (GaussianMoE(3), 2, 2 * 3 + 3 * 3 + 3),
        # shared variance: one variance
        (GaussianMoE(3, shared_variance=True), 2, 2 * 3 + 3 * 3 + 1),
        # quadratic in 2 covariates: basis of 6 columns
        (PolynomialMoE(3, degree=2), 2, 2 * 3 + 3 * 6 + 3),
        # constant experts: a gated mixture of normals
        (PolynomialMoE(2, degree=0), 1, 1 * 2 + 2 * 1 + 2),
        # one expert: ordinary least squares
        (GaussianMoE(1), 4, 0 + 5 + 1),
        # normalized sigmoid: every gate row is free
        (GaussianMoE(3, gate="normalized_sigmoid"), 2, 3 * 3 + 3 * 3 + 3),
        (GaussianMoE(3, gate=NormalizedSigmoidGate(top_k=2)), 2, 9 + 9 + 3),
        # modified softmax: as softmax, on M(x)
        (GaussianMoE(3, gate="modified_softmax"), 2, 2 * 3 + 3 * 3 + 3),
        # 2 shared + 2 routed: gate 1 * 3, omega 1; experts 4 * 3 + 4
        (GaussianMoE(2, n_shared_experts=2), 2, 3 + 1 + 12 + 4),
        (
            GaussianMoE(2, n_shared_experts=1, shared_weight="learned"),
            1,
            2 + 0 + 1 + 6 + 3,
        ),
    ],
)
def test_parameter_count_and_information_criteria(rng, estimator, n_features, expected):
    X = rng.uniform(-1, 1, size=(300, n_features))
    y = X.sum(axis=1) + rng.normal(scale=0.3, size=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DegenerateFitWarning)
        estimator.set_params(n_init=1, random_state=0).fit(X, y)
    assert estimator.n_parameters_ == expected
    log_lik = estimator.score_samples(X, y).sum()
    assert estimator.bic(X, y) == pytest.approx(-2 * log_lik + expected * np.log(300))
    assert estimator.aic(X, y) == pytest.approx(-2 * log_lik + 2 * expected)


def test_sample_draws_one_response_per_row(fitted, data):
    X, _ = data
    draws = fitted.sample(X, random_state=3)
    assert draws.shape == (len(X),)
    np.testing.assert_array_equal(draws, fitted.sample(X, random_state=3))


def test_pickle_round_trip(fitted, data):
    X, y = data
    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(clone.predict(X), fitted.predict(X))
    np.testing.assert_array_equal(clone.score_samples(X, y), fitted.score_samples(X, y))


def test_works_in_a_pipeline_and_is_equivariant_to_scaling_x(data, fitted):
    # An affine map of x is absorbed by the gate and expert coefficients, so
    # the scaled fit predicts the same conditional means.
    X, y = data
    pipe = make_pipeline(StandardScaler(), GaussianMoE(2, n_init=2, random_state=0))
    pipe.fit(X, y)
    np.testing.assert_allclose(pipe.predict(X), fitted.predict(X), atol=1e-3)
    assert pipe.score(X, y) == pytest.approx(fitted.score(X, y), abs=1e-4)


def test_grid_search_over_the_number_of_experts_with_bic(data):
    X, y = data

    def neg_bic(estimator, X, y):
        return -estimator.bic(X, y)

    search = GridSearchCV(
        GaussianMoE(n_init=2, random_state=0),
        {"n_experts": [1, 2, 3]},
        scoring=neg_bic,
        cv=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DegenerateFitWarning)
        search.fit(X, y)
    assert search.best_params_ == {"n_experts": 2}


def test_accepts_lists_and_dataframes(data):
    X, y = data
    from_lists = GaussianMoE(2, n_init=1, random_state=0).fit(X.tolist(), list(y))
    frame = pd.DataFrame({"dose": X[:, 0]})
    from_frame = GaussianMoE(2, n_init=1, random_state=0).fit(frame, pd.Series(y))
    np.testing.assert_allclose(from_lists.expert_coef_, from_frame.expert_coef_)
    assert from_frame.expert_feature_names_ == ["const", "dose"]
    assert list(from_frame.feature_names_in_) == ["dose"]
    np.testing.assert_allclose(from_frame.predict(frame), from_lists.predict(X))


def test_gate_given_as_an_object(data):
    by_name = GaussianMoE(2, n_init=1, random_state=0).fit(*data)
    by_object = GaussianMoE(2, gate=SoftmaxGate(), n_init=1, random_state=0).fit(*data)
    np.testing.assert_array_equal(by_name.gate_coef_, by_object.gate_coef_)


def test_polynomial_moe_with_degree_one_is_gaussian_moe(data):
    linear = GaussianMoE(2, n_init=2, random_state=0).fit(*data)
    poly = PolynomialMoE(2, degree=1, n_init=2, random_state=0).fit(*data)
    np.testing.assert_allclose(poly.expert_coef_, linear.expert_coef_)
    assert poly.log_likelihood_ == pytest.approx(linear.log_likelihood_)


def test_fitted_params_restart_a_fit(fitted, data):
    again = GaussianMoE(2, init=fitted.params_, n_init=1).fit(*data)
    assert again.log_likelihood_ >= fitted.log_likelihood_ - 1e-6 * abs(
        fitted.log_likelihood_
    )


@pytest.mark.parametrize("method", ["predict", "predict_gate", "predict_experts"])
def test_x_only_methods_are_per_sample(fitted, data, method):
    # What check_methods_{subset,sample_order}_invariance check, for the
    # methods that take X alone.
    X, _ = data

    def call(rows):
        return getattr(fitted, method)(X[rows])

    full = call(slice(None))
    np.testing.assert_allclose(call(slice(0, 10)), full[:10], atol=1e-12)
    order = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(call(order), full[order], atol=1e-12)


def test_modified_softmax_with_identity_fits_exactly_as_softmax(data):
    plain = GaussianMoE(2, n_init=2, random_state=0).fit(*data)
    identity = GaussianMoE(
        2, gate=ModifiedSoftmaxGate("identity"), n_init=2, random_state=0
    ).fit(*data)
    np.testing.assert_array_equal(identity.gate_coef_, plain.gate_coef_)
    np.testing.assert_array_equal(identity.expert_coef_, plain.expert_coef_)
    assert identity.log_likelihood_ == plain.log_likelihood_


@pytest.mark.parametrize("gate", ["modified_softmax", "normalized_sigmoid"])
def test_every_gate_by_name(data, gate):
    est = GaussianMoE(2, gate=gate, n_init=2, random_state=0).fit(*data)
    np.testing.assert_allclose(est.predict_gate(data[0]).sum(axis=1), 1.0)
    assert est.gate_feature_names_[0] == "const"


def test_shared_experts_come_first_with_their_weights(data):
    est = GaussianMoE(2, n_shared_experts=1, n_init=2, random_state=0).fit(*data)
    assert isinstance(est.model_.gate, SharedExpertsGate)
    assert est.expert_coef_.shape == (3, 2)
    assert est.gate_coef_.shape == (2, 2)
    np.testing.assert_allclose(est.shared_weights_, [1.0])
    assert est.shared_share_ == 0.5
    gate = est.predict_gate(data[0])
    np.testing.assert_allclose(gate[:, 0], 0.5)


def test_bernoulli_family_fits_binary_responses(rng):
    # what the refused regressor checks would cover, on data it models
    X = rng.uniform(-1, 1, size=(400, 2))
    y = (rng.random(400) < 1 / (1 + np.exp(-3 * X[:, 0]))).astype(float)
    # two experts for one logistic curve: an expert separates its responses
    # without a penalty (a DegenerateFitWarning); alpha keeps it finite
    est = PolynomialMoE(
        2, degree=1, family="bernoulli", n_init=2, alpha=1.0, random_state=0
    )
    assert est.fit(X, y) is est
    mean = est.predict(X)
    assert np.all((mean >= 0) & (mean <= 1))
    np.testing.assert_array_equal(est.predict(X[::-1]), mean[::-1])
    np.testing.assert_allclose(est.score_samples(X, y).sum(), est.log_likelihood_)
    assert est.score(X, y) > 0.2
    with pytest.raises(ValueError, match="X has 3 features"):
        est.predict(np.zeros((2, 3)))


def test_a_float64_response_is_used_without_a_copy(data):
    """The fit reads the caller's float64 y in place (its data count once)."""
    X, y = data
    y = np.ascontiguousarray(y, dtype=np.float64)
    est = GaussianMoE(n_experts=2, random_state=0, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    assert np.shares_memory(est._fit_y, y)


@pytest.mark.parametrize("Estimator", [GaussianMoE, PolynomialMoE])
def test_regressors_sweep_in_float32_when_asked(Estimator, monkeypatch):
    """sweep_dtype="float32": the chunked EM in float32, near float64's maximum."""
    from moestat import _sweep_em

    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(3000, 1))
    y = np.where(X[:, 0] > 0, 2 * X[:, 0], -X[:, 0]) + 0.2 * rng.normal(size=3000)
    monkeypatch.setattr(_sweep_em, "CHUNKED_ENTRIES", 1)

    def log_likelihood(dtype):
        fitted = Estimator(n_experts=2, n_init=1, random_state=0, sweep_dtype=dtype)
        return fitted.fit(X, y).log_likelihood_

    wide, narrow = log_likelihood("float64"), log_likelihood("float32")
    assert wide != narrow
    assert abs(wide - narrow) / len(y) < 1e-6


def test_an_unknown_sweep_dtype_is_refused_by_name():
    X, y = np.arange(40.0)[:, None], np.arange(40.0)
    with pytest.raises(ValueError, match="sweep_dtype"):
        GaussianMoE(sweep_dtype="float16").fit(X, y)
