"""Boundaries of the parameter space: separation, divergence and the ridge.

On separated data the likelihood has no interior maximum and EM walks the
coefficients out along a ray; :mod:`moestat.boundary` finds them, and the
ridge penalty ``alpha`` of the gates and of the GLM and multinomial experts
keeps them finite.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.datasets import load_iris, load_wine
from sklearn.preprocessing import StandardScaler

from moestat import (
    GateParams,
    GaussianExpert,
    GaussianMoE,
    GLMExpert,
    GLMExpertParams,
    MixtureOfExperts,
    ModifiedSoftmaxGate,
    MoEParams,
    MultinomialExpertParams,
    MultinomialLogisticExpert,
    MultinomialLogisticMoE,
    NormalizedSigmoidGate,
    PolynomialMoE,
    SharedExpertsGate,
    SharedGateParams,
    SoftmaxGate,
    select_model,
)
from moestat.boundary import (
    SEPARATION_THRESHOLD,
    BoundaryFinding,
    boundary_message,
    column_spreads,
    diverging_parameters,
    walking_the_ridge,
)
from moestat.datasets import make_moe_regression
from moestat.exceptions import ConvergenceWarning, DegenerateFitWarning
from moestat.fit import best_restart, em
from moestat.gates import gate_objective
from moestat.model import responsibilities_from_log_joint

DATA = Path(__file__).parent / "data"


# -- helpers: plain EM on the pieces, starts and data ---------------------------
def quantile_split(x, n_experts):
    """Responsibilities 0.95 / rest by quantile of ``x``: a deterministic start."""
    ranks = np.argsort(np.argsort(x, kind="stable")) * n_experts // len(x)
    resp = np.full((len(x), n_experts), 0.05 / (n_experts - 1))
    resp[np.arange(len(x)), ranks] = 0.95
    return resp


def start_from(model, design, y, resp):
    """Parameters fitted to the soft labels ``resp`` by each piece."""
    expert = model.expert.m_step(design.expert, y, resp, 0.0)
    return MoEParams(model.gate.init_params(design.gate, resp), expert)


def penalised_objective(model, params, design, y):
    """``sum_t log p(y_t | x_t)`` minus the gate's and the experts' penalties."""
    log_g = model.gate.log_weights(params.gate, design.gate)
    log_f = model.expert.log_density(params.expert, design.expert, y)
    _, log_lik = responsibilities_from_log_joint(log_g + log_f)
    penalty = model.gate.penalty(params.gate, design.gate)
    return log_lik.sum() - penalty - model.expert.penalty(params.expert, design.expert)


def run_em(model, X, y, start, n_iter):
    """EM from ``start`` (responsibilities or MoEParams) with the pieces' M-steps.

    Returns the fitted model, its design, the penalised objective after
    each iteration and the first iteration at which the fit walked the ridge.
    """
    design = model.design(X)
    params = start if isinstance(start, MoEParams) else None
    if params is None:
        params = start_from(model, design, y, start)
    gate, expert = model.gate, model.expert
    log_g = gate.log_weights(params.gate, design.gate)
    log_f = expert.log_density(params.expert, design.expert, y)
    resp, _ = responsibilities_from_log_joint(log_g + log_f)
    trace, walked = [penalised_objective(model, params, design, y)], None
    for iteration in range(1, n_iter + 1):
        expert_params = expert.m_step(design.expert, y, resp, 0.0, params.expert)
        log_f = expert.log_density(expert_params, design.expert, y)
        gate_params, log_g = gate.m_step(
            params.gate, design.gate, resp, log_g, None, log_f
        )
        previous, params = params, MoEParams(gate_params, expert_params)
        resp, _ = responsibilities_from_log_joint(log_g + log_f)
        trace.append(penalised_objective(model, params, design, y))
        if walked is None and walking_the_ridge(model, previous, params, design):
            walked = iteration
    return model.with_params(params), design, np.array(trace), walked


def largest_effect(model, design):
    """Largest ``|sd_j * slope|`` of the gate and the expert coefficients."""
    gate = np.abs(model.params.gate.coef * column_spreads(design.gate)).max()
    coef = model.params.expert.coef
    expert = np.abs(coef * column_spreads(design.expert)).max()
    return max(gate, expert)


def bernoulli_steps(n=300, seed=0):
    """Two step-like Bernoulli experts: y = 1 exactly for x < -1 or x > 1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    y = ((x < -1) | (x > 1)).astype(float)
    return x[:, None], y


