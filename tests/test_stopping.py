"""The stopping rule: it fires at a maximum, not on a plateau, and says so.

``converged_`` is True only when the rule fired in every engine that ran; a
cap reached anywhere (EM or the L-BFGS polish) is reported as such, and
iteration counts never exceed what the user allowed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from moestat import GaussianMoE
from moestat.datasets import make_moe_regression
from moestat.exceptions import ConvergenceWarning
from moestat.experts import GaussianExpert
from moestat.fit import (
    ConvergenceMonitor,
    aitken_converged,
    em,
    initial_params,
    mle,
    polish_fit,
    restart_starts,
)
from moestat.gates import SoftmaxGate
from moestat.model import MixtureOfExperts


def bench_em_data(n_samples):
    """The generator of benchmarks/bench_em.py: d=2, m=4, softmax, linear."""
    return make_moe_regression(
        n_samples=n_samples, n_experts=4, n_features=2, random_state=0
    )


# -- the rule itself -----------------------------------------------------------------
def test_a_plateau_of_small_steady_increments_is_not_convergence():
    # 0.1 per iteration in total at n = 100,000 is 1e-6 per sample: a rule on
    # the size of the last change alone stops here; the increments do not
    # shrink, so the gain still to come is unbounded.
    n = 100_000
    monitor = ConvergenceMonitor(tol=1e-6, n_samples=n)
    fired = [monitor.report(-55_345.0 + 0.1 * t) for t in range(20)]
    assert not any(fired)


def test_slowly_shrinking_increments_predict_their_remaining_gain():
    # increments 0.1 * 0.99^t: about 10 units still to come, far above 0.1
    n = 100_000
    values = -55_345.0 + np.cumsum(0.1 * 0.99 ** np.arange(30))
    assert not aitken_converged(*values[-3:], n, 1e-6)
    # fast geometric decay: the predicted remainder is below tol * n
    values = -55_345.0 + np.cumsum(0.1 * 0.1 ** np.arange(8))
    assert aitken_converged(*values[-3:], n, 1e-6)


def test_the_rule_does_not_depend_on_the_units_of_the_data():
    # a change of units adds n * log(c) to every log-likelihood
    values = np.array([-100.0, -99.99, -99.98999])
    shifted = values + 5_000 * np.log(1e4)
    assert aitken_converged(*values, 5_000, 1e-6) == aitken_converged(
        *shifted, 5_000, 1e-6
    )


def test_an_exact_fixed_point_has_converged():
    assert aitken_converged(-np.inf, -120.5, -120.5, 100, 1e-6)
    assert not aitken_converged(-np.inf, -121.0, -120.5, 100, 1e-6)


# -- EM on the bench_em generator ------------------------------------------------------
@pytest.mark.slow
def test_plain_em_does_not_stop_on_the_plateau_of_the_bench_em_start():
    # From this k-means start a rule on the last change alone stopped EM at
    # -9289.67 after 338 iterations, 2.2 units below where EM itself goes on
    # to climb.
    X, y, truth = bench_em_data(20_000)
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design, var_floor = spec.design(X), 1e-6 * y.var()
    start = initial_params(
        spec, design, X, y, 4, "kmeans", np.random.default_rng(0), var_floor
    )
    result = em(
        spec.with_params(start), design, y, var_floor=var_floor, accelerate=False
    )
    assert result.log_likelihood > -9289.0
    if result.converged:
        more = em(result.model, design, y, tol=0.0, max_iter=2000, var_floor=var_floor)
        assert more.log_likelihood - result.log_likelihood < 0.5


@pytest.mark.slow
def test_a_converged_default_fit_leaves_nothing_for_a_longer_polish():
    X, y, _ = bench_em_data(20_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = GaussianMoE(4, n_init=1, init="kmeans", random_state=0).fit(X, y)
    assert est.converged_
    longer = mle(
        est.model_,
        est.model_.design(X),
        y,
        tol=1e-12,
        max_iter=3000,
        var_floor=est.var_floor_,
    )
    assert longer.log_likelihood - est.log_likelihood_ < 0.5


def test_squarem_em_is_monotone_and_needs_fewer_iterations():
    X, y, truth = make_moe_regression(
        n_samples=3000, n_experts=3, n_features=1, random_state=0
    )
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design, var_floor = spec.design(X), 1e-6 * y.var()
    start = initial_params(
        spec, design, X, y, 3, "kmeans", np.random.default_rng(0), var_floor
    )
    fits = {
        accelerate: em(
            spec.with_params(start),
            design,
            y,
            tol=1e-9,
            max_iter=5000,
            var_floor=var_floor,
            accelerate=accelerate,
        )
        for accelerate in (True, False)
    }
    fast, plain = fits[True], fits[False]
    assert fast.monotone
    assert np.all(np.diff(fast.trace) >= -1e-10 * np.abs(fast.trace[1:]))
    assert fast.n_iter < plain.n_iter
    assert fast.log_likelihood == pytest.approx(plain.log_likelihood, abs=0.05)


# -- caps are reported, and counted apart -------------------------------------------
def test_a_cap_in_em_is_not_convergence_and_is_named():
    X, y, _ = make_moe_regression(n_samples=2000, n_experts=3, random_state=1)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        est = GaussianMoE(3, n_init=1, init="kmeans", max_iter=3, random_state=0)
        est.fit(X, y)
    assert not est.converged_
    assert est.n_iter_ <= 3
    assert est.n_iter_polish_ <= 3


def test_a_cap_in_the_polish_is_not_convergence_and_is_named():
    X, y, truth = make_moe_regression(n_samples=2000, n_experts=3, random_state=1)
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design, var_floor = spec.design(X), 1e-6 * y.var()
    start = initial_params(
        spec, design, X, y, 3, "kmeans", np.random.default_rng(0), var_floor
    )
    first = em(spec.with_params(start), design, y, tol=1e-3, var_floor=var_floor)
    assert first.converged
    polished = polish_fit(first, design, y, tol=1e-15, max_iter=2, var_floor=var_floor)
    assert polished.log_likelihood >= first.log_likelihood
    assert not polished.converged
    assert "polish" in polished.stop_reason and "max_iter=2" in polished.stop_reason
    assert polished.n_iter == first.n_iter
    assert polished.n_iter_polish <= 2


@pytest.mark.parametrize("accelerate", [False, True])
def test_a_log_likelihood_that_stops_being_finite_stops_em_and_is_named(accelerate):
    # var_floor=0 lets a variance collapse onto a few points; the restart
    # below reaches a NaN log-likelihood within a few iterations
    X, y, _ = make_moe_regression(200, 4, 2, random_state=0)
    model = MixtureOfExperts(SoftmaxGate(), GaussianExpert(degree=1))
    design = model.design(X)
    (start,) = restart_starts(
        model, design, X, y, n_experts=4, init="random", rng=np.random.default_rng(0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = em(
            model.with_params(start), design, y, var_floor=0.0, accelerate=accelerate
        )
    assert not np.isfinite(result.log_likelihood)
    assert result.n_iter < 100 and not result.converged and not result.capped
    assert "log-likelihood became" in result.stop_reason
    assert "var_floor=0" in result.stop_reason
