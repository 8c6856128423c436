"""Sample weights: every estimator maximises the weighted log-likelihood."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from moestat import (
    GaussianMoE,
    MixtureOfExpertsRegressor,
    MultinomialLogisticMoE,
    NormalizedSigmoidGate,
    PolynomialMoE,
)
from moestat.datasets import (
    make_moe_classification,
    make_moe_glm,
    make_moe_regression,
)


def _data(kind, n=300):
    if kind == "poisson":
        X, y, _ = make_moe_glm(n, family="poisson", random_state=0)
    elif kind == "bernoulli":
        X, y, _ = make_moe_glm(n, family="bernoulli", random_state=0)
    elif kind == "classes":
        X, y, _ = make_moe_classification(n, n_classes=3, random_state=0)
    else:
        X, y, _ = make_moe_regression(n, random_state=0)
    return X, y


ESTIMATORS = {
    "gaussian": (lambda **kw: GaussianMoE(2, **kw), "gaussian"),
    "sigmoid_gate": (
        lambda **kw: GaussianMoE(2, gate="normalized_sigmoid", **kw),
        "gaussian",
    ),
    "polynomial": (lambda **kw: PolynomialMoE(2, degree=2, **kw), "gaussian"),
    "poisson": (
        lambda **kw: PolynomialMoE(2, degree=1, family="poisson", **kw),
        "poisson",
    ),
    "bernoulli": (
        lambda **kw: PolynomialMoE(2, degree=1, family="bernoulli", **kw),
        "bernoulli",
    ),
    "multinomial": (
        lambda **kw: MultinomialLogisticMoE(2, **kw),
        "classes",
    ),
    "generic": (
        lambda **kw: MixtureOfExpertsRegressor(2, gate=NormalizedSigmoidGate(), **kw),
        "gaussian",
    ),
}


def _fit(make, X, y, sample_weight=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make(random_state=0, **kw).fit(X, y, sample_weight=sample_weight)


def _flat(params):
    parts = [params.gate, params.expert]
    return np.concatenate(
        [
            np.ravel(getattr(p, f))
            for p in parts
            for f in ("coef", "var")
            if hasattr(p, f)
        ]
    )


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_integer_weights_equal_repeated_rows_from_the_same_start(name):
    make, kind = ESTIMATORS[name]
    X, y = _data(kind)
    weight = np.random.default_rng(1).integers(1, 4, size=len(y))
    start = _fit(make, X, y, n_init=1).params_
    weighted = _fit(make, X, y, weight, init=start, n_init=1)
    repeated = _fit(
        make, np.repeat(X, weight, axis=0), np.repeat(y, weight), init=start, n_init=1
    )
    assert_allclose(
        weighted.log_likelihood_, repeated.log_likelihood_, rtol=1e-10, atol=1e-8
    )
    assert_allclose(
        _flat(weighted.params_), _flat(repeated.params_), rtol=1e-8, atol=1e-8
    )


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_zero_weights_equal_dropped_rows_with_random_restarts(name):
    make, kind = ESTIMATORS[name]
    X, y = _data(kind)
    weight = (np.random.default_rng(2).random(len(y)) > 0.3).astype(float)
    weight[weight > 0] = np.random.default_rng(3).uniform(0.5, 2.0, int(weight.sum()))
    kept = weight > 0
    weighted = _fit(make, X, y, weight, n_init=2)
    dropped = _fit(make, X[kept], y[kept], weight[kept], n_init=2)
    assert weighted.log_likelihood_ == dropped.log_likelihood_
    assert_allclose(_flat(weighted.params_), _flat(dropped.params_), rtol=0, atol=0)


def test_unit_weights_leave_the_fit_unchanged():
    X, y = _data("gaussian")
    plain = _fit(ESTIMATORS["gaussian"][0], X, y, n_init=2)
    ones = _fit(ESTIMATORS["gaussian"][0], X, y, np.ones(len(y)), n_init=2)
    assert plain.log_likelihood_ == ones.log_likelihood_


def test_weighted_fit_maximises_the_weighted_log_likelihood():
    X, y = _data("gaussian")
    weight = np.random.default_rng(4).uniform(0.2, 3.0, len(y))
    est = _fit(ESTIMATORS["gaussian"][0], X, y, weight, n_init=2)
    assert_allclose(
        est.log_likelihood_, np.sum(weight * est.score_samples(X, y)), rtol=1e-12
    )


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
def test_weighted_standard_errors_equal_those_of_repeated_rows(kind):
    make, data_kind = ESTIMATORS[kind]
    X, y = _data(data_kind)
    weight = np.random.default_rng(5).integers(1, 4, size=len(y))
    start = _fit(make, X, y, n_init=1).params_
    weighted = _fit(make, X, y, weight, init=start, n_init=1).inference()
    repeated = _fit(
        make, np.repeat(X, weight, axis=0), np.repeat(y, weight), init=start, n_init=1
    ).inference()
    assert weighted.nobs == repeated.nobs == weight.sum()
    assert_allclose(weighted.bse, repeated.bse, rtol=1e-5)
    assert_allclose(weighted.llf, repeated.llf, rtol=1e-10)


def test_weighted_standard_errors_shrink_as_the_weights_grow():
    X, y = _data("gaussian")
    one = _fit(ESTIMATORS["gaussian"][0], X, y, np.ones(len(y)), n_init=1)
    four = _fit(ESTIMATORS["gaussian"][0], X, y, np.full(len(y), 4.0), n_init=1)
    assert_allclose(four.inference().bse, one.inference().bse / 2, rtol=1e-4)


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (-np.ones(300), "(?i)negative"),
        (np.r_[np.nan, np.ones(299)], "NaN"),
        (np.ones(299), "inconsistent|shape"),
        (np.zeros(300), "non-zero|sums to zero"),
    ],
    ids=["negative", "nan", "wrong_length", "all_zero"],
)
def test_bad_weights_are_refused_with_a_clear_error(weight, message):
    X, y = _data("gaussian")
    with pytest.raises(ValueError, match=message):
        GaussianMoE(2).fit(X, y, sample_weight=weight)


def test_weights_reach_the_torch_backend():
    pytest.importorskip("torch")
    X, y = _data("gaussian")
    weight = np.random.default_rng(6).uniform(0.2, 3.0, len(y))
    start = _fit(ESTIMATORS["gaussian"][0], X, y, n_init=1).params_
    numpy_fit = _fit(
        ESTIMATORS["gaussian"][0], X, y, weight, init=start, n_init=1, polish=False
    )
    torch_fit = _fit(
        ESTIMATORS["gaussian"][0],
        X,
        y,
        weight,
        init=start,
        n_init=1,
        polish=False,
        backend="torch",
    )
    assert_allclose(torch_fit.log_likelihood_, numpy_fit.log_likelihood_, rtol=1e-6)
