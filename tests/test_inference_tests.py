"""Wald and t tests of linear restrictions; robust and bootstrap covariances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from moestat import GaussianMoE
from moestat.inference import bootstrap_estimates, linear_constraint
from tests.helpers import two_expert_truth

# restrictions in the results' names and in statsmodels' (stack loss columns)
RESTRICTIONS = (
    "expert1[AIRFLOW] = 0.5, expert1[WATERTEMP] = expert1[ACIDCONC], "
    "expert1[const] = -40"
)
OLS_RESTRICTIONS = "AIRFLOW = 0.5, WATERTEMP = ACIDCONC, const = -40"


@pytest.fixture(scope="module")
def stackloss():
    """Brownlee's stack loss: a one-expert Gaussian MoE is OLS (ML variance)."""
    data = sm.datasets.stackloss.load_pandas().data
    X, y = data.drop(columns="STACKLOSS"), data["STACKLOSS"].to_numpy()
    est = GaussianMoE(1, n_init=1, tol=1e-12).fit(X, y)
    return est, sm.add_constant(X), y


def _ols_with_mle_variance(y, exog, use_t, df_resid):
    """OLS with the covariance sigma^2_ML (X'X)^-1 and the given t and F df."""
    first = sm.OLS(y, exog).fit()
    model = sm.OLS(y, exog)
    model.df_resid = df_resid
    return model.fit(
        cov_type="fixed scale",
        cov_kwds={"scale": first.ssr / first.nobs},
        use_t=use_t,
    )


def _assert_same_contrast(ours, theirs):
    if theirs.effect is not None:
        np.testing.assert_allclose(ours.effect, theirs.effect, rtol=1e-6)
        np.testing.assert_allclose(ours.sd, theirs.sd, rtol=1e-6)
    np.testing.assert_allclose(ours.statistic, theirs.statistic, rtol=1e-6)
    np.testing.assert_allclose(ours.pvalue, theirs.pvalue, rtol=1e-6, atol=1e-300)
    assert ours.distribution == theirs.distribution


@pytest.mark.parametrize("use_t", [False, True])
def test_one_expert_tests_are_the_ols_tests_with_the_mle_variance(stackloss, use_t):
    est, exog, y = stackloss
    result = est.inference(use_t=use_t)
    # the MoE also counts the variance: df_resid = n - (p + 1)
    assert result.df_resid == len(y) - exog.shape[1] - 1
    ols = _ols_with_mle_variance(y, exog, use_t, result.df_resid)
    _assert_same_contrast(result.t_test(RESTRICTIONS), ols.t_test(OLS_RESTRICTIONS))
    ours, theirs = result.wald_test(RESTRICTIONS), ols.wald_test(OLS_RESTRICTIONS)
    _assert_same_contrast(ours, theirs)
    assert ours.df_denom == theirs.df_denom
    assert getattr(ours, "df_num", None) == getattr(theirs, "df_num", None)
    coefficients = result.params.index[: exog.shape[1]]
    np.testing.assert_allclose(
        result.pvalues[coefficients], ols.pvalues, rtol=1e-6, atol=1e-300
    )
    np.testing.assert_allclose(
        result.conf_int().loc[coefficients], ols.conf_int(), rtol=1e-6
    )


def test_robust_one_expert_tests_are_the_hc0_tests_of_ols(stackloss):
    est, exog, y = stackloss
    result = est.inference(cov_type="robust")
    hc0 = sm.OLS(y, exog).fit(cov_type="HC0", use_t=False)
    np.testing.assert_allclose(result.bse.iloc[: exog.shape[1]], hc0.bse, rtol=1e-5)
    _assert_same_contrast(result.t_test(RESTRICTIONS), hc0.t_test(OLS_RESTRICTIONS))
    _assert_same_contrast(
        result.wald_test(RESTRICTIONS), hc0.wald_test(OLS_RESTRICTIONS)
    )