def iris():
    X, y = load_iris(return_X_y=True)
    return X, y.astype(float)


def standardised_wine():
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X), y.astype(float)


def mcycle():
    data = pd.read_csv(DATA / "mcycle.csv")
    return data[["times"]].to_numpy(), data["accel"].to_numpy()


def engel_logs():
    data = sm.datasets.engel.load_pandas().data
    return np.log(data[["income"]]), np.log(data["foodexp"])


def multinomial_mixture(alpha=0.0):
    return MixtureOfExperts(
        SoftmaxGate(alpha=alpha), MultinomialLogisticExpert(3, alpha=alpha)
    )


def bernoulli_mixture(alpha=0.0):
    return MixtureOfExperts(
        SoftmaxGate(alpha=alpha), GLMExpert("bernoulli", degree=1, alpha=alpha)
    )


# -- the penalty ------------------------------------------------------------------
PENALISED_GATES = [
    SoftmaxGate(alpha=0.7),
    ModifiedSoftmaxGate(alpha=0.7),
    NormalizedSigmoidGate(alpha=0.7),
]


def gate_case(gate, rng, n=200, m=3):
    X = rng.normal(size=(n, 2))
    Z = gate.design(X)
    coef = gate.unpack(gate.pack(GateParams(rng.normal(size=(m, 3)))), m, 3).coef
    return X, Z, GateParams(coef), rng.dirichlet(np.ones(m), size=n)


@pytest.mark.parametrize(
    "gate", [SoftmaxGate(alpha=0.7), NormalizedSigmoidGate(alpha=0.7)], ids=str
)
def test_gate_penalty_is_unit_free(gate, rng):
    X, _, params, _ = gate_case(gate, rng)
    rescaled = X * [10.0, 0.01]
    coef = params.coef / [1.0, 10.0, 0.01]
    before = gate.penalty(params, gate.design(X))
    after = gate.penalty(GateParams(coef), gate.design(rescaled))
    assert before > 0
    np.testing.assert_allclose(after, before, rtol=1e-12)


def test_expert_penalties_are_unit_free(rng):
    X = rng.normal(size=(150, 2))
    rescaled = X * [100.0, 0.1]
    glm = GLMExpert("poisson", degree=2, alpha=0.5)
    coef = rng.normal(size=(2, 6))
    scale = np.array([1.0, 100.0, 0.1, 1e4, 10.0, 0.01])  # 1, x0, x1, x0^2, ...
    names = glm.design_names(["x0", "x1"])
    assert names == ["const", "x0", "x1", "x0^2", "x0 x1", "x1^2"]
    before = glm.penalty(GLMExpertParams(coef), glm.design(X))
    after = glm.penalty(GLMExpertParams(coef / scale), glm.design(rescaled))
    np.testing.assert_allclose(after, before, rtol=1e-10)
    multi = MultinomialLogisticExpert(3, alpha=0.5)
    coef = rng.normal(size=(2, 2, 3))
    before = multi.penalty(MultinomialExpertParams(coef), multi.design(X))
    moved = MultinomialExpertParams(coef / [1.0, 100.0, 0.1])
    np.testing.assert_allclose(
        multi.penalty(moved, multi.design(rescaled)), before, rtol=1e-12
    )


def test_the_penalty_is_half_alpha_times_squared_standardised_slopes(rng):
    X = rng.normal(3.0, 2.0, size=(500, 1))
    gate = SoftmaxGate(alpha=2.0)
    Z = gate.design(X)
    coef = np.array([[0.0, 0.0], [5.0, 0.25], [-1.0, -0.5]])
    expected = 0.5 * 2.0 * X.std() ** 2 * (0.25**2 + 0.5**2)  # intercepts free
    assert gate.penalty(GateParams(coef), Z) == pytest.approx(expected, rel=1e-12)
    only_intercepts = GateParams(coef * [1.0, 0.0])
    assert gate.penalty(only_intercepts, Z) == 0.0


