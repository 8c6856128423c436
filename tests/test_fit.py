"""The fitting engines: EM monotonicity, gradients, agreement, recovery."""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings
from typing import ClassVar

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import approx_fprime

from moestat import (
    ConvergenceWarning,
    DegenerateFitWarning,
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    GaussianMoE,
    MixtureOfExperts,
    MoEParams,
    NormalizedSigmoidGate,
    SoftmaxGate,
)
from moestat import _sweep_em as sweep_em
from moestat.fit import (
    ConvergenceMonitor,
    em,
    fit_restarts,
    initial_params,
    keep_polished,
    log_likelihood_and_gradient,
    mle,
    pack,
    restart_starts,
    unpack,
)
from tests.custom_pieces import LogisticGate
from tests.helpers import (
    GATES,
    TemperedSoftmaxGate,
    UndeclaredTemperedSoftmaxGate,
    random_model,
    three_quadratic_truth,
    two_expert_truth,
)


def simulate(model, n, n_features, rng, spread=1.0):
    X = rng.uniform(-spread, spread, size=(n, n_features))
    y, _ = model.sample(X, rng)
    return X, y


def start_for(model, X, y, rng, method="random"):
    spec = model.with_params(None)
    design = spec.design(X)
    start = initial_params(spec, design, X, y, model.n_experts, method, rng)
    return spec.with_params(start), design


# -- EM is monotone -----------------------------------------------------------
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_experts=st.integers(1, 4),
    n_features=st.integers(1, 3),
    degree=st.integers(0, 2),
    n_samples=st.integers(40, 400),
    shared_variance=st.booleans(),
    init=st.sampled_from(["kmeans", "random"]),
    gate_name=st.sampled_from(sorted(GATES)),
)
# an expert collapsing onto three points: its weighted Gram matrix is
# ill-conditioned, and an inexact least-squares M-step lost likelihood
@example(
    seed=4,
    n_experts=4,
    n_features=1,
    degree=2,
    n_samples=40,
    shared_variance=False,
    init="random",
    gate_name="normalized_sigmoid_top2",
)
# an expert empty at one step kept its old variance beside the shared one,
# so the next step (pooling it again) lost likelihood
@example(
    seed=4,
    n_experts=4,
    n_features=1,
    degree=1,
    n_samples=256,
    shared_variance=True,
    init="kmeans",
    gate_name="normalized_sigmoid_top2",
)
def test_em_log_likelihood_never_decreases(
    seed, n_experts, n_features, degree, n_samples, shared_variance, init, gate_name
):
    rng = np.random.default_rng(seed)
    gate = GATES[gate_name]
    # shared experts come on top of the routed ones; top-2 needs 2 routed
    n_experts += getattr(gate, "n_shared", 0)
    n_experts = max(n_experts, getattr(gate, "n_shared", 0) + 2)
    truth = random_model(rng, n_experts, n_features, degree, shared_variance, gate)
    X, y = simulate(truth, n_samples, n_features, rng)
    model, design = start_for(truth, X, y, rng, init)
    result = em(model, design, y, tol=0.0, max_iter=60, var_floor=1e-6 * np.var(y))
    trace = result.trace
    steps = np.diff(trace)
    assert np.all(steps >= -1e-10 * np.abs(trace[:-1])), steps.min()
    assert result.monotone
    assert np.all(np.isfinite(trace))


def test_monitor_flags_a_decrease_and_applies_the_stopping_rule():
    monitor = ConvergenceMonitor(tol=1e-6, n_samples=10)
    assert not monitor.report(-100.0)
    assert not monitor.report(-50.0)
    assert not monitor.decreased
    assert not monitor.report(-60.0)
    assert monitor.decreased
    # increments 1e-3 then 1e-9: Aitken predicts ~1e-9 still to come
    assert not monitor.report(-60.0 + 1e-3)
    assert monitor.report(-60.0 + 1e-3 + 1e-9)


# -- gradients ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_experts", "n_features", "degree", "shared_variance", "gate_name"),
    [
        (1, 1, 1, False, "softmax"),
        (2, 1, 0, False, "softmax"),
        (3, 2, 1, False, "softmax"),
        (3, 2, 2, True, "softmax"),
        *((4, 2, 1, False, name) for name in sorted(GATES) if name != "softmax"),
    ],
)
def test_log_likelihood_gradient_matches_finite_differences(
    rng, n_experts, n_features, degree, shared_variance, gate_name
):
    truth = random_model(
        rng, n_experts, n_features, degree, shared_variance, GATES[gate_name]
    )
    X, y = simulate(truth, 200, n_features, rng)
    floor = 1e-3
    design = truth.design(X)
    shapes = (n_experts, design.gate.shape[1], design.expert.shape[1])
    theta = pack(truth, floor) + rng.normal(scale=0.1, size=pack(truth, floor).size)
    model = truth.with_params(unpack(truth, theta, shapes, floor))

    def log_lik(t):
        return log_likelihood_and_gradient(
            truth.with_params(unpack(truth, t, shapes, floor)), design, y, floor
        )[0]

    _, analytic = log_likelihood_and_gradient(model, design, y, floor)
    numeric = approx_fprime(theta, log_lik, 1e-6)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-3)


