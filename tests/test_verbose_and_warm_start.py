"""verbose (progress on stderr) and warm_start (refit from the previous fit)."""

from __future__ import annotations

import numpy as np
import pytest

from moestat import GaussianMoE, MixtureOfExpertsClassifier, PolynomialMoE
from moestat.datasets import make_moe_regression


@pytest.fixture
def data():
    X, y, _ = make_moe_regression(n_samples=1500, random_state=3)
    return X, y


def test_a_silent_fit_prints_nothing(data, capsys):
    GaussianMoE(2, n_init=2, random_state=0).fit(*data)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_verbose_prints_the_log_likelihood_of_every_restart(data, capsys):
    est = GaussianMoE(2, n_init=3, verbose=1, random_state=0).fit(*data)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("[GaussianMoE] fitting 2 experts to 1500 samples")
    for i, value in enumerate(est.restart_log_likelihoods_):
        assert any(
            line.startswith(
                f"[GaussianMoE] restart {i + 1}/3: log-likelihood {value:.6f}"
            )
            for line in lines
        )
    assert any("split-and-merge moves" in line for line in lines)
    assert any("polish: log-likelihood" in line for line in lines)
    assert lines[-1] == (
        f"[GaussianMoE] best log-likelihood {est.penalized_log_likelihood_:.6f} "
        f"after {est.n_iter_} iterations (converged)"
    )


def test_a_warm_refit_converges_at_once_and_equals_a_fit_started_there(data):
    X, y = data
    est = GaussianMoE(2, n_init=2, warm_start=True, random_state=0).fit(X, y)
    cold_iterations = est.n_iter_
    est.fit(X, y)  # the same data: the previous fit is the maximum
    assert est.n_iter_ <= 3 < cold_iterations
    assert len(est.restart_log_likelihoods_) == 1
    previous = est.params_
    more_X, more_y, _ = make_moe_regression(n_samples=500, random_state=4)
    X2, y2 = np.vstack([X, more_X]), np.concatenate([y, more_y])
    est.fit(X2, y2)
    started = GaussianMoE(2, n_init=1, init=previous, random_state=0).fit(X2, y2)
    np.testing.assert_array_equal(est.gate_coef_, started.gate_coef_)
    np.testing.assert_array_equal(est.expert_coef_, started.expert_coef_)
    np.testing.assert_array_equal(est.expert_var_, started.expert_var_)
    assert est.n_iter_ == started.n_iter_


def test_a_warm_start_with_other_experts_starts_cold(data):
    X, y = data
    est = GaussianMoE(2, n_init=2, warm_start=True, random_state=0).fit(X, y)
    est.set_params(n_experts=3).fit(X, y)
    assert len(est.restart_log_likelihoods_) == 2
    assert est.expert_coef_.shape == (3, 2)


def test_without_warm_start_a_refit_repeats_the_fit(data):
    X, y = data
    est = PolynomialMoE(2, degree=1, n_init=2, random_state=0).fit(X, y)
    first = est.expert_coef_.copy(), est.n_iter_
    est.fit(X, y)
    np.testing.assert_array_equal(est.expert_coef_, first[0])
    assert est.n_iter_ == first[1]


def test_a_warm_classifier_refit_starts_from_its_previous_fit(rng):
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] + rng.normal(0, 0.5, 400) > 0).astype(int)
    clf = MixtureOfExpertsClassifier(2, n_init=2, alpha=1.0, warm_start=True)
    clf.set_params(random_state=0).fit(X, y)
    clf.fit(X, y)
    assert len(clf.restart_log_likelihoods_) == 1
    assert clf.n_iter_ <= 3