def test_without_alpha_nothing_is_penalised(rng):
    _, Z, params, _ = gate_case(SoftmaxGate(), rng)
    shared = SharedGateParams(params, np.ones(1))
    coef = rng.normal(size=(3, 3))
    pieces = [
        (SoftmaxGate(), params),
        (NormalizedSigmoidGate(), params),
        (SharedExpertsGate(SoftmaxGate(), 1), shared),
        (GLMExpert("poisson"), GLMExpertParams(coef)),
        (MultinomialLogisticExpert(2), MultinomialExpertParams(coef[:, None])),
        (GaussianExpert(), GaussianExpert().unpack(np.zeros(12), 3, 3, 0.0)),
    ]
    for piece, piece_params in pieces:
        assert piece.penalty(piece_params, Z) == 0.0


def test_alpha_splits_the_gradient_into_likelihood_and_penalty(rng):
    _, Z, params, resp = gate_case(SoftmaxGate(), rng)
    log_g = SoftmaxGate().log_weights(params, Z)
    plain = SoftmaxGate().gradient(params, Z, resp, log_g)
    penalised = SoftmaxGate(alpha=0.3).gradient(params, Z, resp, log_g)
    shrink = (0.3 * column_spreads(Z) ** 2 * params.coef)[1:].ravel()
    np.testing.assert_allclose(penalised, plain - shrink, rtol=1e-12, atol=1e-12)


def numerical_gradient(f, theta, h=1e-6):
    grad = np.empty_like(theta)
    for k in range(len(theta)):
        step = np.zeros_like(theta)
        step[k] = h
        grad[k] = (f(theta + step) - f(theta - step)) / (2 * h)
    return grad