def test_robust_standard_errors_are_hc0_of_ols_on_heteroscedastic_data():
    data = sm.datasets.engel.load_pandas().data
    X, y = data[["income"]], data["foodexp"].to_numpy()
    est = GaussianMoE(1, n_init=1, tol=1e-12).fit(X, y)
    robust, oim = est.inference(cov_type="robust"), est.inference()
    hc0 = sm.OLS(y, sm.add_constant(X)).fit(cov_type="HC0")
    np.testing.assert_allclose(robust.bse.iloc[:2], hc0.bse, rtol=1e-5)
    # the spread grows with income: the sandwich is far from the information
    assert robust.bse["expert1[income]"] > 2 * oim.bse["expert1[income]"]
    assert robust.cov_type == "robust"
    assert "robust" in robust.summary().as_text()


def test_robust_weighted_standard_errors_are_hc0_of_wls(rng):
    data = sm.datasets.engel.load_pandas().data
    X, y = data[["income"]], data["foodexp"].to_numpy()
    weight = rng.integers(1, 4, size=len(y)).astype(float)
    est = GaussianMoE(1, n_init=1, tol=1e-12).fit(X, y, sample_weight=weight)
    robust = est.inference(cov_type="robust")
    wls = sm.WLS(y, sm.add_constant(X), weights=weight).fit(cov_type="HC0")
    np.testing.assert_allclose(robust.bse.iloc[:2], wls.bse, rtol=1e-5)


def test_a_matrix_restriction_is_the_same_test_as_its_string(stackloss):
    result = stackloss[0].inference()
    R, q = linear_constraint(RESTRICTIONS, list(result.params.index))
    assert R.shape == (3, len(result.params)) and q.tolist() == [0.5, 0, -40]
    by_string = result.wald_test(RESTRICTIONS)
    for given in (result.wald_test(R, q), result.wald_test((R, q))):
        assert given.statistic == pytest.approx(by_string.statistic, rel=1e-12)
    single = result.t_test(np.eye(len(result.params))[1])
    assert single.statistic.item() == pytest.approx(result.tvalues.iloc[1], rel=1e-12)


def test_use_t_switches_every_reference_to_t_and_f(stackloss):
    normal, student = stackloss[0].inference(), stackloss[0].inference(use_t=True)
    assert np.all(student.pvalues > normal.pvalues)
    assert "P>|t|" in student.to_frame() and "P>|z|" in normal.to_frame()
    assert "P>|t|" in student.summary().as_text()
    assert student.wald_test(RESTRICTIONS).distribution == "F"
    assert normal.wald_test(RESTRICTIONS).distribution == "chi2"
    assert student.wald_test(RESTRICTIONS, use_f=False).distribution == "chi2"


def test_restrictions_of_the_wrong_width_are_refused(stackloss):
    result = stackloss[0].inference()
    with pytest.raises(ValueError, match="columns"):
        result.t_test(np.eye(2))
    with pytest.raises(ValueError, match="q is read"):
        result.t_test("expert1[AIRFLOW] = 0", q=[1.0])


def test_unknown_covariance_types_are_refused(stackloss):
    with pytest.raises(ValueError, match="cov_type"):
        stackloss[0].inference(cov_type="hessian")
    with pytest.raises(ValueError, match="kind"):
        stackloss[0].inference(cov_type="bootstrap", bootstrap="wild")


# -- the bootstrap ---------------------------------------------------------------
@pytest.fixture(scope="module")
def two_experts():
    """A large, regular two-expert fit, labelled like the truth."""
    truth = two_expert_truth()
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(3000, 1))
    y, _ = truth.sample(X, rng)
    est = GaussianMoE(2, n_init=1, random_state=0, tol=1e-8).fit(X, y)
    return est.align_to(truth)


