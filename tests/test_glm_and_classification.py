"""GLM experts (Poisson, Bernoulli) and multinomial logistic experts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import approx_fprime
from sklearn.datasets import load_wine

from moestat import (
    ConvergenceWarning,
    DegenerateFitWarning,
    GateParams,
    GLMExpert,
    GLMExpertParams,
    MixtureOfExperts,
    MoEParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
    MultinomialLogisticMoE,
    PolynomialMoE,
    SoftmaxGate,
)
from moestat.datasets import make_moe_classification, make_moe_glm
from moestat.fit import em, initial_params, log_likelihood_and_gradient, pack, unpack
from tests.helpers import GATES, random_gate_params

FAMILIES = {
    "poisson": sm.families.Poisson(),
    "bernoulli": sm.families.Binomial(),
}


# -- one expert is the classical model ----------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_glm_expert_is_the_statsmodels_glm(rng, family):
    X = rng.uniform(-1, 1, size=(600, 2))
    expert = GLMExpert(family, degree=2)
    Phi = expert.design(X)
    eta = Phi @ rng.normal(0, 0.4, size=Phi.shape[1])
    if family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        y = (rng.random(600) < 1 / (1 + np.exp(-eta))).astype(float)
    est = PolynomialMoE(1, degree=2, family=family, n_init=1, tol=1e-12).fit(X, y)
    reference = sm.GLM(y, Phi, family=FAMILIES[family]).fit(tol=1e-12)
    np.testing.assert_allclose(est.log_likelihood_, reference.llf, rtol=1e-10)
    np.testing.assert_allclose(est.expert_coef_[0], reference.params, rtol=1e-5)


def test_one_multinomial_expert_is_statsmodels_mnlogit(rng):
    X = rng.normal(size=(500, 2))
    scores = np.column_stack([np.zeros(500), X @ [1.0, -0.5] + 0.3, X @ [-1.0, 1.0]])
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    y = (probs.cumsum(axis=1) < rng.random(500)[:, None]).sum(axis=1)
    est = MultinomialLogisticMoE(1, n_init=1, tol=1e-12).fit(X, y)
    reference = sm.MNLogit(y, sm.add_constant(X)).fit(
        disp=0, method="newton", tol=1e-12
    )
    np.testing.assert_allclose(est.log_likelihood_, reference.llf, rtol=1e-8)
    np.testing.assert_allclose(est.expert_coef_[0], reference.params.T, rtol=1e-5)


# -- EM is monotone, gradients are right ----------------------------------------
def glm_model(rng, family, n_experts, n_features, degree, gate, n_classes=3):
    if family == "multinomial":
        expert = MultinomialLogisticExpert(n_classes, degree=degree)
    else:
        expert = GLMExpert(family, degree=degree)
    spec = MixtureOfExperts(gate, expert)
    design = spec.design(np.zeros((1, n_features)))
    p = design.expert.shape[1]
    if family == "multinomial":
        coef = rng.normal(0, 1.5, size=(n_experts, n_classes - 1, p))
        expert_params = MultinomialExpertParams(coef)
    else:
        expert_params = GLMExpertParams(rng.normal(0, 0.8, size=(n_experts, p)))
    gate_params = random_gate_params(gate, n_experts, design.gate.shape[1], rng)
    return spec.with_params(MoEParams(gate_params, expert_params))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    family=st.sampled_from(["poisson", "bernoulli", "multinomial"]),
    n_experts=st.integers(1, 3),
    n_features=st.integers(1, 2),
    degree=st.integers(0, 2),
    gate_name=st.sampled_from(["softmax", "normalized_sigmoid", "shared_softmax"]),
)
def test_em_is_monotone_for_every_family(
    seed, family, n_experts, n_features, degree, gate_name
):
    rng = np.random.default_rng(seed)
    gate = GATES[gate_name]
    n_experts += getattr(gate, "n_shared", 0)
    truth = glm_model(rng, family, n_experts, n_features, degree, gate)
    X = rng.uniform(-1, 1, size=(300, n_features))
    y, _ = truth.sample(X, rng)
    spec = truth.with_params(None)
    design = spec.design(X)
    start = initial_params(spec, design, X, y, n_experts, "random", rng)
    result = em(spec.with_params(start), design, y, tol=0.0, max_iter=40)
    steps = np.diff(result.trace)
    assert np.all(steps >= -1e-10 * np.abs(result.trace[:-1])), steps.min()
    assert np.all(np.isfinite(result.trace))


@pytest.mark.parametrize("family", ["poisson", "bernoulli", "multinomial"])
@pytest.mark.parametrize("gate_name", ["softmax", "normalized_sigmoid"])
def test_log_likelihood_gradient_matches_finite_differences(rng, family, gate_name):
    truth = glm_model(rng, family, 3, 2, 1, GATES[gate_name])
    X = rng.uniform(-1, 1, size=(200, 2))
    y, _ = truth.sample(X, rng)
    design = truth.design(X)
    shapes = (3, design.gate.shape[1], design.expert.shape[1])
    theta = pack(truth, 0.0)

    def log_lik(t):
        model = truth.with_params(unpack(truth, t, shapes, 0.0))
        return log_likelihood_and_gradient(model, design, y)[0]

    _, analytic = log_likelihood_and_gradient(truth, design, y)
    numeric = approx_fprime(theta, log_lik, 1e-6)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-3)


# -- recovery -------------------------------------------------------------------
def test_multinomial_moe_recovers_the_truth_at_n_20000(seed):
    # theory.md section 8.3, regime 1: d = 1, K = 3, X ~ U[-2, 2], 2 experts;
    # class 3 is the papers' reference, the first class is ours: shift.
    papers = np.array(
        [[[2.0, 0.5], [-1.5, 0.0]], [[-2.0, -0.5], [1.5, 0.3]]]
    )  # (expert, class 1..2, (slope, intercept))
    coef = np.zeros((2, 2, 2))  # (expert, class 2..3 vs class 1, (const, x))
    for i in range(2):
        scores = np.vstack([papers[i][:, [1, 0]], np.zeros(2)])  # classes 1, 2, 3
        coef[i] = scores[1:] - scores[0]
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.5, 3.0]])), MultinomialExpertParams(coef)
    )
    X, y, truth = make_moe_classification(
        20_000, n_classes=3, params=params, x_low=-2, x_high=2, random_state=seed
    )
    # the likelihood is flat along some directions here: EM crawls there
    est = MultinomialLogisticMoE(2, n_init=1, max_iter=2500, random_state=seed)
    est.fit(X, y)
    assert est.log_likelihood_ >= truth.log_pdf(X, y).sum()
    # A mixture of categorical distributions is a categorical distribution:
    # the data identify P(y | x), and the parameters only through the shapes
    # of the gate and the experts. At this n the likelihood is still flat
    # along some parameter directions (its maximum lies about 2 from the
    # truth, from any start), so the estimate is judged by what is identified
    # and by reaching the maximum found from the true parameters.
    from_truth = MultinomialLogisticMoE(2, n_init=1, init=params, max_iter=2500)
    from_truth.fit(X, y)
    # within 0.5: two maxima 0.2 apart lie on this flat ridge
    assert est.log_likelihood_ >= from_truth.log_likelihood_ - 0.5
    fitted = est.model_.align_to(truth)
    assert np.abs(fitted.predict_proba(X) - truth.predict_proba(X)).max() < 0.03


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_glm_moe_recovers_the_truth_at_n_20000(seed, family):
    coef = np.array([[1.0, 1.5], [-0.5, -1.0]])
    if family == "bernoulli":
        coef = np.array([[1.5, 3.0], [-1.0, -2.5]])
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.3, 4.0]])), GLMExpertParams(coef)
    )
    X, y, truth = make_moe_glm(20_000, family=family, params=params, random_state=seed)
    est = PolynomialMoE(2, degree=1, family=family, n_init=3, random_state=seed)
    est.fit(X, y)
    assert est.log_likelihood_ >= truth.log_pdf(X, y).sum()
    fitted = est.model_.align_to(truth)
    np.testing.assert_allclose(
        fitted.predict(X), truth.predict(X), atol=0.05, rtol=0.05
    )
    if family == "poisson":
        # counts carry the experts' own spread: the parameters are identified
        assert np.abs(fitted.params.expert.coef - coef).max() < 0.15
        assert np.abs(fitted.gate_weights(X) - truth.gate_weights(X)).max() < 0.1
    else:
        # one 0/1 response per x identifies only P(y = 1 | x) (a mixture of
        # Bernoullis is a Bernoulli): judged by the mean and the maximum.
        from_truth = PolynomialMoE(2, degree=1, family=family, n_init=1, init=params)
        # both fits stop once at most tol * n = 0.02 is predicted to remain
        assert est.log_likelihood_ >= from_truth.fit(X, y).log_likelihood_ - 0.05


# -- classifier manners -----------------------------------------------------------
def test_classifier_on_wine_with_string_labels():
    X, y = load_wine(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    labels = np.array(["barolo", "grignolino", "barbera"])[y]
    # standardised wine separates inside an expert: the ridge penalty keeps
    # the coefficients finite (without it the fit is reported as degenerate)
    clf = MultinomialLogisticMoE(2, n_init=2, alpha=1.0, random_state=0)
    clf.fit(X[:, :4], labels)
    assert list(clf.classes_) == ["barbera", "barolo", "grignolino"]
    proba = clf.predict_proba(X[:, :4])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(clf.predict(X[:, :4])) <= set(labels)
    assert clf.score(X[:, :4], labels) > 0.8
    np.testing.assert_allclose(
        clf.score_samples(X[:, :4], labels).sum(), clf.log_likelihood_, rtol=1e-10
    )
    with np.errstate(divide="ignore"):  # separated classes have probability 0
        np.testing.assert_allclose(clf.predict_log_proba(X[:5, :4]), np.log(proba[:5]))
    assert set(clf.sample(X[:, :4], random_state=0)) <= set(labels)
    # gate (m-1)(d+1) = 5, experts 2 * (K-1) * (d+1) = 20
    assert clf.n_parameters_ == 5 + 20
    with pytest.raises(ValueError, match="labels not seen in fit"):
        clf.score_samples(X[:2, :4], ["barolo", "nebbiolo"])


# -- hard data: errors or finite fits ---------------------------------------------
def test_separable_classes_give_a_finite_fit():
    X = np.linspace(-1, 1, 60)[:, None]
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DegenerateFitWarning)
        clf = MultinomialLogisticMoE(2, n_init=2, random_state=0).fit(X, y)
    assert np.all(np.isfinite(clf.expert_coef_))
    assert np.isfinite(clf.log_likelihood_)
    assert clf.score(X, y) == 1.0


def test_a_class_seen_once_is_fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 1))
    y = rng.integers(0, 2, size=80)
    y[7] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DegenerateFitWarning)
        clf = MultinomialLogisticMoE(2, n_init=2, random_state=0).fit(X, y)
    assert list(clf.classes_) == [0, 1, 2]
    assert np.all(np.isfinite(clf.predict_proba(X)))


def test_a_single_class_is_refused():
    with pytest.raises(ValueError, match="needs at least 2 classes in y; got 1 class"):
        MultinomialLogisticMoE().fit(np.zeros((10, 1)), np.ones(10))


def test_negative_counts_are_refused():
    X = np.linspace(0, 1, 20)[:, None]
    y = np.arange(20.0) - 3
    with pytest.raises(ValueError, match=r"family='poisson' needs counts y >= 0"):
        PolynomialMoE(family="poisson").fit(X, y)


def test_non_integer_counts_give_the_quasi_poisson_fit(rng):
    X = rng.uniform(-1, 1, size=(300, 1))
    y = np.exp(0.5 + X[:, 0]) * rng.gamma(5, 0.2, size=300)
    est = PolynomialMoE(1, degree=1, family="poisson", n_init=1, tol=1e-12).fit(X, y)
    reference = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson()).fit()
    np.testing.assert_allclose(est.expert_coef_[0], reference.params, rtol=1e-5)


@pytest.mark.parametrize("bad", [2.0, -1.0])
def test_bernoulli_labels_outside_zero_one_are_refused(bad):
    X = np.linspace(0, 1, 20)[:, None]
    y = np.r_[np.zeros(10), np.ones(9), bad]
    with pytest.raises(ValueError, match=r"family='bernoulli' needs y in \[0, 1\]"):
        PolynomialMoE(family="bernoulli").fit(X, y)


def test_overflowing_poisson_predictors_stay_finite(rng):
    X = rng.uniform(0, 10, size=(200, 1))
    y = rng.poisson(np.exp(0.6 * X[:, 0])).astype(float)  # counts up to ~400
    with warnings.catch_warnings():
        # one Poisson regression fitted by two experts: the gate may separate
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", DegenerateFitWarning)
        est = PolynomialMoE(2, degree=2, family="poisson", random_state=0).fit(X, y)
    assert np.isfinite(est.log_likelihood_)
    assert np.all(np.isfinite(est.predict(X)))


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="'family' parameter of PolynomialMoE"):
        PolynomialMoE(family="gamma").fit(np.zeros((10, 1)), np.arange(10.0))
    with pytest.raises(ValueError, match="Unknown GLM family 'gamma'"):
        GLMExpert("gamma")


def test_generators_return_their_truth():
    X, y, truth = make_moe_classification(300, n_experts=2, n_classes=4, random_state=0)
    assert set(np.unique(y)) <= {0, 1, 2, 3} and truth.n_experts == 2
    X, y, truth = make_moe_glm(
        300, family="bernoulli", gate=SoftmaxGate(), random_state=0
    )
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert isinstance(truth.expert, GLMExpert)


def test_expert_families_name_the_responses_they_refuse():
    with pytest.raises(ValueError, match="class codes 0 .. 2"):
        MultinomialLogisticExpert(3).check_response(np.array([0.0, 1.0, 3.0]))
    with pytest.raises(ValueError, match="needs counts y >= 0"):
        GLMExpert("poisson").check_response(np.array([1.0, -1.0]))
    GLMExpert("poisson").check_response(np.array([0.0, 2.5]))  # quasi-Poisson
