"""Losses: quadrature rules, density discrepancies and Voronoi losses.

Reference values: closed forms for one-expert Gaussian and Poisson models,
brute-force sums for multinomial experts, scipy's adaptive quadrature for
two-component mixtures; Voronoi losses at the truth, under relabelling and
gate translation, and their exponents from fits made by splitting a true
atom (theory.md sections 5.1-5.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import erf, expit, logit
from scipy.stats import norm

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianExpertParams,
    GLMExpert,
    GLMExpertParams,
    MixtureOfExperts,
    ModifiedSoftmaxGate,
    MoEParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
    NormalizedSigmoidGate,
    ReLUExpert,
    ReLUExpertParams,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
    StackedExperts,
)
from moestat.experts.stacked import StackedExpertParams
from moestat.losses import (
    DENSITY_LOSSES,
    density_losses,
    hellinger_distance,
    kl_divergence,
    per_parameter_errors,
    response_quadrature,
    total_variation,
    uniform_quadrature,
    voronoi_cells,
    voronoi_loss,
)
from tests.helpers import random_model, two_expert_truth

X_NODES, X_WEIGHTS = uniform_quadrature(-1.0, 1.0, n_nodes=40)


# -- model builders ------------------------------------------------------------------
def gaussian_one(b, a, var, expert=None):
    """One Gaussian expert with mean b + a x (the gate is constant)."""
    params = MoEParams(
        GateParams(np.zeros((1, 2))),
        GaussianExpertParams(np.array([[b, a]], float), np.array([var], float)),
    )
    return MixtureOfExperts(SoftmaxGate(), expert or GaussianExpert(), params)


def gaussian_mixture(gate_coef, coef, var, gate=None):
    params = MoEParams(
        GateParams(np.asarray(gate_coef, float)),
        GaussianExpertParams(np.asarray(coef, float), np.asarray(var, float)),
    )
    return MixtureOfExperts(gate or SoftmaxGate(), GaussianExpert(), params)


def poisson_one(c0, c1):
    params = MoEParams(
        GateParams(np.zeros((1, 2))), GLMExpertParams(np.array([[c0, c1]]))
    )
    return MixtureOfExperts(SoftmaxGate(), GLMExpert("poisson"), params)


def multinomial_model(gate_coef, coef, gate=None):
    params = MoEParams(
        GateParams(np.asarray(gate_coef, float)),
        MultinomialExpertParams(np.asarray(coef, float)),
    )
    return MixtureOfExperts(
        gate or SoftmaxGate(), MultinomialLogisticExpert(n_classes=3), params
    )


def ml_truth():
    return multinomial_model(
        [[0.0, 0.0], [0.5, 3.0]],
        [[[1.0, 2.0], [-1.0, 1.0]], [[0.5, -2.0], [1.5, -1.0]]],
    )


def shared_model(
    gate_coef,
    omega,
    shared_coef,
    routed_coef,
    shared_var,
    routed_var,
    routed_gate=None,
    relu=False,
):
    """Shared + routed experts: ReLU units (DS Thm 1/3) or linear (Thm 2)."""
    routed_gate = routed_gate or SoftmaxGate()
    gate = SharedExpertsGate(routed_gate, len(omega))
    gate_params = SharedGateParams(
        GateParams(np.asarray(gate_coef, float)), np.asarray(omega, float)
    )
    if relu:
        expert = StackedExperts(
            ReLUExpert(bias=True), ReLUExpert(bias=False), len(omega)
        )
        expert_params = StackedExpertParams(
            ReLUExpertParams(
                np.asarray(shared_coef, float), np.asarray(shared_var, float)
            ),
            ReLUExpertParams(
                np.asarray(routed_coef, float), np.asarray(routed_var, float)
            ),
        )
    else:
        expert = GaussianExpert()
        expert_params = GaussianExpertParams(
            np.vstack([shared_coef, routed_coef]).astype(float),
            np.concatenate([shared_var, routed_var]).astype(float),
        )
    return MixtureOfExperts(gate, expert, MoEParams(gate_params, expert_params))


def ds_relu_truth(routed_gate=None, gate_coef=((0.0, 0.0), (-1.0, 5.0))):
    """DS Thm 1: shared -8 ReLU(6x), routed 4 ReLU(-12x) and 4 ReLU(12x)."""
    return shared_model(
        gate_coef,
        [1.0],
        [[0.0, 6.0, -8.0]],
        [[-12.0, 4.0], [12.0, 4.0]],
        [0.25],
        [0.4, 0.4],
        routed_gate=routed_gate,
        relu=True,
    )


def ds_linear_truth():
    """DS Thm 2: shared 2x, routed 8x + 2 and -6x + 1."""
    return shared_model(
        [[0.0, 0.0], [-1.0, 5.0]],
        [1.0],
        [[0.0, 2.0]],
        [[2.0, 8.0], [1.0, -6.0]],
        [0.2],
        [0.4, 0.4],
    )


def ds_sparse_truth():
    """DS Thm 3: normalized sigmoid routing with beta_1* = 0."""
    return ds_relu_truth(NormalizedSigmoidGate(), ((-0.5, 0.0), (0.5, 0.0)))


def with_gate(model, coef=None, omega=None):
    """``model`` with other gate rows (routed rows for shared experts)."""
    params = model.params
    if isinstance(params.gate, SharedGateParams):
        routed = (
            GateParams(np.asarray(coef, float))
            if coef is not None
            else params.gate.routed
        )
        weights = (
            params.gate.shared_weights if omega is None else np.asarray(omega, float)
        )
        gate = SharedGateParams(routed, weights, params.gate.shared_share)
    else:
        gate = GateParams(np.asarray(coef, float))
    return model.with_params(MoEParams(gate, params.expert))


def with_experts(model, expert_params):
    return model.with_params(MoEParams(model.params.gate, expert_params))


# =============================================================================
# Quadrature
# =============================================================================
def test_uniform_quadrature_integrates_polynomials():
    X, w = uniform_quadrature(-1.0, 3.0, n_nodes=7)
    assert X.shape == (7, 1) and np.isclose(w.sum(), 1.0, rtol=1e-15)
    # E X^k for X ~ U(-1, 3), exact up to degree 13
    for k in range(14):
        exact = (3.0 ** (k + 1) - (-1.0) ** (k + 1)) / (4 * (k + 1))
        np.testing.assert_allclose(w @ X[:, 0] ** k, exact, rtol=1e-13)


def test_uniform_quadrature_tensor_product():
    X, w = uniform_quadrature([0.0, -1.0], [1.0, 1.0], n_nodes=5, n_features=2)
    assert X.shape == (25, 2) and np.all(w > 0)
    np.testing.assert_allclose(w @ (X[:, 0] ** 3 * X[:, 1] ** 2), 0.25 / 3, rtol=1e-13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(low=1.0, high=1.0), "low < high"),
        (dict(low=0.0, high=1.0, n_nodes=0), "n_nodes"),
        (dict(low=0.0, high=1.0, n_nodes=1000, n_features=3), "Monte-Carlo"),
        (dict(low=[0.0, 1.0, 2.0], high=5.0, n_features=2), "length n_features"),
    ],
)
def test_uniform_quadrature_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uniform_quadrature(**kwargs)


def test_response_quadrature_gaussian_moments(rng):
    model = random_model(rng, n_experts=3, n_features=1)
    X = np.linspace(-1, 1, 7)[:, None]
    Y, W = response_quadrature(model, X, n_nodes=20)
    assert Y.shape == W.shape == (7, 60)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-13)
    np.testing.assert_allclose((W * Y).sum(axis=1), model.predict(X), rtol=1e-12)
    g, mu = model.gate_weights(X), model.expert_means(X)
    second = np.sum(g * (mu**2 + model.params.expert.var), axis=1)
    np.testing.assert_allclose((W * Y**2).sum(axis=1), second, rtol=1e-12)


@pytest.mark.parametrize("family", ["poisson", "bernoulli", "multinomial", "relu"])
def test_response_quadrature_other_families(family):
    X = np.linspace(-1, 1, 5)[:, None]
    if family == "multinomial":
        model = ml_truth()
    elif family == "relu":
        model = ds_relu_truth()
    else:
        params = MoEParams(
            GateParams(np.array([[0.0, 0.0], [0.5, 2.0]])),
            GLMExpertParams(np.array([[1.0, 0.5], [2.5, -1.0]])),
        )
        model = MixtureOfExperts(SoftmaxGate(), GLMExpert(family), params)
    Y, W = response_quadrature(model, X)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        (W * Y).sum(axis=1), model.predict(X), rtol=1e-10, atol=1e-12
    )


class SineRegression:
    """A truth that is not a mixture of experts: y = sin(2x) + N(0, s^2)."""

    response_family = "gaussian"

    def __init__(self, var=0.2):
        self.var = var

    def log_pdf(self, X, y):
        return norm.logpdf(y, np.sin(2 * X[:, 0]), np.sqrt(self.var))

    def response_quadrature(self, X, n_nodes):
        z, w = np.polynomial.hermite.hermgauss(n_nodes)
        Y = np.sin(2 * X[:, :1]) + np.sqrt(2 * self.var) * z
        return Y, np.broadcast_to(w / np.sqrt(np.pi), Y.shape)


@pytest.mark.parametrize("var", [0.2, 1e-4])
def test_custom_truth_uses_its_own_quadrature(var):
    truth, fitted = SineRegression(var), gaussian_one(0.1, 1.5, 0.3)
    X = X_NODES
    Y, W = response_quadrature(truth, X, 12)
    assert Y.shape == (len(X), 12)
    mean_gap = np.sin(2 * X[:, 0]) - (0.1 + 1.5 * X[:, 0])
    ratio = var / 0.3
    exact = 0.5 * (ratio - 1 - np.log(ratio) + mean_gap**2 / 0.3)
    kl = kl_divergence(truth, fitted, X, X_WEIGHTS)
    np.testing.assert_allclose(kl, X_WEIGHTS @ exact, rtol=1e-12)
    assert 0 < total_variation(truth, fitted, X, X_WEIGHTS) < 1


# =============================================================================
# Density discrepancies
# =============================================================================
def gaussian_closed_forms(truth, fitted, X):
    """Per-x KL, Hellinger and (equal variances) TV of two linear Gaussians."""
    (b_t, a_t), (b_f, a_f) = truth.params.expert.coef[0], fitted.params.expert.coef[0]
    v_t, v_f = truth.params.expert.var[0], fitted.params.expert.var[0]
    gap = (b_t + a_t * X[:, 0]) - (b_f + a_f * X[:, 0])
    log_ratio = np.log(v_t / v_f)
    kl = 0.5 * ((np.expm1(log_ratio) - log_ratio) + gap**2 / v_f)
    log_bc = 0.5 * np.log(2 * np.sqrt(v_t * v_f) / (v_t + v_f)) - gap**2 / (
        4 * (v_t + v_f)
    )
    hellinger = np.sqrt(-np.expm1(log_bc))
    tv = erf(np.abs(gap) / (2 * np.sqrt(2 * v_t)))  # 2 Phi(|d| / 2 sd) - 1
    return kl, hellinger, tv


@pytest.mark.parametrize(
    "fitted",
    [
        gaussian_one(1.1, 1.8, 0.7),
        gaussian_one(1.0, 2.0, 0.5 * 1.002),  # KL ~ 1e-6 from the variance
        gaussian_one(1.0 + 4e-4, 2.0, 0.5),  # KL = 1.6e-7
        gaussian_one(1.2, 2.0, 25.0),  # much wider than the truth
        gaussian_one(0.5, 2.5, 0.01),  # much narrower
    ],
    ids=["moderate", "variance", "tiny", "wide", "narrow"],
)
def test_kl_and_hellinger_match_gaussian_closed_forms(fitted):
    truth = gaussian_one(1.0, 2.0, 0.5)
    kl, hellinger, _ = gaussian_closed_forms(truth, fitted, X_NODES)
    got = density_losses(truth, fitted, X_NODES, X_WEIGHTS, which=("kl", "hellinger"))
    np.testing.assert_allclose(got["kl"], X_WEIGHTS @ kl, rtol=1e-9)
    np.testing.assert_allclose(got["hellinger"], X_WEIGHTS @ hellinger, rtol=1e-9)


def test_tiny_kl_keeps_its_relative_accuracy():
    truth, fitted = gaussian_one(1.0, 2.0, 0.5), gaussian_one(1.0 + 1e-5, 2.0, 0.5)
    kl = kl_divergence(truth, fitted, X_NODES, X_WEIGHTS)
    assert kl == pytest.approx(1e-10, rel=1e-9)


@pytest.mark.parametrize("delta", [1.0, 1e-2, 1e-5])
def test_tv_matches_equal_variance_closed_form(delta):
    truth, fitted = gaussian_one(0.0, 1.0, 0.3), gaussian_one(delta, 1.0 - delta, 0.3)
    _, _, tv = gaussian_closed_forms(truth, fitted, X_NODES)
    got = total_variation(truth, fitted, X_NODES, X_WEIGHTS)
    np.testing.assert_allclose(got, X_WEIGHTS @ tv, rtol=5e-9)
    finer = total_variation(truth, fitted, X_NODES, X_WEIGHTS, n_points=8000)
    np.testing.assert_allclose(finer, X_WEIGHTS @ tv, rtol=1e-11)


def test_identical_models_have_zero_losses(rng):
    models = [
        random_model(rng, n_experts=3, n_features=1),
        random_model(rng, 3, 1, gate=NormalizedSigmoidGate(top_k=2)),
        ds_relu_truth(),
        ml_truth(),
        poisson_one(1.0, 0.5),
    ]
    for model in models:
        losses = density_losses(model, model, X_NODES, X_WEIGHTS)
        assert losses == {"kl": 0.0, "hellinger": 0.0, "tv": 0.0}


def test_random_pairs_are_non_negative_and_ordered(rng):
    for gate in [SoftmaxGate(), NormalizedSigmoidGate(top_k=2)]:
        for _ in range(3):
            truth = random_model(rng, 3, 1, gate=gate)
            fitted = random_model(rng, 3, 1, gate=gate)
            d = density_losses(truth, fitted, X_NODES, X_WEIGHTS)
            assert d["kl"] > 0 and 0 < d["hellinger"] < 1 and 0 < d["tv"] < 1
            # E h <= sqrt(E KL / 2) (2 h^2 <= KL, Jensen); Pinsker; V <= sqrt(2) h
            assert d["hellinger"] <= np.sqrt(d["kl"] / 2) * (1 + 1e-9)
            assert d["tv"] <= np.sqrt(d["kl"] / 2) * (1 + 1e-9)
            assert d["tv"] <= np.sqrt(2) * d["hellinger"] * (1 + 1e-9)


def test_two_covariates(rng):
    X, w = uniform_quadrature(-1.0, 1.0, n_nodes=8, n_features=2)
    truth = random_model(rng, n_experts=3, n_features=2)
    assert density_losses(truth, truth, X, w)["kl"] == 0.0
    fitted = random_model(rng, n_experts=2, n_features=2)
    d = density_losses(truth, fitted, X, w)
    assert d["kl"] > 0 and 0 < d["tv"] <= np.sqrt(d["kl"] / 2)


def test_two_component_mixtures_match_adaptive_quadrature():
    truth = gaussian_mixture([[0, 0], [0.5, 4.0]], [[1, 2], [-1, -1.5]], [0.09, 0.25])
    fitted = gaussian_mixture([[0, 0], [0.3, 3.0]], [[1.2, 2], [-1, -1.0]], [0.15, 0.2])
    X = np.array([[-0.5], [0.1], [0.7]])
    got = density_losses(truth, fitted, X, which=("kl", "hellinger", "tv"))
    kl, h, tv = [], [], []
    for x in X:

        def lp(y, model, x=x):
            return model.log_pdf(np.full((1, 1), x[0]), np.array([y]))[0]

        def integral(f, x=x):
            means = np.concatenate(
                [truth.expert_means(x[None]), fitted.expert_means(x[None])], axis=1
            )
            edges = np.sort(np.concatenate([[-8.0, 8.0], means.ravel()]))
            return sum(
                quad(f, a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
                for a, b in zip(edges[:-1], edges[1:], strict=True)
            )

        kl.append(
            integral(lambda y: np.exp(lp(y, truth)) * (lp(y, truth) - lp(y, fitted)))
        )
        h2 = integral(
            lambda y: (np.exp(lp(y, truth) / 2) - np.exp(lp(y, fitted) / 2)) ** 2
        )
        h.append(np.sqrt(h2 / 2))
        tv.append(
            integral(lambda y: abs(np.exp(lp(y, truth)) - np.exp(lp(y, fitted)))) / 2
        )
    np.testing.assert_allclose(got["kl"], np.mean(kl), rtol=1e-9)
    np.testing.assert_allclose(got["hellinger"], np.mean(h), rtol=1e-9)
    np.testing.assert_allclose(got["tv"], np.mean(tv), rtol=1e-6)


def test_poisson_kl_closed_form():
    truth, fitted = poisson_one(1.0, 0.8), poisson_one(1.1, 0.6)
    rate_t = np.exp(1.0 + 0.8 * X_NODES[:, 0])
    rate_f = np.exp(1.1 + 0.6 * X_NODES[:, 0])
    exact = rate_t * np.log(rate_t / rate_f) - rate_t + rate_f
    kl = kl_divergence(truth, fitted, X_NODES, X_WEIGHTS)
    np.testing.assert_allclose(kl, X_WEIGHTS @ exact, rtol=1e-11)


def test_multinomial_losses_match_brute_force_sums():
    truth = ml_truth()
    fitted = multinomial_model(
        [[0.0, 0.0], [0.2, 2.0]],
        [[[1.2, 1.5], [-1.0, 1.3]], [[0.4, -2.2], [1.0, -1.0]]],
    )
    p, q = truth.predict_proba(X_NODES), fitted.predict_proba(X_NODES)
    got = density_losses(truth, fitted, X_NODES, X_WEIGHTS)
    kl = np.sum(p * np.log(p / q), axis=1)
    h = np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, axis=1))
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    np.testing.assert_allclose(got["kl"], X_WEIGHTS @ kl, rtol=1e-12)
    np.testing.assert_allclose(got["hellinger"], X_WEIGHTS @ h, rtol=1e-12)
    np.testing.assert_allclose(got["tv"], X_WEIGHTS @ tv, rtol=1e-12)


@pytest.mark.parametrize("var", [0.51, 50.0, 1e-3])
def test_the_grid_integrates_both_densities(var):
    truth = gaussian_one(1.0, 2.0, 0.5)
    fitted = gaussian_one(1.5, 2, var)
    losses = density_losses(truth, fitted, X_NODES, which="mass_defect")
    assert losses["mass_defect"] < 1e-13


def test_default_weights_are_uniform():
    truth, fitted = gaussian_one(0.0, 1.0, 0.3), gaussian_one(0.2, 1.0, 0.3)
    X = np.array([[0.0], [1.0]])
    assert hellinger_distance(truth, fitted, X) == pytest.approx(
        hellinger_distance(truth, fitted, X, [3.0, 3.0]), rel=1e-15
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: density_losses(t, poisson_one(0, 1), X_NODES), "Mismatched model"),
        (lambda t: density_losses(t, t, X_NODES, which=("kl", "bad")), "which"),
        (lambda t: density_losses(t, t, X_NODES[:, 0]), "2-D"),
        (lambda t: density_losses(t, t, X_NODES, np.ones(3)), "weights"),
        (lambda t: density_losses(t, t, X_NODES, -X_WEIGHTS), "non-negative"),
        (lambda t: kl_divergence(t, t.with_params(None), X_NODES), "no parameter"),
        (lambda t: kl_divergence(t, object(), X_NODES), "Cannot"),
    ],
)
def test_density_loss_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(gaussian_one(0.0, 1.0, 0.3))


def test_mismatched_number_of_classes():
    other = MixtureOfExperts(
        SoftmaxGate(),
        MultinomialLogisticExpert(n_classes=2),
        MoEParams(
            GateParams(np.zeros((1, 2))), MultinomialExpertParams(np.zeros((1, 1, 2)))
        ),
    )
    with pytest.raises(ValueError, match="classes"):
        kl_divergence(ml_truth(), other, X_NODES)


# =============================================================================
# Voronoi cells and gate hooks
# =============================================================================
def test_voronoi_cells_nearest_atom_ties_to_lowest():
    true = np.array([[0.0, 0.0], [2.0, 0.0]])
    fitted = np.array([[1.0, 0.0], [1.9, 0.5], [-3.0, 1.0]])
    np.testing.assert_array_equal(voronoi_cells(fitted, true), [0, 1, 0])
    # block_l1 with blocks (1, 1): |dx| + |dy|
    np.testing.assert_array_equal(
        voronoi_cells([[1.2, 3.0]], [[0.0, 0.0], [2.0, 4.0]], "block_l1", [1, 1]), [1]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric="manhattan"), "Unknown metric"),
        (dict(blocks=[1, 2]), "sum to the atom length"),
    ],
)
def test_voronoi_cells_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        voronoi_cells(np.zeros((2, 2)), np.zeros((1, 2)), **kwargs)
    with pytest.raises(ValueError, match="same number"):
        voronoi_cells(np.zeros((2, 2)), np.zeros((1, 3)))


def test_gate_voronoi_hooks():
    coef = np.array([[0.0, 0.0, 1.0], [0.5, -2.0, 3.0]])
    np.testing.assert_allclose(
        SoftmaxGate().voronoi_masses(GateParams(coef)), [1, np.exp(0.5)]
    )
    np.testing.assert_allclose(
        ModifiedSoftmaxGate().voronoi_masses(GateParams(coef)), [1, np.exp(0.5)]
    )
    np.testing.assert_allclose(
        NormalizedSigmoidGate().voronoi_masses(GateParams(coef)), expit([0.0, 0.5])
    )
    np.testing.assert_array_equal(
        SoftmaxGate().voronoi_slopes(GateParams(coef)), coef[:, 1:]
    )
    shared = SharedExpertsGate(NormalizedSigmoidGate(), 2)
    params = SharedGateParams(GateParams(coef), np.array([0.3, 0.7]))
    np.testing.assert_allclose(
        shared.voronoi_masses(params), [0.3, 0.7, *expit([0.0, 0.5])]
    )


# =============================================================================
# Voronoi losses
# =============================================================================
def sg_truth():
    return two_expert_truth()


def sigmoid_truth():
    return gaussian_mixture(
        [[-0.5, 1.0], [0.5, -2.0]],
        [[1, 2], [-1, -1.5]],
        [0.09, 0.25],
        gate=NormalizedSigmoidGate(),
    )


TRUTHS = {
    "softmax_gaussian": sg_truth,
    "sigmoid_gaussian": sigmoid_truth,
    "ds_strong": ds_relu_truth,
    "ds_linear": ds_linear_truth,
    "ds_sigmoid_sparse": ds_sparse_truth,
    "ds_sigmoid_dense": lambda: ds_relu_truth(
        NormalizedSigmoidGate(), ((-0.5, 5.0), (0.5, 5.0))
    ),
    "multinomial": ml_truth,
}
AUTO = {
    "softmax_gaussian": "softmax_gaussian",
    "sigmoid_gaussian": "softmax_gaussian",
    "ds_strong": "ds_strong",
    "ds_linear": "ds_linear",
    "ds_sigmoid_sparse": "ds_sigmoid_sparse",
    "ds_sigmoid_dense": "ds_sigmoid_sparse",  # G-check itself: no over cell
    "multinomial": "multinomial",
}


@pytest.mark.parametrize("anchor", ["none", "paper", "optimal"])
@pytest.mark.parametrize("name", list(TRUTHS))
def test_zero_at_the_truth(name, anchor):
    truth = TRUTHS[name]()
    kind = name if name in ("ds_sigmoid_dense", "ds_sigmoid_sparse") else "auto"
    loss = voronoi_loss(truth, truth, kind=kind, anchor=anchor)
    assert loss.value == 0.0
    assert voronoi_loss(truth, truth).kind == AUTO[name]
    np.testing.assert_array_equal(loss.cells, np.arange(truth.n_experts))
    np.testing.assert_array_equal(loss.cell_sizes, np.ones(truth.n_experts))
    assert all(
        v == 0 for v in per_parameter_errors(truth, truth, anchor=anchor).values()
    )


def split(model, expert, offsets, block, group_offset=0):
    """Split true ``expert`` into len(offsets) atoms moved along one block.

    ``block`` is "gate_slope", "intercept", "slope", "var" or an index into
    the expert coefficient row. Masses are shared equally (softmax: beta_0
    - log s; sigmoid: sigma(beta_0) / s; shared: omega / s).
    """
    s = len(offsets)
    params = model.params
    gate = params.gate
    shared = isinstance(gate, SharedGateParams)
    k1 = len(gate.shared_weights) if shared else 0
    routed_gate = model.gate.routed if shared else model.gate
    expert_params = params.expert
    stacked = isinstance(expert_params, StackedExpertParams)

    def rows(arr, i):
        return np.vstack([arr[:i], np.repeat(arr[i : i + 1], s, axis=0), arr[i + 1 :]])

    omega = gate.shared_weights if shared else None
    coef = (gate.routed if shared else gate).coef.copy()
    if expert < k1:
        omega = np.concatenate(
            [omega[:expert], np.full(s, omega[expert] / s), omega[expert + 1 :]]
        )
    else:
        r = expert - k1
        coef = rows(coef, r)
        if isinstance(routed_gate, SoftmaxGate):
            coef[r : r + s, 0] -= np.log(s)
        else:
            coef[r : r + s, 0] = logit(expit(coef[r, 0]) / s)
        if block == "gate_slope":
            coef[r : r + s, 1] += offsets
    if stacked:
        part = expert_params.shared if expert < k1 else expert_params.routed
        local = expert if expert < k1 else expert - k1
    else:
        part, local = expert_params, expert
    e_coef = rows(part.coef, local)
    e_var = rows(part.var[:, None], local)[:, 0] if hasattr(part, "var") else None
    if block == "var":
        e_var[local : local + s] += offsets
    elif block == "intercept":
        e_coef[local : local + s, 0] += offsets
    elif block == "slope":
        e_coef[local : local + s, -1] += offsets
    elif isinstance(block, int):
        e_coef[local : local + s, block] += offsets
    new_part = type(part)(e_coef, e_var) if hasattr(part, "var") else type(part)(e_coef)
    if stacked:
        new_experts = (
            StackedExpertParams(new_part, expert_params.routed)
            if expert < k1
            else StackedExpertParams(expert_params.shared, new_part)
        )
        n_shared = len(omega)
        experts = StackedExperts(model.expert.shared, model.expert.routed, n_shared)
    else:
        new_experts, experts = new_part, model.expert
    if shared:
        new_gate = SharedGateParams(GateParams(coef), omega, gate.shared_share)
        gate_obj = SharedExpertsGate(routed_gate, len(omega))
    else:
        new_gate, gate_obj = GateParams(coef), model.gate
    return MixtureOfExperts(gate_obj, experts, MoEParams(new_gate, new_experts))


def loglog_slope(make, kind, anchor="none", eps=(1e-1, 1e-2), **kwargs):
    values = [
        voronoi_loss(make.truth, make(e), kind=kind, anchor=anchor, **kwargs).value
        for e in eps
    ]
    return np.log(values[0] / values[1]) / np.log(eps[0] / eps[1]), values


def splitter(truth, expert, block, s=2):
    offsets = {
        1: [1.0],
        2: [1.0, -1.0],
        3: [1.0, 0.0, -1.0],
        4: [1.0, 0.5, -0.5, -1.0],
    }[s]

    def make(eps):
        return split(truth, expert, eps * np.array(offsets), block)

    make.truth = truth
    return make


@pytest.mark.parametrize(
    "truth, expert, block, s, kind, exponent",
    [
        (sg_truth, 1, "intercept", 2, "softmax_gaussian", 4),
        (sg_truth, 1, "slope", 2, "softmax_gaussian", 2),
        (sg_truth, 1, "gate_slope", 2, "softmax_gaussian", 4),
        (sg_truth, 1, "var", 2, "softmax_gaussian", 2),
        (sg_truth, 1, "intercept", 3, "softmax_gaussian", 6),
        (sg_truth, 1, "slope", 3, "softmax_gaussian", 3),
        (sigmoid_truth, 0, "intercept", 2, "softmax_gaussian", 4),
        (ds_relu_truth, 0, "var", 2, "ds_strong", 2),
        (ds_relu_truth, 2, 0, 2, "ds_strong", 2),
        (ds_linear_truth, 0, "intercept", 3, "ds_linear", 6),
        (ds_linear_truth, 0, "slope", 3, "ds_linear", 2),
        (ds_linear_truth, 0, "var", 2, "ds_linear", 2),
        (ds_linear_truth, 2, "intercept", 2, "ds_linear", 4),
        (ds_linear_truth, 2, "gate_slope", 3, "ds_linear", 6),
        (ds_sparse_truth, 1, "var", 2, "ds_sigmoid_sparse", 2),
        (ds_sparse_truth, 1, 0, 1, "ds_sigmoid_dense", 1),  # against G-check
        (ml_truth, 1, 1, 2, "multinomial", 2),
    ],
)
def test_split_atom_loss_scales_with_the_cell_exponent(
    truth, expert, block, s, kind, exponent
):
    make = splitter(truth(), expert, block, s)
    slope, values = loglog_slope(make, kind)
    assert values[0] > values[1] > 0
    assert slope == pytest.approx(exponent, abs=0.02)
    loss = voronoi_loss(make.truth, make(1e-3), kind=kind)
    assert sorted(loss.cell_sizes) == sorted([1] * (make.truth.n_experts - 1) + [s])


def test_split_exponent_with_optimal_anchor():
    make = splitter(sg_truth(), 1, "intercept")
    slope, _ = loglog_slope(make, "softmax_gaussian", anchor="optimal")
    assert slope == pytest.approx(4, abs=0.02)


def test_cells_of_four_atoms_need_exponents():
    make = splitter(sg_truth(), 1, "intercept", s=4)
    with pytest.raises(ValueError, match=r"sizes \[4\].*k\* \+ 2.*exponents"):
        voronoi_loss(make.truth, make(1e-2))
    slope, _ = loglog_slope(make, "softmax_gaussian", exponents={4: 8.0})
    assert slope == pytest.approx(8, abs=0.02)
    # exponent 2 whatever the size: no error
    relu = splitter(ds_relu_truth(), 1, "var", s=4)
    assert voronoi_loss(relu.truth, relu(1e-2), kind="ds_strong").value > 0


def perturbed(truth, rng, scale=0.05):
    """An over-specified fit: a true atom split in two, every number jittered."""
    fit = split(truth, truth.n_experts - 1, [0.3, -0.3], "intercept")
    params = fit.params

    def jitter(a):
        return np.asarray(a, float) + scale * rng.normal(size=np.shape(a))

    gate = params.gate
    if isinstance(gate, SharedGateParams):
        coef = jitter(gate.routed.coef)
        if isinstance(fit.gate.routed, SoftmaxGate):
            coef -= coef[0]
        omega = gate.shared_weights * np.exp(
            scale * rng.normal(size=len(gate.shared_weights))
        )
        new_gate = SharedGateParams(GateParams(coef), omega / omega.sum(), 0.5)
    else:
        coef = jitter(gate.coef)
        if isinstance(fit.gate, SoftmaxGate):
            coef -= coef[0]
        new_gate = GateParams(coef)
    experts = params.expert
    if isinstance(experts, StackedExpertParams):
        new_experts = StackedExpertParams(
            type(experts.shared)(
                jitter(experts.shared.coef), experts.shared.var * 1.05
            ),
            type(experts.routed)(
                jitter(experts.routed.coef), experts.routed.var * 0.95
            ),
        )
    elif hasattr(experts, "var"):
        new_experts = type(experts)(jitter(experts.coef), experts.var * 1.1)
    else:
        new_experts = type(experts)(jitter(experts.coef))
    return fit.with_params(MoEParams(new_gate, new_experts))


@pytest.mark.parametrize("name", list(TRUTHS))
def test_positive_and_invariant_to_relabelling(name, rng):
    truth = TRUTHS[name]()
    fitted = perturbed(truth, rng)
    m = fitted.n_experts
    k1 = fitted.gate.n_shared if isinstance(fitted.gate, SharedExpertsGate) else 0
    perm = np.concatenate([np.arange(k1)[::-1], k1 + rng.permutation(m - k1)])
    kind = "ds_sigmoid_dense" if name == "ds_sigmoid_dense" else "auto"
    base = voronoi_loss(truth, fitted, kind=kind)
    moved = voronoi_loss(truth, fitted.permute(perm), kind=kind)
    assert base.value > 0
    assert moved.value == pytest.approx(base.value, rel=1e-7)
    np.testing.assert_array_equal(moved.cells, base.cells[perm])
    np.testing.assert_array_equal(moved.cell_sizes, base.cell_sizes)
    errors = per_parameter_errors(truth, fitted, kind=kind)
    moved_errors = per_parameter_errors(truth, fitted.permute(perm), kind=kind)
    assert errors.keys() == moved_errors.keys()
    np.testing.assert_allclose(
        list(moved_errors.values()), list(errors.values()), rtol=1e-5, atol=1e-9
    )


@pytest.mark.parametrize("name", ["softmax_gaussian", "ds_linear", "multinomial"])
def test_optimal_anchor_ignores_gate_translation_and_beats_none(name, rng):
    truth = TRUTHS[name]()
    for _ in range(3):
        fitted = perturbed(truth, rng, scale=0.3)
        coef = (
            fitted.params.gate.coef
            if not hasattr(fitted.params.gate, "routed")
            else fitted.params.gate.routed.coef
        )
        shifted = with_gate(fitted, coef + rng.normal(size=coef.shape[1]))
        optimal = voronoi_loss(truth, fitted, anchor="optimal")
        assert voronoi_loss(truth, shifted, anchor="optimal").value == pytest.approx(
            optimal.value, rel=1e-7
        )
        assert optimal.value <= voronoi_loss(truth, fitted, anchor="none").value
        assert optimal.shift is not None and optimal.shift.shape == (coef.shape[1],)


def test_paper_anchor_reexpresses_both_models_on_the_last_row():
    truth = sg_truth()
    fitted = with_gate(truth, [[0.0, 0.0], [0.7, 4.0]])
    none = voronoi_loss(truth, fitted, anchor="none").value
    paper = voronoi_loss(truth, fitted, anchor="paper").value
    # none: second mass e^0.7 vs e^0.5, weighted |d beta_0| absent (mass only)
    assert none == pytest.approx(abs(np.exp(0.7) - np.exp(0.5)))
    # paper: first mass e^-0.7 vs e^-0.5
    assert paper == pytest.approx(abs(np.exp(-0.7) - np.exp(-0.5)))
    # optimal: the truth's masses (1, e^0.5) / (1 + e^0.5); exp(-t_0) matches
    # the second one, the first is off by (1 - e^-0.2) / (1 + e^0.5)
    optimal = voronoi_loss(truth, fitted, anchor="optimal")
    total = 1 + np.exp(0.5)
    assert optimal.value == pytest.approx((1 - np.exp(-0.2)) / total, rel=1e-12)
    np.testing.assert_allclose(optimal.shift, [0.2 + np.log(total), 0.0], atol=1e-12)


def test_sigmoid_regime_is_chosen_from_the_over_specified_cells(rng):
    sparse = ds_sparse_truth()
    assert voronoi_loss(sparse, split(sparse, 1, [0.1, -0.1], "var")).kind == (
        "ds_sigmoid_sparse"
    )
    dense = TRUTHS["ds_sigmoid_dense"]()
    assert voronoi_loss(dense, split(dense, 1, [0.1, -0.1], "var")).kind == (
        "ds_sigmoid_dense"
    )


def test_block_l1_cells():
    truth = sg_truth()
    fitted = split(truth, 1, [0.05, -0.05], "intercept")
    euclid = voronoi_loss(truth, fitted, cell_metric="euclid")
    l1 = voronoi_loss(truth, fitted, cell_metric="block_l1")
    np.testing.assert_array_equal(euclid.cells, l1.cells)
    assert l1.value == pytest.approx(euclid.value)


def test_per_parameter_errors_values_and_empty_cells():
    truth = sg_truth()
    fitted = split(truth, 1, [0.2, -0.1], "slope")
    errors = per_parameter_errors(truth, fitted, anchor="none")
    assert errors["slope[1]"] == pytest.approx(0.2)
    assert errors["slope[0]"] == 0.0 and errors["intercept[1]"] == 0.0
    # a fit with one expert near truth's expert 0 only: cell 1 is empty
    lonely = gaussian_mixture([[0.0, 0.0]], [[1.0, 2.1]], [0.09])
    errors = per_parameter_errors(truth, lonely, anchor="none")
    assert np.isnan(errors["var[1]"]) and errors["slope[0]"] == pytest.approx(0.1)
    loss = voronoi_loss(truth, lonely, anchor="none")
    np.testing.assert_array_equal(loss.cell_sizes, [1, 0])
    # the empty cell costs its true mass e^0.5
    assert loss.value == pytest.approx(np.exp(0.5) + 0.1, rel=1e-12)


def test_per_parameter_error_keys_name_the_group():
    truth = ds_linear_truth()
    errors = per_parameter_errors(truth, split(truth, 0, [0.1, -0.1], "intercept"))
    assert {"shared_slope[0]", "routed_slope[1]", "routed_gate_slope[2]"} <= set(errors)
    assert errors["shared_intercept[0]"] == pytest.approx(0.1, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="D2"), "Unknown kind"),
        (dict(anchor="last"), "Unknown anchor"),
        (dict(cell_metric="l2"), "Unknown cell_metric"),
        (dict(exponents={1: 2.0}), "exponents"),
        (dict(kind="softmax_gaussian", truth=ds_linear_truth), "without shared"),
        (dict(kind="ds_linear", truth=ds_relu_truth), "no exponent for the atom"),
    ],
)
def test_voronoi_errors(kwargs, match):
    truth = kwargs.pop("truth", sg_truth)()
    with pytest.raises(ValueError, match=match):
        voronoi_loss(truth, truth, **kwargs)


def test_voronoi_mismatched_families():
    truth = sg_truth()
    sigmoid = gaussian_mixture(
        truth.params.gate.coef,
        truth.params.expert.coef,
        truth.params.expert.var,
        gate=NormalizedSigmoidGate(),
    )
    known = MixtureOfExperts(
        truth.gate,
        GaussianExpert(variance=0.1),
        MoEParams(
            truth.params.gate,
            GaussianExpertParams(truth.params.expert.coef, np.full(2, 0.1)),
        ),
    )
    for other in (sigmoid, ds_linear_truth(), ml_truth(), known):
        with pytest.raises(ValueError, match="Mismatched model families"):
            voronoi_loss(truth, other)
    glm = MixtureOfExperts(
        SoftmaxGate(),
        GLMExpert(),
        MoEParams(GateParams(np.zeros((1, 2))), GLMExpertParams(np.zeros((1, 2)))),
    )
    with pytest.raises(ValueError, match="pass kind="):
        voronoi_loss(glm, glm)
    assert voronoi_loss(glm, glm, kind="multinomial").value == 0.0


# =============================================================================
# What the losses read from the pieces: their declarations
# =============================================================================
@dataclass(frozen=True)
class LinearMeanParams:
    """Coefficients ``(m, 2)`` and noise variances ``(m,)``."""

    coef: np.ndarray
    var: np.ndarray


class LinearMean:
    """Linear Gaussian experts written outside moestat, declaring nothing."""

    def design(self, X):
        return np.column_stack([np.ones(len(X)), X])

    def mean(self, params, Phi):
        return Phi @ params.coef.T

    def atom_blocks(self, params):
        return [
            {"intercept": c[:1], "slope": c[1:], "var": np.array([v])}
            for c, v in zip(params.coef, params.var, strict=True)
        ]


class DeclaredLinearMean(LinearMean):
    """The same family, declaring its response family and Voronoi signature."""

    response_family = "gaussian"
    voronoi_signature = "linear"


class PlainSoftmax:
    """A softmax gate written outside moestat, declaring nothing."""

    def design(self, X):
        return SoftmaxGate().design(X)

    def voronoi_masses(self, params):
        return SoftmaxGate().voronoi_masses(params)

    def voronoi_slopes(self, params):
        return SoftmaxGate().voronoi_slopes(params)


def with_family(model, expert):
    """``model`` (linear Gaussian experts) with another expert family object."""
    expert_params = model.params.expert
    params = MoEParams(
        model.params.gate, LinearMeanParams(expert_params.coef, expert_params.var)
    )
    return MixtureOfExperts(model.gate, expert, params)


def test_the_pieces_declare_what_the_losses_read():
    def declared(expert):
        return expert.response_family, expert.voronoi_signature

    assert declared(GaussianExpert()) == ("gaussian", "linear")
    assert declared(ReLUExpert()) == ("gaussian", "relu")
    assert declared(GLMExpert("bernoulli")) == ("bernoulli", None)
    assert declared(MultinomialLogisticExpert(n_classes=3)) == (
        "categorical",
        "multinomial",
    )
    # a stack: what both parts declare, None where they differ
    relu = StackedExperts(ReLUExpert(bias=True), ReLUExpert(bias=False), 1)
    assert declared(relu) == ("gaussian", "relu")
    mixed = StackedExperts(ReLUExpert(), GaussianExpert(), 1)
    assert declared(mixed) == ("gaussian", None)
    assert declared(StackedExperts(GaussianExpert(), GLMExpert(), 1)) == (None, None)

    def gate(g):
        return g.voronoi_signature, g.translation_invariant

    assert gate(SoftmaxGate()) == ("softmax", True)
    assert gate(ModifiedSoftmaxGate()) == ("modified_softmax", True)
    assert gate(NormalizedSigmoidGate()) == ("normalized_sigmoid", False)
    # shared experts beside a routed gate: the routed gate's declarations
    assert gate(SharedExpertsGate(NormalizedSigmoidGate(), 1)) == (
        "normalized_sigmoid",
        False,
    )
    assert gate(SharedExpertsGate(SoftmaxGate(), 2)) == ("softmax", True)


def test_a_family_declaring_gaussian_responses_gets_the_density_losses():
    # only the declared response family, the means and the variances are read
    truth = sg_truth()
    expert = truth.params.expert
    fitted = with_experts(
        truth, GaussianExpertParams(expert.coef + 0.1, 1.5 * expert.var)
    )
    expected = density_losses(truth, fitted, X_NODES, X_WEIGHTS, DENSITY_LOSSES)
    family = DeclaredLinearMean()
    custom_truth, custom_fit = with_family(truth, family), with_family(fitted, family)
    for pair in [
        (custom_truth, custom_fit),
        (truth, custom_fit),
        (custom_truth, fitted),
    ]:
        losses = density_losses(*pair, X_NODES, X_WEIGHTS, DENSITY_LOSSES)
        for name in ("kl", "hellinger", "tv"):
            assert losses[name] == pytest.approx(expected[name], rel=1e-12)
    Y, W = response_quadrature(custom_truth, X_NODES[:5])
    Y_ref, W_ref = response_quadrature(truth, X_NODES[:5])
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-14)
    np.testing.assert_allclose(W, W_ref, rtol=1e-14)


def test_a_family_without_a_response_family_is_told_the_missing_declaration():
    truth = sg_truth()
    undeclared = with_family(truth, LinearMean())
    for pair in [(truth, undeclared), (undeclared, truth)]:
        with pytest.raises(
            ValueError, match="LinearMean does not declare 'response_family'"
        ):
            kl_divergence(*pair, X_NODES)

    class GammaMean(LinearMean):
        response_family = "gamma"

    with pytest.raises(ValueError, match="response_family='gamma'"):
        kl_divergence(truth, with_family(truth, GammaMean()), X_NODES)


def test_voronoi_losses_read_declared_signatures_not_classes():
    truth = sg_truth()
    fitted = split(truth, 0, [0.1, -0.1], "intercept")
    expected = voronoi_loss(truth, fitted)
    custom = voronoi_loss(truth, with_family(fitted, DeclaredLinearMean()))
    assert custom.kind == expected.kind == "softmax_gaussian"
    assert custom.value == pytest.approx(expected.value, rel=1e-12)
    np.testing.assert_array_equal(custom.cells, expected.cells)


class Spline(DeclaredLinearMean):
    """Atoms of the same blocks under another name in the catalogue."""

    voronoi_signature = "spline"


@pytest.mark.parametrize(
    "other, match",
    [
        (
            lambda t: MixtureOfExperts(NormalizedSigmoidGate(), t.expert, t.params),
            r"gate SoftmaxGate \('softmax'\).*the fitted one gate "
            r"NormalizedSigmoidGate \('normalized_sigmoid'\)",
        ),
        (
            lambda t: MixtureOfExperts(ModifiedSoftmaxGate(), t.expert, t.params),
            r"gate SoftmaxGate \('softmax'\).*ModifiedSoftmaxGate "
            r"\('modified_softmax'\)",
        ),
        (
            lambda t: with_family(t, Spline()),
            r"gate .* experts GaussianExpert \('linear'\), the fitted one .* experts "
            r"Spline \('spline'\)",
        ),
    ],
    ids=["gate", "modified softmax gate", "expert family"],
)
def test_mismatched_signatures_are_refused_naming_both(other, match):
    truth = sg_truth()
    with pytest.raises(ValueError, match="the true model has " + match):
        voronoi_loss(truth, other(truth))


def test_voronoi_pieces_without_declarations_are_named():
    truth = sg_truth()
    with pytest.raises(
        ValueError, match="LinearMean does not declare 'voronoi_signature'"
    ):
        voronoi_loss(truth, with_family(truth, LinearMean()))
    plain = MixtureOfExperts(PlainSoftmax(), truth.expert, truth.params)
    with pytest.raises(ValueError, match="does not declare 'translation_invariant'"):
        voronoi_loss(truth, plain)

    class InvariantSoftmax(PlainSoftmax):
        translation_invariant = True

    invariant = MixtureOfExperts(InvariantSoftmax(), truth.expert, truth.params)
    with pytest.raises(ValueError, match="does not declare 'voronoi_signature'"):
        voronoi_loss(truth, invariant)