# -- EM and MLE agree ---------------------------------------------------------
def test_em_and_mle_reach_the_same_maximum_from_the_same_start(rng):
    truth = two_expert_truth()
    X, y = simulate(truth, 2000, 1, rng)
    model, design = start_for(truth, X, y, rng, "kmeans")
    by_em = em(model, design, y, tol=1e-13, max_iter=5000)
    by_mle = mle(model, design, y, tol=1e-13, max_iter=5000)
    assert by_em.converged and by_mle.converged
    np.testing.assert_allclose(by_mle.log_likelihood, by_em.log_likelihood, rtol=1e-9)
    aligned = by_mle.model.align_to(by_em.model).params
    np.testing.assert_allclose(
        aligned.expert.coef, by_em.model.params.expert.coef, atol=1e-4
    )
    np.testing.assert_allclose(
        aligned.gate.coef, by_em.model.params.gate.coef, atol=1e-3
    )


# -- one expert is ordinary least squares -------------------------------------
@pytest.mark.parametrize("solver", ["em", "mle"])
def test_one_expert_is_ordinary_least_squares(rng, solver):
    n = 500
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3.0 + rng.normal(scale=0.7, size=n)
    est = GaussianMoE(n_experts=1, solver=solver, n_init=1, tol=1e-12).fit(X, y)
    ols = sm.OLS(y, sm.add_constant(X)).fit()
    np.testing.assert_allclose(est.expert_coef_[0], ols.params, rtol=1e-6)
    np.testing.assert_allclose(est.expert_var_[0], ols.ssr / n, rtol=1e-6)
    np.testing.assert_allclose(est.log_likelihood_, ols.llf, rtol=1e-9)


# -- recovery -----------------------------------------------------------------
def aligned_errors(est, truth):
    fitted = est.model_.align_to(truth).params
    true = truth.params
    return (
        np.abs(fitted.gate.coef - true.gate.coef).max(),
        np.abs(fitted.expert.coef - true.expert.coef).max(),
        np.abs(fitted.expert.var / true.expert.var - 1).max(),
    )


@pytest.mark.parametrize("solver", ["em", "mle"])
def test_recovers_the_true_parameters_at_n_20000(seed, solver):
    # Tolerances are about 5 standard errors of each estimate at this n
    # (spread over repeated seeds: gate 0.03, expert means 0.01, variance 1.5%).
    truth = two_expert_truth()
    rng = np.random.default_rng(seed)
    X, y = simulate(truth, 20_000, 1, rng)
    est = GaussianMoE(2, solver=solver, n_init=3, random_state=seed).fit(X, y)
    gate_err, coef_err, var_err = aligned_errors(est, truth)
    assert gate_err < 0.25
    assert coef_err < 0.06
    assert var_err < 0.08


def test_recovers_three_quadratic_experts_at_n_20000(seed):
    from moestat import PolynomialMoE

    truth = three_quadratic_truth()
    X, y = simulate(truth, 20_000, 1, np.random.default_rng(seed))
    est = PolynomialMoE(3, degree=2, n_init=3, random_state=seed).fit(X, y)
    assert est.log_likelihood_ >= truth.log_pdf(X, y).sum()
    # Each expert sees a third of [-1, 1], so its x^2 coefficient is the least
    # precise estimate (spread over seeds about 0.07); tolerances ~5 of those.
    gate_err, coef_err, var_err = aligned_errors(est, truth)
    assert coef_err < 0.4
    assert var_err < 0.15
    assert gate_err < 0.8


# -- restarts -----------------------------------------------------------------
def test_best_restart_is_the_best_of_all_restarts(rng):
    truth = random_model(rng, 3, 1)
    X, y = simulate(truth, 600, 1, rng)
    spec = truth.with_params(None)
    design = spec.design(X)
    best, results = fit_restarts(
        spec, design, X, y, n_experts=3, n_init=6, init="random", rng=rng
    )
    assert best.log_likelihood == max(r.log_likelihood for r in results)
    assert len(results) == 6


def test_restarts_run_from_the_starts_restart_starts_draws(seed):
    rng = np.random.default_rng(seed)
    X, y = simulate(two_expert_truth(), 500, 1, rng)
    spec = two_expert_truth().with_params(None)
    design = spec.design(X)
    kwargs = dict(n_experts=2, n_init=3, init="auto")
    starts = restart_starts(
        spec, design, X, y, rng=np.random.default_rng(seed + 1), **kwargs
    )
    _, results = fit_restarts(
        spec, design, X, y, rng=np.random.default_rng(seed + 1), **kwargs
    )
    for start, result in zip(starts, results, strict=True):
        alone = em(spec.with_params(start), design, y)
        assert alone.log_likelihood == result.log_likelihood


