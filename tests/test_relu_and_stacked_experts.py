"""Known-variance Gaussian experts, ReLU experts and stacked expert families.

The DeepSeekMoE experts (theory.md sections 2.4, 3.6, 4.3 and 6.F): shared
ReLU experts with an inner bias beside routed ReLU experts without one, or
beside routed linear experts.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    GLMExpert,
    GLMExpertParams,
    MixtureOfExperts,
    MoEParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
    NormalizedSigmoidGate,
    ReLUExpert,
    ReLUExpertParams,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
    StackedExpertParams,
    StackedExperts,
)
from moestat.fit import em, initial_params, log_likelihood_and_gradient, pack, unpack
from tests.helpers import random_gate_params


def central_gradient(f, theta, step=1e-6):
    """Central finite differences of a scalar function."""
    grad = np.empty_like(theta)
    for k in range(theta.size):
        e = np.zeros_like(theta)
        e[k] = step
        grad[k] = (f(theta + e) - f(theta - e)) / (2 * step)
    return grad


def weighted_objective(expert, params, Phi, y, resp):
    """The M-step objective ``sum_t sum_i r_ti log f(y_t | x_t; theta_i)``."""
    return float(np.sum(resp * expert.log_density(params, Phi, y)))


def random_relu_params(rng, expert, n_experts, n_design):
    coef = rng.normal(0, 1.5, size=expert.coef_shape(n_experts, n_design))
    return ReLUExpertParams(coef, rng.uniform(0.1, 1.0, size=n_experts))


def random_gaussian_params(rng, n_experts, n_design):
    return GaussianExpertParams(
        rng.normal(0, 1.5, size=(n_experts, n_design)),
        rng.uniform(0.1, 1.0, size=n_experts),
    )


def relu_problem(rng, bias, n=300, m=3, d=2):
    expert = ReLUExpert(bias=bias)
    X = rng.uniform(-2, 2, size=(n, d))
    Phi = expert.design(X)
    params = random_relu_params(rng, expert, m, Phi.shape[1])
    truth = random_relu_params(rng, expert, m, Phi.shape[1])
    labels = rng.integers(m, size=n)
    y = expert.sample(truth, Phi, labels, rng)
    resp = rng.dirichlet(np.ones(m), size=n)
    return expert, Phi, y, params, resp


def stacked_problem(rng, routed, n=300, n_shared=1, n_routed=2):
    expert = StackedExperts(ReLUExpert(bias=True), routed, n_shared)
    X = rng.uniform(-2, 2, size=(n, 1))
    Phi = expert.design(X)
    p = Phi.shape[1]
    shared = random_relu_params(rng, expert.shared, n_shared, p)
    if isinstance(routed, ReLUExpert):
        routed_params = random_relu_params(rng, routed, n_routed, p)
    else:
        routed_params = random_gaussian_params(rng, n_routed, p)
    params = StackedExpertParams(shared, routed_params)
    m = n_shared + n_routed
    y = expert.sample(params, Phi, rng.integers(m, size=n), rng)
    resp = rng.dirichlet(np.ones(m), size=n)
    return expert, Phi, y, params, resp


ROUTED = {"relu": ReLUExpert(bias=False), "linear": GaussianExpert()}


# -- known-variance Gaussian experts ------------------------------------------
@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan, True, "0.5", [0.5]])
def test_a_known_variance_must_be_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="variance must be None .* positive finite"):
        GaussianExpert(variance=bad)


def test_a_known_variance_is_neither_estimated_nor_packed(rng):
    expert = GaussianExpert(degree=2, variance=0.3)
    X = rng.uniform(-1, 1, size=(200, 2))
    Phi = expert.design(X)
    m, p = 3, Phi.shape[1]
    params = GaussianExpertParams(rng.normal(size=(m, p)), np.full(m, 0.3))
    assert expert.variance == 0.3 and expert.known_variance
    assert expert.n_free_parameters(m, p) == m * p
    theta = expert.pack(params, 0.01)
    np.testing.assert_array_equal(theta, params.coef.ravel())
    back = expert.unpack(theta, m, p, 0.01)
    np.testing.assert_array_equal(back.coef, params.coef)
    np.testing.assert_array_equal(back.var, np.full(m, 0.3))
    names = expert.parameter_names(m, expert.design_names(["a", "b"]))
    assert len(names) == m * p and not any("variance" in n for n in names)
    values, jacobian = expert.natural(theta, m, 0.01)
    np.testing.assert_array_equal(values, theta)
    np.testing.assert_array_equal(jacobian, np.ones_like(theta))
    assert expert.pack_scales(np.ones(p), m).shape == (m * p,)
    assert all(b.shape == (m * p,) for b in expert.pack_bounds(m, p))
    np.testing.assert_array_equal(expert.atoms(params), params.coef)
    assert len(expert.at_variance_floor(params, 0.3)) == 0


def test_a_known_variance_m_step_is_least_squares_with_the_variance_fixed(rng):
    X = rng.uniform(-1, 1, size=(300, 1))
    Phi = GaussianExpert().design(X)
    y = rng.normal(size=300)
    resp = rng.dirichlet(np.ones(2), size=300)
    known = GaussianExpert(variance=0.7).m_step(Phi, y, resp, var_floor=5.0)
    estimated = GaussianExpert().m_step(Phi, y, resp, var_floor=0.0)
    np.testing.assert_allclose(known.coef, estimated.coef)
    np.testing.assert_array_equal(known.var, [0.7, 0.7])  # the floor is not applied
    resp[:, 1] = 0.0
    previous = GaussianExpertParams(np.array([[1.0, 2.0], [3.0, 4.0]]), np.full(2, 0.7))
    held = GaussianExpert(variance=0.7).m_step(Phi, y, resp, 0.0, previous)
    np.testing.assert_array_equal(held.coef[1], [3.0, 4.0])


def test_a_known_variance_gradient_matches_finite_differences(rng):
    expert = GaussianExpert(degree=2, variance=0.4)
    X = rng.uniform(-1, 1, size=(200, 2))
    Phi = expert.design(X)
    m, p = 3, Phi.shape[1]
    params = GaussianExpertParams(rng.normal(size=(m, p)), np.full(m, 0.4))
    y = rng.normal(size=200)
    resp = rng.dirichlet(np.ones(m), size=200)

    def objective(theta):
        return weighted_objective(
            expert, expert.unpack(theta, m, p, 0.01), Phi, y, resp
        )

    analytic = expert.gradient(params, Phi, y, resp, 0.01)
    numeric = central_gradient(objective, expert.pack(params, 0.01))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-5)


def test_a_known_variance_refuses_parameters_with_another_variance():
    expert = GaussianExpert(variance=0.25)
    good = GaussianExpertParams(np.zeros((2, 2)), np.full(2, 0.25))
    expert.check_params(good, 2, 2)
    bad = GaussianExpertParams(np.zeros((2, 2)), np.array([0.25, 0.3]))
    with pytest.raises(ValueError, match=r"variance=0.25\) fixes every expert"):
        expert.check_params(bad, 2, 2)


def test_one_known_variance_expert_by_em_is_ordinary_least_squares(rng):
    n, variance = 500, 0.49
    X = rng.normal(size=(n, 2))
    y = X @ np.array([1.0, -2.0]) + 3.0 + rng.normal(scale=0.7, size=n)
    expert = GaussianExpert(variance=variance)
    start = MoEParams(
        GateParams(np.zeros((1, 3))),
        GaussianExpertParams(np.zeros((1, 3)), np.array([variance])),
    )
    model = MixtureOfExperts(SoftmaxGate(), expert, start)
    result = em(model, model.design(X), y, tol=1e-12, var_floor=0.1)
    ols = sm.OLS(y, sm.add_constant(X)).fit()
    fitted = result.model.params.expert
    np.testing.assert_allclose(fitted.coef[0], ols.params, rtol=1e-9)
    np.testing.assert_array_equal(fitted.var, [variance])
    expected = norm.logpdf(y, ols.fittedvalues, np.sqrt(variance)).sum()
    np.testing.assert_allclose(result.log_likelihood, expected, rtol=1e-10)


# -- ReLU experts: the density ------------------------------------------------
@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_relu_bias_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="bias must be True or False"):
        ReLUExpert(bias=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"newton_steps": 0}, "newton_steps"), ({"max_halvings": -1}, "max_halvings")],
)
def test_relu_step_counts_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReLUExpert(**kwargs)


@pytest.mark.parametrize("bias", [True, False])
def test_relu_log_density_is_normal_around_the_relu_mean(rng, bias):
    expert, Phi, y, params, _ = relu_problem(rng, bias)
    x, coef = Phi[:, 1:], params.coef
    for i in range(params.n_experts):
        inner = x @ coef[i, -3:-1] + (coef[i, 0] if bias else 0.0)
        mean = coef[i, -1] * np.maximum(inner, 0.0)
        np.testing.assert_allclose(expert.mean(params, Phi)[:, i], mean)
        expected = norm.logpdf(y, mean, np.sqrt(params.var[i]))
        np.testing.assert_allclose(expert.log_density(params, Phi, y)[:, i], expected)


def test_relu_design_is_the_linear_experts_design(rng):
    X = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(ReLUExpert().design(X), GaussianExpert().design(X))
    assert ReLUExpert().design_names(["a"]) == GaussianExpert().design_names(["a"])


@pytest.mark.parametrize(
    ("bias", "names"),
    [
        (
            True,
            [
                "expert1[inner_const]",
                "expert1[inner_x0]",
                "expert1[outer]",
                "expert2[inner_const]",
                "expert2[inner_x0]",
                "expert2[outer]",
                "expert1[variance]",
                "expert2[variance]",
            ],
        ),
        (
            False,
            [
                "expert1[inner_x0]",
                "expert1[outer]",
                "expert2[inner_x0]",
                "expert2[outer]",
                "expert1[variance]",
                "expert2[variance]",
            ],
        ),
    ],
)
def test_relu_counts_and_names_follow_the_layout(bias, names):
    expert = ReLUExpert(bias=bias)
    assert expert.parameter_names(2, ["const", "x0"]) == names
    assert expert.n_free_parameters(2, 2) == len(names)
    assert expert.degrees_of_freedom(2, 2) == len(names) - 2
    assert expert.coef_shape(2, 2) == (2, 3 if bias else 2)
    assert expert.pack_scales(np.array([1.0, 0.5]), 2).shape == (len(names),)
    assert all(b.shape == (len(names),) for b in expert.pack_bounds(2, 2))


@pytest.mark.parametrize("bias", [True, False])
def test_relu_pack_unpack_round_trip_and_natural_values(rng, bias):
    expert, Phi, _, params, _ = relu_problem(rng, bias)
    m, p = params.n_experts, Phi.shape[1]
    theta = expert.pack(params, 0.05)
    assert theta.size == expert.n_free_parameters(m, p)
    back = expert.unpack(theta, m, p, 0.05)
    np.testing.assert_allclose(back.coef, params.coef)
    np.testing.assert_allclose(back.var, params.var)
    values, jacobian = expert.natural(theta, m, 0.05)
    np.testing.assert_allclose(values[-m:], params.var)
    np.testing.assert_allclose(jacobian[-m:], params.var - 0.05)
    np.testing.assert_array_equal(values[:-m], params.coef.ravel())


@pytest.mark.parametrize("bias", [True, False])
def test_relu_gradient_matches_finite_differences(rng, bias):
    expert, Phi, y, params, resp = relu_problem(rng, bias)
    m, p = params.n_experts, Phi.shape[1]
    floor = 0.01

    def objective(theta):
        candidate = expert.unpack(theta, m, p, floor)
        return weighted_objective(expert, candidate, Phi, y, resp)

    analytic = expert.gradient(params, Phi, y, resp, floor)
    numeric = central_gradient(objective, expert.pack(params, floor))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-4)


def test_relu_sample_draws_from_the_chosen_expert(rng):
    expert = ReLUExpert(bias=False)
    params = ReLUExpertParams(
        np.array([[1.0, 2.0], [-1.0, 3.0]]), np.array([0.01, 0.04])
    )
    Phi = expert.design(np.full((4000, 1), 2.0))
    labels = np.repeat([0, 1], 2000)
    y = expert.sample(params, Phi, labels, rng)
    assert abs(y[:2000].mean() - 4.0) < 0.01 and abs(y[2000:].mean()) < 0.02
    np.testing.assert_allclose([y[:2000].var(), y[2000:].var()], [0.01, 0.04], rtol=0.1)


def test_relu_permute_and_check_params():
    expert = ReLUExpert()
    params = ReLUExpertParams(np.arange(9.0).reshape(3, 3), np.array([1.0, 2.0, 3.0]))
    moved = expert.permute(params, [2, 0, 1])
    np.testing.assert_array_equal(moved.var, [3.0, 1.0, 2.0])
    np.testing.assert_array_equal(moved.coef[0], params.coef[2])
    expert.check_params(params, 3, 2)
    with pytest.raises(ValueError, match=r"coef has shape \(3, 3\), expected \(3, 2\)"):
        ReLUExpert(bias=False).check_params(params, 3, 2)
    with pytest.raises(ValueError, match="needs ReLUExpertParams"):
        expert.check_params(GaussianExpertParams(params.coef, params.var), 3, 2)
    with pytest.raises(ValueError, match="variances must be positive"):
        expert.check_params(ReLUExpertParams(params.coef, -params.var), 3, 2)


# -- ReLU experts: atoms --------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_relu_atoms_do_not_see_the_scale_of_the_unit(rng, bias):
    expert, _, _, params, _ = relu_problem(rng, bias)
    c = rng.uniform(0.2, 5.0, size=(params.n_experts, 1))
    coef = params.coef.copy()
    coef[:, :-1] *= c
    coef[:, -1:] /= c
    rescaled = ReLUExpertParams(coef, params.var)
    np.testing.assert_allclose(expert.atoms(rescaled), expert.atoms(params))
    for a, b in zip(
        expert.atom_blocks(rescaled), expert.atom_blocks(params), strict=True
    ):
        for key in a:
            np.testing.assert_allclose(a[key], b[key])


def test_relu_atoms_tell_the_sign_of_the_outer_weight():
    # -8 ReLU(6x) and 4 ReLU(-12x) have the same product eta_2 eta_1 = -48
    expert = ReLUExpert(bias=False)
    params = ReLUExpertParams(np.array([[6.0, -8.0], [-12.0, 4.0]]), np.ones(2))
    atoms = expert.atoms(params)
    np.testing.assert_allclose(atoms, [[-48.0, -48.0, 1.0], [-48.0, 48.0, 1.0]])


def test_relu_atom_blocks_name_the_scale_free_parts():
    params = ReLUExpertParams(np.array([[1.0, 2.0, 3.0, -2.0]]), np.array([0.5]))
    (blocks,) = ReLUExpert(bias=True).atom_blocks(params)
    assert list(blocks) == ["inner_bias", "inner_slope", "outer", "var"]
    np.testing.assert_allclose(blocks["inner_bias"], [-2.0])
    np.testing.assert_allclose(blocks["inner_slope"], [-4.0, -6.0])
    np.testing.assert_allclose(blocks["outer"], [-2.0 * np.sqrt(14.0)])
    np.testing.assert_allclose(blocks["var"], [0.5])
    flat = np.concatenate(list(blocks.values()))
    np.testing.assert_allclose(flat, ReLUExpert().atoms(params)[0])
    (blocks,) = ReLUExpert(bias=False).atom_blocks(
        ReLUExpertParams(np.array([[2.0, 3.0, -2.0]]), np.array([0.5]))
    )
    assert list(blocks) == ["inner_slope", "outer", "var"]
    np.testing.assert_allclose(blocks["inner_slope"], [-4.0, -6.0])


# -- ReLU experts: the M-step ---------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    bias=st.booleans(),
    n_experts=st.integers(1, 4),
    n_features=st.integers(1, 3),
    n_samples=st.integers(20, 300),
)
def test_relu_m_step_never_decreases_the_weighted_objective(
    seed, bias, n_experts, n_features, n_samples
):
    rng = np.random.default_rng(seed)
    expert, Phi, y, params, resp = relu_problem(
        rng, bias, n_samples, n_experts, n_features
    )
    floor = 1e-3
    params = ReLUExpertParams(params.coef, np.maximum(params.var, floor))
    before = weighted_objective(expert, params, Phi, y, resp)
    new = expert.m_step(Phi, y, resp, floor, params)
    after = weighted_objective(expert, new, Phi, y, resp)
    assert after >= before - 1e-10 * abs(before)
    assert np.all(new.var >= floor) and np.all(np.isfinite(new.coef))
    # each expert's own objective, too
    per_expert_before = np.sum(resp * expert.log_density(params, Phi, y), axis=0)
    per_expert_after = np.sum(resp * expert.log_density(new, Phi, y), axis=0)
    assert np.all(per_expert_after >= per_expert_before - 1e-10 * np.abs(before))


@pytest.mark.parametrize("bias", [True, False])
def test_relu_m_step_from_nothing_finds_a_single_unit(rng, bias):
    expert = ReLUExpert(bias=bias)
    X = rng.uniform(-3, 3, size=(2000, 1))
    Phi = expert.design(X)
    coef = np.array([[-1.0, 1.5, 2.0]]) if bias else np.array([[-1.5, 2.0]])
    truth = ReLUExpertParams(coef, np.array([0.04]))
    y = expert.sample(truth, Phi, np.zeros(2000, dtype=np.intp), rng)
    fitted = expert.m_step(Phi, y, np.ones((2000, 1)), 0.0)
    grid = expert.design(np.linspace(-3, 3, 31)[:, None])
    error = np.abs(expert.mean(fitted, grid) - expert.mean(truth, grid)).max()
    assert error < 0.05
    np.testing.assert_allclose(fitted.var, 0.04, rtol=0.15)


def test_relu_m_step_holds_an_expert_without_responsibility(rng):
    expert, Phi, y, params, resp = relu_problem(rng, True)
    resp = resp.copy()
    resp[:, 1] = 0.0
    fitted = expert.m_step(Phi, y, resp, 0.0, previous=params)
    np.testing.assert_array_equal(fitted.coef[1], params.coef[1])
    assert fitted.var[1] == params.var[1]
    pooled = expert.m_step(Phi, y, resp, 0.0)
    assert np.all(np.isfinite(pooled.coef)) and np.all(np.isfinite(pooled.var))


def test_relu_variance_floor_is_respected(rng):
    expert, Phi, y, params, resp = relu_problem(rng, False)
    fitted = expert.m_step(Phi, y, resp, var_floor=1e4, previous=params)
    assert np.all(fitted.var == 1e4)
    np.testing.assert_array_equal(expert.at_variance_floor(fitted, 1e4), [0, 1, 2])
    assert expert.variance_floor(y, 0.01) == pytest.approx(0.01 * np.var(y))


# -- stacked experts --------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_stacked_n_shared_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="n_shared must be"):
        StackedExperts(ReLUExpert(), ReLUExpert(bias=False), bad)


@pytest.mark.parametrize(
    "routed",
    [GaussianExpert(degree=2), GaussianExpert(degree=0), GLMExpert(degree=3)],
)
def test_stacked_blocks_must_build_the_same_design(routed):
    with pytest.raises(ValueError, match="must build the same design"):
        StackedExperts(ReLUExpert(), routed, 1)


@pytest.mark.parametrize("routed_name", sorted(ROUTED))
def test_stacked_density_and_mean_are_the_blocks_side_by_side(rng, routed_name):
    expert, Phi, y, params, _ = stacked_problem(rng, ROUTED[routed_name])
    for hook in ("mean", "log_density"):
        args = (Phi,) if hook == "mean" else (Phi, y)
        got = getattr(expert, hook)(params, *args)
        shared = getattr(expert.shared, hook)(params.shared, *args)
        routed = getattr(expert.routed, hook)(params.routed, *args)
        np.testing.assert_array_equal(got, np.hstack([shared, routed]))
    assert params.n_experts == 3


@pytest.mark.parametrize("routed_name", sorted(ROUTED))
def test_stacked_gradient_matches_finite_differences(rng, routed_name):
    expert, Phi, y, params, resp = stacked_problem(rng, ROUTED[routed_name])
    m, p, floor = params.n_experts, Phi.shape[1], 0.01

    def objective(theta):
        candidate = expert.unpack(theta, m, p, floor)
        return weighted_objective(expert, candidate, Phi, y, resp)

    theta = expert.pack(params, floor)
    assert theta.size == expert.n_free_parameters(m, p)
    analytic = expert.gradient(params, Phi, y, resp, floor)
    np.testing.assert_allclose(
        analytic, central_gradient(objective, theta), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("routed_name", sorted(ROUTED))
def test_stacked_parametrisation_is_the_blocks_concatenated(rng, routed_name):
    expert, Phi, _, params, _ = stacked_problem(rng, ROUTED[routed_name])
    m, p, floor = params.n_experts, Phi.shape[1], 0.02
    theta = expert.pack(params, floor)
    back = expert.unpack(theta, m, p, floor)
    np.testing.assert_allclose(back.shared.coef, params.shared.coef)
    np.testing.assert_allclose(back.routed.var, params.routed.var)
    k = expert.shared.n_free_parameters(1, p)
    values, jacobian = expert.natural(theta, m, floor)
    shared = expert.shared.natural(theta[:k], 1, floor)
    routed = expert.routed.natural(theta[k:], 2, floor)
    np.testing.assert_allclose(values, np.concatenate([shared[0], routed[0]]))
    np.testing.assert_allclose(jacobian, np.concatenate([shared[1], routed[1]]))
    scales = expert.pack_scales(np.array([1.0, 0.5]), m)
    lower, upper = expert.pack_bounds(m, p)
    assert scales.shape == lower.shape == upper.shape == theta.shape


def test_stacked_parameter_names_number_the_experts_globally():
    expert = StackedExperts(ReLUExpert(), GaussianExpert(shared_variance=True), 1)
    names = expert.parameter_names(3, ["const", "x0"])
    assert names == [
        "expert1[inner_const]",
        "expert1[inner_x0]",
        "expert1[outer]",
        "expert1[variance]",
        "expert2[const]",
        "expert2[x0]",
        "expert3[const]",
        "expert3[x0]",
        "routed:variance",
    ]
    assert len(names) == expert.n_free_parameters(3, 2)
    glm = StackedExperts(GLMExpert("bernoulli"), GLMExpert("bernoulli"), 2)
    assert glm.parameter_names(3, ["const"]) == [
        "expert1[const]",
        "expert2[const]",
        "expert3[const]",
    ]


@pytest.mark.parametrize("routed_name", sorted(ROUTED))
def test_stacked_m_step_gives_each_block_its_columns(rng, routed_name):
    expert, Phi, y, params, resp = stacked_problem(rng, ROUTED[routed_name])
    features = expert.sufficient_features(Phi, y)
    new = expert.m_step(Phi, y, resp, 1e-3, params, features)
    shared = expert.shared.m_step(Phi, y, resp[:, :1], 1e-3, params.shared)
    routed = expert.routed.m_step(Phi, y, resp[:, 1:], 1e-3, params.routed)
    np.testing.assert_allclose(new.shared.coef, shared.coef)
    np.testing.assert_allclose(new.routed.coef, routed.coef)
    np.testing.assert_allclose(new.routed.var, routed.var)
    before = weighted_objective(expert, params, Phi, y, resp)
    after = weighted_objective(expert, new, Phi, y, resp)
    assert after >= before - 1e-10 * abs(before)
    start = expert.m_step(Phi, y, resp, 1e-3)
    assert start.n_experts == 3 and np.all(np.isfinite(expert.pack(start, 1e-3)))


def test_stacked_sample_routes_labels_to_their_block(rng):
    expert = StackedExperts(ReLUExpert(), GaussianExpert(), 1)
    params = StackedExpertParams(
        ReLUExpertParams(np.array([[1.0, 0.0, 5.0]]), np.array([1e-6])),
        GaussianExpertParams(np.array([[-1.0, 0.0], [2.0, 0.0]]), np.full(2, 1e-6)),
    )
    Phi = expert.design(np.zeros((6, 1)))
    y = expert.sample(params, Phi, np.array([0, 1, 2, 2, 1, 0]), rng)
    np.testing.assert_allclose(y, [5.0, -1.0, 2.0, 2.0, -1.0, 5.0], atol=0.01)


def test_stacked_permutations_stay_within_their_blocks():
    expert = StackedExperts(ReLUExpert(), ReLUExpert(bias=False), 2)
    params = StackedExpertParams(
        ReLUExpertParams(np.arange(6.0).reshape(2, 3), np.array([1.0, 2.0])),
        ReLUExpertParams(np.arange(4.0).reshape(2, 2), np.array([3.0, 4.0])),
    )
    moved = expert.permute(params, [1, 0, 3, 2])
    np.testing.assert_array_equal(moved.shared.var, [2.0, 1.0])
    np.testing.assert_array_equal(moved.routed.var, [4.0, 3.0])
    for perm in ([2, 1, 0, 3], [0, 3, 2, 1], [0, 1, 2, 2]):
        with pytest.raises(ValueError, match="keep the shared experts"):
            expert.permute(params, perm)


def test_stacked_atoms_pad_the_narrower_block_and_blocks_concatenate():
    expert = StackedExperts(ReLUExpert(), ReLUExpert(bias=False), 1)
    params = StackedExpertParams(
        ReLUExpertParams(np.array([[0.0, 6.0, -8.0]]), np.array([0.25])),
        ReLUExpertParams(np.array([[-12.0, 4.0], [12.0, 4.0]]), np.full(2, 0.4)),
    )
    atoms = expert.atoms(params)
    np.testing.assert_allclose(
        atoms,
        [[0.0, -48.0, -48.0, 0.25], [-48.0, 48.0, 0.4, 0.0], [48.0, 48.0, 0.4, 0.0]],
    )
    blocks = expert.atom_blocks(params)
    assert [list(b) for b in blocks] == [
        ["inner_bias", "inner_slope", "outer", "var"],
        ["inner_slope", "outer", "var"],
        ["inner_slope", "outer", "var"],
    ]


def test_stacked_floors_and_checks(rng):
    expert = StackedExperts(ReLUExpert(), GaussianExpert(), 1)
    params = StackedExpertParams(
        ReLUExpertParams(np.array([[0.0, 1.0, 1.0]]), np.array([0.5])),
        GaussianExpertParams(np.zeros((2, 2)), np.array([0.1, 0.5])),
    )
    np.testing.assert_array_equal(expert.at_variance_floor(params, 0.1), [1])
    np.testing.assert_array_equal(expert.at_variance_floor(params, 0.5), [0, 1, 2])
    y = rng.normal(size=50)
    assert expert.variance_floor(y, 0.01) == pytest.approx(0.01 * np.var(y))
    expert.check_params(params, 3, 2)
    with pytest.raises(ValueError, match="needs StackedExpertParams"):
        expert.check_params(params.routed, 3, 2)
    with pytest.raises(ValueError, match="no routed expert"):
        expert.check_params(params, 1, 2)
    wrong = StackedExpertParams(params.routed, params.routed)
    with pytest.raises(ValueError, match="2 shared experts .* n_shared=1"):
        expert.check_params(wrong, 4, 2)


# -- atom blocks of the other families --------------------------------------------
def test_gaussian_atom_blocks():
    params = GaussianExpertParams(np.array([[1.0, 2.0, 3.0]]), np.array([0.5]))
    (blocks,) = GaussianExpert().atom_blocks(params)
    assert list(blocks) == ["intercept", "slope", "var"]
    np.testing.assert_array_equal(blocks["intercept"], [1.0])
    np.testing.assert_array_equal(blocks["slope"], [2.0, 3.0])
    np.testing.assert_array_equal(blocks["var"], [0.5])
    (known,) = GaussianExpert(variance=0.5).atom_blocks(params)
    assert list(known) == ["intercept", "slope"]
    (constant,) = GaussianExpert(degree=0).atom_blocks(
        GaussianExpertParams(np.array([[4.0]]), np.array([1.0]))
    )
    assert constant["slope"].shape == (0,)


def test_glm_atom_blocks():
    params = GLMExpertParams(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    blocks = GLMExpert().atom_blocks(params)
    assert [list(b) for b in blocks] == [["intercept", "slope"]] * 2
    np.testing.assert_array_equal(blocks[1]["intercept"], [4.0])
    np.testing.assert_array_equal(blocks[1]["slope"], [5.0, 6.0])


def test_multinomial_atom_blocks():
    coef = np.arange(12.0).reshape(2, 2, 3)  # 2 experts, 3 classes, [1, x0, x1]
    blocks = MultinomialLogisticExpert(3).atom_blocks(MultinomialExpertParams(coef))
    assert [list(b) for b in blocks] == [["intercept", "slope"]] * 2
    np.testing.assert_array_equal(blocks[1]["intercept"], [6.0, 9.0])
    np.testing.assert_array_equal(blocks[1]["slope"], [7.0, 8.0, 10.0, 11.0])


# -- full models: EM, gradient, recovery ----------------------------------------
def deepseek_model(routed_gate, routed_expert):
    gate = SharedExpertsGate(routed_gate, 1)
    return MixtureOfExperts(gate, StackedExperts(ReLUExpert(), routed_expert, 1))


MODELS = {
    "softmax_relu": (SoftmaxGate(), ReLUExpert(bias=False)),
    "sigmoid_linear": (NormalizedSigmoidGate(), GaussianExpert()),
}


def random_deepseek(rng, name, n_routed=2):
    spec = deepseek_model(*MODELS[name])
    gate_params = random_gate_params(spec.gate, 1 + n_routed, 2, rng)
    routed = spec.expert.routed
    routed_params = (
        random_relu_params(rng, routed, n_routed, 2)
        if isinstance(routed, ReLUExpert)
        else random_gaussian_params(rng, n_routed, 2)
    )
    expert_params = StackedExpertParams(
        random_relu_params(rng, spec.expert.shared, 1, 2), routed_params
    )
    return spec.with_params(MoEParams(gate_params, expert_params))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(sorted(MODELS)),
    n_routed=st.integers(1, 3),
    n_samples=st.integers(60, 400),
    init=st.sampled_from(["kmeans", "random"]),
)
def test_em_is_monotone_for_deepseek_models(seed, name, n_routed, n_samples, init):
    rng = np.random.default_rng(seed)
    truth = random_deepseek(rng, name, n_routed)
    X = rng.uniform(-2, 2, size=(n_samples, 1))
    y, _ = truth.sample(X, rng)
    spec = truth.with_params(None)
    design = spec.design(X)
    floor = 1e-6 * np.var(y)
    start = initial_params(spec, design, X, y, 1 + n_routed, init, rng, floor)
    result = em(
        spec.with_params(start), design, y, tol=0.0, max_iter=40, var_floor=floor
    )
    trace = result.trace
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[:-1])), np.diff(trace).min()
    assert result.monotone and np.all(np.isfinite(trace))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_deepseek_log_likelihood_gradient_matches_finite_differences(rng, name):
    truth = random_deepseek(rng, name)
    X = rng.uniform(-2, 2, size=(200, 1))
    y, _ = truth.sample(X, rng)
    design, floor = truth.design(X), 1e-3
    shapes = (3, design.gate.shape[1], design.expert.shape[1])
    theta = pack(truth, floor)

    def log_lik(t):
        model = truth.with_params(unpack(truth, t, shapes, floor))
        return log_likelihood_and_gradient(model, design, y, floor)[0]

    _, analytic = log_likelihood_and_gradient(truth, design, y, floor)
    numeric = central_gradient(log_lik, theta)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-3)


def deepseek_theorem_1_truth():
    """DeepSeekMoE's Thm 1 simulation (App. G.1) with an x-dependent softmax.

    Shared ``-8 ReLU(6x)`` (variance 0.25); routed ``4 ReLU(-12x)`` and
    ``4 ReLU(12x)`` (variance 0.4), routed gate rows ``(0, 0)`` and ``(1, 5)``
    (the printed gate has equal slopes and so does not depend on x).
    """
    params = MoEParams(
        SharedGateParams(GateParams(np.array([[0.0, 0.0], [1.0, 5.0]])), np.ones(1)),
        StackedExpertParams(
            ReLUExpertParams(np.array([[0.0, 6.0, -8.0]]), np.array([0.25])),
            ReLUExpertParams(np.array([[-12.0, 4.0], [12.0, 4.0]]), np.full(2, 0.4)),
        ),
    )
    return deepseek_model(SoftmaxGate(), ReLUExpert(bias=False)).with_params(params)


def test_em_recovers_the_deepseek_theorem_1_truth(seed):
    truth = deepseek_theorem_1_truth()
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(20_000, 1))
    y, _ = truth.sample(X, rng)
    true = truth.params
    start = MoEParams(
        SharedGateParams(
            GateParams(true.gate.routed.coef + [[0.0, 0.0], [0.3, -1.0]]), np.ones(1)
        ),
        StackedExpertParams(
            ReLUExpertParams(
                true.expert.shared.coef + rng.normal(0, 0.5, (1, 3)), np.array([0.4])
            ),
            ReLUExpertParams(
                true.expert.routed.coef + rng.normal(0, 0.5, (2, 2)), np.full(2, 0.3)
            ),
        ),
    )
    design = truth.design(X)
    result = em(
        truth.with_params(start), design, y, tol=1e-8, var_floor=1e-6 * np.var(y)
    )
    assert result.converged and result.monotone
    assert result.log_likelihood >= truth.log_pdf(X, y).sum()
    fitted = result.model.align_to(truth)
    # Over 12 seeds the largest error of an expert's mean function on the grid
    # (|mean| up to 144) was 0.04, of a variance 6% and of a gate coefficient
    # 0.46 (the routed slope); the tolerances are about 3-4 times those.
    grid = np.linspace(-3, 3, 61)[:, None]
    error = np.abs(fitted.expert_means(grid) - truth.expert_means(grid)).max()
    assert error < 0.15
    fitted_var = np.concatenate(
        [fitted.params.expert.shared.var, fitted.params.expert.routed.var]
    )
    np.testing.assert_allclose(fitted_var, [0.25, 0.4, 0.4], rtol=0.2)
    gate_error = np.abs(fitted.params.gate.routed.coef - true.gate.routed.coef).max()
    assert gate_error < 1.5
    # the scale-free atoms match the truth's (the raw coefficients need not)
    atoms = fitted.expert.atoms(fitted.params.expert)
    # (largest error over the 12 seeds: 0.035)
    np.testing.assert_allclose(
        atoms, truth.expert.atoms(true.expert), rtol=0, atol=0.15
    )


def test_information_criteria_count_relu_experts_without_their_scale():
    # ReLU(c v^T x) / c is the same function for every c > 0: one parameter
    # per expert is not identified and is not counted.
    relu = MixtureOfExperts(SoftmaxGate(), ReLUExpert(bias=True))
    assert relu.n_free_parameters(1, n_experts=2) == 2 + 2 * (3 - 1 + 1)
    stacked = MixtureOfExperts(
        SharedExpertsGate(SoftmaxGate(), 1),
        StackedExperts(ReLUExpert(bias=True), GaussianExpert(degree=1), 1),
    )
    # routed softmax over 2: 2; shared weight: 0; ReLU: 3; two linear: 2 * 3
    assert stacked.n_free_parameters(1, n_experts=3) == 2 + 3 + 6
