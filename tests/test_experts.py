"""Gaussian experts: density, weighted M-step, gradient, basis."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.optimize import approx_fprime
from scipy.stats import norm

from moestat import GaussianExpert, GaussianExpertParams


@pytest.fixture
def expert_problem(rng):
    n, m = 300, 3
    X = rng.uniform(-1, 1, size=(n, 2))
    expert = GaussianExpert(degree=2)
    Phi = expert.design(X)
    params = GaussianExpertParams(
        rng.normal(size=(m, Phi.shape[1])), rng.uniform(0.1, 1.0, size=m)
    )
    y = rng.normal(size=n)
    resp = rng.dirichlet(np.ones(m), size=n)
    return expert, Phi, y, params, resp


def test_log_density_is_the_normal_log_pdf(expert_problem):
    expert, Phi, y, params, _ = expert_problem
    mean = Phi @ params.coef.T
    expected = norm.logpdf(y[:, None], loc=mean, scale=np.sqrt(params.var))
    np.testing.assert_allclose(expert.log_density(params, Phi, y), expected)


def test_m_step_is_weighted_least_squares(expert_problem):
    expert, Phi, y, _, resp = expert_problem
    fitted = expert.m_step(Phi, y, resp, var_floor=0.0)
    for i in range(resp.shape[1]):
        wls = sm.WLS(y, Phi, weights=resp[:, i]).fit()
        np.testing.assert_allclose(fitted.coef[i], wls.params, rtol=1e-7, atol=1e-9)
        resid = y - Phi @ wls.params
        var = np.sum(resp[:, i] * resid**2) / resp[:, i].sum()
        np.testing.assert_allclose(fitted.var[i], var, rtol=1e-7)


def test_shared_variance_pools_the_residuals(expert_problem):
    _, Phi, y, _, resp = expert_problem
    per_expert = GaussianExpert(degree=2).m_step(Phi, y, resp, 0.0)
    shared = GaussianExpert(degree=2, shared_variance=True).m_step(Phi, y, resp, 0.0)
    pooled = np.sum(per_expert.var * resp.sum(axis=0)) / len(y)
    np.testing.assert_allclose(shared.var, pooled, rtol=1e-7)
    np.testing.assert_allclose(shared.coef, per_expert.coef)


def test_variance_floor_is_respected(expert_problem):
    expert, Phi, y, _, resp = expert_problem
    fitted = expert.m_step(Phi, y, resp, var_floor=5.0)
    assert np.all(fitted.var == 5.0)


def test_an_expert_without_responsibility_keeps_its_parameters(expert_problem):
    expert, Phi, y, params, resp = expert_problem
    resp = resp.copy()
    resp[:, 1] = 0.0
    fitted = expert.m_step(Phi, y, resp, 0.0, previous=params)
    np.testing.assert_array_equal(fitted.coef[1], params.coef[1])
    assert fitted.var[1] == params.var[1]
    assert np.all(np.isfinite(fitted.coef)) and np.all(np.isfinite(fitted.var))


@pytest.mark.parametrize("shared_variance", [False, True])
def test_gradient_matches_finite_differences(expert_problem, shared_variance):
    _, Phi, y, params, resp = expert_problem
    expert = GaussianExpert(degree=2, shared_variance=shared_variance)
    if shared_variance:
        params = GaussianExpertParams(params.coef, np.full(3, params.var[0]))
    floor = 0.01
    m, p = params.coef.shape

    def objective(theta):
        candidate = expert.unpack(theta, m, p, floor)
        return np.sum(resp * expert.log_density(candidate, Phi, y))

    theta = expert.pack(params, floor)
    numeric = approx_fprime(theta, objective, 1e-6)
    analytic = expert.gradient(params, Phi, y, resp, floor)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-4)


def test_pack_unpack_round_trip(expert_problem):
    expert, _, _, params, _ = expert_problem
    m, p = params.coef.shape
    theta = expert.pack(params, 0.01)
    assert theta.size == expert.n_free_parameters(m, p)
    back = expert.unpack(theta, m, p, 0.01)
    np.testing.assert_allclose(back.coef, params.coef)
    np.testing.assert_allclose(back.var, params.var)


@pytest.mark.parametrize(
    ("degree", "names"),
    [
        (0, ["const"]),
        (1, ["const", "a", "b"]),
        (2, ["const", "a", "b", "a^2", "a b", "b^2"]),
    ],
)
def test_polynomial_basis_and_its_names(degree, names):
    expert = GaussianExpert(degree=degree)
    X = np.array([[2.0, 3.0]])
    assert expert.design_names(["a", "b"]) == names
    expected = {0: [1], 1: [1, 2, 3], 2: [1, 2, 3, 4, 6, 9]}[degree]
    np.testing.assert_array_equal(expert.design(X)[0], expected)


def test_sample_draws_from_the_chosen_expert(rng):
    expert = GaussianExpert(degree=0)
    params = GaussianExpertParams(np.array([[-5.0], [5.0]]), np.array([0.01, 0.04]))
    Phi = np.ones((4000, 1))
    labels = np.repeat([0, 1], 2000)
    y = expert.sample(params, Phi, labels, rng)
    assert abs(y[:2000].mean() + 5) < 0.01 and abs(y[2000:].mean() - 5) < 0.02
    np.testing.assert_allclose([y[:2000].var(), y[2000:].var()], [0.01, 0.04], rtol=0.1)


def test_a_shared_variance_is_every_experts_even_an_empty_ones():
    rng = np.random.default_rng(0)
    Phi = np.column_stack([np.ones(50), rng.normal(size=50)])
    y = Phi @ [1.0, 2.0] + 0.5 * rng.normal(size=50)
    resp = np.column_stack([np.full(50, 0.6), np.full(50, 0.4), np.zeros(50)])
    expert = GaussianExpert(degree=1, shared_variance=True)
    previous = GaussianExpertParams(np.zeros((3, 2)), np.array([1.0, 1.0, 3.0]))
    params = expert.m_step(Phi, y, resp, 0.0, previous)
    assert np.all(params.var == params.var[0])  # the empty third expert too
    np.testing.assert_array_equal(params.coef[2], previous.coef[2])
