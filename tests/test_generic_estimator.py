"""MixtureOfExpertsRegressor and MixtureOfExpertsClassifier: any gate, any family.

The presets (GaussianMoE, PolynomialMoE, MultinomialLogisticMoE) are these
estimators with the expert family built from their parameters, so the same
gate and family give the same fit, to round-off.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.utils.estimator_checks import parametrize_with_checks

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianMoE,
    GLMExpert,
    MixtureOfExperts,
    MixtureOfExpertsClassifier,
    MixtureOfExpertsRegressor,
    MoEParams,
    MultinomialLogisticExpert,
    MultinomialLogisticMoE,
    NormalizedSigmoidGate,
    PolynomialMoE,
    ReLUExpert,
    ReLUExpertParams,
    SingularInformationWarning,
    SoftmaxGate,
    StackedExperts,
)
from moestat.datasets import make_moe_glm, make_moe_regression
from tests.test_estimators import _expected_failed_checks


class WithoutHook:
    """A piece written outside moestat: it forwards to a built-in one.

    It is no instance of the built-in class; ``hidden`` names a hook it
    lacks (None: it has them all).
    """

    def __init__(self, piece, hidden=None):
        self._piece = piece
        self._hidden = hidden

    def __getattr__(self, name):
        if name.startswith("_") or name == self._hidden:
            raise AttributeError(name)
        return getattr(self._piece, name)

    def __repr__(self):
        return f"WithoutHook({self._piece!r}, {self._hidden!r})"


def assert_same_fit(generic, preset, rtol=1e-12):
    """Two fitted estimators with the same parameters, likelihood and SEs."""
    np.testing.assert_allclose(generic.log_likelihood_, preset.log_likelihood_, rtol)
    np.testing.assert_allclose(generic.gate_coef_, preset.gate_coef_, rtol)
    np.testing.assert_allclose(generic.expert_coef_, preset.expert_coef_, rtol)
    np.testing.assert_allclose(
        generic.restart_log_likelihoods_, preset.restart_log_likelihoods_, rtol
    )
    assert generic.n_iter_ == preset.n_iter_
    assert generic.n_parameters_ == preset.n_parameters_
    with warnings.catch_warnings():
        # a weakly identified fit's NaN standard errors are compared too
        warnings.simplefilter("ignore", SingularInformationWarning)
        generic_bse, preset_bse = generic.inference().bse, preset.inference().bse
    np.testing.assert_allclose(generic_bse, preset_bse, rtol, equal_nan=True)


# scikit-learn's checks shuffle with numpy's global RNG (np.random.permutation).
@pytest.mark.uses_global_rng
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::moestat.exceptions.DegenerateFitWarning")
@parametrize_with_checks(
    [
        MixtureOfExpertsRegressor(n_init=2, random_state=0),
        MixtureOfExpertsRegressor(
            gate=NormalizedSigmoidGate(),
            expert=GLMExpert("poisson"),
            n_init=2,
            random_state=0,
        ),
        MixtureOfExpertsClassifier(n_init=2, random_state=0),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_scikit_learn_conventions(estimator, check):
    check(estimator)


def test_softmax_gate_with_gaussian_experts_is_gaussian_moe():
    X, y, _ = make_moe_regression(
        n_samples=800, n_experts=3, n_features=2, random_state=1
    )
    generic = MixtureOfExpertsRegressor(
        3, gate=SoftmaxGate(), expert=GaussianExpert(), random_state=0
    ).fit(X, y)
    preset = GaussianMoE(3, random_state=0).fit(X, y)
    assert_same_fit(generic, preset)
    np.testing.assert_allclose(generic.expert_var_, preset.expert_var_, rtol=1e-12)
    np.testing.assert_allclose(generic.predict(X), preset.predict(X), rtol=1e-12)


def test_top_k_sigmoid_gate_with_poisson_experts_is_polynomial_moe():
    X, y, _ = make_moe_glm(n_samples=600, n_experts=3, family="poisson", random_state=2)
    gate = NormalizedSigmoidGate(top_k=2)
    generic = MixtureOfExpertsRegressor(
        3, gate=gate, expert=GLMExpert("poisson", degree=2), random_state=0
    ).fit(X, y)
    preset = PolynomialMoE(3, degree=2, family="poisson", gate=gate, random_state=0)
    assert_same_fit(generic, preset.fit(X, y))
    assert generic.__sklearn_tags__().target_tags.positive_only


def test_multinomial_experts_are_multinomial_logistic_moe():
    X, y = load_iris(return_X_y=True)
    generic = MixtureOfExpertsClassifier(
        2, expert=MultinomialLogisticExpert(degree=1), alpha=1.0, random_state=0
    ).fit(X[:, 2:], y)
    preset = MultinomialLogisticMoE(2, alpha=1.0, random_state=0).fit(X[:, 2:], y)
    assert_same_fit(generic, preset)
    np.testing.assert_array_equal(generic.classes_, preset.classes_)
    np.testing.assert_allclose(
        generic.predict_proba(X[:, 2:]), preset.predict_proba(X[:, 2:]), rtol=1e-12
    )


def test_the_classifier_gives_a_multinomial_family_the_number_of_classes():
    X, y = load_iris(return_X_y=True)
    clf = MixtureOfExpertsClassifier(
        1, expert=MultinomialLogisticExpert(n_classes=2), alpha=1.0, n_init=1
    ).fit(X[:, 2:], y)
    assert clf.model_.expert.n_classes == 3
    assert clf.predict_proba(X[:4, 2:]).shape == (4, 3)
    assert clf.expert.n_classes == 2  # the parameter itself is left alone


def relu_data(rng, n_samples=1500):
    truth = MixtureOfExperts(
        SoftmaxGate(),
        ReLUExpert(),
        MoEParams(
            GateParams(np.array([[0.0, 0.0], [0.0, 4.0]])),
            ReLUExpertParams(
                np.array([[0.5, -1.0, 2.0], [0.0, 1.0, 3.0]]), np.array([0.04, 0.09])
            ),
        ),
    )
    X = rng.uniform(-2, 2, size=(n_samples, 1))
    y, _ = truth.sample(X, rng)
    return X, y, truth


def test_relu_experts_which_no_preset_offers_fit_predict_and_summarise(rng):
    X, y, truth = relu_data(rng)
    est = MixtureOfExpertsRegressor(2, expert=ReLUExpert(), random_state=0).fit(X, y)
    # the maximum is at least as likely as the truth, and predicts like it
    assert est.log_likelihood_ >= truth.log_pdf(X, y).sum()
    grid = np.linspace(-2, 2, 41)[:, None]
    np.testing.assert_allclose(est.predict(grid), truth.predict(grid), atol=0.15)
    assert est.predict_experts(grid).shape == (41, 2)
    assert est.sample(grid, random_state=0).shape == (41,)
    # (c eta_0, c eta_1, eta_2 / c) is one expert for every c > 0: the
    # information is singular along that direction, and the summary says so
    with pytest.warns(SingularInformationWarning, match=r"expert1\[outer\]"):
        results = est.inference()
    text = str(results.summary())
    assert "MixtureOfExpertsRegressor" in text
    assert "ReLUExpert" in text
    assert "inner_x0" in text
    assert "outer" in text
    frame = results.to_frame()
    assert np.isfinite(frame.loc["gate2[x0]", "std err"])
    assert np.isnan(frame.loc["expert1[outer]", "std err"])
    assert np.isfinite(frame.loc["expert1[variance]", "std err"])
    # 2 gate; per expert bias, slope, outer weight and variance, less the scale
    assert est.n_parameters_ == 2 + 2 * (4 - 1)


def test_stacked_families_fit_with_shared_experts():
    X, y, _ = make_moe_regression(
        n_samples=600, n_experts=3, n_shared_experts=1, random_state=0
    )
    expert = StackedExperts(ReLUExpert(), GaussianExpert(), 1)
    est = MixtureOfExpertsRegressor(
        2, n_shared_experts=1, expert=expert, n_init=1, random_state=0
    ).fit(X, y)
    assert est.params_.expert.shared.coef.shape == (1, 3)  # ReLU: bias, slope, outer
    assert est.params_.expert.routed.coef.shape == (2, 2)  # linear: const, slope
    assert not hasattr(est, "expert_coef_")  # no one array holds both blocks
    assert est.shared_weights_.shape == (1,)
    assert est.predict(X[:5]).shape == (5,)
    assert np.isfinite(est.bic(X, y))


def test_a_gate_written_outside_moestat_is_accepted():
    X, y, _ = make_moe_regression(n_samples=500, random_state=3)
    own = MixtureOfExpertsRegressor(gate=WithoutHook(SoftmaxGate()), random_state=0)
    builtin = MixtureOfExpertsRegressor(gate=SoftmaxGate(), random_state=0)
    np.testing.assert_allclose(
        own.fit(X, y).log_likelihood_, builtin.fit(X, y).log_likelihood_, rtol=1e-12
    )


def test_get_params_set_params_and_clone_round_trip():
    gate = NormalizedSigmoidGate(top_k=2)
    expert = GLMExpert("poisson", degree=2)
    est = MixtureOfExpertsRegressor(3, gate=gate, expert=expert, random_state=0)
    params = est.get_params()
    assert params["gate"] is gate and params["expert"] is expert
    assert MixtureOfExpertsRegressor(**params).get_params() == params
    copy = clone(est)
    assert copy.get_params() == params
    assert copy.expert == expert and copy.expert is not expert
    other = GaussianExpert(degree=2)
    assert est.set_params(expert=other, n_experts=2) is est
    assert est.get_params()["expert"] is other
    assert est.get_params()["n_experts"] == 2


def test_clone_of_a_fit_keeps_the_pieces_and_drops_the_fit():
    X, y, _ = make_moe_regression(n_samples=400, random_state=4)
    est = MixtureOfExpertsRegressor(expert=GaussianExpert(degree=2), n_init=1)
    copy = clone(est.fit(X, y))
    assert copy.get_params()["expert"] == GaussianExpert(degree=2)
    assert not hasattr(copy, "model_")


@pytest.mark.parametrize(
    ("params", "missing"),
    [
        ({"gate": WithoutHook(SoftmaxGate(), "m_step")}, "m_step"),
        ({"gate": WithoutHook(SoftmaxGate(), "pack_bounds")}, "pack_bounds"),
        ({"expert": WithoutHook(GaussianExpert(), "gradient")}, "gradient"),
        ({"expert": WithoutHook(GaussianExpert(), "check_response")}, "check_response"),
    ],
)
def test_a_piece_without_a_hook_is_refused_naming_the_hook(params, missing):
    X, y, _ = make_moe_regression(n_samples=200, random_state=0)
    name = next(iter(params))
    protocol = "Gate" if name == "gate" else "ExpertFamily"
    message = (
        rf"'{name}' parameter of MixtureOfExpertsRegressor must be .*lacks "
        rf"{missing} \(hooks of moestat.protocols.{protocol}\)"
    )
    with pytest.raises(ValueError, match=message):
        MixtureOfExpertsRegressor(**params).fit(X, y)


def test_an_object_that_is_no_piece_is_refused_naming_its_missing_hooks():
    X, y, _ = make_moe_regression(n_samples=200, random_state=0)
    with pytest.raises(ValueError, match=r"lacks .*log_density.*m_step"):
        MixtureOfExpertsRegressor(expert=object()).fit(X, y)
    with pytest.raises(ValueError, match=r"'gate' parameter of GaussianMoE .*log_wei"):
        GaussianMoE(gate=object()).fit(X, y)


def test_the_classifier_refuses_experts_without_class_probabilities():
    X, y = load_iris(return_X_y=True)
    clf = MixtureOfExpertsClassifier(expert=GaussianExpert())
    with pytest.raises(ValueError, match="class_probabilities"):
        clf.fit(X, y)


def test_alpha_needs_a_gate_with_a_ridge_penalty():
    X, y, _ = make_moe_regression(n_samples=300, random_state=0)
    gate = WithoutHook(SoftmaxGate(), "alpha")
    with pytest.raises(ValueError, match="needs a gate with a ridge penalty"):
        MixtureOfExpertsRegressor(gate=gate, alpha=1.0).fit(X, y)


def test_alpha_penalises_the_experts_only_where_the_family_has_a_penalty():
    X, y, _ = make_moe_glm(n_samples=400, family="poisson", random_state=0)
    poisson = MixtureOfExpertsRegressor(
        expert=GLMExpert("poisson"), alpha=0.5, n_init=1, random_state=0
    ).fit(X, y)
    assert poisson.model_.expert.alpha == 0.5
    X, y, _ = make_moe_regression(n_samples=400, random_state=0)
    relu = MixtureOfExpertsRegressor(
        expert=ReLUExpert(), alpha=0.5, n_init=1, random_state=0
    )
    assert relu.fit(X, y).model_.expert == ReLUExpert()
    assert relu.model_.gate.alpha == 0.5


def test_relu_experts_fit_on_the_torch_backend_as_on_numpy():
    pytest.importorskip("torch")
    X, y, _ = make_moe_regression(n_samples=200, random_state=0)
    fits = {
        backend: MixtureOfExpertsRegressor(
            expert=ReLUExpert(), backend=backend, n_init=1, random_state=0
        ).fit(X, y)
        for backend in ("numpy", "torch")
    }
    # the same start; plain EM on torch, SQUAREM on numpy: the same maximum
    assert fits["torch"].log_likelihood_ == pytest.approx(
        fits["numpy"].log_likelihood_, rel=1e-4
    )


def test_the_torch_backend_refuses_a_family_without_batched_kernels_by_name():
    pytest.importorskip("torch")
    from tests.custom_pieces import UnitGaussianExpert

    X, y, _ = make_moe_regression(n_samples=200, random_state=0)
    est = MixtureOfExpertsRegressor(
        expert=UnitGaussianExpert(), backend="torch", n_init=1
    )
    with pytest.raises(
        ValueError, match="UnitGaussianExpert experts have no batched kernels"
    ):
        est.fit(X, y)