@pytest.mark.parametrize("kind", ["nonparametric", "parametric"])
def test_bootstrap_standard_errors_agree_with_the_information(two_experts, kind):
    n_boot = 200
    boot = two_experts.inference(
        cov_type="bootstrap", n_boot=n_boot, bootstrap=kind, random_state=1
    )
    oim = two_experts.inference()
    # a standard deviation from B draws has a relative error about sqrt(1/(2B))
    tolerance = 3 * np.sqrt(1 / (2 * n_boot))
    np.testing.assert_allclose(boot.bse, oim.bse, rtol=tolerance)
    assert boot.bootstrap_draws.shape == (n_boot, len(oim.params))
    assert "Bootstrap fits" in boot.summary().as_text()


def test_bootstrap_refits_are_aligned_to_the_fitted_labels(two_experts):
    model = two_experts.model_
    swapped_labels = model.permute([1, 0])
    draws = bootstrap_estimates(
        model,
        two_experts._fit_design,
        two_experts._fit_y,
        n_boot=5,
        kind="parametric",
        var_floor=two_experts.var_floor_,
        random_state=5,
    )
    centre = two_experts.inference().params.to_numpy()
    oim = two_experts.inference().bse.to_numpy()
    # every refit lies within a few standard errors of the fit, not of its swap
    assert np.all(np.abs(draws - centre) < 6 * oim)
    assert swapped_labels.match_experts(model).tolist() == [1, 0]


def test_the_bootstrap_is_reproducible_and_silent(two_experts, capsys):
    first = two_experts.inference(cov_type="bootstrap", n_boot=3, random_state=4)
    second = two_experts.inference(cov_type="bootstrap", n_boot=3, random_state=4)
    pd.testing.assert_frame_equal(first.bootstrap_draws, second.bootstrap_draws)
    assert capsys.readouterr().err == ""
    two_experts.inference(cov_type="bootstrap", n_boot=3, verbose=True)
    assert "bootstrap" in capsys.readouterr().err


def test_robust_standard_errors_agree_with_the_information_on_a_true_model(
    two_experts,
):
    robust, oim = two_experts.inference(cov_type="robust"), two_experts.inference()
    # n = 3000: the sandwich's meat estimates the information to a few percent
    np.testing.assert_allclose(robust.bse, oim.bse, rtol=0.15)


def test_robust_z_statistics_do_not_depend_on_units(two_experts):
    X = two_experts._fit_design.gate[:, 1:]
    y = two_experts._fit_y
    scaled = GaussianMoE(2, n_init=1, random_state=0, tol=1e-8)
    scaled.fit(X * 1e-3, y * 1e4).align_to(two_experts)
    z = two_experts.inference(cov_type="robust").tvalues
    np.testing.assert_allclose(
        scaled.inference(cov_type="robust").tvalues.to_numpy(), z, rtol=1e-4
    )


def test_the_weighted_bootstrap_resamples_rows_with_their_weights(rng):
    X = rng.uniform(-1, 1, size=(400, 1))
    y, _ = two_expert_truth().sample(X, rng)
    weight = rng.integers(1, 4, size=400).astype(float)
    est = GaussianMoE(2, n_init=1, random_state=0).fit(X, y, sample_weight=weight)
    boot = est.inference(cov_type="bootstrap", n_boot=20, random_state=0)
    assert boot.bootstrap_draws.shape == (20, 8)
    assert np.all(np.isfinite(boot.bse))
    oim = est.inference()
    # 20 refits: only the order of magnitude is known
    assert np.all((boot.bse > oim.bse / 3) & (boot.bse < 3 * oim.bse))


def test_bootstrap_refits_stopped_by_max_iter_are_reported(two_experts):
    """A refit cut off by max_iter is counted in a ConvergenceWarning."""
    from moestat.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="stopping rule fired"):
        bootstrap_estimates(
            two_experts.model_,
            two_experts._fit_design,
            two_experts._fit_y,
            n_boot=3,
            kind="nonparametric",
            var_floor=two_experts.var_floor_,
            random_state=5,
            fit_options={"max_iter": 1},
        )