def test_a_polish_that_lowers_the_likelihood_is_not_kept(rng):
    X, y = simulate(two_expert_truth(), 500, 1, rng)
    model = two_expert_truth()
    design = model.design(X)
    good = em(model, design, y, max_iter=50)
    worse = em(model, design, y, max_iter=1)
    assert keep_polished(good, worse) is good
    joined = keep_polished(worse, good)
    assert joined.log_likelihood == good.log_likelihood
    assert joined.n_iter == worse.n_iter
    assert joined.n_iter_polish == good.n_iter


def test_a_fit_with_the_same_seed_is_repeatable(rng):
    X, y = simulate(two_expert_truth(), 800, 1, rng)
    first = GaussianMoE(2, n_init=3, random_state=5).fit(X, y)
    second = GaussianMoE(2, n_init=3, random_state=5).fit(X, y)
    np.testing.assert_array_equal(first.expert_coef_, second.expert_coef_)
    np.testing.assert_array_equal(
        first.restart_log_likelihoods_, second.restart_log_likelihoods_
    )


def test_a_given_start_is_used(rng):
    truth = two_expert_truth()
    X, y = simulate(truth, 1000, 1, rng)
    with pytest.warns(ConvergenceWarning):
        est = GaussianMoE(2, init=truth.params, n_init=1, max_iter=1).fit(X, y)
    assert est.log_likelihood_trace_[0] == pytest.approx(truth.log_pdf(X, y).sum())


# -- convergence and degeneracy are reported ------------------------------------
def test_hitting_max_iter_warns(rng):
    X, y = simulate(two_expert_truth(), 500, 1, rng)
    with pytest.warns(ConvergenceWarning, match="EM reached max_iter=2"):
        est = GaussianMoE(2, max_iter=2, n_init=1, polish=False, random_state=0)
        est.fit(X, y)
    assert not est.converged_
    assert est.n_iter_ == 2


def test_mle_hitting_max_iter_warns(rng):
    X, y = simulate(two_expert_truth(), 500, 1, rng)
    with pytest.warns(ConvergenceWarning):
        GaussianMoE(2, solver="mle", max_iter=2, n_init=1, random_state=0).fit(X, y)