@pytest.mark.parametrize("gate", PENALISED_GATES, ids=lambda g: g.name)
def test_penalised_gate_gradient_matches_finite_differences(gate, rng):
    _, Z, params, resp = gate_case(gate, rng)
    m, p = params.coef.shape

    def objective(theta):
        candidate = gate.unpack(theta, m, p)
        log_g = gate.log_weights(candidate, Z)
        return gate_objective(resp, log_g) - gate.penalty(candidate, Z)

    theta = gate.pack(params)
    analytic = gate.gradient(params, Z, resp, gate.log_weights(params, Z))
    np.testing.assert_allclose(
        analytic, numerical_gradient(objective, theta), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "expert",
    [
        GLMExpert("poisson", degree=2, alpha=0.7),
        GLMExpert("bernoulli", degree=1, alpha=0.7),
        MultinomialLogisticExpert(3, alpha=0.7),
    ],
    ids=["poisson", "bernoulli", "multinomial"],
)
def test_penalised_expert_gradient_matches_finite_differences(expert, rng):
    X = rng.normal(size=(200, 2))
    Phi = expert.design(X)
    y = (
        rng.integers(0, 3, 200).astype(float)
        if expert.name == "multinomial"
        else rng.poisson(1.0, 200).clip(max=1).astype(float)
    )
    resp = rng.dirichlet(np.ones(2), size=200)
    params = expert.unpack(
        0.3 * rng.normal(size=expert.n_free_parameters(2, Phi.shape[1])),
        2,
        Phi.shape[1],
    )

    def objective(theta):
        candidate = expert.unpack(theta, 2, Phi.shape[1])
        log_f = expert.log_density(candidate, Phi, y)
        return float(np.sum(resp * log_f)) - expert.penalty(candidate, Phi)

    analytic = expert.gradient(params, Phi, y, resp)
    np.testing.assert_allclose(
        analytic,
        numerical_gradient(objective, expert.pack(params)),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("alpha", [-1.0, np.nan, np.inf, True, "1"])
def test_alpha_must_be_a_finite_non_negative_number(alpha):
    for make in (
        lambda: SoftmaxGate(alpha=alpha),
        lambda: NormalizedSigmoidGate(alpha=alpha),
        lambda: GLMExpert("poisson", alpha=alpha),
        lambda: MultinomialLogisticExpert(3, alpha=alpha),
    ):
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            make()


@pytest.mark.parametrize(
    ("make", "load", "split"),
    [
        (bernoulli_mixture, bernoulli_steps, 0),
        (multinomial_mixture, iris, 0),
        (multinomial_mixture, standardised_wine, 0),
    ],
    ids=["bernoulli steps", "iris", "wine"],
)
def test_penalised_em_is_monotone_and_stays_finite(make, load, split):
    X, y = load()
    fitted, design, trace, walked = run_em(
        make(alpha=1.0), X, y, quantile_split(X[:, split], 2), 200
    )
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert largest_effect(fitted, design) < 10
    assert walked is None
    unpenalised = make().with_params(fitted.params)
    assert diverging_parameters(unpenalised, design) == []


def test_penalised_bernoulli_steps_settle_at_a_finite_maximum():
    X, y = bernoulli_steps()
    _, _, plain, _ = run_em(bernoulli_mixture(), X, y, quantile_split(X[:, 0], 2), 200)
    fitted, design, trace, _ = run_em(
        bernoulli_mixture(alpha=1.0), X, y, quantile_split(X[:, 0], 2), 200
    )
    assert plain[-1] > -0.01  # unpenalised: the log-likelihood creeps up to 0
    assert abs(trace[-1] - trace[-2]) < 1e-6 * abs(trace[-1])
    assert largest_effect(fitted, design) < 10


def test_penalty_pulls_a_diverged_poisson_fit_back_to_finite_values():
    data = pd.read_csv(DATA / "dmft.csv")
    X, y = data[["Begin"]].to_numpy(float), data["End"].to_numpy(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = PolynomialMoE(3, family="poisson", n_init=1, random_state=0).fit(X, y)
    design = est.model_.design(X)
    found = diverging_parameters(est.model_, design)
    assert found and "Poisson mean diverges" in found[0].cause
    penalised = MixtureOfExperts(
        SoftmaxGate(alpha=1.0), GLMExpert("poisson", 2, alpha=1.0)
    )
    fitted, design, trace, _ = run_em(penalised, X, y, est.params_, 100)
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert largest_effect(fitted, design) < SEPARATION_THRESHOLD


# -- detection ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "load", "cause"),
    [
        (multinomial_mixture, iris, "classes"),
        (multinomial_mixture, standardised_wine, "classes"),
        (bernoulli_mixture, bernoulli_steps, "responses are separated"),
    ],
    ids=["iris", "wine", "bernoulli steps"],
)
def test_separated_experts_are_found(make, load, cause):
    X, y = load()
    fitted, design, _, walked = run_em(make(), X, y, quantile_split(X[:, 0], 2), 30)
    found = diverging_parameters(fitted, design)
    assert found, "separation not detected"
    assert cause in found[0].cause and "separated" in found[0].cause
    assert abs(found[0].effect) > SEPARATION_THRESHOLD
    assert walked is not None and walked <= 15


def test_wine_separates_in_the_first_iteration():
    X, y = standardised_wine()
    fitted, design, trace, walked = run_em(
        multinomial_mixture(), X, y, quantile_split(X[:, 0], 2), 1
    )
    assert trace[-1] > -1e-6  # log-likelihood 0: every class predicted surely
    assert diverging_parameters(fitted, design)
    assert walked == 1


def test_a_gate_that_splits_mcycle_between_experts_is_found():
    X, y = mcycle()
    model = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    fitted, design, _, walked = run_em(model, X, y, quantile_split(X[:, 0], 3), 20)
    found = diverging_parameters(fitted, design, (["const", "times"], ["const"]))
    assert found and found[0].piece == "gate"
    assert "the gate separates the data between experts" in found[0].cause
    assert found[0].column == "times"
    assert walked is not None
    penalised = MixtureOfExperts(SoftmaxGate(alpha=1.0), GaussianExpert())
    fitted, design, trace, walked = run_em(
        penalised, X, y, quantile_split(X[:, 0], 3), 100
    )
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    assert np.abs(fitted.params.gate.coef[:, 1] * X.std()).max() < 10
    assert walked is None


@pytest.mark.parametrize("seed", [0, 1])
def test_ordinary_fits_are_not_flagged(seed):
    X, y, truth = make_moe_regression(
        2000, n_experts=3, n_features=2, random_state=seed
    )
    model = MixtureOfExperts(SoftmaxGate(), GaussianExpert())
    fitted, design, _, walked = run_em(model, X, y, quantile_split(X[:, 0], 3), 100)
    assert walked is None
    assert diverging_parameters(fitted, design) == []
    assert diverging_parameters(truth, truth.design(X)) == []


def test_the_old_faithful_fit_is_not_flagged():
    data = pd.read_csv(DATA / "faithful.csv")
    X, y = data[["waiting"]].to_numpy(float), data["eruptions"].to_numpy(float)
    est = GaussianMoE(2, n_init=2, random_state=0).fit(X, y)
    assert diverging_parameters(est.model_, est.model_.design(X)) == []


def test_pieces_with_a_penalty_are_not_examined():
    coef = np.array([[0.0, 0.0], [0.0, 900.0]])
    expert = GaussianExpert()
    expert_params = expert.unpack(np.zeros(6), 2, 2, 0.0)
    X = np.linspace(-1, 1, 40)[:, None]
    for gate, expected in ((SoftmaxGate(), 1), (SoftmaxGate(alpha=1e-3), 0)):
        model = MixtureOfExperts(
            gate, expert, MoEParams(GateParams(coef), expert_params)
        )
        assert len(diverging_parameters(model, model.design(X))) == expected


def test_a_finding_names_the_parameters_and_suggests_alpha():
    params = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.0, 400.0], [1.0, -400.0]])),
        GaussianExpert().unpack(np.zeros(9), 3, 2, 0.0),
    )
    model = MixtureOfExperts(SoftmaxGate(), GaussianExpert(), params)
    X = np.linspace(-1, 1, 60)[:, None]
    found = diverging_parameters(model, model.design(X), (["const", "dose"], ["c"]))
    assert found[0] == BoundaryFinding(
        "gate",
        ("gate2[dose]", "gate3[dose]"),
        "dose",
        pytest.approx(-800.0 * X.std()),
        "the gate separates the data between experts 2 and 3 along dose",
    )
    message = boundary_message(found)
    assert "gate2[dose] and gate3[dose] diverge" in message
    assert "no interior maximum" in message and "alpha" in message


