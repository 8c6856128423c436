"""Plot functions draw on the axes they are given and return them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from moestat import GaussianMoE
from moestat.plotting import plot_fit, plot_gate
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
