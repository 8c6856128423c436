"""numpy fits many starts as one batch: the same EM steps, one call per step.

:func:`moestat.fit.batched_em_fits` runs the loop of
:mod:`moestat._batched_em` on numpy arrays through the pieces' batched
kernels. Each problem of the batch takes exactly the plain EM steps
``em(..., accelerate=False, stop_on_ridge=False)`` takes alone, stops by
the same rule, and keeps its own count; short screening runs
(:func:`moestat.fit.screened_start`, the split-and-merge moves) use it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import moestat.fit
from moestat import GaussianMoE
from moestat.experts import GLMExpert
from moestat.fit import (
    BatchEngine,
    batch_em_engine,
    batched_em_fits,
    em,
    fit_restarts,
    initial_params,
    runs_batched,
    screened_start,
)
from moestat.gates import SoftmaxGate
from moestat.model import MixtureOfExperts
from tests.helpers import BATCH_CASES, fitted_start, regression_data

RTOL = 1e-10


def _alone(model, design, y, start, var_floor, **options):
    """Plain EM from ``start`` on one data set: what each problem must match."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return em(
            model.with_params(start),
            design,
            y,
            var_floor=var_floor,
            accelerate=False,
            stop_on_ridge=False,
            **options,
        )


def _case(case):
    estimator, make_data = BATCH_CASES[case]
    X, y = make_data(np.random.default_rng(0))
    est = fitted_start(estimator, X, y)
    return est.model_, est.model_.design(X), est._encode_y(np.asarray(y)), est


@pytest.mark.parametrize("case", sorted(BATCH_CASES))
def test_each_problem_of_a_batch_takes_the_steps_it_takes_alone(case):
    model, design, y, est = _case(case)
    other = model.params  # a second start: the first one moved
    start = initial_params(
        model,
        design,
        design.gate[:, 1:],
        y,
        model.params.n_experts,
        "random",
        np.random.default_rng(1),
        est.var_floor_,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = batched_em_fits(
            model,
            [design, design],
            [y, y],
            [other, start],
            tol=0.0,
            max_iter=20,
            var_floor=est.var_floor_,
        )
    for result, begin in zip(results, [other, start], strict=True):
        alone = _alone(model, design, y, begin, est.var_floor_, tol=0.0, max_iter=20)
        assert len(result.trace) == len(alone.trace) > 1
        np.testing.assert_allclose(result.trace, alone.trace, rtol=RTOL, atol=0.0)


def test_problems_stop_on_their_own_and_keep_their_counts():
    model, design, y, est = _case("softmax")
    far = initial_params(
        model, design, design.gate[:, 1:], y, 2, "random", np.random.default_rng(4)
    )
    starts = [model.params, far]  # one start near the maximum, one far from it
    results = batched_em_fits(
        model, [design, design], [y, y], starts, tol=1e-8, max_iter=500
    )
    alone = [_alone(model, design, y, s, 0.0, tol=1e-8, max_iter=500) for s in starts]
    assert results[0].n_iter < results[1].n_iter  # the first left the batch early
    for result, reference in zip(results, alone, strict=True):
        assert result.converged and result.monotone
        assert result.n_iter == reference.n_iter
        np.testing.assert_allclose(
            result.log_likelihood, reference.log_likelihood, rtol=RTOL
        )


def test_data_sets_of_different_sizes_and_weights_fit_as_they_would_alone():
    rng = np.random.default_rng(3)
    data = [regression_data(rng, n) for n in (150, 260, 90)]
    weights = [None, rng.uniform(0.5, 2.0, 260), None]
    est = fitted_start(GaussianMoE(2), *data[1])
    model = est.model_
    designs = [model.design(X) for X, _ in data]
    ys = [y for _, y in data]
    results = batched_em_fits(
        model, designs, ys, [model.params] * 3, tol=1e-8, sample_weight=weights
    )
    for result, design, y, w in zip(results, designs, ys, weights, strict=True):
        alone = _alone(model, design, y, model.params, 0.0, tol=1e-8, sample_weight=w)
        assert result.n_iter == alone.n_iter
        np.testing.assert_allclose(
            result.log_likelihood, alone.log_likelihood, rtol=RTOL
        )


def _count_batches(monkeypatch):
    """Record the batch size of every call of ``batched_em_fits``."""
    sizes = []

    def spy(model, designs, *args, **kwargs):
        sizes.append(len(designs))
        return batched_em_fits(model, designs, *args, **kwargs)

    monkeypatch.setattr(moestat.fit, "batched_em_fits", spy)
    return sizes


def test_screening_keeps_the_candidate_with_the_best_short_run(monkeypatch):
    model, design, y, est = _case("softmax")
    X = design.gate[:, 1:]
    batches = _count_batches(monkeypatch)
    chosen = screened_start(
        model, design, X, y, 2, "random", np.random.default_rng(7), 0.0, 5, 10
    )
    assert batches == [5]  # all five short runs in one batch
    rng = np.random.default_rng(7)
    candidates = [
        initial_params(model, design, X, y, 2, "random", rng, 0.0) for _ in range(5)
    ]
    short = [_alone(model, design, y, c, 0.0, tol=0.0, max_iter=10) for c in candidates]
    best = short[int(np.argmax([r.log_likelihood for r in short]))]
    np.testing.assert_allclose(
        model.gate.pack(chosen.gate), model.gate.pack(best.model.params.gate), rtol=1e-8
    )


def test_larger_data_screen_one_run_at_a_time(monkeypatch):
    model, design, y, _ = _case("softmax")
    batches = _count_batches(monkeypatch)
    monkeypatch.setattr(moestat.fit, "BATCHED_ENTRIES", 5 * design.n_samples)
    X = design.gate[:, 1:]
    screened_start(model, design, X, y, 2, "random", np.random.default_rng(7))
    assert batches == []


def test_a_model_without_batched_kernels_screens_one_run_at_a_time():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 1))
    y = rng.poisson(np.exp(1 + X[:, 0])).astype(float)
    model = MixtureOfExperts(SoftmaxGate(), GLMExpert(family="poisson", alpha=1.0))
    assert not runs_batched(model)
    design = model.design(X)
    start = screened_start(model, design, X, y, 2, "random", rng, 0.0, 3, 5)
    assert np.all(np.isfinite(model.gate.pack(start.gate)))


def test_the_numpy_batch_engine_fits_restarts_as_fit_restarts_does_one_by_one():
    engine = batch_em_engine()
    assert isinstance(engine, BatchEngine)
    model, design, y, _ = _case("normalized_sigmoid")
    X = design.gate[:, 1:]
    options = dict(
        n_experts=2,
        init="random",
        n_init=3,
        tol=1e-8,
        n_moves=0,
        accelerate=False,
        stop_on_ridge=False,
    )
    batched, batched_all = fit_restarts(
        model,
        design,
        X,
        y,
        rng=np.random.default_rng(5),
        batch_engine=engine,
        **options,
    )
    single, single_all = fit_restarts(
        model, design, X, y, rng=np.random.default_rng(5), **options
    )
    for a, b in zip(batched_all, single_all, strict=True):
        assert a.n_iter == b.n_iter
        np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=RTOL)
    np.testing.assert_allclose(batched.log_likelihood, single.log_likelihood, rtol=RTOL)


def test_one_start_per_data_set_is_required():
    model, design, y, _ = _case("softmax")
    with pytest.raises(ValueError, match="one start per data set"):
        batched_em_fits(model, [design, design], [y, y], [model.params])
