"""Plot functions draw on the axes they are given and return them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from moestat import GaussianMoE
from moestat.plotting import (
    plot_expert_utilization,
    plot_fit,
    plot_gate,
    plot_partial,
    plot_selection,
    typical_values,
)
from tests.helpers import two_expert_truth


@pytest.fixture
def fitted_and_data(rng):
    truth = two_expert_truth()
    X = rng.uniform(-1, 1, size=(400, 1))
    y, _ = truth.sample(X, rng)
    return GaussianMoE(2, n_init=1, random_state=0).fit(X, y), X, y, truth


def test_plot_fit_draws_on_the_given_axes(fitted_and_data):
    est, X, y, truth = fitted_and_data
    fig, ax = plt.subplots()
    assert plot_fit(est, X, y, truth=truth, ax=ax) is ax
    # data, two experts (faint and active), the mixed mean, two true experts
    assert len(ax.collections) == 1
    assert len(ax.lines) == 2 * 2 + 1 + 2
    plt.close(fig)


def test_plot_gate_draws_weights_between_zero_and_one(fitted_and_data):
    est, X, _, truth = fitted_and_data
    ax = plot_gate(est.model_, X, truth=truth)
    for line in ax.lines:
        assert np.all((line.get_ydata() >= 0) & (line.get_ydata() <= 1))
    plt.close(ax.figure)


def test_plots_need_one_covariate(fitted_and_data):
    est, X, y, _ = fitted_and_data
    with pytest.raises(ValueError, match="one covariate"):
        plot_gate(est, np.hstack([X, X]))


def test_plots_need_a_fitted_model(fitted_and_data):
    _, X, y, _ = fitted_and_data
    with pytest.raises(TypeError, match="fitted estimator or a MixtureOfExperts"):
        plot_fit(GaussianMoE(), X, y)


def test_plot_fit_for_several_covariates_points_to_plot_partial(fitted_and_data):
    est, X, y, _ = fitted_and_data
    with pytest.raises(ValueError, match=r"plot_partial\(estimator, X, feature\)"):
        plot_fit(est, np.hstack([X, X]), y)


def test_plots_are_labelled_with_the_data_frame_names(fitted_and_data):
    _, X, y, _ = fitted_and_data
    frame = pd.DataFrame({"income": X[:, 0]})
    est = GaussianMoE(2, n_init=1, random_state=0).fit(
        frame, pd.Series(y, name="spend")
    )
    ax = plot_fit(est, frame, pd.Series(y, name="spend"))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("income", "spend")
    plt.close(ax.figure)
    ax = plot_fit(est, X, y)  # arrays: the estimator's names
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("income", "spend")
    plt.close(ax.figure)
    ax = plot_gate(est, frame)
    assert ax.get_xlabel() == "income"
    plt.close(ax.figure)


@pytest.fixture
def three_covariates(rng):
    """Income (real), household size (whole numbers) and a 0/1 flag."""
    n = 800
    X = pd.DataFrame(
        {
            "income": rng.uniform(0, 4, n),
            "size": rng.integers(1, 4, n),
            "urban": rng.integers(0, 2, n),
        }
    )
    high = rng.random(n) < 1 / (1 + np.exp(-(X["income"] - 2) * 3))
    y = np.where(high, 1 + X["income"], 3 - 0.5 * X["income"]) + 0.3 * X["size"]
    y = pd.Series(y + rng.normal(0, 0.2, n), name="spend")
    est = GaussianMoE(2, n_init=1, random_state=0).fit(X, y)
    return est, X, y


def test_plot_partial_draws_each_expert_and_the_gate_along_one_covariate(
    three_covariates,
):
    est, X, _ = three_covariates
    means, gate = plot_partial(est, X, "income")
    assert len(means.lines) == 2 + 1  # the experts and the mixed mean
    assert len(gate.lines) == 2
    assert gate.get_xlabel() == "income"
    assert means.get_ylabel() == "spend" and gate.get_ylabel() == "gate weight"
    # the other covariates at their median (income) and mode (size, urban)
    size = X["size"].mode().min()
    urban = X["urban"].mode().min()
    x = means.lines[-1].get_xdata()
    rows = np.column_stack([x, np.full_like(x, size), np.full_like(x, urban)])
    np.testing.assert_allclose(means.lines[-1].get_ydata(), est.model_.predict(rows))
    for line in gate.lines:
        assert np.all((line.get_ydata() >= 0) & (line.get_ydata() <= 1))
    plt.close(means.figure)


def test_plot_partial_over_whole_numbers_has_integer_ticks(three_covariates):
    est, X, _ = three_covariates
    means, gate = plot_partial(est, X.to_numpy(), 1)  # by index, names from est
    assert gate.get_xlabel() == "size"
    np.testing.assert_array_equal(gate.lines[0].get_xdata(), [1, 2, 3])
    ticks = gate.get_xticks()
    assert np.all(ticks == np.round(ticks))
    plt.close(means.figure)


def test_plot_partial_refuses_an_unknown_covariate(three_covariates):
    est, X, _ = three_covariates
    with pytest.raises(ValueError, match="no column 'age'"):
        plot_partial(est, X, "age")


def test_typical_values_are_medians_and_modes_of_whole_numbers():
    X = np.array([[0.5, 2, 1], [1.5, 2, 0], [9.0, 7, 0], [2.0, 1, 1], [3.0, 7, 0]])
    np.testing.assert_array_equal(typical_values(X), [2.0, 2.0, 0.0])


def test_the_number_of_experts_axis_has_integer_ticks():
    table = pd.DataFrame({"n_experts": [1, 2, 3], "bic": [9.0, 7.0, 8.0]})
    ax = plot_selection(table)
    ticks = ax.get_xticks()
    assert np.all(ticks == np.round(ticks))
    plt.close(ax.figure)
    ax = plot_expert_utilization(np.full((2, 3), 1 / 3))
    assert np.all(ax.get_xticks() == np.round(ax.get_xticks()))
    assert np.all(ax.get_yticks() == np.round(ax.get_yticks()))
    plt.close(ax.figure)
