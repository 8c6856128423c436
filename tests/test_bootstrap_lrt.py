"""The bootstrap likelihood-ratio test for the number of experts."""

from __future__ import annotations

import numpy as np
import pytest

from moestat import GaussianMoE, PolynomialMoE, select_model
from moestat.selection import bootstrap_lrt, bootstrap_pvalue
from tests.helpers import two_expert_truth

# quick fits: one k-means start, no split-and-merge moves
QUICK = {"init": "kmeans", "n_init": 1, "max_iter": 200, "tol": 1e-5}


def _two_expert_data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 1))
    return X, two_expert_truth().sample(X, rng)[0]


def test_the_pvalue_counts_the_observed_statistic_among_the_simulated():
    assert bootstrap_pvalue(5.0, [1.0, 5.0, 7.0, 2.0]) == pytest.approx(3 / 5)
    assert bootstrap_pvalue(8.0, [1.0, 5.0, 7.0]) == pytest.approx(1 / 4)
    assert bootstrap_pvalue(0.0, [1.0, 5.0, 7.0]) == 1.0


def test_the_test_compares_m_with_m_plus_one_experts_on_simulated_nulls():
    X, y = _two_expert_data(120, seed=0)
    result = bootstrap_lrt(
        GaussianMoE(1, random_state=0, **QUICK), X, y, n_boot=3, random_state=1
    )
    assert (result.null.n_experts, result.alternative.n_experts) == (1, 2)
    assert result.n_experts == 1
    assert result.statistic == pytest.approx(
        2 * (result.alternative.log_likelihood_ - result.null.log_likelihood_)
    )
    assert result.null_distribution.shape == (3,)
    assert np.all(np.isfinite(result.null_distribution))
    assert result.pvalue == bootstrap_pvalue(result.statistic, result.null_distribution)
    again = bootstrap_lrt(
        GaussianMoE(1, random_state=0, **QUICK), X, y, n_boot=3, random_state=1
    )
    np.testing.assert_array_equal(again.null_distribution, result.null_distribution)


def test_one_expert_is_rejected_for_two_clear_experts():
    X, y = _two_expert_data(200, seed=2)
    result = bootstrap_lrt(
        GaussianMoE(1, random_state=0, **QUICK), X, y, n_boot=19, random_state=3
    )
    # the statistic exceeds every simulated one: the smallest p-value there is
    assert result.statistic > result.null_distribution.max()
    assert result.pvalue == pytest.approx(1 / 20)


def test_select_model_goes_up_until_the_test_does_not_reject():
    X, y = _two_expert_data(200, seed=2)
    table, best = select_model(
        GaussianMoE(random_state=0, **QUICK),
        X,
        y,
        n_experts=[3, 1, 2],
        criterion="bootstrap_lrt",
        n_boot=19,
        progress=False,
        random_state=4,
    )
    assert table["n_experts"].tolist() == [1, 2, 3]
    assert table.loc[0, "bootstrap_lrt"] == pytest.approx(1 / 20)
    assert table.loc[1, "bootstrap_lrt"] > 0.05
    assert np.isnan(table.loc[2, "bootstrap_lrt"])
    assert table.attrs["best"] == 1 and best.n_experts == 2


def test_select_model_keeps_the_largest_m_when_every_test_rejects():
    X, y = _two_expert_data(200, seed=2)
    with pytest.warns(UserWarning, match="rejects every number of experts"):
        table, best = select_model(
            GaussianMoE(random_state=0, **QUICK),
            X,
            y,
            n_experts=[1],
            criterion="bootstrap_lrt",
            n_boot=19,
            progress=False,
            random_state=4,
        )
    assert best.n_experts == 1 and table.attrs["best"] == 0


def test_the_bootstrap_test_takes_one_degree_at_a_time():
    X, y = _two_expert_data(50, seed=0)
    with pytest.raises(ValueError, match="one degree"):
        select_model(
            PolynomialMoE(),
            X,
            y,
            degree=[1, 2],
            criterion="bootstrap_lrt",
            progress=False,
        )


@pytest.mark.slow
# one k-means start per fit: a three-expert fit now and then falls below the
# two-expert one (its statistic is then 0), which a ConvergenceWarning reports
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_test_of_the_true_number_of_experts_keeps_its_level():
    """Size at a two-expert truth: about 5% rejections at level 0.05.

    With 20 replications at a true size of 0.05, 6 or more rejections
    (a rate of 0.3) have binomial probability 3e-4.
    """
    rejections = 0
    for seed in range(20):
        X, y = _two_expert_data(100, seed=100 + seed)
        result = bootstrap_lrt(
            GaussianMoE(2, random_state=seed, **QUICK),
            X,
            y,
            n_boot=19,
            random_state=seed,
        )
        rejections += result.pvalue <= 0.05
    assert rejections < 6


def test_a_larger_model_fitted_below_the_smaller_is_reported(monkeypatch):
    """A negative statistic means the m + 1 restarts missed their maximum."""
    from moestat import selection
    from moestat.exceptions import ConvergenceWarning

    X, y = _two_expert_data(80, seed=5)
    monkeypatch.setattr(selection, "_bootstrap_statistic", lambda *args: -1.0)
    with pytest.warns(ConvergenceWarning, match="restarts missed the maximum"):
        result = bootstrap_lrt(
            GaussianMoE(1, random_state=0, **QUICK), X, y, n_boot=3, random_state=1
        )
    np.testing.assert_array_equal(result.null_distribution, 0.0)