def test_a_collapsing_expert_is_reported_not_hidden(rng):
    # Responses on three values: experts collapse onto single values.
    X = rng.uniform(-1, 1, size=(60, 1))
    y = rng.integers(0, 3, size=60).astype(float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = GaussianMoE(4, n_init=2, random_state=0, max_iter=300).fit(X, y)
    assert any(issubclass(w.category, DegenerateFitWarning) for w in caught)
    assert np.all(np.isfinite(est.expert_coef_))
    assert np.all(est.expert_var_ >= est.var_floor_)
    assert np.isfinite(est.log_likelihood_)


def test_polish_reaches_the_maximum_that_em_approaches(rng):
    X, y = simulate(two_expert_truth(), 1000, 1, rng)
    plain = GaussianMoE(2, n_init=1, polish=False, random_state=0).fit(X, y)
    polished = GaussianMoE(2, n_init=1, random_state=0).fit(X, y)
    design = plain.model_.design(X)
    exact = em(
        plain.model_, design, y, tol=1e-14, max_iter=100_000, var_floor=plain.var_floor_
    )
    assert polished.log_likelihood_ >= plain.log_likelihood_
    assert polished.log_likelihood_ == pytest.approx(exact.log_likelihood, abs=1e-6)
    assert np.all(
        np.diff(polished.log_likelihood_trace_)
        >= -1e-10 * abs(polished.log_likelihood_)
    )


def test_no_warning_on_a_healthy_fit(rng):
    X, y = simulate(two_expert_truth(), 2000, 1, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GaussianMoE(2, n_init=2, random_state=0).fit(X, y)


# -- weighted EM (population EM on quadrature pseudo-samples) ------------------
@pytest.mark.parametrize(
    "gate_name", ["softmax", "normalized_sigmoid", "shared_sigmoid"]
)
def test_integer_sample_weights_are_repeated_samples(rng, gate_name):
    truth = random_model(rng, 3, 1, gate=GATES[gate_name])
    X, y = simulate(truth, 300, 1, rng)
    counts = rng.integers(1, 4, size=len(y))
    model, design = start_for(truth, X, y, rng, "kmeans")
    weighted = em(model, design, y, tol=0.0, max_iter=15, sample_weight=counts)
    Xr, yr = np.repeat(X, counts, axis=0), np.repeat(y, counts)
    repeated = em(model, model.design(Xr), yr, tol=0.0, max_iter=15)
    np.testing.assert_allclose(weighted.trace, repeated.trace, rtol=1e-8)
    np.testing.assert_allclose(
        pack(weighted.model, 0.0), pack(repeated.model, 0.0), rtol=1e-6, atol=1e-8
    )
    assert weighted.monotone


def test_bad_sample_weights_are_refused(rng):
    truth = two_expert_truth()
    X, y = simulate(truth, 100, 1, rng)
    model, design = start_for(truth, X, y, rng)
    for weights, match in [
        (np.ones(99), "100 finite non-negative"),
        (-np.ones(100), "non-negative"),
        (np.full(100, np.nan), "finite"),
        (np.zeros(100), "sums to zero"),
    ]:
        with pytest.raises(ValueError, match=match):
            em(model, design, y, sample_weight=weights)


# -- the chunked path (one sweep over the data per iteration) -----------------
CHUNKED_EXPERTS = {
    "per_expert": GaussianExpert(),
    "shared": GaussianExpert(shared_variance=True),
    "known": GaussianExpert(variance=0.16),
    "quadratic": GaussianExpert(degree=2),
}


@pytest.mark.parametrize("expert_name", sorted(CHUNKED_EXPERTS))
@pytest.mark.parametrize("gate_name", ["softmax", "modified_tanh"])
def test_chunked_em_reaches_the_full_paths_maximum_from_the_same_start(
    rng, gate_name, expert_name
):
    """Chunks of 256 rows and the whole (n, m) arrays: one maximum, to 1e-8."""
    truth = two_expert_truth()
    spec = MixtureOfExperts(GATES[gate_name], CHUNKED_EXPERTS[expert_name])
    X, y = simulate(truth, 3000, 1, rng)
    design = spec.design(X)
    start = initial_params(spec, design, X, y, 2, "kmeans", rng)
    model = spec.with_params(start)
    full = em(model, design, y, tol=1e-13, max_iter=3000, chunk_size=0)
    chunked = em(model, design, y, tol=1e-13, max_iter=3000, chunk_size=256)
    assert full.converged and chunked.converged and chunked.monotone
    np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(
        pack(chunked.model, 0.0), pack(full.model, 0.0), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(chunked.expert_weight, full.expert_weight, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_experts=st.integers(1, 5),
    n_features=st.integers(1, 3),
    degree=st.integers(0, 2),
    n_samples=st.integers(40, 400),
    chunk_size=st.integers(1, 200),
    accelerate=st.booleans(),
)
def test_chunked_em_log_likelihood_never_decreases(
    seed, n_experts, n_features, degree, n_samples, chunk_size, accelerate
):
    """The lazily halved gate step keeps every recorded likelihood non-decreasing."""
    rng = np.random.default_rng(seed)
    truth = random_model(rng, n_experts, n_features, degree, False, SoftmaxGate())
    X, y = simulate(truth, n_samples, n_features, rng)
    model, design = start_for(truth, X, y, rng)
    result = em(
        model,
        design,
        y,
        tol=0.0,
        max_iter=40,
        var_floor=1e-6 * np.var(y),
        chunk_size=chunk_size,
        accelerate=accelerate,
    )
    steps = np.diff(result.trace)
    assert np.all(steps >= -1e-10 * np.abs(result.trace[:-1])), steps.min()
    assert result.monotone
    assert np.all(np.isfinite(result.trace))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_experts=st.integers(1, 5),
    n_features=st.integers(1, 3),
    degree=st.integers(0, 2),
    n_samples=st.integers(40, 400),
    chunk_size=st.integers(1, 200),
    accelerate=st.booleans(),
)
def test_chunked_em_in_float32_never_decreases_beyond_its_round_off(
    seed, n_experts, n_features, degree, n_samples, chunk_size, accelerate
):
    """Falls of at most 100 float32 eps per sample, flagged by the monitor otherwise."""
    rng = np.random.default_rng(seed)
    truth = random_model(rng, n_experts, n_features, degree, False, SoftmaxGate())
    X, y = simulate(truth, n_samples, n_features, rng)
    model, design = start_for(truth, X, y, rng)
    result = em(
        model,
        design,
        y,
        tol=0.0,
        max_iter=40,
        var_floor=1e-6 * np.var(y),
        chunk_size=chunk_size,
        accelerate=accelerate,
        sweep_dtype=np.float32,
    )
    per_sample = result.trace / n_samples
    scale = np.maximum(np.abs(per_sample[:-1]), 1.0)
    assert np.all(np.diff(per_sample) >= -sweep_em.sweep_round_off(np.float32) * scale)
    assert result.monotone
    assert np.all(np.isfinite(result.trace))


def sigmoid_truth(gate):
    """Two experts under a dense normalized sigmoid gate, one covariate."""
    params = MoEParams(
        GateParams(np.array([[0.5, -3.0], [-0.5, 3.0]])),
        GaussianExpertParams(
            np.array([[1.0, 2.0], [-1.0, -1.0]]), np.array([0.3, 0.2])
        ),
    )
    return MixtureOfExperts(gate, GaussianExpert(), params)


def sigmoid_fits(rng, gate, expert, **options):
    """The full path's and the chunked path's fits from one start."""
    X, y = simulate(sigmoid_truth(gate), 3000, 1, rng)
    spec = MixtureOfExperts(gate, expert)
    design = spec.design(X)
    model = spec.with_params(initial_params(spec, design, X, y, 2, "kmeans", rng))
    options = {"tol": 1e-13, "max_iter": 3000, **options}
    full = em(model, design, y, chunk_size=0, **options)
    chunked = em(model, design, y, chunk_size=256, **options)
    return full, chunked, design, y


@pytest.mark.parametrize("expert_name", ["per_expert", "shared"])
@pytest.mark.parametrize("bound", [20.0, None])
def test_chunked_em_with_a_dense_sigmoid_gate_reaches_the_full_paths_maximum(
    rng, bound, expert_name
):
    """Every gate row free, bounded or not: one maximum, to 1e-8, climbing."""
    gate = NormalizedSigmoidGate(bound=bound)
    assert sweep_em.supports(MixtureOfExperts(gate, CHUNKED_EXPERTS[expert_name]))
    full, chunked, _, _ = sigmoid_fits(rng, gate, CHUNKED_EXPERTS[expert_name])
    assert full.converged and chunked.converged and chunked.monotone
    np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(
        pack(chunked.model, 0.0), pack(full.model, 0.0), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(chunked.expert_weight, full.expert_weight, rtol=1e-4)


def test_em_with_a_sigmoid_gate_on_its_box_reaches_the_maximum_on_the_box():
    """bound=1 holds coefficients at the box: both paths stop where the
    projected gradient vanishes, at the same maximum (a clipped Newton step
    stalled 0.3 to 0.8 below it on the full path)."""
    rng = np.random.default_rng(1)  # a clipped Newton step stalls on these data
    gate = NormalizedSigmoidGate(bound=1.0)
    full, chunked, design, y = sigmoid_fits(rng, gate, GaussianExpert())
    assert chunked.converged and chunked.monotone
    assert full.converged and full.monotone
    np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-8)
    steps = sweep_em.SweepSteps(chunked.model, design, y, None, 0.0, 256)
    for fit in (chunked, full):
        coef = fit.model.params.gate.coef
        assert np.all(np.abs(coef) <= 1.0)
        grad = steps.e_step(fit.model.params).stats.gate_gradient
        held = (np.abs(coef.ravel()) >= 1.0) & (grad * coef.ravel() > 0)
        assert held.any()
        np.testing.assert_allclose(grad[~held], 0.0, atol=1e-5 * len(y))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_experts=st.integers(1, 4),
    n_samples=st.integers(40, 300),
    chunk_size=st.integers(1, 200),
    bound=st.sampled_from([None, 0.5, 20.0]),
)
def test_chunked_em_with_a_dense_sigmoid_gate_never_decreases(
    seed, n_experts, n_samples, chunk_size, bound
):
    rng = np.random.default_rng(seed)
    gate = NormalizedSigmoidGate(bound=bound)
    truth = random_model(rng, n_experts, 2, gate=gate)
    X, y = simulate(truth, n_samples, 2, rng)
    model, design = start_for(truth, X, y, rng)
    result = em(model, design, y, max_iter=40, chunk_size=chunk_size, var_floor=1e-3)
    assert result.monotone
    if bound is not None:
        assert np.all(np.abs(result.model.params.gate.coef) <= bound)


def test_chunked_em_with_a_sigmoid_gate_and_weights_reaches_the_weighted_maximum():
    rng = np.random.default_rng(1)  # data whose EM converges in 3000 iterations
    weights = rng.uniform(0.2, 2.0, size=3000)
    gate = NormalizedSigmoidGate()
    full, chunked, _, _ = sigmoid_fits(
        rng, gate, GaussianExpert(), sample_weight=weights
    )
    assert full.converged and chunked.converged and chunked.monotone
    np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(chunked.expert_weight, full.expert_weight, rtol=1e-4)


def test_chunked_em_with_sample_weights_reaches_the_weighted_maximum(rng):
    truth = two_expert_truth()
    X, y = simulate(truth, 1500, 1, rng)
    weights = rng.uniform(0.2, 2.0, size=len(y))
    model, design = start_for(truth, X, y, rng, "kmeans")
    options = {"tol": 1e-13, "max_iter": 3000, "sample_weight": weights}
    full = em(model, design, y, chunk_size=0, **options)
    chunked = em(model, design, y, chunk_size=100, **options)
    assert full.converged and chunked.converged
    np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(chunked.expert_weight, full.expert_weight, rtol=1e-4)


def test_chunked_em_with_a_strided_information_reaches_the_full_paths_maximum(
    rng, monkeypatch
):
    """The gate information over every 4th row: another path, the same maximum."""
    from moestat.kernels import sweep_numpy

    monkeypatch.setattr(sweep_numpy, "INFORMATION_ROWS", 100)
    monkeypatch.setattr(sweep_numpy, "INFORMATION_WIDTH", 1)
    assert sweep_numpy.information_stride(3000, 2, 2) == 4
    truth = three_quadratic_truth()
    X, y = simulate(truth, 3000, 1, rng)
    design = truth.design(X)
    start = initial_params(truth, design, X, y, 3, "kmeans", rng)
    model = truth.with_params(start)
    full = em(model, design, y, tol=1e-13, max_iter=3000, chunk_size=0)
    strided = em(model, design, y, tol=1e-13, max_iter=3000, chunk_size=256)
    assert full.converged and strided.converged and strided.monotone
    np.testing.assert_allclose(strided.log_likelihood, full.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(
        pack(strided.model, 0.0), pack(full.model, 0.0), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_em_in_float32_reaches_the_float64_maximum_to_float32_round_off(
    rng, weighted
):
    """Per-chunk float32 arithmetic: monotone, the maximum within 1e-6 per sample."""
    truth = two_expert_truth()
    X, y = simulate(truth, 3000, 1, rng)
    weights = rng.uniform(0.2, 2.0, size=len(y)) if weighted else None
    model, design = start_for(truth, X, y, rng, "kmeans")
    options = {"tol": 1e-10, "max_iter": 3000, "chunk_size": 256}
    double = em(model, design, y, sample_weight=weights, **options)
    single = em(
        model, design, y, sample_weight=weights, sweep_dtype=np.float32, **options
    )
    assert single.converged and single.monotone
    n = len(y) if weights is None else weights.sum()
    assert abs(single.log_likelihood - double.log_likelihood) < 1e-6 * n
    np.testing.assert_allclose(
        pack(single.model, 0.0), pack(double.model, 0.0), rtol=1e-3, atol=1e-3
    )


@pytest.mark.parametrize("dtype", [np.float16, np.int64, "complex", "nonsense"])
def test_sweep_dtypes_other_than_float64_and_float32_are_refused(rng, dtype):
    truth = two_expert_truth()
    X, y = simulate(truth, 100, 1, rng)
    model, design = start_for(truth, X, y, rng)
    with pytest.raises(ValueError, match="sweep_dtype"):
        em(model, design, y, chunk_size=50, sweep_dtype=dtype)


def test_restarts_sweep_in_the_dtype_asked_for(rng, monkeypatch):
    """fit_restarts(sweep_dtype=np.float32): the chunked runs in float32.

    The same maximum as float64's within float32's round-off per sample,
    reached along another path; the full path ignores the dtype.
    """
    truth = two_expert_truth()
    X, y = simulate(truth, 2000, 1, rng)
    design = truth.design(X)

    def fit(dtype):
        best, _ = fit_restarts(
            truth,
            design,
            X,
            y,
            n_experts=2,
            init="kmeans",
            n_init=1,
            rng=np.random.default_rng(0),
            var_floor=1e-6,
            sweep_dtype=dtype,
        )
        return best.log_likelihood

    full = fit(np.float64), fit(np.float32)
    assert full[0] == full[1]
    monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", 1)
    chunked = fit(np.float64), fit(np.float32)
    assert chunked[0] != chunked[1]
    assert abs(chunked[1] - chunked[0]) / 2000 < 1e-6
    with pytest.raises(ValueError, match="sweep_dtype"):
        fit(np.float16)


def test_em_sweeps_in_chunks_from_chunked_entries_on(rng, monkeypatch):
    """chunk_size=None: the full path below CHUNKED_ENTRIES numbers, chunks from it.

    Here n (m + q_gate + q_expert) = 500 (2 + 3 + 3) = 4000.
    """
    truth = two_expert_truth()
    X, y = simulate(truth, 500, 1, rng)
    model, design = start_for(truth, X, y, rng)

    def trace(chunk_size):
        return em(model, design, y, tol=0.0, max_iter=8, chunk_size=chunk_size).trace

    monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", 4001)
    np.testing.assert_array_equal(trace(None), trace(0))
    monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", 4000)
    np.testing.assert_array_equal(trace(None), trace(500))
    assert not np.array_equal(trace(0), trace(500))


def test_chunk_size_is_refused_where_the_model_has_no_sweep(rng):
    """A top-K sigmoid gate has no sweep: it takes the full path."""
    truth = random_model(rng, 3, 1, gate=GATES["normalized_sigmoid_top2"])
    X, y = simulate(truth, 100, 1, rng)
    model, design = start_for(truth, X, y, rng)
    assert not sweep_em.supports(model)
    with pytest.raises(ValueError, match="dense normalized sigmoid gate"):
        em(model, design, y, chunk_size=50)
    with pytest.raises(ValueError, match="int >= 0"):
        em(model, design, y, chunk_size=-1)
    assert em(model, design, y, max_iter=3, chunk_size=0).n_iter > 0


def test_a_user_gate_declaring_the_softmax_kernel_reaches_the_full_paths_maximum(rng):
    """A gate written outside moestat opts in by its declaration alone."""
    truth = two_expert_truth()
    X, y = simulate(truth, 1500, 1, rng)
    spec = MixtureOfExperts(LogisticGate(), GaussianExpert())
    assert sweep_em.supports(spec)
    design = spec.design(X)
    model = spec.with_params(initial_params(spec, design, X, y, 2, "kmeans", rng))
    options = {"tol": 1e-13, "max_iter": 3000}
    full = em(model, design, y, chunk_size=0, **options)
    chunked = em(model, design, y, chunk_size=256, **options)
    assert full.converged and chunked.converged and chunked.monotone
    np.testing.assert_allclose(chunked.log_likelihood, full.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(
        pack(chunked.model, 0.0), pack(full.model, 0.0), rtol=1e-4, atol=1e-4
    )
    # the built-in softmax gate, fitted on the chunked path, reaches it too
    builtin = em(
        MixtureOfExperts(SoftmaxGate(), GaussianExpert(), model.params),
        design,
        y,
        chunk_size=256,
        **options,
    )
    np.testing.assert_allclose(builtin.log_likelihood, full.log_likelihood, rtol=1e-8)


def test_a_gate_declaring_no_sweep_kernel_is_fitted_on_the_full_path(rng, monkeypatch):
    """Beyond CHUNKED_ENTRIES, chunk_size=None fits it on the full path."""
    spec = MixtureOfExperts(UndeclaredTemperedSoftmaxGate(), GaussianExpert())
    X, y = simulate(two_expert_truth(), 500, 1, rng)
    design = spec.design(X)
    model = spec.with_params(initial_params(spec, design, X, y, 2, "kmeans", rng))
    assert not sweep_em.supports(model)
    monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", 1)
    fit = em(model, design, y, tol=0.0, max_iter=8, chunk_size=None)
    np.testing.assert_array_equal(
        fit.trace, em(model, design, y, tol=0.0, max_iter=8, chunk_size=0).trace
    )
    assert fit.monotone
    with pytest.raises(ValueError, match="declare sweep kernels.*sweep_kernel=None"):
        em(model, design, y, chunk_size=50)


def test_the_sweep_fits_what_a_gate_declares_not_what_it_computes(rng):
    """A declaration is trusted: the tempered gate that keeps the softmax
    kernel's is fitted as a plain softmax gate (check_gate's rule 'sweep'
    refuses it)."""
    X, y = simulate(two_expert_truth(), 500, 1, rng)
    spec = MixtureOfExperts(TemperedSoftmaxGate(), GaussianExpert())
    assert sweep_em.supports(spec)
    design = spec.design(X)
    model = spec.with_params(initial_params(spec, design, X, y, 2, "kmeans", rng))
    options = {"tol": 0.0, "max_iter": 5}
    chunked = em(model, design, y, chunk_size=100, **options)
    plain = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), model.params)
    np.testing.assert_allclose(
        chunked.trace, em(plain, design, y, chunk_size=100, **options).trace
    )
    full = em(model, design, y, chunk_size=0, **options)
    assert not np.allclose(chunked.trace, full.trace)


def test_a_gate_declaring_an_unknown_sweep_kernel_is_refused(rng):
    @dataclasses.dataclass(frozen=True)
    class Sparsemax(SoftmaxGate):
        sweep_kernel: ClassVar[str] = "sparsemax"

    X, y = simulate(two_expert_truth(), 100, 1, rng)
    spec = MixtureOfExperts(Sparsemax(), GaussianExpert())
    design = spec.design(X)
    model = spec.with_params(initial_params(spec, design, X, y, 2, "random", rng))
    with pytest.raises(ValueError, match="sweep_kernel='sparsemax'"):
        em(model, design, y, chunk_size=50)


@pytest.mark.parametrize("gate_name", ["softmax", "normalized_sigmoid"])
def test_chunked_em_stores_nothing_of_size_n_times_m(rng, gate_name):
    """Peak allocations of a fit at n = 400,000, m = 4: below one (n, m) array."""
    truth = random_model(rng, 4, 2, gate=GATES[gate_name])
    X, y = simulate(truth, 400_000, 2, rng)
    model, design = start_for(truth, X, y, rng)
    design.gate_spreads, design.expert_spreads  # noqa: B018 -- cached before
    tracemalloc.start()
    try:
        em(model, design, y, tol=0.0, max_iter=3, chunk_size=8192)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 400_000 * 4 * 8, peak


@pytest.mark.parametrize("expert_name", sorted(CHUNKED_EXPERTS))
@pytest.mark.parametrize("method", ["kmeans", "random"])
def test_the_start_from_sums_over_chunks_is_the_start_from_whole_arrays(
    rng, monkeypatch, method, expert_name
):
    """From CHUNKED_ENTRIES on, initial_params stores no (n, m) labels: same start."""
    spec = MixtureOfExperts(GATES["modified_tanh"], CHUNKED_EXPERTS[expert_name])
    X, y = simulate(three_quadratic_truth(), 2500, 1, rng)
    design = spec.design(X)
    seed = int(rng.integers(2**31))
    monkeypatch.setattr(sweep_em, "CHUNK_BYTES", 1)  # chunks of 1024 rows

    def start(entries):
        monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", entries)
        draws = np.random.default_rng(seed)
        return spec.with_params(
            initial_params(spec, design, X, y, 3, method, draws, var_floor=1e-3)
        )

    whole, chunked = start(10**9), start(1)
    np.testing.assert_allclose(pack(chunked, 1e-3), pack(whole, 1e-3), rtol=1e-8)


@pytest.mark.parametrize("bound", [20.0, 0.5])
@pytest.mark.parametrize("method", ["kmeans", "random"])
def test_a_dense_sigmoid_gates_start_from_sums_over_chunks_is_the_whole_arrays_start(
    rng, monkeypatch, method, bound
):
    spec = MixtureOfExperts(
        NormalizedSigmoidGate(bound=bound), GaussianExpert(degree=2)
    )
    X, y = simulate(three_quadratic_truth(), 2500, 1, rng)
    design = spec.design(X)
    seed = int(rng.integers(2**31))
    monkeypatch.setattr(sweep_em, "CHUNK_BYTES", 1)  # chunks of 1024 rows

    def start(entries):
        monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", entries)
        draws = np.random.default_rng(seed)
        return spec.with_params(
            initial_params(spec, design, X, y, 3, method, draws, var_floor=1e-3)
        )

    whole, chunked = start(10**9), start(1)
    assert np.any(chunked.params.gate.coef[0] != 0)  # every row free
    np.testing.assert_allclose(pack(chunked, 1e-3), pack(whole, 1e-3), rtol=1e-8)


def _fitted_three_experts(rng, gate_name, expert_name, n=2500):
    """A model after a few EM iterations on 2500 samples, with its data."""
    spec = MixtureOfExperts(GATES[gate_name], CHUNKED_EXPERTS[expert_name])
    X, y = simulate(three_quadratic_truth(), n, 1, rng)
    design = spec.design(X)
    start = initial_params(spec, design, X, y, 3, "kmeans", rng, var_floor=1e-3)
    result = em(spec.with_params(start), design, y, max_iter=5, var_floor=1e-3)
    return result.model, design, y


@pytest.mark.parametrize("expert_name", sorted(CHUNKED_EXPERTS))
@pytest.mark.parametrize("gate_name", ["softmax", "modified_tanh"])
def test_the_log_likelihood_and_gradient_over_chunks_are_those_of_whole_arrays(
    rng, monkeypatch, gate_name, expert_name
):
    """From CHUNKED_ENTRIES on, the polish's objective is summed over chunks."""
    model, design, y = _fitted_three_experts(rng, gate_name, expert_name)
    monkeypatch.setattr(sweep_em, "CHUNK_BYTES", 1)  # chunks of 1024 rows

    def evaluate(entries):
        monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", entries)
        return log_likelihood_and_gradient(model, design, y, 1e-3)

    (whole, whole_grad), (chunked, chunked_grad) = evaluate(10**9), evaluate(1)
    np.testing.assert_allclose(chunked, whole, rtol=1e-10)
    scale = np.max(np.abs(whole_grad))
    np.testing.assert_allclose(chunked_grad, whole_grad, rtol=1e-10, atol=1e-10 * scale)


def test_mle_over_chunks_reaches_the_whole_arrays_maximum(rng, monkeypatch):
    """From CHUNKED_ENTRIES on, the polish and its final evaluation go by chunks."""
    X, y = simulate(two_expert_truth(), 3000, 1, rng)
    spec, design = start_for(two_expert_truth(), X, y, rng, "kmeans")
    model = em(spec, design, y, max_iter=5).model
    monkeypatch.setattr(sweep_em, "CHUNK_BYTES", 1)

    def polish(entries):
        monkeypatch.setattr(sweep_em, "CHUNKED_ENTRIES", entries)
        return mle(model, design, y, tol=1e-12, var_floor=1e-3)

    whole, chunked = polish(10**9), polish(1)
    # one maximum; L-BFGS stops on its flat top a little apart on the two paths
    np.testing.assert_allclose(chunked.log_likelihood, whole.log_likelihood, rtol=1e-10)
    np.testing.assert_allclose(chunked.expert_weight, whole.expert_weight, rtol=1e-4)
    np.testing.assert_allclose(
        pack(chunked.model, 1e-3), pack(whole.model, 1e-3), rtol=1e-4, atol=1e-4
    )


def _large_model(rng, n=400_000):
    """Four softmax-gated linear experts on two covariates and n samples."""
    truth = random_model(rng, 4, 2, gate=SoftmaxGate())
    X, y = simulate(truth, n, 2, rng)
    design = truth.design(X)
    design.gate_spreads, design.expert_spreads  # noqa: B018 -- cached before
    return truth, design, y


def _traced_peak(action):
    """Peak bytes allocated while ``action()`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_polish_stores_nothing_of_size_n_times_m(rng):
    """L-BFGS steps at n = 400,000, m = 4 allocate less than one (n, m) array."""
    model, design, y = _large_model(rng)
    peak = _traced_peak(lambda: mle(model, design, y, max_iter=3))
    assert peak < 400_000 * 4 * 8, peak