# -- model choice ---------------------------------------------------------------
def test_select_model_passes_over_degenerate_fits():
    X, y = engel_logs()
    table, best = select_model(
        GaussianMoE(n_init=2, random_state=0),
        X,
        y,
        n_experts=[1, 2, 3],
        progress=False,
        n_jobs=1,
    )
    three = table.set_index("n_experts").loc[3]
    assert three["degenerate"] and three["passed_over"].startswith("degenerate: ")
    assert best.n_experts != 3
    chosen = table.loc[table.attrs["best"]]
    assert chosen["n_experts"] == best.n_experts and chosen["passed_over"] == ""
    assert (table["passed_over"] == "").equals(~table["degenerate"])


def test_select_model_warns_when_every_fit_is_degenerate():
    X, y = engel_logs()
    with pytest.warns(DegenerateFitWarning) as caught:
        table, best = select_model(
            GaussianMoE(n_init=2, random_state=0),
            X,
            y,
            n_experts=[3],
            progress=False,
            n_jobs=1,
        )
    assert any("Every fit of the grid" in str(w.message) for w in caught)
    assert best.n_experts == 3 and table.attrs["best"] == 0


# -- the estimators: boundaries named at fit time ------------------------------------
def standardised_wine():
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize(
    ("make", "load", "where"),
    [
        (lambda **kw: GaussianMoE(3, **kw), mcycle, "gate"),
        (lambda **kw: MultinomialLogisticMoE(2, **kw), standardised_wine, "expert"),
        (
            lambda **kw: MultinomialLogisticMoE(2, **kw),
            lambda: load_iris(return_X_y=True),
            "expert",
        ),
    ],
    ids=["mcycle", "wine", "iris"],
)
def test_a_separating_fit_is_not_converged_and_names_what_diverges(make, load, where):
    # Before, these fits returned converged_=True without a warning, with
    # coefficients in the hundreds or thousands.
    X, y = load()
    with pytest.warns(DegenerateFitWarning, match=rf"{where}\d\[.*diverge") as caught:
        est = make(n_init=2, random_state=0).fit(X, y)
    assert not est.converged_
    assert "alpha" in str(caught[0].message)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize(
    ("make", "load"),
    [
        (lambda **kw: GaussianMoE(3, **kw), mcycle),
        (lambda **kw: MultinomialLogisticMoE(2, **kw), standardised_wine),
    ],
    ids=["mcycle", "wine"],
)
def test_the_ridge_penalty_gives_a_finite_converged_fit(make, load):
    X, y = load()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateFitWarning)
        est = make(n_init=2, alpha=1.0, random_state=0).fit(X, y)
    assert est.converged_
    assert np.abs(est.gate_coef_).max() < 100
    assert est.penalized_log_likelihood_ < est.log_likelihood_
    summary = est.summary().as_text()
    assert "Penalty (alpha)" in summary


