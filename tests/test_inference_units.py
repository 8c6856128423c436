"""Standard errors do not depend on the units of the covariates or of y.

A change of units multiplies each parameter by a constant; its standard
error must follow by the same constant and its z statistic must not move.
Singularity is judged in coordinates scaled to unit information, so only
directions that are singular whatever the units count, and the warning
names what makes them singular.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from moestat import (
    GateParams,
    GaussianExpertParams,
    GaussianMoE,
    MoEParams,
    SingularInformationWarning,
)
from moestat.inference import covariance_from_information, infer
from tests.helpers import two_expert_truth


def quiet_inference(estimator):
    """Inference, turning a SingularInformationWarning into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularInformationWarning)
        return estimator.inference()


def unit_factors(names, x_factor, y_factor):
    """How each named parameter scales when x -> x * x_factor, y -> y * y_factor."""
    factors = []
    for name in names:
        if name.endswith("[variance]"):
            factors.append(y_factor**2)
        elif name.startswith("gate"):
            factors.append(1.0 if name.endswith("[const]") else 1 / x_factor)
        elif name.endswith("[const]"):
            factors.append(y_factor)
        else:
            factors.append(y_factor / x_factor)
    return pd.Series(factors, index=names)


# -- the information matrix alone ----------------------------------------------
def test_covariance_is_equivariant_under_any_rescaling_of_the_parameters():
    # a well-conditioned information with strong correlation, then the same
    # information after the parameters' units change by up to 1e12
    base = np.array([[4.0, 1.5, 0.3], [1.5, 2.0, -0.4], [0.3, -0.4, 1.0]])
    units = np.array([1e-6, 1.0, 1e6])
    rescaled = base / units[:, None] / units[None, :]
    cov_base, affected_base = covariance_from_information(base)
    cov, affected = covariance_from_information(rescaled)
    assert not affected_base.any() and not affected.any()
    np.testing.assert_allclose(
        cov, cov_base * units[:, None] * units[None, :], rtol=1e-10
    )


def test_only_a_direction_singular_in_scaled_coordinates_counts():
    # parameters 0 and 1 are the same direction; parameter 2 stands alone at
    # a very different scale and keeps its variance
    information = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1e-14]])
    cov, affected = covariance_from_information(information)
    assert affected.tolist() == [True, True, False]
    assert cov[2, 2] == pytest.approx(1e14)
    assert np.isnan(cov[0, 0])


# -- Engel's food expenditure: income in francs or in thousands -----------------
def in_new_units(model, x_factor, y_factor):
    """The same fitted model for data ``X * x_factor``, ``y * y_factor``."""
    p = model.params
    gate = p.gate.coef.copy()
    gate[:, 1:] /= x_factor
    coef = p.expert.coef * y_factor
    coef[:, 1:] /= x_factor
    return model.with_params(
        MoEParams(
            GateParams(gate), GaussianExpertParams(coef, p.expert.var * y_factor**2)
        )
    )


def infer_quietly_about_singularity(model, X, y, var_floor):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularInformationWarning)
        return infer(
            model,
            model.design(X),
            y,
            (["const", "x0"], ["const", "x0"]),
            var_floor=var_floor,
            df_model=8,
            converged=True,
            n_iter=1,
        )


def assert_equivariant(before, after, factors):
    assert np.all(np.isfinite(before.bse)) and np.all(before.bse > 0)
    assert np.all(np.isfinite(after.bse)) and np.all(after.bse > 0)
    np.testing.assert_allclose(after.params, before.params * factors, rtol=1e-10)
    np.testing.assert_allclose(after.bse, before.bse * factors, rtol=1e-6)
    np.testing.assert_allclose(after.tvalues, before.tvalues, rtol=1e-6)


@pytest.fixture(scope="module")
def engel():
    data = sm.datasets.engel.load_pandas().data
    return data[["income"]].to_numpy(), data["foodexp"].to_numpy()


def test_engel_fits_in_either_income_unit_have_every_standard_error(engel):
    X, y = engel
    given = GaussianMoE(2, random_state=0).fit(X, y)
    thousands = GaussianMoE(2, random_state=0).fit(X / 1000, y)
    thousands.align_to(in_new_units(given.model_, 1 / 1000, 1.0))
    given, thousands = quiet_inference(given), quiet_inference(thousands)
    for result in (given, thousands):
        assert np.all(np.isfinite(result.bse)) and np.all(result.bse > 0)
    # two separate searches agree to the optimiser's tolerance, and so do
    # their z statistics
    np.testing.assert_allclose(thousands.tvalues, given.tvalues, rtol=1e-2)


def test_engel_standard_errors_follow_the_income_unit(engel):
    X, y = engel
    est = GaussianMoE(2, random_state=0).fit(X, y)
    given = infer_quietly_about_singularity(est.model_, X, y, est.var_floor_)
    # the same estimate with income in thousands: slopes are 1000 times
    # larger, intercepts and variances keep their units
    model = in_new_units(est.model_, 1 / 1000, 1.0)
    thousands = infer_quietly_about_singularity(model, X / 1000, y, est.var_floor_)
    assert_equivariant(given, thousands, unit_factors(given.params.index, 1e-3, 1.0))