def test_a_degenerate_restart_never_wins_over_a_regular_one(rng):
    X, y, truth = make_moe_regression(400, n_experts=2, random_state=3)
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design = spec.design(X)
    regular = em(truth, design, y)
    walked = GateParams(truth.params.gate.coef * [[0.0, 0.0], [1.0, 400.0]])
    diverged = em(
        truth.with_params(MoEParams(walked, truth.params.expert)),
        design,
        y,
        max_iter=3,
    )
    assert diverged.boundary and not regular.boundary
    # even when the degenerate one has the higher likelihood
    louder = replace(diverged, log_likelihood=regular.log_likelihood + 100.0)
    assert best_restart([louder, regular]) is regular
    assert best_restart([louder]) is louder


def test_the_torch_backend_refuses_a_penalty_by_name():
    pytest.importorskip("torch")
    X, y = mcycle()
    with pytest.raises(ValueError, match="alpha=1.0.*numpy backend only"):
        GaussianMoE(2, alpha=1.0, backend="torch").fit(X, y)


def test_direct_mle_maximises_the_penalised_likelihood_as_em_does():
    X, y = standardised_wine()
    fits = {}
    for solver in ("em", "mle"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DegenerateFitWarning)
            fits[solver] = MultinomialLogisticMoE(
                2, n_init=1, init="kmeans", alpha=1.0, solver=solver, random_state=0
            ).fit(X[:, :4], y)
    em_fit, mle_fit = fits["em"], fits["mle"]
    assert mle_fit.converged_ and em_fit.converged_
    assert mle_fit.penalized_log_likelihood_ < mle_fit.log_likelihood_
    # one k-means start: both climb the same penalised objective to its top
    assert mle_fit.penalized_log_likelihood_ == pytest.approx(
        em_fit.penalized_log_likelihood_, abs=1e-3
    )


def test_the_batched_engine_reports_a_boundary_as_numpy_does():
    pytest.importorskip("torch")
    from moestat.torch.fit import fit_batched

    X, y, truth = make_moe_regression(400, n_experts=2, random_state=3)
    spec = MixtureOfExperts(truth.gate, truth.expert)
    design = spec.design(X)
    walked = GateParams(truth.params.gate.coef * [[0.0, 0.0], [1.0, 400.0]])
    start = MoEParams(walked, truth.params.expert)
    (batched,) = fit_batched(spec, [design], [y], [start], max_iter=3)
    numpy = em(spec.with_params(start), design, y, max_iter=3, accelerate=False)
    assert batched.boundary and numpy.boundary
    assert not batched.converged and not numpy.converged
    assert batched.stop_reason == numpy.stop_reason