# -- simulated data in extreme units ----------------------------------------------
@pytest.mark.parametrize(
    ("x_factor", "y_factor"), [(1e4, 1e-4), (1e-4, 1e4), (1.0, 1e-6), (1e6, 1e8)]
)
def test_z_statistics_survive_extreme_units(rng, x_factor, y_factor):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(1000, 1))
    y, _ = truth.sample(X, rng)
    est = GaussianMoE(2, init=truth.params, n_init=1).fit(X, y)
    original = infer_quietly_about_singularity(est.model_, X, y, est.var_floor_)
    model = in_new_units(est.model_, x_factor, y_factor)
    rescaled = infer_quietly_about_singularity(
        model, X * x_factor, y * y_factor, est.var_floor_ * y_factor**2
    )
    factors = unit_factors(original.params.index, x_factor, y_factor)
    assert_equivariant(original, rescaled, factors)


def test_a_fit_in_extreme_units_has_every_standard_error(rng):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(1000, 1))
    y, _ = truth.sample(X, rng)
    original = GaussianMoE(2, random_state=0).fit(X, y).align_to(truth)
    rescaled = GaussianMoE(2, random_state=0).fit(X * 1e4, y * 1e-4)
    rescaled.align_to(in_new_units(truth, 1e4, 1e-4))
    original, rescaled = quiet_inference(original), quiet_inference(rescaled)
    assert not rescaled.bse.isna().any()
    np.testing.assert_allclose(rescaled.tvalues, original.tvalues, rtol=1e-2)


# -- genuinely singular information still warns, naming the cause ----------------
def duplicated_expert_start():
    # expert 2 and expert 3 are the same line behind the same gate
    p = two_expert_truth().params
    return MoEParams(
        GateParams(np.vstack([p.gate.coef, p.gate.coef[1]])),
        GaussianExpertParams(
            np.vstack([p.expert.coef, p.expert.coef[1]]), np.r_[p.expert.var, 0.25]
        ),
    )


def test_duplicated_experts_are_named_in_the_warning(rng):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(1000, 1))
    y, _ = truth.sample(X, rng)
    est = GaussianMoE(3, init=duplicated_expert_start(), n_init=1).fit(X, y)
    with pytest.warns(
        SingularInformationWarning, match="experts 2 and 3 duplicate each other"
    ):
        result = est.inference()
    assert result.bse.filter(like="1[").notna().all()
    assert result.bse.filter(like="3[").isna().any()


def test_an_empty_expert_is_named_as_empty(rng):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(1000, 1))
    y, _ = truth.sample(X, rng)
    fit = GaussianMoE(2, init=truth.params, n_init=1).fit(X, y).model_
    p = fit.params
    params = MoEParams(
        GateParams(np.vstack([p.gate.coef, [-800.0, 0.0]])),
        GaussianExpertParams(
            np.vstack([p.expert.coef, [5.0, 5.0]]), np.r_[p.expert.var, 1.0]
        ),
    )
    model = fit.with_params(params)
    names = (["const", "x0"], ["const", "x0"])
    with pytest.warns(SingularInformationWarning, match="empty expert 3") as record:
        infer(model, model.design(X), y, names, df_model=11, converged=True, n_iter=1)
    message = str(record[0].message)
    assert "separates" not in message and "duplicate" not in message


def test_a_separating_gate_is_named_in_the_warning(rng):
    # two lines that switch exactly at x = 0, and the gate's slope where a fit
    # leaves it when it runs off to infinity: no observation lies where the
    # gate changes, so its direction carries no information
    X = rng.uniform(-1, 1, size=(600, 1))
    x = X[:, 0]
    y = np.where(x < 0, 1.0 + 2.0 * x, -1.0 - 1.5 * x) + rng.normal(0, 0.05, 600)
    separated = MoEParams(
        GateParams(np.array([[0.0, 0.0], [0.0, 1e7]])),
        GaussianExpertParams(
            np.array([[1.0, 2.0], [-1.0, -1.5]]), np.r_[0.0025, 0.0025]
        ),
    )
    model = two_expert_truth().with_params(separated)
    names = (["const", "x0"], ["const", "x0"])
    with pytest.warns(SingularInformationWarning, match="the gate separates"):
        result = infer(
            model, model.design(X), y, names, df_model=8, converged=True, n_iter=1
        )
    assert result.bse.filter(like="expert").notna().all()


# -- a penalised fit says so ----------------------------------------------------
def test_the_summary_shows_a_penalty_and_where_the_errors_come_from(rng):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(400, 1))
    y, _ = truth.sample(X, rng)
    model = GaussianMoE(2, init=truth.params, n_init=1).fit(X, y).model_
    design, names = model.design(X), (["const", "x0"], ["const", "x0"])
    plain = infer(model, design, y, names, df_model=8, converged=True, n_iter=1)
    penalised = infer(
        model, design, y, names, df_model=8, converged=True, n_iter=1, alpha=0.5
    )
    assert plain.alpha == 0.0 and penalised.alpha == 0.5
    assert "Penalty" not in plain.summary().as_text()
    text = penalised.summary().as_text()
    assert "Penalty (alpha):" in text and "0.5" in text
    assert "penalised" in text
